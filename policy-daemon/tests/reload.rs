//! Hot reload end to end: the real `xdp-policy run` in a veth namespace pair, its policy
//! file changed the ways operators and tools change it (an editor's rename over the old
//! file, a Kubernetes ConfigMap `..data` symlink swap, a broken file, SIGHUP), judged by
//! real UDP traffic; and 100 reloads under a stream of packets with every packet
//! accounted for.
//!
//! Needs root (see `support::privileged`); the tests share kernel state, so each holds
//! `support::serial`.

mod support;

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::symlink,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use policy_common::Verdict;
use testbed::{Counters, Daemon, RX_V4, StreamResult, Testbed, XdpMode};

use support::{DAEMON, block_udp, serial};

const PORT_A: u16 = 6001;
const PORT_B: u16 = 6002;
/// How long a reload may take before the test calls it lost. A bound on "it happens by
/// itself", not a performance figure: the measured latency is printed, and `cargo xtask
/// bench` is where it is measured properly.
const RELOAD_DEADLINE: Duration = Duration::from_secs(5);

/// A policy dropping UDP to `port` (rule `block-<port>`).
/// Saves `text` at `path` the way editors do: a temporary file, then a rename over.
fn save_by_rename(path: &Path, text: &str) {
    testbed::save_by_rename(path, text).expect("saving the policy by rename");
}

/// Datagrams to `port` that arrive (10 sent, 300 ms to arrive).
fn delivered(testbed: &Testbed, port: u16) -> u32 {
    testbed.udp_probe(IpAddr::V4(RX_V4), port, 10).expect("udp probe").received
}

fn assert_blocks(testbed: &Testbed, daemon: &Daemon, blocked: u16, open: u16) {
    assert_eq!(
        delivered(testbed, blocked),
        0,
        "udp {blocked} must be dropped; log:\n{}",
        daemon.log()
    );
    assert_eq!(delivered(testbed, open), 10, "udp {open} must pass; log:\n{}", daemon.log());
}

#[test]
fn an_editor_saving_by_rename_is_enforced_by_itself() {
    let Some(_serial) = serial("an_editor_saving_by_rename_is_enforced_by_itself") else { return };
    let dir = support::temp_dir("rename");
    let policy = dir.path().join("policy.toml");
    fs::write(&policy, block_udp(PORT_A)).expect("writing the policy");
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy, XdpMode::Skb).expect("daemon");
    assert_blocks(&testbed, &daemon, PORT_A, PORT_B);

    // Port B is open until the new file is in force: the last datagram to B that still
    // arrives tells when that happened.
    let mut saved_at = Duration::ZERO;
    let result = testbed
        .udp_stream(
            [PORT_A, PORT_B],
            Duration::from_millis(1500),
            Duration::from_micros(500),
            |start| {
                thread::sleep(Duration::from_millis(300));
                saved_at = start.elapsed();
                save_by_rename(&policy, &block_udp(PORT_B));
            },
        )
        .expect("the udp stream");
    daemon.wait_for_log("policy applied", 2, RELOAD_DEADLINE).expect("the reload");
    let last_b = result.arrivals[1].iter().max().copied().expect("B was open at first");
    let latency = last_b.saturating_sub(saved_at);
    eprintln!("reload: rename -> enforced on the wire in {latency:?}");
    assert!(latency < RELOAD_DEADLINE, "the new rule was not enforced; log:\n{}", daemon.log());
    // Once enforced it stays enforced: no datagram to B sent later arrived.
    assert!(result.arrivals[1].iter().all(|t| *t <= last_b));
    assert_blocks(&testbed, &daemon, PORT_B, PORT_A);
}

