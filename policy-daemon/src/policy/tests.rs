//! Policy parsing, validation and compilation, with every message checked as rendered.

use std::path::Path;

use policy_common::{RuleBitmap, Verdict, field};

use super::*;

const FILE: &str = "policies/web.toml";

fn parse_one(text: &str) -> Result<Policy, PolicyError> {
    parse([(Path::new(FILE), text)])
}

fn valid(text: &str) -> Policy {
    parse_one(text).unwrap_or_else(|e| panic!("expected a valid policy, got:\n{e}"))
}

/// The full rendered error for `text`.
fn error(text: &str) -> String {
    match parse_one(text) {
        Ok(policy) => panic!("expected the policy to be rejected, got {policy:?}"),
        Err(e) => e.to_string(),
    }
}

const TELNET: &str = r#"
[[rule]]
name = "block-telnet"
action = "drop"
protocol = "tcp"
dst_ports = [23, 2323]
"#;

#[test]
fn parses_the_minimal_policy() {
    let policy = valid(TELNET);
    assert_eq!(
        policy.rules,
        vec![Rule {
            name: "block-telnet".into(),
            action: Action::Drop,
            protocol: Protocol::Tcp,
            dst_ports: Some(vec![
                PortRange { low: 23, high: 23 },
                PortRange { low: 2323, high: 2323 }
            ]),
            mode: Mode::Enforce,
            src_ports: None,
            src: None,
            dst: None,
            src_sets: Vec::new(),
            dst_sets: Vec::new(),
            icmp_types: None,
            tcp_flags: None,
            limit: None,
            location: Location { file: FILE.into(), line: 3, column: 8 },
        }]
    );
}

#[test]
fn protocol_defaults_to_any_and_ports_to_all() {
    let policy = valid("[[rule]]\nname = \"all\"\naction = \"pass\"\n");
    assert_eq!(policy.rules[0].protocol, Protocol::Any);
    assert_eq!(policy.rules[0].dst_ports, None);
}

#[test]
fn accepts_ranges_and_a_single_port_without_brackets() {
    let policy = valid(
        "[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_ports = [\"137-139\", \"445\", 8080]\n\
         [[rule]]\nname = \"b\"\naction = \"drop\"\ndst_ports = 22\n\
         [[rule]]\nname = \"c\"\naction = \"drop\"\ndst_ports = \"6000-6063\"\n",
    );
    let ports: Vec<_> = policy.rules.iter().map(|r| r.dst_ports.clone()).collect();
    let r = |low, high| PortRange { low, high };
    assert_eq!(
        ports,
        vec![
            Some(vec![r(137, 139), r(445, 445), r(8080, 8080)]),
            Some(vec![r(22, 22)]),
            Some(vec![r(6000, 6063)]),
        ]
    );
}

#[test]
fn an_empty_file_is_a_policy_without_rules() {
    assert_eq!(valid("# nothing yet\n").rules, vec![]);
}

#[test]
fn port_out_of_range() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_ports = [70000]\n"),
        "policies/web.toml:4:14: invalid port 70000: expected a number from 0 to 65535\n  \
         |\n4 | dst_ports = [70000]\n  |              ^^^^^\n1 error"
    );
}

#[test]
fn negative_port() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_ports = -1\n"),
        "policies/web.toml:4:13: invalid port -1: expected a number from 0 to 65535\n  \
         |\n4 | dst_ports = -1\n  |             ^^\n1 error"
    );
}

#[test]
fn reversed_range() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_ports = [\"90-80\"]\n"),
        "policies/web.toml:4:14: invalid port range \"90-80\": the low end is above the high end\n  \
         |\n4 | dst_ports = [\"90-80\"]\n  |              ^^^^^^^\n1 error"
    );
}

#[test]
fn range_that_is_not_numbers() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_ports = [\"http\"]\n"),
        "policies/web.toml:4:14: invalid port range \"http\": expected a port number from 0 to \
         65535 or a \"low-high\" range\n  |\n4 | dst_ports = [\"http\"]\n  |              ^^^^^^\n\
         1 error"
    );
}

#[test]
fn port_of_the_wrong_type() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_ports = [true]\n"),
        "policies/web.toml:4:14: invalid type: boolean `true`, expected a port number from 0 to \
         65535 or a \"low-high\" range\n  |\n4 | dst_ports = [true]\n  |              ^^^^\n1 error"
    );
}

