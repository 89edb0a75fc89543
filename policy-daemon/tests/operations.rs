//! Operating it, end to end with the real `xdp-policy` in a veth namespace pair.
//! Enforcement outlives the daemon: killed with SIGKILL and started again twenty times
//! under a stream of packets to a blocked port, not one gets through; each new daemon
//! adopts the pinned maps (the rule's counter runs on) and swaps its program onto the
//! pinned link. `status`, `explain` and `detach` work on the pins with no daemon running.
//! The Prometheus endpoint is scraped.
//!
//! Needs root (see `support::privileged`); the tests share kernel state, so each holds
//! `support::serial`.

mod support;

use std::{fs, path::Path, process::Command, time::Duration};

use testbed::{RX_IFACE, RX_V4, Testbed, XdpMode};

use support::{DAEMON, PolicyFile, block_udp, serial, xdp_policy};

const BLOCKED: u16 = 7001;
const OPEN: u16 = 7002;
const RESTARTS: usize = 20;

/// The policy most tests here enforce: UDP to [`BLOCKED`] dropped.
fn policy_file() -> PolicyFile {
    PolicyFile::new("operations", &block_udp(BLOCKED))
}

/// The id of the XDP program attached to rx's interface, from the kernel.
fn prog_id(testbed: &Testbed) -> String {
    support::attached_program(testbed).expect("an XDP program attached")
}

#[test]
fn twenty_kill_9_restarts_under_traffic_let_nothing_through() {
    let Some(_serial) = serial("twenty_kill_9_restarts_under_traffic_let_nothing_through") else {
        return;
    };
    let policy = policy_file();
    let testbed = Testbed::new().expect("testbed");
    // Started means ready: attached, and the state file (generation, counter slots)
    // written, which the next daemon adopts.
    let first = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    first.kill9();

    let mut program_ids = vec![prog_id(&testbed)];
    let result = testbed
        .udp_stream([BLOCKED, OPEN], Duration::from_secs(60), Duration::from_micros(300), |_| {
            for restart in 1..=RESTARTS {
                let daemon = testbed
                    .start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb)
                    .unwrap_or_else(|e| panic!("restart {restart}: {e}"));
                assert!(daemon.log().contains("adopted the pinned filter"), "restart {restart}");
                program_ids.push(prog_id(&testbed));
                daemon.kill9();
            }
        })
        .expect("the udp stream");
    eprintln!(
        "restarts: {RESTARTS} kill -9 and restart cycles; blocked port: {} sent, {} received; open \
         port: {} sent, {} received; program ids {}",
        result.sent[0],
        result.received[0],
        result.sent[1],
        result.received[1],
        program_ids.join(" ")
    );
    assert_eq!(result.received[0], 0, "packets to the blocked port got through during restarts");
    assert_eq!(result.received[1], result.sent[1], "the open port lost packets during restarts");
    assert!(result.sent[0] > 1000, "too little traffic to prove anything: {}", result.sent[0]);
    let mut distinct = program_ids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), RESTARTS + 1, "every daemon put its own program on the link");

    // No daemon runs now: the pins alone keep the filter, and status reads them. The
    // rule's counter ran on across all the restarts: it counted every blocked datagram.
    let out = xdp_policy(&testbed, &["status", "--json"]);
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let iface = &status[0];
    assert_eq!(iface["iface"], RX_IFACE);
    assert_eq!(iface["attached"], true);
    assert_eq!(iface["state"]["generation"], RESTARTS as u64 + 1);
    assert_eq!(iface["rules"][0]["name"], "block-7001");
    assert_eq!(
        iface["rules"][0]["packets"], result.sent[0],
        "the rule's counter survived every restart"
    );
}

