//! Reading policy files safely: which files a policy path stands for, who may have
//! written them (like sshd's StrictModes), where their symlinks may lead, how big they may
//! be, and that they are UTF-8 text.
//!
//! A policy decides what reaches the host, so a file that someone other than root (or the
//! user the daemon runs as) can change is refused, and so is a directory through which
//! such a user could swap the file: every directory from the file up to `/`, as sshd's
//! StrictModes does. A directory may be writable by others only if it is sticky (like
//! /tmp) and is not the policy directory itself (anyone could add a file to it). On a
//! read-only mount (a Kubernetes ConfigMap volume) the mode bits are not held against a
//! file, since nobody can write it through this mount; its owner still must be root: a
//! read-only bind mount of a user's directory does not keep the user from changing it.
//! The daemon's configuration file, which can switch these checks off, is held to them
//! too ([`check_trusted_file`]).

use std::{
    fs::{self, File, Metadata},
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::sys::statvfs::{FsFlags, statvfs};

use crate::policy::{self, Location, Policy, PolicyError};

/// Largest policy file read, checked from the file's metadata before it is read: the
/// biggest policy the kernel maps hold is well under 1 MiB.
pub const MAX_POLICY_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A file size limit and what it is for, as the error says it.
pub type Limit = (u64, &'static str);
const POLICY_FILE_LIMIT: Limit = (MAX_POLICY_FILE_BYTES, "(16 MiB) for a policy file");
const SET_FILE_LIMIT: Limit = (MAX_SET_FILE_BYTES, "(1 GiB) for a set file");

/// How policy files are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Skip the ownership and permission checks (`insecure_policy_files = true` in the
    /// configuration): for test setups only.
    pub allow_insecure_files: bool,
}

/// Why the files of a policy were not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{}: no *.toml policy files in this directory", path.display())]
    EmptyDirectory { path: PathBuf },
    #[error("{}: the file is {size} bytes, over the limit of {} bytes {}", path.display(), limit.0, limit.1)]
    TooLarge { path: PathBuf, size: u64, limit: Limit },
    #[error("{location}: not UTF-8 text at byte {offset}")]
    NotUtf8 { location: Location, offset: usize },
    #[error(
        "{}: refusing the policy {what}: it {problem}, and only root may be able to change a \
         policy; fix it with `chown root: {real} && chmod go-w {real}`, or allow it (for test \
         setups only) with insecure_policy_files = true in the configuration",
        path.display(),
        real = real.display()
    )]
    Insecure { path: PathBuf, real: PathBuf, what: &'static str, problem: Exposure },
    #[error(
        "{}: a symlink to {}, outside the policy directory {}: symlinks are followed only \
         inside it; move or copy the file there",
        path.display(),
        target.display(),
        dir.display()
    )]
    SymlinkOutside { path: PathBuf, target: PathBuf, dir: PathBuf },
}

/// Why a policy was not loaded: its files, or what they say.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Files(#[from] FileError),
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    #[error(transparent)]
    SetFile(Box<SetFileError>),
}

/// A file of a set (`[[set]] files`) that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{location}: set \"{set}\": {error}")]
pub struct SetFileError {
    pub set: String,
    /// Where the set is defined.
    pub location: Location,
    pub error: FileError,
}

/// How someone other than root could change a file or directory.
#[derive(Debug, thiserror::Error)]
pub enum Exposure {
    #[error("is owned by uid {uid} and writable by its group or others (mode {mode:o})")]
    OwnerAndMode { uid: u32, mode: u32 },
    #[error("is owned by uid {uid}, not root")]
    Owner { uid: u32 },
    #[error("is writable by its group or others (mode {mode:o})")]
    Mode { mode: u32 },
    #[error("cannot be read ({0})")]
    Unreadable(std::io::Error),
}

