//! Upgrades that keep enforcing, with the real `xdp-policy run` in a veth namespace pair
//! and a UDP stream to a blocked and an open port as the judge:
//! - a filter whose maps are of an older layout (pins without the `LAYOUT` map, as every
//!   version before 0.2.0 left them) is migrated in place: 0 datagrams through to the
//!   blocked port, none lost to the open one, counters continue, a ban added at run time
//!   stays with its set's counters, `status` names the new version and layout;
//! - a filter of a newer layout is refused, named, and left in force;
//! - a migration killed before its swap is redone by the next start, one killed after
//!   it (also between its renames) is finished: never a mix; and killed with SIGKILL at
//!   moments spread over a migration, the next start leaves one whole filter;
//! - maps are sized by the policy (the bucket map, the limits, the IPv4 address tables:
//!   one entry each when unused; the port table: a row a generation for each transport
//!   class decided differently), a one-rule port-only policy holds at most 1 MiB, and a
//!   reload that needs other sizes moves the filter to new maps, carrying the buckets.
//!
//! The upgrade from the package of the previous layout to this one, under systemd, is
//! the systemd layer's (`cargo xtask systemd-test`).
//!
//! Needs root (see `support::privileged`); the tests share kernel state, so each holds
//! `support::serial`.

mod support;

use std::{fs, path::Path, path::PathBuf, time::Duration};

use aya::maps::{Array, Map, MapData, MapInfo};
use policy_common::{
    GENERATIONS, LAYOUT_MAP, LAYOUT_VERSION, LIMIT_BUCKETS_MAP, LIMITS_MAP, PORT_TABLE_MAP,
    REGIONS, RULE_COUNTER_SLOTS, V4_CLASSES_MAP, V4_L1_MAP, V4_L2_MAP, V4_L3_MAP, V6_BLOCKS_MAP,
    V6_CLASSES_MAP, V6_L1_MAP, port_table, v4_table,
};
use policy_daemon::dataplane::migrate::TableRoom;
use support::{DAEMON, PolicyFile, block_udp, serial, xdp_policy};
use testbed::{
    DaemonCommand, RX_IFACE, RX_V4, RX_V6, StreamResult, TX_V4, Testbed, TestbedError, XdpMode,
};

const BLOCKED: u16 = 7101;
const OPEN: u16 = 7102;
const BANNED: u16 = 7104;

fn pins(testbed: &Testbed) -> PathBuf {
    testbed.dirs().pin_dir().join(RX_IFACE)
}

/// Makes the pinned maps look as every version before the `LAYOUT` map left them.
fn make_layout_1(testbed: &Testbed) {
    fs::remove_file(pins(testbed).join("maps").join(LAYOUT_MAP)).expect("removing LAYOUT");
}

fn status_json(testbed: &Testbed) -> serde_json::Value {
    let out = xdp_policy(testbed, &["status", "--json"]);
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status --json")
}

