//! `cargo xtask fuzz`: runs the libFuzzer targets of `policy-daemon/fuzz` through
//! cargo-fuzz on the nightly toolchain, each for a fixed time, and fails on any crash,
//! panic, timeout or out-of-memory report.
//!
//! New inputs go to a scratch corpus under the fuzz target dir; the committed,
//! minimised corpus (`policy-daemon/fuzz/corpus/<target>/`) is only read, so a run never
//! changes the worktree. A failing input lands in `policy-daemon/fuzz/artifacts/<target>/`.
//! `policy-daemon/fuzz/dict/<target>.dict`, when there is one, is the target's
//! libFuzzer dictionary.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    build::workspace_root,
    setup::{Toolchain, run_cmd},
};

/// Every target, in the order they run.
pub const TARGETS: [&str; 4] = ["policy", "config", "state", "reference_parser"];
/// An input that takes longer than this is reported as a hang.
const TIMEOUT_SECONDS: u32 = 5;
/// libFuzzer's own memory limit per run.
const RSS_LIMIT_MB: u32 = 4096;
/// Log lines shown when a target fails (the whole log stays on disk).
const FAILURE_TAIL: usize = 40;

pub fn fuzz_dir() -> PathBuf {
    workspace_root().join("policy-daemon").join("fuzz")
}

/// `cargo fuzz <subcommand>` on the nightly toolchain, with the build flags every run
/// shares: release with debug assertions and overflow checks (an overflow is a bug to
/// find), and no sanitizer: the code under test is safe Rust, what is looked for is
/// panics, hangs and stack overflows, and without ASan a run executes about twice the
/// inputs.
fn cargo_fuzz(toolchain: &Toolchain, subcommand: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(fuzz_dir()).args(["run", &toolchain.name, "cargo", "fuzz", subcommand]).args([
        "--release",
        "--debug-assertions",
        "--sanitizer",
        "none",
    ]);
    // Set by the outer (stable) cargo; they would point the nightly build at stable tools.
    for var in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER", "RUSTUP_TOOLCHAIN", "CARGO", "RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    cmd
}

/// What libFuzzer said about one run.
struct Stats {
    executions: u64,
    seconds: u64,
}

pub fn run(toolchain: &Toolchain, seconds: u32, target: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match target {
        Some(name) if TARGETS.contains(&name) => vec![name],
        Some(name) => bail!("no fuzz target `{name}`; the targets are {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    eprintln!("xtask: building the fuzz targets ({})", toolchain.name);
    let mut build = cargo_fuzz(toolchain, "build");
    if let [name] = targets.as_slice() {
        build.arg(name);
    }
    run_cmd(&mut build).context("building the fuzz targets failed")?;
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for name in &targets {
        eprintln!("xtask: fuzzing `{name}` for {seconds} s");
        match run_target(toolchain, name, seconds) {
            Ok(stats) => results.push((name, stats)),
            Err(e) => {
                eprintln!("xtask: fuzz target `{name}` failed: {e:#}");
                failed.push(*name);
            }
        }
    }
    for (name, s) in &results {
        eprintln!(
            "xtask: fuzz {name:<16} {:>10} executions in {} s ({}/s)",
            s.executions,
            s.seconds,
            s.executions / s.seconds.max(1)
        );
    }
    if !failed.is_empty() {
        bail!(
            "fuzzing found a problem in {}; the input is under {}",
            failed.join(", "),
            fuzz_dir().join("artifacts").display()
        );
    }
    Ok(())
}

fn run_target(toolchain: &Toolchain, name: &str, seconds: u32) -> Result<Stats> {
    let dir = fuzz_dir();
    let scratch = dir.join("target").join("corpus").join(name);
    let seeds = dir.join("corpus").join(name);
    // cargo-fuzz writes a failing input to `artifacts/<target>/`.
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    // The format's keywords, so mutations reach past the first unknown key.
    let dict = dir.join("dict").join(format!("{name}.dict"));
    let log = dir.join("target").join(format!("{name}.log"));
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let started = Instant::now();
    let status = cargo_fuzz(toolchain, "run")
        .arg(name)
        // New inputs are written to the first directory only.
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={TIMEOUT_SECONDS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg("-print_final_stats=1")
        .args(dict.exists().then(|| format!("-dict={}", dict.display())))
        .stdout(Stdio::null())
        .stderr(log_file)
        .status()
        .context("could not start cargo fuzz run")?;
    let text = fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let stats = parse_stats(&text, started.elapsed().as_secs());
    let problem = ["deadly signal", "ERROR: libFuzzer", "panicked at", "SUMMARY: libFuzzer"]
        .iter()
        .find(|p| text.contains(*p));
    if !status.success() || problem.is_some() || stats.is_none() {
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(FAILURE_TAIL)..];
        eprintln!("{}", tail.join("\n"));
        bail!(
            "cargo fuzz run {name} exited with {status}{} (whole log: {})",
            problem.map(|p| format!(", log says `{p}`")).unwrap_or_default(),
            log.display()
        );
    }
    stats.context("no final statistics in the log")
}

/// The executions from `-print_final_stats` and the time from libFuzzer's
/// `Done N runs in S second(s)`, or the wall clock when that line is missing.
fn parse_stats(log: &str, wall_seconds: u64) -> Option<Stats> {
    let executions = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))?
        .trim()
        .parse()
        .ok()?;
    let seconds = log
        .lines()
        .find_map(|l| {
            l.strip_prefix("Done ")?.split(" in ").nth(1)?.split(' ').next()?.parse().ok()
        })
        .unwrap_or(wall_seconds);
    Some(Stats { executions, seconds })
}