/// Reads and validates the policy at `path`: a file, or a directory whose `*.toml`
/// files are merged in file-name order. All problems of all files are reported at once.
/// Files that someone other than root could change are refused, unless `options` say
/// otherwise.
pub fn load(path: &Path, options: LoadOptions) -> Result<Policy, LoadError> {
    let sources = read_policy(path, options)?;
    let mut policy =
        policy::parse(sources.iter().map(|(file, text)| (file.as_path(), text.as_str())))?;
    for set in &mut policy.sets {
        set.entries = read_set(set, options)?;
    }
    Ok(policy)
}

/// Largest set file read: 16 million lines of a full IPv6 address each.
pub const MAX_SET_FILE_BYTES: u64 = 1024 * 1024 * 1024;

/// Reads the files of a set, held to the checks of a policy file: a set file decides what
/// is dropped as much as a policy does.
fn read_set(set: &policy::SetDef, options: LoadOptions) -> Result<Vec<ipnet::IpNet>, LoadError> {
    let mut entries = Vec::new();
    let mut diagnostics = Vec::new();
    let in_set = |error| {
        LoadError::SetFile(Box::new(SetFileError {
            set: set.name.clone(),
            location: set.location.clone(),
            error,
        }))
    };
    for file in &set.files {
        let real = fs::canonicalize(file)
            .map_err(|error| in_set(FileError::Read { path: file.clone(), error }))?;
        let text = read_checked(file, &real, options, None, SET_FILE_LIMIT).map_err(in_set)?;
        match policy::parse_set_file(file, &text) {
            Ok(nets) => entries.extend(nets),
            Err(mut errors) => diagnostics.append(&mut errors),
        }
    }
    entries.sort_unstable();
    entries.dedup();
    if entries.len() > set.max_entries as usize {
        diagnostics.push(policy::Diagnostic {
            location: set.location.clone(),
            message: format!(
                "set \"{}\": its files list {} entries, more than its max_entries of {}",
                set.name,
                entries.len(),
                set.max_entries
            ),
            snippet: String::new(),
        });
    }
    if diagnostics.is_empty() { Ok(entries) } else { Err(PolicyError::Invalid(diagnostics).into()) }
}

const SETGID_STICKY: u32 = 0o1000;
const GROUP_OR_OTHER_WRITE: u32 = 0o022;

/// The files a policy path stands for: the file itself, or the `*.toml` files of a
/// directory in file-name order.
fn policy_files(path: &Path) -> Result<Vec<PathBuf>, FileError> {
    let read_err = |error| FileError::Read { path: path.to_path_buf(), error };
    if !fs::metadata(path).map_err(read_err)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(read_err)? {
        let file = entry.map_err(read_err)?.path();
        let hidden = file.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !hidden && file.extension().is_some_and(|ext| ext == "toml") && file.is_file() {
            files.push(file);
        }
    }
    if files.is_empty() {
        return Err(FileError::EmptyDirectory { path: path.to_path_buf() });
    }
    files.sort();
    Ok(files)
}

/// Reads every file of the policy at `path`, after checking where it is and who can
/// change it.
fn read_policy(path: &Path, options: LoadOptions) -> Result<Vec<(PathBuf, String)>, FileError> {
    let files = policy_files(path)?;
    let is_dir = files.len() != 1 || files[0] != path;
    let base = if is_dir { path } else { path.parent().unwrap_or(Path::new(".")) };
    let base = if base.as_os_str().is_empty() { Path::new(".") } else { base };
    let read_err = |p: &Path| {
        let p = p.to_path_buf();
        move |error| FileError::Read { path: p, error }
    };
    let real_base = fs::canonicalize(base).map_err(read_err(base))?;
    let mut sources = Vec::new();
    for file in files {
        let real = fs::canonicalize(&file).map_err(read_err(&file))?;
        if !real.starts_with(&real_base) {
            return Err(FileError::SymlinkOutside {
                path: file,
                target: real,
                dir: base.to_path_buf(),
            });
        }
        let text = read_checked(
            &file,
            &real,
            options,
            is_dir.then_some(real_base.as_path()),
            POLICY_FILE_LIMIT,
        )?;
        sources.push((file, text));
    }
    Ok(sources)
}

