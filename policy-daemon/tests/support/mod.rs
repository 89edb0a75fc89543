//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod corpus;
pub mod crafted;
pub mod packet;

/// Whether this process may run tests that need root (bpf(), netlink, namespaces).
///
/// Not root: in CI (`CI` set) that is a failure, since CI runs as root and such tests
/// must never silently skip; elsewhere the test is skipped with the reason printed.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root, and CI must run it: run the tests as root");
    }
    eprintln!("skipping {test}: it needs root (bpf(), XDP); run `cargo xtask test` as root");
    false
}