#[test]
fn a_configmap_symlink_swap_is_enforced() {
    let Some(_serial) = serial("a_configmap_symlink_swap_is_enforced") else { return };
    // The layout kubelet gives a ConfigMap volume.
    let dir = support::temp_dir("configmap");
    let first = dir.path().join("..2026_11_27_08_00_00.000000001");
    fs::create_dir(&first).expect("mkdir");
    fs::write(first.join("policy.toml"), block_udp(PORT_A)).expect("write");
    symlink(first.file_name().expect("name"), dir.path().join("..data")).expect("symlink ..data");
    symlink("..data/policy.toml", dir.path().join("policy.toml")).expect("symlink policy.toml");
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed
        .start_daemon(Path::new(DAEMON), &dir.path().join("policy.toml"), XdpMode::Skb)
        .expect("daemon");
    assert_blocks(&testbed, &daemon, PORT_A, PORT_B);

    // The swap: a new timestamped directory, a new symlink, renamed over `..data`.
    let second = dir.path().join("..2026_11_27_08_05_00.000000002");
    fs::create_dir(&second).expect("mkdir");
    fs::write(second.join("policy.toml"), block_udp(PORT_B)).expect("write");
    symlink(second.file_name().expect("name"), dir.path().join("..data_tmp")).expect("symlink");
    fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("swap ..data");
    fs::remove_dir_all(&first).expect("removing the old data");

    daemon.wait_for_log("policy applied", 2, RELOAD_DEADLINE).expect("the reload");
    assert_blocks(&testbed, &daemon, PORT_B, PORT_A);
}

#[test]
fn a_broken_policy_is_rejected_and_the_old_one_stays_in_force() {
    let Some(_serial) = serial("a_broken_policy_is_rejected_and_the_old_one_stays_in_force") else {
        return;
    };
    let dir = support::temp_dir("broken");
    let policy = dir.path().join("policy.toml");
    fs::write(&policy, block_udp(PORT_A)).expect("writing the policy");
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy, XdpMode::Skb).expect("daemon");

    save_by_rename(
        &policy,
        "[[rule]]\nname = \"oops\"\naction = \"drop\"\ndst_ports = [\"90-80\"]\n",
    );
    daemon.wait_for_log("policy rejected", 1, RELOAD_DEADLINE).expect("the rejection");
    let location = format!("{}:4:14: invalid port range \"90-80\"", policy.display());
    assert!(daemon.log().contains(&location), "the log must say where; log:\n{}", daemon.log());
    assert_blocks(&testbed, &daemon, PORT_A, PORT_B);

    // The next good version is applied.
    save_by_rename(&policy, &block_udp(PORT_B));
    daemon.wait_for_log("policy applied", 2, RELOAD_DEADLINE).expect("the reload");
    assert_blocks(&testbed, &daemon, PORT_B, PORT_A);
    let output = daemon.stop().expect("stopping");
    assert!(output.status.success(), "the daemon must keep running and stop cleanly");
}

#[test]
fn sighup_reloads() {
    let Some(_serial) = serial("sighup_reloads") else { return };
    let dir = support::temp_dir("sighup");
    let policy = dir.path().join("policy.toml");
    fs::write(&policy, block_udp(PORT_A)).expect("writing the policy");
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed
        .start_daemon_with(Path::new(DAEMON), &policy, XdpMode::Skb, &["--no-watch"])
        .expect("daemon");

    save_by_rename(&policy, &block_udp(PORT_B));
    thread::sleep(Duration::from_millis(200));
    // Not watched: still the old policy.
    assert_blocks(&testbed, &daemon, PORT_A, PORT_B);
    daemon.signal(Signal::SIGHUP).expect("SIGHUP");
    daemon.wait_for_log("policy applied", 2, RELOAD_DEADLINE).expect("the reload");
    assert_blocks(&testbed, &daemon, PORT_B, PORT_A);
}

#[test]
fn a_hundred_reloads_under_traffic_misclassify_nothing() {
    let Some(_serial) = serial("a_hundred_reloads_under_traffic_misclassify_nothing") else {
        return;
    };
    const RELOADS: usize = 100;
    // Port A flips between dropped and passed; the rule for port B never changes, so
    // its counter runs on across all the reloads.
    let version = |i: usize| {
        format!(
            "[[rule]]\nname = \"flip\"\naction = \"{}\"\nprotocol = \"udp\"\ndst_ports = {PORT_A}\n\
             [[rule]]\nname = \"steady\"\naction = \"pass\"\nprotocol = \"udp\"\ndst_ports = {PORT_B}\n",
            if i.is_multiple_of(2) { "drop" } else { "pass" }
        )
    };
    let started = Instant::now();
    let stream = (Duration::from_secs(20), Duration::from_micros(200));
    let (result, output, counters) =
        reloads_under_stream("storm", RELOADS, stream, version, |_, _| {});
    let elapsed = started.elapsed();
    eprintln!(
        "reload storm: {RELOADS} reloads in {elapsed:?}; {}; drop_rule {}, pass_rule {}, rule \
         steady {}",
        result.describe(["A", "B"]),
        counters.packets(Verdict::DropRule),
        counters.packets(Verdict::PassRule),
        counters.rules.get("steady").copied().unwrap_or_default(),
    );
    assert!(output.matches("policy applied").count() == RELOADS + 1);
    assert_nothing_misclassified(&result, &counters);
    assert!(
        counters.packets(Verdict::DropRule) > 0 && result.received[0] > 0,
        "both versions were in force"
    );
}