/// `status --verify`: the kernel holds the policy in force.
fn assert_verified(testbed: &Testbed, step: &str) {
    let out = xdp_policy(testbed, &["status", "--verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{step}: the audit found drift:\n{text}");
    assert!(text.contains("the kernel held the policy in force"), "{step}: {text}");
}

/// Nothing is left of a migration beside the maps in force.
fn assert_one_map_set(testbed: &Testbed, step: &str) {
    let mut entries: Vec<String> = fs::read_dir(pins(testbed))
        .expect("the pin directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["link", "maps", "program"], "{step}: pins");
}

/// A UDP stream to the blocked and the open port (one datagram every 300 µs, at most
/// 30 s) while `during` runs.
fn stream(testbed: &Testbed, during: impl FnOnce()) -> StreamResult {
    testbed
        .udp_stream([BLOCKED, OPEN], Duration::from_secs(30), Duration::from_micros(300), |_| {
            during()
        })
        .expect("the udp stream")
}

/// The stream's verdict: nothing through to the blocked port, nothing lost to the open
/// one, and enough traffic to mean something.
fn assert_enforced_throughout(result: &StreamResult, step: &str) {
    eprintln!(
        "{step}: blocked port {} sent, {} received; open port {} sent, {} received",
        result.sent[0], result.received[0], result.sent[1], result.received[1]
    );
    assert_eq!(result.received[0], 0, "{step}: datagrams to the blocked port got through");
    assert_eq!(result.received[1], result.sent[1], "{step}: the open port lost datagrams");
    assert!(result.sent[0] > 300, "{step}: too little traffic: {}", result.sent[0]);
}

/// The blocked rule's packets, from `status --json`.
fn blocked_count(testbed: &Testbed) -> u64 {
    let status = status_json(testbed);
    status[0]["rules"][0]["packets"].as_u64().expect("the rule's packets")
}

/// The blocked rule counted the stream's datagrams to it (`before` counted already),
/// but for what the migration's second copy can lose: a datagram counted by the new
/// program in the microseconds between reading a counter and writing it back.
fn assert_counted(testbed: &Testbed, before: u64, result: &StreamResult, step: &str) {
    let counted = blocked_count(testbed) - before;
    eprintln!("{step}: the rule counted {counted} of {} blocked datagrams", result.sent[0]);
    assert!(
        counted <= result.sent[0] && counted + 2 >= result.sent[0],
        "{step}: the rule counted {counted}, {} were sent",
        result.sent[0]
    );
}

#[test]
fn an_older_layout_is_migrated_in_place_under_a_stream() {
    let Some(_serial) = serial("an_older_layout_is_migrated_in_place_under_a_stream") else {
        return;
    };
    // A named set with a run-time entry (a ban) too: it must outlive the migration.
    let banned = format!(
        "[[set]]\nname = \"banned\"\n\n[[rule]]\nname = \"drop-banned\"\naction = \"drop\"\n\
         protocol = \"udp\"\nsrc = [\"@banned\"]\ndst_ports = [{BANNED}]\n"
    );
    let policy = PolicyFile::new("upgrade", &format!("{}{banned}", block_udp(BLOCKED)));
    let testbed = Testbed::new().expect("testbed");
    let first = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    assert_eq!(testbed.udp_probe(RX_V4.into(), BLOCKED, 50).expect("probe").received, 0);
    let added = xdp_policy(&testbed, &["set", "add", "banned", &TX_V4.to_string()]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    assert_eq!(testbed.udp_probe(RX_V4.into(), BANNED, 10).expect("probe").received, 0);
    // Three reloads with hits in between: each generation's set slot has hits counted
    // and credited to the set, as a daemon that ran a while leaves them.
    for reload in 0..3 {
        let extra = block_udp(OPEN + 20 + reload);
        policy.write(&format!("{}{banned}{extra}", block_udp(BLOCKED)));
        let n = usize::from(reload) + 2;
        first.wait_for_log("policy applied", n, Duration::from_secs(10)).expect("reload");
        assert_eq!(testbed.udp_probe(RX_V4.into(), BANNED, 10).expect("probe").received, 0);
    }
    first.kill9();
    make_layout_1(&testbed);
    let before = blocked_count(&testbed);
    assert_eq!(before, 50);
    assert_eq!(status_json(&testbed)[0]["layout"], 1);

    let mut log = String::new();
    let result = stream(&testbed, || {
        std::thread::sleep(Duration::from_millis(300));
        let daemon = testbed
            .start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb)
            .expect("the migrating daemon");
        log = daemon.log();
        std::thread::sleep(Duration::from_millis(300));
        daemon.kill9();
        // The same version again: nothing to migrate.
        let again = testbed
            .start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb)
            .expect("the restarted daemon");
        assert!(again.log().contains("adopted the pinned filter"), "{}", again.log());
        std::thread::sleep(Duration::from_millis(300));
        again.kill9();
    });
    assert!(
        log.contains("migrated the pinned filter to new maps")
            && log.contains("from_layout=1")
            && log.contains(&format!("to_layout={LAYOUT_VERSION}"))
            && log.contains(&format!("RULE_COUNTERS {RULE_COUNTER_SLOTS}")),
        "{log}"
    );
    assert_enforced_throughout(&result, "migration and restart");
    assert_counted(&testbed, before, &result, "migration and restart");
    let status = status_json(&testbed);
    assert_eq!(status[0]["layout"], LAYOUT_VERSION);
    assert_eq!(status[0]["state"]["version"], env!("CARGO_PKG_VERSION"));
    let text = String::from_utf8_lossy(&xdp_policy(&testbed, &["status"]).stdout).into_owned();
    assert!(
        text.contains(&format!("daemon: xdp-policy {} (pid", env!("CARGO_PKG_VERSION")))
            && text.contains(&format!("map layout {LAYOUT_VERSION}")),
        "{text}"
    );
    assert_one_map_set(&testbed, "after the migration");
    // The ban is still in force, and the set's counters ran on.
    assert_eq!(testbed.udp_probe(RX_V4.into(), BANNED, 10).expect("probe").received, 0);
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    assert_verified(&testbed, "after the migration");
    let set = &status_json(&testbed)[0]["sets"][0];
    eprintln!("the set after the migration: {set}");
    assert_eq!((set["entries"].as_u64(), set["adds"].as_u64()), (Some(1), Some(1)), "{set}");
    // Every datagram from tx was looked up in the set and found: the 40 probes before
    // the migration, the stream's, and the 10 after (but for what the second copy may
    // lose).
    let hits = set["hits"].as_u64().expect("hits");
    let expected = 50 + result.sent[0] + result.sent[1];
    assert!(hits <= expected && hits + 2 >= expected, "{hits} hits, {expected} expected: {set}");
    daemon.stop().expect("stopping");
}

#[test]
fn a_newer_layout_is_refused_and_left_in_force() {
    let Some(_serial) = serial("a_newer_layout_is_refused_and_left_in_force") else { return };
    let policy = PolicyFile::new("downgrade", &block_udp(BLOCKED));
    let testbed = Testbed::new().expect("testbed");
    let first = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    first.stop().expect("stopping");
    let layout = pins(&testbed).join("maps").join(LAYOUT_MAP);
    let data = MapData::from_pin(&layout).expect("the LAYOUT pin");
    let mut map = Array::<_, u32>::try_from(Map::Array(data)).expect("an array");
    map.set(0, LAYOUT_VERSION + 1, 0).expect("writing a newer layout");

    let command = DaemonCommand::new(Path::new(DAEMON), &policy.0, XdpMode::Skb);
    let stderr = match testbed.start(&command) {
        Err(TestbedError::DaemonExited { status, stderr, .. }) => {
            // 64: starting again cannot help (systemd does not restart it).
            assert_eq!(status.code(), Some(64), "{stderr}");
            stderr
        }
        Ok(daemon) => panic!("a daemon took a newer layout:\n{}", daemon.log()),
        Err(other) => panic!("{other}"),
    };
    assert!(
        stderr
            .contains(&format!("set up by a newer xdp-policy (map layout {};", LAYOUT_VERSION + 1))
            && stderr.contains("xdp-policy detach"),
        "{stderr}"
    );
    assert_eq!(testbed.udp_probe(RX_V4.into(), BLOCKED, 10).expect("probe").received, 0);
    assert_eq!(testbed.udp_probe(RX_V4.into(), OPEN, 10).expect("probe").received, 10);
    assert_eq!(map.get(&0, 0).expect("LAYOUT"), LAYOUT_VERSION + 1, "the pins were left alone");
    assert_eq!(status_json(&testbed)[0]["layout"], LAYOUT_VERSION + 1);
}

/// Kills (aborts) a migration at each of its steps under a stream; the next start
/// finishes it or redoes it, and the filter is whole and in force all along.
#[test]
fn a_migration_killed_at_any_step_is_finished_or_redone() {
    let Some(_serial) = serial("a_migration_killed_at_any_step_is_finished_or_redone") else {
        return;
    };
    let policy = PolicyFile::new("crash", &block_udp(BLOCKED));
    // (where it crashes, whether the renames are half done, what the next start logs)
    let cases = [
        ("staged", false, "undid a migration a crash interrupted before its swap"),
        ("swapped", false, "finished a migration a crash interrupted after its swap"),
        ("swapped", true, "finished a migration a crash interrupted after its swap"),
    ];
    for (step, half_renamed, expected) in cases {
        let case = format!("crash at {step}{}", if half_renamed { ", maps renamed" } else { "" });
        let testbed = Testbed::new().expect("testbed");
        let first =
            testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
        first.stop().expect("stopping");
        make_layout_1(&testbed);
        let before = blocked_count(&testbed);
        let mut log = String::new();
        let result = stream(&testbed, || {
            std::thread::sleep(Duration::from_millis(300));
            let env = [("XDP_POLICY_TEST_CRASH_MIGRATION", step)];
            let command = DaemonCommand {
                env: &env,
                ..DaemonCommand::new(Path::new(DAEMON), &policy.0, XdpMode::Skb)
            };
            match testbed.start(&command) {
                Err(TestbedError::DaemonExited { stderr, .. }) => {
                    assert!(stderr.contains("crashing the migration as asked"), "{stderr}")
                }
                Ok(daemon) => panic!("{case}: it did not crash:\n{}", daemon.log()),
                Err(other) => panic!("{case}: {other}"),
            }
            let maps = pins(&testbed).join("maps");
            assert!(pins(&testbed).join("maps-new").exists(), "{case}: no maps-new");
            if half_renamed {
                // As if killed between the two renames of the commit.
                fs::rename(&maps, pins(&testbed).join("maps-old")).expect("renaming");
            }
            std::thread::sleep(Duration::from_millis(300));
            let daemon = testbed
                .start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb)
                .unwrap_or_else(|e| panic!("{case}: the next start: {e}"));
            log = daemon.log();
            std::thread::sleep(Duration::from_millis(300));
            daemon.stop().expect("stopping");
        });
        assert!(log.contains(expected), "{case}: {log}");
        assert_eq!(
            log.contains("migrated the pinned filter to new maps"),
            step == "staged",
            "{case}: migrated again only if the crash came before the swap:\n{log}"
        );
        assert_enforced_throughout(&result, &case);
        // The migration that crashed after its swap lost its second copy: what the old
        // program counted between the first copy of the counters and the swap, which
        // come one right after the other (a few datagrams at most).
        if step == "staged" {
            assert_counted(&testbed, before, &result, &case);
        } else {
            let counted = blocked_count(&testbed) - before;
            eprintln!("{case}: the rule counted {counted} of {}", result.sent[0]);
            assert!(counted <= result.sent[0] && counted + 20 >= result.sent[0], "{case}");
        }
        assert_eq!(status_json(&testbed)[0]["layout"], LAYOUT_VERSION, "{case}");
        assert_one_map_set(&testbed, &case);
        let daemon =
            testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
        assert_verified(&testbed, &case);
        daemon.stop().expect("stopping");
    }
}

