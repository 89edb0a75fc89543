//! Named sets in the real kernel, through BPF_PROG_TEST_RUN: file entries and run-time
//! entries, hosts and networks of both IP versions, expiry (also of a longer prefix
//! inside a live shorter one), and what reloads keep and drop.

mod support;

use std::path::Path;

use ipnet::IpNet;
use policy_common::xdp_action::{XDP_DROP, XDP_PASS};
use policy_daemon::{
    dataplane::{
        Dataplane,
        sets::{self, SetInfo},
    },
    policy::{self, Policy, reference},
};
use support::packet::*;

const POLICY: &str = r#"
[[set]]
name = "blocklist"
timeout = "1h"

[[set]]
name = "servers"

[[rule]]
name = "drop-blocklist"
action = "drop"
src = ["@blocklist", "198.18.200.0/24"]

[[rule]]
name = "pass-servers-web"
action = "pass"
protocol = "udp"
dst = ["@servers"]
dst_ports = [80]

[[rule]]
name = "drop-udp-80"
action = "drop"
protocol = "udp"
dst_ports = [80]
"#;

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| policy::parse_net(n).expect("a network")).collect()
}

fn policy_with(text: &str, blocklist: &[&str], servers: &[&str]) -> Policy {
    let mut policy = policy::parse([(Path::new("sets.toml"), text)]).expect("a valid policy");
    for set in &mut policy.sets {
        set.entries = match set.name.as_str() {
            "blocklist" => nets(blocklist),
            _ => nets(servers),
        };
    }
    policy
}

/// Adds `list` to `set` at run time, expiring at `expires_ns`.
fn add(
    dataplane: &mut Dataplane,
    set: &SetInfo,
    list: &[&str],
    expires_ns: u64,
) -> Result<sets::AddReport, sets::ChangeError> {
    let entries: Vec<_> = nets(list).into_iter().map(|n| (n, expires_ns)).collect();
    sets::add(dataplane.sets(), set, &entries, 0)
}

fn info(policy: &Policy, name: &str) -> SetInfo {
    let set = policy.sets.iter().find(|s| s.name == name).expect("the set");
    SetInfo {
        name: set.name.clone(),
        id: set.id,
        max_entries: set.max_entries,
        timeout: set.timeout,
    }
}

/// UDP to port 80 from `src` to `dst`, as the program decides it.
fn verdict(dataplane: &mut Dataplane, src: &str, dst: &str) -> u32 {
    let packet = if src.contains(':') { Packet::ipv6(udp(80)) } else { Packet::ipv4(udp(80)) };
    dataplane.test_run(&packet.src(src).dst(dst).build()).expect("BPF_PROG_TEST_RUN")
}

const V4_DST: &str = "198.19.9.9";
const V6_DST: &str = "fd00:9::9";