/// Starts the daemon (skb mode) on `version(0)`, then saves `version(1)` … `version(reloads)`
/// by rename, each once the one before is applied, under a UDP stream to ports A and B (a
/// datagram every `stream.1`, for at most `stream.0`); `after(testbed, i)` runs once
/// version `i` is applied. Stops the daemon and returns what the stream saw, the daemon's
/// log and its counters.
fn reloads_under_stream(
    name: &str,
    reloads: usize,
    stream: (Duration, Duration),
    version: impl Fn(usize) -> String,
    mut after: impl FnMut(&Testbed, usize),
) -> (StreamResult, String, Counters) {
    let dir = support::temp_dir(name);
    let policy = dir.path().join("policy.toml");
    fs::write(&policy, version(0)).expect("writing the policy");
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy, XdpMode::Skb).expect("daemon");
    after(&testbed, 0);
    let result = testbed
        .udp_stream([PORT_A, PORT_B], stream.0, stream.1, |_| {
            for i in 1..=reloads {
                save_by_rename(&policy, &version(i));
                daemon.wait_for_log("policy applied", i + 1, RELOAD_DEADLINE).expect("a reload");
                after(&testbed, i);
            }
        })
        .expect("the udp stream");
    let output = daemon.stop().expect("stopping");
    let counters = testbed.counters(Path::new(DAEMON)).expect("the counters");
    (result, output.stderr, counters)
}

/// The program on the link, from `status --json`.
fn program_on_link(testbed: &Testbed) -> String {
    let output = testbed.xdp_policy(Path::new(DAEMON), &["status", "--json"]).expect("status");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("status JSON");
    json[0]["program"].as_str().unwrap_or("none").to_string()
}

#[test]
fn reloads_that_change_programs_under_traffic_leak_nothing() {
    let Some(_serial) = serial("reloads_that_change_programs_under_traffic_leak_nothing") else {
        return;
    };
    const RELOADS: usize = 12;
    // The same verdicts every time: port A dropped, port B passed. Even versions look at
    // protocol and port only (the port program, with a port table), odd ones at the
    // source too (the full program, without one): every reload moves the filter to new
    // maps and another program (the in-place swap is `tests/programs.rs`).
    let version = |i: usize| {
        let src =
            if i.is_multiple_of(2) { "" } else { "src = [\"198.18.0.0/15\", \"fd00::/8\"]\n" };
        format!(
            "[[rule]]\nname = \"block\"\naction = \"drop\"\nprotocol = \"udp\"\ndst_ports = {PORT_A}\n{src}\
             [[rule]]\nname = \"open\"\naction = \"pass\"\nprotocol = \"udp\"\ndst_ports = {PORT_B}\n{src}"
        )
    };
    let mut seen = Vec::new();
    let stream = (Duration::from_secs(30), Duration::from_micros(300));
    let (result, output, counters) =
        reloads_under_stream("programs", RELOADS, stream, version, |testbed, i| {
            if i == 0 {
                assert_eq!(program_on_link(testbed), "policy_ports");
            } else {
                seen.push(program_on_link(testbed));
            }
        });
    eprintln!(
        "program swaps: {RELOADS} reloads, programs {seen:?}; {}; drop_rule {}, pass_rule {}, \
         drop_unparsable {}",
        result.describe(["A", "B"]),
        counters.packets(Verdict::DropRule),
        counters.packets(Verdict::PassRule),
        counters.packets(Verdict::DropUnparsable),
    );
    let wanted: Vec<&str> = (1..=RELOADS)
        .map(|i| if i.is_multiple_of(2) { "policy_ports" } else { "policy_xdp" })
        .collect();
    assert_eq!(seen, wanted, "the program on the link after each reload");
    assert_eq!(
        output.matches("program=policy_ports").count()
            + output.matches("program=policy_xdp").count(),
        RELOADS + 1,
        "every apply names its program"
    );
    assert_eq!(result.received[0], 0, "datagrams to the blocked port got through");
    assert_eq!(result.received[1], result.sent[1], "datagrams to the open port were lost");
    // Each datagram judged by a rule, none by a program that could not judge it. A move
    // may miss the count of a datagram the new program judged while the old maps'
    // counters were copied a second time (see `dataplane::migrate`): at most one a move.
    for (verdict, sent) in
        [(Verdict::DropRule, result.sent[0]), (Verdict::PassRule, result.sent[1])]
    {
        let counted = counters.packets(verdict);
        assert!(
            counted <= sent && counted + RELOADS as u64 >= sent,
            "{verdict:?}: {counted} of {sent}"
        );
    }
    assert_eq!(counters.packets(Verdict::DropUnparsable), 0);
}