/// A migrating daemon killed (SIGKILL) at moments spread over its start, wherever that
/// falls: loading the program, copying, applying, or after it is ready. Each time the
/// next start leaves one whole filter of this layout, enforced all along. (The pinning,
/// the swap and the renames take a few milliseconds at the end, which a timed kill
/// rarely hits: the crash points of the test above stop it exactly there.)
#[test]
fn migrations_killed_at_random_moments_leave_one_whole_filter() {
    let Some(_serial) = serial("migrations_killed_at_random_moments_leave_one_whole_filter") else {
        return;
    };
    let policy = PolicyFile::new("kill-9", &block_udp(BLOCKED));
    let layout_1 = || {
        let testbed = Testbed::new().expect("testbed");
        let first =
            testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
        first.stop().expect("stopping");
        make_layout_1(&testbed);
        testbed
    };
    // How long a migrating start takes here, from spawn to ready: the kills are spread
    // over it, the last ones where the swap and the renames are.
    // (Under the same stream as the kills: it slows the migration down.)
    let took = {
        let testbed = layout_1();
        let mut took = Duration::ZERO;
        stream(&testbed, || {
            let began = std::time::Instant::now();
            let daemon =
                testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
            took = began.elapsed();
            assert!(daemon.log().contains("migrated the pinned filter"), "{}", daemon.log());
            drop(daemon);
        });
        took
    };
    let mut outcomes = vec![format!("a migrating start took {took:?}")];
    for fraction in [0.2, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1] {
        let delay = format!("{:.3}", took.as_secs_f64() * fraction);
        let delay = delay.as_str();
        let testbed = layout_1();
        let mut next_log = String::new();
        let result = stream(&testbed, || {
            let launcher = ["timeout", "-s", "KILL", delay];
            let command = DaemonCommand {
                launcher: &launcher,
                ..DaemonCommand::new(Path::new(DAEMON), &policy.0, XdpMode::Skb)
            };
            let killed = match testbed.start(&command) {
                Err(TestbedError::DaemonExited { .. }) => "killed before ready",
                Ok(daemon) => {
                    // Ready first: the kill comes while it runs.
                    std::thread::sleep(Duration::from_secs(2));
                    drop(daemon);
                    "ready before the kill"
                }
                Err(other) => panic!("after {delay} s: {other}"),
            };
            let daemon = testbed
                .start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb)
                .unwrap_or_else(|e| panic!("the start after a kill at {delay} s: {e}"));
            next_log = daemon.log();
            daemon.stop().expect("stopping");
            outcomes.push(format!("{delay} s: {killed}"));
        });
        let step = format!("killed at {delay} s");
        assert_enforced_throughout(&result, &step);
        let next = ["undid a migration", "finished a migration", "migrated the pinned", "adopted"]
            .into_iter()
            .filter(|what| next_log.contains(what))
            .collect::<Vec<_>>()
            .join(", ");
        outcomes.last_mut().expect("an outcome").push_str(&format!("; then {next}"));
        assert_eq!(status_json(&testbed)[0]["layout"], LAYOUT_VERSION, "{step}");
        assert_one_map_set(&testbed, &step);
        let daemon =
            testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
        assert_verified(&testbed, &step);
        drop(daemon);
    }
    eprintln!("kills: {}", outcomes.join(" | "));
}