#[test]
fn file_and_run_time_entries_admit_the_rules_naming_their_set() {
    if !support::privileged("file_and_run_time_entries_admit_the_rules_naming_their_set") {
        return;
    }
    let policy =
        policy_with(POLICY, &["198.18.7.0/24", "fd00:7::/64"], &["198.19.0.1", "fd00:1::1"]);
    let mut dataplane = Dataplane::load(&policy::compile(&policy)).expect("loading");
    let cases = [
        ("198.18.7.1", "198.19.0.1", XDP_DROP, "a file network of the blocklist"),
        ("198.18.200.9", "198.19.0.1", XDP_DROP, "a plain network beside the set"),
        ("198.18.8.1", "198.19.0.1", XDP_PASS, "a server, not blocked"),
        ("198.18.8.1", V4_DST, XDP_DROP, "not a server: the catch-all"),
        ("fd00:7::5", "fd00:1::1", XDP_DROP, "an IPv6 file network"),
        ("fd00:8::5", "fd00:1::1", XDP_PASS, "an IPv6 server"),
        ("fd00:8::5", V6_DST, XDP_DROP, "not an IPv6 server"),
    ];
    for (src, dst, expected, what) in cases {
        assert_eq!(verdict(&mut dataplane, src, dst), expected, "{what}: {src} → {dst}");
        let packet = reference::parse_packet(
            &(if src.contains(':') { Packet::ipv6(udp(80)) } else { Packet::ipv4(udp(80)) })
                .src(src)
                .dst(dst)
                .build(),
        );
        let wanted = reference::classify(&policy, &packet).verdict.drops();
        assert_eq!(wanted, expected == XDP_DROP, "the reference agrees: {what}");
    }

    let blocklist = info(&policy, "blocklist");
    let count = |dataplane: &mut Dataplane| dataplane.sets().count(blocklist.id);
    assert_eq!(count(&mut dataplane), 2, "the file's entries are counted");
    let now = sets::boot_now_ns();
    let report = add(&mut dataplane, &blocklist, &["198.18.8.1", "fd00:8::5", "198.18.7.0/24"], 0)
        .expect("adding");
    assert_eq!((report.added, report.renewed, report.in_file), (2, 0, 1));
    assert_eq!(count(&mut dataplane), 4);
    assert_eq!(verdict(&mut dataplane, "198.18.8.1", "198.19.0.1"), XDP_DROP, "a banned host");
    assert_eq!(verdict(&mut dataplane, "198.18.8.2", "198.19.0.1"), XDP_PASS, "its neighbour");
    assert_eq!(verdict(&mut dataplane, "fd00:8::5", "fd00:1::1"), XDP_DROP, "a banned v6 host");

    // Expired entries no longer match, at once, before any sweep.
    add(&mut dataplane, &blocklist, &["198.18.8.1"], now - 1).expect("re-adding");
    assert_eq!(verdict(&mut dataplane, "198.18.8.1", "198.19.0.1"), XDP_PASS, "an expired ban");
    // A re-added entry takes the new expiry.
    add(&mut dataplane, &blocklist, &["198.18.8.1"], now + 3_600_000_000_000).expect("renewing");
    assert_eq!(verdict(&mut dataplane, "198.18.8.1", "198.19.0.1"), XDP_DROP, "a renewed ban");

    // A live /16 with an expired /24 and /32 inside it: the /16 still decides.
    add(&mut dataplane, &blocklist, &["198.18.64.0/18"], 0).expect("adding");
    add(&mut dataplane, &blocklist, &["198.18.65.0/24", "198.18.65.1"], now - 1).expect("adding");
    assert_eq!(verdict(&mut dataplane, "198.18.65.1", "198.19.0.1"), XDP_DROP, "under a live /18");
    assert_eq!(count(&mut dataplane), 7);
    dataplane.sets().set_count(blocklist.id, 1000).expect("a wrong count, as a crash leaves");
    let ids = [blocklist.id, info(&policy, "servers").id];
    let expired = dataplane.sweep_sets(&ids, true).expect("sweeping");
    assert_eq!(expired.get(&blocklist.id), Some(&2), "the sweep removes the two expired");
    assert_eq!(count(&mut dataplane), 5, "and recounts");
    assert_eq!(verdict(&mut dataplane, "198.18.65.1", "198.19.0.1"), XDP_DROP, "after the sweep");
    // While no entry can have expired, a sweep that is not full does not walk the map (a
    // wrong count stays); once an add writes one that has, it walks, removes it, mends.
    dataplane.sets().set_count(blocklist.id, 1000).expect("a wrong count again");
    assert!(dataplane.sweep_sets(&ids, false).expect("sweeping").is_empty());
    assert_eq!(count(&mut dataplane), 1000, "no walk: nothing could have expired");
    add(&mut dataplane, &blocklist, &["198.18.66.1"], now - 1).expect("adding an expired ban");
    let expired = dataplane.sweep_sets(&ids, false).expect("sweeping");
    assert_eq!(expired.get(&blocklist.id), Some(&1), "walked: the expired one removed");
    assert_eq!(count(&mut dataplane), 5, "and recounted");

    // File entries cannot be removed at run time; run-time ones can.
    let report = sets::delete(
        dataplane.sets(),
        blocklist.id,
        &nets(&["198.18.7.0/24", "198.18.8.1", "198.18.9.9"]),
    )
    .expect("deleting");
    assert_eq!(report.removed, 1);
    assert_eq!(count(&mut dataplane), 4);
    assert_eq!(report.in_file, nets(&["198.18.7.0/24"]));
    assert_eq!(report.missing, nets(&["198.18.9.9"]));
    assert_eq!(verdict(&mut dataplane, "198.18.8.1", "198.19.0.1"), XDP_PASS, "unbanned");
    assert_eq!(
        verdict(&mut dataplane, "198.18.7.1", "198.19.0.1"),
        XDP_DROP,
        "the file entry stays"
    );

    // The set's counters: 2 file entries and 6 run-time ones added (renewals are not
    // adds), 1 deleted, 3 expired; the program counts a hit per packet the set held.
    let counters = dataplane.set_counters(blocklist.id);
    assert_eq!((counters.adds, counters.deletes, counters.expiries), (8, 1, 3), "{counters:?}");
    let hits = counters.hits;
    assert!(hits > 0, "{counters:?}");
    verdict(&mut dataplane, "198.18.7.1", "198.19.0.1");
    verdict(&mut dataplane, "fd00:8::5", "fd00:1::1");
    verdict(&mut dataplane, "198.18.8.1", V4_DST);
    assert_eq!(dataplane.set_counters(blocklist.id).hits, hits + 2, "two of three held");

    // Hits are counted per generation and set slot: reloads that move the blocklist to
    // another slot (a rule naming another source set comes first) and back lose no hit
    // and count none twice, nor give the blocklist's to the other set.
    let moved = policy_with(
        &format!(
            "[[rule]]\nname = \"tcp-from-servers\"\naction = \"pass\"\nprotocol = \"tcp\"\n\
             src = [\"@servers\"]\n{POLICY}"
        ),
        &["198.18.7.0/24", "fd00:7::/64"],
        &["198.19.0.1", "fd00:1::1"],
    );
    let servers = info(&policy, "servers").id;
    let servers_hits = dataplane.set_counters(servers).hits;
    for round in 0..4 {
        // Moved twice, then back twice: each generation changes its slots' owners.
        let next = if round < 2 { &moved } else { &policy };
        dataplane.apply(&policy::compile(next)).expect("applying");
        assert_eq!(verdict(&mut dataplane, "198.18.7.1", "198.19.0.1"), XDP_DROP);
    }
    assert_eq!(dataplane.set_counters(blocklist.id).hits, hits + 6, "across reloads");
    assert_eq!(dataplane.set_counters(servers).hits, servers_hits + 4, "its own hits only");
}

