//! Commands run with a bound on their time, and Ctrl-C: every wait of the systemd layer
//! polls, so an interrupt or a command that hangs ends in an error, and the guards clean
//! up as the error unwinds.

use std::{
    io::Read as _,
    os::unix::process::CommandExt as _,
    process::{Command, Output, Stdio},
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Set by SIGINT and SIGTERM while [`Interrupts`] lives.
static INTERRUPTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

/// Whether Ctrl-C (or SIGTERM) was received.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Fails once Ctrl-C was received.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// SIGINT and SIGTERM set a flag instead of ending xtask, for as long as this lives, so
/// that the guards run. Commands started here get process groups of their own: a Ctrl-C
/// on the terminal reaches xtask only, which stops them in order.
pub struct Interrupts(Vec<signal_hook::SigId>);

impl Interrupts {
    pub fn catch() -> Result<Self> {
        let mut ids = Vec::new();
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            ids.push(signal_hook::flag::register(signal, Arc::clone(&INTERRUPTED))?);
        }
        Ok(Self(ids))
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        for id in self.0.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Sleeps, but fails at once on Ctrl-C.
pub fn sleep(time: Duration) -> Result<()> {
    let until = Instant::now() + time;
    while Instant::now() < until {
        check_interrupt()?;
        thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
    }
    Ok(())
}

/// Runs `cmd` to its end, in a process group of its own, collecting its output; kills
/// the group if it takes longer than `limit` or on Ctrl-C.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("could not start {what}"))?;
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for {what}"))? {
            break status;
        }
        if interrupted() || Instant::now() >= deadline {
            kill_group(child.id());
            let _ = child.wait();
            check_interrupt()?;
            bail!("{what} did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

/// Runs `cmd` within `limit`; it must succeed. Returns its stdout.
pub fn run_within(cmd: &mut Command, limit: Duration) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = output_within(cmd, limit)?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// SIGKILL to the process group `pgid` (a child started with `process_group(0)`).
pub fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// Sends `signal` (a name: TERM, KILL) to one process.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}
