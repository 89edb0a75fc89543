//! Named sets end to end: `xdp-policy set` bans tx's own address on the wire of a veth
//! pair, with the daemon running and without it; bans expire on time; run-time entries
//! outlive a restart and a reload; a set's file is read again on reload; bad input is
//! refused with exit status 1 and changes nothing.
//!
//! Needs root (see `support::privileged`); the tests share kernel state, so each holds
//! `support::serial`.

mod support;

use std::{
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use testbed::{RX_V4, RX_V6, TX_V4, TX_V6, Testbed, XdpMode};

use support::{DAEMON, PolicyFile, serial, xdp_policy};

const PORT: u16 = 7100;

const POLICY: &str = r#"
[[set]]
name = "blocklist"
files = ["drop.txt"]
timeout = "1h"

[[rule]]
name = "drop-blocklist"
action = "drop"
protocol = "udp"
src = ["@blocklist"]
"#;

/// Datagrams from tx that reach rx's socket, out of 10 (IPv4, or IPv6 with `v6`).
fn delivered(testbed: &Testbed, v6: bool) -> u32 {
    let dst = if v6 { RX_V6.into() } else { RX_V4.into() };
    testbed.udp_probe(dst, PORT, 10).expect("udp probe").received
}

fn set(testbed: &Testbed, args: &[&str]) -> Output {
    let mut all = vec!["set"];
    all.extend_from_slice(args);
    xdp_policy(testbed, &all)
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The set's file next to the policy.
fn write_set_file(policy: &PolicyFile, text: &str) {
    let path = policy.0.parent().expect("a directory").join("drop.txt");
    testbed::save_by_rename(&path, text).expect("writing the set file");
}

#[test]
fn bans_drop_on_the_wire_expire_on_time_and_outlive_restarts() {
    let Some(_serial) = serial("bans_drop_on_the_wire_expire_on_time_and_outlive_restarts") else {
        return;
    };
    let policy = PolicyFile::new("bans", POLICY);
    write_set_file(&policy, "# nobody we know\n198.18.77.0/24\n");
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    assert_eq!(delivered(&testbed, false), 10, "not banned yet");

    // A ban of tx's address, with the daemon running.
    let tx = TX_V4.to_string();
    let added = Instant::now();
    let out = ok(set(&testbed, &["add", "blocklist", &tx, "--timeout", "3s"]));
    assert!(out.contains("blocklist on veth1: 1 added, 0 renewed, expiring in 3s"), "{out}");
    assert_eq!(delivered(&testbed, false), 0, "banned");
    let test = ok(set(&testbed, &["test", "blocklist", &tx]));
    assert!(
        test.contains(&format!(
            "{tx} is in blocklist on veth1: entry {tx}/32 (run-time, expires in"
        )),
        "{test}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(set(&testbed, &["list", "blocklist", "--json"]))).expect("json");
    let entries = list[0]["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 2, "{list}");
    assert_eq!(entries[0]["net"], "198.18.0.1/32");
    assert_eq!(entries[0]["origin"], "runtime");
    assert!(entries[0]["expires_in_ms"].as_u64().is_some_and(|ms| ms <= 3000), "{list}");
    assert_eq!(entries[1]["net"], "198.18.77.0/24");
    assert_eq!(entries[1]["origin"], "file");
    assert!(entries[1]["expires_in_ms"].is_null());
    let status = ok(xdp_policy(&testbed, &["status"]));
    assert!(
        status.contains(
            "set @blocklist: 2 entries (at most 1048576), run-time entries stay 1h unless added \
             with a timeout"
        ),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(xdp_policy(&testbed, &["status", "--json"]))).expect("json");
    assert_eq!(json[0]["sets"][0]["entries"], 2, "{json}");
    // The file's entry and the ban added; the 10 banned datagrams were hits.
    assert_eq!(json[0]["sets"][0]["adds"], 2, "{json}");
    assert_eq!(json[0]["sets"][0]["deletes"], 0, "{json}");
    assert!(json[0]["sets"][0]["hits"].as_u64().is_some_and(|h| h >= 10), "{json}");
    assert!(status.contains("added, 0 deleted, 0 expired"), "{status}");

    // Still banned just before it ends, gone just after: the kernel compares the clock.
    std::thread::sleep(Duration::from_millis(2300).saturating_sub(added.elapsed()));
    assert_eq!(delivered(&testbed, false), 0, "the ban ended early");
    std::thread::sleep(Duration::from_millis(3300).saturating_sub(added.elapsed()));
    assert_eq!(delivered(&testbed, false), 10, "the ban outlived its timeout");
    let out = set(&testbed, &["test", "blocklist", &tx]);
    assert_eq!(out.status.code(), Some(1), "not in the set any more");

    // IPv6, for good, then removed.
    let tx6 = TX_V6.to_string();
    ok(set(&testbed, &["add", "blocklist", &tx6, "--timeout", "0"]));
    assert_eq!(delivered(&testbed, true), 0, "an IPv6 ban");
    assert_eq!(delivered(&testbed, false), 10, "IPv4 from the same host is not banned");
    let out = ok(set(&testbed, &["del", "blocklist", &tx6, "198.18.77.0/24", "198.18.1.1"]));
    assert!(
        out.contains(
            "1 removed; not in the set: 198.18.1.1/32; listed in the set's files (remove \
                       them there): 198.18.77.0/24"
        ),
        "{out}"
    );
    assert_eq!(delivered(&testbed, true), 10, "unbanned");

    // No daemon: the command writes the pinned map itself, and the next daemon keeps it.
    drop(daemon.stop().expect("stopping"));
    ok(set(&testbed, &["add", "blocklist", &tx]));
    assert_eq!(delivered(&testbed, false), 0, "banned with no daemon running");
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    assert!(daemon.log().contains("adopted the pinned filter"));
    assert_eq!(delivered(&testbed, false), 0, "the ban outlived the restart");

    // A change of the set file (saved by rename, as editors do) reloads the policy, as a
    // change of a policy file does; the run-time ban stays.
    write_set_file(&policy, "198.18.77.0/24\nfd00::1\n");
    daemon.wait_for_log("policy applied", 2, Duration::from_secs(10)).expect("reloaded");
    assert!(daemon.log().contains("trigger=\"file change\""), "{}", daemon.log());
    assert_eq!(delivered(&testbed, true), 0, "the file's new entry");
    assert_eq!(delivered(&testbed, false), 0, "the run-time ban stays");
    let out = ok(set(&testbed, &["flush", "blocklist"]));
    assert!(out.contains("1 run-time entries removed"), "{out}");
    assert_eq!(delivered(&testbed, false), 10, "flushed");
    assert_eq!(delivered(&testbed, true), 0, "the file's entries stay");

    // A set file that vanishes: the policy is refused, the one in force stays.
    std::fs::remove_file(policy.0.parent().expect("a directory").join("drop.txt"))
        .expect("removing");
    daemon.signal(nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    daemon
        .wait_for_log(
            "policy rejected, the previous one stays in force",
            1,
            Duration::from_secs(10),
        )
        .expect("rejected");
    assert_eq!(delivered(&testbed, true), 0, "the set as it was");
    drop(daemon.stop().expect("stopping"));
}

#[test]
fn bad_set_commands_exit_1_and_change_nothing() {
    let Some(_serial) = serial("bad_set_commands_exit_1_and_change_nothing") else { return };
    let policy =
        PolicyFile::new("bad-bans", &POLICY.replace("timeout = \"1h\"", "max_entries = 3"));
    write_set_file(&policy, "198.18.77.0/24\n");
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    let failed = |args: &[&str], message: &str| {
        let out = set(&testbed, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    };
    failed(
        &["add", "nope", "198.18.0.1"],
        "no interface enforces a policy with a set named \"nope\" (sets in force: blocklist)",
    );
    failed(&["add", "blocklist", "198.18.0.1", "nonsense"], "invalid network \"nonsense\"");
    failed(
        &["add", "blocklist", "198.18.0.1/24"],
        "has host bits set: did you mean \"198.18.0.0/24\"?",
    );
    failed(&["add", "blocklist", "198.18.0.1", "--timeout", "soon"], "invalid duration \"soon\"");
    failed(
        &["add", "blocklist", "198.18.0.1", "198.18.0.3", "198.18.0.4"],
        "set \"blocklist\" holds 1 entries; 3 more would pass its max_entries of 3: nothing was changed",
    );
    let dir = policy.0.parent().expect("a directory");
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "198.18.0.1\nnope ; a comment\n\n  198.18.0.9/24\n").expect("writing");
    let bad = bad.display().to_string();
    failed(&["load", "blocklist", &bad], &format!("{bad}:2:1: invalid network \"nope\""));
    failed(
        &["load", "blocklist", &bad],
        &format!("{bad}:4:3: network \"198.18.0.9/24\" has host bits set"),
    );
    let big = dir.join("big.txt");
    std::fs::write(&big, "198.18.0.1\n198.18.0.3\n198.18.0.4\n").expect("writing");
    failed(
        &["load", "blocklist", &big.display().to_string()],
        "set \"blocklist\" holds 1 entries; 3 more would pass its max_entries of 3: nothing was changed",
    );
    assert_eq!(delivered(&testbed, false), 10, "nothing was banned");
    let good = dir.join("good.txt");
    std::fs::write(&good, "# two\n198.18.0.1\n198.18.0.5\n").expect("writing");
    let out = ok(set(&testbed, &["load", "blocklist", &good.display().to_string()]));
    assert!(out.contains("2 run-time entries written, 0 others removed"), "{out}");
    assert_eq!(delivered(&testbed, false), 0, "loaded");
    let out = ok(set(&testbed, &["flush", "blocklist"]));
    assert!(out.contains("2 run-time entries removed"), "{out}");
    assert_eq!(delivered(&testbed, false), 10, "flushed");
    let list = ok(set(&testbed, &["list", "blocklist"]));
    assert!(list.starts_with("blocklist on veth1: 1 entries\n  198.18.77.0/24"), "{list}");
    drop(daemon.stop().expect("stopping"));
}
