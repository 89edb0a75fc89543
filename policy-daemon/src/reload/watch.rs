//! Reload triggers: file-system events on the policy paths, debounced. SIGHUP is merged
//! into the same path by the daemon loop.
//!
//! A policy file is watched through its parent directory, not by itself: editors save by
//! writing a temporary file and renaming it over the old one, tools delete and recreate
//! files, and Kubernetes ConfigMap volumes swap a `..data` symlink. Each of those replaces
//! the inode a file watch would follow, while the directory sees every one of them.

use std::{
    collections::HashMap,
    ffi::OsStr,
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// How long a burst of events must stay quiet before the reload runs: an editor's
/// save or a ConfigMap swap is several events within a millisecond or two.
pub const DEBOUNCE: Duration = Duration::from_millis(25);

/// Watches policy paths; [`PolicyWatcher::changed`] yields the index of a policy whose
/// files changed.
pub struct PolicyWatcher {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<usize>,
}

#[derive(Debug, thiserror::Error)]
#[error("watching {} failed", path.display())]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// What to watch for one policy path, and which event names concern it.
struct Target {
    dir: PathBuf,
    /// For a file policy, its file name; for a directory, `None` (any `*.toml`).
    file: Option<std::ffi::OsString>,
}

impl Target {
    fn new(path: &Path) -> Self {
        // Canonical, because notify reports event paths under the directory as watched
        // and they are matched against it.
        let canonical = |dir: &Path| dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        if path.is_dir() {
            Self { dir: canonical(path), file: None }
        } else {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            Self { dir: canonical(dir), file: path.file_name().map(OsStr::to_os_string) }
        }
    }

    /// Whether an event on `path` (inside `dir`) can change the policy.
    fn concerns(&self, path: &Path) -> bool {
        let Some(name) = path.file_name() else { return false };
        // ConfigMap volumes: `..data` and the timestamped directories behind it.
        if name.to_string_lossy().starts_with("..") {
            return true;
        }
        match &self.file {
            Some(file) => name == file,
            None => path.extension().is_some_and(|e| e == "toml"),
        }
    }
}

impl PolicyWatcher {
    /// Watches `paths[i]` (a policy file or directory) for policy `i`.
    pub fn new(paths: &[PathBuf]) -> Result<Self, WatchError> {
        Self::watch(paths.iter().enumerate().map(|(i, p)| (i, Target::new(p))).collect())
    }

    /// Watches files that belong to a policy (its sets' files): `(policy index, file)`.
    pub fn files(files: &[(usize, PathBuf)]) -> Result<Self, WatchError> {
        Self::watch(files.iter().map(|(i, p)| (*i, Target::new(p))).collect())
    }

    fn watch(targets: Vec<(usize, Target)>) -> Result<Self, WatchError> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut by_dir: HashMap<PathBuf, Vec<(usize, Target)>> = HashMap::new();
        for (i, target) in targets {
            by_dir.entry(target.dir.clone()).or_default().push((i, target));
        }
        let dirs: Vec<PathBuf> = by_dir.keys().cloned().collect();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if matches!(event.kind, EventKind::Access(_)) {
                    return;
                }
                for path in &event.paths {
                    let Some(list) = path.parent().and_then(|dir| by_dir.get(dir)) else {
                        continue;
                    };
                    for (i, target) in list {
                        if target.concerns(path) {
                            // The receiver lives as long as the daemon loop.
                            let _ = tx.send(*i);
                        }
                    }
                }
            })
            .map_err(|source| WatchError { path: PathBuf::new(), source })?;
        for dir in dirs {
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError { path: dir.clone(), source })?;
        }
        Ok(Self { _watcher: watcher, events })
    }

    /// The next policy index with a change, or `None` if the watcher stopped.
    pub async fn changed(&mut self) -> Option<usize> {
        self.events.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_policy_cares_about_its_name_and_configmap_swaps() {
        let target = Target { dir: "/etc/p".into(), file: Some("web.toml".into()) };
        assert!(target.concerns(Path::new("/etc/p/web.toml")));
        assert!(target.concerns(Path::new("/etc/p/..data")));
        assert!(target.concerns(Path::new("/etc/p/..2026_11_27_08_00_00.123")));
        assert!(!target.concerns(Path::new("/etc/p/other.toml")));
        assert!(!target.concerns(Path::new("/etc/p/.web.toml.swp")));
    }

    #[test]
    fn a_directory_policy_cares_about_toml_files() {
        let target = Target { dir: "/etc/p".into(), file: None };
        assert!(target.concerns(Path::new("/etc/p/10-base.toml")));
        assert!(target.concerns(Path::new("/etc/p/..data")));
        assert!(!target.concerns(Path::new("/etc/p/README")));
    }
}
