//! `cargo xtask package`: the Debian package, from the release binary that embeds the
//! eBPF object. cargo-deb runs with `--no-build`: a build of its own would not set
//! `XDP_POLICY_EBPF_OBJECT` and could embed no program at all.
//!
//! `--verify` runs the package's test in the test rig (`testbed/tests/package.rs`): it
//! installs the package on this machine, checks the binary outside systemd, and purges
//! it. What the package installs, the unit under systemd, and what purging leaves are
//! the systemd layer's (`crate::systemd`, run by `cargo xtask test`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    build::{self, cargo, workspace_root},
    setup::{self, Toolchain, run_cmd},
};

/// Builds the release binary with the eBPF object embedded, then the .deb; returns its path.
pub fn build(toolchain: &Toolchain) -> Result<PathBuf> {
    setup::ensure_packaging()?;
    build::daemon(toolchain, true)?;
    let output = cargo()
        .args(["deb", "--package", "policy-daemon", "--no-build", "--output"])
        .arg(build::target_dir().join("debian"))
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo deb")?;
    ensure!(output.status.success(), "cargo deb failed: {}", output.status);
    // cargo-deb prints the path of the package it wrote as its last line.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let deb = stdout
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(".deb"))
        .map(|l| PathBuf::from(l.trim()))
        .with_context(|| format!("cargo deb printed no .deb path: {stdout:?}"))?;
    ensure!(deb.exists(), "cargo deb reported {} but it is missing", deb.display());
    let size = fs::metadata(&deb).with_context(|| format!("{}", deb.display()))?.len();
    eprintln!("xtask: package: {} ({} KiB)", deb.display(), size.div_ceil(1024));
    Ok(deb)
}

/// The last commit whose pinned maps are of [`PREVIOUS_LAYOUT`] (0.4.0, bitmaps of 1,024
/// rules): the systemd layer installs its package, then upgrades to this one's under a
/// stream.
pub const PREVIOUS_LAYOUT_COMMIT: &str = "ad572924b47b892f6faf2f09166eeca975e51f35";
/// The map layout of [`PREVIOUS_LAYOUT_COMMIT`] (`policy_common::LAYOUT_VERSION` there).
pub const PREVIOUS_LAYOUT: u32 = 4;

/// The .deb of [`PREVIOUS_LAYOUT_COMMIT`], built from its tree (`git archive`) by its own
/// `cargo xtask package` under `target/previous-layout/COMMIT/`, once: it is kept there.
pub fn build_previous_layout() -> Result<PathBuf> {
    let dir = build::target_dir().join("previous-layout").join(&PREVIOUS_LAYOUT_COMMIT[..12]);
    let tree = dir.join("tree");
    let debs = dir.join("target").join("debian");
    let built = |debs: &Path| -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        found.sort();
        found.pop()
    };
    if let Some(deb) = built(&debs) {
        eprintln!("xtask: package: the previous layout's package, built before: {}", deb.display());
        return Ok(deb);
    }
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    let mut archive = std::process::Command::new("git")
        .current_dir(workspace_root())
        .args(["archive", "--format=tar", PREVIOUS_LAYOUT_COMMIT])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let tar_input = archive.stdout.take().context("git archive's output")?;
    let untar = std::process::Command::new("tar")
        .args(["-x", "-C"])
        .arg(&tree)
        .stdin(tar_input)
        .status()
        .context("running tar")?;
    let archived = archive.wait().context("waiting for git archive")?;
    ensure!(
        archived.success() && untar.success(),
        "extracting commit {PREVIOUS_LAYOUT_COMMIT} failed: the repository must hold it (a \
         full clone, not a shallow one)"
    );
    eprintln!(
        "xtask: package: building the package of {PREVIOUS_LAYOUT_COMMIT} (layout \
         {PREVIOUS_LAYOUT})"
    );
    run_cmd(
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(&tree)
            .args(["xtask", "package"])
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .env_remove("XDP_POLICY_EBPF_OBJECT"),
    )
    .context("building the previous layout's package")?;
    built(&debs).with_context(|| format!("no .deb in {} after the build", debs.display()))
}

/// Installs `deb`, checks the binary outside systemd, purges it (the test
/// `testbed/tests/package.rs`). Needs root, and a machine without the package.
pub fn verify(deb: &Path) -> Result<()> {
    ensure!(setup::is_root(), "verifying the package installs it with dpkg: run as root");
    run_cmd(
        cargo()
            .args(["test", "--package", "testbed", "--test", "package", "--", "--ignored"])
            .arg("--nocapture")
            .env("XDP_POLICY_DEB", deb),
    )
    .context("verifying the package")
}

/// Example policy files as installed under the examples directory: every `*.toml` of
/// `policies/` and of its subdirectories, relative to `policies/`.
pub fn example_policies() -> Result<Vec<PathBuf>> {
    let root = workspace_root().join("policies");
    let mut found = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                found.push(path.strip_prefix(&root)?.to_path_buf());
            }
        }
    }
    ensure!(!found.is_empty(), "no example policies in {}", root.display());
    found.sort();
    Ok(found)
}
