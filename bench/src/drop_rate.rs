//! Drop rate on a veth pair: the rx end's NAPI thread's CPU time per packet with each
//! filter dropping a flood of 60-byte UDP frames, from no filter through iptables and
//! nftables to xdp-filter, xdp-policy, the minimal port filter (the limit) and a trivial
//! XDP_DROP (the floor); for the XDP filters also the kernel's own run time of the
//! program (bpf_stats). Then the XDP filters that matter once more at a fixed rate well
//! below saturation.
//!
//! Every measurement gets a fresh testbed (namespaces, veth pair with GRO and threaded
//! NAPI, the filter), so no variant inherits another's state; the variants are run
//! round-robin, each round in a rotated order, and ratios are taken against the floor
//! measured in the same round.

mod counters;
mod generator;
mod rig;
mod variants;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use self::{
    generator::PACE_TICK,
    rig::{Plan, Sample},
    variants::{PORT, Policies, Variant},
};
use crate::{
    opts::Opts,
    plot,
    report::{Mark, Section, SummaryRow, Table},
    stats::Summary,
};

/// xdp-policy port-only ÷ the XDP_DROP floor, at most.
const TARGET_FLOOR_RATIO: f64 = 1.10;
/// iptables raw ÷ xdp-policy port-only, at least.
const TARGET_IPTABLES_RATIO: f64 = 4.5;
/// The offered rate of the run below saturation (frames per second): well below what the
/// slowest of [`PACED`] sustains (about 6 Mpps saturated).
const PACED_RATE: f64 = 2e6;
/// The variants measured again at [`PACED_RATE`].
const PACED: [Variant; 5] = [
    Variant::LimitNative,
    Variant::XdpDrop,
    Variant::XdpFilterUdp,
    Variant::PolicyPortNative,
    Variant::PolicyManyNative,
];

/// Measurements by variant (its index in [`Variant::ALL`]), each with its round.
type Samples = BTreeMap<usize, Vec<(usize, Sample)>>;

pub fn run(opts: &Opts) -> Result<Section> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if cpus < 2 {
        bail!(
            "the drop-rate benchmark needs two CPUs (generator and NAPI thread), this has {cpus}"
        );
    }
    let plan = Plan {
        warmup: Duration::from_millis(if opts.quick { 300 } else { 500 }),
        window: Duration::from_millis(if opts.quick { 1000 } else { 3000 }),
        stats_window: Duration::from_millis(if opts.quick { 500 } else { 1000 }),
        gen_cpu: 0,
        napi_cpu: 1,
        rate: None,
    };
    let reps = opts.reps(5, 2);
    let policies = Policies::write()?;
    let interrupted = Interrupt::register()?;
    let iptables = crate::opts::command_output("iptables", &["-V"])
        .unwrap_or_else(|e| format!("unknown ({e:#})"));

    let mut failures = Vec::new();
    let rig = Rig { daemon: &opts.daemon, policies: &policies, interrupted: &interrupted.flag };
    let samples = rig.rounds("drop", &Variant::ALL, reps, &plan, &mut failures)?;
    if samples.is_empty() {
        bail!(
            "every measurement failed; the first: {}",
            failures.first().map_or("", |s| s.as_str())
        );
    }
    let paced_plan = Plan { rate: Some(PACED_RATE), ..plan };
    let paced_what = format!("drop at {:.0} Mpps", PACED_RATE / 1e6);
    let paced = rig.rounds(&paced_what, &PACED, reps, &paced_plan, &mut failures)?;
    report(opts, &plan, reps, &iptables, &samples, &paced, &failures)
}

/// What every measurement of a run shares.
struct Rig<'a> {
    daemon: &'a Path,
    policies: &'a Policies,
    interrupted: &'a AtomicBool,
}

