//! `cargo xtask package`: the Debian package, from the release binary that embeds the
//! eBPF object. cargo-deb runs with `--no-build`: a build of its own would not set
//! `XDP_POLICY_EBPF_OBJECT` and could embed no program at all.
//!
//! `--verify` checks what the systemd layer (`crate::systemd`, run by `cargo xtask test`
//! and `cargo xtask systemd-test`) does not: the installed binary outside systemd. It
//! installs the package on this machine, runs `--version` and `check` on the installed
//! examples, checks that `run` with the shipped configuration exits 64, and attaches on a
//! veth with only the unit's capabilities and no systemd sandbox around it, as the
//! Kubernetes DaemonSet runs it; then purges it. What the package installs, the unit
//! under systemd, and what purging leaves are the systemd layer's. Every change to the
//! machine is undone by a guard, also when a check fails.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{self, Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    build::{self, cargo, workspace_root},
    setup::{self, Toolchain, run_cmd},
};

const DEB_NAME: &str = "xdp-policy";
const BINARY: &str = "/usr/bin/xdp-policy";
const UNIT: &str = "/usr/lib/systemd/system/xdp-policy.service";
const CONFIG: &str = "/etc/xdp-policy/xdp-policy.toml";
const EXAMPLES_DIR: &str = "/usr/share/doc/xdp-policy/examples";
/// How long the installed daemon may take from start to attached.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long it may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the release binary with the eBPF object embedded, then the .deb; returns its path.
pub fn build(toolchain: &Toolchain) -> Result<PathBuf> {
    setup::ensure_packaging()?;
    build::daemon(toolchain, true)?;
    let output = cargo()
        .args(["deb", "--package", "policy-daemon", "--no-build", "--output"])
        .arg(build::target_dir().join("debian"))
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo deb")?;
    ensure!(output.status.success(), "cargo deb failed: {}", output.status);
    // cargo-deb prints the path of the package it wrote as its last line.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let deb = stdout
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(".deb"))
        .map(|l| PathBuf::from(l.trim()))
        .with_context(|| format!("cargo deb printed no .deb path: {stdout:?}"))?;
    ensure!(deb.exists(), "cargo deb reported {} but it is missing", deb.display());
    let size = fs::metadata(&deb).with_context(|| format!("{}", deb.display()))?.len();
    eprintln!("xtask: package: {} ({} KiB)", deb.display(), size.div_ceil(1024));
    Ok(deb)
}

/// Installs `deb`, checks the binary outside systemd, purges it. Needs root, and a
/// machine without the package.
pub fn verify(deb: &Path) -> Result<()> {
    ensure!(setup::is_root(), "verifying the package installs it with dpkg: run as root");
    if is_installed() {
        bail!(
            "{DEB_NAME} is already installed on this machine; --verify would replace and \
             purge it (with its configuration): `dpkg --purge {DEB_NAME}` first if that is \
             what you want"
        );
    }
    eprintln!("xtask: verify: dpkg -i {}", deb.display());
    let installed = Installed::new(deb)?;

    let version = capture(Command::new(BINARY).arg("--version"))?;
    let want = format!("xdp-policy {}", env!("CARGO_PKG_VERSION"));
    ensure!(version.trim() == want, "`{BINARY} --version` printed {version:?}, expected {want:?}");
    for example in ["edge-deny-list.toml", "edge.d"] {
        let path = Path::new(EXAMPLES_DIR).join(example);
        let out = capture(Command::new(BINARY).arg("check").arg(&path))?;
        ensure!(out.contains(": valid,"), "`xdp-policy check {}` printed {out:?}", path.display());
    }
    // The shipped configuration names no interface: `run` must say so and exit 64, the
    // status the unit does not restart on.
    let out = output(Command::new(BINARY).args(["run", "--config", CONFIG]))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(64) && stderr.contains("nothing to enforce"),
        "`xdp-policy run --config {CONFIG}` should exit 64 with nothing to enforce; \
         got {}: {stderr}",
        out.status
    );
    eprintln!("xtask: verify: {}; check of the examples passes; {CONFIG} parses", version.trim());

    attach_with_unit_capabilities()?;

    eprintln!("xtask: verify: dpkg --purge {DEB_NAME}");
    installed.purge()?;
    ensure!(!is_installed(), "dpkg still lists {DEB_NAME} after the purge");
    eprintln!("xtask: verify: purged; the binary is good (the systemd layer checks the rest)");
    Ok(())
}