#[test]
fn unknown_protocol() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\nprotocol = \"sctp\"\n"),
        "policies/web.toml:4:12: unknown variant `sctp`, expected one of `tcp`, `udp`, `icmp`, \
         `icmpv6`, `any`\n  |\n4 | protocol = \"sctp\"\n  |            ^^^^^^\n1 error"
    );
}

#[test]
fn unknown_action() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"reject\"\n"),
        "policies/web.toml:3:10: unknown variant `reject`, expected one of `pass`, `drop`, `limit`\n  \
         |\n3 | action = \"reject\"\n  |          ^^^^^^^^\n1 error"
    );
}

#[test]
fn unknown_field() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_port = [1]\n"),
        "policies/web.toml:4:1: unknown field `dst_port`, expected one of `name`, `action`, \
         `mode`, `protocol`, `dst_ports`, `src_ports`, `src`, `dst`, `icmp_types`, `tcp_flags`, \
         `rate`, `burst`, `per`\n  |\n4 | \
         dst_port = [1]\n  | ^^^^^^^^\n1 error"
    );
}

#[test]
fn unknown_top_level_table() {
    assert_eq!(
        error("[rules]\nname = \"a\"\n"),
        "policies/web.toml:1:2: unknown field `rules`, expected one of `interfaces`, `defaults`, \
         `set`, `rule`\n  |\n1 | [rules]\n  |  ^^^^^\n1 error"
    );
}

#[test]
fn missing_action() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\n"),
        "policies/web.toml:1:1: missing field `action`\n  |\n1 | [[rule]]\n  | ^^^^^^^^\n1 error"
    );
}

#[test]
fn bad_toml_syntax() {
    assert_eq!(
        error("[[rule]]\nname = \"a\n",),
        "policies/web.toml:2:10: invalid basic string, expected `\"`\n  |\n2 | name = \"a\n  |          ^\n1 error"
    );
}

#[test]
fn invalid_rule_names() {
    assert_eq!(
        error(
            "[[rule]]\nname = \"\"\naction = \"drop\"\n[[rule]]\nname = \"no spaces\"\naction = \"drop\"\n"
        ),
        "policies/web.toml:2:8: invalid rule name \"\": expected 1 to 64 letters, digits, '-', '_' \
         or '.'\n  |\n2 | name = \"\"\n  |        ^^\n\
         policies/web.toml:5:8: invalid rule name \"no spaces\": expected 1 to 64 letters, digits, \
         '-', '_' or '.'\n  |\n5 | name = \"no spaces\"\n  |        ^^^^^^^^^^^\n2 errors"
    );
}

#[test]
fn empty_port_list() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_ports = []\n"),
        "policies/web.toml:4:13: dst_ports is empty, so the rule could never match: list values, \
         or leave dst_ports out to match any\n  |\n4 | dst_ports = []\n  |             ^^\n1 error"
    );
}

#[test]
fn duplicate_names_across_files_name_both_places() {
    let first = "[[rule]]\nname = \"ssh\"\naction = \"pass\"\n";
    let second = "# second file\n[[rule]]\nname = \"ssh\"\naction = \"drop\"\n";
    let err = parse([(Path::new("10-a.toml"), first), (Path::new("20-b.toml"), second)])
        .expect_err("duplicate names must be rejected")
        .to_string();
    assert_eq!(
        err,
        "20-b.toml:3:8: duplicate rule name \"ssh\": first defined at 10-a.toml:2:8\n  |\n\
         3 | name = \"ssh\"\n  |        ^^^^^\n1 error"
    );
}

#[test]
fn errors_of_all_files_are_reported_together() {
    let bad_syntax = "[[rule]\n";
    let bad_name = "[[rule]]\nname = \"x y\"\naction = \"drop\"\n";
    let err = parse([(Path::new("a.toml"), bad_syntax), (Path::new("b.toml"), bad_name)])
        .expect_err("both files are invalid")
        .to_string();
    assert!(err.starts_with("a.toml:1:8: unclosed array table"), "{err}");
    assert!(err.contains("\nb.toml:2:8: invalid rule name \"x y\""), "{err}");
    assert!(err.ends_with("\n2 errors"), "{err}");
}

#[test]
fn location_counts_characters_not_bytes() {
    let text = "# café\n[[rule]]\nname = \"é\"\naction = \"drop\"\n";
    assert_eq!(
        error(text),
        "policies/web.toml:3:8: invalid rule name \"é\": expected 1 to 64 letters, digits, '-', \
         '_' or '.'\n  |\n3 | name = \"é\"\n  |        ^^^\n1 error"
    );
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().expect("a valid network")
}

