//! Policy parsing, validation and compilation, with every message checked as rendered.

use std::path::Path;

use policy_common::PortAction;

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
        "policies/web.toml:4:12: unknown variant `sctp`, expected one of `tcp`, `udp`, `any`\n  \
         |\n4 | protocol = \"sctp\"\n  |            ^^^^^^\n1 error"
    );
}

#[test]
fn unknown_action() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"reject\"\n"),
        "policies/web.toml:3:10: unknown variant `reject`, expected `pass` or `drop`\n  \
         |\n3 | action = \"reject\"\n  |          ^^^^^^^^\n1 error"
    );
}

#[test]
fn unknown_field() {
    assert_eq!(
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_port = [1]\n"),
        "policies/web.toml:4:1: unknown field `dst_port`, expected one of `name`, `action`, \
         `protocol`, `dst_ports`\n  |\n4 | dst_port = [1]\n  | ^^^^^^^^\n1 error"
    );
}

#[test]
fn unknown_top_level_table() {
    assert_eq!(
        error("[rules]\nname = \"a\"\n"),
        "policies/web.toml:1:2: unknown field `rules`, expected `rule`\n  |\n1 | [rules]\n  |  \
         ^^^^^\n1 error"
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
        "policies/web.toml:4:13: dst_ports is empty, so the rule could never match: list ports, or \
         leave dst_ports out to match every port\n  |\n4 | dst_ports = []\n  |             ^^\n1 error"
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

#[test]
fn compile_first_match_wins() {
    let policy = valid(
        r#"
[[rule]]
name = "allow-dns"
action = "pass"
protocol = "udp"
dst_ports = [53]

[[rule]]
name = "drop-low"
action = "drop"
protocol = "any"
dst_ports = ["1-1023"]
"#,
    );
    let ruleset = compile(&policy);
    assert_eq!(ruleset.udp_dst.get(53), PortAction::Pass, "earlier pass rule wins for udp/53");
    assert_eq!(ruleset.tcp_dst.get(53), PortAction::Drop, "the pass rule is udp only");
    assert_eq!(ruleset.udp_dst.get(1), PortAction::Drop);
    assert_eq!(ruleset.tcp_dst.get(1023), PortAction::Drop);
    assert_eq!(ruleset.tcp_dst.get(0), PortAction::NoRule);
    assert_eq!(ruleset.tcp_dst.get(1024), PortAction::NoRule);
    assert_eq!(ruleset.udp_dst.entries().count(), 1023);
    assert_eq!(ruleset.tcp_dst.entries().count(), 1023);
}

#[test]
fn compile_rule_without_ports_covers_every_port_of_its_protocol() {
    let policy = valid("[[rule]]\nname = \"no-udp\"\naction = \"drop\"\nprotocol = \"udp\"\n");
    let ruleset = compile(&policy);
    assert_eq!(ruleset.udp_dst.entries().count(), 65_536);
    assert!(ruleset.udp_dst.entries().all(|(_, a)| a == PortAction::Drop));
    assert_eq!(ruleset.tcp_dst.entries().count(), 0);
}

#[test]
fn compile_is_deterministic() {
    let policy = valid(TELNET);
    assert_eq!(compile(&policy), compile(&policy));
    let entries: Vec<_> = compile(&policy).tcp_dst.entries().collect();
    assert_eq!(entries, vec![(23, PortAction::Drop), (2323, PortAction::Drop)]);
}
