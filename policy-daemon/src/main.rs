//! `xdp-policy`: set up logging, parse the command line, run it.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use policy_daemon::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli::execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e = anyhow::Error::from(e);
            eprintln!("xdp-policy: error: {e:#}");
            ExitCode::from(e.downcast_ref::<cli::CliError>().map_or(1, cli::CliError::exit_code))
        }
    }
}
