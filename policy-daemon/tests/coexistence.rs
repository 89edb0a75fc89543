//! xdp-policy beside other XDP tools, with Debian's xdp-tools (`xdp-filter`,
//! `xdp-loader`) as the other party, in a veth namespace pair. xdp-policy takes an
//! interface alone (a bpf_link): a start where another program runs fails and names it,
//! and while xdp-policy enforces, the other tools can neither attach nor detach it —
//! under a stream of packets to a blocked port, not one gets through.
//!
//! Needs root (see `support::privileged`) and xdp-tools (`cargo xtask setup`); the tests
//! share kernel state, so each holds `support::serial`.

mod support;

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use testbed::{RX_IFACE, RX_V4, Testbed, TestbedError, XdpMode};

use support::{DAEMON, PolicyFile, block_udp, serial};

const BLOCKED: u16 = 7101;
const OPEN: u16 = 7102;

/// xdp-tools commands run in rx, on a bpffs of their own (unmounted on drop). They look
/// for one at /sys/fs/bpf, which `ip netns exec` replaces with rx's sysfs: each command
/// bind-mounts this one there first, so that what one command pins (xdp-filter's maps)
/// the next finds.
struct XdpTools<'a> {
    testbed: &'a Testbed,
    bpffs: tempfile::TempDir,
}

impl<'a> XdpTools<'a> {
    fn new(testbed: &'a Testbed) -> Self {
        let bpffs = support::temp_dir("xdp-tools");
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(bpffs.path())
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a bpffs for xdp-tools: {status}");
        Self { testbed, bpffs }
    }

    /// `tool ARGS` in rx, with `env` set; its output.
    fn run(&self, env: &[(&str, &str)], tool: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", self.testbed.rx().name(), "sh", "-c"])
            .arg(r#"mount --bind "$0" /sys/fs/bpf && exec "$@""#)
            .arg(self.bpffs.path())
            .arg(tool)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("running {tool} (is xdp-tools installed?): {e}"))
    }
}

impl Drop for XdpTools<'_> {
    fn drop(&mut self) {
        // Unmounting drops xdp-filter's pins; a program it attached goes with the
        // namespaces. Nothing useful to do on failure.
        let _ = Command::new("umount").arg("-l").arg(self.bpffs.path()).status();
    }
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    )
}

#[test]
fn a_start_beside_another_xdp_program_fails_and_names_it() {
    let Some(_serial) = serial("a_start_beside_another_xdp_program_fails_and_names_it") else {
        return;
    };
    let policy = PolicyFile::new("coexistence", &block_udp(BLOCKED));
    let testbed = Testbed::new().expect("testbed");
    let tools = XdpTools::new(&testbed);
    // Attached on its own, the way libxdp attaches when it cannot (or is told not to)
    // use its multi-program dispatcher.
    let load = tools.run(
        &[("LIBXDP_SKIP_DISPATCHER", "1")],
        "xdp-filter",
        &["load", "--mode", "skb", RX_IFACE],
    );
    assert!(load.status.success(), "xdp-filter load: {}", text(&load));
    let filter = support::attached_program(&testbed).expect("xdp-filter's program attached");

    let error = match testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb) {
        Ok(daemon) => panic!("xdp-policy started beside xdp-filter; log:\n{}", daemon.log()),
        Err(TestbedError::DaemonExited { status, stderr, .. }) => {
            assert_eq!(status.code(), Some(1), "{stderr}");
            stderr
        }
        Err(e) => panic!("starting xdp-policy: {e}"),
    };
    eprintln!("xdp-policy beside xdp-filter: {}", error.trim_end());
    let expected = format!("`{RX_IFACE}` already runs XDP program `xdpfilt_");
    assert!(error.contains(&expected), "the error must name xdp-filter's program:\n{error}");
    assert!(error.contains(&format!("(id {filter}, skb mode)")), "{error}");
    assert!(error.contains(&format!("xdp-loader unload {RX_IFACE} --all")), "{error}");
    assert_eq!(support::attached_program(&testbed), Some(filter), "xdp-filter was disturbed");
    let link = testbed.dirs().pin_dir().join(RX_IFACE).join("link");
    assert!(!link.exists(), "a failed start left {} pinned", link.display());

    // Once xdp-filter is unloaded, xdp-policy starts and enforces.
    let unload = tools.run(&[], "xdp-filter", &["unload", RX_IFACE]);
    assert!(unload.status.success(), "xdp-filter unload: {}", text(&unload));
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    let probe = |port| testbed.udp_probe(RX_V4.into(), port, 10).expect("udp probe").received;
    assert_eq!(probe(BLOCKED), 0, "log:\n{}", daemon.log());
    assert_eq!(probe(OPEN), 10, "log:\n{}", daemon.log());
}

#[test]
fn xdp_tools_cannot_take_or_clear_an_interface_xdp_policy_enforces() {
    let Some(_serial) = serial("xdp_tools_cannot_take_or_clear_an_interface_xdp_policy_enforces")
    else {
        return;
    };
    let policy = PolicyFile::new("coexistence", &block_udp(BLOCKED));
    let testbed = Testbed::new().expect("testbed");
    let tools = XdpTools::new(&testbed);
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    let ours = support::attached_program(&testbed).expect("xdp-policy's program attached");

    // Each attempt must fail, and none may open a gap: a stream to both ports runs
    // throughout, for at most 20 s.
    // (tool, arguments, what it must say on refusing)
    let attempts: [(&str, &[&str], &str); 4] = [
        ("xdp-filter", &["load", "--mode", "skb", RX_IFACE], "Device or resource busy"),
        ("xdp-filter", &["unload", RX_IFACE], "xdp-filter is not loaded"),
        ("xdp-loader", &["unload", RX_IFACE, "--all"], "Device or resource busy"),
        ("xdp-filter", &["load", RX_IFACE], "Device or resource busy"),
    ];
    let mut refused = Vec::new();
    let result = testbed
        .udp_stream([BLOCKED, OPEN], Duration::from_secs(20), Duration::from_micros(300), |_| {
            for (tool, args, refusal) in attempts {
                std::thread::sleep(Duration::from_millis(200));
                let out = tools.run(&[], tool, args);
                let command = format!("{tool} {}", args.join(" "));
                assert!(!out.status.success(), "{command} succeeded: {}", text(&out));
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    stderr.contains(refusal),
                    "{command}: expected {refusal:?}: {}",
                    text(&out)
                );
                refused.push(format!("{command}: {}", stderr.lines().last().unwrap_or_default()));
            }
            std::thread::sleep(Duration::from_millis(200));
        })
        .expect("the udp stream");
    eprintln!(
        "refused: {}; blocked port: {} sent, {} received; open port: {} sent, {} received",
        refused.join("; "),
        result.sent[0],
        result.received[0],
        result.sent[1],
        result.received[1]
    );
    assert_eq!(
        result.received[0],
        0,
        "packets to the blocked port got through; log:\n{}",
        daemon.log()
    );
    assert_eq!(result.received[1], result.sent[1], "the open port lost packets");
    assert!(result.sent[0] > 500, "too little traffic to prove anything: {}", result.sent[0]);
    assert_eq!(
        support::attached_program(&testbed),
        Some(ours),
        "xdp-policy's program was replaced"
    );
}