#[test]
fn reloads_keep_run_time_entries_rewrite_file_entries_and_drop_removed_sets() {
    if !support::privileged(
        "reloads_keep_run_time_entries_rewrite_file_entries_and_drop_removed_sets",
    ) {
        return;
    }
    let policy = policy_with(POLICY, &["198.18.7.0/24"], &["198.19.0.1"]);
    let mut dataplane = Dataplane::load(&policy::compile(&policy)).expect("loading");
    let blocklist = info(&policy, "blocklist");
    add(&mut dataplane, &blocklist, &["198.18.8.1"], 0).expect("adding");

    // The file changes: its new entry is in, the one it dropped is out, the ban stays.
    let changed = policy_with(POLICY, &["198.18.6.0/24"], &["198.19.0.1"]);
    dataplane.apply(&policy::compile(&changed)).expect("applying");
    assert_eq!(verdict(&mut dataplane, "198.18.6.1", "198.19.0.1"), XDP_DROP, "new file entry");
    assert_eq!(verdict(&mut dataplane, "198.18.7.1", "198.19.0.1"), XDP_PASS, "dropped file entry");
    assert_eq!(verdict(&mut dataplane, "198.18.8.1", "198.19.0.1"), XDP_DROP, "the run-time ban");

    // A policy without the blocklist: its entries go; with it again, it starts empty.
    let without = POLICY
        .replace("[[set]]\nname = \"blocklist\"\ntimeout = \"1h\"\n", "")
        .replace("src = [\"@blocklist\", \"198.18.200.0/24\"]", "src = [\"198.18.200.0/24\"]");
    let without = policy_with(&without, &[], &["198.19.0.1"]);
    dataplane.apply(&policy::compile(&without)).expect("applying");
    assert_eq!(verdict(&mut dataplane, "198.18.8.1", "198.19.0.1"), XDP_PASS);
    // Its counters go with it, and the hits its old generation counted are not credited
    // back to a set nobody has once that generation is rewritten.
    dataplane.apply(&policy::compile(&without)).expect("applying again");
    assert_eq!(dataplane.set_counters(blocklist.id), sets::SetCounters::default());
    let left = dataplane.sets().entries(Some(blocklist.id)).expect("reading");
    assert!(left.is_empty(), "entries of a removed set stay behind: {left:?}");
    dataplane.apply(&policy::compile(&policy)).expect("applying");
    assert_eq!(verdict(&mut dataplane, "198.18.8.1", "198.19.0.1"), XDP_PASS, "not brought back");
    assert_eq!(verdict(&mut dataplane, "198.18.7.1", "198.19.0.1"), XDP_DROP, "the file again");
}

