//! Differential tests: random policies × random packets through the XDP program in the
//! kernel (BPF_PROG_TEST_RUN) and through the pure-Rust reference
//! (`policy::reference::{parse_packet, classify}`). Every XDP action, every verdict, every
//! winning rule and every counter must agree.
//!
//! Policies are written as TOML text and go through `policy::parse` and `policy::compile`
//! like a policy file. Packets come from the frame generator in `support/random.rs`: up to
//! nine VLAN tags (one past the parser's bound), IPv4 with options and fragments, IPv6
//! with chains of up to 34 extension headers, TCP, UDP, ICMP, ICMPv6 and other
//! protocols, non-IP EtherTypes, Ethernet trailers past the IP length, and cuts anywhere
//! from 14 bytes on, of the frame or by the IP length field. Half of the packets are aimed at one rule of the
//! policy (an address inside its networks, a port at the edge of its ranges), so that
//! rules deep in the list win too.
//!
//! The generator also says what the parsing contract makes of each frame it builds,
//! which checks `reference::parse_packet` on its own, without root
//! (`reference_parser_reads_what_the_generator_built`).
//!
//! Runs are seeded and reproducible:
//!
//! | variable                   | default  | meaning                                             |
//! |----------------------------|----------|-----------------------------------------------------|
//! | `XDP_POLICY_DIFF_SEED`     | `0x5eed` | seed, decimal or `0x` hex                           |
//! | `XDP_POLICY_DIFF_POLICIES` | 100      | random policies, each on a freshly loaded program   |
//! | `XDP_POLICY_DIFF_PACKETS`  | 1000     | packets per policy (half that in the reload test)   |
//! | `XDP_POLICY_DIFF_RELOADS`  | 50       | policies applied in turn to one loaded program      |
//! | `XDP_POLICY_DIFF_ONLY`     | unset    | run only this policy index                          |
//!
//! Policy `i` and its packets depend only on the seed and `i`, so a failure report's seed
//! with `XDP_POLICY_DIFF_ONLY=i` reruns exactly the failing policy (in the reload test,
//! on a fresh program: a disagreement that needs the policy before it needs the whole
//! sequence). The longer mode for benches is the same test with larger numbers:
//!
//! ```text
//! XDP_POLICY_DIFF_POLICIES=1000 XDP_POLICY_DIFF_PACKETS=10000 \
//!     cargo xtask test -- --test differential -- --nocapture
//! ```
//!
//! On a disagreement the test shrinks the first failing case on fresh programs (fewer
//! policies applied before it, fewer rules, fields and list items, a simpler frame) and
//! prints it after the first few cases as found.

mod support;

use std::{fmt::Write as _, time::Instant};

use policy_common::{
    Counter, MAX_SOURCES, Verdict,
    xdp_action::{XDP_DROP, XDP_PASS},
};
use policy_daemon::{
    dataplane::{Dataplane, error_chain, migrate::Sizes},
    policy::{
        self, Policy,
        reference::{self, IpPacket, L4, Outcome, Parsed},
    },
};
use support::random::{
    ETH_HLEN, FrameSpec, PolicySpec, Rng, random_frame, random_policy, random_policy_both_paths,
};

// ---------------------------------------------------------------------------------------
// Configuration and randomness

struct Config {
    seed: u64,
    policies: usize,
    packets: usize,
    reloads: usize,
    only: Option<usize>,
}

impl Config {
    fn from_env() -> Self {
        Self {
            seed: env_number("XDP_POLICY_DIFF_SEED").unwrap_or(0x5eed),
            policies: env_number("XDP_POLICY_DIFF_POLICIES").map_or(100, |n| n as usize),
            packets: env_number("XDP_POLICY_DIFF_PACKETS").map_or(1000, |n| n as usize),
            reloads: env_number("XDP_POLICY_DIFF_RELOADS").map_or(50, |n| n as usize),
            only: env_number("XDP_POLICY_DIFF_ONLY").map(|n| n as usize),
        }
    }

