//! The tools that ban for xdp-policy, run for real from Debian's packages: fail2ban
//! with the action this repository ships (`packaging/fail2ban/action.d/xdp-policy.conf`),
//! and CrowdSec's local API with xdp-policy as its bouncer; each ban and unban checked on
//! the wire of a veth pair.
//!
//! Needs root (see `support::privileged`), fail2ban and crowdsec (`cargo xtask setup`
//! installs them); the tests share kernel state, so each holds `support::serial`.

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

/// A CrowdSec local API of its own (configuration, database and logs in a temporary
/// directory), in rx's namespace where the daemon runs, listening on its loopback;
/// killed on drop. No agent (`-no-cs`): decisions come from `cscli decisions add`.
struct CrowdSecApi {
    dir: tempfile::TempDir,
    netns: String,
    server: Option<Child>,
}

impl CrowdSecApi {
    fn new(testbed: &Testbed, port: u16) -> Self {
        let dir = temp_dir("crowdsec");
        let d = dir.path().display().to_string();
        for sub in ["data", "log", "notifications"] {
            fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        fs::copy("/etc/crowdsec/profiles.yaml", dir.path().join("profiles.yaml"))
            .expect("crowdsec's profiles (cargo xtask setup installs crowdsec)");
        fs::write(dir.path().join("simulation.yaml"), "simulation: off\n").expect("writing");
        fs::write(dir.path().join("acquis.yaml"), "").expect("writing");
        fs::write(
            dir.path().join("config.yaml"),
            format!(
                "common:\n  daemonize: false\n  log_media: file\n  log_level: info\n  log_dir: {d}/log/\n\
                 config_paths:\n  config_dir: {d}/\n  data_dir: {d}/data/\n  simulation_path: {d}/simulation.yaml\n  \
                 hub_dir: /var/lib/crowdsec/hub/\n  index_path: /var/lib/crowdsec/hub/.index.json\n  \
                 notification_dir: {d}/notifications/\n  plugin_dir: /usr/lib/crowdsec/plugins/\n\
                 crowdsec_service:\n  acquisition_path: {d}/acquis.yaml\n\
                 cscli:\n  output: human\n\
                 db_config:\n  type: sqlite\n  db_path: {d}/data/crowdsec.db\n  use_wal: false\n\
                 api:\n  client:\n    credentials_path: {d}/local_api_credentials.yaml\n  server:\n    \
                 listen_uri: 127.0.0.1:{port}\n    profiles_path: {d}/profiles.yaml\n    trusted_ips:\n      - 127.0.0.1\n\
                 prometheus:\n  enabled: false\n"
            ),
        )
        .expect("writing");
        let api = Self { dir, netns: testbed.rx().name().to_string(), server: None };
        let credentials = api.dir.path().join("local_api_credentials.yaml");
        let out = api.cscli(
            &["machines", "add", "xdp-policy-test", "--auto", "--force", "-f"],
            &[&credentials],
        );
        assert!(
            out.status.success(),
            "cscli machines add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        api
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// `cscli -c CONFIG ARGS PATHS` in rx's namespace.
    fn cscli(&self, args: &[&str], paths: &[&Path]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.netns, "cscli", "-c"])
            .arg(self.config())
            .args(args)
            .args(paths)
            .output()
            .expect("cscli")
    }

    fn cscli_ok(&self, args: &[&str]) -> String {
        let out = self.cscli(args, &[]);
        assert!(out.status.success(), "cscli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the API and waits until cscli can use it.
    fn start(&mut self) {
        let server = Command::new("ip")
            .args(["netns", "exec", &self.netns, "crowdsec", "-no-cs", "-c"])
            .arg(self.config())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("crowdsec");
        self.server = Some(server);
        within(Duration::from_secs(30), "CrowdSec's local API up", || {
            self.cscli(&["lapi", "status"], &[]).status.success()
        });
    }

    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Drop for CrowdSecApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of `series` (without labels) in the daemon's metrics on port `port` of
/// rx's loopback.
fn crowdsec_metric(testbed: &Testbed, port: u16, series: &str) -> Option<f64> {
    let text = support::try_scrape(testbed, &format!("127.0.0.1:{port}"), "/metrics").ok()?;
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn crowdsec_decisions_are_enforced_on_the_wire_and_outlive_an_unreachable_api() {
    let Some(_serial) =
        serial("crowdsec_decisions_are_enforced_on_the_wire_and_outlive_an_unreachable_api")
    else {
        return;
    };
    const API_PORT: u16 = 18_089;
    const METRICS_PORT: u16 = 19_559;
    let testbed = Testbed::new().expect("testbed");
    let mut api = CrowdSecApi::new(&testbed, API_PORT);
    let key = api.cscli_ok(&["bouncers", "add", "xdp-policy", "-o", "raw"]);
    api.start();
    // A decision before the daemon starts: the start-up pull brings it.
    api.cscli_ok(&["decisions", "add", "--range", "198.18.0.0/30", "--duration", "1h"]);

    let policy = PolicyFile::new("crowdsec", &POLICY.replace("f2b", "crowdsec"));
    let dir = policy.0.parent().expect("a directory").to_path_buf();
    fs::write(dir.join("bouncer.key"), key.trim()).expect("writing the key");
    let config = dir.join("xdp-policy.toml");
    fs::write(
        &config,
        format!(
            "[crowdsec]\nurl = \"http://127.0.0.1:{API_PORT}/\"\nkey_file = \"{}\"\nset = \"crowdsec\"\n\
             poll_interval = 1\n",
            dir.join("bouncer.key").display()
        ),
    )
    .expect("writing the configuration");
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let config_arg = config.display().to_string();
    let extra = ["--config", config_arg.as_str(), "--metrics", metrics.as_str()];
    let command = testbed::DaemonCommand {
        extra: &extra,
        ..testbed::DaemonCommand::new(Path::new(DAEMON), &policy.0, XdpMode::Skb)
    };
    let daemon = testbed.start(&command).expect("daemon");
    let tx = TX_V4.to_string();
    let banned = || xdp_policy(&testbed, &["set", "test", "crowdsec", &tx]).status.success();
    within(Duration::from_secs(10), "the range decision from start-up", banned);
    assert_eq!(delivered(&testbed), 0, "tx is in 198.18.0.0/30: {}", daemon.log());
    let left = String::from_utf8_lossy(&xdp_policy(&testbed, &["set", "list", "crowdsec"]).stdout)
        .into_owned();
    // A decision of an hour: listed within the second it is taken, or later.
    let expiry = left.contains("expires in 59m") || left.contains("expires in 1h");
    assert!(left.contains("198.18.0.0/30") && expiry, "{left}");

    // Deleting the decision unbans; an IP decision bans; deleting it unbans.
    api.cscli_ok(&["decisions", "delete", "--range", "198.18.0.0/30"]);
    within(Duration::from_secs(10), "the range's deletion", || !banned());
    assert_eq!(delivered(&testbed), 10, "unbanned");
    api.cscli_ok(&["decisions", "add", "--ip", &tx, "--duration", "1h"]);
    within(Duration::from_secs(10), "the IP decision", banned);
    assert_eq!(delivered(&testbed), 0, "banned by an IP decision");
    api.cscli_ok(&["decisions", "delete", "--ip", &tx]);
    within(Duration::from_secs(10), "the IP decision's deletion", || !banned());
    assert_eq!(delivered(&testbed), 10);

    // A decision's duration ends the ban in the kernel.
    api.cscli_ok(&["decisions", "add", "--ip", &tx, "--duration", "3s"]);
    within(Duration::from_secs(10), "a short decision", banned);
    let at = Instant::now();
    within(Duration::from_secs(8), "the short decision's end", || delivered(&testbed) == 10);
    assert!(at.elapsed() <= Duration::from_secs(4), "outlived its duration: {:?}", at.elapsed());

    // The API goes away: the decisions known stay, the metrics say so, and it is found
    // again when it comes back.
    api.cscli_ok(&["decisions", "add", "--ip", &tx, "--duration", "1h"]);
    within(Duration::from_secs(10), "a long decision", banned);
    assert_eq!(crowdsec_metric(&testbed, METRICS_PORT, "xdp_policy_crowdsec_up"), Some(1.0));
    within(Duration::from_secs(5), "the set's entries in the metrics", || {
        let series = "xdp_policy_set_entries{iface=\"veth1\",set=\"crowdsec\"}";
        crowdsec_metric(&testbed, METRICS_PORT, series) == Some(1.0)
    });
    api.stop();
    within(Duration::from_secs(10), "crowdsec_up 0", || {
        crowdsec_metric(&testbed, METRICS_PORT, "xdp_policy_crowdsec_up") == Some(0.0)
    });
    assert!(
        crowdsec_metric(&testbed, METRICS_PORT, "xdp_policy_crowdsec_pull_errors_total")
            .is_some_and(|n| n >= 1.0)
    );
    assert!(
        daemon
            .log()
            .contains("the CrowdSec API cannot be reached; the decisions known stay in force")
    );
    assert_eq!(delivered(&testbed), 0, "still banned while the API is away");
    api.start();
    api.cscli_ok(&["decisions", "delete", "--ip", &tx]);
    within(Duration::from_secs(70), "the deletion after the API came back", || !banned());
    assert_eq!(crowdsec_metric(&testbed, METRICS_PORT, "xdp_policy_crowdsec_up"), Some(1.0));
    assert_eq!(delivered(&testbed), 10);
    drop(daemon.stop().expect("stopping"));
}
