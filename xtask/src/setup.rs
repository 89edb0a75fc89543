//! `cargo xtask setup`: installs what building the eBPF program, running the tests and
//! making the Debian package need on a fresh Debian machine, step by step, each step
//! checked first so a second run changes nothing. A failing step is named together with
//! the command to run by hand.

use std::{
    env,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The LLVM major that rustc's BPF backend and bpf-linker must share.
const LLVM_MAJOR: u32 = 22;
/// bpf-linker release line built against that LLVM.
const BPF_LINKER_VERSION: &str = "0.13";
/// Nightly toolchains tried in order; `XDP_POLICY_NIGHTLY` overrides. The dated one is
/// the last nightly on LLVM 22 (later ones use LLVM 23, whose bitcode bpf-linker 0.13
/// cannot read: "Invalid record").
const NIGHTLY_CANDIDATES: [&str; 2] = ["nightly", "nightly-2026-07-01"];
/// rust-src for `-Z build-std=core`; clippy for `cargo xtask lint` of the eBPF crate.
const NIGHTLY_COMPONENTS: [&str; 2] = ["rust-src", "clippy"];
/// Debian packages: the LLVM bpf-linker links against, and the tools the tests use
/// (fail2ban, crowdsec and xdp-tools: the integration tests run the real ones).
const DEBIAN_PACKAGES: [&str; 7] =
    ["llvm-22-dev", "iproute2", "iputils-ping", "procps", "fail2ban", "crowdsec", "xdp-tools"];
/// crowdsec's post-installation script registers with CrowdSec's central API unless
/// this file exists and is not empty (its README.Debian): without the internet the
/// registration fails, and so does the installation.
const CROWDSEC_CAPI_CREDENTIALS: &str = "/etc/crowdsec/online_api_credentials.yaml";
/// Debian packages `cargo xtask package` needs: dpkg-shlibdeps (the package's `Depends`),
/// strip, and systemd-analyze to verify the unit.
const PACKAGING_DEBIAN_PACKAGES: [&str; 3] = ["dpkg-dev", "binutils", "systemd"];
/// What `cargo xtask bench` compares with and measures through: xdp-filter, iptables,
/// nftables, ethtool (veth statistics, GRO) and a font for the plots' text.
const BENCH_DEBIAN_PACKAGES: [&str; 5] =
    ["xdp-tools", "iptables", "nftables", "ethtool", "fonts-dejavu-core"];
/// Debian packages the systemd layer needs: debootstrap for the root file system (and
/// Debian's keyring, which it checks the mirror's signature with), systemd-nspawn to boot
/// it.
const SYSTEMD_TEST_DEBIAN_PACKAGES: [&str; 3] =
    ["debootstrap", "debian-archive-keyring", "systemd-container"];
/// cargo-deb release line; 3.x builds with rustc 1.85 and later.
const CARGO_DEB_VERSION: &str = "3.8";
/// cargo-fuzz release line for `cargo xtask fuzz`; 0.13 builds with rustc 1.95 (it is
/// installed with the stable toolchain, and runs the fuzz builds on the nightly one).
const CARGO_FUZZ_VERSION: &str = "0.13";

/// A nightly toolchain that builds the eBPF crate.
pub struct Toolchain {
    pub name: String,
}

/// Checks everything quietly and runs the installing set-up only when something is
/// missing; returns the nightly toolchain to build with.
pub fn ensure() -> Result<Toolchain> {
    if let Ok(toolchain) = check_all() {
        return Ok(toolchain);
    }
    eprintln!("xtask: the build environment is incomplete; running `cargo xtask setup`");
    run()?;
    check_all()
}

fn check_all() -> Result<Toolchain> {
    let missing = missing_debian_packages(&DEBIAN_PACKAGES)?;
    if !missing.is_empty() {
        bail!("missing Debian packages: {}", missing.join(" "));
    }
    let toolchain = find_nightly().context("no nightly toolchain on LLVM 22")?;
    for component in NIGHTLY_COMPONENTS {
        if !has_component(&toolchain.name, component)? {
            bail!("{component} is missing for {}", toolchain.name);
        }
    }
    check_bpf_linker()?;
    Ok(toolchain)
}

pub fn run() -> Result<Toolchain> {
    step("Debian packages", || install_debian_packages(&DEBIAN_PACKAGES))?;
    let toolchain = step("nightly toolchain on LLVM 22", install_nightly)?;
    step("nightly components (rust-src, clippy)", || install_components(&toolchain.name))?;
    step("bpf-linker", install_bpf_linker)?;
    step("Debian packages for packaging", || install_debian_packages(&PACKAGING_DEBIAN_PACKAGES))?;
    step("cargo-deb", install_cargo_deb)?;
    step("cargo-fuzz", install_cargo_fuzz)?;
    step("Debian packages for the systemd layer", || {
        install_debian_packages(&SYSTEMD_TEST_DEBIAN_PACKAGES)
    })?;
    step("Debian packages for the benchmarks", || install_debian_packages(&BENCH_DEBIAN_PACKAGES))?;
    eprintln!("xtask: setup complete (eBPF toolchain: {})", toolchain.name);
    Ok(toolchain)
}

/// What `cargo xtask package` needs beyond the build: checked quietly, installed when
/// something is missing. The build's own needs are `ensure`'s.
pub fn ensure_packaging() -> Result<()> {
    if missing_debian_packages(&PACKAGING_DEBIAN_PACKAGES)?.is_empty() && check_cargo_deb().is_ok()
    {
        return Ok(());
    }
    eprintln!("xtask: the packaging tools are incomplete; installing them");
    step("Debian packages for packaging", || install_debian_packages(&PACKAGING_DEBIAN_PACKAGES))?;
    step("cargo-deb", install_cargo_deb)
}

/// What `cargo xtask fuzz` needs beyond the build: cargo-fuzz, installed when missing.
pub fn ensure_fuzzing() -> Result<()> {
    if check_cargo_fuzz().is_ok() {
        return Ok(());
    }
    eprintln!("xtask: cargo-fuzz is missing; installing it");
    step("cargo-fuzz", install_cargo_fuzz)
}

/// What the systemd layer needs beyond the package: checked quietly, installed when
/// something is missing.
pub fn ensure_systemd_test() -> Result<()> {
    if missing_debian_packages(&SYSTEMD_TEST_DEBIAN_PACKAGES)?.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: the systemd layer's tools are incomplete; installing them");
    step("Debian packages for the systemd layer", || {
        install_debian_packages(&SYSTEMD_TEST_DEBIAN_PACKAGES)
    })
}

/// What `cargo xtask bench` needs beyond the build: the incumbents and tools it runs.
pub fn ensure_bench() -> Result<()> {
    if missing_debian_packages(&BENCH_DEBIAN_PACKAGES)?.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: the benchmarks' tools are incomplete; installing them");
    step("Debian packages for the benchmarks", || install_debian_packages(&BENCH_DEBIAN_PACKAGES))
}

fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("xtask: setup: {name}");
    f().with_context(|| format!("setup step `{name}` failed"))
}

