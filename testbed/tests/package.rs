//! The Debian package on this machine, outside systemd: what the systemd layer of
//! `cargo xtask test` (which boots the package under systemd in a container) does not
//! check. It installs the package at `XDP_POLICY_DEB`, runs `--version` and `check` on
//! the installed examples, checks that `run` with the shipped configuration exits 64,
//! and attaches on a veth with only the unit's capabilities and no systemd sandbox
//! around it, as the Kubernetes DaemonSet runs it; then purges it. Every change to the
//! machine is undone by a guard, also when a check fails.
//!
//! It changes the machine (dpkg), so it runs only when asked:
//! `cargo xtask package --verify` builds the package and runs it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use testbed::{DaemonCommand, Testbed, XdpMode};

const DEB_NAME: &str = "xdp-policy";
const BINARY: &str = "/usr/bin/xdp-policy";
const UNIT: &str = "/usr/lib/systemd/system/xdp-policy.service";
const CONFIG: &str = "/etc/xdp-policy/xdp-policy.toml";
const EXAMPLES_DIR: &str = "/usr/share/doc/xdp-policy/examples";

#[test]
#[ignore = "installs and purges the package: run by `cargo xtask package --verify`"]
fn the_installed_package_runs_outside_systemd() {
    let deb = PathBuf::from(
        std::env::var_os("XDP_POLICY_DEB").expect("XDP_POLICY_DEB: the package to verify"),
    );
    assert!(testbed::is_root(), "verifying the package installs it with dpkg: run as root");
    assert!(
        !is_installed(),
        "{DEB_NAME} is already installed on this machine; verifying would replace and purge it \
         (with its configuration): `dpkg --purge {DEB_NAME}` first if that is what you want"
    );
    eprintln!("verify: dpkg -i {}", deb.display());
    let installed = Installed::new(&deb);

    let version = stdout_of(Command::new(BINARY).arg("--version"));
    assert_eq!(version.trim(), format!("xdp-policy {}", env!("CARGO_PKG_VERSION")));
    for example in ["edge-deny-list.toml", "edge.d"] {
        let path = Path::new(EXAMPLES_DIR).join(example);
        let out = stdout_of(Command::new(BINARY).arg("check").arg(&path));
        assert!(out.contains(": valid,"), "`xdp-policy check {}` printed {out:?}", path.display());
    }
    // The shipped configuration names no interface: `run` must say so and exit 64, the
    // status the unit does not restart on.
    let out = output(Command::new(BINARY).args(["run", "--config", CONFIG]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(64) && stderr.contains("nothing to enforce"),
        "`xdp-policy run --config {CONFIG}` should exit 64 with nothing to enforce; got {}: \
         {stderr}",
        out.status
    );
    eprintln!("verify: {}; check of the examples passes; {CONFIG} parses", version.trim());

    attaches_with_the_units_capabilities();

    eprintln!("verify: dpkg --purge {DEB_NAME}");
    installed.purge();
    assert!(!is_installed(), "dpkg still lists {DEB_NAME} after the purge");
}

/// Runs the installed daemon on the testbed's veth with only the capabilities the
/// installed unit grants; it must attach and stop cleanly. This checks the unit's
/// capability set against the real binary (the seccomp filter and the file-system
/// sandbox need systemd itself: the systemd layer's).
fn attaches_with_the_units_capabilities() {
    let unit = fs::read_to_string(UNIT).unwrap_or_else(|e| panic!("reading {UNIT}: {e}"));
    let caps = unit_setting(&unit, "CapabilityBoundingSet");
    assert_eq!(
        unit_setting(&unit, "AmbientCapabilities"),
        caps,
        "the unit's AmbientCapabilities= and CapabilityBoundingSet= differ"
    );
    let bounding: Vec<String> = caps
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding = format!("--bounding-set=-all,{}", bounding.join(","));
    let testbed = Testbed::new().expect("testbed");
    let policy = Path::new(EXAMPLES_DIR).join("edge-deny-list.toml");
    let launcher = ["setpriv", &bounding, "--inh-caps=-all"];
    let daemon = testbed
        .start(&DaemonCommand {
            launcher: &launcher,
            ..DaemonCommand::new(Path::new(BINARY), &policy, XdpMode::Auto)
        })
        .unwrap_or_else(|e| panic!("the installed daemon with only {caps}: {e}"));
    let stopped = daemon.stop().expect("stopping the daemon");
    assert!(
        stopped.status.success(),
        "the installed daemon with only {caps} exited with {} after SIGTERM:\n{}",
        stopped.status,
        stopped.stderr
    );
    eprintln!("verify: attached on a veth and stopped cleanly with only {caps}");
}

/// The value of `Key=` in a unit file (the last one, as systemd reads it).
fn unit_setting(unit: &str, key: &str) -> String {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("{UNIT} has no {key}="))
}

fn is_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", DEB_NAME])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "installed")
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"))
}

/// Runs `cmd`, which must succeed, and returns its stdout.
fn stdout_of(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package while installed: purged on drop unless `purge` already did.
struct Installed {
    purged: bool,
}

impl Installed {
    fn new(deb: &Path) -> Self {
        let installed = Self { purged: false };
        let out = output(Command::new("dpkg").arg("-i").arg(deb));
        assert!(
            out.status.success(),
            "dpkg -i {} failed: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        installed
    }

    fn purge(mut self) {
        self.purged = true;
        let out = output(Command::new("dpkg").args(["--purge", DEB_NAME]));
        assert!(
            out.status.success(),
            "dpkg --purge failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.purged {
            eprintln!("verify failed: purging {DEB_NAME} again");
            let _ = Command::new("dpkg").args(["--purge", DEB_NAME]).status();
        }
    }
}
