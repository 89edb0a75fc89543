//! Building: the eBPF object first (nightly, bpfel-unknown-none), then whatever userspace
//! target is asked for, always with `XDP_POLICY_EBPF_OBJECT` naming that object so the
//! daemon embeds exactly what was just built.

use std::{
    env,
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::setup::{Toolchain, run_cmd};

const EBPF_TARGET: &str = "bpfel-unknown-none";
const EBPF_PACKAGE: &str = "policy-ebpf";
/// The environment variable `policy-daemon/build.rs` reads to find the object.
const EBPF_OBJECT_ENV: &str = "XDP_POLICY_EBPF_OBJECT";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// `cargo <subcommand>` for the eBPF crate on the nightly toolchain, with the flags
/// aya-build would pass.
fn ebpf_cargo(toolchain: &Toolchain, subcommand: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace_root())
        .args(["run", &toolchain.name, "cargo", subcommand, "--package", EBPF_PACKAGE])
        .args(["--bins", "--release", "--target", EBPF_TARGET, "-Z", "build-std=core"])
        // A target dir of its own: the nightly build-std artefacts never invalidate the
        // stable userspace ones, and the two builds never wait on each other's lock.
        .arg("--target-dir")
        .arg(ebpf_target_dir());
    // The architecture cfg aya-ebpf needs, and debug info so bpf-linker can emit BTF.
    let rustflags: OsString = [
        format!("--cfg=bpf_target_arch=\"{}\"", env::consts::ARCH),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        // The program's global functions, which the verifier checks once each instead of
        // once per path that calls them (see policy-ebpf/src/classify.rs).
        "-Clink-arg=--export=xdp_policy_sets".into(),
        "-Clink-arg=--export=xdp_policy_limit".into(),
        "-Clink-arg=--export=xdp_policy_v6_class".into(),
        "-Clink-arg=--export=xdp_policy_scan".into(),
        "-Clink-arg=--export=xdp_policy_ipv4".into(),
        "-Clink-arg=--export=xdp_policy_ipv6".into(),
        "-Clink-arg=--export=xdp_policy_tagged".into(),
    ]
    .join("\x1f")
    .into();
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // Set by the outer (stable) cargo; they would point the nightly build at stable tools.
    for var in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER", "RUSTUP_TOOLCHAIN", "CARGO", "RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    cmd
}

fn ebpf_target_dir() -> PathBuf {
    target_dir().join("ebpf")
}

/// Builds the eBPF object and returns its path.
pub fn ebpf(toolchain: &Toolchain) -> Result<PathBuf> {
    eprintln!("xtask: building the eBPF program ({}, {EBPF_TARGET})", toolchain.name);
    run_cmd(&mut ebpf_cargo(toolchain, "build")).context("building the eBPF program failed")?;
    let object = ebpf_target_dir().join(EBPF_TARGET).join("release").join(EBPF_PACKAGE);
    anyhow::ensure!(
        object.exists(),
        "the eBPF build succeeded but {} is missing",
        object.display()
    );
    Ok(object)
}

/// rustfmt over the workspace, clippy over userspace and over the eBPF crate (which
/// only builds for the BPF target), warnings denied.
pub fn lint(toolchain: &Toolchain) -> Result<()> {
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("rustfmt: run `cargo fmt --all`")?;
    // The fuzz crate is a workspace of its own (cargo-fuzz's layout), out of `--all`.
    let fuzz_targets = crate::fuzz::fuzz_dir().join("fuzz_targets");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&fuzz_targets)
        .with_context(|| format!("reading {}", fuzz_targets.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    sources.sort();
    run_cmd(Command::new("rustfmt").args(["--check", "--edition", "2024"]).args(&sources))
        .context("rustfmt (fuzz targets): run `cargo fmt` in policy-daemon/fuzz")?;
    let object = ebpf(toolchain)?;
    run_cmd(
        cargo()
            .args(["clippy", "--workspace", "--exclude", "policy-ebpf", "--all-targets"])
            .args(["--", "-D", "warnings"])
            .env(EBPF_OBJECT_ENV, &object),
    )
    .context("clippy (userspace) failed")?;
    run_cmd(ebpf_cargo(toolchain, "clippy").args(["--", "-D", "warnings"]))
        .context("clippy (eBPF) failed")
}

/// Builds the eBPF object, then the daemon binary embedding it; returns the binary.
pub fn daemon(toolchain: &Toolchain, release: bool) -> Result<PathBuf> {
    let object = ebpf(toolchain)?;
    let mut cmd = cargo();
    cmd.args(["build", "--package", "policy-daemon", "--bins"]).env(EBPF_OBJECT_ENV, &object);
    let profile = if release {
        cmd.arg("--release");
        "release"
    } else {
        "debug"
    };
    run_cmd(&mut cmd).context("building the daemon failed")?;
    Ok(target_dir().join(profile).join("xdp-policy"))
}

/// Builds everything and runs `cargo test` over the default members (all but the eBPF
/// crate): unit tests, the policy examples, the kernel packet tests and the veth tests.
pub fn test(toolchain: &Toolchain, args: &[String]) -> Result<()> {
    let object = ebpf(toolchain)?;
    // The bench too (not a default member): its unit tests check its statistics and
    // the parsers of other tools' output.
    run_cmd(
        cargo()
            .args(["test", "--workspace", "--exclude", "policy-ebpf"])
            .args(args)
            .env(EBPF_OBJECT_ENV, &object),
    )
    .context("tests failed")
}

/// Builds the daemon and the demo, then becomes the demo, so that Ctrl-C reaches it
/// directly and it cleans up its namespaces before exiting.
pub fn demo(toolchain: &Toolchain) -> Result<()> {
    let daemon = daemon(toolchain, false)?;
    run_cmd(cargo().args(["build", "--package", "testbed", "--bin", "demo"]))
        .context("building the demo failed")?;
    let demo = target_dir().join("debug").join("demo");
    let policy = workspace_root().join("policies").join("edge-deny-list.toml");
    let error =
        Command::new(&demo).arg("--daemon").arg(&daemon).arg("--policy").arg(&policy).exec();
    Err(error).with_context(|| format!("could not run {}", demo.display()))
}

/// Builds the daemon and the bench (release, eBPF object embedded), then becomes the
/// bench, so that Ctrl-C reaches it and it removes its namespaces before exiting.
pub fn bench(toolchain: &Toolchain, args: &[String]) -> Result<()> {
    let object = ebpf(toolchain)?;
    run_cmd(
        cargo()
            .args(["build", "--release", "--package", "policy-daemon", "--bins"])
            .args(["--package", "bench"])
            .env(EBPF_OBJECT_ENV, &object),
    )
    .context("building the bench failed")?;
    let release = target_dir().join("release");
    let bench = release.join("bench");
    let error = Command::new(&bench)
        .arg("--daemon")
        .arg(release.join("xdp-policy"))
        .args(args)
        .current_dir(workspace_root())
        .exec();
    Err(error).with_context(|| format!("could not run {}", bench.display()))
}