/// Reads `file` (whose real path is `real`) as UTF-8 text of at most `limit` bytes, after
/// checking that only root can change it or any directory above it. `policy_dir`: the
/// policy directory it was found in, which may not be sticky since anyone could add a
/// file to it; other directories may.
fn read_checked(
    file: &Path,
    real: &Path,
    options: LoadOptions,
    policy_dir: Option<&Path>,
    limit: Limit,
) -> Result<String, FileError> {
    let read_err = |error| FileError::Read { path: file.to_path_buf(), error };
    let mut handle = File::open(file).map_err(read_err)?;
    let meta = handle.metadata().map_err(read_err)?;
    if !options.allow_insecure_files {
        check_metadata(file, real, &meta, false)?;
        // The directories from the file up to `/`: through any of them the file could
        // be swapped.
        for d in real.ancestors().skip(1) {
            check_owner_and_mode(d, d, policy_dir != Some(d))?;
        }
    }
    if meta.len() > limit.0 {
        return Err(FileError::TooLarge { path: file.to_path_buf(), size: meta.len(), limit });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The file may grow after the metadata was read: never read past the limit.
    (&mut handle).take(limit.0 + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > limit.0 {
        return Err(FileError::TooLarge {
            path: file.to_path_buf(),
            size: bytes.len() as u64,
            limit,
        });
    }
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let valid = std::str::from_utf8(&e.as_bytes()[..offset]).unwrap_or_default();
        let location = Location::of(file.to_path_buf(), valid, offset);
        FileError::NotUtf8 { location, offset }
    })
}

fn check_owner_and_mode(shown: &Path, real: &Path, sticky_ok: bool) -> Result<(), FileError> {
    let meta =
        fs::metadata(real).map_err(|error| FileError::Read { path: shown.to_path_buf(), error })?;
    check_metadata(shown, real, &meta, sticky_ok)
}

fn check_metadata(
    shown: &Path,
    real: &Path,
    meta: &Metadata,
    sticky_ok: bool,
) -> Result<(), FileError> {
    match exposure(real, meta, sticky_ok) {
        None => Ok(()),
        Some(problem) => Err(FileError::Insecure {
            path: shown.to_path_buf(),
            real: real.to_path_buf(),
            what: if meta.is_dir() { "directory" } else { "file" },
            problem,
        }),
    }
}

/// How someone other than root (or this process's user) could change the file or
/// directory at `real`, if they could: its owner, or its mode (a sticky directory's only
/// where `sticky_ok` is false; not on a read-only mount, and not for what is neither a
/// file nor a directory, such as /dev/null).
fn exposure(real: &Path, meta: &Metadata, sticky_ok: bool) -> Option<Exposure> {
    let euid = nix::unistd::geteuid().as_raw();
    let owner_ok = meta.uid() == 0 || meta.uid() == euid;
    let sticky = meta.is_dir() && meta.mode() & SETGID_STICKY != 0;
    let mode_matters = meta.is_file() || meta.is_dir();
    let writable =
        mode_matters && meta.mode() & GROUP_OR_OTHER_WRITE != 0 && !(sticky && sticky_ok);
    let mode = meta.mode() & 0o7777;
    match (owner_ok, writable) {
        (true, false) => None,
        (true, true) if read_only_mount(real) => None,
        (false, true) => Some(Exposure::OwnerAndMode { uid: meta.uid(), mode }),
        (false, false) => Some(Exposure::Owner { uid: meta.uid() }),
        (true, true) => Some(Exposure::Mode { mode }),
    }
}

/// Someone other than root could change the configuration file, or a directory above it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: refusing the configuration file: {} {problem}, and only root may be able to change \
     what the daemon enforces; fix it with `chown root: {real} && chmod go-w {real}`",
    path.display(),
    if real == path { "it".to_string() } else { format!("{} above it", real.display()) },
    real = real.display()
)]
pub struct Untrusted {
    pub path: PathBuf,
    pub real: PathBuf,
    pub problem: Exposure,
}

