//! A Debian 12 container booted with `systemd-nspawn --boot`: its own systemd 252 as
//! PID 1, a network namespace joined to this host by a veth pair, a bpffs of its own at
//! /sys/fs/bpf. Commands run inside through `nsenter` into the namespaces of its PID 1
//! (`machinectl` and `systemd-run --machine` need the container registered with a
//! systemd-machined on the host, which `--register=no` and a host without systemd as
//! init rule out). Dropping it powers the container off and removes the bpffs, the veth
//! and the scratch directory, also when a check failed.

use std::{
    fs::{self, File},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::process::{self, output_within, run_within};
use crate::setup::run_cmd;

/// The machine's name; its veth is `ve-` and this on the host, `host0` inside.
const MACHINE: &str = "xdppolicy";
pub const IFACE: &str = "host0";
/// The veth's addresses: 198.18.0.0/15 and fd00::/8 only, traffic only between the two
/// ends.
pub const HOST_V4: &str = "198.18.241.1";
pub const CONTAINER_V4: &str = "198.18.241.2";
pub const HOST_V6: &str = "fd00:5859:7064::1";
pub const CONTAINER_V6: &str = "fd00:5859:7064::2";
/// PATH and locale inside; no pager, no colours.
const ENV: [&str; 6] = [
    "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "SYSTEMD_PAGER=",
    "SYSTEMD_COLORS=0",
    "DEBIAN_FRONTEND=noninteractive",
    "TERM=dumb",
];
/// How long a command inside may take unless told otherwise.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Container {
    nspawn: Child,
    /// The container's PID 1, as this host numbers it.
    pub pid: u32,
    scratch: Scratch,
    off: bool,
}

impl Container {
    /// Boots `rootfs` (read-only, under a tmpfs overlay) and waits until its systemd has
    /// finished starting up; gives both veth ends their addresses.
    pub fn boot(rootfs: &Path) -> Result<Self> {
        let scratch = Scratch::new()?;
        let console = File::create(scratch.console()).context("creating the console log")?;
        // nspawn's pdeathsig: if xtask dies without its guards running (SIGKILL),
        // nspawn gets SIGTERM and powers the container off.
        let nspawn = Command::new("setpriv")
            .args(["--pdeathsig", "TERM", "--", "systemd-nspawn", "--boot"])
            .arg(format!("--directory={}", rootfs.display()))
            .arg(format!("--machine={MACHINE}"))
            // No systemd-machined to register with; stay in this process's cgroup.
            .args(["--register=no", "--keep-unit"])
            // A tmpfs over the cached tree: installing and purging leave it as it was.
            .arg("--volatile=overlay")
            // A bpffs of its own where the host's systemd would have mounted one (a
            // container's systemd does not mount /sys/fs/bpf itself).
            .arg(format!("--bind={}:/sys/fs/bpf", scratch.bpffs.display()))
            // nspawn's own seccomp filter and capability set leave out what the daemon
            // needs: bpf(), CAP_BPF, CAP_PERFMON (CAP_NET_ADMIN comes with a network
            // namespace of its own).
            .args(["--system-call-filter=bpf", "--capability=CAP_BPF,CAP_PERFMON"])
            .arg("--network-veth")
            // systemd's defaults for services on a host (1024 soft, 512 Ki hard), not
            // this shell's: the unit's LimitNOFILE= can only be checked below the hard
            // limit the container's systemd was given.
            .arg("--rlimit=RLIMIT_NOFILE=1024:524288")
            // Every system call a unit's filter refuses goes to the kernel's audit log
            // (systemd sets SECCOMP_FILTER_FLAG_LOG); see `syscalls`.
            .arg("--setenv=SYSTEMD_LOG_SECCOMP=1")
            .arg("--console=read-only")
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .process_group(0)
            .spawn()
            .context("starting systemd-nspawn")?;
        let mut container = Self { nspawn, pid: 0, scratch, off: false };
        container.pid = container.find_init()?;
        container.wait_booted()?;
        container.network()?;
        Ok(container)
    }

