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
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use support::{DAEMON, PolicyFile, attached_program, drop_udp, scrape, serial, xdp_policy};
use testbed::{DaemonCommand, RX_IFACE, RX_V4, RX_V6, Testbed, TestbedError, XdpMode};

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

/// `xdp-policy run --iface IFACE --policy POLICY --xdp-mode MODE` in rx with the
/// testbed's pin and state directories, which must exit before it is ready; its exit
/// status and log.
fn run_to_exit(
    testbed: &Testbed,
    iface: &str,
    policy: &Path,
    mode: XdpMode,
) -> (std::process::ExitStatus, String) {
    match testbed
        .start(&DaemonCommand { iface, ..DaemonCommand::new(Path::new(DAEMON), policy, mode) })
    {
        Err(TestbedError::DaemonExited { status, stderr, .. }) => (status, stderr),
        Ok(daemon) => panic!("xdp-policy run on {iface} became ready:\n{}", daemon.log()),
        Err(other) => panic!("expected xdp-policy run on {iface} to exit: {other}"),
    }
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
    let (status, stderr) = run_to_exit(&testbed, "nosuch0", &drops.0, XdpMode::Skb);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("interface `nosuch0` does not exist"), "{stderr}");
    assert!(!pin_dir.join("nosuch0").exists(), "no interface: nothing pinned, no directory");

    let (status, stderr) = run_to_exit(&testbed, RX_IFACE, &drops.0, XdpMode::Native);
    assert!(!status.success(), "{stderr}");
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
    assert!(daemon.log().contains("removed the pins of a filter without a link"));
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
    assert_eq!(received(&testbed, 7001), 0, "198.18.0.1 is in the dropped /16");
    policy.write(&drop_udp("port", 7003));
    first.wait_for_log("policy applied", 2, Duration::from_secs(10)).expect("reload");
    assert_eq!(received(&testbed, 7001), 5);
    first.kill9();

    // What each step must enforce, with what the first daemon left in its generations
    // (the /16 in one, the 7003 rule in the other) never showing through: datagrams
    // from 198.18.0.1 to 7001, 7003 and 7004 received (of 5).
    let verify = |step: &str, expected: [u32; 3]| {
        let got = [7001, 7003, 7004].map(|port| received(&testbed, port));
        assert_eq!(got, expected, "{step}: received at 7001, 7003, 7004");
        let out = xdp_policy(&testbed, &["status", "--verify"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{step}: the audit found drift:\n{text}");
        assert!(text.contains("the kernel held the policy in force"), "{step}: {text}");
    };
    policy.write(&drop_udp("port", 7004));
    let second = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    verify("adopted", [5, 5, 0]);
    let steps = [
        (from("198.19.0.0/16", "other-lab"), [5, 5, 5]),
        (from("198.19.0.0/16", "other-lab") + &drop_udp("port", 7004), [5, 5, 0]),
    ];
    for (n, (text, expected)) in steps.iter().enumerate() {
        policy.write(text);
        second.wait_for_log("policy applied", n + 2, Duration::from_secs(10)).expect("reload");
        verify(&format!("reload {n}"), *expected);
    }
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
    let (status, stderr) = run_to_exit(&testbed, RX_IFACE, &second_policy.0, XdpMode::Skb);
    assert_eq!(status.code(), Some(64), "{stderr}");
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
    let addr = "127.0.0.1:9559";
    let daemon = testbed
        .start_daemon_with(Path::new(DAEMON), &policy.0, XdpMode::Skb, &["--metrics", addr])
        .expect("daemon");
    let next = || daemon.next_notification().expect("a notification");
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

    // The daemon's own audit, every 2 s here. One may run while the scribbler is still
    // at work and repair only what was scribbled so far: wait for a repair, and for an
    // audit that began once the scribbling was over (its record lands in the state file
    // after any repair it made).
    let before = daemon.log().matches("audit: repaired").count();
    support::scribble::pinned(&maps, 0xdead_beef);
    let scribbled_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    daemon
        .wait_for_log("audit: repaired", before + 1, Duration::from_secs(10))
        .expect("the periodic audit repairs it");
    let state = testbed.dirs().state_dir().join(format!("{RX_IFACE}.json"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let audit_at = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["audit"]["at_ms"].as_u64());
        if audit_at.is_some_and(|at| at >= scribbled_ms) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no audit after the scribbling");
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// `--audit-interval 0` turns the periodic audit off, not the daemon: it runs, reloads,
/// and `status --verify` (SIGUSR1) still audits.
#[test]
fn an_audit_interval_of_0_turns_off_the_interval_not_the_audit() {
    let Some(_serial) = serial("an_audit_interval_of_0_turns_off_the_interval_not_the_audit")
    else {
        return;
    };
    let policy = PolicyFile::new("no-interval", &drop_udp("block", 7001));
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed
        .start_daemon_with(Path::new(DAEMON), &policy.0, XdpMode::Skb, &["--audit-interval", "0"])
        .expect("daemon");
    assert_eq!(received(&testbed, 7001), 0);
    let out = xdp_policy(&testbed, &["status", "--verify", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(status[0]["state"]["audit"]["count"], 1, "the audit status --verify asked for");
    policy.write(&drop_udp("block", 7002));
    daemon.wait_for_log("policy applied", 2, Duration::from_secs(10)).expect("reload");
    assert_eq!(received(&testbed, 7002), 0);
    let out = daemon.stop().expect("stop");
    assert!(out.status.success(), "{}", out.stderr);
}

/// A daemon that finds its link pinned but the interface replaced since (the kernel
/// released the link from the old one) attaches afresh on the pinned maps: the policy
/// is enforced on the new interface and the rule's counter runs on.
#[test]
fn a_pinned_link_whose_interface_was_replaced_is_attached_afresh() {
    let Some(_serial) = serial("a_pinned_link_whose_interface_was_replaced_is_attached_afresh")
    else {
        return;
    };
    let policy = PolicyFile::new("replaced", &drop_udp("block", 7001));
    let testbed = Testbed::new().expect("testbed");
    let first = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    assert_eq!(received(&testbed, 7001), 0);
    first.kill9();
    testbed.remove_veth().expect("removing the veth");
    testbed.add_veth(None).expect("the veth again");
    assert_eq!(attached_program(&testbed), None, "a new interface has no program");
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    let log = daemon.log();
    assert!(log.contains("the pinned link cannot be reused, attaching again"), "{log}");
    assert!(!log.contains("removed the pins"), "the pinned maps were not reused:\n{log}");
    assert_eq!(received(&testbed, 7001), 0, "enforced on the new interface");
    let out = xdp_policy(&testbed, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(status[0]["state"]["generation"], 2);
    assert_eq!(status[0]["rules"][0]["packets"], 10, "the rule's counter ran on");
    let out = daemon.stop().expect("stop");
    assert!(out.status.success(), "{}", out.stderr);
}

/// An interface that comes back where attaching fails (native mode refused: the peer's
/// MTU is too large) is retried every second, never taken for a detach; once the
/// attach can work, the filter is back.
#[test]
fn a_failed_reattach_is_retried_not_taken_for_a_detach() {
    let Some(_serial) = serial("a_failed_reattach_is_retried_not_taken_for_a_detach") else {
        return;
    };
    let policy = PolicyFile::new("retried", &drop_udp("block", 7001));
    let testbed = Testbed::new().expect("testbed");
    let daemon =
        testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Native).expect("daemon");
    testbed.remove_veth().expect("removing the veth");
    daemon.wait_for_log("the interface went away", 1, Duration::from_secs(5)).expect("noticed");
    testbed.add_veth(Some(9000)).expect("the veth again, with a peer MTU native XDP refuses");
    daemon.wait_for_log("re-attaching failed", 3, Duration::from_secs(10)).expect("retried");
    assert!(!daemon.log().contains("the filter was detached"), "{}", daemon.log());
    let tx = testbed.tx().name();
    let out = std::process::Command::new("ip")
        .args(["-n", tx, "link", "set", testbed::TX_IFACE, "mtu", "1500"])
        .output()
        .expect("ip link set mtu");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    daemon
        .wait_for_log("the interface is back: re-attached", 1, Duration::from_secs(5))
        .expect("attached once it can be");
    assert_eq!(received(&testbed, 7001), 0);
    let out = daemon.stop().expect("stop");
    assert!(out.status.success(), "{}", out.stderr);
}

/// A start that fails on its second interface leaves the first one's filter whole: in
/// force, with its state file.
#[test]
fn a_start_failing_on_a_later_interface_leaves_the_earlier_ones_whole() {
    let Some(_serial) =
        serial("a_start_failing_on_a_later_interface_leaves_the_earlier_ones_whole")
    else {
        return;
    };
    let policy = PolicyFile::new("later-fails", &drop_udp("block", 7001));
    let testbed = Testbed::new().expect("testbed");
    let attach = format!("nosuch0={}", policy.0.display());
    let command = DaemonCommand {
        extra: &["--attach", &attach],
        ..DaemonCommand::new(Path::new(DAEMON), &policy.0, XdpMode::Skb)
    };
    match testbed.start(&command) {
        Err(TestbedError::DaemonExited { status, stderr, .. }) => {
            assert!(!status.success(), "{stderr}");
            assert!(stderr.contains("interface `nosuch0` does not exist"), "{stderr}");
        }
        Ok(daemon) => panic!("the daemon became ready without nosuch0:\n{}", daemon.log()),
        Err(other) => panic!("expected the daemon to exit: {other}"),
    }
    assert_eq!(received(&testbed, 7001), 0, "veth1's filter stays in force");
    let out = xdp_policy(&testbed, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(status[0]["iface"], RX_IFACE);
    assert_eq!(status[0]["state"]["generation"], 1, "veth1's state file: {status}");
    assert_eq!(status[0]["rules"][0]["name"], "block");
}

/// `run` refuses a default-drop policy that lets no SSH in and exits 64 before it
/// touches the kernel: nothing is attached or pinned (here on rx's `lo`, which has no
/// address the check counts, so the stand-in address is what would be cut).
#[test]
fn run_refuses_a_policy_that_cuts_ssh_and_attaches_nothing() {
    let Some(_serial) = serial("run_refuses_a_policy_that_cuts_ssh_and_attaches_nothing") else {
        return;
    };
    let locked = PolicyFile::new(
        "ssh",
        "[defaults]\naction = \"drop\"\n[[rule]]\nname = \"web\"\naction = \"pass\"\n\
         protocol = \"tcp\"\ndst_ports = 443\n",
    );
    let testbed = Testbed::new().expect("testbed");
    let (status, stderr) = run_to_exit(&testbed, "lo", &locked.0, XdpMode::Skb);
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("would drop SSH (tcp/")
            && stderr.contains("to this host's IPv4 address 192.0.2.100"),
        "{stderr}"
    );
    assert!(!testbed.dirs().pin_dir().join("lo").exists(), "refused: nothing pinned");
}