/// Checks that only root (or this process's user) can change the file at `path` and
/// every directory above it (sticky ones like /tmp may be writable by others), as
/// [`read_policy`] does for policy files. For the daemon's configuration file.
pub fn check_trusted_file(path: &Path) -> Result<(), Untrusted> {
    let untrusted = |real: &Path, problem| Untrusted {
        path: path.to_path_buf(),
        real: real.to_path_buf(),
        problem,
    };
    let read_failed = |real: &Path, e: std::io::Error| untrusted(real, Exposure::Unreadable(e));
    let real = fs::canonicalize(path).map_err(|e| read_failed(path, e))?;
    for (i, p) in real.ancestors().enumerate() {
        let meta = fs::metadata(p).map_err(|e| read_failed(p, e))?;
        if let Some(problem) = exposure(p, &meta, i > 0) {
            return Err(untrusted(p, problem));
        }
    }
    Ok(())
}

fn read_only_mount(path: &Path) -> bool {
    statvfs(path).is_ok_and(|s| s.flags().contains(FsFlags::ST_RDONLY))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;

    const POLICY: &str = "[[rule]]\nname = \"r\"\naction = \"drop\"\n";
    const STRICT: LoadOptions = LoadOptions { allow_insecure_files: false };
    const INSECURE: LoadOptions = LoadOptions { allow_insecure_files: true };

    /// A fresh directory (mode 0755) under the temporary directory, and its path;
    /// removed on drop.
    struct TempDir(PathBuf, #[allow(dead_code, reason = "removes it on drop")] tempfile::TempDir);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = tempfile::Builder::new()
                .prefix(&format!("xdp-policy-files-{name}-"))
                .tempdir()
                .expect("mkdir");
            chmod(dir.path(), 0o755);
            Self(dir.path().to_path_buf(), dir)
        }

        fn file(&self, name: &str, mode: u32) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, POLICY).expect("writing");
            chmod(&path, mode);
            path
        }
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn error(path: &Path, options: LoadOptions) -> String {
        match read_policy(path, options) {
            Ok(_) => panic!("{} must be refused", path.display()),
            Err(e) => e.to_string(),
        }
    }

    fn fix(path: &Path) -> String {
        format!(
            "only root may be able to change a policy; fix it with `chown root: {p} && chmod \
             go-w {p}`, or allow it (for test setups only) with insecure_policy_files = true in \
             the configuration",
            p = path.display()
        )
    }

    fn root(test: &str) -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            eprintln!("skipping {test}: chown needs root");
        }
        root
    }

    #[test]
    fn a_file_of_root_with_mode_644_is_read() {
        let dir = TempDir::new("ok");
        let file = dir.file("p.toml", 0o644);
        assert_eq!(read_policy(&file, STRICT).expect("readable")[0].1, POLICY);
        assert_eq!(read_policy(&dir.0, STRICT).expect("readable").len(), 1);
    }

    #[test]
    fn a_group_or_world_writable_file_is_refused_unless_allowed() {
        let dir = TempDir::new("writable");
        for mode in [0o664, 0o646] {
            let file = dir.file("p.toml", mode);
            assert_eq!(
                error(&file, STRICT),
                format!(
                    "{}: refusing the policy file: it is writable by its group or others (mode \
                     {mode:o}), and {}",
                    file.display(),
                    fix(&file)
                )
            );
            // The same in a directory policy.
            assert!(error(&dir.0, STRICT).contains("is writable by its group or others"));
            assert!(read_policy(&file, INSECURE).is_ok());
        }
    }

    #[test]
    fn a_file_of_another_user_is_refused_unless_allowed() {
        if !root("a_file_of_another_user_is_refused_unless_allowed") {
            return;
        }
        let dir = TempDir::new("owner");
        let file = dir.file("p.toml", 0o644);
        std::os::unix::fs::chown(&file, Some(65534), None).expect("chown");
        assert_eq!(
            error(&file, STRICT),
            format!(
                "{}: refusing the policy file: it is owned by uid 65534, not root, and {}",
                file.display(),
                fix(&file)
            )
        );
        assert!(read_policy(&file, INSECURE).is_ok());
        chmod(&file, 0o666);
        assert!(
            error(&file, STRICT)
                .contains("is owned by uid 65534 and writable by its group or others (mode 666)")
        );
    }

    #[test]
    fn the_directory_must_not_be_writable_by_others_unless_sticky_for_a_file() {
        let dir = TempDir::new("dir");
        let file = dir.file("p.toml", 0o644);
        chmod(&dir.0, 0o777);
        let refused = error(&file, STRICT);
        assert_eq!(
            refused,
            format!(
                "{}: refusing the policy directory: it is writable by its group or others (mode \
                 777), and {}",
                dir.0.display(),
                fix(&dir.0)
            )
        );
        // Sticky, like /tmp: nobody else can remove or replace the file.
        chmod(&dir.0, 0o1777);
        assert!(read_policy(&file, STRICT).is_ok());
        // But anyone could add a file to a directory policy.
        assert!(error(&dir.0, STRICT).contains("refusing the policy directory"));
        assert!(read_policy(&dir.0, INSECURE).is_ok());
        if root("the_directory_of_another_user") {
            chmod(&dir.0, 0o755);
            std::os::unix::fs::chown(&dir.0, Some(65534), None).expect("chown");
            assert!(error(&file, STRICT).contains("is owned by uid 65534, not root"));
        }
    }

    #[test]
    fn symlinks_are_followed_inside_the_policy_directory_only() {
        let dir = TempDir::new("symlinks");
        let elsewhere = TempDir::new("symlinks-elsewhere");
        let target = elsewhere.file("other.toml", 0o644);
        let link = dir.0.join("p.toml");
        symlink(&target, &link).expect("symlink");
        assert_eq!(
            error(&link, STRICT),
            format!(
                "{}: a symlink to {}, outside the policy directory {}: symlinks are followed \
                 only inside it; move or copy the file there",
                link.display(),
                target.display(),
                dir.0.display()
            )
        );
        assert!(error(&dir.0, STRICT).contains("outside the policy directory"));
        // Not even with the insecure option: it is about where, not who.
        assert!(read_policy(&link, INSECURE).is_err());

        // Inside, relative or not, is fine.
        fs::remove_file(&link).expect("rm");
        fs::create_dir(dir.0.join("sub")).expect("mkdir");
        chmod(&dir.0.join("sub"), 0o755);
        dir.file("sub/real.toml", 0o644);
        symlink("sub/real.toml", &link).expect("symlink");
        assert!(read_policy(&link, STRICT).is_ok());
        assert!(read_policy(&dir.0, STRICT).is_ok());
    }

    #[test]
    fn the_kubernetes_configmap_layout_is_followed() {
        let dir = TempDir::new("configmap");
        let data = dir.0.join("..2026_11_27_08_00_00.000000001");
        fs::create_dir(&data).expect("mkdir");
        chmod(&data, 0o755);
        dir.file("..2026_11_27_08_00_00.000000001/policy.toml", 0o644);
        symlink("..2026_11_27_08_00_00.000000001", dir.0.join("..data")).expect("symlink");
        symlink("..data/policy.toml", dir.0.join("policy.toml")).expect("symlink");
        let files = read_policy(&dir.0, STRICT).expect("the ConfigMap directory");
        assert_eq!(files[0].0, dir.0.join("policy.toml"));
        assert!(read_policy(&dir.0.join("policy.toml"), STRICT).is_ok());
        // The data directory is checked too.
        chmod(&data, 0o777);
        assert!(error(&dir.0, STRICT).contains(&format!(
            "{}: refusing the policy directory: it is writable",
            data.display()
        )));
    }

    #[test]
    fn every_directory_up_to_the_root_is_checked() {
        // A world-writable (not sticky) directory two levels above the policy directory.
        let dir = TempDir::new("ancestors");
        let policies = dir.0.join("a/b/policies");
        fs::create_dir_all(&policies).expect("mkdir");
        for d in [dir.0.join("a"), dir.0.join("a/b"), policies.clone()] {
            chmod(&d, 0o755);
        }
        let file = policies.join("p.toml");
        fs::write(&file, POLICY).expect("writing");
        chmod(&file, 0o644);
        assert!(read_policy(&policies, STRICT).is_ok());
        chmod(&dir.0.join("a"), 0o777);
        let refused = error(&policies, STRICT);
        assert!(
            refused.starts_with(&format!(
                "{}: refusing the policy directory: it is writable by its group or others",
                dir.0.join("a").display()
            )),
            "{refused}"
        );
        // Sticky above the policy directory, like /tmp, is fine.
        chmod(&dir.0.join("a"), 0o1777);
        assert!(read_policy(&policies, STRICT).is_ok());
    }

    /// A read-only bind mount of `dir` over `at`, undone on drop.
    struct ReadOnlyBind(PathBuf);

    impl ReadOnlyBind {
        fn new(dir: &Path, at: &Path) -> Self {
            use nix::mount::{MsFlags, mount};
            fs::create_dir_all(at).expect("mount point");
            mount(Some(dir), at, None::<&str>, MsFlags::MS_BIND, None::<&str>).expect("bind");
            let bind = Self(at.to_path_buf());
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, at, None::<&str>, flags, None::<&str>).expect("read-only");
            bind
        }
    }

    impl Drop for ReadOnlyBind {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn a_read_only_mount_relaxes_the_mode_but_not_the_owner() {
        if !root("a_read_only_mount_relaxes_the_mode_but_not_the_owner") {
            return;
        }
        let dir = TempDir::new("ro-source");
        let file = dir.file("p.toml", 0o666);
        chmod(&dir.0, 0o777);
        let mounts = TempDir::new("ro-mount");
        let at = mounts.0.join("policies");
        let bind = ReadOnlyBind::new(&dir.0, &at);
        // Root's files, world-writable modes, read-only here (a ConfigMap volume): read.
        assert!(read_policy(&at, STRICT).is_ok());
        // Another user's file: that user changes it through its own mount of it.
        std::os::unix::fs::chown(&file, Some(65534), None).expect("chown");
        let refused = error(&at, STRICT);
        assert!(refused.contains("is owned by uid 65534"), "{refused}");
        drop(bind);
    }

    #[test]
    fn the_configuration_file_is_held_to_the_same_checks() {
        let dir = TempDir::new("config");
        let config = dir.file("xdp-policy.toml", 0o644);
        assert!(check_trusted_file(&config).is_ok());
        assert!(check_trusted_file(Path::new("/dev/null")).is_ok(), "an empty configuration");
        chmod(&config, 0o664);
        assert_eq!(
            check_trusted_file(&config).expect_err("refused").to_string(),
            format!(
                "{p}: refusing the configuration file: it is writable by its group or others \
                 (mode 664), and only root may be able to change what the daemon enforces; fix \
                 it with `chown root: {p} && chmod go-w {p}`",
                p = config.display()
            )
        );
        chmod(&config, 0o644);
        chmod(&dir.0, 0o777);
        let refused = check_trusted_file(&config).expect_err("refused").to_string();
        assert!(
            refused.contains(&format!("{} above it is writable", dir.0.display())),
            "{refused}"
        );
        if root("the_configuration_file_of_another_user") {
            chmod(&dir.0, 0o755);
            std::os::unix::fs::chown(&config, Some(65534), None).expect("chown");
            let refused = check_trusted_file(&config).expect_err("refused").to_string();
            assert!(refused.contains("it is owned by uid 65534, not root"), "{refused}");
        }
    }
}
