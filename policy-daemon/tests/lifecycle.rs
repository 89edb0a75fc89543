//! Lifecycles that must leave the kernel enforcing exactly the policy in force, with the
//! real `xdp-policy run` in a veth namespace pair and traffic as the judge:
//! - a start that fails (no such interface, native mode refused) pins nothing, and maps
//!   left pinned without a link are never trusted by the next start;
//! - a daemon that adopts pins writes what the previous one left in either generation
//!   before it trusts it, across later reloads;
//! - a second daemon on the interface exits 64 naming the first, which stays in force;
//! - a filter detached under a running daemon is reported as not enforcing (log,
//!   STATUS=, metrics, state) and stays detached through reloads until SIGHUP;
//! - maps another program scribbles over are found by `status --verify` and by the
//!   daemon's own audits, and repaired.
//!
//! Needs root (see `support::privileged`); the tests share kernel state, so each holds
//! `support::serial`.

mod support;

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use support::{DAEMON, NotifySocket, PolicyFile, attached_program, scrape, serial, xdp_policy};
use testbed::{RX_IFACE, RX_V4, RX_V6, Testbed, XdpMode};

/// A rule dropping UDP to `port`.
fn drop_udp(name: &str, port: u16) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\naction = \"drop\"\nprotocol = \"udp\"\ndst_ports = {port}\n"
    )
}

fn received(testbed: &Testbed, port: u16) -> u32 {
    testbed.udp_probe(RX_V4.into(), port, 5).expect("probe").received
}