impl Rig<'_> {
    /// Measures every one of `variants` once a round for `reps` rounds, the order rotated
    /// every round; a measurement that fails is added to `failures` (labelled with
    /// `what`) and the others go on.
    fn rounds(
        &self,
        what: &str,
        variants: &[Variant],
        reps: usize,
        plan: &Plan,
        failures: &mut Vec<String>,
    ) -> Result<Samples> {
        let mut samples = Samples::new();
        for round in 0..reps {
            for k in 0..variants.len() {
                let variant = variants[(round + k) % variants.len()];
                if self.interrupted.load(Ordering::Relaxed) {
                    bail!("interrupted");
                }
                eprint!("{what}: round {}/{reps}, {:<34}", round + 1, variant.label());
                match rig::measure(variant, plan, self.daemon, self.policies, self.interrupted) {
                    Ok(sample) => {
                        let wrong = sample.check.mismatches();
                        eprintln!(
                            " {:7.1} ns/pkt, {:5.2} Mpps processed, generator {:5.2} Mpps{}{}",
                            sample.ns_per_packet,
                            sample.processed_mpps,
                            sample.generated_mpps,
                            sample
                                .program_ns
                                .map_or(String::new(), |ns| format!(", program {ns:.1} ns/run")),
                            if wrong.is_empty() {
                                String::new()
                            } else {
                                format!(", MISMATCH: {}", wrong.join("; "))
                            }
                        );
                        samples.entry(slot(variant)).or_default().push((round, sample));
                    }
                    Err(e) if self.interrupted.load(Ordering::Relaxed) => return Err(e),
                    Err(e) => {
                        eprintln!(" failed: {e:#}");
                        failures.push(format!(
                            "{what}, {} (round {}): {e:#}",
                            variant.label(),
                            round + 1
                        ));
                    }
                }
            }
        }
        Ok(samples)
    }
}

/// Where `variant`'s measurements are kept: its index in [`Variant::ALL`].
fn slot(variant: Variant) -> usize {
    Variant::ALL.iter().position(|v| *v == variant).unwrap_or(usize::MAX)
}

/// Ctrl-C during the benchmark: the first stops it at the next check (the guards clean
/// up), a second one kills the process as usual.
struct Interrupt {
    flag: Arc<AtomicBool>,
    id: signal_hook::SigId,
}

impl Interrupt {
    fn register() -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register_conditional_default(
            signal_hook::consts::SIGINT,
            Arc::clone(&flag),
        )
        .context("installing the SIGINT handler")?;
        let id = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&flag))
            .context("installing the SIGINT handler")?;
        Ok(Self { flag, id })
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        signal_hook::low_level::unregister(self.id);
        // From now on the first Ctrl-C kills, as if no handler were installed.
        self.flag.store(true, Ordering::Relaxed);
    }
}

/// The measurements of `variant`, by round.
fn by_round(samples: &Samples, variant: Variant) -> BTreeMap<usize, &Sample> {
    samples.get(&slot(variant)).into_iter().flatten().map(|(round, s)| (*round, s)).collect()
}

/// Per-round ratios `num ÷ den` of ns/packet, for the rounds that measured both.
fn ratios(samples: &Samples, num: Variant, den: Variant) -> Vec<f64> {
    let (num, den) = (by_round(samples, num), by_round(samples, den));
    num.iter()
        .filter_map(|(round, n)| Some(n.ns_per_packet / den.get(round)?.ns_per_packet))
        .collect()
}