fn missing_debian_packages(packages: &[&'static str]) -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for &package in packages {
        let output = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .stderr(Stdio::null())
            .output()
            .context("running dpkg-query (is this a Debian machine?)")?;
        if !String::from_utf8_lossy(&output.stdout).contains("install ok installed") {
            missing.push(package);
        }
    }
    Ok(missing)
}

fn install_debian_packages(packages: &[&'static str]) -> Result<()> {
    let missing = missing_debian_packages(packages)?;
    if missing.is_empty() {
        eprintln!("xtask:   already installed: {}", packages.join(" "));
        return Ok(());
    }
    let hint = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !is_root() {
        bail!("installing Debian packages needs root; run as root: {hint}");
    }
    if missing.contains(&"crowdsec") {
        offline_crowdsec()?;
    }
    eprintln!("xtask:   installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"))
        .with_context(|| format!("apt-get update failed; try by hand: {hint}"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("apt-get install failed; try by hand: {hint}"))
}

/// Keeps crowdsec's installation from registering with the central API (see
/// [`CROWDSEC_CAPI_CREDENTIALS`]), and finishes an installation that failed on it.
fn offline_crowdsec() -> Result<()> {
    let path = std::path::Path::new(CROWDSEC_CAPI_CREDENTIALS);
    if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
        return Ok(());
    }
    eprintln!("xtask:   crowdsec: registration to the central API disabled ({})", path.display());
    std::fs::create_dir_all(path.parent().expect("a directory"))?;
    std::fs::write(
        path,
        "# Registration to CrowdSec's central API disabled by xdp-policy's `cargo xtask \
         setup`\n# (the tests run a local API only); see /usr/share/doc/crowdsec/README.Debian.\n",
    )?;
    // An earlier attempt may have left the package unpacked but not configured.
    run_cmd(Command::new("dpkg").args(["--configure", "-a"])).context("dpkg --configure -a failed")
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn nightly_candidates() -> Vec<String> {
    match env::var("XDP_POLICY_NIGHTLY") {
        Ok(name) if !name.is_empty() => vec![name],
        _ => NIGHTLY_CANDIDATES.iter().map(|s| s.to_string()).collect(),
    }
}

/// The LLVM major of a toolchain's rustc, or `None` when the toolchain is not installed.
fn rustc_llvm_major(toolchain: &str) -> Option<u32> {
    let output = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-vV"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.lines().find_map(|l| l.strip_prefix("LLVM version: "))?;
    version.split('.').next()?.trim().parse().ok()
}

fn find_nightly() -> Result<Toolchain> {
    let mut seen = Vec::new();
    for name in nightly_candidates() {
        match rustc_llvm_major(&name) {
            Some(LLVM_MAJOR) => return Ok(Toolchain { name }),
            Some(major) => seen.push(format!("{name} is on LLVM {major}")),
            None => seen.push(format!("{name} is not installed")),
        }
    }
    bail!(
        "no nightly toolchain on LLVM {LLVM_MAJOR} ({}); bpf-linker {BPF_LINKER_VERSION} \
         links with LLVM {LLVM_MAJOR} and fails on newer bitcode with \"Invalid record\"",
        seen.join(", ")
    )
}

fn install_nightly() -> Result<Toolchain> {
    if let Ok(toolchain) = find_nightly() {
        eprintln!("xtask:   using {}", toolchain.name);
        return Ok(toolchain);
    }
    let dated = NIGHTLY_CANDIDATES[NIGHTLY_CANDIDATES.len() - 1];
    eprintln!("xtask:   installing {dated}");
    run_cmd(Command::new("rustup").args(["toolchain", "install", dated, "--profile", "minimal"]))
        .with_context(|| {
        format!(
            "could not install {dated}; install a nightly on LLVM {LLVM_MAJOR} by hand and \
                 name it with XDP_POLICY_NIGHTLY=<toolchain>"
        )
    })?;
    find_nightly()
}

fn has_component(toolchain: &str, component: &str) -> Result<bool> {
    let output = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()
        .context("running rustup component list")?;
    Ok(String::from_utf8_lossy(&output.stdout).lines().any(|l| l.starts_with(component)))
}

fn install_components(toolchain: &str) -> Result<()> {
    for component in NIGHTLY_COMPONENTS {
        if has_component(toolchain, component)? {
            eprintln!("xtask:   {component} already installed for {toolchain}");
            continue;
        }
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            toolchain,
        ]))
        .with_context(|| {
            format!("try by hand: rustup component add {component} --toolchain {toolchain}")
        })?;
    }
    Ok(())
}