#[test]
fn parses_every_field_and_the_defaults() {
    let policy = valid(
        r#"
interfaces = ["eth0", "eth1"]

[defaults]
action = "drop"
mode = "monitor"
fragments = "pass"
unparsable = "pass"

[[rule]]
name = "web"
action = "pass"
mode = "enforce"
protocol = "tcp"
src = ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]
dst = "203.0.113.0/24"
src_ports = "1024-65535"
dst_ports = [80, 443]

[[rule]]
name = "ping"
action = "pass"
protocol = "icmp"
icmp_types = [8, 0]

[[rule]]
name = "later"
action = "drop"
"#,
    );
    assert_eq!(policy.interfaces, vec!["eth0", "eth1"]);
    assert_eq!(
        policy.defaults,
        Defaults {
            action: Action::Drop,
            mode: Mode::Monitor,
            fragments: Fragments::Pass,
            unparsable: Action::Pass,
            i_know_this_blocks_ssh: false
        }
    );
    let web = &policy.rules[0];
    assert_eq!(web.mode, Mode::Enforce, "a rule's own mode wins over the default");
    assert_eq!(
        web.src,
        Some(vec![net("192.0.2.0/24"), net("2001:db8::/32"), net("198.51.100.7/32")])
    );
    assert_eq!(web.dst, Some(vec![net("203.0.113.0/24")]));
    assert_eq!(web.src_ports, Some(vec![PortRange { low: 1024, high: 65535 }]));
    assert_eq!(policy.rules[1].icmp_types, Some(vec![8, 0]));
    assert_eq!(policy.rules[2].mode, Mode::Monitor, "a rule without a mode takes the default");
    assert!(policy.warnings.is_empty(), "{:?}", policy.warnings);
}

#[test]
fn host_bits_in_a_network() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\nsrc = [\"192.0.2.1/24\"]\n"),
        "policies/web.toml:4:8: network \"192.0.2.1/24\" has host bits set: did you mean \
         \"192.0.2.0/24\"?\n  |\n4 | src = [\"192.0.2.1/24\"]\n  |        ^^^^^^^^^^^^^^\n1 error"
    );
}

#[test]
fn not_a_network() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\ndst = \"192.0.2.0/33\"\n"),
        "policies/web.toml:4:7: invalid network \"192.0.2.0/33\": expected an IPv4 or IPv6 \
         address or CIDR network such as \"192.0.2.0/24\"\n  |\n4 | dst = \"192.0.2.0/33\"\n  \
         |       ^^^^^^^^^^^^^^\n1 error"
    );
}

#[test]
fn ports_with_icmp() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\nprotocol = \"icmp\"\ndst_ports = 22\n"),
        "policies/web.toml:5:13: dst_ports cannot be used with protocol \"icmp\": ICMP has no ports \
         (match ICMP messages with icmp_types)\n  |\n5 | dst_ports = 22\n  |             ^^\n1 error"
    );
}

#[test]
fn icmp_types_without_icmp() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\nprotocol = \"tcp\"\nicmp_types = 8\n"),
        "policies/web.toml:5:14: icmp_types needs protocol = \"icmp\" or \"icmpv6\", not \"tcp\"\n  \
         |\n5 | icmp_types = 8\n  |              ^\n1 error"
    );
}

#[test]
fn icmp_type_out_of_range() {
    assert_eq!(
        error(
            "[[rule]]\nname = \"a\"\naction = \"drop\"\nprotocol = \"icmp\"\nicmp_types = [256]\n"
        ),
        "policies/web.toml:5:15: invalid ICMP type 256: expected a number from 0 to 255\n  \
         |\n5 | icmp_types = [256]\n  |               ^^^\n1 error"
    );
}

#[test]
fn address_families_that_cannot_meet() {
    assert_eq!(
        error(
            "[[rule]]\nname = \"a\"\naction = \"drop\"\nprotocol = \"icmp\"\nsrc = \"2001:db8::/32\"\n"
        ),
        "policies/web.toml:4:12: rule \"a\" can never match: protocol \"icmp\" is IPv4 only but src \
         lists only IPv6 networks\n  |\n4 | protocol = \"icmp\"\n  |            ^^^^^^\n1 error"
    );
    assert_eq!(
        error(
            "[[rule]]\nname = \"b\"\naction = \"drop\"\nsrc = \"192.0.2.0/24\"\ndst = \"2001:db8::1\"\n"
        ),
        "policies/web.toml:2:8: rule \"b\" can never match: src lists only IPv4 networks but dst \
         lists only IPv6 networks\n  |\n2 | name = \"b\"\n  |        ^^^\n1 error"
    );
}

