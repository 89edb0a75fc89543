//! Where an interface's program, XDP link and maps are pinned, so that enforcement
//! outlives the daemon: `<pin_dir>/<iface>/{program,link,maps/<MAP>}`. A daemon that
//! finds the link pinned adopts the maps and replaces the program on the link; only
//! `xdp-policy detach` removes the pins (and with the last one, the filter).
//!
//! A migration to a new layout of the maps (see `super::migrate`) pins the new maps in
//! `maps-new` beside `maps`, swaps the program on the link, then renames `maps` to
//! `maps-old`, `maps-new` to `maps`, and removes `maps-old`: whoever opens `maps` finds
//! one whole set of maps, the old or the new. (A bpffs refuses names with a dot.)

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, SYSFS_MAGIC, statfs},
};

/// The pin paths of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pins {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "another xdp-policy daemon{} holds {}: one daemon per interface (stop it, or give \
         this one other interfaces)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        dir.display()
    )]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error(
        "{} is not on a bpffs and mounting one there failed (it needs CAP_SYS_ADMIN; or mount it \
         first: mount -t bpf bpf {})",
        path.display(),
        path.display()
    )]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |error| PinError::Io { path: path.to_path_buf(), error }
}

impl Pins {
    pub fn new(pin_dir: &Path, iface: &str) -> Self {
        Self { dir: pin_dir.join(iface) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn program(&self) -> PathBuf {
        self.dir.join("program")
    }

    pub fn link(&self) -> PathBuf {
        self.dir.join("link")
    }

    pub fn maps(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Where a migration pins the new maps until the program on the link uses them.
    pub fn staged_maps(&self) -> PathBuf {
        self.dir.join("maps-new")
    }

    /// Where the maps a migration replaced are, until they are removed.
    pub fn retired_maps(&self) -> PathBuf {
        self.dir.join("maps-old")
    }

    /// Makes the staged maps the pinned ones (the program on the link uses them now):
    /// `maps` → `maps-old`, `maps-new` → `maps`, then `maps-old` removed. Each step can
    /// be redone after a crash: a missing `maps-new` means the renames are done.
    pub fn commit_staged(&self) -> Result<(), PinError> {
        let (staged, maps, retired) = (self.staged_maps(), self.maps(), self.retired_maps());
        if staged.exists() {
            if maps.exists() {
                remove_dir_if_there(&retired)?;
                fs::rename(&maps, &retired).map_err(io_err(&maps))?;
            }
            fs::rename(&staged, &maps).map_err(io_err(&staged))?;
        }
        remove_dir_if_there(&retired).map(drop)
    }

    /// Removes the maps of a migration that did not reach the swap; whether there were.
    pub fn remove_staged(&self) -> Result<bool, PinError> {
        remove_dir_if_there(&self.staged_maps())
    }

    /// Whether a link is pinned here: the filter is (or was) in force.
    pub fn linked(&self) -> bool {
        self.link().exists()
    }

    /// Makes sure `pin_dir` is on a bpffs (mounting one if not) and creates this
    /// interface's directories.
    pub fn prepare(&self, pin_dir: &Path) -> Result<(), PinError> {
        ensure_bpffs(pin_dir)?;
        fs::create_dir_all(self.maps()).map_err(io_err(&self.dir))
    }

    /// Takes the interface's lock for as long as the returned guard lives: one daemon
    /// per interface. A second one gets [`PinError::Locked`], with the holder's pid.
    pub fn lock(&self) -> Result<InterfaceLock, PinError> {
        let dir = fs::File::open(&self.dir).map_err(io_err(&self.dir))?;
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(InterfaceLock { _lock: lock }),
            Err((_, Errno::EWOULDBLOCK)) => {
                Err(PinError::Locked { dir: self.dir.clone(), pid: self.lock_holder() })
            }
            Err((_, errno)) => Err(PinError::Io { path: self.dir.clone(), error: errno.into() }),
        }
    }

    /// The process holding the interface's lock (a running daemon), if any.
    pub fn lock_holder(&self) -> Option<u32> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = fs::metadata(&self.dir).ok()?;
        let locks = fs::read_to_string("/proc/locks").ok()?;
        holder(&locks, meta.dev(), meta.ino())
    }

    /// Removes the pins of a filter that is not attached: maps and a program left by a
    /// start that failed before its link was pinned. Nothing of theirs is trusted.
    /// Returns how many there were.
    pub fn remove_unlinked(&self) -> Result<usize, PinError> {
        let maps = self.maps();
        let mut removed = 0;
        for entry in fs::read_dir(&maps).map_err(io_err(&maps))? {
            let path = entry.map_err(io_err(&maps))?.path();
            fs::remove_file(&path).map_err(io_err(&path))?;
            removed += 1;
        }
        let others = [self.staged_maps(), self.retired_maps()]
            .iter()
            .map(|dir| remove_dir_if_there(dir).map(usize::from))
            .sum::<Result<usize, PinError>>()?;
        Ok(removed + others + usize::from(remove_if_there(&self.program())?))
    }

    /// Removes the link's pin (a link whose interface went away, to attach afresh).
    pub fn unpin_link(&self) -> Result<(), PinError> {
        remove_if_there(&self.link()).map(drop)
    }

    /// Removes every pin of the interface. The link goes with its pin once no process
    /// holds it, which detaches the program.
    pub fn remove(&self) -> Result<(), PinError> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&self.dir)(e)),
            _ => Ok(()),
        }
    }

    /// The interfaces with pins under `pin_dir`, sorted.
    pub fn all(pin_dir: &Path) -> Result<Vec<(String, Self)>, PinError> {
        let entries = match fs::read_dir(pin_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(pin_dir)(e)),
        };
        let mut all = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(pin_dir))?;
            if entry.path().is_dir() {
                let iface = entry.file_name().to_string_lossy().into_owned();
                all.push((iface.clone(), Self::new(pin_dir, &iface)));
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }
}