/// The accounting of a stream to port A (its rule flipping between drop and pass over
/// the reloads) and port B (its rule `steady` never changing) under reloads: nothing
/// lost, nothing counted twice, every drop the kernel counted is a datagram that did not
/// arrive.
fn assert_nothing_misclassified(result: &StreamResult, counters: &Counters) {
    // Port B's rule never changed: every datagram arrived, and its counter, kept across
    // the reloads, counted each one.
    assert_eq!(result.received[1], result.sent[1], "datagrams to the untouched port were lost");
    assert_eq!(counters.rules.get("steady").copied(), Some(result.sent[1]));
    // Port A: every datagram was either dropped or passed by a rule, and the drops the
    // kernel counted are exactly the datagrams that did not arrive.
    assert_eq!(
        counters.packets(Verdict::DropRule) + counters.packets(Verdict::PassRule),
        result.sent[0] + result.sent[1]
    );
    assert_eq!(counters.packets(Verdict::DropRule), result.sent[0] - result.received[0]);
}

/// The daemon's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    testbed::rss_kib(pid).expect("VmRSS of the daemon")
}

/// How many reloads the daemon has finished, whatever their outcome.
fn reloads_done(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains("policy applied")
                || l.contains("policy rejected")
                || l.contains("policy unchanged")
        })
        .count()
}

#[test]
fn a_storm_of_a_thousand_good_bad_and_changed_reloads_misclassifies_nothing() {
    let Some(_serial) =
        serial("a_storm_of_a_thousand_good_bad_and_changed_reloads_misclassifies_nothing")
    else {
        return;
    };
    const RELOADS: usize = 1000;
    /// Resident memory the daemon may gain over the storm.
    const RSS_BOUND_KIB: u64 = 8 * 1024;
    let dir = support::temp_dir("storm1000");
    let policy = dir.path().join("policy.toml");
    let steady = format!(
        "[[rule]]\nname = \"steady\"\naction = \"pass\"\nprotocol = \"udp\"\ndst_ports = {PORT_B}\n"
    );
    let version = |i: usize| match i % 3 {
        // Changed: port A dropped, with a changing neighbour range so every good version differs.
        0 => format!(
            "[[rule]]\nname = \"flip\"\naction = \"drop\"\nprotocol = \"udp\"\ndst_ports = [{PORT_A}, \"{}-{}\"]\n{steady}",
            10_000 + i,
            10_000 + i + 5
        ),
        // Bad: rejected, the previous version stays.
        1 => format!(
            "[[rule]]\nname = \"flip\"\naction = \"drop\"\ndst_ports = [\"{}-1\"]\n{steady}",
            i + 2
        ),
        // Good: port A passed.
        _ => format!(
            "[[rule]]\nname = \"flip\"\naction = \"pass\"\nprotocol = \"udp\"\ndst_ports = {PORT_A}\n{steady}"
        ),
    };
    fs::write(&policy, version(2)).expect("writing the policy");
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy, XdpMode::Skb).expect("daemon");
    // Warm up (allocator, maps' userspace shadows for both generations) before measuring.
    for i in 0..6 {
        save_by_rename(&policy, &version(i));
        let deadline = Instant::now() + RELOAD_DEADLINE;
        while reloads_done(&daemon.log()) < i + 2 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
    }
    let rss_before = rss_kib(daemon.pid());
    let done_before = reloads_done(&daemon.log());
    let started = Instant::now();
    let result = testbed
        .udp_stream([PORT_A, PORT_B], Duration::from_secs(120), Duration::from_micros(300), |_| {
            for i in 0..RELOADS {
                save_by_rename(&policy, &version(i));
                let deadline = Instant::now() + RELOAD_DEADLINE;
                while reloads_done(&daemon.log()) < done_before + i + 1 {
                    assert!(
                        Instant::now() < deadline,
                        "reload {i} was not taken:\n{}",
                        daemon.log()
                    );
                    thread::sleep(Duration::from_millis(1));
                }
            }
        })
        .expect("the udp stream");
    let elapsed = started.elapsed();
    let rss_after = rss_kib(daemon.pid());
    let log = daemon.log();
    let rejected = log.matches("policy rejected").count();
    let output = daemon.stop().expect("stopping");
    let counters = testbed.counters(Path::new(DAEMON)).expect("the counters");
    eprintln!(
        "reload storm: {RELOADS} reloads ({rejected} rejected) in {elapsed:?}; RSS {rss_before} KiB before, \
         {rss_after} KiB after; port A {} sent, {} received; port B {} sent, {} received; drop_rule {}, \
         pass_rule {}",
        result.sent[0],
        result.received[0],
        result.sent[1],
        result.received[1],
        counters.packets(Verdict::DropRule),
        counters.packets(Verdict::PassRule),
    );
    assert!(output.status.success(), "the daemon stopped cleanly after the storm");
    assert!(rejected >= RELOADS / 3, "the bad versions were rejected: {rejected}");
    assert!(
        rss_after <= rss_before + RSS_BOUND_KIB,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB (bound {RSS_BOUND_KIB} KiB)"
    );
    assert_nothing_misclassified(&result, &counters);
}