    /// The container's PID 1: nspawn's child once it has become systemd.
    fn find_init(&mut self) -> Result<u32> {
        let nspawn = self.nspawn.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            process::check_interrupt()?;
            if let Some(status) = self.nspawn.try_wait()? {
                bail!("systemd-nspawn exited ({status}) before booting:\n{}", self.console_tail());
            }
            let children = fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
                .unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
                let comm = fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    return Ok(child);
                }
            }
            ensure!(Instant::now() < deadline, "no systemd in the container after 20 s");
            process::sleep(Duration::from_millis(20))?;
        }
    }

    fn wait_booted(&mut self) -> Result<()> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        // Until systemd has made /run/systemd/system, systemctl says "offline"; until it
        // listens on its socket, nothing. Then --wait waits for the boot to finish.
        let state = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let out = self.output_within(&["systemctl", "is-system-running", "--wait"], left);
            let out = match out {
                Ok(out) => out,
                Err(e) => return Err(e.context(format!("booting:\n{}", self.console_tail()))),
            };
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !state.is_empty() && state != "offline" {
                break state;
            }
            ensure!(
                Instant::now() < deadline,
                "the container's systemd did not answer within {BOOT_TIMEOUT:?}:\n{}",
                self.console_tail()
            );
            process::sleep(Duration::from_millis(50))?;
        };
        match state.as_str() {
            "running" => Ok(()),
            // Not ours to judge, but say which.
            "degraded" => {
                let failed = self.run(&["systemctl", "--failed", "--no-legend"])?;
                eprintln!("xtask: systemd-test: the container booted degraded:\n{failed}");
                Ok(())
            }
            _ => bail!(
                "the container's systemd is {state:?} after booting:\n{}",
                self.console_tail()
            ),
        }
    }

    /// The last lines of the container's console (its boot messages).
    pub fn console_tail(&self) -> String {
        let text = fs::read_to_string(self.scratch.console()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(30).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// The veth's host end.
    pub fn host_iface(&self) -> String {
        format!("ve-{MACHINE}")
    }

    fn network(&self) -> Result<()> {
        let host = self.host_iface();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Path::new("/sys/class/net").join(&host).exists() {
            ensure!(Instant::now() < deadline, "{host} did not appear");
            process::sleep(Duration::from_millis(20))?;
        }
        let ip = |args: &[&str]| run_cmd(Command::new("ip").args(args).stdout(Stdio::null()));
        ip(&["addr", "add", &format!("{HOST_V4}/30"), "dev", &host])?;
        ip(&["addr", "add", &format!("{HOST_V6}/64"), "dev", &host, "nodad"])?;
        ip(&["link", "set", &host, "up"])?;
        // The container's end, with this host's `ip` in the container's network namespace
        // (minbase has no iproute2).
        let inside = |args: &[&str]| {
            run_within(self.net_command("ip").args(args), COMMAND_TIMEOUT).map(drop)
        };
        inside(&["addr", "add", &format!("{CONTAINER_V4}/30"), "dev", IFACE])?;
        inside(&["addr", "add", &format!("{CONTAINER_V6}/64"), "dev", IFACE, "nodad"])?;
        inside(&["link", "set", IFACE, "up"])
    }

    /// `program` run inside the container: all of its PID 1's namespaces, a clean
    /// environment.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.pid)).args(["--all", "--", "env", "-i"]).args(ENV);
        cmd.arg(program);
        cmd
    }

    /// A program of this host run in the container's network namespace only.
    pub fn net_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.pid)).args(["--net", "--"]).arg(program);
        cmd
    }

    pub fn output_within(&self, argv: &[&str], limit: Duration) -> Result<Output> {
        output_within(self.command(argv[0]).args(&argv[1..]), limit)
    }

    /// Runs `argv` inside; it must succeed within [`COMMAND_TIMEOUT`]. Returns stdout.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        run_within(self.command(argv[0]).args(&argv[1..]), COMMAND_TIMEOUT)
    }

    /// A path inside the container, as this host reaches it.
    pub fn path(&self, inside: &str) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.pid)).join(inside.trim_start_matches('/'))
    }

    /// Writes a file inside, owned by root, mode 0644, by rename: whoever watches its
    /// directory sees it appear whole, as after an editor's save.
    pub fn write(&self, inside: &str, text: &str) -> Result<()> {
        let path = self.path(inside);
        let name = path.file_name().context("a file name")?.to_string_lossy().into_owned();
        let tmp = path.with_file_name(format!(".{name}.xtask-tmp"));
        fs::write(&tmp, text).with_context(|| format!("writing {inside} in the container"))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming over {inside}"))
    }

    /// Copies a host file in.
    pub fn copy_in(&self, from: &Path, inside: &str) -> Result<()> {
        fs::copy(from, self.path(inside))
            .with_context(|| format!("copying {} to {inside} in the container", from.display()))?;
        Ok(())
    }

    /// Powers the container off (systemd's shutdown, as SIGTERM asks nspawn to) and waits
    /// for nspawn to exit.
    pub fn power_off(mut self) -> Result<()> {
        self.off = true;
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        process::signal(self.nspawn.id(), "TERM");
        let deadline = Instant::now() + POWEROFF_TIMEOUT;
        loop {
            if let Some(status) = self.nspawn.try_wait()? {
                // nspawn reports the container's exit; after a poweroff that is 0.
                ensure!(status.success(), "systemd-nspawn exited with {status}");
                return Ok(());
            }
            if Instant::now() >= deadline {
                // Its PID 1 first: with it the whole PID namespace goes, and nspawn with it.
                process::signal(self.pid, "KILL");
                process::signal(self.nspawn.id(), "KILL");
                let _ = self.nspawn.wait();
                bail!("the container did not power off within {POWEROFF_TIMEOUT:?}");
            }
            // Not interruptible: this is the clean-up.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.off {
            eprintln!("xtask: systemd-test: powering the container off");
            if let Err(e) = self.stop() {
                eprintln!("xtask: systemd-test: {e:#}");
            }
        }
        // Gone with the container's network namespace, unless something still held it.
        let host = self.host_iface();
        if Path::new("/sys/class/net").join(&host).exists() {
            let _ = Command::new("ip").args(["link", "del", &host]).status();
        }
    }
}

/// The directory of one run: the bpffs bound into the container and the console log.
/// The bpffs is unmounted and the directory removed on drop; a run killed before that
/// leaves them to the next run, which removes them first.
struct Scratch {
    dir: PathBuf,
    bpffs: PathBuf,
}

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join("xdp-policy-systemd-test");
        let scratch = Self { bpffs: dir.join("bpffs"), dir };
        scratch.clean();
        fs::create_dir_all(&scratch.bpffs)
            .with_context(|| format!("creating {}", scratch.bpffs.display()))?;
        run_cmd(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&scratch.bpffs))?;
        Ok(scratch)
    }

    fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    fn clean(&self) {
        while is_mount_point(&self.bpffs) {
            let unmounted = Command::new("umount").arg(&self.bpffs).status();
            if !unmounted.is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("--lazy").arg(&self.bpffs).status();
                break;
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.clean();
    }
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    let path = path.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(&*path))
}
