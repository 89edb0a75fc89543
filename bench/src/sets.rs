//! Named sets: the per-packet cost of a rule naming a set of 1,000 to 1,000,000 entries
//! (BPF_PROG_TEST_RUN) against the same rule on plain networks, and what changing a set
//! costs: one run-time add (in the library, and `xdp-policy set add` as a command on a
//! running daemon's pins), replacing 1,000,000 mixed entries (time, the kernel's memory
//! for the map, the command's peak RSS) and 65,536 prefixes.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    path::Path,
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use policy_common::xdp_action::{XDP_DROP, XDP_PASS};
use policy_daemon::{
    dataplane::{
        Dataplane,
        sets::{self, SetInfo},
    },
    packet::{Packet, udp},
    policy,
};
use testbed::{Testbed, XdpMode};

use crate::{
    opts::Opts,
    plot::{self, Series},
    policies::{HIT_PORT, HIT_V4, HIT_V6, Lcg, MISS_V4, MISS_V6, v4_networks},
    prog_cost::{PinnedToLastCpu, attach_to_own_veth},
    raw,
    report::{Mark, Section, SummaryRow, Table},
    stats::Summary,
};

const COST_TARGET_NS: f64 = 30.0;
const ADD_TARGET_MS: f64 = 5.0;
const ADD_RATE_TARGET: f64 = 10_000.0;
const LOAD_TARGET_MS: f64 = 1000.0;
const KERNEL_TARGET_MIB: f64 = 64.0;
const RSS_TARGET_MIB: f64 = 32.0;
const PREFIXES_TARGET_MS: f64 = 30.0;
const BIG: usize = 1_000_000;

const SET_POLICY: &str = "[[set]]\nname = \"blocklist\"\nmax_entries = 4_000_000\n\n\
    [[rule]]\nname = \"drop-blocklist\"\naction = \"drop\"\nsrc = \"@blocklist\"\n";

fn plain_policy() -> String {
    format!(
        "[[rule]]\nname = \"drop-hosts\"\naction = \"drop\"\nsrc = [\"{HIT_V4}\", \"{HIT_V6}\"]\n"
    )
}

/// `count` distinct entries, half IPv4 networks (/16 to /32, outside 198.18.0.0/15),
/// half IPv6 (/48 to /128 inside fd00:1::/32), none holding a probe's address.
pub fn entries(count: usize, seed: u64) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = v4_networks(count / 2, seed)
        .iter()
        .map(|n| IpNet::V4(n.parse::<Ipv4Net>().expect("generated")))
        .collect();
    let mut rng = Lcg::new(seed ^ 0x5eed);
    let mut seen = std::collections::HashSet::new();
    while out.len() < count {
        let len = [48u8, 56, 64, 128][rng.below(4) as usize];
        let words = [
            0xfd00,
            1,
            rng.next() as u16,
            rng.next() as u16,
            rng.next() as u16,
            0,
            0,
            rng.next() as u16,
        ];
        let net = Ipv6Net::new(Ipv6Addr::from(words), len).expect("a length").trunc();
        if seen.insert(net) {
            out.push(IpNet::V6(net));
        }
    }
    out
}

fn info(policy: &policy::Policy) -> SetInfo {
    let s = &policy.sets[0];
    SetInfo { name: s.name.clone(), id: s.id, max_entries: s.max_entries, timeout: s.timeout }
}

fn load(text: &str) -> Result<(policy::Policy, Dataplane)> {
    let policy = policy::parse([(Path::new("bench.toml"), text)]).map_err(|e| anyhow!("{e}"))?;
    let dataplane = Dataplane::load(&policy::compile(&policy)).context("loading the program")?;
    Ok((policy, dataplane))
}

/// The kernel's accounting of a map's memory (`memlock` in its fdinfo), in MiB.
fn map_mib(fd: std::os::fd::BorrowedFd<'_>) -> Result<f64> {
    use std::os::fd::AsRawFd as _;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    let bytes: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("memlock:")?.trim().parse().ok())
        .context("no memlock in the map's fdinfo")?;
    Ok(bytes / (1024.0 * 1024.0))
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