#[test]
fn a_set_past_its_max_entries_is_refused_unchanged() {
    if !support::privileged("a_set_past_its_max_entries_is_refused_unchanged") {
        return;
    }
    let text = POLICY.replace("timeout = \"1h\"", "timeout = \"1h\"\nmax_entries = 3");
    let policy = policy_with(&text, &["198.18.7.0/24"], &["198.19.0.1"]);
    let mut dataplane = Dataplane::load(&policy::compile(&policy)).expect("loading");
    let blocklist = info(&policy, "blocklist");
    add(&mut dataplane, &blocklist, &["198.18.8.1", "198.18.8.2"], 0).expect("fits");
    let err = add(&mut dataplane, &blocklist, &["198.18.8.3", "198.18.8.4"], 0)
        .expect_err("past max_entries");
    assert_eq!(
        err.to_string(),
        "set \"blocklist\" holds 3 entries; 2 more would pass its max_entries of 3: nothing was \
         changed"
    );
    assert_eq!(dataplane.sets().entries(Some(blocklist.id)).expect("reading").len(), 3);
    // Renewing what is there is no growth.
    add(&mut dataplane, &blocklist, &["198.18.8.1"], 0).expect("renewing");
    let (written, removed) =
        sets::replace(dataplane.sets(), &blocklist, &nets(&["198.18.9.1", "198.18.9.2"]), 0)
            .expect("replacing");
    assert_eq!((written, removed), (2, 2));
    assert_eq!(verdict(&mut dataplane, "198.18.8.1", "198.19.0.1"), XDP_PASS, "replaced");
    assert_eq!(verdict(&mut dataplane, "198.18.9.1", "198.19.0.1"), XDP_DROP, "a replacement");
    let held: Vec<IpNet> = dataplane
        .sets()
        .entries(Some(blocklist.id))
        .expect("reading")
        .into_iter()
        .map(|e| e.net)
        .collect();
    let mut held = held;
    held.sort();
    assert_eq!(held, nets(&["198.18.7.0/24", "198.18.9.1/32", "198.18.9.2/32"]));
}