#[test]
fn defaults_set_twice_across_files() {
    let a = "[defaults]\naction = \"pass\"\n";
    let b = "[[rule]]\nname = \"x\"\naction = \"drop\"\n\n[defaults]\naction = \"drop\"\n";
    let err = parse([(Path::new("10-a.toml"), a), (Path::new("20-b.toml"), b)])
        .expect_err("two [defaults] must be rejected")
        .to_string();
    assert_eq!(
        err,
        "20-b.toml:5:1: [defaults] is already set at 10-a.toml:1:1: a policy sets it in one file \
         only\n  |\n5 | [defaults]\n  | ^^^^^^^^^^\n1 error"
    );
}

#[test]
fn too_many_rules_names_the_limit() {
    // Two ports a rule: the rules cut the port space into more classes than a policy may
    // have, and the count of classes must stop at the rule limit (it panicked past it).
    let text: String = (0..=policy_common::MAX_RULES)
        .map(|i| {
            let (a, b) = (3 * i, 3 * i + 20_000);
            format!("[[rule]]\nname = \"r{i}\"\naction = \"drop\"\ndst_ports = [{a}, {b}]\n")
        })
        .collect();
    let err = error(&text);
    assert!(
        err.starts_with(
            "policies/web.toml:16386:8: too many rules: the policy has 4097, the limit is 4096; \
             this is the first rule past the limit\n"
        ),
        "{err}"
    );
}

#[test]
fn shadowed_rules_are_warnings_naming_both() {
    let policy = valid(
        r#"
[[rule]]
name = "all-tcp"
action = "drop"
protocol = "tcp"

[[rule]]
name = "ssh"
action = "pass"
protocol = "tcp"
dst_ports = 22

[[rule]]
name = "lab-net"
action = "drop"
src = "198.51.100.0/24"

[[rule]]
name = "lab-host-udp"
action = "pass"
protocol = "udp"
src = "198.51.100.9"
dst_ports = ["1-1000", "1001-2000"]

[[rule]]
name = "not-covered"
action = "pass"
protocol = "udp"
src = "198.51.101.9"
"#,
    );
    let warnings: Vec<String> = policy.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        vec![
            "policies/web.toml:8:8: rule \"ssh\" is shadowed by rule \"all-tcp\" at \
             policies/web.toml:3:8 and can never match\n",
            "policies/web.toml:19:8: rule \"lab-host-udp\" is shadowed by rule \"lab-net\" at \
             policies/web.toml:14:8 and can never match\n",
        ]
    );
}

#[test]
fn a_port_range_split_in_two_still_covers() {
    let policy = valid(
        "[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_ports = [\"1-100\", \"101-200\"]\n\
         [[rule]]\nname = \"b\"\naction = \"drop\"\ndst_ports = \"50-150\"\n\
         [[rule]]\nname = \"c\"\naction = \"drop\"\ndst_ports = \"150-201\"\n",
    );
    let shadowed: Vec<&str> =
        policy.warnings.iter().map(|w| w.message.split('"').nth(1).unwrap_or("")).collect();
    assert_eq!(shadowed, vec!["b"]);
}

#[test]
fn port_classes_pack_four_per_word() {
    let policy = valid("[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_ports = [\"2-5\"]\n");
    let ruleset = compile(&policy);
    // Classes: 0-1 → no rule, 2-5 → rule 0, 6-65535 → no rule again (the same class).
    assert_eq!(ruleset.dport.bitmaps.len(), 2);
    let words = ruleset.dport.class_words();
    assert_eq!(words.len(), 16384);
    assert_eq!(words[0], 1 << 32 | 1 << 48, "ports 0,1 → class 0; 2,3 → class 1");
    assert_eq!(words[1], 1 | 1 << 16, "ports 4,5 → class 1; 6,7 → class 0");
    assert!(words[2..].iter().all(|w| *w == 0));
}

