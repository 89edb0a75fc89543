//! What every benchmark shares: the options of the run, the interrupt flag, and small
//! helpers for the host. `main.rs` fills them in; the benchmarks only read them.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

/// What every benchmark gets: how long to run, and where its plots go.
pub struct Opts {
    pub quick: bool,
    pub daemon: PathBuf,
    pub out_dir: PathBuf,
    /// File-name stem of this run (`2026-11-27` or `2026-11-27-quick`).
    pub stem: String,
}

impl Opts {
    /// Repetitions: `full` normally, `quick` with `--quick`.
    pub fn reps(&self, full: usize, quick: usize) -> usize {
        if self.quick { quick } else { full }
    }

    /// Where plot `name` goes, and the link to it from the result file.
    pub fn plot_path(&self, name: &str) -> (PathBuf, String) {
        let file = format!("{}-{name}.png", self.stem);
        (self.out_dir.join(&file), file)
    }
}

/// Set by SIGINT or SIGTERM: the benchmarks stop at their next measurement and their
/// guards remove what they created.
pub static INTERRUPTED: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::OnceLock::new();

/// Fails once the bench was interrupted; called between measurements.
pub fn check_interrupted() -> Result<()> {
    match INTERRUPTED.get() {
        Some(flag) if flag.load(std::sync::atomic::Ordering::Relaxed) => bail!("interrupted"),
        _ => Ok(()),
    }
}

/// Binds `pid` (0: the calling thread) to `cpu`.
pub fn pin_to_cpu(pid: u32, cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu} is out of range"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid as i32), &set)
        .with_context(|| format!("binding thread {pid} to CPU {cpu}"))
}

pub fn command_output(program: &str, args: &[&str]) -> Result<String> {
    let output =
        Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