/// The entries of the pinned map `name`.
fn entries(testbed: &Testbed, name: &str) -> u32 {
    let path = pins(testbed).join("maps").join(name);
    MapInfo::from_pin(path).unwrap_or_else(|e| panic!("{name}: {e}")).max_entries()
}

/// The entries of the bucket map, the limits, the port table and the first IPv4
/// address table.
fn sizes(testbed: &Testbed) -> [u32; 4] {
    [LIMIT_BUCKETS_MAP, LIMITS_MAP, PORT_TABLE_MAP, V4_L1_MAP].map(|name| entries(testbed, name))
}

/// The maps' kernel memory, bytes.
fn maps_memory(testbed: &Testbed) -> u64 {
    status_json(testbed)[0]["kernel_memory"]["maps"].as_u64().expect("memory")
}

/// The maps that follow the policy are sized for it, and a reload that needs other
/// sizes moves the filter to new maps (under a stream: nothing through, every datagram
/// counted), carrying the limit buckets.
#[test]
fn maps_are_sized_by_the_policy_and_moved_on_reload() {
    let Some(_serial) = serial("maps_are_sized_by_the_policy_and_moved_on_reload") else {
        return;
    };
    const LIMITED: u16 = 7103;
    // A row a generation for each transport class the policy decides differently.
    const ROW: u32 = GENERATIONS * port_table::WORDS_PER_ROW;
    // Room for the fewest rules (these policies have at most four).
    const LIMITS: u32 = GENERATIONS * policy_daemon::dataplane::migrate::Sizes::MIN_RULES;
    // The first level of the source field alone, both generations.
    const SRC_L1: u32 = GENERATIONS * v4_table::L1_ENTRIES / v4_table::L1_PER_WORD;
    let limit = format!(
        "[[rule]]\nname = \"limit-{LIMITED}\"\naction = \"limit\"\nprotocol = \"udp\"\n\
         dst_ports = [{LIMITED}]\nrate = \"1/h\"\nburst = 3\n"
    );
    // IPv4 prefixes: the address tables (198.19/16 holds neither veth end).
    let prefix = "[[rule]]\nname = \"lab\"\naction = \"drop\"\nsrc = [\"198.19.0.0/16\"]\n";
    let plain = block_udp(BLOCKED);
    let policy = PolicyFile::new("sized", &plain);
    let testbed = Testbed::new().expect("testbed");
    let command = DaemonCommand {
        extra: &["--max-sources", "5000"],
        ..DaemonCommand::new(Path::new(DAEMON), &policy.0, XdpMode::Skb)
    };
    let daemon = testbed.start(&command).expect("daemon");
    // A port-only policy: the port table's UDP row, one bucket, no limits, no address
    // tables.
    assert_eq!(sizes(&testbed), [1, 1, ROW, 1]);
    let port_only = maps_memory(&testbed);
    assert_eq!(testbed.udp_probe(RX_V4.into(), BLOCKED, 20).expect("probe").received, 0);

    let result = stream(&testbed, || {
        policy.write(&format!("{plain}{limit}"));
        daemon.wait_for_log("policy applied", 2, Duration::from_secs(10)).expect("reload");
    });
    assert!(daemon.log().contains("moved the filter to new maps"), "{}", daemon.log());
    assert_enforced_throughout(&result, "the first limit rule");
    assert_counted(&testbed, 20, &result, "the first limit rule");
    // A limit rule: max_sources buckets, and no port table (a limit is not port-only).
    assert_eq!(sizes(&testbed), [5000, LIMITS, 1, 1]);
    let limits = maps_memory(&testbed);
    let received = testbed.udp_probe(RX_V4.into(), LIMITED, 6).expect("probe").received;
    assert_eq!(received, 3, "the limit rule passes its burst of 3, then one an hour");

    // IPv4 prefixes come: the address tables, and the bucket carried over (still empty).
    // A /16 is decided in the first level: no block, and room for the fewest classes.
    policy.write(&format!("{plain}{limit}{prefix}"));
    daemon.wait_for_log("policy applied", 3, Duration::from_secs(10)).expect("reload");
    assert_eq!(daemon.log().matches("moved the filter to new maps").count(), 2);
    assert_eq!(sizes(&testbed), [5000, LIMITS, 1, SRC_L1]);
    let v4_tables = [V4_L2_MAP, V4_L3_MAP, V4_CLASSES_MAP].map(|name| entries(&testbed, name));
    assert_eq!(v4_tables, [1, 1, TableRoom::MIN_CLASSES * REGIONS]);
    let tables = maps_memory(&testbed);
    assert_eq!(testbed.udp_probe(RX_V4.into(), LIMITED, 3).expect("probe").received, 0);

    // Another rule of the same kind: the same sizes, no move.
    policy.write(&format!("{plain}{limit}{prefix}{}", block_udp(OPEN + 10)));
    daemon.wait_for_log("policy applied", 4, Duration::from_secs(10)).expect("reload");
    assert_eq!(daemon.log().matches("moved the filter to new maps").count(), 2);

    // Back to the port-only policy: back to its sizes.
    policy.write(&plain);
    daemon.wait_for_log("policy applied", 5, Duration::from_secs(10)).expect("reload");
    assert_eq!(daemon.log().matches("moved the filter to new maps").count(), 3);
    assert_eq!(sizes(&testbed), [1, 1, ROW, 1]);
    assert_eq!(testbed.udp_probe(RX_V4.into(), BLOCKED, 10).expect("probe").received, 0);
    assert_eq!(testbed.udp_probe(RX_V4.into(), OPEN, 10).expect("probe").received, 10);

    // A TCP rule to other ports: a second row, under a stream to the UDP ports.
    let tcp = "[[rule]]\nname = \"telnet\"\naction = \"drop\"\nprotocol = \"tcp\"\n\
               dst_ports = [23]\n";
    let result = stream(&testbed, || {
        policy.write(&format!("{plain}{tcp}"));
        daemon.wait_for_log("policy applied", 6, Duration::from_secs(10)).expect("reload");
    });
    assert_eq!(daemon.log().matches("moved the filter to new maps").count(), 4);
    assert_enforced_throughout(&result, "a second row");
    assert_eq!(sizes(&testbed), [1, 1, 2 * ROW, 1]);
    // One rule for TCP and UDP alike: one row again, which both classes share.
    policy.write(&plain.replace("protocol = \"udp\"\n", ""));
    daemon.wait_for_log("policy applied", 7, Duration::from_secs(10)).expect("reload");
    assert_eq!(daemon.log().matches("moved the filter to new maps").count(), 5);
    assert_eq!(sizes(&testbed), [1, 1, ROW, 1]);
    assert_eq!(testbed.udp_probe(RX_V4.into(), BLOCKED, 10).expect("probe").received, 0);
    assert_eq!(testbed.udp_probe(RX_V4.into(), OPEN, 10).expect("probe").received, 10);

    // An IPv6 source network longer than /32 (the sender is fd00::1): the IPv6 address
    // tables, walked past their first 32 bits; IPv4 to the same port still passes.
    let v6 = format!(
        "{plain}[[rule]]\nname = \"v6-lab\"\naction = \"drop\"\nprotocol = \"udp\"\n\
         src = [\"fd00::/64\"]\ndst_ports = [{OPEN}]\n"
    );
    policy.write(&v6);
    daemon.wait_for_log("policy applied", 8, Duration::from_secs(10)).expect("reload");
    assert_eq!(daemon.log().matches("moved the filter to new maps").count(), 6);
    // The /64 takes a block for each of its bytes past the first level (six: room for
    // eight), and two classes (room for the fewest). The IPv4 source field has no
    // prefix: its one class, no IPv4 tables.
    let v6_tables = [V6_L1_MAP, V6_BLOCKS_MAP, V6_CLASSES_MAP].map(|name| entries(&testbed, name));
    assert_eq!(v6_tables, [SRC_L1, 8 * REGIONS * 256, TableRoom::MIN_CLASSES * REGIONS]);
    let v4_tables = [V4_L1_MAP, V4_L2_MAP, V4_CLASSES_MAP].map(|name| entries(&testbed, name));
    assert_eq!(v4_tables, [1, 1, TableRoom::MIN_CLASSES * REGIONS]);
    let v6_only = maps_memory(&testbed);
    let probe =
        |addr: std::net::IpAddr, port| testbed.udp_probe(addr, port, 10).expect("probe").received;
    assert_eq!([probe(RX_V6.into(), OPEN), probe(RX_V4.into(), OPEN)], [0, 10]);
    assert_eq!(probe(RX_V6.into(), BLOCKED), 0);
    // A restart adopts the sized maps as they are, and enforces the same.
    daemon.stop().expect("stopping");
    let daemon = testbed.start(&command).expect("the restarted daemon");
    assert!(daemon.log().contains("adopted the pinned filter"), "{}", daemon.log());
    assert_eq!([probe(RX_V6.into(), OPEN), probe(RX_V4.into(), OPEN)], [0, 10]);
    assert_one_map_set(&testbed, "after the moves");
    assert_verified(&testbed, "after the moves");
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "maps: port-only {:.2} MiB; with a limit rule (5,000 buckets) {:.2} MiB; with an IPv4 \
         /16 too {:.2} MiB; port rules and an IPv6 /64 {:.2} MiB",
        mib(port_only),
        mib(limits),
        mib(tables),
        mib(v6_only)
    );
    // A port field's classes cost 256 KiB and little more; the address tables their
    // first level (256 KiB a field and family) and little more. Of a port-only policy's
    // 1 MiB, the port table's row takes 256 KiB, the event ring 269 KiB and the rule
    // counters of 4,096 rules 320 KiB on two CPUs (per CPU: a quarter of that at 1,024
    // rules); the rules, and the class-and-flags and field bitmaps, are sized to it. A
    // limit rule adds the buckets and the limits' counters, by counter slot: 640 KiB on
    // two CPUs at 4,096 rules (160 KiB at 1,024).
    assert!(
        port_only <= 1 << 20
            && limits < 5 << 19
            && tables < limits + (1 << 19)
            && v6_only < 3 << 19,
        "{port_only} {limits} {tables} {v6_only}"
    );
    daemon.stop().expect("stopping");
}
