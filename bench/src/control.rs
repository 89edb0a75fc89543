//! The control plane: how long a policy takes from file to enforcement, what it costs to
//! compile and apply, and what the daemon costs when nothing happens.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use policy_daemon::{
    dataplane::Dataplane,
    policy::{self, Ruleset},
};
use testbed::{Testbed, XdpMode, rss_kib, save_by_rename};

use crate::{
    opts::Opts,
    policies,
    report::{Mark, Section, SummaryRow, Table},
    stats::{Summary, percentile},
};

const RULES_TARGET_MS: f64 = 5.0;
const PREFIXES_TARGET_MS: f64 = 30.0;
const RELOAD_TARGET_MS: f64 = 100.0;
/// Time between timed applies (see `compile_and_apply`).
const GAP_BETWEEN_APPLIES: Duration = Duration::from_millis(100);
const PORT_A: u16 = 7001;
const PORT_B: u16 = 7002;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A policy of the given size, three different versions of it (so every apply really
/// rewrites the generation it goes into).
struct Workload {
    label: String,
    versions: [String; 3],
    target_ms: Option<f64>,
}

fn workloads(quick: bool) -> Vec<Workload> {
    let rules = |n: usize, target| Workload {
        label: format!("{n} mixed rules"),
        versions: [2, 12, 22].map(|seed| policies::mixed_seeded(n, seed)),
        target_ms: target,
    };
    let prefixes = |n: usize, target| Workload {
        label: format!("{n} IPv4 prefixes"),
        versions: [3, 13, 23].map(|seed| policies::prefixes_seeded(n, seed)),
        target_ms: target,
    };
    let mut all = vec![
        rules(10, None),
        rules(1024, Some(RULES_TARGET_MS)),
        prefixes(1000, None),
        prefixes(65_536, Some(PREFIXES_TARGET_MS)),
    ];
    if !quick {
        all.push(prefixes(1 << 20, None));
    }
    all
}

fn parse(text: &str) -> Result<policy::Policy> {
    policy::parse([(Path::new("bench.toml"), text)]).map_err(|e| anyhow!("{e}"))
}

/// Times parse, compile and apply of each workload; the apply goes into the inactive
/// generation of a loaded (unattached) program, which held another version before.
fn compile_and_apply(opts: &Opts) -> Result<(String, Vec<SummaryRow>)> {
    let mut table = Table::new(&[
        "policy",
        "parse (ms)",
        "compile (ms)",
        "apply (ms)",
        "map writes per apply",
        "reps",
    ]);
    let mut summary = Vec::new();
    for workload in workloads(opts.quick) {
        eprintln!("control: {}", workload.label);
        crate::opts::check_interrupted()?;
        let reps =
            if workload.label.starts_with("1048576") { opts.reps(3, 1) } else { opts.reps(7, 2) };
        let (mut parse_ms, mut compile_ms, mut apply_ms) = (Vec::new(), Vec::new(), Vec::new());
        let mut rulesets: Vec<Ruleset> = Vec::new();
        for text in &workload.versions {
            let start = Instant::now();
            let policy = parse(text).with_context(|| format!("parsing {}", workload.label))?;
            parse_ms.push(ms(start.elapsed()));
            let start = Instant::now();
            rulesets.push(policy::compile(&policy));
            compile_ms.push(ms(start.elapsed()));
        }
        let empty = policy::compile(&parse("")?);
        let mut dataplane = Dataplane::load(&empty).context("loading the program")?;
        // Fill both generations first, so each timed apply replaces a full one.
        dataplane.apply(&rulesets[0])?;
        dataplane.apply(&rulesets[1])?;
        let mut writes = Vec::new();
        for rep in 0..reps {
            let ruleset = &rulesets[(rep + 2) % 3];
            // As a reload would find it: the grace period the previous apply started
            // has ended (reloads are at least the watcher's 25 ms debounce apart).
            std::thread::sleep(GAP_BETWEEN_APPLIES);
            let start = Instant::now();
            let report = dataplane.apply(ruleset).context("applying")?;
            apply_ms.push(ms(start.elapsed()));
            writes.push(report.writes as f64);
        }
        let (p, c, a) = (
            Summary::of(&parse_ms).expect("parsed"),
            Summary::of(&compile_ms).expect("compiled"),
            Summary::of(&apply_ms).expect("applied"),
        );
        table.row(&[
            workload.label.clone(),
            p.cell(1),
            c.cell(1),
            format!("**{}**", a.cell(2)),
            format!("{:.0}", Summary::of(&writes).expect("applied").median),
            format!("{} / {}", parse_ms.len(), apply_ms.len()),
        ]);
        summary.push(SummaryRow::new(
            format!("apply {} (ms; parse + compile {:.1})", workload.label, p.median + c.median),
            a.cell(2),
            workload.target_ms.map(|t| format!("< {t:.0} ms")).unwrap_or_default(),
            workload.target_ms.map(|t| Mark::of(a.median < t)).unwrap_or(Mark::Info),
        ));
    }
    let body = format!(
        "Parse and compile in the daemon's library code, apply into a loaded program's \
         inactive generation (writes of every entry that differs, then the flip of \
         `ACTIVE`; the RCU grace period after the flip runs on in the background and only \
         an apply that follows within it waits for it, 10–25 ms here), each {} ms after \
         the previous one. Three versions of each policy rotate, so each apply replaces \
         what the generation held. Median (IQR) in ms.\n\n{}",
        GAP_BETWEEN_APPLIES.as_millis(),
        table.render()
    );
    Ok((body, summary))
}

/// A policy blocking UDP to `port`.
fn blocking(port: u16) -> String {
    format!(
        "[[rule]]\nname = \"block\"\naction = \"drop\"\nprotocol = \"udp\"\ndst_ports = [{port}]\n"
    )
}

/// User + system CPU time of a process.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).context("malformed stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis(ticks * 1000 / hz))
}