    fn policy_indices(&self, count: usize) -> Vec<usize> {
        match self.only {
            Some(index) => vec![index],
            None => (0..count).collect(),
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value:?} is not a decimal or 0x-hex number")))
}

/// Independent random streams of one seed, so the tests do not shift each other.
const STREAM_KERNEL: u64 = 1;
const STREAM_RELOADS: u64 = 2;
const STREAM_SCRIBBLE: u64 = 5;
/// Policies whose maps are scribbled over, audited and repaired.
const SCRIBBLED_POLICIES: usize = 8;
const STREAM_PARSER: u64 = 3;
const STREAM_COMPILE: u64 = 4;

// ---------------------------------------------------------------------------------------
// The reference parser on its own (no root)

#[test]
fn reference_parser_reads_what_the_generator_built() {
    let seed = Config::from_env().seed;
    let (mut checked, mut truncated, mut cut) = (0, 0, 0);
    let mut kinds = [0usize; 4];
    let mut failures = Vec::new();
    for index in 0..20 {
        let mut rng = Rng::for_policy(seed, STREAM_PARSER, index);
        let Ok(policy) = random_policy(&mut rng, index).parse() else { continue };
        for n in 0..1000 {
            let frame = random_frame(&mut rng, &policy);
            let bytes = frame.build();
            let expected = frame.expected();
            let parsed = reference::parse_packet(&bytes);
            checked += 1;
            truncated += usize::from(frame.truncate.is_some());
            cut += usize::from(frame.ip_len.is_some());
            kinds[match expected {
                Parsed::NotIp => 0,
                Parsed::Unparsable => 1,
                Parsed::Ip(IpPacket { l4: L4::Fragment { .. }, .. }) => 2,
                Parsed::Ip(_) => 3,
            }] += 1;
            if parsed != expected {
                failures.push(format!(
                    "seed {seed:#x} policy {index} frame {n}: expected {expected:?}, the \
                     reference parser made {parsed:?} of\n  {frame:?}\n  {}",
                    hex(&bytes)
                ));
            }
        }
    }
    eprintln!(
        "reference parser: {checked} frames ({truncated} truncated, {cut} cut by their IP \
         length): {} not IP, {} unparsable, \
         {} non-first fragments, {} classified, {} disagreements",
        kinds[0],
        kinds[1],
        kinds[2],
        kinds[3],
        failures.len()
    );
    assert!(kinds.iter().all(|k| *k >= checked / 50), "the generator covers every kind: {kinds:?}");
    assert!(
        failures.is_empty(),
        "{} frames parsed differently from what was built; the first:\n{}",
        failures.len(),
        failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn generated_policies_are_valid() {
    let seed = Config::from_env().seed;
    let mut invalid = Vec::new();
    for index in 0..200 {
        let spec = random_policy(&mut Rng::for_policy(seed, STREAM_KERNEL, index), index);
        if let Err(e) = spec.parse() {
            invalid.push(format!("policy {index}: {e}"));
        }
    }
    assert!(invalid.is_empty(), "generated policies must be valid:\n{}", invalid.join("\n"));
}

// ---------------------------------------------------------------------------------------
// The compiled maps on their own (no root)

/// Compiled maps, read the way the kernel reads them, agree with the reference
/// classifier on the generated policies and packets.
#[test]
fn compiled_maps_agree_with_the_reference() {
    let seed = Config::from_env().seed;
    let (mut checked, mut table_checked) = (0, 0);
    for index in 0..100 {
        let mut rng = Rng::for_policy(seed, STREAM_COMPILE, index);
        let spec = random_policy_both_paths(&mut rng, index);
        let Ok(policy) = spec.parse() else { continue };
        let ruleset = compile(index, &policy);
        for n in 0..500 {
            let frame = random_frame(&mut rng, &policy);
            let Parsed::Ip(packet) = reference::parse_packet(&frame.build()) else { continue };
            let expected = reference::classify(&policy, &Parsed::Ip(packet)).rule;
            let got = ruleset.first_match(&packet);
            assert_eq!(
                got,
                expected,
                "seed {seed:#x} policy {index} packet {n} {packet:?}:\n{}",
                spec.toml()
            );
            if let Some(decided) = port_table_rule(&ruleset, &packet) {
                assert_eq!(
                    decided,
                    expected,
                    "port table: seed {seed:#x} policy {index} packet {n} {packet:?}:\n{}",
                    spec.toml()
                );
                table_checked += 1;
            }
            checked += 1;
        }
    }
    eprintln!(
        "compiled maps: {checked} packets agree with the reference, {table_checked} of them \
         also through a port table"
    );
    assert!(checked > 20_000, "too few IP packets were generated: {checked}");
    // Every third policy is port-only (`random_policy_both_paths`): its port table is
    // checked too, so this must not quietly check nothing.
    assert!(table_checked > 5_000, "too few packets went through a port table: {table_checked}");
}

/// The rule the ruleset's port table (if it has one) gives a non-fragment.
fn port_table_rule(ruleset: &policy::Ruleset, packet: &IpPacket) -> Option<Option<usize>> {
    let port = match packet.l4 {
        L4::Tcp { dst_port, .. } | L4::Udp { dst_port, .. } => dst_port,
        L4::Icmp { icmp_type } | L4::Icmpv6 { icmp_type } => u16::from(icmp_type),
        L4::Other { .. } => 0,
        L4::Fragment { .. } => return None,
    };
    ruleset.port_table_rule(packet.l4.class(), port)
}

// ---------------------------------------------------------------------------------------
// The kernel against the reference

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn expected_action(verdict: Verdict) -> u32 {
    if verdict.drops() { XDP_DROP } else { XDP_PASS }
}

fn plus(c: Counter, packets: u64, bytes: u64) -> Counter {
    Counter { packets: c.packets + packets, bytes: c.bytes + bytes }
}

fn minus(a: Counter, b: Counter) -> Counter {
    Counter { packets: a.packets.wrapping_sub(b.packets), bytes: a.bytes.wrapping_sub(b.bytes) }
}

/// Every verdict counter and every rule counter of the ruleset in force.
#[derive(Clone)]
struct Counts {
    verdicts: Vec<Counter>,
    rules: Vec<Counter>,
}

impl Counts {
    fn zero(rules: usize) -> Self {
        Self {
            verdicts: vec![Counter::default(); Verdict::COUNT as usize],
            rules: vec![Counter::default(); rules],
        }
    }

    fn read(dataplane: &Dataplane) -> Self {
        let verdicts = dataplane.verdict_counts().unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        let rules = dataplane.rule_counts().unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        Self { verdicts: verdicts.0.to_vec(), rules: rules.into_iter().map(|(_, c)| c).collect() }
    }

    fn since(&self, start: &Self) -> Self {
        let diff =
            |a: &[Counter], b: &[Counter]| a.iter().zip(b).map(|(a, b)| minus(*a, *b)).collect();
        Self {
            verdicts: diff(&self.verdicts, &start.verdicts),
            rules: diff(&self.rules, &start.rules),
        }
    }

    /// One more packet of `len` bytes under `outcome`.
    fn count(&mut self, outcome: &Outcome, len: u64) {
        let v = outcome.verdict as usize;
        self.verdicts[v] = plus(self.verdicts[v], 1, len);
        if let Some(rule) = outcome.rule {
            self.rules[rule] = plus(self.rules[rule], 1, len);
        }
    }

    /// The non-zero counters, by name.
    fn describe(&self, policy: &Policy) -> String {
        let mut out = Vec::new();
        for verdict in Verdict::ALL {
            let c = self.verdicts[verdict as usize];
            if c != Counter::default() {
                out.push(format!("{} +{}/{}B", verdict.name(), c.packets, c.bytes));
            }
        }
        for (i, c) in self.rules.iter().enumerate() {
            if *c != Counter::default() {
                let name = policy.rules.get(i).map_or("?", |r| r.name.as_str());
                out.push(format!("rule {i} ({name}) +{}/{}B", c.packets, c.bytes));
            }
        }
        if out.is_empty() { "no counter".into() } else { out.join(", ") }
    }
}

fn describe_outcome(outcome: &Outcome, policy: &Policy) -> String {
    let rule = match outcome.rule {
        Some(i) => format!(" by rule {i} ({})", policy.rules[i].name),
        None => String::new(),
    };
    format!("{}{rule}, XDP action {}", outcome.verdict.name(), expected_action(outcome.verdict))
}

/// Policies applied before the one under test, kept for a failure report. A
/// disagreement that needs older state than this does not reproduce when shrinking.
const KEPT_HISTORY: usize = 4;

/// One disagreement, with what it takes to rerun it.
struct Mismatch {
    policy: usize,
    /// The packet, or `None` when the per-policy totals disagreed.
    packet: Option<(usize, FrameSpec)>,
    /// The policies applied before this one to the same program, oldest first.
    history: Vec<PolicySpec>,
    spec: PolicySpec,
    detail: String,
}

/// Totals over a whole run.
#[derive(Default)]
struct Run {
    policies: usize,
    skipped: Vec<String>,
    packets: usize,
    verdicts: [usize; Verdict::COUNT as usize],
    rule_wins: usize,
    wins_past_64: usize,
    deepest_win: usize,
    max_rules: usize,
    mismatches: usize,
    kept: Vec<Mismatch>,
}

const KEPT_MISMATCHES: usize = 10;

impl Run {
    /// Counts a disagreement; builds its report only for the first few.
    fn record(&mut self, mismatch: impl FnOnce() -> Mismatch) {
        self.mismatches += 1;
        if self.kept.len() < KEPT_MISMATCHES {
            self.kept.push(mismatch());
        }
    }

    fn summary(&self, name: &str, packets_per_policy: usize, started: Instant) -> String {
        let verdicts: Vec<String> = Verdict::ALL
            .iter()
            .map(|v| format!("{}={}", v.name(), self.verdicts[*v as usize]))
            .collect();
        format!(
            "{name}: {} policies ({} skipped as invalid) x {packets_per_policy} packets = {} \
             packets, {} mismatches in {:.1}s; verdicts: {}; rule wins {} ({} by rules past 64, \
             deepest rule {}, largest policy {} rules)",
            self.policies,
            self.skipped.len(),
            self.packets,
            self.mismatches,
            started.elapsed().as_secs_f64(),
            verdicts.join(", "),
            self.rule_wins,
            self.wins_past_64,
            self.deepest_win,
            self.max_rules,
        )
    }
}

/// Runs `frames` through the loaded program and through the reference: checks the XDP
/// action, the verdict counter and the rule counter of every packet, then every
/// counter's total (which catches increments the per-packet checks do not look at).
fn check_policy(
    dataplane: &mut Dataplane,
    index: usize,
    spec: &PolicySpec,
    history: &[PolicySpec],
    policy: &Policy,
    frames: &[FrameSpec],
    run: &mut Run,
) {
    let start = Counts::read(dataplane);
    // What the counters should read now, as far as the checks so far looked.
    let mut base = start.clone();
    let mut reference_totals = Counts::zero(policy.rules.len());
    let mut clean = true;
    let mismatch = |packet, detail| Mismatch {
        policy: index,
        packet,
        history: history[history.len().saturating_sub(KEPT_HISTORY)..].to_vec(),
        spec: spec.clone(),
        detail,
    };
    for (n, frame) in frames.iter().enumerate() {
        let bytes = frame.build();
        let len = bytes.len() as u64;
        let expected = reference::classify(policy, &reference::parse_packet(&bytes));
        let action = dataplane.test_run(&bytes).unwrap_or_else(|e| {
            panic!("BPF_PROG_TEST_RUN of {} failed: {}", hex(&bytes), error_chain(&e))
        });
        let mut want = base.clone();
        want.count(&expected, len);
        let v = expected.verdict as usize;
        let verdict_now =
            dataplane.verdict_count(expected.verdict).expect("reading a verdict counter");
        let mut ok = action == expected_action(expected.verdict) && verdict_now == want.verdicts[v];
        if let Some(rule) = expected.rule {
            let rule_now = dataplane.rule_count(rule).expect("reading a rule counter");
            ok &= rule_now == Some(want.rules[rule]);
        }

        run.packets += 1;
        run.verdicts[v] += 1;
        reference_totals.count(&expected, len);
        if let Some(rule) = expected.rule {
            run.rule_wins += 1;
            run.wins_past_64 += usize::from(rule >= 64);
            run.deepest_win = run.deepest_win.max(rule);
        }

        if ok {
            base = want;
            continue;
        }
        clean = false;
        let now = Counts::read(dataplane);
        run.record(|| {
            mismatch(
                Some((n, frame.clone())),
                format!(
                    "reference: {}; kernel: XDP action {action}, counted {}",
                    describe_outcome(&expected, policy),
                    now.since(&base).describe(policy)
                ),
            )
        });
        base = now;
    }
    if clean {
        let kernel_totals = Counts::read(dataplane).since(&start);
        let rule_packets = |c: &Counts| c.rules.iter().map(|c| c.packets).sum::<u64>();
        if kernel_totals.verdicts != reference_totals.verdicts
            || kernel_totals.rules != reference_totals.rules
            || rule_packets(&kernel_totals) != rule_packets(&reference_totals)
        {
            run.record(|| {
                mismatch(
                    None,
                    format!(
                        "totals over {} packets: reference counted {}; kernel counted {}",
                        frames.len(),
                        reference_totals.describe(policy),
                        kernel_totals.describe(policy)
                    ),
                )
            });
        }
    }
}

/// The program on maps sized for policy `index` alone, as the daemon creates them
/// (`Sizes::for_ruleset`): the tables' interleaved shares at the room the policy gets.
fn load(index: usize, policy: &Policy) -> Dataplane {
    let ruleset = compile(index, policy);
    Dataplane::load_sized(&ruleset, &Sizes::for_ruleset(&ruleset, MAX_SOURCES))
        .unwrap_or_else(|e| panic!("loading the program failed: {}", error_chain(&e)))
}

/// The program on full-size maps, for a run that applies many policies to it.
fn load_full(index: usize, policy: &Policy) -> Dataplane {
    Dataplane::load(&compile(index, policy))
        .unwrap_or_else(|e| panic!("loading the program failed: {}", error_chain(&e)))
}

/// The ruleset of policy `index`: every other one with its addresses in the tries
/// only, so that both the address tables and the tries are checked (the generated
/// prefix sets all fit the tables).
fn compile(index: usize, policy: &Policy) -> policy::Ruleset {
    let ruleset = policy::compile(policy);
    if index % 2 == 1 { ruleset.without_address_tables() } else { ruleset }
}

#[test]
fn kernel_agrees_with_the_reference() {
    if !support::privileged("kernel_agrees_with_the_reference") {
        return;
    }
    let config = Config::from_env();
    let started = Instant::now();
    let mut run = Run::default();
    for index in config.policy_indices(config.policies) {
        let mut rng = Rng::for_policy(config.seed, STREAM_KERNEL, index);
        let spec = random_policy_both_paths(&mut rng, index);
        let policy = match spec.parse() {
            Ok(policy) => policy,
            Err(e) => {
                run.skipped.push(format!("policy {index}: {e}"));
                continue;
            }
        };
        run.policies += 1;
        run.max_rules = run.max_rules.max(policy.rules.len());
        let frames: Vec<FrameSpec> =
            (0..config.packets).map(|_| random_frame(&mut rng, &policy)).collect();
        let mut dataplane = load(index, &policy);
        check_policy(&mut dataplane, index, &spec, &[], &policy, &frames, &mut run);
    }
    finish_run("differential", &config, STREAM_KERNEL, config.packets, &run, started);
}

/// The same comparison with one loaded program and the policies applied in turn, as a
/// reload does: each apply rewrites only what differs in the inactive generation, and
/// rule counters survive for unchanged rules.
#[test]
fn kernel_agrees_with_the_reference_across_reloads() {
    if !support::privileged("kernel_agrees_with_the_reference_across_reloads") {
        return;
    }
    let config = Config::from_env();
    let started = Instant::now();
    let packets = config.packets.div_ceil(2);
    let mut run = Run::default();
    let mut dataplane: Option<Dataplane> = None;
    let mut history: Vec<PolicySpec> = Vec::new();
    for index in config.policy_indices(config.reloads) {
        let mut rng = Rng::for_policy(config.seed, STREAM_RELOADS, index);
        let spec = random_policy_both_paths(&mut rng, index);
        let policy = match spec.parse() {
            Ok(policy) => policy,
            Err(e) => {
                run.skipped.push(format!("policy {index}: {e}"));
                continue;
            }
        };
        run.policies += 1;
        run.max_rules = run.max_rules.max(policy.rules.len());
        let frames: Vec<FrameSpec> =
            (0..packets).map(|_| random_frame(&mut rng, &policy)).collect();
        match &mut dataplane {
            None => dataplane = Some(load_full(index, &policy)),
            Some(d) => {
                d.apply(&compile(index, &policy)).unwrap_or_else(|e| {
                    panic!("applying policy {index} failed: {}", error_chain(&e))
                });
            }
        }
        let d = dataplane.as_mut().expect("loaded above");
        check_policy(d, index, &spec, &history, &policy, &frames, &mut run);
        history.push(spec);
        if history.len() > KEPT_HISTORY {
            history.remove(0);
        }
    }
    finish_run("differential across reloads", &config, STREAM_RELOADS, packets, &run, started);
}

/// Another program (or a bug) scribbles over both generations of every map the program
/// reads: the audit finds it, the repair puts the policy back whole, the audit then
/// finds nothing, and the kernel agrees with the reference on every packet again.
#[test]
fn kernel_agrees_with_the_reference_after_scribbling_and_repair() {
    if !support::privileged("kernel_agrees_with_the_reference_after_scribbling_and_repair") {
        return;
    }
    let config = Config::from_env();
    let started = Instant::now();
    let packets = config.packets.div_ceil(2);
    let mut run = Run::default();
    let mut scribbled = 0;
    let mut drifted = 0;
    for index in config.policy_indices(SCRIBBLED_POLICIES) {
        let mut rng = Rng::for_policy(config.seed, STREAM_SCRIBBLE, index);
        let spec = random_policy_both_paths(&mut rng, index);
        let policy = match spec.parse() {
            Ok(policy) => policy,
            Err(e) => {
                run.skipped.push(format!("policy {index}: {e}"));
                continue;
            }
        };
        run.policies += 1;
        run.max_rules = run.max_rules.max(policy.rules.len());
        let frames: Vec<FrameSpec> =
            (0..packets).map(|_| random_frame(&mut rng, &policy)).collect();
        let ruleset = compile(index, &policy);
        let mut dataplane = load(index, &policy);
        // Both generations hold the policy before they are scribbled over.
        dataplane.apply(&ruleset).expect("the second apply");
        let ids = dataplane.map_ids().expect("the program's maps");
        let written = support::scribble::by_ids(&ids, config.seed ^ index as u64);
        scribbled += written.iter().map(|(_, n)| n).sum::<usize>();
        let drift = dataplane.audit(&ruleset).expect("audit");
        assert!(
            drift.entries() > 0,
            "policy {index}: nothing found after scribbling over {written:?}"
        );
        drifted += drift.entries();
        dataplane.repair(&ruleset).expect("repair");
        let after = dataplane.audit(&ruleset).expect("audit after the repair");
        assert!(after.is_empty(), "policy {index}: still differs after the repair: {after:?}");
        check_policy(&mut dataplane, index, &spec, &[], &policy, &frames, &mut run);
    }
    eprintln!(
        "scribbled {scribbled} entries over {} policies; the audits found {drifted} differing",
        run.policies
    );
    finish_run("differential after scribbling", &config, STREAM_SCRIBBLE, packets, &run, started);
}

/// Prints the summary; on mismatches, shrinks the first one with a packet and panics
/// with it and the first few as found.
fn finish_run(
    name: &str,
    config: &Config,
    stream: u64,
    packets_per_policy: usize,
    run: &Run,
    started: Instant,
) {
    eprintln!("{}", run.summary(name, packets_per_policy, started));
    let total = run.policies + run.skipped.len();
    assert!(run.policies > 0, "{name}: no valid policy was generated, nothing was checked");
    assert!(
        run.skipped.len() * 10 <= total,
        "{} of {total} generated policies were invalid (at most 10% may be):\n{}",
        run.skipped.len(),
        run.skipped.join("\n")
    );
    if run.kept.is_empty() {
        return;
    }
    let mut report = format!(
        "{name}: the kernel and the reference disagree on {} packets or totals (seed {:#x}, \
         stream {stream}); rerun one policy with XDP_POLICY_DIFF_SEED={:#x} \
         XDP_POLICY_DIFF_ONLY=<policy>\n",
        run.mismatches, config.seed, config.seed
    );
    let mut printed = Vec::new();
    for m in run.kept.iter().take(3) {
        let _ = write!(report, "\n--- policy {}", m.policy);
        if let Some((n, frame)) = &m.packet {
            let _ = write!(report, ", packet {n}: {frame:?}\n    {}", hex(&frame.build()));
        }
        let _ = writeln!(report, "\n{}", m.detail);
        if printed.contains(&m.policy) {
            continue;
        }
        printed.push(m.policy);
        if let Some(previous) = m.history.last() {
            let _ = writeln!(report, "applied over the previous policy:\n{}", previous.toml());
        }
        let _ = writeln!(report, "policy {}:\n{}", m.policy, m.spec.toml());
    }
    if let Some(m) = run.kept.iter().find(|m| m.packet.is_some()) {
        let (_, frame) = m.packet.clone().expect("found with a packet");
        let case = Case { history: m.history.clone(), spec: m.spec.clone(), frame };
        let _ = writeln!(report, "\n=== the first, shrunk on fresh programs:\n{}", shrink(case));
    }
    panic!("{report}");
}

// ---------------------------------------------------------------------------------------
// Shrinking a disagreement

/// A failing case: `history` applied in turn to a fresh program, then `spec`, then one
/// frame.
#[derive(Clone)]
struct Case {
    history: Vec<PolicySpec>,
    spec: PolicySpec,
    frame: FrameSpec,
}

impl Case {
    /// Whether the program and the reference disagree on this case, and how.
    fn disagreement(&self) -> Option<String> {
        let bytes = self.frame.build();
        if bytes.len() < ETH_HLEN {
            return None;
        }
        let policies: Vec<Policy> = self
            .history
            .iter()
            .chain([&self.spec])
            .map(|s| s.parse().ok())
            .collect::<Option<_>>()?;
        let (first, rest) = policies.split_first()?;
        let mut dataplane = Dataplane::load(&policy::compile(first)).ok()?;
        for p in rest {
            dataplane.apply(&policy::compile(p)).ok()?;
        }
        let policy = policies.last()?;
        let before = Counts::read(&dataplane);
        let parsed = reference::parse_packet(&bytes);
        let expected = reference::classify(policy, &parsed);
        let action = dataplane.test_run(&bytes).ok()?;
        let moved = Counts::read(&dataplane).since(&before);
        let mut want = Counts::zero(policy.rules.len());
        want.count(&expected, bytes.len() as u64);
        let agree = action == expected_action(expected.verdict)
            && moved.verdicts == want.verdicts
            && moved.rules == want.rules;
        (!agree).then(|| {
            format!(
                "reference: {} (parsed {parsed:?}); kernel: XDP action {action}, counted {}",
                describe_outcome(&expected, policy),
                moved.describe(policy)
            )
        })
    }

    /// Cases one step simpler: without a policy of the history, with a simpler policy,
    /// with a simpler frame.
    fn simpler(&self) -> Vec<Case> {
        let mut out = Vec::new();
        for i in 0..self.history.len() {
            let mut c = self.clone();
            c.history.remove(i);
            out.push(c);
        }
        for spec in self.spec.simpler() {
            out.push(Case { spec, ..self.clone() });
        }
        for (i, h) in self.history.iter().enumerate() {
            for spec in h.simpler() {
                let mut c = self.clone();
                c.history[i] = spec;
                out.push(c);
            }
        }
        for frame in self.frame.simpler() {
            out.push(Case { frame, ..self.clone() });
        }
        out
    }
}

/// Program loads a shrink may spend (each takes a fraction of a second).
const SHRINK_TRIALS: usize = 400;

/// Greedily takes the first simpler case that still disagrees until none does, and
/// describes the result.
fn shrink(mut case: Case) -> String {
    if case.disagreement().is_none() {
        return "does not reproduce on a fresh program (with the policies applied before it, \
                at most the last few)"
            .into();
    }
    let mut trials = 0;
    'shrinking: loop {
        for simpler in case.simpler() {
            if trials == SHRINK_TRIALS {
                break 'shrinking;
            }
            trials += 1;
            if simpler.disagreement().is_some() {
                case = simpler;
                continue 'shrinking;
            }
        }
        break;
    }
    let mut out = String::new();
    if trials == SHRINK_TRIALS {
        let _ = writeln!(out, "(stopped after {SHRINK_TRIALS} trials: not minimal)");
    }
    for (i, h) in case.history.iter().enumerate() {
        let _ = writeln!(
            out,
            "applied first ({} of {}):\n{}",
            i + 1,
            case.history.len(),
            toml_or_empty(h)
        );
    }
    let _ = writeln!(
        out,
        "policy:\n{}packet: {:?}\n    {}\n{}",
        toml_or_empty(&case.spec),
        case.frame,
        hex(&case.frame.build()),
        case.disagreement().unwrap_or_else(|| "(no longer disagrees)".into())
    );
    out
}

fn toml_or_empty(spec: &PolicySpec) -> String {
    let text = spec.toml();
    if text.trim().is_empty() { "(the empty policy)\n\n".into() } else { text }
}