#[test]
fn a_nested_prefix_carries_the_rules_of_its_covering_prefixes() {
    let policy = valid(
        "[[rule]]\nname = \"wide\"\naction = \"drop\"\nsrc = \"198.18.0.0/15\"\n\
         [[rule]]\nname = \"narrow\"\naction = \"pass\"\nsrc = \"198.18.1.0/24\"\n\
         [[rule]]\nname = \"any\"\naction = \"pass\"\n",
    );
    let ruleset = compile(&policy);
    let entry = |n: &str| {
        let n: ipnet::Ipv4Net = n.parse().expect("net");
        ruleset.src_v4.iter().find(|(net, _)| **net == n).map(|(_, b)| *b).expect("entry")
    };
    let bits = |b: RuleBitmap| (0..3).filter(|i| b.contains(*i)).collect::<Vec<_>>();
    assert_eq!(bits(entry("0.0.0.0/0")), vec![2]);
    assert_eq!(bits(entry("198.18.0.0/15")), vec![0, 2]);
    assert_eq!(bits(entry("198.18.1.0/24")), vec![0, 1, 2]);
    let first = ruleset.src_v6.iter().next().map(|(_, b)| *b).expect("the /0");
    assert!(ruleset.src_v6.len() == 1 && bits(first) == vec![2]);
    // Few prefixes: IPv4 source addresses are looked up in the address tables.
    assert_eq!(
        ruleset.config.fields,
        field::SRC | field::SRC_V4_TABLE | field::SRC_V6_DEFAULT_ONLY
    );
    let table = ruleset.v4_tables[0].as_ref().expect("a source table");
    assert_eq!(bits(*table.lookup("198.18.1.7".parse().expect("addr"))), vec![0, 1, 2]);
    assert_eq!(bits(*table.lookup("198.19.1.7".parse().expect("addr"))), vec![0, 2]);
    assert_eq!(bits(*table.lookup("198.20.1.7".parse().expect("addr"))), vec![2]);
    assert!(ruleset.v4_tables[1].is_none(), "no destination rules");
    assert_eq!(ruleset.config.words, 1);
}

#[test]
fn reference_semantics_of_defaults_monitor_and_neighbour_discovery() {
    let policy = valid(
        "[defaults]\naction = \"drop\"\n[[rule]]\nname = \"watch\"\naction = \"drop\"\n\
         mode = \"monitor\"\nprotocol = \"udp\"\n",
    );
    let v6 = |l4| {
        reference::Parsed::Ip(reference::IpPacket {
            src: "fd00::1".parse().expect("addr"),
            dst: "fd00::2".parse().expect("addr"),
            l4,
        })
    };
    let verdict = |p| reference::classify(&policy, &p).verdict;
    assert_eq!(verdict(v6(reference::L4::Udp { src_port: 1, dst_port: 2 })), Verdict::MonitorRule);
    assert_eq!(verdict(v6(reference::L4::Icmpv6 { icmp_type: 135 })), Verdict::PassNeighbour);
    assert_eq!(verdict(v6(reference::L4::Icmpv6 { icmp_type: 128 })), Verdict::DropDefault);
    assert_eq!(verdict(reference::Parsed::NotIp), Verdict::PassNotIp);
}

#[test]
fn unparsable_packets_are_dropped_unless_the_policy_says_pass() {
    let unparsable = reference::Parsed::Unparsable;
    for (text, action, verdict) in [
        ("", Action::Drop, Verdict::DropUnparsable),
        (
            "[defaults]\naction = \"pass\"\nmode = \"monitor\"\n",
            Action::Drop,
            Verdict::DropUnparsable,
        ),
        ("[defaults]\nunparsable = \"pass\"\n", Action::Pass, Verdict::PassUnparsable),
        ("[defaults]\nunparsable = \"drop\"\n", Action::Drop, Verdict::DropUnparsable),
    ] {
        let kernel = match action {
            Action::Pass => policy_common::Action::Pass,
            Action::Drop => policy_common::Action::Drop,
            Action::Limit => unreachable!("not a default"),
        };
        let policy = valid(text);
        assert_eq!(policy.defaults.unparsable, action, "{text:?}");
        assert_eq!(reference::classify(&policy, &unparsable).verdict, verdict, "{text:?}");
        let config = compile(&policy).config;
        assert_eq!(config.unparsable, kernel as u8, "{text:?}: compiled for the kernel");
    }
}

const SETS: &str = r#"
[[set]]
name = "blocklist"
files = ["sets/drop.txt"]
max_entries = 2_000_000
timeout = "10m"

[[set]]
name = "admins"