pub fn run(opts: &Opts) -> Result<Section> {
    let sizes: &[usize] =
        if opts.quick { &[1_000, 10_000] } else { &[1_000, 10_000, 100_000, BIG] };
    let reps = opts.reps(15, 3);
    let repeat: u32 = if opts.quick { 20_000 } else { 200_000 };
    let mut summary = Vec::new();
    let mut body = String::new();

    // --- Changing a set (library) ---
    eprintln!("sets: replacing {BIG} entries");
    let (policy, mut dataplane) = load(SET_POLICY)?;
    let set = info(&policy);
    let big = entries(if opts.quick { 100_000 } else { BIG }, 7);
    let start = Instant::now();
    sets::replace(dataplane.sets(), &set, &big, 0).context("set load")?;
    let load_ms = ms(start);
    let kernel_mib = map_mib(dataplane.sets().data().fd().as_fd())?;
    // The daemon's sweep of that set every 10 s: a full walk (every 60th sweep, or when
    // an entry can have expired), and one that finds nothing can have.
    let ids = [set.id];
    let start = Instant::now();
    dataplane.sweep_sets(&ids, true).context("a full sweep")?;
    let sweep_full_ms = ms(start);
    let start = Instant::now();
    dataplane.sweep_sets(&ids, false).context("a sweep")?;
    let sweep_skip_ms = ms(start);
    let mut add_ms = Vec::new();
    for i in 0..reps.max(20) {
        let net = IpNet::from(std::net::IpAddr::V4(Ipv4Addr::new(198, 19, 200, i as u8)));
        let start = Instant::now();
        sets::add(dataplane.sets(), &set, &[(net, 0)], 0).context("set add")?;
        add_ms.push(ms(start));
    }
    let add = Summary::of(&add_ms).expect("adds");
    drop(dataplane);
    let (policy, mut dataplane) = load(SET_POLICY)?;
    let set = info(&policy);
    let prefixes: Vec<IpNet> =
        entries(2 * 65_536, 11).into_iter().filter(|n| n.addr().is_ipv4()).collect();
    let start = Instant::now();
    sets::replace(dataplane.sets(), &set, &prefixes[..65_536.min(prefixes.len())], 0)?;
    let prefixes_ms = ms(start);
    drop(dataplane);
    let loaded = big.len();
    writeln!(
        body,
        "Changing a set in the library (`dataplane::sets`), the map unattached: replacing the \
         run-time entries of an empty set with {loaded} mixed IPv4/IPv6 networks and hosts took \
         {load_ms:.0} ms, and the map then held {kernel_mib:.1} MiB (the kernel's own accounting, \
         `memlock` in the map's fdinfo); one add into that set {} ms (median of {} adds); 65,536 \
         IPv4 prefixes into an empty set {prefixes_ms:.1} ms. The daemon's sweep of that \
         set (every 10 s): a full walk {sweep_full_ms:.0} ms (every 60th sweep, or when an \
         entry can have expired), {sweep_skip_ms:.3} ms when none can.\n",
        add.cell(3),
        add_ms.len()
    )?;
    summary.push(SummaryRow::new(
        format!("set load, {loaded} entries (ms)"),
        format!("{load_ms:.0}"),
        format!("< {LOAD_TARGET_MS:.0} ms"),
        Mark::of(load_ms < LOAD_TARGET_MS && loaded == BIG),
    ));
    summary.push(SummaryRow::new(
        format!("kernel memory of a {loaded}-entry set (MiB)"),
        format!("{kernel_mib:.1}"),
        format!("≤ {KERNEL_TARGET_MIB:.0} MiB"),
        Mark::of(kernel_mib <= KERNEL_TARGET_MIB && loaded == BIG),
    ));
    summary.push(SummaryRow::new(
        "65,536 prefixes into a set (ms)",
        format!("{prefixes_ms:.1}"),
        format!("< {PREFIXES_TARGET_MS:.0} ms"),
        Mark::of(prefixes_ms < PREFIXES_TARGET_MS),
    ));

    // --- The commands, on a running daemon's pins ---
    let (cli_add, add_rate, cli_load_ms, rss_mib) = commands(opts, &big)?;
    writeln!(
        body,
        "The commands against a running daemon's pins (`{}`): `xdp-policy set add` of one \
         address, from the process's start to its exit (the entry is in force when it exits), \
         {} ms (median of {} runs); `xdp-policy set add` of 1,000 addresses a command, back to \
         back, {add_rate:.0} adds/s; `xdp-policy set load` of a file of {loaded} entries \
         {cli_load_ms:.0} ms with a peak RSS of {rss_mib:.1} MiB.\n",
        opts.daemon.display(),
        cli_add.cell(1),
        reps
    )?;
    summary.push(SummaryRow::new(
        "xdp-policy set add, start to in force (ms)",
        cli_add.cell(1),
        format!("< {ADD_TARGET_MS:.0} ms"),
        Mark::of(cli_add.median < ADD_TARGET_MS),
    ));
    summary.push(SummaryRow::new(
        "xdp-policy set add, 1,000 addresses a command, sustained (adds/s)",
        format!("{add_rate:.0}"),
        format!("≥ {ADD_RATE_TARGET:.0}/s"),
        Mark::of(add_rate >= ADD_RATE_TARGET),
    ));
    summary.push(SummaryRow::new(
        format!("xdp-policy set load of {loaded} entries: peak RSS (MiB)"),
        format!("{rss_mib:.1}"),
        format!("≤ {RSS_TARGET_MIB:.0} MiB"),
        Mark::of(rss_mib <= RSS_TARGET_MIB && loaded == BIG),
    ));

    // --- Per-packet cost ---
    eprintln!("sets: per-packet cost");
    let testbed = Testbed::new().context("creating the bench namespaces")?;
    let probes: Vec<(&str, bool, Vec<u8>)> = vec![
        ("IPv4 hit", true, Packet::ipv4(udp(HIT_PORT)).src(HIT_V4).dst("198.18.0.2").build()),
        ("IPv6 hit", true, Packet::ipv6(udp(HIT_PORT)).src(HIT_V6).dst("fd00::2").build()),
        ("IPv4 miss", false, Packet::ipv4(udp(HIT_PORT)).src(MISS_V4).dst("198.18.0.2").build()),
        ("IPv6 miss", false, Packet::ipv6(udp(HIT_PORT)).src(MISS_V6).dst("fd00::2").build()),
    ];
    let floor = raw::load_constant_xdp(XDP_PASS, "bench_sfloor")?;
    let mut programs: Vec<(String, Option<usize>, Dataplane)> = Vec::new();
    programs.push(("plain networks (no set)".into(), None, load(&plain_policy())?.1));
    for &n in sizes {
        let (policy, mut dataplane) = load(SET_POLICY)?;
        let mut list = entries(n.saturating_sub(2), 100 + n as u64);
        list.push(IpNet::from(HIT_V4.parse::<std::net::IpAddr>()?));
        list.push(IpNet::from(HIT_V6.parse::<std::net::IpAddr>()?));
        sets::replace(dataplane.sets(), &info(&policy), &list, 0)?;
        programs.push((format!("set of {n} entries"), Some(n), dataplane));
    }
    let mut links = vec![attach_to_own_veth(testbed.rx(), "bset0", floor.as_fd(), "floor")?];
    for (i, (name, _, dataplane)) in programs.iter_mut().enumerate() {
        let fd = dataplane.program_fd()?;
        links.push(attach_to_own_veth(testbed.rx(), &format!("bset{}", i + 1), fd, name)?);
    }
    for (name, _, dataplane) in &mut programs {
        for (label, hit, bytes) in &probes {
            let run = raw::TestRun { data: bytes, ctx: None, repeat: 1, flags: 0, batch_size: 0 };
            let (action, _) = raw::test_run(dataplane.program_fd()?, &run)?;
            if action != if *hit { XDP_DROP } else { XDP_PASS } {
                bail!("{name} returned {action} for {label}");
            }
        }
    }
    let pinned = PinnedToLastCpu::new()?;
    // samples[variant][probe]: ns per run above the floor, round by round.
    let mut samples = vec![vec![Vec::with_capacity(reps); probes.len()]; programs.len()];
    for round in 0..reps {
        for (p, (_, _, bytes)) in probes.iter().enumerate() {
            let run = raw::TestRun { data: bytes, ctx: None, repeat, flags: 0, batch_size: 0 };
            let floor_ns = time_run(floor.as_fd(), &run)?;
            let count = programs.len();
            for k in 0..count {
                let v = (k + round) % count;
                let ns = time_run(programs[v].2.program_fd()?, &run)?;
                samples[v][p].push(ns - floor_ns);
            }
        }
        eprint!("\rsets: round {}/{reps}", round + 1);
        crate::opts::check_interrupted()?;
    }
    eprintln!();
    drop(pinned);
    drop(links);
    let overall = |v: usize, pick: &dyn Fn(usize) -> bool| -> Summary {
        let per_round: Vec<f64> = (0..reps)
            .map(|r| {
                let chosen: Vec<usize> = (0..probes.len()).filter(|p| pick(*p)).collect();
                chosen.iter().map(|&p| samples[v][p][r]).sum::<f64>() / chosen.len() as f64
            })
            .collect();
        Summary::of(&per_round).expect("rounds")
    };
    let mut header = vec!["rule", "all packets"];
    header.extend(probes.iter().map(|p| p.0));
    let mut table = Table::new(&header);
    for (v, (name, _, _)) in programs.iter().enumerate() {
        let mut cells = vec![name.clone(), format!("**{}**", overall(v, &|_| true).cell(1))];
        cells.extend(
            (0..probes.len())
                .map(|p| format!("{:+.1}", Summary::of(&samples[v][p]).expect("rounds").median)),
        );
        table.row(&cells);
    }
    writeln!(
        body,
        "Per-packet cost, BPF_PROG_TEST_RUN, {repeat} runs per measurement on one pinned CPU, \
         {reps} rounds; ns per packet above a program that only returns XDP_PASS, measured \
         right before in the same round. One rule dropping the probes' sources: on plain \
         networks (address tables for IPv4, the trie for IPv6), or naming a set that holds \
         them among N mixed IPv4/IPv6 entries. *hit*: the source is in the set (dropped); \
         *miss*: it is not.\n"
    )?;
    body.push_str(&table.render());
    let (png, link) = opts.plot_path("set-cost");
    let set_variants: Vec<usize> =
        (0..programs.len()).filter(|v| programs[*v].1.is_some()).collect();
    let series = |name: &str, hit: bool| Series {
        name: name.into(),
        points: set_variants
            .iter()
            .map(|&v| (programs[v].1.unwrap_or(1) as f64, overall(v, &|p| probes[p].1 == hit)))
            .collect(),
    };
    plot::lines_log_x(
        &png,
        "xdp-policy: cost of a rule naming a set, against the set's size",
        "entries in the set (log scale)",
        "ns per packet above the floor",
        &[series("hit (in the set)", true), series("miss", false)],
    )?;
    body.push_str(&format!("\n![cost against set size]({link})\n"));
    let plain = overall(0, &|_| true).median;
    let worst = set_variants
        .iter()
        .map(|&v| (programs[v].1.unwrap_or(0), overall(v, &|_| true).median - plain))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((n, extra)) = worst {
        summary.push(SummaryRow::new(
            "per-packet cost of a set over plain networks, worst size (ns)",
            format!(
                "{extra:+.1} at {n} entries ({})",
                set_variants
                    .iter()
                    .map(|&v| format!(
                        "{}: {:+.1}",
                        programs[v].1.unwrap_or(0),
                        overall(v, &|_| true).median - plain
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!("≤ +{COST_TARGET_NS:.0} ns, flat to 1M"),
            Mark::of(extra <= COST_TARGET_NS && sizes.contains(&BIG)),
        ));
    }
    drop(testbed);
    Ok(Section { title: "Named sets".into(), body, summary })
}

/// ns per run of `run` on `fd`, timed around the syscall.
fn time_run(fd: std::os::fd::BorrowedFd<'_>, run: &raw::TestRun<'_>) -> Result<f64> {
    let start = Instant::now();
    raw::test_run(fd, run)?;
    Ok(start.elapsed().as_nanos() as f64 / f64::from(run.repeat))
}

/// Times `xdp-policy set add` and `set load` as commands on the pins of a daemon that
/// enforces the set policy on a testbed: (add, adds/s sustained, load ms, load's peak
/// RSS in MiB).
fn commands(opts: &Opts, big: &[IpNet]) -> Result<(Summary, f64, f64, f64)> {
    let testbed = Testbed::new().context("creating the bench namespaces")?;
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("sets.toml");
    std::fs::write(&policy, SET_POLICY)?;
    let daemon =
        testbed.start_daemon(&opts.daemon, &policy, XdpMode::Skb).context("starting the daemon")?;
    let run = |args: &[&str]| -> Result<f64> {
        let start = Instant::now();
        let out = testbed.xdp_policy(&opts.daemon, args)?;
        let took = ms(start);
        if !out.status.success() {
            bail!("xdp-policy {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(took)
    };
    let mut adds = Vec::new();
    for i in 0..opts.reps(15, 3) {
        let addr = format!("198.19.201.{i}");
        adds.push(run(&["set", "add", "blocklist", &addr])?);
    }
    // Sustained: commands of 1,000 addresses each, back to back, as a tool banning at a
    // high rate would batch them.
    let batches = opts.reps(20, 3);
    let started = Instant::now();
    for b in 0..batches {
        let addrs: Vec<String> =
            (0..1000).map(|i| format!("198.19.{}.{}", 100 + 4 * b + i / 250, i % 250)).collect();
        let mut args = vec!["set", "add", "blocklist"];
        args.extend(addrs.iter().map(String::as_str));
        run(&args)?;
    }
    let rate = (batches * 1000) as f64 / started.elapsed().as_secs_f64();
    let file = dir.path().join("big.txt");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
    for net in big {
        writeln!(out, "{net}")?;
    }
    drop(out);
    let (load_ms, rss_kib) = peak_rss_of(
        Command::new(&opts.daemon)
            .args(["set", "load", "blocklist"])
            .arg(&file)
            .args(["--config", "/dev/null", "--pin-dir"])
            .arg(testbed.dirs().pin_dir())
            .arg("--state-dir")
            .arg(testbed.dirs().state_dir()),
    )?;
    drop(daemon.stop()?);
    Ok((Summary::of(&adds).expect("adds"), rate, load_ms, rss_kib as f64 / 1024.0))
}

/// Runs `cmd` to its end; returns how long it took (ms) and its peak RSS (KiB), read
/// from its `VmHWM` while it runs. (getrusage's figure for children counts what a child
/// shares with this process between fork and exec, which is most of this process.)
fn peak_rss_of(cmd: &mut Command) -> Result<(f64, u64)> {
    let start = Instant::now();
    let mut child = cmd.stdout(std::process::Stdio::null()).spawn().context("spawning")?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_path)
            && let Some(kib) = text.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")?.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
            })
        {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    if !status.success() {
        bail!("{cmd:?}: {status}");
    }
    Ok((ms(start), peak))
}