/// Reload latency on the wire, memory, idle CPU: the real daemon in a veth testbed.
fn daemon(opts: &Opts) -> Result<(String, Vec<SummaryRow>)> {
    let dir = tempfile::Builder::new().prefix("xdpp-bench-").tempdir()?;
    let policy = dir.path().join("policy.toml");
    fs::write(&policy, blocking(PORT_A))?;
    let testbed = Testbed::new().context("creating the bench namespaces")?;
    let daemon = testbed
        .start_daemon(&opts.daemon, &policy, XdpMode::Native)
        .context("starting the daemon")?;

    // Idle: no traffic, no changes.
    std::thread::sleep(Duration::from_millis(500));
    let idle_secs = if opts.quick { 3 } else { 10 };
    let before = cpu_time(daemon.pid())?;
    std::thread::sleep(Duration::from_secs(idle_secs));
    let idle_cpu = cpu_time(daemon.pid())? - before;
    let rss_idle = rss_kib(daemon.pid())?;

    // Reloads: every `period`, the policy flips between blocking A and blocking B, while
    // datagrams go to A and B alternately every 100 µs. After a flip to B, the last
    // datagram to B that still arrived tells when the new policy was enforced.
    let reloads = opts.reps(50, 10);
    let period = Duration::from_millis(300);
    let mut saved = Vec::with_capacity(reloads);
    let mut error = None;
    let result = testbed.udp_stream(
        [PORT_A, PORT_B],
        period * (reloads as u32 + 2),
        Duration::from_micros(100),
        |start| {
            for i in 0..reloads {
                std::thread::sleep(period);
                if let Err(e) = crate::opts::check_interrupted() {
                    error = Some(e);
                    return;
                }
                let port = if i % 2 == 0 { PORT_B } else { PORT_A };
                let at = start.elapsed();
                if let Err(e) =
                    save_by_rename(&policy, &blocking(port)).map_err(anyhow::Error::from)
                {
                    error = Some(e);
                    return;
                }
                saved.push((at, port));
            }
        },
    )?;
    if let Some(e) = error {
        return Err(e);
    }
    daemon
        .wait_for_log("policy applied", reloads + 1, Duration::from_secs(5))
        .context("waiting for the reloads")?;
    let mut latencies = Vec::new();
    let mut unmeasured = 0;
    for (i, (at, port)) in saved.iter().enumerate() {
        let until = saved.get(i + 1).map(|(t, _)| *t).unwrap_or(Duration::MAX);
        let arrivals = &result.arrivals[if *port == PORT_A { 0 } else { 1 }];
        match arrivals.iter().filter(|t| **t >= *at && **t < until).max() {
            Some(last) => latencies.push(ms(*last - *at)),
            // Not one datagram to the port arrived after the save: the stream stalled
            // (a 25 ms debounce leaves time for dozens); not a latency.
            None => unmeasured += 1,
        }
    }

    // Memory with a 100,000-network block list.
    let applied = daemon.log().matches("policy applied").count();
    save_by_rename(&policy, &policies::prefixes(100_000))?;
    daemon
        .wait_for_log("policy applied", applied + 1, Duration::from_secs(30))
        .context("waiting for the 100,000-prefix policy")?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_100k = rss_kib(daemon.pid())?;
    drop(daemon);
    drop(testbed);

    let lat = Summary::of(&latencies).context("no reloads")?;
    let p99 = percentile(&latencies, 99.0).unwrap_or(f64::NAN);
    let mut table = Table::new(&["figure", "value"]);
    table.row(&[
        format!(
            "rename → enforced on the wire, {} of {reloads} reloads measured (ms)",
            reloads - unmeasured
        ),
        format!(
            "median {:.1}, IQR {:.1}–{:.1}, p99 {p99:.1}, max {:.1}",
            lat.median,
            lat.q1,
            lat.q3,
            latencies.iter().copied().fold(0.0, f64::max)
        ),
    ]);
    table.row(&["daemon RSS, idle, one rule".into(), format!("{rss_idle} KiB")]);
    table.row(&["daemon RSS, 100,000-prefix policy applied".into(), format!("{rss_100k} KiB")]);
    table.row(&[
        format!("daemon CPU time while idle for {idle_secs} s"),
        format!("{} ms", idle_cpu.as_millis()),
    ]);
    let body = format!(
        "The release daemon (`xdp-policy run`, native mode) in a veth testbed. Reloads: the \
         policy file is replaced by rename (as editors and config management do) every \
         {} ms, alternately blocking UDP port {PORT_A} and {PORT_B}, while datagrams go to \
         both ports alternately every 100 µs; the latency of a reload is the time from the \
         rename to the last datagram to the newly blocked port that still arrived (the \
         watcher debounces changes for 25 ms). Memory is VmRSS; idle CPU is utime + stime \
         from /proc over the idle period.\n\n{}",
        period.as_millis(),
        table.render()
    );
    let summary = vec![
        SummaryRow::new(
            format!("rename → enforced, median / p99 over {reloads} reloads (ms)"),
            format!("{:.1} / {p99:.1}", lat.median),
            format!("< {RELOAD_TARGET_MS:.0} ms"),
            Mark::of(p99 < RELOAD_TARGET_MS),
        ),
        SummaryRow::new(
            "daemon RSS idle / with 100,000 prefixes",
            format!("{:.1} MiB / {:.1} MiB", rss_idle as f64 / 1024.0, rss_100k as f64 / 1024.0),
            "",
            Mark::Info,
        ),
        SummaryRow::new(
            format!("daemon CPU while idle ({idle_secs} s)"),
            format!("{} ms", idle_cpu.as_millis()),
            "zero",
            Mark::of(idle_cpu.is_zero()),
        ),
    ];
    Ok((body, summary))
}

pub fn run(opts: &Opts) -> Result<Section> {
    let (apply_body, mut summary) = compile_and_apply(opts)?;
    let (daemon_body, daemon_summary) = daemon(opts)?;
    summary.extend(daemon_summary);
    Ok(Section {
        title: "Control plane".into(),
        body: format!("### Compile and apply\n\n{apply_body}\n\n### The daemon\n\n{daemon_body}"),
        summary,
    })
}