fn bpf_linker_path() -> Option<PathBuf> {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))?;
    let installed = cargo_home.join("bin/bpf-linker");
    if installed.exists() {
        return Some(installed);
    }
    env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths).map(|dir| dir.join("bpf-linker")).find(|p| p.exists())
    })
}

/// Checks that bpf-linker is the expected release and linked against LLVM 22.
fn check_bpf_linker() -> Result<()> {
    let path = bpf_linker_path().context("bpf-linker is not installed")?;
    let version = Command::new(&path).arg("--version").output().context("running bpf-linker")?;
    let version = String::from_utf8_lossy(&version.stdout);
    if !version.contains(&format!("bpf-linker {BPF_LINKER_VERSION}.")) {
        bail!("{} is `{}`, not {BPF_LINKER_VERSION}.x", path.display(), version.trim());
    }
    let ldd = Command::new("ldd").arg(&path).output().context("running ldd on bpf-linker")?;
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let Some(line) = ldd.lines().find(|l| l.contains("libLLVM")) else {
        bail!("{} does not link libLLVM dynamically; reinstall it", path.display());
    };
    if line.contains("not found") {
        bail!("{} needs {} which is missing", path.display(), line.trim());
    }
    let expected = [format!("libLLVM.so.{LLVM_MAJOR}"), format!("libLLVM-{LLVM_MAJOR}")];
    if !expected.iter().any(|e| line.contains(e.as_str())) {
        bail!(
            "{} is linked against another LLVM ({}); rustc's nightly is on LLVM {LLVM_MAJOR}",
            path.display(),
            line.trim()
        );
    }
    Ok(())
}