[[rule]]
name = "admins-ssh"
action = "pass"
protocol = "tcp"
dst_ports = [22]
src = ["@admins"]

[[rule]]
name = "drop-blocklist"
action = "drop"
src = ["@blocklist", "198.51.100.0/24", "@blocklist"]
"#;

#[test]
fn sets_are_defined_and_named_in_address_fields() {
    let policy = valid(SETS);
    let names: Vec<_> = policy.sets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["blocklist", "admins"]);
    let blocklist = &policy.sets[0];
    assert_eq!(blocklist.files, [Path::new("policies/sets/drop.txt")]);
    assert_eq!(blocklist.max_entries, 2_000_000);
    assert_eq!(blocklist.timeout, std::time::Duration::from_secs(600));
    assert_eq!(blocklist.id, super::set_id("blocklist"));
    assert_eq!(policy.sets[1].max_entries, super::DEFAULT_SET_ENTRIES);
    assert_eq!(policy.sets[1].timeout, std::time::Duration::ZERO);
    let admins = &policy.rules[0];
    assert_eq!(admins.src, Some(vec![]), "a field naming sets only constrains the address");
    assert_eq!(admins.src_sets, ["admins"]);
    let drop = &policy.rules[1];
    assert_eq!(drop.src, Some(vec!["198.51.100.0/24".parse().expect("valid")]));
    assert_eq!(drop.src_sets, ["blocklist"], "named once however often it is written");
    assert!(drop.dst_sets.is_empty());
}

#[test]
fn a_rule_naming_a_set_keeps_its_counters_only_while_the_sets_are_the_same() {
    let policy = valid(SETS);
    let other = valid(&SETS.replace(r#"src = ["@admins"]"#, r#"src = ["@blocklist"]"#));
    assert_ne!(policy.rules[0].identity(), other.rules[0].identity());
    assert_eq!(policy.rules[1].identity(), other.rules[1].identity());
}

#[test]
fn set_mistakes_are_located() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\ndst = [\"@nope\"]\n"),
        "policies/web.toml:4:7: rule \"a\" names set \"@nope\", which the policy does not define: \
         add a [[set]] with name = \"nope\"\n1 error"
    );
    assert_eq!(
        error("[[set]]\nname = \"a\"\ntimeout = \"soon\"\n"),
        "policies/web.toml:3:11: invalid duration \"soon\": expected number at 0; expected a \
         number and a unit such as \"90s\", \"10m\", \"1h 30m\" or \"7d\", or \"0\" for none\n  |\n3 \
         | timeout = \"soon\"\n  |           ^^^^^^\n1 error"
    );
    assert_eq!(
        error("[[set]]\nname = \"a\"\nmax_entries = 0\n"),
        "policies/web.toml:3:15: invalid max_entries 0: expected a number from 1 to 4194304\n  \
         |\n3 | max_entries = 0\n  |               ^\n1 error"
    );
    assert!(error("[[set]]\nname = \"a\"\n[[set]]\nname = \"a\"\n").starts_with(
        "policies/web.toml:4:8: duplicate set name \"a\": first defined at \
                          policies/web.toml:2:8"
    ),);
    assert!(error("[[set]]\nname = \"a\"\nfile = \"x\"\n").contains("unknown field `file`"));
    let five: String = (0..5)
        .map(|i| format!("[[set]]\nname = \"s{i}\"\n[[rule]]\nname = \"r{i}\"\naction = \"drop\"\nsrc = \"@s{i}\"\n"))
        .collect();
    let err = error(&five);
    assert!(
        err.contains("rule \"r4\" names one more")
            && err.contains("at most 4 different sets in src"),
        "{err}"
    );
}

#[test]
fn a_field_naming_a_set_may_hold_either_ip_version() {
    // Without the set, "src lists only IPv4 networks but protocol icmpv6 is IPv6 only".
    valid(
        "[[set]]\nname = \"s\"\n[[rule]]\nname = \"a\"\naction = \"drop\"\nprotocol = \
         \"icmpv6\"\nsrc = [\"@s\", \"198.18.0.0/15\"]\n",
    );
}

#[test]
fn a_rule_naming_sets_shadows_only_rules_naming_the_same_sets() {
    let text = "[[set]]\nname = \"a\"\n[[set]]\nname = \"b\"\n\
        [[rule]]\nname = \"first\"\naction = \"drop\"\nsrc = \"@a\"\n\
        [[rule]]\nname = \"other-set\"\naction = \"drop\"\nsrc = \"@b\"\n\
        [[rule]]\nname = \"same-set\"\naction = \"drop\"\nsrc = \"@a\"\nprotocol = \"udp\"\n";
    let warnings: Vec<_> = valid(text).warnings.into_iter().map(|w| w.message).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("rule \"same-set\" is shadowed by rule \"first\""));
}

