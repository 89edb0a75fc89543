//! The tools that ban for xdp-policy, run for real from Debian's packages: fail2ban
//! with the action this repository ships (`packaging/fail2ban/action.d/xdp-policy.conf`),
//! each ban and unban checked on the wire of a veth pair.
//!
//! Needs root (see `support::privileged`) and fail2ban (`cargo xtask setup` installs it);
//! the tests share kernel state, so each holds `support::serial`.

mod support;

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use testbed::{RX_V4, TX_V4, Testbed, XdpMode};

use support::{DAEMON, PolicyFile, serial, temp_dir, xdp_policy};

const PORT: u16 = 7200;

const POLICY: &str = r#"
[[set]]
name = "f2b"

[[rule]]
name = "drop-f2b"
action = "drop"
protocol = "udp"
src = "@f2b"
"#;

/// Datagrams from tx that reach rx's socket, out of 10.
fn delivered(testbed: &Testbed) -> u32 {
    testbed.udp_probe(RX_V4.into(), PORT, 10).expect("udp probe").received
}

/// Polls `done` every 100 ms for up to `limit`; returns how long it took.
fn within(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// A fail2ban server of its own (configuration, socket, log and database in a temporary
/// directory), stopped and killed on drop.
struct Fail2ban {
    dir: tempfile::TempDir,
    server: Child,
}

impl Fail2ban {
    /// One jail, `xdp-test`: two "Failed login from ADDR" lines in its log within ten
    /// minutes ban ADDR for `bantime` seconds through xdp-policy's action.
    fn start(testbed: &Testbed, bantime: u32) -> Self {
        let dir = temp_dir("fail2ban");
        let path = |p: &str| dir.path().join(p);
        for sub in ["action.d", "filter.d"] {
            fs::create_dir(path(sub)).expect("mkdir");
        }
        fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("packaging/fail2ban/action.d/xdp-policy.conf"),
            path("action.d/xdp-policy.conf"),
        )
        .expect("the shipped action");
        let write = |p: &str, text: String| fs::write(path(p), text).expect("writing");
        write(
            "fail2ban.conf",
            format!(
                "[Definition]\nloglevel = INFO\nlogtarget = {}\nsocket = {}\npidfile = {}\n\
                 dbfile = :memory:\n",
                path("fail2ban.log").display(),
                path("fail2ban.sock").display(),
                path("fail2ban.pid").display()
            ),
        );
        write(
            "filter.d/xdp-test.conf",
            "[Definition]\nfailregex = ^Failed login from <HOST>$\ndatepattern = {NONE}\n".into(),
        );
        let options = format!(
            "--config /dev/null --pin-dir {} --state-dir {}",
            testbed.dirs().pin_dir().display(),
            testbed.dirs().state_dir().display()
        );
        write(
            "jail.conf",
            format!(
                "[xdp-test]\nenabled = true\nfilter = xdp-test\nlogpath = {}\nbackend = polling\n\
                 maxretry = 2\nfindtime = 600\nbantime = {bantime}\n\
                 action = xdp-policy[setname=f2b, xdp_policy=\"{DAEMON}\", \
                 xdp_policy_options=\"{options}\"]\n",
                path("auth.log").display()
            ),
        );
        write("auth.log", String::new());
        let server = Command::new("fail2ban-client")
            .arg("-c")
            .arg(dir.path())
            .args(["-x", "-f", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fail2ban-client (cargo xtask setup installs fail2ban)");
        let f2b = Self { dir, server };
        within(Duration::from_secs(30), "fail2ban's jail up", || {
            f2b.client(&["status", "xdp-test"]).status.success()
        });
        f2b
    }

    fn client(&self, args: &[&str]) -> std::process::Output {
        Command::new("fail2ban-client")
            .arg("-c")
            .arg(self.dir.path())
            .args(args)
            .output()
            .expect("fail2ban-client")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("auth.log")
    }

    /// Appends failed logins from `addr` to the jail's log.
    fn fail(&self, addr: &str, times: usize) {
        let mut log = fs::OpenOptions::new().append(true).open(self.log_path()).expect("log");
        for _ in 0..times {
            writeln!(log, "Failed login from {addr}").expect("appending");
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("fail2ban.log")).unwrap_or_default()
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        let _ = self.client(&["stop"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn fail2ban_bans_and_unbans_through_the_shipped_action() {
    let Some(_serial) = serial("fail2ban_bans_and_unbans_through_the_shipped_action") else {
        return;
    };
    let policy = PolicyFile::new("fail2ban", POLICY);
    let testbed = Testbed::new().expect("testbed");
    let daemon = testbed.start_daemon(Path::new(DAEMON), &policy.0, XdpMode::Skb).expect("daemon");
    let f2b = Fail2ban::start(&testbed, 4);
    let tx = TX_V4.to_string();
    let banned = || xdp_policy(&testbed, &["set", "test", "f2b", &tx]).status.success();
    assert_eq!(delivered(&testbed), 10, "not banned yet");

    // Two failures: fail2ban bans, the action adds the entry, the wire drops.
    f2b.fail(&tx, 2);
    let took = within(Duration::from_secs(15), "the ban", banned);
    eprintln!("fail2ban: ban in the set {took:?} after the log lines");
    assert_eq!(delivered(&testbed), 0, "banned by fail2ban: {}", f2b.log());

    // fail2ban's unban removes it.
    let out = f2b.client(&["set", "xdp-test", "unbanip", &tx]);
    assert!(out.status.success(), "unbanip: {}", String::from_utf8_lossy(&out.stderr));
    within(Duration::from_secs(10), "the unban", || !banned());
    assert_eq!(delivered(&testbed), 10, "unbanned by fail2ban");

    // Banned again: the bantime (4 s) ends it, in the kernel on time.
    f2b.fail(&tx, 2);
    within(Duration::from_secs(15), "the second ban", banned);
    let at = Instant::now();
    assert_eq!(delivered(&testbed), 0, "banned again");
    within(Duration::from_secs(8), "the bantime's end", || delivered(&testbed) == 10);
    let lasted = at.elapsed();
    assert!(lasted <= Duration::from_secs(5), "the ban outlived its bantime: {lasted:?}");
    assert!(f2b.log().contains("Ban 198.18.0.1"), "{}", f2b.log());
    drop(f2b);
    drop(daemon.stop().expect("stopping"));
}