fn install_bpf_linker() -> Result<()> {
    match check_bpf_linker() {
        Ok(()) => {
            eprintln!(
                "xtask:   bpf-linker {BPF_LINKER_VERSION} on LLVM {LLVM_MAJOR} already installed"
            );
            return Ok(());
        }
        Err(e) => eprintln!("xtask:   {e:#}: installing"),
    }
    let prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    let hint = format!(
        "LLVM_PREFIX={prefix} LLVM_SYS_{LLVM_MAJOR}1_PREFIX={prefix} cargo install bpf-linker \
         --version ^{BPF_LINKER_VERSION} --no-default-features --features llvm-{LLVM_MAJOR} --force"
    );
    // Without LLVM_PREFIX its build script finds /usr/bin/llvm-config (LLVM 14 on Debian
    // 12) and fails with "unable to find library -lLLVM".
    run_cmd(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["install", "bpf-linker", "--force", "--no-default-features"])
            .arg(format!("--version=^{BPF_LINKER_VERSION}"))
            .arg(format!("--features=llvm-{LLVM_MAJOR}"))
            .env("LLVM_PREFIX", &prefix)
            .env(format!("LLVM_SYS_{LLVM_MAJOR}1_PREFIX"), &prefix)
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
    .with_context(|| format!("try by hand: {hint}"))?;
    check_bpf_linker()
}

/// Checks that `cargo deb` runs and is the expected release.
fn check_cargo_deb() -> Result<()> {
    let output = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["deb", "--version"])
        .stderr(Stdio::null())
        .output()
        .context("running cargo deb --version")?;
    let version = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("cargo-deb is not installed");
    }
    if !version.contains(&format!("cargo-deb {CARGO_DEB_VERSION}.")) {
        bail!("cargo deb is `{}`, not {CARGO_DEB_VERSION}.x", version.trim());
    }
    Ok(())
}

fn install_cargo_deb() -> Result<()> {
    match check_cargo_deb() {
        Ok(()) => {
            eprintln!("xtask:   cargo-deb {CARGO_DEB_VERSION} already installed");
            return Ok(());
        }
        Err(e) => eprintln!("xtask:   {e:#}: installing"),
    }
    run_cmd(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["install", "cargo-deb", "--locked", "--force"])
            .arg(format!("--version=^{CARGO_DEB_VERSION}"))
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
    .with_context(|| {
        format!("try by hand: cargo install cargo-deb --locked --version ^{CARGO_DEB_VERSION}")
    })?;
    check_cargo_deb()
}

/// Checks that `cargo fuzz` runs and is the expected release.
fn check_cargo_fuzz() -> Result<()> {
    let output = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["fuzz", "--version"])
        .stderr(Stdio::null())
        .output()
        .context("running cargo fuzz --version")?;
    let version = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("cargo-fuzz is not installed");
    }
    if !version.contains(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}.")) {
        bail!("cargo fuzz is `{}`, not {CARGO_FUZZ_VERSION}.x", version.trim());
    }
    Ok(())
}

fn install_cargo_fuzz() -> Result<()> {
    match check_cargo_fuzz() {
        Ok(()) => {
            eprintln!("xtask:   cargo-fuzz {CARGO_FUZZ_VERSION} already installed");
            return Ok(());
        }
        Err(e) => eprintln!("xtask:   {e:#}: installing"),
    }
    run_cmd(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["install", "cargo-fuzz", "--locked", "--force"])
            .arg(format!("--version=^{CARGO_FUZZ_VERSION}"))
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
    .with_context(|| {
        format!("try by hand: cargo install cargo-fuzz --locked --version ^{CARGO_FUZZ_VERSION}")
    })?;
    check_cargo_fuzz()
}

pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