#[test]
fn set_files_take_plain_lists_netsets_and_spamhaus_drop() {
    let text = "# FireHOL style\n198.18.0.0/24\n\n  198.18.1.7  \n198.18.2.0/24 ; SBL123\n\
                fd00::/64 # v6\n198.18.0.0/24\n";
    let nets = super::parse_set_file(Path::new("drop.txt"), text).expect("valid");
    let expected: Vec<ipnet::IpNet> =
        ["198.18.0.0/24", "198.18.1.7/32", "198.18.2.0/24", "fd00::/64"]
            .iter()
            .map(|n| n.parse().expect("valid"))
            .collect();
    assert_eq!(nets, expected);
    let err =
        super::parse_set_file(Path::new("drop.txt"), "198.18.0.0/24\n  198.18.0.1/24 ; x\nnope\n")
            .expect_err("invalid");
    let rendered: Vec<String> = err.iter().map(ToString::to_string).collect();
    assert_eq!(rendered.len(), 2);
    assert!(
        rendered[0].starts_with(
            "drop.txt:2:3: network \"198.18.0.1/24\" has host bits set: did you mean \"198.18.0.0/24\"?"
        ),
        "{rendered:?}"
    );
    assert!(rendered[1].starts_with("drop.txt:3:1: invalid network \"nope\""), "{rendered:?}");
}

#[test]
fn the_compiled_ruleset_admits_set_members_through_the_set_bitmaps() {
    let mut policy = valid(SETS);
    policy.sets[0].entries =
        vec!["198.18.0.0/16".parse().expect("valid"), "fd00::/64".parse().expect("valid")];
    policy.sets[1].entries = vec!["198.18.5.5/32".parse().expect("valid")];
    let ruleset = compile(&policy);
    assert_eq!((ruleset.config.src_sets, ruleset.config.dst_sets), (2, 0));
    let packet = |src: &str, port| reference::IpPacket {
        src: src.parse().expect("valid"),
        dst: "198.19.0.1".parse().expect("valid"),
        l4: reference::L4::Tcp {
            src_port: 1000,
            dst_port: port,
            flags: policy_common::tcp_flags::SYN,
        },
    };
    for (src, port, rule) in [
        ("198.18.5.5", 22, Some(0)),
        ("198.18.5.5", 80, Some(1)),
        ("198.18.9.9", 22, Some(1)),
        ("198.51.100.9", 22, Some(1)),
        ("198.19.0.9", 22, None),
        ("fd00::9", 22, Some(1)),
        ("fd00:1::9", 22, None),
    ] {
        let p = packet(src, port);
        assert_eq!(ruleset.first_match(&p), rule, "{src} port {port}");
        let outcome = reference::classify(&policy, &reference::Parsed::Ip(p));
        assert_eq!(outcome.rule, rule, "reference: {src} port {port}");
    }
}

#[test]
fn tcp_flags_read_as_set_clear_and_exact_and_print_back() {
    use policy_common::tcp_flags::{ACK, FIN, PSH, RST, SYN, URG};
    let cases: [(&str, u8, u8, &str); 6] = [
        ("syn,!ack", SYN | ACK, SYN, "syn,!ack"),
        (" SYN , ! ack ", SYN | ACK, SYN, "syn,!ack"),
        ("=syn", u8::MAX, SYN, "=syn"),
        ("=", u8::MAX, 0, "="),
        ("fin,psh,urg", FIN | PSH | URG, FIN | PSH | URG, "fin,psh,urg"),
        ("!rst,!syn,!rst", RST | SYN, 0, "!syn,!rst"),
    ];
    for (text, mask, value, shown) in cases {
        let flags = TcpFlags::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!((flags.mask, flags.value), (mask, value), "{text:?}");
        assert_eq!(flags.to_string(), shown, "{text:?}");
        assert_eq!(TcpFlags::parse(shown), Ok(flags), "{shown:?} reads back");
    }
    let syn_not_ack = TcpFlags::parse("syn,!ack").expect("valid");
    assert!(syn_not_ack.admits(SYN) && syn_not_ack.admits(SYN | PSH));
    assert!(!syn_not_ack.admits(SYN | ACK) && !syn_not_ack.admits(ACK) && !syn_not_ack.admits(0));
    let exact = TcpFlags::parse("=syn").expect("valid");
    assert!(exact.admits(SYN) && !exact.admits(SYN | PSH));
    for bad in ["", "syn,", "syn,,ack", "!", "=!syn", "syn,!syn", "xmas"] {
        assert!(TcpFlags::parse(bad).is_err(), "{bad:?} was taken");
    }
}