/// Runs the installed daemon in a throw-away network namespace, on a veth, with only the
/// capabilities the installed unit grants, pinning to a bpffs of its own; it must attach
/// and stop cleanly. This checks the unit's capability set against the real binary (the
/// seccomp filter and the file-system sandbox need systemd itself).
fn attach_with_unit_capabilities() -> Result<()> {
    let unit = fs::read_to_string(UNIT).with_context(|| format!("reading {UNIT}"))?;
    let caps = unit_setting(&unit, "CapabilityBoundingSet")?;
    ensure!(
        unit_setting(&unit, "AmbientCapabilities")? == caps,
        "the unit's AmbientCapabilities= and CapabilityBoundingSet= differ"
    );
    let bounding: Vec<String> = caps
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();

    let netns = netns_with_veth(&format!("xdp-policy-pkg-{}", process::id()))?;
    let scratch = Scratch::new()?;
    let mut daemon = Command::new("ip")
        .args(["netns", "exec", netns.name(), "setpriv"])
        .arg(format!("--bounding-set=-all,{}", bounding.join(",")))
        .args(["--inh-caps=-all", BINARY, "run", "--iface", VETH, "--policy"])
        .arg(Path::new(EXAMPLES_DIR).join("edge-deny-list.toml"))
        .arg("--pin-dir")
        .arg(scratch.bpffs.join("xdp-policy"))
        .arg("--state-dir")
        .arg(&scratch.state)
        .args(["--metrics", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the installed xdp-policy in a network namespace")?;
    let result = wait_attached(&mut daemon).and_then(|()| stop(&mut daemon));
    if result.is_err() {
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    result.with_context(|| {
        format!("the installed xdp-policy with only {caps} (the unit's capabilities)")
    })?;
    eprintln!("xtask: verify: attached on a veth and stopped cleanly with only {caps}");
    Ok(())
}

/// Waits for the daemon's "attached" log line, or fails with what it printed.
fn wait_attached(daemon: &mut Child) -> Result<()> {
    let stderr = daemon.stderr.take().context("no stderr pipe")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Keep draining after "attached": a full pipe would block the daemon.
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    let mut log = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("attached") => return Ok(()),
            Ok(line) => log.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("not attached after {ATTACH_TIMEOUT:?}:\n{}", log.join("\n"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = daemon.wait().context("waiting for xdp-policy")?;
                bail!("exited before attaching ({status}):\n{}", log.join("\n"))
            }
        }
    }
}

fn stop(daemon: &mut Child) -> Result<()> {
    run_cmd(Command::new("kill").args(["-TERM", &daemon.id().to_string()]))?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if let Some(status) = daemon.try_wait().context("waiting for xdp-policy")? {
            ensure!(status.success(), "exited with {status} after SIGTERM");
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "still running {STOP_TIMEOUT:?} after SIGTERM");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The value of `Key=` in a unit file (the last one, as systemd reads it).
fn unit_setting(unit: &str, key: &str) -> Result<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(|v| v.trim().to_string())
        .with_context(|| format!("{UNIT} has no {key}="))
}

/// Example policy files as installed under the examples directory: every `*.toml` of
/// `policies/` and of its subdirectories, relative to `policies/`.
pub fn example_policies() -> Result<Vec<PathBuf>> {
    let root = workspace_root().join("policies");
    let mut found = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                found.push(path.strip_prefix(&root)?.to_path_buf());
            }
        }
    }
    ensure!(!found.is_empty(), "no example policies in {}", root.display());
    found.sort();
    Ok(found)
}

fn is_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", DEB_NAME])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "installed")
}

fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output().with_context(|| format!("could not run {cmd:?}"))
}

/// Runs `cmd`, which must succeed, and returns its stdout.
fn capture(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The package while installed: purged on drop unless `purge` already did.
struct Installed {
    purged: bool,
}

impl Installed {
    fn new(deb: &Path) -> Result<Self> {
        let installed = Self { purged: false };
        run_cmd(Command::new("dpkg").arg("-i").arg(deb))
            .with_context(|| format!("dpkg -i {}", deb.display()))?;
        Ok(installed)
    }

    fn purge(mut self) -> Result<()> {
        self.purged = true;
        run_cmd(Command::new("dpkg").args(["--purge", DEB_NAME]))
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.purged {
            eprintln!("xtask: verify failed: purging {DEB_NAME} again");
            let _ = Command::new("dpkg").args(["--purge", DEB_NAME]).status();
        }
    }
}

/// The interface the installed daemon attaches to, one end of a veth pair.
const VETH: &str = "xpkg0";

/// A network namespace (the test rig's guard: deleted on drop) with a veth pair in it.
fn netns_with_veth(name: &str) -> Result<testbed::NetNs> {
    let netns = testbed::NetNs::create(name)?;
    let ip = |args: &[&str]| run_cmd(Command::new("ip").args(["-n", name]).args(args));
    ip(&["link", "add", VETH, "type", "veth", "peer", "name", "xpkg1"])?;
    ip(&["link", "set", VETH, "up"])?;
    ip(&["link", "set", "xpkg1", "up"])?;
    Ok(netns)
}

/// A bpffs of its own for the daemon's pins, and a state directory; unmounted and
/// removed on drop, which also drops whatever was pinned there.
struct Scratch {
    root: PathBuf,
    bpffs: PathBuf,
    state: PathBuf,
    mounted: bool,
}

impl Scratch {
    fn new() -> Result<Self> {
        let root = std::env::temp_dir().join(format!("xdp-policy-pkg-{}", process::id()));
        let mut scratch =
            Self { bpffs: root.join("bpffs"), state: root.join("state"), root, mounted: false };
        fs::create_dir_all(&scratch.bpffs)?;
        fs::create_dir_all(&scratch.state)?;
        run_cmd(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&scratch.bpffs))?;
        scratch.mounted = true;
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.bpffs).status();
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}
