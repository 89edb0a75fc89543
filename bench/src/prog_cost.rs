//! Per-packet cost of the XDP program, through BPF_PROG_TEST_RUN.
//!
//! Every variant runs the same eight probe packets (IPv4/IPv6 × TCP/UDP × hit/miss, see
//! `policies`), each measurement `repeat` runs of one packet timed around the syscall.
//! Rounds interleave every variant and packet; what is reported is a variant's time
//! minus the floor's (a trivial `return XDP_PASS` program, i.e. the test-run overhead)
//! measured in the same round, summarised over the rounds. Next to the floor, the limit:
//! the minimal port filter (`raw::MinimalPortFilter`), what any port filter costs at
//! least.

use std::{
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    path::Path,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use policy_common::xdp_action::{XDP_DROP, XDP_PASS};
use policy_daemon::{
    dataplane::{Dataplane, migrate::Sizes},
    packet::{Packet, tcp, udp},
    policy::{self, Ruleset},
};
use testbed::{RX_IFACE, TX_IFACE, Testbed};

use crate::{
    opts::Opts,
    plot::{self, Series},
    policies::{self, HIT_PORT, HIT_V4, HIT_V6, MISS_PORT, MISS_V4, MISS_V6},
    raw,
    report::{Mark, Section, SummaryRow, Table},
    stats::Summary,
    xdpfilter::{Features, XdpFilter},
};

/// Rule counts of the mixed-rules curve (the last: the rule limit).
const MIXED_RULES: [usize; 6] = [1, 10, 64, 512, 1024, policy_common::MAX_RULES];
/// Networks in the block-list variant.
const PREFIXES: usize = 100_000;
/// The minimal port filter's line.
const LIMIT: &str = "limit: minimal port filter (IPv4 UDP)";
/// The floor with its action returned by a function of its own: what one call costs.
const CALL: &str = "floor through one BPF-to-BPF call";
/// Targets (ns per packet above the floor).
const PORT_ONLY_TARGET_NS: f64 = 4.0;
const MIXED_TARGET_NS: f64 = 40.0;
/// Issue 16's targets for 1,024 and for 4,096 mixed rules (the worst of hit and miss).
const THOUSAND_RULES_TARGET_NS: f64 = 30.0;
const MAX_RULES_TARGET_NS: f64 = 60.0;
const FLAGS_TARGET_NS: f64 = 5.0;
const LIMIT_TARGET_NS: f64 = 25.0;

/// One probe packet.
struct Probe {
    label: &'static str,
    bytes: Vec<u8>,
    hit: bool,
}

fn probes() -> Vec<Probe> {
    let mut probes = Vec::new();
    for (hit, v4, v6, port) in
        [(true, HIT_V4, HIT_V6, HIT_PORT), (false, MISS_V4, MISS_V6, MISS_PORT)]
    {
        let kind = if hit { "hit" } else { "miss" };
        let cases = [
            ("IPv4 TCP", Packet::ipv4(tcp(port)).src(v4).dst("198.18.0.2")),
            ("IPv4 UDP", Packet::ipv4(udp(port)).src(v4).dst("198.18.0.2")),
            ("IPv6 TCP", Packet::ipv6(tcp(port)).src(v6).dst("fd00::2")),
            ("IPv6 UDP", Packet::ipv6(udp(port)).src(v6).dst("fd00::2")),
        ];
        for (name, packet) in cases {
            let label = Box::leak(format!("{name} {kind}").into_boxed_str());
            probes.push(Probe { label, bytes: packet.build(), hit });
        }
    }
    probes
}

/// What a variant's program is, so it stays loaded while measured.
enum Program {
    Raw(OwnedFd),
    Limit(raw::MinimalPortFilter),
    Policy(Box<Dataplane>),
    XdpFilter(OwnedFd),
}

struct Variant {
    name: String,
    program: Program,
    /// Whether it drops hits (the floor passes everything; xdp-filter udp-only passes TCP).
    judges: fn(&Probe) -> Option<u32>,
    /// Rule count, for the cost-against-rules plot.
    rules: Option<usize>,
}

impl Variant {
    fn fd(&mut self) -> Result<BorrowedFd<'_>> {
        Ok(match &mut self.program {
            Program::Raw(fd) | Program::XdpFilter(fd) => OwnedFd::as_fd(fd),
            Program::Limit(filter) => filter.prog(),
            Program::Policy(dataplane) => dataplane.program_fd()?,
        })
    }
}