#[test]
fn a_rule_with_flags_is_shadowed_only_by_one_admitting_all_its_flags() {
    let text = "[[rule]]\nname = \"syn\"\naction = \"drop\"\nprotocol = \"tcp\"\ntcp_flags = \"syn\"\n\
        [[rule]]\nname = \"syn-not-ack\"\naction = \"drop\"\nprotocol = \"tcp\"\n\
        tcp_flags = \"syn,!ack\"\n\
        [[rule]]\nname = \"ack\"\naction = \"drop\"\nprotocol = \"tcp\"\ntcp_flags = \"ack\"\n\
        [[rule]]\nname = \"any-tcp\"\naction = \"pass\"\nprotocol = \"tcp\"\n";
    let warnings: Vec<_> = valid(text).warnings.into_iter().map(|w| w.message).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("rule \"syn-not-ack\" is shadowed by rule \"syn\""));
    let rule = |name: &str| {
        let policy = valid(text);
        policy.rules.into_iter().find(|r| r.name == name).expect("the rule")
    };
    // Flags change what a rule counts: its identity, and so its counters.
    let mut without = rule("syn");
    without.tcp_flags = None;
    assert_ne!(rule("syn").identity(), without.identity());
}

/// A field with IPv6 prefixes and no IPv4 one reads the IPv4 `/0`'s one class (no IPv4
/// tables), and the other way round.
#[test]
fn a_field_of_one_family_reads_one_class_of_the_other() {
    let v6_only = "[[rule]]\nname = \"a\"\naction = \"drop\"\nsrc = [\"fd00:1::/48\"]\n";
    let ruleset = compile(&valid(v6_only));
    assert_eq!(
        ruleset.config.fields,
        field::SRC | field::SRC_V4_DEFAULT_ONLY | field::SRC_V6_TABLE
    );
    let table = ruleset.v4_tables[0].as_ref().expect("the /0's class");
    assert!(!table.walked());
    assert_eq!(table.classes.len(), 1);
    for addr in ["198.18.0.1", "0.0.0.0", "255.255.255.255"] {
        let rules = table.lookup(addr.parse().expect("addr"));
        assert!(!rules.contains(0), "{addr}: no IPv4 address is in an IPv6 network");
    }
    let v4_only = "[[rule]]\nname = \"a\"\naction = \"drop\"\ndst = [\"198.18.0.0/24\"]\n";
    let ruleset = compile(&valid(v4_only));
    assert_eq!(
        ruleset.config.fields,
        field::DST | field::DST_V4_TABLE | field::DST_V6_DEFAULT_ONLY
    );
    // Without address tables (the tries), the one class stays: it has no walk.
    let tries = ruleset.clone().without_address_tables();
    assert_eq!(tries.config.fields, field::DST | field::DST_V6_DEFAULT_ONLY);
    let ruleset = compile(&valid(v6_only)).without_address_tables();
    assert_eq!(ruleset.config.fields, field::SRC | field::SRC_V4_DEFAULT_ONLY);
}

/// IPv6 prefixes up to /64 go to the address tables; a field with a longer one stays
/// in the trie, whose walk costs less than the tables' byte by byte past /64.
#[test]
fn ipv6_prefixes_longer_than_a_64_stay_in_the_trie() {
    let policy = |src: &str| {
        compile(&valid(&format!("[[rule]]\nname = \"a\"\naction = \"drop\"\nsrc = [{src}]\n")))
    };
    let tables = policy("\"fd00:1:2:3::/64\", \"fd00:9::/48\"");
    assert_ne!(tables.config.fields & field::SRC_V6_TABLE, 0);
    let trie = policy("\"fd00:1:2:3::/64\", \"fd00:9::7\"");
    assert_eq!(trie.config.fields & field::SRC_V6_TABLE, 0);
    assert!(trie.v6_tables[0].is_none());
    assert_eq!(trie.src_v6.len(), 3, "the /0, the /64 and the host in the trie");
}