/// `nft backend` or `legacy backend`, from `iptables -V` (`iptables v1.8.9 (nf_tables)`).
fn iptables_backend(version: &str) -> &'static str {
    if version.contains("nf_tables") {
        "nft backend"
    } else if version.contains("legacy") {
        "legacy backend"
    } else {
        "backend unknown"
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The cross-check cell of `variant`'s row, and how many of its runs disagreed.
fn check_cell(variant: Variant, runs: &BTreeMap<usize, &Sample>) -> (String, usize) {
    let wrong: Vec<String> = runs
        .iter()
        .flat_map(|(round, s)| {
            s.check.mismatches().into_iter().map(move |m| format!("round {}: {m}", round + 1))
        })
        .collect();
    if !wrong.is_empty() {
        return (format!("**{}**", wrong.join("; ")), wrong.len());
    }
    let filter = runs.values().next().map_or("", |s| {
        match (s.check.filter.is_some(), variant.native_xdp()) {
            (true, true) => "filter = veth XDP drops = processed",
            (true, false) => "filter = processed",
            (false, true) => "veth XDP drops = processed",
            (false, false) => "socket = processed",
        }
    });
    let socket = if variant.delivers() { "all reached the socket" } else { "0 reached the socket" };
    (format!("ok ({filter}; {socket})"), 0)
}

/// The program's run time from the kernel's statistics, median (IQR); `–` for a filter
/// that is not an XDP program.
fn program_cell(runs: &BTreeMap<usize, &Sample>) -> String {
    let ns: Vec<f64> = runs.values().filter_map(|s| s.program_ns).collect();
    Summary::of(&ns).map_or("–".to_owned(), |s| s.cell(1))
}

/// A summary row of the ratio `num ÷ den` of ns/packet per round, or "not measured".
fn ratio_row(
    samples: &Samples,
    metric: &str,
    (num, den): (Variant, Variant),
    target: (String, &dyn Fn(f64) -> bool),
) -> SummaryRow {
    let (target, met) = target;
    match Summary::of(&ratios(samples, num, den)) {
        Some(s) => SummaryRow::new(
            metric,
            format!("{}× (n={})", s.cell(2), s.n),
            target.clone(),
            if target.is_empty() { Mark::Info } else { Mark::of(met(s.median)) },
        ),
        None => SummaryRow::new(
            metric,
            "not measured",
            target.clone(),
            if target.is_empty() { Mark::Info } else { Mark::Missed },
        ),
    }
}

fn report(
    opts: &Opts,
    plan: &Plan,
    reps: usize,
    iptables: &str,
    samples: &Samples,
    paced: &Samples,
    failures: &[String],
) -> Result<Section> {
    let all = || samples.values().flatten().map(|(_, s)| s);
    let gen_rate = Summary::of(&all().map(|s| s.generated_mpps).collect::<Vec<_>>());
    let fifo = all().chain(paced.values().flatten().map(|(_, s)| s)).all(|s| s.fifo);
    let mut table = Table::new(&[
        "variant",
        "ns/pkt, median (IQR)",
        "× XDP_DROP floor",
        "program ns/run (bpf_stats)",
        "Mpps dropped",
        "packets processed (window, median)",
        "NAPI busy",
        "counter cross-check",
        "n",
    ]);
    let mut bars = Vec::new();
    let mut mismatches = 0;
    for variant in Variant::ALL {
        let label = match variant {
            Variant::Iptables => format!("{} ({})", variant.label(), iptables_backend(iptables)),
            _ => variant.label().to_owned(),
        };
        let runs = by_round(samples, variant);
        let ns: Vec<f64> = runs.values().map(|s| s.ns_per_packet).collect();
        let Some(ns_summary) = Summary::of(&ns) else {
            let mut cells = vec![label, "failed".into()];
            cells.extend(std::iter::repeat_n(String::new(), 6));
            cells.push("0".into());
            table.row(&cells);
            continue;
        };
        bars.push((label.clone(), ns_summary));
        let floor = Summary::of(&ratios(samples, variant, Variant::XdpDrop))
            .map_or("–".to_owned(), |s| format!("{}×", s.cell(2)));
        let mpps = Summary::of(&runs.values().map(|s| s.processed_mpps).collect::<Vec<_>>())
            .map_or("–".to_owned(), |s| {
                if variant.delivers() {
                    format!("0 ({:.2} delivered)", s.median)
                } else {
                    s.cell(2)
                }
            });
        let window =
            Summary::of(&runs.values().map(|s| s.window_packets as f64).collect::<Vec<_>>())
                .map_or("–".to_owned(), |s| thousands(s.median as u64));
        let busy = Summary::of(&runs.values().map(|s| 100.0 * s.napi_busy).collect::<Vec<_>>())
            .map_or("–".to_owned(), |s| format!("{:.0} %", s.median));
        let (check, wrong) = check_cell(variant, &runs);
        mismatches += wrong;
        table.row(&[
            label,
            ns_summary.cell(1),
            floor,
            program_cell(&runs),
            mpps,
            window,
            busy,
            check,
            ns.len().to_string(),
        ]);
    }

    let mut paced_table = Table::new(&[
        "variant",
        "NAPI ns/pkt, median (IQR)",
        "× XDP_DROP floor",
        "program ns/run (bpf_stats)",
        "offered Mpps",
        "processed Mpps",
        "NAPI busy",
        "counter cross-check",
        "n",
    ]);
    for variant in PACED {
        let runs = by_round(paced, variant);
        let ns: Vec<f64> = runs.values().map(|s| s.ns_per_packet).collect();
        let Some(ns_summary) = Summary::of(&ns) else {
            let mut cells = vec![variant.label().to_owned(), "failed".into()];
            cells.extend(std::iter::repeat_n(String::new(), 6));
            cells.push("0".into());
            paced_table.row(&cells);
            continue;
        };
        let floor = Summary::of(&ratios(paced, variant, Variant::XdpDrop))
            .map_or("–".to_owned(), |s| format!("{}×", s.cell(2)));
        let median = |f: &dyn Fn(&Sample) -> f64| {
            Summary::of(&runs.values().map(|s| f(s)).collect::<Vec<_>>())
        };
        let offered = median(&|s| s.generated_mpps).map_or("–".to_owned(), |s| s.cell(2));
        let processed = median(&|s| s.processed_mpps).map_or("–".to_owned(), |s| s.cell(2));
        let busy = median(&|s| 100.0 * s.napi_busy)
            .map_or("–".to_owned(), |s| format!("{:.0} %", s.median));
        let (check, wrong) = check_cell(variant, &runs);
        mismatches += wrong;
        paced_table.row(&[
            variant.label().to_owned(),
            ns_summary.cell(1),
            floor,
            program_cell(&runs),
            offered,
            processed,
            busy,
            check,
            ns.len().to_string(),
        ]);
    }

    let (plot_path, plot_link) = opts.plot_path("drop-rate");
    plot::bars(
        &plot_path,
        "Drop cost on veth (NAPI thread CPU time per packet)",
        "ns per packet (median, IQR)",
        &bars,
    )?;

    let mut summary = vec![
        ratio_row(
            samples,
            "drop: xdp-policy native port-only ÷ XDP_DROP floor (ns/pkt)",
            (Variant::PolicyPortNative, Variant::XdpDrop),
            (format!("≤ {TARGET_FLOOR_RATIO:.2}×"), &|r| r <= TARGET_FLOOR_RATIO),
        ),
        ratio_row(
            samples,
            "drop: iptables raw ÷ xdp-policy native port-only (ns/pkt)",
            (Variant::Iptables, Variant::PolicyPortNative),
            (format!("≥ {TARGET_IPTABLES_RATIO:.1}×"), &|r| r >= TARGET_IPTABLES_RATIO),
        ),
        ratio_row(
            samples,
            "drop: xdp-policy native port-only ÷ limit (ns/pkt)",
            (Variant::PolicyPortNative, Variant::LimitNative),
            (String::new(), &|_| true),
        ),
    ];
    for (variant, what) in [
        (Variant::PolicyPortNative, "xdp-policy native port-only"),
        (Variant::PolicyManyNative, "xdp-policy native 1,000 rules"),
        (Variant::PolicyLimitNative, "xdp-policy native limit rule (over its rate)"),
        (Variant::PolicyPortSkb, "xdp-policy skb port-only"),
        (Variant::LimitNative, "limit: minimal port filter, native"),
        (Variant::XdpDrop, "XDP_DROP floor"),
    ] {
        let ns: Vec<f64> = by_round(samples, variant).values().map(|s| s.ns_per_packet).collect();
        if let Some(s) = Summary::of(&ns) {
            let mpps = 1e3 / s.median;
            summary.push(SummaryRow::new(
                format!("drop: {what}, ns/pkt (one core)"),
                format!("{} (≈ {mpps:.1} Mpps per core)", s.cell(1)),
                "",
                Mark::Info,
            ));
        }
    }
    if let Some(s) =
        Summary::of(&ratios(samples, Variant::PolicyManyNative, Variant::PolicyPortNative))
    {
        summary.push(SummaryRow::new(
            "drop: xdp-policy 1,000 rules ÷ port-only (native)",
            format!("{}×", s.cell(2)),
            "",
            Mark::Info,
        ));
    }
    for (variant, what) in [
        (Variant::LimitNative, "limit: minimal port filter"),
        (Variant::XdpFilterUdp, "xdp-filter udp-only"),
        (Variant::XdpDrop, "XDP_DROP floor"),
        (Variant::PolicyPortNative, "xdp-policy native port-only"),
        (Variant::PolicyManyNative, "xdp-policy native 1,000 rules"),
    ] {
        let ns: Vec<f64> =
            by_round(samples, variant).values().filter_map(|s| s.program_ns).collect();
        if let Some(s) = Summary::of(&ns) {
            summary.push(SummaryRow::new(
                format!("drop: {what}, program ns/run (bpf_stats)"),
                s.cell(1),
                "",
                Mark::Info,
            ));
        }
    }
    let rate = format!("{:.0} Mpps", PACED_RATE / 1e6);
    for (den, what) in [(Variant::LimitNative, "limit"), (Variant::XdpDrop, "XDP_DROP floor")] {
        summary.push(ratio_row(
            paced,
            &format!("drop at {rate}: xdp-policy native port-only ÷ {what} (NAPI ns/pkt)"),
            (Variant::PolicyPortNative, den),
            (String::new(), &|_| true),
        ));
    }
    summary.push(SummaryRow::new(
        "drop: counter cross-check mismatches / failed runs",
        format!("{mismatches} / {}", failures.len()),
        "0 / 0",
        Mark::of(mismatches == 0 && failures.is_empty()),
    ));

    let mut body = String::new();
    let _ = writeln!(
        body,
        "How much CPU each filter spends per dropped packet on the receive side of a veth \
         pair, the traffic coming in as from a NIC.\n\n\
         - **Traffic**: 60-byte UDP/IPv4 frames 198.18.0.1:{src} → 198.18.0.2:{PORT}, sent by \
         BPF_PROG_RUN with live frames of a two-instruction XDP_TX program on veth0 (tx \
         namespace; batch 64), on CPU {gen}{gen_fifo}; the same program is attached to tx's `lo` in \
         generic mode so the runs don't wait for RCU grace periods. Generator rate: {gen_rate} \
         Mpps (median, IQR); what veth1 cannot take is dropped at its ring and not counted.\n\
         - **Receiver**: veth1 (rx namespace) with GRO on and threaded NAPI; its kthread \
         `napi/veth1-*` bound to CPU {napi}{fifo}. IPv6 is off on veth0, so nothing but the \
         generated frames arrives. A UDP socket is bound to port {PORT} in every variant; nothing reads it \
         during the run (without a filter, its buffer fills and the rest count as \
         RcvbufErrors).\n\
         - **Metric**: CPU time of the NAPI thread (`/proc/PID/schedstat`) per packet veth1 \
         processed (`ethtool -S veth1` `{processed}`, which counts every frame taken off the \
         ring, with or without XDP), over a {window:?} window after {warmup:?} of warm-up; \
         \"Mpps dropped\" is the processed packets per wall-clock second in the window (all \
         of them are dropped by the filter, as the cross-check shows). Lower ns/pkt is \
         better; 1000 ÷ ns/pkt is the rate one core sustains. \"NAPI busy\" is the share \
         of the window the NAPI thread ran: below ~90 % the generator did not keep it \
         saturated (a loaded machine slows the generator), so it slept between bursts and \
         ns/pkt includes the cost of waking it.\n\
         - **Program ns/run (bpf_stats)**, XDP filters only: after the NAPI window, the \
         traffic still flowing, `kernel.bpf_stats_enabled` is turned on for another \
         {stats_window:?} (and set back to what it was after), and the kernel's `run_time_ns` \
         and `run_cnt` of the program attached to veth1 (`bpf_prog_info`) are read at its \
         start and end: Δrun_time_ns ÷ Δrun_cnt is the time spent inside the program per \
         packet, without the driver and the ring around it. The statistics add the same \
         overhead to every row (each run is bracketed by two clock reads, part of which the \
         figure includes): XDP_DROP's figure, a program that does nothing, is about that \
         overhead alone, so compare rows by their difference to it. The NAPI figure is \
         measured with the statistics off.\n\
         - **Cross-check** over the whole run (counters read before the generator starts \
         and after the ring drained): the filter's own counter (xdp-policy: `status --json` \
         drop_rule, and all verdicts; xdp-filter: `status` XDP_DROP; iptables/nft: rule \
         counters), veth's XDP drop counter for native XDP, and rx's `/proc/net/snmp` Udp \
         InDatagrams + RcvbufErrors (after reading what waits on the socket) must all equal the processed count (or zero reaching \
         the socket, for the filters).\n\
         - **Variants**: {reps} rounds, each a fresh testbed per variant, in round-robin order \
         rotated every round; ratios to the floor are taken per round against the XDP_DROP \
         measured in the same round, then summarised. iptables: `{iptables}`. nft: a netdev \
         ingress chain on veth1, priority -500, `udp dport {PORT} counter drop`. xdp-filter: \
         `xdp-filter load -m native [-f udp]` + `port -p udp {PORT}`. limit: the minimal \
         port filter of the program-cost section (one bounds check; EtherType, IPv4 without \
         options, UDP; the destination port looked up in a 65,536-entry array; a per-CPU \
         drop counter, which is its count in the cross-check), attached natively with a \
         bpf_link as XDP_DROP is. xdp-policy: the real \
         daemon (`xdp-policy run`), port-only = one UDP drop rule; 1,000 rules = a generated \
         mix of UDP/TCP/any rules with IPv4 and IPv6 source and destination CIDRs, port \
         lists and ranges, passes and drops, the traffic hitting a drop rule at position \
         {hit} (near misses on address and port before it).\n",
        src = generator::SRC_PORT,
        gen = plan.gen_cpu,
        napi = plan.napi_cpu,
        gen_rate = gen_rate.map_or("–".to_owned(), |s| s.cell(1)),
        fifo = if fifo { ", SCHED_FIFO priority 50" } else { " (SCHED_FIFO refused in some runs)" },
        gen_fifo = if fifo {
            " at SCHED_FIFO priority 40 (any pause of the generator longer than the 256-frame \
             ring lasts puts the NAPI thread to sleep, and its cost per packet would then \
             include being woken: so nothing else runs on these two CPUs during the window \
             but the kernel's share for normal tasks)"
        } else {
            ""
        },
        processed = rig::PROCESSED,
        window = plan.window,
        stats_window = plan.stats_window,
        warmup = plan.warmup,
        hit = variants::HIT_RULE + 1,
    );
    body.push_str(&table.render());
    let _ = writeln!(body, "\n![drop cost per packet]({plot_link})");
    let burst = (PACED_RATE * PACE_TICK.as_secs_f64()).round();
    let _ = writeln!(
        body,
        "\n### At {rate} offered, below saturation\n\n\
         Above, the generator offers more than the NAPI thread takes. Then veth's producer \
         (the generator's XDP_TX into veth1's ring, CPU {gen}) and its consumer (the NAPI \
         poll, CPU {napi}) contend on the ring and on the page pool the dropped frames \
         return to, and the longer a program holds each frame, the more of that contention \
         each packet meets: the saturated NAPI figure amplifies differences in program \
         cost. Below saturation it does not. This is the same measurement ({reps} rounds, \
         the same windows), the generator paced to {rate}: BPF_PROG_RUN with repeat \
         {burst:.0} every {tick:?}, sleeping to the next tick on absolute deadlines so that \
         late wake-ups do not add up; each burst fits veth1's 256-frame ring, and {rate} is \
         well below what the slowest of these sustains. The NAPI thread sleeps whenever it \
         empties the ring (between bursts, and between the generator's 64-frame batches \
         within one), so its ns/pkt here includes being woken, a cost every row pays: \
         compare the rows with each other, not with the saturated table. \
         \"offered\" is what the generator sent per second over the whole run, \
         \"processed\" what veth1 took per second in the window.\n",
        gen = plan.gen_cpu,
        napi = plan.napi_cpu,
        tick = PACE_TICK,
    );
    body.push_str(&paced_table.render());
    if !failures.is_empty() {
        let _ = writeln!(body, "\nFailed measurements:\n");
        for failure in failures {
            let _ = writeln!(body, "- {}", failure.replace('\n', " "));
        }
    }
    Ok(Section { title: "Drop rate on veth".into(), body, summary })
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_the_iptables_backend() {
        assert_eq!(super::iptables_backend("iptables v1.8.9 (nf_tables)"), "nft backend");
        assert_eq!(super::iptables_backend("iptables v1.8.9 (legacy)"), "legacy backend");
        assert_eq!(super::iptables_backend("unknown (no iptables)"), "backend unknown");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(12_345_678), "12,345,678");
    }
}
