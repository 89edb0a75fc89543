//! The Debian 12 root file system the layer boots: debootstrap's minbase (Priority:
//! required, what the smallest Debian system has) with systemd as init, from Debian's
//! mirror, built once and cached under `/var/cache/xdp-policy/systemd-test/`.
//!
//! The cached tree is keyed by its recipe (suite, variant, packages, mirror, and a
//! version of this code): a tree made by another recipe is never used, its directory has
//! another name. A tree older than [`MAX_AGE`] (30 days) is built again, so the layer
//! follows Debian 12's point releases (systemd 252's updates among them). A tree whose build did not
//! finish is never used either: the marker naming its recipe is written last, and the
//! tree is built beside the cache and renamed into place. Containers boot it with
//! `--volatile=overlay` (a tmpfs over it), so no run changes it. `rm -rf` the directory
//! to force a rebuild.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use super::process::{self, run_within};

/// The cache of root file systems, and the lock that makes one layer run at a time on a
/// machine (the container's name, its veth and addresses are fixed).
pub const CACHE: &str = "/var/cache/xdp-policy/systemd-test";
const SUITE: &str = "bookworm";
const VARIANT: &str = "minbase";
/// systemd-sysv provides /sbin/init; minbase has no init at all.
const INCLUDE: &str = "systemd,systemd-sysv";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Bump when the tree is made differently, so that caches made before are not used.
const RECIPE_VERSION: u32 = 1;
/// Rebuilt when older. debootstrap takes the suite alone (not the updates or security
/// archives), which changes at Debian 12's point releases, about every two months: a
/// month bounds how far behind a cached tree can be.
const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// At the tree's root, written last: the recipe it was made by.
const MARKER: &str = ".xdp-policy-rootfs";
/// debootstrap takes about 40 s here; this bounds a hung mirror.
const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long to wait for another run of the layer on this machine.
const LOCK_TIMEOUT: Duration = Duration::from_secs(15 * 60);

fn recipe() -> String {
    format!(
        "suite={SUITE}\nvariant={VARIANT}\ninclude={INCLUDE}\nmirror={MIRROR}\n\
         recipe={RECIPE_VERSION}\n"
    )
}

/// FNV-1a: a stable hash for the cache key (std's hasher may change between releases).
fn key(text: &str) -> String {
    let hash = text
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{hash:016x}")
}

/// Held for the whole run of the layer.
pub struct Lock(#[expect(dead_code, reason = "held for its flock only")] File);

pub fn lock() -> Result<Lock> {
    fs::create_dir_all(CACHE).with_context(|| format!("creating {CACHE}"))?;
    let path = Path::new(CACHE).join("lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let deadline = Instant::now() + LOCK_TIMEOUT;
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Lock(file)),
            Err(fs::TryLockError::WouldBlock) => {
                if !said {
                    eprintln!(
                        "xtask: systemd-test: another run holds {}; waiting for it",
                        path.display()
                    );
                    said = true;
                }
                if Instant::now() >= deadline {
                    bail!("{} still locked after {LOCK_TIMEOUT:?}", path.display());
                }
                process::sleep(Duration::from_millis(200))?;
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}

/// The cached tree, built first if missing, stale or made by another recipe; and
/// whether it was built now.
pub fn ensure(_lock: &Lock) -> Result<(PathBuf, bool)> {
    let recipe = recipe();
    let dir = Path::new(CACHE).join(format!("{SUITE}-{VARIANT}-{}", key(&recipe)));
    let marker = dir.join(MARKER);
    let age = fs::metadata(&marker)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    let same_recipe = fs::read_to_string(&marker).is_ok_and(|m| m == recipe);
    match age {
        Some(age) if same_recipe && age < MAX_AGE => {
            eprintln!(
                "xtask: systemd-test: root file system {} (built {} h ago)",
                dir.display(),
                age.as_secs() / 3600
            );
            return Ok((dir, false));
        }
        Some(age) if same_recipe => eprintln!(
            "xtask: systemd-test: {} is {} days old: building it again",
            dir.display(),
            age.as_secs() / 86400
        ),
        _ => eprintln!("xtask: systemd-test: no root file system for this recipe yet"),
    }
    build(&dir, &recipe)?;
    Ok((dir, true))
}

fn build(dir: &Path, recipe: &str) -> Result<()> {
    let partial = dir.with_extension("partial");
    remove_tree(&partial)?;
    let log = dir.with_extension("debootstrap.log");
    eprintln!(
        "xtask: systemd-test: debootstrap --variant={VARIANT} --include={INCLUDE} {SUITE} \
         from {MIRROR} (about half a minute; log in {})",
        log.display()
    );
    let out = process::output_within(
        Command::new("debootstrap")
            .arg(format!("--variant={VARIANT}"))
            .arg(format!("--include={INCLUDE}"))
            .arg(SUITE)
            .arg(&partial)
            .arg(MIRROR),
        DEBOOTSTRAP_TIMEOUT,
    );
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            let _ = remove_tree(&partial);
            return Err(e);
        }
    };
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    fs::write(&log, &text).with_context(|| format!("writing {}", log.display()))?;
    if !out.status.success() {
        let _ = remove_tree(&partial);
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        bail!(
            "debootstrap failed ({}); the end of {}:\n{}",
            out.status,
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    fs::write(partial.join(MARKER), recipe).context("writing the root file system's marker")?;
    remove_tree(dir)?;
    fs::rename(&partial, dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    Ok(())
}

fn remove_tree(dir: &Path) -> Result<()> {
    if dir.exists() {
        // A root file system holds device nodes and read-only directories: rm copes.
        run_within(Command::new("rm").arg("-rf").arg(dir), Duration::from_secs(300))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{key, recipe};

    #[test]
    fn the_cache_key_is_the_recipe_s() {
        assert_eq!(key(""), "cbf29ce484222325");
        assert_eq!(key("a"), "af63dc4c8601ec8c");
        assert_eq!(key(&recipe()), key(&recipe()));
        assert_ne!(key(&recipe()), key(&recipe().replace("bookworm", "trixie")));
    }
}
