//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is found at `$XDP_POLICY_EBPF_OBJECT` (set by every xtask command) or at
//! the default place xtask writes it. Without it the daemon still builds, so `cargo
//! test` of the pure policy code works on a machine without the eBPF toolchain; such a
//! binary refuses to load with a message saying how to build it properly.

use std::{env, fs, path::PathBuf};

const OBJECT_ENV: &str = "XDP_POLICY_EBPF_OBJECT";

fn main() {
    println!("cargo:rerun-if-env-changed={OBJECT_ENV}");
    let object = env::var_os(OBJECT_ENV).map(PathBuf::from).unwrap_or_else(|| {
        let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
        manifest_dir.join("../target/ebpf/bpfel-unknown-none/release/policy-ebpf")
    });
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("policy-ebpf.o");
    let bytes = match fs::read(&object) {
        Ok(bytes) => bytes,
        Err(e) => {
            println!(
                "cargo:warning=no eBPF object at {} ({e}): this build of xdp-policy cannot \
                 load its program; build with `cargo xtask build`",
                object.display()
            );
            Vec::new()
        }
    };
    // Rewriting an unchanged object would make cargo recompile the crate every build.
    if fs::read(&out).ok().as_deref() != Some(bytes.as_slice()) {
        fs::write(&out, bytes).expect("writing OUT_DIR/policy-ebpf.o");
    }
}
