//! `cargo xtask`: the one way xdp-policy is set up, built, tested and demonstrated.
//!
//! The eBPF program is built only here (`build-ebpf`), on the nightly toolchain that
//! `setup` checks; the daemon embeds the object it produced (`policy-daemon/build.rs`).

mod build;
mod fuzz;
mod package;
mod setup;
mod systemd;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "xdp-policy development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the eBPF build and the tests need (idempotent).
    Setup,
    /// Build the eBPF object (bpfel-unknown-none, nightly, -Z build-std=core).
    BuildEbpf,
    /// Build the eBPF object, then the daemon with the object embedded.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// rustfmt check and clippy (userspace and eBPF), warnings denied.
    Lint,
    /// Set up if needed, build, and run every test layer (unit, policies, kernel, veth),
    /// then the package under systemd (`systemd-test`) and a short fuzz run of each target
    /// (these two unless test arguments are given).
    Test {
        /// Extra arguments for `cargo test` (a test name filter, `--nocapture`, …).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz the policy parser and compiler, the configuration parser and the reference
    /// packet parser (libFuzzer, nightly); fails on any crash, panic, hang or OOM.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Run only this target (policy, config, reference_parser).
        #[arg(long)]
        target: Option<String>,
    },
    /// Run xdp-policy between two throw-away network namespaces with real traffic.
    Demo,
    /// Benchmarks: per-packet program cost, drop rate on veth, control plane, against a
    /// baseline and xdp-filter, iptables and nftables; writes bench/results/<date>.md.
    Bench {
        /// Arguments for the bench (`--quick`, `--only prog,drop,control,sets`, `--help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the Debian package, then install and run it on a booted Debian 12 under its
    /// real systemd 252 (debootstrap, systemd-nspawn), checked against the journal and the
    /// wire; purge it. Needs root. `cargo xtask test` ends with this layer.
    SystemdTest,
    /// The systemd layer's listener, run by it inside the container's network namespace.
    #[command(hide = true)]
    SystemdTestListen {
        #[arg(long = "port")]
        ports: Vec<u16>,
    },
    /// Build the Debian package (release build, eBPF object embedded); print its path.
    Package {
        /// Then, as root, install it on this machine, check it, and purge it again.
        #[arg(long)]
        verify: bool,
    },
}

/// Seconds each fuzz target runs at the end of `cargo xtask test`.
const TEST_FUZZ_SECONDS: u32 = 20;

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Setup => setup::run().map(drop),
        Command::BuildEbpf => {
            let toolchain = setup::ensure()?;
            build::ebpf(&toolchain).map(drop)
        }
        Command::Build { release } => {
            let toolchain = setup::ensure()?;
            build::daemon(&toolchain, release).map(drop)
        }
        Command::Lint => {
            let toolchain = setup::ensure()?;
            build::lint(&toolchain)
        }
        Command::Test { args } => {
            let toolchain = setup::ensure()?;
            build::test(&toolchain, &args)?;
            // The whole suite ends with the package booted under systemd and a short fuzz
            // run; a filtered run (test names, flags) is about those tests only.
            if args.is_empty() {
                systemd_layer(&toolchain)?;
                setup::ensure_fuzzing()?;
                fuzz::run(&toolchain, TEST_FUZZ_SECONDS, None)?;
            }
            Ok(())
        }
        Command::Fuzz { seconds, target } => {
            let toolchain = setup::ensure()?;
            setup::ensure_fuzzing()?;
            fuzz::run(&toolchain, seconds, target.as_deref())
        }
        Command::Demo => {
            let toolchain = setup::ensure()?;
            build::demo(&toolchain)
        }
        Command::Bench { args } => {
            let toolchain = setup::ensure()?;
            setup::ensure_bench()?;
            build::bench(&toolchain, &args)
        }
        Command::SystemdTest => {
            let toolchain = setup::ensure()?;
            let deb = package::build(&toolchain)?;
            systemd::test(&deb, &package::build_previous_layout()?)
        }
        Command::SystemdTestListen { ports } => systemd::wire::listen(&ports),
        Command::Package { verify } => {
            let toolchain = setup::ensure()?;
            let deb = package::build(&toolchain)?;
            println!("{}", deb.display());
            if verify { package::verify(&deb) } else { Ok(()) }
        }
    }
}

/// The systemd layer within `test`: it boots a container, so it needs root, which only CI
/// insists on (a privileged test never skips there).
fn systemd_layer(toolchain: &setup::Toolchain) -> Result<()> {
    if !setup::is_root() && std::env::var_os("CI").is_none() {
        eprintln!(
            "xtask: skipping the systemd layer (systemd-test): it boots a container, run as root"
        );
        return Ok(());
    }
    let deb = package::build(toolchain)?;
    systemd::test(&deb, &package::build_previous_layout()?)
}