fn drops_hits(probe: &Probe) -> Option<u32> {
    Some(if probe.hit { XDP_DROP } else { XDP_PASS })
}

fn drops_udp_hits(probe: &Probe) -> Option<u32> {
    Some(if probe.hit && probe.label.contains("UDP") { XDP_DROP } else { XDP_PASS })
}

/// The minimal port filter's judgement: it drops IPv4 UDP hits and passes everything
/// else (TCP and IPv6 without looking at the port).
fn drops_ipv4_udp_hits(probe: &Probe) -> Option<u32> {
    Some(if probe.hit && probe.label == "IPv4 UDP hit" { XDP_DROP } else { XDP_PASS })
}

fn drops_tcp_hits(probe: &Probe) -> Option<u32> {
    Some(if probe.hit && probe.label.contains("TCP") { XDP_DROP } else { XDP_PASS })
}

/// One TCP rule dropping the hit port from the probes' networks, with `extra` lines.
fn tcp_rule(extra: &str) -> String {
    format!(
        "[[rule]]\nname = \"tcp-hit\"\naction = \"drop\"\nprotocol = \"tcp\"\n\
         dst_ports = [{HIT_PORT}]\nsrc = [\"198.18.0.0/15\", \"fd00::/8\"]\n{extra}"
    )
}

fn passes_all(_: &Probe) -> Option<u32> {
    Some(XDP_PASS)
}

fn compile(text: &str) -> Result<Ruleset> {
    let policy = policy::parse([(Path::new("bench.toml"), text)])
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("a generated bench policy was rejected")?;
    Ok(policy::compile(&policy))
}

fn policy_variant(name: String, text: &str, rules: Option<usize>) -> Result<Variant> {
    let dataplane = Dataplane::load(&compile(text)?).context("loading xdp-policy's program")?;
    Ok(Variant { name, program: Program::Policy(Box::new(dataplane)), judges: drops_hits, rules })
}

/// Attaches `fd` (generic mode) to a veth of its own, `dev`, made in `netns`: a program
/// attached somewhere stays in the kernel's XDP dispatcher, so its test runs do not add
/// and remove it there (two RCU grace periods per call). Attached while the returned
/// link lives.
pub fn attach_to_own_veth(
    netns: &testbed::NetNs,
    dev: &str,
    fd: BorrowedFd<'_>,
    what: &str,
) -> Result<OwnedFd> {
    let peer = format!("{dev}p");
    for args in [
        vec!["-n", netns.name(), "link", "add", dev, "type", "veth", "peer", "name", &peer],
        vec!["-n", netns.name(), "link", "set", dev, "up"],
    ] {
        crate::opts::command_output("ip", &args)?;
    }
    netns
        .run(|| {
            let name = std::ffi::CString::new(dev).expect("no NUL");
            // SAFETY: a valid NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                return Err(std::io::Error::last_os_error());
            }
            raw::xdp_link(fd, ifindex, raw::XDP_FLAGS_SKB_MODE)
        })?
        .with_context(|| format!("attaching {what} to {dev}"))
}

/// Pins this thread to the last CPU while it lives, so measurements do not migrate
/// between CPUs; the thread's previous CPUs are restored when it is dropped.
pub struct PinnedToLastCpu(nix::sched::CpuSet);

impl PinnedToLastCpu {
    pub fn new() -> Result<Self> {
        let this_thread = nix::unistd::Pid::from_raw(0);
        let previous =
            nix::sched::sched_getaffinity(this_thread).context("reading CPU affinity")?;
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        crate::opts::pin_to_cpu(0, cpus - 1)?;
        Ok(Self(previous))
    }
}

impl Drop for PinnedToLastCpu {
    fn drop(&mut self) {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &self.0);
    }
}

