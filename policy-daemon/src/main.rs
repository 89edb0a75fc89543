//! `xdp-policy`: set up logging, parse the command line, run it.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use policy_daemon::{
    cli::{self, Cli},
    dataplane::error_chain,
};
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let to_journal = init_logging();
    let cli = Cli::parse();
    match cli::execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = error_chain(&e);
            if to_journal {
                tracing::error!("{message}");
            } else {
                eprintln!("xdp-policy: error: {message}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Under systemd, logs go to the journal natively: each event at its priority (ERROR is
/// `err`), its tracing fields as journal fields (`iface` → `IFACE`, `policy` → `POLICY`),
/// and no timestamp of ours beside the journal's. Otherwise to stderr, as text. Returns
/// whether they go to the journal.
fn init_logging() -> bool {
    let on_journal_stream = stderr_is_journal();
    let (journal, unreachable) = match on_journal_stream.then(tracing_journald::layer) {
        Some(Ok(layer)) => {
            (Some(layer.with_field_prefix(None).with_priority_mappings(priorities())), None)
        }
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let stderr = journal.is_none().then(|| {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal());
        // The journal stamps each line it reads from stderr itself.
        if on_journal_stream { layer.without_time().boxed() } else { layer.boxed() }
    });
    let to_journal = journal.is_some();
    tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with(journal)
        .with(stderr)
        .init();
    if let Some(e) = unreachable {
        tracing::warn!("the journal's socket cannot be reached ({e}): logging to stderr");
    }
    to_journal
}

/// syslog's meaning of the levels, as the rest of the journal uses them (the crate's
/// default puts INFO at `notice`).
fn priorities() -> PriorityMappings {
    let mut mappings = PriorityMappings::new();
    mappings.info = Priority::Informational;
    mappings.debug = Priority::Debug;
    mappings
}

/// Whether stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` holds
/// its `DEVICE:INODE` (systemd.exec(5)). A process started with stderr elsewhere (a shell
/// in a unit, a redirection) inherits the variable but not the stream.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    nix::sys::stat::fstat(std::io::stderr())
        .is_ok_and(|stat| names_file(&stream.to_string_lossy(), stat.st_dev, stat.st_ino))
}

/// Whether a `JOURNAL_STREAM` value names the file with this device and inode.
fn names_file(journal_stream: &str, dev: libc::dev_t, ino: libc::ino_t) -> bool {
    journal_stream
        .split_once(':')
        .is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

#[cfg(test)]
mod tests {
    use super::names_file;

    #[test]
    fn journal_stream_names_a_device_and_an_inode() {
        assert!(names_file("8:1234", 8, 1234));
        assert!(!names_file("8:1234", 8, 1235), "another inode");
        assert!(!names_file("9:1234", 8, 1234), "another device");
        for bad in ["", "8", "8:", ":1234", "8:1234:5", "x:1234", "8:12 34"] {
            assert!(!names_file(bad, 8, 1234), "{bad:?}");
        }
    }
}