#[test]
fn every_bad_policy_of_the_corpus_is_rejected_and_the_rule_in_force_stays() {
    let Some(_serial) =
        serial("every_bad_policy_of_the_corpus_is_rejected_and_the_rule_in_force_stays")
    else {
        return;
    };
    const PROBE_EVERY: usize = 10;
    let corpus = support::corpus::Corpus::new("daemon");
    let dir = support::temp_dir("corpus");
    let policy = dir.path().join("policy.toml");
    fs::write(&policy, block_udp(PORT_A)).expect("writing the policy");
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy, XdpMode::Skb).expect("daemon");
    assert_blocks(&testbed, &daemon, PORT_A, PORT_B);

    let started = Instant::now();
    let files: Vec<_> = corpus.entries.iter().filter(|e| e.path.is_file()).collect();
    for (i, entry) in files.iter().enumerate() {
        // The corpus copy is on the same file system: a rename, as editors and tools do,
        // and the 100 MB sparse file is never copied.
        fs::rename(&entry.path, &policy).expect("renaming the bad policy over the good one");
        daemon
            .wait_for_log("policy rejected", i + 1, RELOAD_DEADLINE)
            .unwrap_or_else(|e| panic!("{} was not rejected: {e}", entry.name));
        let first_line = corpus.expected(entry);
        let first_line = first_line
            .lines()
            .next()
            .unwrap_or_default()
            .replace(&entry.path.display().to_string(), &policy.display().to_string())
            // Files named relative to the policy (a set's) are in its directory now.
            .replace(
                &entry.path.parent().expect("a directory").display().to_string(),
                &dir.path().display().to_string(),
            );
        assert!(
            daemon.log().contains(&first_line),
            "{}: the log must say {first_line:?}; log:\n{}",
            entry.name,
            daemon.log()
        );
        if (i + 1) % PROBE_EVERY == 0 || i + 1 == files.len() {
            assert_blocks(&testbed, &daemon, PORT_A, PORT_B);
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "bad-policy corpus: {} files rejected by the running daemon in {elapsed:?}",
        files.len()
    );
    assert!(files.len() >= 50, "only {} single-file entries", files.len());
    assert_eq!(daemon.log().matches("policy applied").count(), 1, "nothing bad was applied");

    // And the next good version is applied.
    save_by_rename(&policy, &block_udp(PORT_B));
    daemon.wait_for_log("policy applied", 2, RELOAD_DEADLINE).expect("the good policy");
    assert_blocks(&testbed, &daemon, PORT_B, PORT_A);
    let output = daemon.stop().expect("stopping");
    assert!(output.status.success(), "the daemon must keep running and stop cleanly");
}