/// Removes the file at `path`; whether there was one.
fn remove_if_there(path: &Path) -> Result<bool, PinError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Removes the directory at `path` and what it holds; whether there was one.
fn remove_dir_if_there(path: &Path) -> Result<bool, PinError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Held for as long as a daemon enforces on the interface (see [`Pins::lock`]).
#[derive(Debug)]
pub struct InterfaceLock {
    _lock: Flock<fs::File>,
}

/// The pid holding an exclusive flock on the inode `ino` of device `dev`, from the text
/// of /proc/locks (`1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF`: pid, then
/// major:minor in hex and the inode).
fn holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let wanted = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| *f == wanted)?;
        (fields.get(1) == Some(&"FLOCK")).then(|| fields.get(at - 1)?.parse().ok())?
    })
}

/// Makes sure `dir` exists on a bpffs, mounting one if needed (this machine, like many
/// containers, has no bpffs at /sys/fs/bpf). `/sys/fs/bpf` itself is a sysfs directory
/// where nothing can be created until a bpffs is mounted on it: then that is where it
/// goes, as systemd would have done it.
pub fn ensure_bpffs(dir: &Path) -> Result<(), PinError> {
    let fs_type = |path: &Path| {
        statfs(path)
            .map(|s| s.filesystem_type())
            .map_err(|e| PinError::Io { path: path.to_path_buf(), error: e.into() })
    };
    let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
    let found = fs_type(existing)?;
    if found != BPF_FS_MAGIC {
        let mount_point = if found == SYSFS_MAGIC { existing } else { dir };
        fs::create_dir_all(mount_point).map_err(io_err(mount_point))?;
        tracing::info!(dir = %mount_point.display(), "mounting bpffs");
        mount(Some("bpf"), mount_point, Some("bpf"), MsFlags::empty(), None::<&str>)
            .map_err(|source| PinError::Mount { path: mount_point.to_path_buf(), source })?;
    }
    fs::create_dir_all(dir).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lock_holder_is_read_from_proc_locks() {
        let dev = libc::makedev(0, 0x2d);
        let locks = "1: POSIX  ADVISORY  WRITE 999 00:2d:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 00:2d:77 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 17 00:2e:77 0 EOF\n";
        assert_eq!(super::holder(locks, dev, 77), Some(4242));
        assert_eq!(super::holder(locks, dev, 78), None);
    }
}