/// Waits until `what` holds, at most `timeout`.
fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// `xdp-policy run --iface IFACE --policy POLICY ARGS` in rx with the testbed's pin and
/// state directories, run until it exits (killed after 10 s: it was meant to exit).
fn run_to_exit(
    testbed: &Testbed,
    iface: &str,
    policy: &Path,
    args: &[&str],
) -> std::process::Output {
    let dirs = testbed.dirs();
    let mut daemon = Command::new("ip")
        .args(["netns", "exec", testbed.rx().name(), DAEMON, "run", "--iface", iface])
        .arg("--policy")
        .arg(policy)
        .args(args)
        .args(["--config", "/dev/null", "--metrics", "off", "--pin-dir"])
        .arg(dirs.pin_dir())
        .arg("--state-dir")
        .arg(dirs.state_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning xdp-policy run");
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.try_wait().expect("waiting").is_none() {
        if Instant::now() > deadline {
            let _ = daemon.kill();
            panic!("xdp-policy run on {iface} kept running; it was expected to exit");
        }
        thread::sleep(Duration::from_millis(20));
    }
    daemon.wait_with_output().expect("its output")
}

/// The pinned files of rx's filter (maps, link, program).
fn pinned_files(testbed: &Testbed, iface: &str) -> Vec<String> {
    let dir = testbed.dirs().pin_dir().join(iface);
    let mut files = Vec::new();
    for sub in [dir.clone(), dir.join("maps")] {
        for entry in fs::read_dir(&sub).into_iter().flatten().flatten() {
            if entry.path().is_file() {
                files.push(entry.path().display().to_string());
            }
        }
    }
    files
}

/// A start that fails after loading its maps (an interface that does not exist, native
/// mode refused) pins nothing; and maps left pinned without a link, as earlier versions
/// left them after such a failure, are removed by the next start instead of being taken
/// for empty ones: its `pass` rule for UDP 53, a map entry of all zeros, is enforced,
/// not the old `drop` that entry held.
#[test]
fn a_failed_start_pins_nothing_and_unlinked_maps_are_never_trusted() {
    let Some(_serial) = serial("a_failed_start_pins_nothing_and_unlinked_maps_are_never_trusted")
    else {
        return;
    };
    let drops = PolicyFile::new("failed-start", &(drop_udp("dns", 53) + &drop_udp("other", 54)));
    // veth refuses native XDP on rx with a peer MTU this large.
    let testbed = Testbed::with_tx_mtu(9000).expect("testbed");
    let pin_dir = testbed.dirs().pin_dir();
    let out = run_to_exit(&testbed, "nosuch0", &drops.0, &["--xdp-mode", "skb"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("interface `nosuch0` does not exist"), "{stderr}");
    assert!(!pin_dir.join("nosuch0").exists(), "no interface: nothing pinned, no directory");

    let out = run_to_exit(&testbed, RX_IFACE, &drops.0, &["--xdp-mode", "native"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("ERANGE"), "{stderr}");
    assert!(!pin_dir.join(RX_IFACE).exists(), "refused: nothing pinned, no directory");

    // Maps pinned without a link: a filter enforced `drops`, then its link pin went.
    testbed.start_daemon(Path::new(DAEMON), &drops.0, XdpMode::Skb).expect("daemon").kill9();
    assert_eq!(received(&testbed, 53), 0);
    fs::remove_file(pin_dir.join(RX_IFACE).join("link")).expect("unpinning the link");
    eventually("the unpinned filter goes", Duration::from_secs(5), || {
        attached_program(&testbed).is_none()
    });
    assert!(pinned_files(&testbed, RX_IFACE).len() > 20, "the old maps are still pinned");

    let pass = PolicyFile::new(
        "failed-start-2",
        &format!(
            "[[rule]]\nname = \"dns\"\naction = \"pass\"\nprotocol = \"udp\"\ndst_ports = 53\n{}",
            drop_udp("other", 54)
        ),
    );
    let daemon = testbed.start_daemon(Path::new(DAEMON), &pass.0, XdpMode::Skb).expect("daemon");
    daemon.wait_for_log("enforcing", 1, Duration::from_secs(10)).expect("enforcing");
    assert!(daemon.log().contains("removed pins of a filter that was never attached"));
    assert_eq!(received(&testbed, 53), 5, "the pass rule for UDP 53 is in force");
    assert_eq!(received(&testbed, 54), 0, "the drop rule for UDP 54 is in force");
    let out = xdp_policy(&testbed, &["status", "--verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    drop(daemon);
}

/// The previous daemon left a /16 of 198.18.0.0 (where the testbed's tx address is) in
/// the source address tables of one generation, and something else in the other. The
/// next daemon adopts the pins and reloads twice, so that a policy with source address
/// tables (for 198.19.0.0/16) is written into that generation again: nothing of the /16
/// may remain there.
#[test]
fn an_adopting_daemon_writes_both_generations_before_it_trusts_them() {
    let Some(_serial) = serial("an_adopting_daemon_writes_both_generations_before_it_trusts_them")
    else {
        return;
    };
    let from = |net: &str, name: &str| {
        format!(
            "[[rule]]\nname = \"{name}\"\naction = \"drop\"\nprotocol = \"udp\"\nsrc = \"{net}\"\n"
        )
    };
    let policy = PolicyFile::new("adopt", &from("198.18.0.0/16", "lab"));
    let testbed = Testbed::new().expect("testbed");
    let first = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    first.wait_for_log("enforcing", 1, Duration::from_secs(10)).expect("enforcing");
    assert_eq!(received(&testbed, 7001), 0, "198.18.0.1 is in the dropped /16");
    policy.write(&drop_udp("port", 7003));
    first.wait_for_log("policy applied", 2, Duration::from_secs(10)).expect("reload");
    assert_eq!(received(&testbed, 7001), 5);
    first.kill9();

    policy.write(&drop_udp("port", 7004));
    let second = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    second.wait_for_log("enforcing", 1, Duration::from_secs(10)).expect("enforcing");
    let steps = [
        from("198.19.0.0/16", "other-lab"),
        from("198.19.0.0/16", "other-lab") + &drop_udp("port", 7004),
    ];
    for (n, text) in steps.iter().enumerate() {
        policy.write(text);
        second.wait_for_log("policy applied", n + 2, Duration::from_secs(10)).expect("reload");
        assert_eq!(received(&testbed, 7001), 5, "reload {n}: 198.18.0.1 is not in 198.19/16");
    }
    let out = xdp_policy(&testbed, &["status", "--verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the audit found drift:\n{text}");
    assert!(text.contains("the kernel held the policy in force"), "{text}");
    drop(second);
}

/// A second daemon for an interface another one enforces on exits 64, naming the
/// first one's pid, and changes nothing: the first one's policy stays in force.
#[test]
fn a_second_daemon_on_the_interface_exits_64_naming_the_first() {
    let Some(_serial) = serial("a_second_daemon_on_the_interface_exits_64_naming_the_first") else {
        return;
    };
    let first_policy = PolicyFile::new("first", &drop_udp("first", 7001));
    let second_policy = PolicyFile::new("second", &drop_udp("second", 7002));
    let testbed = Testbed::new().expect("testbed");
    let first =
        testbed.start_daemon(Path::new(DAEMON), &first_policy.0, XdpMode::Skb).expect("daemon");
    first.wait_for_log("enforcing", 1, Duration::from_secs(10)).expect("enforcing");
    let output = run_to_exit(&testbed, RX_IFACE, &second_policy.0, &["--xdp-mode", "skb"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!("another xdp-policy daemon (pid {}) holds", first.pid())),
        "{stderr}"
    );
    assert_eq!(received(&testbed, 7001), 0, "the first daemon's policy is in force");
    assert_eq!(received(&testbed, 7002), 5, "the second daemon's policy is not");
    let out = xdp_policy(&testbed, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(status[0]["state"]["pid"], first.pid());
    assert_eq!(status[0]["state"]["generation"], 1);
    let out = first.stop().expect("stop");
    assert!(out.status.success(), "{}", out.stderr);
}

/// `xdp-policy detach` while the daemon runs: the daemon says so (log, STATUS=, the
/// metrics), stops writing the state file, does not attach again on a policy change,
/// and does on SIGHUP.
#[test]
fn a_filter_detached_under_the_daemon_stays_detached_until_sighup() {
    let Some(_serial) = serial("a_filter_detached_under_the_daemon_stays_detached_until_sighup")
    else {
        return;
    };
    let policy = PolicyFile::new("detach", &drop_udp("block", 7001));
    let testbed = Testbed::new().expect("testbed");
    let notify = NotifySocket::bind(&testbed, "notify-detach");
    let addr = "127.0.0.1:9559";
    let daemon = testbed
        .start_daemon_with_env(
            Path::new(DAEMON),
            &policy.0,
            XdpMode::Skb,
            &["--metrics", addr],
            &notify.env(),
        )
        .expect("daemon");
    let next = || notify.next();
    assert_eq!(next(), "READY=1\nSTATUS=veth1: 1 rules, generation 1\n");
    assert_eq!(received(&testbed, 7001), 0);

    let out = xdp_policy(&testbed, &["detach"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // `detach` returns once the kernel has let the link go.
    assert_eq!(attached_program(&testbed), None, "the program is still on the interface");
    daemon.wait_for_log("the filter was detached", 1, Duration::from_secs(5)).expect("noticed");
    assert_eq!(next(), "STATUS=veth1: detached, not enforcing (SIGHUP attaches it again)\n");
    assert_eq!(received(&testbed, 7001), 5, "nothing enforces: the datagrams arrive");
    // Two more ticks of the daemon: it must not write its state (or pins) back.
    thread::sleep(Duration::from_millis(2500));
    let state = testbed.dirs().state_dir().join(format!("{RX_IFACE}.json"));
    assert!(!state.exists(), "the state file came back");
    let metrics = scrape(&testbed, addr, "/metrics");
    assert!(metrics.contains("xdp_policy_enforcing{iface=\"veth1\"} 0"), "{metrics}");

    policy.write(&drop_udp("block", 7002));
    daemon.wait_for_log("not applied there", 1, Duration::from_secs(5)).expect("reload seen");
    assert!(attached_program(&testbed).is_none(), "a policy change attached it again");

    daemon.signal(Signal::SIGHUP).expect("SIGHUP");
    daemon
        .wait_for_log("the detached filter is attached again", 1, Duration::from_secs(10))
        .expect("attached again");
    assert!(attached_program(&testbed).is_some());
    assert_eq!(received(&testbed, 7002), 0, "the policy in force, the changed one");
    assert_eq!(received(&testbed, 7001), 5);
    assert!(state.exists(), "the state file is written again");
    let out = daemon.stop().expect("stop");
    assert!(out.status.success(), "{}", out.stderr);
}

/// Another program scribbles over every map of both generations: `status --verify` has
/// the daemon audit at once, reports the drift (exit 1), and the daemon repairs it; the
/// next `status --verify` finds nothing, and traffic gets the policy's verdicts. The
/// daemon's own periodic audit finds and repairs a second scribbling by itself.
#[test]
fn scribbled_maps_are_found_and_repaired() {
    let Some(_serial) = serial("scribbled_maps_are_found_and_repaired") else { return };
    let text = format!(
        "{}[[rule]]\nname = \"lab\"\naction = \"pass\"\nsrc = [\"198.18.0.0/24\", \"fd00::/64\"]\n\
         dst_ports = 7002\n[[rule]]\nname = \"v6-block\"\naction = \"drop\"\nprotocol = \"udp\"\n\
         src = \"fd00::/64\"\ndst_ports = 7003\n",
        drop_udp("block", 7001)
    );
    let policy = PolicyFile::new("scribble", &text);
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed
        .start_daemon_with(Path::new(DAEMON), &policy.0, XdpMode::Skb, &["--audit-interval", "2"])
        .expect("daemon");
    daemon.wait_for_log("enforcing", 1, Duration::from_secs(10)).expect("enforcing");
    let verify = || {
        let out = xdp_policy(&testbed, &["status", "--verify"]);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, text) = verify();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("the kernel held the policy in force"), "{text}");

    let maps = testbed.dirs().pin_dir().join(RX_IFACE).join("maps");
    let written = support::scribble::pinned(&maps, 0x5c21_bb1e);
    let (code, text) = verify();
    assert_eq!(code, Some(1), "the scribbling ({written:?}) went unnoticed:\n{text}");
    assert!(text.contains("map entries differed from the policy"), "{text}");
    assert!(text.contains(", repaired"), "{text}");
    let (code, text) = verify();
    assert_eq!(code, Some(0), "still drifting after the repair:\n{text}");
    assert_eq!(received(&testbed, 7001), 0);
    assert_eq!(received(&testbed, 7002), 5);
    assert_eq!(testbed.udp_probe(RX_V6.into(), 7003, 5).expect("probe").received, 0);
    assert_eq!(testbed.udp_probe(RX_V6.into(), 7004, 5).expect("probe").received, 5);

    // The daemon's own audit, every 2 s here.
    let before = daemon.log().matches("audit: repaired").count();
    support::scribble::pinned(&maps, 0xdead_beef);
    daemon
        .wait_for_log("audit: repaired", before + 1, Duration::from_secs(10))
        .expect("the periodic audit repairs it");
    assert_eq!(received(&testbed, 7001), 0);
    assert_eq!(received(&testbed, 7002), 5);
    let out = xdp_policy(&testbed, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let total = status[0]["state"]["audit"]["drift_total"].as_u64().expect("drift_total");
    assert!(total > 1000, "drift_total {total}");
    let out = daemon.stop().expect("stop");
    assert!(out.status.success(), "{}", out.stderr);
}

/// A state file damaged while no daemon runs (a hash that is not hex, a counter slot
/// past the last): `status` says it is ignored and shows the rest, and the next daemon
/// ignores it with a warning, counts into fresh slots and stops cleanly.
#[test]
fn a_damaged_state_file_is_ignored_never_trusted() {
    let Some(_serial) = serial("a_damaged_state_file_is_ignored_never_trusted") else { return };
    let policy = PolicyFile::new("damaged-state", &drop_udp("block", 7001));
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    daemon.wait_for_log("enforcing", 1, Duration::from_secs(10)).expect("enforcing");
    daemon.kill9();
    let path = testbed.dirs().state_dir().join(format!("{RX_IFACE}.json"));
    let mut state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("the state file")).expect("json");
    state["policy_hash"] = "é".repeat(32).into();
    state["rules"][0]["slot"] = 5000.into();
    fs::write(&path, state.to_string()).expect("damaging the state file");

    let out = xdp_policy(&testbed, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("state file ignored"), "{text}");

    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    daemon.wait_for_log("enforcing", 1, Duration::from_secs(10)).expect("enforcing");
    assert!(daemon.log().contains("ignoring the state file"), "{}", daemon.log());
    assert_eq!(received(&testbed, 7001), 0);
    let out = daemon.stop().expect("stop");
    assert!(out.status.success(), "{}", out.stderr);
    let counters = testbed.counters(Path::new(DAEMON)).expect("the counters");
    assert_eq!(counters.rules.get("block"), Some(&5), "counted in a fresh slot");
    let out = xdp_policy(&testbed, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(status[0]["rules"][0]["packets"], 5);
}