#[test]
fn status_explain_and_detach_work_on_the_pins() {
    let Some(_serial) = serial("status_explain_and_detach_work_on_the_pins") else { return };
    let policy = policy_file();
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    let output = daemon.stop().expect("stopping");
    assert!(output.stderr.contains("the filters stay in force"), "{}", output.stderr);
    // Stopped cleanly, and still enforcing.
    assert_eq!(testbed.udp_probe(RX_V4.into(), BLOCKED, 10).expect("probe").received, 0);

    let out = xdp_policy(&testbed, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.starts_with(&format!("{RX_IFACE}: attached (skb), policy {}", policy.0.display())),
        "{text}"
    );
    assert!(text.contains("block-7001"), "{text}");

    let explain = |port: &str| {
        let port = port.parse().expect("a port");
        support::explained(&testbed, ("udp", "198.18.0.1", "198.18.0.2", port), &[])
    };
    let dropped = explain("7001");
    assert!(
        dropped.contains("live program on veth1: DROP, verdict drop_rule, rule block-7001"),
        "{dropped}"
    );
    assert!(
        dropped.contains(": DROP, verdict drop_rule, rule block-7001 ("),
        "the reference agrees: {dropped}"
    );
    let passed = explain("7002");
    assert!(
        passed.contains("live program on veth1: PASS, verdict pass_default, rule none"),
        "{passed}"
    );

    let out = xdp_policy(&testbed, &["detach", "--iface", RX_IFACE]);
    assert!(out.status.success(), "detach: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{RX_IFACE}: detached\n"));
    assert_eq!(
        testbed.udp_probe(RX_V4.into(), BLOCKED, 10).expect("probe").received,
        10,
        "detached"
    );
    let out = xdp_policy(&testbed, &["status"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no filters are pinned\n");
}

#[test]
fn metrics_are_scraped() {
    let Some(_serial) = serial("metrics_are_scraped") else { return };
    let policy = policy_file();
    let testbed = Testbed::new().expect("testbed");
    // In rx's own network namespace, where the daemon runs: its loopback is its own.
    let addr = "127.0.0.1:9559";
    let daemon = testbed
        .start_daemon_with(Path::new(DAEMON), &policy.0, XdpMode::Skb, &["--metrics", addr])
        .expect("daemon");
    assert_eq!(testbed.udp_probe(RX_V4.into(), BLOCKED, 10).expect("probe").received, 0);
    // The counters reach the endpoint on the daemon's next one-second tick.
    std::thread::sleep(Duration::from_millis(1500));
    let scrape = |path: &str| support::scrape(&testbed, addr, path);
    let body = scrape("/metrics");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    for line in [
        "xdp_policy_rule_packets_total{iface=\"veth1\",rule=\"block-7001\"} 10",
        "xdp_policy_verdict_packets_total{iface=\"veth1\",verdict=\"drop_rule\"} 10",
        "xdp_policy_unparsable_packets_total{iface=\"veth1\"} 0",
        "xdp_policy_attach_mode_info{iface=\"veth1\",mode=\"skb\"} 1",
        "xdp_policy_enforcing{iface=\"veth1\"} 1",
        "xdp_policy_drift_entries_total{iface=\"veth1\"} 0",
        "xdp_policy_reload_errors_total{policy=",
        "xdp_policy_last_reload_successful{policy=",
    ] {
        assert!(body.contains(line), "no `{line}` in the scrape:\n{body}");
    }
    assert!(
        body.contains(&format!(
            "xdp_policy_generation{{iface=\"veth1\",policy=\"{}\"}} 1",
            policy.0.display()
        )),
        "{body}"
    );
    assert!(scrape("/nope").starts_with("HTTP/1.1 404"), "other paths are 404");
    drop(daemon);
}

#[test]
fn drop_events_are_sampled_while_someone_watches() {
    let Some(_serial) = serial("drop_events_are_sampled_while_someone_watches") else { return };
    let policy = policy_file();
    let testbed = Testbed::new().expect("testbed");
    let _daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    // Off by default: drops before anyone watches leave no events behind.
    assert_eq!(testbed.udp_probe(RX_V4.into(), BLOCKED, 10).expect("probe").received, 0);
    let dirs = testbed.dirs();
    let watcher = Command::new(DAEMON)
        .args([
            "events",
            "--rate",
            "1000",
            "--count",
            "3",
            "--seconds",
            "10",
            "--config",
            "/dev/null",
        ])
        .arg("--pin-dir")
        .arg(dirs.pin_dir())
        .arg("--state-dir")
        .arg(dirs.state_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("xdp-policy events");
    let mut watcher = watcher;
    // Keep dropping until the watcher has its three events (it stops by itself).
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        if watcher.try_wait().expect("watcher").is_some() {
            break;
        }
        testbed.udp_probe(RX_V4.into(), BLOCKED, 5).expect("probe");
    }
    let out = watcher.wait_with_output().expect("events output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "events: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for line in lines {
        assert!(
            line.starts_with(&format!("{RX_IFACE} drop_rule rule block-7001 udp 198.18.0.1 port "))
                && line.ends_with(&format!("-> 198.18.0.2 port {BLOCKED}")),
            "{line}"
        );
    }
}

/// systemd's side of `Type=notify`, played by a datagram socket: READY=1 once the policy
/// is applied and attached, STATUS= with the generation, RELOADING=1 then READY=1 around
/// a reload, STOPPING=1 at the end.
#[test]
fn the_daemon_tells_systemd_when_it_is_ready_and_reloading() {
    let Some(_serial) = serial("the_daemon_tells_systemd_when_it_is_ready_and_reloading") else {
        return;
    };
    let policy = policy_file();
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    let next = || daemon.next_notification().expect("a notification");
    assert_eq!(next(), "READY=1\nSTATUS=veth1: 1 rules, generation 1\n");
    daemon.signal(nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    assert_eq!(next(), "RELOADING=1\n");
    assert_eq!(next(), "READY=1\nSTATUS=veth1: 1 rules, generation 1\n", "unchanged policy");
    let output = daemon.stop().expect("stop");
    assert!(output.status.success());
    assert_eq!(output.notifications, ["STOPPING=1\n"]);
}

#[test]
fn an_interface_that_goes_away_is_filtered_again_when_it_comes_back() {
    let Some(_serial) = serial("an_interface_that_goes_away_is_filtered_again_when_it_comes_back")
    else {
        return;
    };
    let policy = policy_file();
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    testbed.remove_veth().expect("deleting the veth pair");
    daemon.wait_for_log("the interface went away", 1, Duration::from_secs(5)).expect("noticed");
    let out = xdp_policy(&testbed, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("{RX_IFACE}: interface gone, attached again when it is back")),
        "{text}"
    );

    testbed.add_veth(None).expect("the veth pair again");
    daemon
        .wait_for_log("the interface is back: re-attached", 1, Duration::from_secs(5))
        .expect("re-attached");
    assert_eq!(
        testbed.udp_probe(RX_V4.into(), BLOCKED, 10).expect("probe").received,
        0,
        "filtered again"
    );
    assert_eq!(testbed.udp_probe(RX_V4.into(), OPEN, 10).expect("probe").received, 10);
    let out = xdp_policy(&testbed, &["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&format!("{RX_IFACE}: attached (skb)"))
    );
    let output = daemon.stop().expect("stop");
    assert!(output.status.success(), "the daemon kept running: {}", output.stderr);
}

/// A daemon killed while it applies a changed policy: the next one starts from the
/// pinned maps in whatever state the kill left them and applies the file as it is now.
#[test]
fn a_kill_during_a_reload_leaves_nothing_half_applied() {
    let Some(_serial) = serial("a_kill_during_a_reload_leaves_nothing_half_applied") else {
        return;
    };
    const CYCLES: u64 = 10;
    let policy = policy_file();
    let testbed = Testbed::new().expect("testbed");
    testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon").kill9();
    for cycle in 0..CYCLES {
        let (blocked, open) = if cycle % 2 == 0 { (OPEN, BLOCKED) } else { (BLOCKED, OPEN) };
        let daemon =
            testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
        daemon
            .wait_for_log("adopted the pinned filter", 1, Duration::from_secs(10))
            .expect("adopted");
        let tmp = policy.0.with_extension("tmp");
        fs::write(&tmp, block_udp(blocked)).expect("write");
        fs::rename(&tmp, &policy.0).expect("rename");
        // Somewhere between the rename and the end of the apply (25 ms debounce, then
        // the apply): a different moment each cycle.
        std::thread::sleep(Duration::from_millis(10 + cycle * 4));
        daemon.kill9();
        // The filter in force is one whole policy or the other...
        let a = testbed.udp_probe(RX_V4.into(), BLOCKED, 5).expect("probe").received;
        let b = testbed.udp_probe(RX_V4.into(), OPEN, 5).expect("probe").received;
        assert!(
            matches!((a, b), (0, 5) | (5, 0)),
            "cycle {cycle}: a mix or nothing in force: {a}, {b}"
        );
        // ... and the next daemon applies the file as it is.
        let daemon =
            testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
        daemon
            .wait_for_log("adopted the pinned filter", 1, Duration::from_secs(10))
            .expect("adopted");
        assert_eq!(
            testbed.udp_probe(RX_V4.into(), blocked, 5).expect("probe").received,
            0,
            "cycle {cycle}"
        );
        assert_eq!(
            testbed.udp_probe(RX_V4.into(), open, 5).expect("probe").received,
            5,
            "cycle {cycle}"
        );
        daemon.kill9();
    }
}

/// Pins whose maps do not fit this version (here: a map of another type where `RULES`
/// should be) are never adopted: the daemon migrates the filter to new maps, saying
/// which map did not fit, and the policy is enforced throughout.
#[test]
fn pins_that_do_not_fit_are_migrated_never_adopted() {
    let Some(_serial) = serial("pins_that_do_not_fit_are_migrated_never_adopted") else { return };
    let policy = policy_file();
    let testbed = Testbed::new().expect("testbed");
    testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon").kill9();
    let maps = testbed.dirs().pin_dir().join(RX_IFACE).join("maps");
    fs::remove_file(maps.join("RULES")).expect("unpinning RULES");
    let other = aya::maps::MapData::from_pin(maps.join("VERDICTS")).expect("VERDICTS");
    other.pin(maps.join("RULES")).expect("pinning VERDICTS as RULES");

    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    let log = daemon.log();
    // The policy's one rule: room for the fewest rules, both generations.
    let entries = policy_common::GENERATIONS * policy_daemon::dataplane::migrate::Sizes::MIN_RULES;
    assert!(
        log.contains("migrated the pinned filter to new maps")
            && log.contains(&format!(
                "map RULES: pinned (type, key bytes, value bytes, entries) (6, 4, 16, 32), this \
                 version needs (2, 4, 8, {entries})"
            )),
        "{log}"
    );
    assert_eq!(testbed.udp_probe(RX_V4.into(), BLOCKED, 5).expect("probe").received, 0);
    let rules = aya::maps::MapInfo::from_pin(maps.join("RULES")).expect("RULES");
    assert_eq!((rules.value_size(), rules.max_entries()), (8, entries), "RULES is the new one");
    let out = xdp_policy(&testbed, &["status", "--verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    drop(daemon);
}

/// A pin directory that is not on a bpffs gets one mounted.
#[test]
fn a_pin_dir_without_bpffs_gets_one() {
    let Some(_serial) = serial("a_pin_dir_without_bpffs_gets_one") else { return };
    let policy = policy_file();
    let testbed = Testbed::new().expect("testbed");
    let plain = testbed.dirs().state_dir().with_file_name("plain").join("xdp-policy");
    let daemon = testbed
        .start_daemon_with(
            Path::new(DAEMON),
            &policy.0,
            XdpMode::Skb,
            &["--pin-dir", plain.to_str().expect("utf-8")],
        )
        .expect("daemon");
    daemon.wait_for_log("mounting bpffs", 1, Duration::from_secs(5)).expect("the mount");
    assert_eq!(testbed.udp_probe(RX_V4.into(), BLOCKED, 5).expect("probe").received, 0);
    drop(daemon);
}

/// 5,000 connections to the metrics endpoint held open and idle, against a daemon
/// limited to 1,024 file descriptors (the usual default): reloads still apply, the
/// filter never leaves the interface, and the endpoint serves again once they are gone.
#[test]
fn five_thousand_idle_metrics_connections_take_nothing_down() {
    use std::os::{fd::OwnedFd, unix::fs::PermissionsExt as _};
    let Some(_serial) = serial("five_thousand_idle_metrics_connections_take_nothing_down") else {
        return;
    };
    const CONNECTIONS: usize = 5000;
    let policy = policy_file();
    // The daemon with the default limit of descriptors, through prlimit(1).
    let wrapper = policy.0.with_file_name("xdp-policy-1024-fds");
    fs::write(&wrapper, format!("#!/bin/sh\nexec prlimit --nofile=1024:1024 -- {DAEMON} \"$@\"\n"))
        .expect("writing the wrapper");
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod");
    // This process holds the connections: it needs more than that.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    assert!(hard >= 2 * CONNECTIONS as u64, "the hard limit of descriptors is {hard}");
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        .expect("setrlimit");

    let testbed = Testbed::new().expect("testbed");
    let addr = "127.0.0.1:9559";
    let daemon = testbed
        .start_daemon_with(&wrapper, &policy.0, XdpMode::Skb, &["--metrics", addr])
        .expect("daemon");
    let program = prog_id(&testbed);
    // Non-blocking connects: past the daemon's cap they wait in the kernel's backlog
    // or keep retrying their SYN; every one is a descriptor held here.
    let held: Vec<OwnedFd> = testbed
        .rx()
        .run(|| {
            (0..CONNECTIONS)
                .map(|_| {
                    let socket = nix::sys::socket::socket(
                        nix::sys::socket::AddressFamily::Inet,
                        nix::sys::socket::SockType::Stream,
                        nix::sys::socket::SockFlag::SOCK_NONBLOCK,
                        None,
                    )
                    .expect("a socket");
                    let to = nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, 9559);
                    match nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&socket), &to) {
                        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => socket,
                        Err(e) => panic!("connecting: {e}"),
                    }
                })
                .collect()
        })
        .expect("netns");
    std::thread::sleep(Duration::from_secs(2));
    // The kernel's view: every connection is there, connecting or connected to the
    // endpoint, and at least as many as the daemon serves at once are connected.
    let (clients, connected) = testbed
        .rx()
        .run(|| {
            let table = fs::read_to_string("/proc/thread-self/net/tcp").expect("/proc/net/tcp");
            // The remote address column: hex, the port after the colon.
            let port = format!(":{:04X}", 9559);
            let to_metrics: Vec<&str> = table
                .lines()
                .skip(1)
                .filter(|l| l.split_whitespace().nth(2).is_some_and(|r| r.ends_with(&port)))
                .collect();
            // State 01: ESTABLISHED.
            let connected =
                to_metrics.iter().filter(|l| l.split_whitespace().nth(3) == Some("01")).count();
            (to_metrics.len(), connected)
        })
        .expect("netns");
    assert_eq!(clients, held.len(), "connections the kernel holds to 127.0.0.1:9559");
    assert!(connected >= 32, "only {connected} of {clients} connections are connected");
    for port in [7003, 7004] {
        policy.write(&block_udp(port));
        let applied = if port == 7003 { 2 } else { 3 };
        daemon
            .wait_for_log("policy applied", applied, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("a reload with {CONNECTIONS} connections held: {e}"));
        assert_eq!(testbed.udp_probe(RX_V4.into(), port, 5).expect("probe").received, 0);
        assert_eq!(testbed.udp_probe(RX_V4.into(), BLOCKED, 5).expect("probe").received, 5);
    }
    // Two more seconds of ticks: the interface lookups must not fail into "gone".
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(prog_id(&testbed), program, "the filter left the interface");
    let log = daemon.log();
    for bad in ["went away", "re-attached", "Too many open files", "writing the state file failed"]
    {
        assert!(!log.contains(bad), "`{bad}` in the log:\n{log}");
    }
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        // Refused or timed out while the backlog drains: try again.
        let body = support::try_scrape(&testbed, addr, "/metrics").unwrap_or_default();
        if body.starts_with("HTTP/1.1 200 OK") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the endpoint does not serve again");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = daemon.stop().expect("stop");
    assert!(out.status.success(), "{}", out.stderr);
}