#[test]
fn a_policy_whose_only_field_is_a_set_decides_by_it() {
    if !support::privileged("a_policy_whose_only_field_is_a_set_decides_by_it") {
        return;
    }
    // No protocol, port or plain network anywhere: the set alone admits the rule. (The
    // program once took the address field's own bitmap, which holds no rule here, as
    // the stand-in for the fields no rule constrains, and matched nothing.)
    for field in ["src", "dst"] {
        let text = format!(
            "[[set]]\nname = \"blocklist\"\n[[rule]]\nname = \"only-the-set\"\naction = \
             \"drop\"\n{field} = \"@blocklist\"\n"
        );
        let mut policy = policy::parse([(Path::new("only.toml"), text.as_str())]).expect("valid");
        policy.sets[0].entries = nets(&["198.18.0.1", "fd00::1"]);
        let mut dataplane = Dataplane::load(&policy::compile(&policy)).expect("loading");
        let (inside, outside) = if field == "src" {
            (("198.18.0.1", "198.18.0.2"), ("198.18.0.3", "198.18.0.2"))
        } else {
            (("198.18.0.2", "198.18.0.1"), ("198.18.0.2", "198.18.0.3"))
        };
        assert_eq!(verdict(&mut dataplane, inside.0, inside.1), XDP_DROP, "{field}: in the set");
        assert_eq!(verdict(&mut dataplane, outside.0, outside.1), XDP_PASS, "{field}: not in it");
        let v6 = if field == "src" { ("fd00::1", "fd00::2") } else { ("fd00::2", "fd00::1") };
        assert_eq!(verdict(&mut dataplane, v6.0, v6.1), XDP_DROP, "{field}: IPv6 in the set");
    }
}

#[test]
fn the_audit_finds_and_the_repair_mends_set_entries_changed_behind_the_daemon() {
    if !support::privileged(
        "the_audit_finds_and_the_repair_mends_set_entries_changed_behind_the_daemon",
    ) {
        return;
    }
    let policy = policy_with(POLICY, &["198.18.7.0/24", "198.18.6.0/24"], &["198.19.0.1"]);
    let ruleset = policy::compile(&policy);
    let mut dataplane = Dataplane::load(&ruleset).expect("loading");
    let blocklist = info(&policy, "blocklist");
    add(&mut dataplane, &blocklist, &["198.18.8.1"], 0).expect("a run-time ban");
    assert!(dataplane.audit(&ruleset).expect("auditing").is_empty(), "nothing changed yet");

    // Another writer: a file entry removed, another made to expire, a set nobody has.
    let file_entry = |net: &str, expires_ns| sets::Entry {
        id: blocklist.id,
        net: nets(&[net])[0],
        value: sets::value(&nets(&[net])[0], expires_ns, policy_common::set_origin::FILE),
    };
    dataplane.sets().remove(&[(blocklist.id, nets(&["198.18.7.0/24"])[0])]).expect("removing");
    dataplane.sets().insert(&[file_entry("198.18.6.0/24", 1)]).expect("expiring");
    let stranger = sets::Entry { id: 0xdead_beef, ..file_entry("198.18.9.0/24", 0) };
    dataplane.sets().insert(&[stranger]).expect("a stranger");
    assert_eq!(verdict(&mut dataplane, "198.18.7.1", "198.19.0.1"), XDP_PASS, "drifted");
    let drift = dataplane.audit(&ruleset).expect("auditing");
    assert_eq!(drift.maps.get(policy_common::SETS_MAP), Some(&3), "{drift:?}");

    dataplane.repair(&ruleset).expect("repairing");
    assert!(dataplane.audit(&ruleset).expect("auditing").is_empty(), "repaired");
    assert_eq!(verdict(&mut dataplane, "198.18.7.1", "198.19.0.1"), XDP_DROP, "back");
    assert_eq!(verdict(&mut dataplane, "198.18.6.1", "198.19.0.1"), XDP_DROP, "expires no more");
    assert_eq!(verdict(&mut dataplane, "198.18.8.1", "198.19.0.1"), XDP_DROP, "the ban stays");
    let strangers = dataplane.sets().entries(Some(0xdead_beef)).expect("reading");
    assert!(strangers.is_empty(), "{strangers:?}");
}
