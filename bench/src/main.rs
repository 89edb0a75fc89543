//! `cargo xtask bench`: where xdp-policy stands against the floor and the incumbents,
//! measured side by side in one run on this machine.
//!
//! Three benchmarks, each a section of the result file `bench/results/<date>.md`:
//! - `prog`: the program's cost per packet (BPF_PROG_TEST_RUN), against a trivial XDP
//!   program, the minimal port filter (the limit) and xdp-filter, for rule sets from
//!   port-only to 100,000 prefixes;
//! - `drop`: drop rate on a veth pair fed by a live-frames XDP_TX generator, against no
//!   filter, iptables, nftables, xdp-filter, the limit and a trivial XDP_DROP, with the
//!   XDP programs' own run time (bpf_stats), then again at a fixed rate below saturation;
//! - `control`: reload latency, compile and apply times, memory and idle CPU;
//! - `sets`: the cost of a rule naming a set of up to 1,000,000 entries, and of changing
//!   sets (one add, a million-entry load, its memory).
//!
//! The machine's speed drifts, so every figure is a ratio to (or difference from) a
//! baseline measured in the same run, the variants interleaved, with median, IQR and
//! the number of repetitions. Nothing here is a pass/fail test: figures are reported
//! next to their targets.
//!
//! Needs root (namespaces, XDP, BPF_PROG_TEST_RUN). Creates namespaces named
//! `xdpp-<pid>-…` with veth pairs on 198.18.0.0/15 only, and removes them.

mod control;
mod drop_rate;
mod opts;
mod plot;
mod policies;
mod prog_cost;
mod raw;
mod report;
mod sets;
mod stats;
mod xdpfilter;

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};
use opts::{INTERRUPTED, Opts, command_output};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Bench {
    Prog,
    Drop,
    Control,
    Sets,
}

#[derive(Parser)]
#[command(about = "xdp-policy benchmarks: program cost, drop rate, control plane, sets")]
struct Args {
    /// A short pass (fewer repetitions, shorter runs): checks the bench works, not a
    /// result to quote. Writes `<date>-quick.md`.
    #[arg(long)]
    quick: bool,
    /// Run only these benchmarks (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Bench>,
    /// The xdp-policy binary (release build) for the benchmarks that run the daemon.
    #[arg(long, default_value = "target/release/xdp-policy")]
    daemon: PathBuf,
    /// Directory for the result file and its plots.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The result file's name, without `.md` (its plots' names start with it): the date,
    /// or `<date>-quick`, unless given (a second run the same day, say `<date>b`).
    #[arg(long)]
    name: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let flag = INTERRUPTED.get_or_init(Default::default);
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, flag.clone()).context("installing a signal handler")?;
    }
    if !testbed::is_root() {
        bail!("the benchmarks need root (namespaces, XDP, BPF_PROG_TEST_RUN)");
    }
    let benches = if args.only.is_empty() {
        vec![Bench::Prog, Bench::Drop, Bench::Control, Bench::Sets]
    } else {
        args.only.clone()
    };
    let date = command_output("date", &["+%F"])?;
    let stem = match &args.name {
        Some(name) => name.clone(),
        None if args.quick => format!("{date}-quick"),
        None => date.clone(),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let opts =
        Opts { quick: args.quick, daemon: args.daemon.clone(), out_dir: args.out.clone(), stem };
    let conditions = conditions(&opts)?;
    eprintln!("{conditions}\n");

    let mut sections = Vec::new();
    for bench in benches {
        let section = match bench {
            Bench::Prog => prog_cost::run(&opts),
            Bench::Drop => drop_rate::run(&opts),
            Bench::Control => control::run(&opts),
            Bench::Sets => sets::run(&opts),
        }
        .with_context(|| format!("benchmark `{bench:?}`"))?;
        eprintln!("\n{}\n{}", section.title, report::summary_table(std::slice::from_ref(&section)));
        sections.push(section);
    }
    let path = opts.out_dir.join(format!("{}.md", opts.stem));
    let title =
        format!("xdp-policy benchmarks, {date}{}", if opts.quick { " (quick pass)" } else { "" });
    report::write(&path, &title, &conditions, &sections)?;
    println!("{}", report::summary_table(&sections));
    println!("written: {}", path.display());
    Ok(())
}

/// The machine and software the figures come from.
fn conditions(opts: &Opts) -> Result<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':'])))
        .unwrap_or("unknown CPU")
        .to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let kernel = command_output("uname", &["-r"])?;
    let commit = command_output("git", &["describe", "--always", "--dirty"])
        .unwrap_or_else(|_| "unknown".into());
    let xdp_tools = command_output("dpkg-query", &["-W", "-f", "${Version}", "xdp-tools"])
        .unwrap_or_else(|_| "not installed".into());
    // What the kernel does about the CPU's speculation flaws on calls and returns: it
    // sets what a BPF-to-BPF call costs (the prog bench measures one).
    let mitigation = |flaw: &str| {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/vulnerabilities/{flaw}"))
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
    };
    Ok(format!(
        "- Machine: {cpus} vCPU ({model}), kernel {kernel}; a shared VM whose speed drifts, so \
         every figure is compared with a baseline measured in the same run, interleaved.\n\
         - The kernel on calls and returns: spectre_v2 \"{spectre_v2}\", spec_rstack_overflow \
         \"{srso}\", retbleed \"{retbleed}\".\n\
         - xdp-policy {version} at commit {commit}, release build; xdp-filter from Debian's \
         xdp-tools {xdp_tools}.\n\
         - Run: `cargo xtask bench{quick}`.",
        version = env!("CARGO_PKG_VERSION"),
        spectre_v2 = mitigation("spectre_v2"),
        srso = mitigation("spec_rstack_overflow"),
        retbleed = mitigation("retbleed"),
        quick = if opts.quick { " --quick" } else { "" },
    ))
}