/// `BENCH_SPIN=VARIANT,PACKET,SECONDS` (indices in the order of the result table, the
/// floor being variant 0): runs that one variant on that one packet for that long and
/// stops, so that `perf record -C <last CPU>` can see where its time goes; its JITed
/// code is written out to read the profile's offsets against.
fn spin_for_profiling(spec: &str, variants: &mut [Variant], probes: &[Probe]) -> Result<Section> {
    let parts: Vec<usize> = spec.split(',').filter_map(|x| x.trim().parse().ok()).collect();
    let [v, p, secs] = parts[..] else { bail!("BENCH_SPIN wants VARIANT,PACKET,SECONDS") };
    let (Some(variant), Some(probe)) = (variants.get_mut(v), probes.get(p)) else {
        bail!("BENCH_SPIN: no variant {v} or packet {p}");
    };
    eprintln!("prog: spinning {} on {} for {secs} s", variant.name, probe.label);
    let name = variant.name.clone();
    let fd = variant.fd()?;
    let image = std::env::temp_dir().join("xdp-policy-bench-jited.bin");
    std::fs::write(&image, raw::jited_image(fd)?)?;
    eprintln!(
        "prog: its machine code is in {} (objdump -b binary -m i386:x86-64 -D)",
        image.display()
    );
    let start = Instant::now();
    while start.elapsed().as_secs() < secs as u64 {
        crate::opts::check_interrupted()?;
        let run = raw::TestRun {
            data: &probe.bytes,
            ctx: None,
            repeat: 1_000_000,
            flags: 0,
            batch_size: 0,
        };
        let (_, ns) = raw::test_run(fd, &run)?;
        eprintln!("{name}: {ns} ns per run");
    }
    bail!("BENCH_SPIN: done (no result file)")
}

