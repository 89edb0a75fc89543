//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod corpus;
pub mod crafted;
pub mod netstat;
pub use policy_daemon::packet;
pub mod random;
pub mod scribble;
pub mod wire;

pub use testbed::privileged;

/// The `xdp-policy` binary these tests run.
pub const DAEMON: &str = env!("CARGO_BIN_EXE_xdp-policy");

/// `xdp-policy ARGS --config /dev/null --pin-dir … --state-dir …` on the host, where the
/// testbed's pins are visible.
pub fn xdp_policy(testbed: &testbed::Testbed, args: &[&str]) -> std::process::Output {
    testbed.xdp_policy(std::path::Path::new(DAEMON), args).expect("running xdp-policy")
}

/// `xdp-policy explain` of a packet to rx's filter: `--proto PROTO --src SRC --dst DST
/// --dst-port PORT`, then `extra`.
pub fn explain(
    testbed: &testbed::Testbed,
    (proto, src, dst, port): (&str, &str, &str, u16),
    extra: &[&str],
) -> std::process::Output {
    let port = port.to_string();
    let mut args = vec!["explain", "--iface", testbed::RX_IFACE, "--proto", proto];
    args.extend(["--src", src, "--dst", dst, "--dst-port", &port]);
    args.extend_from_slice(extra);
    xdp_policy(testbed, &args)
}

/// [`explain`], which must succeed: its text.
pub fn explained(
    testbed: &testbed::Testbed,
    packet: (&str, &str, &str, u16),
    extra: &[&str],
) -> String {
    let out = explain(testbed, packet, extra);
    assert!(out.status.success(), "explain: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The id of the XDP program attached to rx's interface, as the kernel shows it.
pub fn attached_program(testbed: &testbed::Testbed) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-n", testbed.rx().name(), "-d", "link", "show", "dev"])
        .arg(testbed::RX_IFACE)
        .output()
        .expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    let after = text.split("prog/xdp id ").nth(1)?;
    Some(after.split_whitespace().next().unwrap_or_default().to_string())
}

/// `GET path` from the daemon's metrics endpoint at `addr` in rx's network namespace.
pub fn scrape(testbed: &testbed::Testbed, addr: &str, path: &str) -> String {
    try_scrape(testbed, addr, path).expect("scraping the metrics")
}

/// [`scrape`], which may fail (refused, timed out).
pub fn try_scrape(testbed: &testbed::Testbed, addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    testbed
        .rx()
        .run(|| -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect(addr)?;
            stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })
        .expect("netns")
}

/// Held by every test of a test binary that changes kernel state (namespaces, XDP,
/// pins), so that they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The lock every privileged test holds, or `None` when the test is to be skipped (see
/// [`privileged`]). A test that panicked while holding it cleaned up behind it (guards).
pub fn serial(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    if !privileged(test) {
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// A rule dropping UDP to `port`.
pub fn drop_udp(name: &str, port: u16) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\naction = \"drop\"\nprotocol = \"udp\"\ndst_ports = {port}\n"
    )
}

/// [`drop_udp`] named `block-PORT`.
pub fn block_udp(port: u16) -> String {
    drop_udp(&format!("block-{port}"), port)
}

/// A fresh directory under the temporary directory (`xdp-policy-NAME-…`), owned by
/// root and private, removed on drop.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("xdp-policy-{name}-"))
        .tempdir()
        .expect("creating a temporary directory")
}

/// A policy file alone in a temporary directory (removed on drop), owned by root and
/// not writable by others, as `run` wants; rewritten the way editors save.
pub struct PolicyFile(pub std::path::PathBuf, tempfile::TempDir);

impl PolicyFile {
    pub fn new(name: &str, text: &str) -> Self {
        let dir = temp_dir(name);
        let file = Self(dir.path().join("policy.toml"), dir);
        file.write(text);
        file
    }

    pub fn write(&self, text: &str) {
        testbed::save_by_rename(&self.0, text).expect("writing the policy");
    }
}