pub fn run(opts: &Opts) -> Result<Section> {
    let reps = opts.reps(21, 3);
    let repeat: u32 = if opts.quick { 20_000 } else { 200_000 };
    let probes = probes();

    let first_loads = first_loads(reps)?;
    eprintln!("prog: loading the variants");
    // xdp-filter lives on interfaces: both ends of a throw-away veth pair, one variant on
    // each (its port list is shared between them).
    let testbed = Testbed::new().context("creating the bench namespaces")?;
    let xf_udp = XdpFilter::load(testbed.rx().name(), RX_IFACE, "skb", Features::UdpOnly)?;
    let xf_all = XdpFilter::load(testbed.tx().name(), TX_IFACE, "skb", Features::All)?;
    xf_udp.deny_port("udp", HIT_PORT)?;
    xf_udp.deny_port("tcp", HIT_PORT)?;

    let mut variants = vec![Variant {
        name: "floor (return XDP_PASS)".into(),
        program: Program::Raw(raw::load_constant_xdp(XDP_PASS, "bench_floor")?),
        judges: passes_all,
        rules: None,
    }];
    variants.push(Variant {
        name: CALL.into(),
        program: Program::Raw(raw::load_calling_xdp(XDP_PASS, "bench_call")?),
        judges: passes_all,
        rules: None,
    });
    let limit =
        raw::MinimalPortFilter::load("bench_limit").context("loading the minimal port filter")?;
    limit.deny_port(HIT_PORT).context("setting the minimal port filter's port")?;
    variants.push(Variant {
        name: LIMIT.into(),
        program: Program::Limit(limit),
        judges: drops_ipv4_udp_hits,
        rules: None,
    });
    variants.push(policy_variant(
        "xdp-policy port-only (10 rules)".into(),
        &policies::port_only(10),
        None,
    )?);
    for n in MIXED_RULES {
        variants.push(policy_variant(
            format!("xdp-policy {n} mixed rule{}", if n == 1 { "" } else { "s" }),
            &policies::mixed(n),
            Some(n),
        )?);
    }
    variants.push(policy_variant(
        format!("xdp-policy {PREFIXES} IPv4 prefixes"),
        &policies::prefixes(PREFIXES),
        None,
    )?);
    // The same TCP rule without and with a flags condition (the probes' TCP segments are
    // SYNs): what matching flags costs.
    for (name, extra) in [
        ("xdp-policy TCP rule, no flags", ""),
        ("xdp-policy TCP rule, tcp_flags \"syn,!ack\"", "tcp_flags = \"syn,!ack\"\n"),
    ] {
        let mut variant = policy_variant(name.into(), &tcp_rule(extra), None)?;
        variant.judges = drops_tcp_hits;
        variants.push(variant);
    }
    // A limit rule on the same TCP segments: over its rate (a bucket of one packet an
    // hour, charged once before the runs: the lookup, the clock and the check), and
    // within it (a bucket no run empties: the compare-and-swap too).
    for (name, extra) in [
        ("xdp-policy TCP limit rule, over its rate", "rate = \"1/h\"\nburst = 1\n"),
        ("xdp-policy TCP limit rule, within its rate", "rate = \"1000000000/s\"\n"),
    ] {
        let text = tcp_rule(extra).replace("action = \"drop\"", "action = \"limit\"");
        let mut variant = policy_variant(name.into(), &text, None)?;
        variant.judges = if name.contains("over") { drops_tcp_hits } else { passes_all };
        variants.push(variant);
    }
    for (filter, features, judges) in [
        (&xf_udp, Features::UdpOnly, drops_udp_hits as fn(&Probe) -> Option<u32>),
        (&xf_all, Features::All, drops_hits),
    ] {
        let id = filter.prog_id()?;
        variants.push(Variant {
            name: format!("xdp-filter {}", features.label()),
            program: Program::XdpFilter(
                raw::prog_fd_by_id(id).context("opening xdp-filter's program")?,
            ),
            judges,
            rules: None,
        });
    }

    // Every program attached somewhere (generic mode, a veth of its own: this kernel has
    // no dummy driver). A program attached anywhere stays in the kernel's XDP dispatcher,
    // so test runs do not add and remove it there, which costs two RCU grace periods per
    // call. xdp-filter's are attached already.
    let netns = testbed.rx();
    let mut links = Vec::new();
    for (i, variant) in variants.iter_mut().enumerate() {
        if matches!(variant.program, Program::XdpFilter(_)) {
            continue;
        }
        let name = variant.name.clone();
        links.push(attach_to_own_veth(netns, &format!("bench{i}"), variant.fd()?, &name)?);
    }

    // A limit rule's bucket admits its burst first: spend it.
    for variant in variants.iter_mut().filter(|v| v.name.contains("over its rate")) {
        let fd = variant.fd()?;
        for probe in &probes {
            let run =
                raw::TestRun { data: &probe.bytes, ctx: None, repeat: 1, flags: 0, batch_size: 0 };
            raw::test_run(fd, &run)?;
        }
    }
    // Each variant decides each probe as it should, or its figures mean nothing.
    for variant in &mut variants {
        let judges = variant.judges;
        let name = variant.name.clone();
        let fd = variant.fd()?;
        for probe in &probes {
            let run =
                raw::TestRun { data: &probe.bytes, ctx: None, repeat: 1, flags: 0, batch_size: 0 };
            let (action, _) = raw::test_run(fd, &run)?;
            if let Some(expected) = judges(probe)
                && action != expected
            {
                bail!("{name} returned {action} for {} (expected {expected})", probe.label);
            }
        }
        // The minimal port filter counts what it drops: once each probe it drops.
        if let Program::Limit(filter) = &variant.program {
            let dropped = probes.iter().filter(|p| judges(p) == Some(XDP_DROP)).count();
            let counted = filter.drops().context("reading the minimal port filter's counter")?;
            if counted != dropped as u64 {
                bail!("{name} counted {counted} drops, {dropped} expected");
            }
        }
    }

    let pinned = PinnedToLastCpu::new()?;
    if let Ok(spin) = std::env::var("BENCH_SPIN") {
        return spin_for_profiling(&spin, &mut variants, &probes);
    }
    eprintln!(
        "prog: {reps} rounds × {} variants × {} packets × {repeat} runs",
        variants.len(),
        probes.len()
    );
    // samples[variant][probe] = ns per run, round by round.
    let mut samples = vec![vec![Vec::with_capacity(reps); probes.len()]; variants.len()];
    for round in 0..reps {
        for (p, probe) in probes.iter().enumerate() {
            // Rotate the order each round so no variant always runs first.
            for k in 0..variants.len() {
                let v = (k + round + p) % variants.len();
                let fd = variants[v].fd()?;
                let run =
                    raw::TestRun { data: &probe.bytes, ctx: None, repeat, flags: 0, batch_size: 0 };
                let start = Instant::now();
                raw::test_run(fd, &run).context("BPF_PROG_TEST_RUN")?;
                samples[v][p].push(start.elapsed().as_nanos() as f64 / f64::from(repeat));
            }
        }
        eprint!("\rprog: round {}/{reps}", round + 1);
        crate::opts::check_interrupted()?;
    }
    eprintln!();
    drop(pinned);
    drop(links);
    drop((xf_udp, xf_all));
    drop(testbed);

    // Cost above the floor, round by round.
    let floor = &samples[0];
    let above = |v: usize, p: usize| -> Summary {
        let deltas: Vec<f64> = samples[v][p].iter().zip(&floor[p]).map(|(x, f)| x - f).collect();
        Summary::of(&deltas).expect("at least one round")
    };
    // A variant's figure: all its probes' deltas pooled (per round, the mean over probes).
    let overall = |v: usize| -> Summary {
        let per_round: Vec<f64> = (0..reps)
            .map(|r| {
                (0..probes.len()).map(|p| samples[v][p][r] - floor[p][r]).sum::<f64>()
                    / probes.len() as f64
            })
            .collect();
        Summary::of(&per_round).expect("at least one round")
    };

    let mut body = format!(
        "BPF_PROG_TEST_RUN, {repeat} runs per measurement, timed around the syscall on one \
         pinned CPU; {reps} rounds, each running every variant on every packet, the order \
         rotated each round. Figures are ns per packet **above the floor** (a program that \
         only returns XDP_PASS: the test-run overhead, {floor_ns:.1} ns median here), median \
         (IQR) over the rounds of the difference to the floor measured in the same round. \
         The *limit* line is the least a port filter can do: a hand-assembled program that \
         checks the frame's length once, reads EtherType, the IPv4 version and header length \
         (no options) and the protocol, looks the UDP destination port up in an array of \
         65,536 entries and, if its entry is set, adds one to a per-CPU counter and drops; \
         it passes TCP and IPv6 without a lookup, so its IPv4 UDP hit is the figure to \
         compare with. \
         *hit* packets are dropped by the policy's last rule (the worst case for a \
         first-match list); *miss* packets match no rule. xdp-filter is loaded with \
         `LIBXDP_SKIP_DISPATCHER=1`, denying destination port {HIT_PORT} (TCP and UDP); \
         its udp-only program passes TCP without looking. xdp-policy decides the port-only \
         policy with its port table (one lookup), looks addresses up in its address tables \
         where a field's prefixes fit them (every mixed-rule policy here) and in the LPM \
         tries otherwise (the 100,000-prefix block list).\n\n",
        floor_ns = Summary::of(&floor.iter().flatten().copied().collect::<Vec<_>>())
            .expect("rounds")
            .median,
    );
    let mut header = vec!["variant", "all packets"];
    header.extend(probes.iter().map(|p| p.label));
    let mut table = Table::new(&header);
    for (v, variant) in variants.iter().enumerate().skip(1) {
        let mut cells = vec![variant.name.clone(), format!("**{}**", overall(v).cell(1))];
        cells.extend((0..probes.len()).map(|p| format!("{:+.1}", above(v, p).median)));
        table.row(&cells);
    }
    body.push_str(&table.render());

    // Cost against rule count.
    let (png, link) = opts.plot_path("prog-cost-rules");
    let mixed: Vec<usize> = (0..variants.len()).filter(|v| variants[*v].rules.is_some()).collect();
    let series = |label: &str, pick: &dyn Fn(&Probe) -> bool| Series {
        name: label.to_string(),
        points: mixed
            .iter()
            .map(|&v| {
                let per_round: Vec<f64> = (0..reps)
                    .map(|r| {
                        let chosen: Vec<usize> =
                            (0..probes.len()).filter(|&p| pick(&probes[p])).collect();
                        chosen.iter().map(|&p| samples[v][p][r] - floor[p][r]).sum::<f64>()
                            / chosen.len() as f64
                    })
                    .collect();
                (variants[v].rules.unwrap_or(1) as f64, Summary::of(&per_round).expect("rounds"))
            })
            .collect(),
    };
    let curve = [
        series("hit (dropped by the last rule)", &|p| p.hit),
        series("miss (no rule matches)", &|p| !p.hit),
    ];
    plot::lines_log_x(
        &png,
        "xdp-policy: cost per packet against rule count (BPF_PROG_TEST_RUN)",
        "mixed rules (log scale)",
        "ns per packet above the floor",
        &curve,
    )?;
    body.push_str(
        "\n### Cost against rule count\n\nThe mixed-rule policies above, ns per packet above \
         the floor, median (IQR) over the rounds of the mean over the four hit or the four \
         miss probes.\n\n",
    );
    let mut table = Table::new(&["mixed rules", "hit (the last rule drops)", "miss (no rule)"]);
    for (i, (rules, hit)) in curve[0].points.iter().enumerate() {
        let miss = &curve[1].points[i].1;
        table.row(&[format!("{rules}"), hit.cell(1), miss.cell(1)]);
    }
    body.push_str(&table.render());
    body.push_str(&format!("\n![cost against rule count]({link})\n"));

    // Summary rows.
    let find = |prefix: &str| variants.iter().position(|v| v.name.starts_with(prefix));
    let mut summary = Vec::new();
    let udp_hit = probes.iter().position(|p| p.label == "IPv4 UDP hit");
    let limit = find(LIMIT);
    if let (Some(v), Some(p)) = (limit, udp_hit) {
        summary.push(SummaryRow::new(
            "limit: minimal port filter (ns/pkt above floor)",
            format!("{} (IPv4 UDP hit {})", overall(v).cell(1), above(v, p).cell(1)),
            "",
            Mark::Info,
        ));
    }
    if let Some(v) = find("xdp-policy port-only") {
        let s = overall(v);
        summary.push(SummaryRow::new(
            "program cost, port-only rules (ns/pkt above floor)",
            s.cell(1),
            format!("≤ +{PORT_ONLY_TARGET_NS:.0} ns"),
            Mark::of(s.median <= PORT_ONLY_TARGET_NS),
        ));
        if let (Some(l), Some(p)) = (limit, udp_hit) {
            let (policy, limit) = (above(v, p).median, above(l, p).median);
            summary.push(SummaryRow::new(
                "xdp-policy port-only ÷ limit, IPv4 UDP hit (ns/pkt above floor)",
                format!(
                    "{:.1}× ({policy:+.1} against {limit:+.1}: {:+.1} ns)",
                    policy / limit,
                    policy - limit
                ),
                "",
                Mark::Info,
            ));
        }
    }
    let mixed_medians: Vec<(usize, f64)> =
        mixed.iter().map(|&v| (variants[v].rules.unwrap_or(0), overall(v).median)).collect();
    if let Some(&(n, worst)) = mixed_medians.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
        let (_, first) = mixed_medians[0];
        summary.push(SummaryRow::new(
            "program cost, 1–4,096 mixed rules (ns/pkt above floor)",
            format!(
                "{} (worst: {n} rules {worst:+.1}, 1 rule {first:+.1})",
                mixed_medians
                    .iter()
                    .map(|(n, m)| format!("{n}: {m:+.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!("≤ +{MIXED_TARGET_NS:.0} ns, flat"),
            Mark::of(worst <= MIXED_TARGET_NS),
        ));
        for (rules, target) in
            [(1024, THOUSAND_RULES_TARGET_NS), (policy_common::MAX_RULES, MAX_RULES_TARGET_NS)]
        {
            if let Some(&(_, median)) = mixed_medians.iter().find(|(n, _)| *n == rules) {
                summary.push(SummaryRow::new(
                    format!("program cost, {rules} mixed rules (ns/pkt above floor)"),
                    format!("{median:+.1}"),
                    format!("≤ +{target:.0} ns"),
                    Mark::of(median <= target),
                ));
            }
        }
    }
    if let (Some(plain), Some(flags)) =
        (find("xdp-policy TCP rule, no flags"), find("xdp-policy TCP rule, tcp_flags"))
    {
        let (a, b) = (overall(plain).median, overall(flags).median);
        summary.push(SummaryRow::new(
            "a TCP rule with tcp_flags over the same rule without (ns/pkt)",
            format!("{:+.1} ({b:+.1} against {a:+.1} above the floor)", b - a),
            format!("≤ +{FLAGS_TARGET_NS:.0} ns"),
            Mark::of(b - a <= FLAGS_TARGET_NS),
        ));
    }
    if let (Some(plain), Some(over), Some(within)) = (
        find("xdp-policy TCP rule, no flags"),
        find("xdp-policy TCP limit rule, over"),
        find("xdp-policy TCP limit rule, within"),
    ) {
        // On the packets the rules judge (TCP hits): the others never reach a bucket.
        let judged: Vec<usize> = (0..probes.len())
            .filter(|&p| probes[p].hit && probes[p].label.contains("TCP"))
            .collect();
        let on_judged = |v: usize| {
            judged.iter().map(|&p| above(v, p).median).sum::<f64>() / judged.len() as f64
        };
        let (a, b, c) = (on_judged(plain), on_judged(over), on_judged(within));
        summary.push(SummaryRow::new(
            "a limit rule over the same drop rule, on the TCP segments they judge (ns/pkt)",
            format!(
                "{:+.1} over its rate, {:+.1} within it ({b:+.1} and {c:+.1} against {a:+.1} \
                 above the floor)",
                b - a,
                c - a
            ),
            format!("≤ +{LIMIT_TARGET_NS:.0} ns"),
            Mark::of(b - a <= LIMIT_TARGET_NS && c - a <= LIMIT_TARGET_NS),
        ));
    }
    for (prefix, label) in [
        (CALL, "one BPF-to-BPF call and its return"),
        ("xdp-policy 100000", "program cost, 100,000 IPv4 prefixes"),
        ("xdp-filter udp-only", "xdp-filter udp-only"),
        ("xdp-filter all", "xdp-filter all features"),
    ] {
        if let Some(v) = find(prefix) {
            summary.push(SummaryRow::new(
                format!("{label} (ns/pkt above floor)"),
                overall(v).cell(1),
                "",
                Mark::Info,
            ));
        }
    }
    summary.extend(first_loads);
    Ok(Section { title: "Per-packet program cost (BPF_PROG_TEST_RUN)".into(), body, summary })
}

/// A fresh filter's first apply short of attaching, for one-rule policies: aya reads
/// the kernel's BTF, the maps are created at the policy's sizes, the program the policy
/// needs is loaded (the verifier) and the policy written, as the daemon's first apply
/// does before it attaches and pins. Milliseconds, median (IQR) of `reps` loads.
fn first_loads(reps: usize) -> Result<Vec<SummaryRow>> {
    eprintln!("prog: timing first loads");
    let policies = [
        ("one UDP port (the port program)", policies::port_only(1)),
        (
            "one IPv4 source prefix (the full program)",
            "[[rule]]\nname = \"a\"\naction = \"drop\"\nsrc = [\"198.18.0.0/16\"]\n".into(),
        ),
    ];
    let mut rows = Vec::new();
    for (label, text) in policies {
        let ruleset = compile(&text)?;
        let sizes = Sizes::for_ruleset(&ruleset, policy_common::MAX_SOURCES);
        let mut samples = Vec::with_capacity(reps);
        for _ in 0..reps {
            let start = Instant::now();
            let dataplane = Dataplane::load_sized(&ruleset, &sizes)
                .with_context(|| format!("loading xdp-policy for {label}"))?;
            samples.push(start.elapsed().as_secs_f64() * 1e3);
            drop(dataplane);
        }
        let summary = Summary::of(&samples).expect("at least one load");
        rows.push(SummaryRow::new(
            format!("first load and apply, {label} (ms)"),
            summary.cell(1),
            "",
            Mark::Info,
        ));
    }
    Ok(rows)
}
