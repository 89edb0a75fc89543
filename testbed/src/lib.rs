//! The test rig: throw-away network namespaces for the demo, the end-to-end tests and the
//! bench: two namespaces, `tx` and `rx`, joined by a veth pair; the `xdp-policy` binary
//! run inside `rx` and driven like any user drives it, through its arguments, with
//! outcomes read from the kernel or from `status --json`, never from text meant for
//! people; and traffic probes from `tx` to `rx`, each bounded in time and packets.
//!
//! Not part of the product: `xdp-policy` does not depend on it, and it depends on
//! nothing of `xdp-policy` but the names shared with the kernel program
//! (`policy-common`).
//!
//! Everything that changes the system is a guard: namespaces are deleted and the daemon
//! is killed when their owners are dropped, including while a failed assertion unwinds.
//! Traffic never leaves the pair: the namespaces have no other interfaces, the addresses
//! come from 198.18.0.0/15 (RFC 2544, benchmarking) and fd00::/8 (RFC 4193, unique local),
//! and probes refuse any destination but the rx end.
//!
//! Needs root: namespaces, veth and XDP all need CAP_SYS_ADMIN / CAP_NET_ADMIN / CAP_BPF.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::process::CommandExt as _,
    panic,
    path::Path,
    process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sched::{CloneFlags, setns},
    sys::{
        prctl,
        signal::{Signal, kill},
    },
    unistd::Pid,
};
use policy_common::Verdict;

/// The XDP mode `xdp-policy run --xdp-mode` is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Auto,
    Native,
    Skb,
}

impl XdpMode {
    /// The value of `--xdp-mode`.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Skb => "skb",
        }
    }
}

/// The mode the kernel shows a program attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Skb,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Skb => "skb",
        })
    }
}

/// The veth end in the tx namespace.
pub const TX_IFACE: &str = "veth0";
/// The veth end in the rx namespace, where the daemon attaches.
pub const RX_IFACE: &str = "veth1";
pub const TX_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const RX_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const TX_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const RX_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const PREFIX_V4: u8 = 24;
const PREFIX_V6: u8 = 64;

/// How long a TCP connect may take before its SYN counts as dropped. Nothing on a veth
/// pair takes longer than a few milliseconds, and Linux's initial SYN retransmission
/// timeout is 1 s, so a blocked port costs one or two SYNs.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the echo of an established probe connection may take.
const ECHO_TIMEOUT: Duration = Duration::from_secs(1);
/// How long after the last datagram was sent the UDP receiver keeps waiting.
const UDP_GRACE: Duration = Duration::from_millis(500);
/// How long the daemon may take from start to attached (a debug build loads in ~0.2 s).
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const PROBE_PAYLOAD: &[u8] = b"xdp-policy testbed probe";

const NETNS_DIR: &str = "/run/netns";

/// Why setting up the testbed, running a probe or driving the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: ExitStatus, stderr: String },
    #[error("entering network namespace `{netns}` failed")]
    EnterNetns {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("{addr} is not the rx address of the testbed ({RX_V4} or {RX_V6})")]
    NotTestbedAddress { addr: IpAddr },
    #[error("probe {probe}: {step} failed")]
    Probe {
        probe: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("xdp-policy exited ({status}) before it was ready on `{iface}`; its log:\n{stderr}")]
    DaemonExited { iface: String, status: ExitStatus, stderr: String },
    #[error(
        "xdp-policy was not ready (READY=1, attached) on `{iface}` within {timeout:?}; its \
         log:\n{stderr}"
    )]
    AttachTimeout { iface: String, timeout: Duration, stderr: String },
    #[error("the daemon's notification socket {}", path.display())]
    Notify {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("xdp-policy sent no notification within {timeout:?}")]
    NotifyTimeout { timeout: Duration },
    #[error(
        "xdp-policy did not exit within {timeout:?} of SIGTERM and was killed; its log:\n{stderr}"
    )]
    StopTimeout { timeout: Duration, stderr: String },
    #[error("sending {signal} to xdp-policy (pid {pid}) failed")]
    Signal {
        signal: Signal,
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("waiting for xdp-policy failed")]
    Wait(#[source] io::Error),
    #[error("`xdp-policy status --json` said what this rig cannot read ({reason}): {json}")]
    Status { reason: &'static str, json: String },
    #[error("xdp-policy's log did not show `{text}` {count} time(s) in time; its log:\n{log}")]
    LogTimeout { text: String, count: usize, log: String },
}

/// Saves `text` at `path` the way editors and config management do: a temporary file
/// beside it, then a rename over it.
pub fn save_by_rename(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Resident memory of process `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc/PID/status"))
}

/// Whether this process runs with root's effective uid, which everything here needs.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether this process may run test `test`, which needs root (bpf(), netlink,
/// namespaces).
///
/// Not root: in CI (`CI` set) that is a failure, since CI runs as root and such tests
/// must never silently skip; elsewhere the test is skipped with the reason printed.
pub fn privileged(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root, and CI must run it: run the tests as root");
    }
    eprintln!("skipping {test}: it needs root (bpf(), XDP); run `cargo xtask test` as root");
    false
}

/// A named network namespace (`ip netns add`), deleted when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace `name`; fails if it exists.
    pub fn create(name: &str) -> Result<Self, TestbedError> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        Ok(Self { name: name.to_owned() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` inside this namespace and returns its result. Sockets `f` creates stay in
    /// the namespace for their whole life, whichever thread uses them afterwards.
    ///
    /// `f` runs on a thread of its own because `setns` moves only the calling thread, and
    /// that thread ends with `f`, so no other code ever runs in the wrong namespace. A
    /// panic in `f` is resumed on the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, TestbedError> {
        let enter_err =
            |source: io::Error| TestbedError::EnterNetns { netns: self.name.clone(), source };
        let netns = File::open(Path::new(NETNS_DIR).join(&self.name)).map_err(enter_err)?;
        thread::scope(|scope| {
            let thread = scope.spawn(move || {
                setns(&netns, CloneFlags::CLONE_NEWNET).map_err(|e| enter_err(e.into()))?;
                Ok(f())
            });
            thread.join().unwrap_or_else(|payload| panic::resume_unwind(payload))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Nothing useful to do on failure: the name is unique to this process, so a
        // leftover never collides with a later run.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Testbeds created by this process so far: with the pid, it makes namespace names unique.
static TESTBEDS: AtomicU32 = AtomicU32::new(0);

/// Namespaces `tx` and `rx` joined by `veth0` (tx, 198.18.0.1/24, fd00::1/64) and
/// `veth1` (rx, 198.18.0.2/24, fd00::2/64). Dropping it deletes both namespaces and
/// with them the veth pair.
#[derive(Debug)]
pub struct Testbed {
    tx: NetNs,
    rx: NetNs,
    /// The daemon's pin and state directories; dropped last, after the namespaces.
    dirs: DaemonDirs,
}

/// A bpffs for the daemon's pins and a state directory, both under a fresh temporary
/// directory. The bpffs is mounted here, in the host's mount namespace, before the
/// daemon starts: `ip netns exec` gives the daemon a copy of the mount table (with /sys
/// remounted), so a bpffs it mounted itself would vanish with it, and with it the
/// pinned links that keep the filter in force across restarts.
#[derive(Debug)]
pub struct DaemonDirs {
    root: std::path::PathBuf,
}

impl DaemonDirs {
    fn create(name: &str) -> Result<Self, TestbedError> {
        let root = std::env::temp_dir().join(name);
        let dirs = Self { root };
        std::fs::create_dir_all(dirs.pin_dir()).map_err(|source| TestbedError::Spawn {
            command: format!("mkdir {}", dirs.pin_dir().display()),
            source,
        })?;
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(dirs.pin_dir()))?;
        Ok(dirs)
    }

    pub fn pin_dir(&self) -> std::path::PathBuf {
        self.root.join("bpf")
    }

    pub fn state_dir(&self) -> std::path::PathBuf {
        self.root.join("state")
    }
}

impl Drop for DaemonDirs {
    fn drop(&mut self) {
        // Unmounting the bpffs drops every pin on it, and with them the links.
        let _ = Command::new("umount").arg("-l").arg(self.pin_dir()).status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Testbed {
    pub fn new() -> Result<Self, TestbedError> {
        Self::build(None)
    }

    /// A testbed whose tx end (the peer of the interface the daemon attaches to) has
    /// MTU `mtu`. Above 3,500 or so, veth refuses native XDP on the rx end with ERANGE.
    pub fn with_tx_mtu(mtu: u32) -> Result<Self, TestbedError> {
        Self::build(Some(mtu))
    }

    fn build(tx_mtu: Option<u32>) -> Result<Self, TestbedError> {
        let pid = std::process::id();
        let (tx_name, rx_name) = loop {
            let n = TESTBEDS.fetch_add(1, Ordering::Relaxed);
            let names = (format!("xdpp-{pid}-{n}-tx"), format!("xdpp-{pid}-{n}-rx"));
            // A crashed earlier process that had our pid may have left these behind;
            // its namespaces are not ours to delete, so skip to the next number.
            let dir = Path::new(NETNS_DIR);
            if !dir.join(&names.0).exists() && !dir.join(&names.1).exists() {
                break names;
            }
        };
        // From here on the guards clean up whatever the remaining steps leave behind.
        let dirs = DaemonDirs::create(&tx_name.replace("-tx", "-daemon"))?;
        let testbed = Self { tx: NetNs::create(&tx_name)?, rx: NetNs::create(&rx_name)?, dirs };
        testbed.add_veth(tx_mtu)?;
        Ok(testbed)
    }

    /// Creates the veth pair, with addresses, up (done by [`Self::new`]; again after
    /// [`Self::remove_veth`], to bring an interface back).
    pub fn add_veth(&self, tx_mtu: Option<u32>) -> Result<(), TestbedError> {
        let (tx, rx) = (self.tx.name(), self.rx.name());
        // Created inside the namespaces directly, so the host never sees either end.
        ip(&format!("link add {TX_IFACE} netns {tx} type veth peer name {RX_IFACE} netns {rx}"))?;
        ip(&format!("-n {tx} link set lo up"))?;
        ip(&format!("-n {rx} link set lo up"))?;
        if let Some(mtu) = tx_mtu {
            ip(&format!("-n {tx} link set {TX_IFACE} mtu {mtu}"))?;
        }
        // Links up before the addresses, so the prefix routes are installed with them.
        ip(&format!("-n {tx} link set {TX_IFACE} up"))?;
        ip(&format!("-n {rx} link set {RX_IFACE} up"))?;
        for (ns, iface, v4, v6) in [(tx, TX_IFACE, TX_V4, TX_V6), (rx, RX_IFACE, RX_V4, RX_V6)] {
            ip(&format!("-n {ns} addr add {v4}/{PREFIX_V4} dev {iface}"))?;
            // No duplicate address detection: the address is usable at once instead of
            // after a second or more of being tentative, and nothing else is on the link.
            ip(&format!("-n {ns} addr add {v6}/{PREFIX_V6} dev {iface} nodad"))?;
        }
        Ok(())
    }

    /// Deletes the veth pair: the interface the daemon is attached to goes away.
    pub fn remove_veth(&self) -> Result<(), TestbedError> {
        ip(&format!("-n {} link del {RX_IFACE}", self.rx.name()))
    }

    pub fn tx(&self) -> &NetNs {
        &self.tx
    }

    pub fn rx(&self) -> &NetNs {
        &self.rx
    }

    /// Sends datagrams from tx alternately to `ports` on rx's IPv4 address, one every
    /// `gap`, while `during` runs on this thread (it gets the stream's start time), for at
    /// most `duration`; then says what was sent and what arrived, and when it was sent.
    /// A panic in `during` stops the stream first and is then resumed.
    pub fn udp_stream(
        &self,
        ports: [u16; 2],
        duration: Duration,
        gap: Duration,
        during: impl FnOnce(Instant),
    ) -> Result<StreamResult, TestbedError> {
        let mut receivers = Vec::new();
        for port in ports {
            let addr = SocketAddr::new(IpAddr::V4(RX_V4), port);
            let probe = format!("udp stream to {addr}");
            let socket = self
                .rx
                .run(|| UdpSocket::bind(addr))?
                .map_err(probe_err(&probe, "binding in rx"))?;
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .map_err(probe_err(&probe, "setting a timeout"))?;
            receivers.push(socket);
        }
        let start = Instant::now();
        let sending = AtomicBool::new(true);
        let done = AtomicBool::new(false);
        let mut result = StreamResult::default();
        thread::scope(|scope| -> Result<(), TestbedError> {
            let readers: Vec<_> = receivers
                .iter()
                .map(|socket| {
                    let sending = &sending;
                    scope.spawn(move || {
                        let mut arrivals = Vec::new();
                        let mut buf = [0u8; 16];
                        let mut quiet_since = None;
                        loop {
                            match socket.recv(&mut buf) {
                                Ok(8) => {
                                    let mut stamp = [0u8; 8];
                                    stamp.copy_from_slice(&buf[..8]);
                                    arrivals.push(Duration::from_nanos(u64::from_be_bytes(stamp)));
                                    quiet_since = None;
                                }
                                Ok(_) => {}
                                Err(_) if sending.load(Ordering::Relaxed) => {}
                                // Sender done: stop after 200 ms without a datagram.
                                Err(_) => {
                                    let since = *quiet_since.get_or_insert_with(Instant::now);
                                    if since.elapsed() > Duration::from_millis(200) {
                                        return arrivals;
                                    }
                                }
                            }
                        }
                    })
                })
                .collect();
            let sender = scope.spawn(|| {
                self.tx.run(|| {
                    let mut sent = [0u64; 2];
                    let Ok(socket) = UdpSocket::bind("0.0.0.0:0") else { return sent };
                    let mut i = 0;
                    while start.elapsed() < duration && !done.load(Ordering::Relaxed) {
                        let stamp = (start.elapsed().as_nanos() as u64).to_be_bytes();
                        let addr = SocketAddr::new(IpAddr::V4(RX_V4), ports[i % 2]);
                        if socket.send_to(&stamp, addr).is_ok() {
                            sent[i % 2] += 1;
                        }
                        i += 1;
                        thread::sleep(gap);
                    }
                    sent
                })
            });
            // Caught, so that a failing `during` still stops the sender and the readers
            // before the scope joins them; resumed after.
            let outcome = panic::catch_unwind(panic::AssertUnwindSafe(|| during(start)));
            // A little traffic after the last change too.
            thread::sleep(Duration::from_millis(100));
            done.store(true, Ordering::Relaxed);
            let sent = sender.join().unwrap_or_else(|payload| panic::resume_unwind(payload));
            sending.store(false, Ordering::Relaxed);
            for (i, reader) in readers.into_iter().enumerate() {
                result.arrivals[i] =
                    reader.join().unwrap_or_else(|payload| panic::resume_unwind(payload));
                result.received[i] = result.arrivals[i].len() as u64;
            }
            if let Err(payload) = outcome {
                panic::resume_unwind(payload);
            }
            result.sent = sent?;
            Ok(())
        })?;
        Ok(result)
    }

    /// Where daemons started here pin their filters and keep their state.
    pub fn dirs(&self) -> &DaemonDirs {
        &self.dirs
    }

    /// `binary ARGS --config /dev/null --pin-dir … --state-dir …` on the host, where the
    /// pins of the daemons started here are visible.
    pub fn xdp_policy(&self, binary: &Path, args: &[&str]) -> Result<Output, TestbedError> {
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .args(["--config", "/dev/null", "--pin-dir"])
            .arg(self.dirs.pin_dir())
            .arg("--state-dir")
            .arg(self.dirs.state_dir());
        output(&mut cmd)
    }

    /// The counters of the filter on [`RX_IFACE`], from `binary status --json`.
    pub fn counters(&self, binary: &Path) -> Result<Counters, TestbedError> {
        let args = ["status", "--json", "--iface", RX_IFACE];
        let out = self.xdp_policy(binary, &args)?;
        if !out.status.success() {
            return Err(TestbedError::Command {
                command: format!("{} {}", binary.display(), args.join(" ")),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_owned(),
            });
        }
        Counters::from_status_json(&String::from_utf8_lossy(&out.stdout))
    }

    /// Starts `binary run` in rx on [`RX_IFACE`] with `policy` and `mode`, and waits
    /// until the program is attached. See [`Daemon::start`].
    pub fn start_daemon(
        &self,
        binary: &Path,
        policy: &Path,
        mode: XdpMode,
    ) -> Result<Daemon<'_>, TestbedError> {
        self.start_daemon_with(binary, policy, mode, &[])
    }

    /// [`Self::start_daemon`] with more `run` arguments (`--no-watch`, …).
    pub fn start_daemon_with(
        &self,
        binary: &Path,
        policy: &Path,
        mode: XdpMode,
        extra: &[&str],
    ) -> Result<Daemon<'_>, TestbedError> {
        self.start(&DaemonCommand { extra, ..DaemonCommand::new(binary, policy, mode) })
    }

    /// Starts `command` in rx with the testbed's pin and state directories (unless its
    /// arguments name others), no configuration file (unless they name one) and no
    /// metrics (unless they name an address), and waits until it is ready. See
    /// [`Daemon::start`].
    pub fn start(&self, command: &DaemonCommand<'_>) -> Result<Daemon<'_>, TestbedError> {
        let (pin_dir, state_dir) = (self.dirs.pin_dir(), self.dirs.state_dir());
        let mut args = vec!["--state-dir", state_dir.to_str().unwrap_or_default()];
        // Not the host's configuration, if it has one: only what the test says.
        if !command.extra.contains(&"--config") {
            args.extend(["--config", "/dev/null"]);
        }
        // The testbed's choices, unless the test makes its own.
        if !command.extra.contains(&"--pin-dir") {
            args.extend(["--pin-dir", pin_dir.to_str().unwrap_or_default()]);
        }
        if !command.extra.contains(&"--metrics") {
            args.extend(["--metrics", "off"]);
        }
        args.extend(command.extra);
        let notify = Notifications::bind(&self.dirs.root)?;
        Daemon::start(&DaemonCommand { extra: &args, ..*command }, notify, &self.rx)
    }

    /// Connects from tx to `dst:port` in rx, where a listener echoes what it receives.
    /// A dropped SYN shows up as a connect timeout after [`CONNECT_TIMEOUT`].
    pub fn tcp_probe(&self, dst: IpAddr, port: u16) -> Result<TcpOutcome, TestbedError> {
        check_rx_addr(dst)?;
        let addr = SocketAddr::new(dst, port);
        let probe = format!("tcp {addr}");
        let listener = self
            .rx
            .run(|| TcpListener::bind(addr))?
            .map_err(probe_err(&probe, "listening in rx"))?;
        // Non-blocking, so the accepting thread can give up once the client has.
        listener.set_nonblocking(true).map_err(probe_err(&probe, "setting up the listener"))?;
        let client_done = AtomicBool::new(false);
        thread::scope(|scope| {
            let server = scope.spawn(|| echo_one(&listener, &client_done));
            let client = self.tx.run(|| connect_and_echo(addr));
            client_done.store(true, Ordering::Relaxed);
            let served = server.join().unwrap_or_else(|payload| panic::resume_unwind(payload));
            let outcome = client?.map_err(|(step, source)| TestbedError::Probe {
                probe: probe.clone(),
                step,
                source,
            })?;
            served.map_err(probe_err(&probe, "accepting and echoing in rx"))?;
            Ok(outcome)
        })
    }

    /// Sends `count` datagrams from tx to `dst:port`, where a socket in rx counts those
    /// that arrive within [`UDP_GRACE`] of the last one sent.
    pub fn udp_probe(
        &self,
        dst: IpAddr,
        port: u16,
        count: u32,
    ) -> Result<UdpOutcome, TestbedError> {
        check_rx_addr(dst)?;
        let addr = SocketAddr::new(dst, port);
        let probe = format!("udp {addr}");
        let receiver =
            self.rx.run(|| UdpSocket::bind(addr))?.map_err(probe_err(&probe, "binding in rx"))?;
        self.tx
            .run(|| {
                let unspecified = match dst {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                };
                let sender = UdpSocket::bind(SocketAddr::new(unspecified, 0))?;
                for _ in 0..count {
                    sender.send_to(PROBE_PAYLOAD, addr)?;
                }
                Ok(())
            })?
            .map_err(probe_err(&probe, "sending from tx"))?;
        let deadline = Instant::now() + UDP_GRACE;
        let mut received = 0;
        let mut buf = [0; 64];
        while received < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            receiver.set_read_timeout(Some(left)).map_err(probe_err(&probe, "receiving in rx"))?;
            match receiver.recv(&mut buf) {
                Ok(_) => received += 1,
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    break;
                }
                Err(e) => return Err(probe_err(&probe, "receiving in rx")(e)),
            }
        }
        Ok(UdpOutcome { sent: count, received })
    }

    /// One ICMP (or ICMPv6) echo request from tx to `dst`, waiting 1 s for the reply.
    pub fn ping(&self, dst: IpAddr) -> Result<PingOutcome, TestbedError> {
        check_rx_addr(dst)?;
        let family = if dst.is_ipv6() { "-6" } else { "-4" };
        let tx = self.tx.name();
        let mut cmd = Command::new("ip");
        cmd.args(format!("netns exec {tx} ping {family} -n -q -c 1 -W 1 {dst}").split_whitespace());
        let output = output(&mut cmd)?;
        // iputils: 1 means no reply, 2 (or anything else) that ping itself failed.
        match output.status.code() {
            Some(0) => Ok(PingOutcome::Reply),
            Some(1) => Ok(PingOutcome::NoReply),
            _ => Err(command_failed(&cmd, &output)),
        }
    }
}

/// What [`Testbed::udp_stream`] saw.
#[derive(Debug, Default)]
pub struct StreamResult {
    pub sent: [u64; 2],
    pub received: [u64; 2],
    /// Send time (since the stream started) of every datagram that arrived, per port.
    pub arrivals: [Vec<Duration>; 2],
}

impl StreamResult {
    /// "port A 10 sent, 0 received; port B 10 sent, 10 received", the ports named `names`.
    pub fn describe(&self, names: [&str; 2]) -> String {
        let port = |i: usize| {
            format!("port {} {} sent, {} received", names[i], self.sent[i], self.received[i])
        };
        format!("{}; {}", port(0), port(1))
    }
}

/// What a TCP probe saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpOutcome {
    /// Connected, and the payload came back.
    Connected,
    /// No answer to the SYN within [`CONNECT_TIMEOUT`].
    TimedOut,
}

impl std::fmt::Display for TcpOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connected => f.write_str("connected"),
            Self::TimedOut => write!(f, "connect timed out ({CONNECT_TIMEOUT:?})"),
        }
    }
}

/// What a UDP probe saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpOutcome {
    pub sent: u32,
    pub received: u32,
}

impl std::fmt::Display for UdpOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} arrived", self.received, self.sent)
    }
}

/// What a ping saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PingOutcome {
    Reply,
    NoReply,
}

impl std::fmt::Display for PingOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Reply => "reply",
            Self::NoReply => "no reply",
        })
    }
}

fn check_rx_addr(dst: IpAddr) -> Result<(), TestbedError> {
    if dst == IpAddr::V4(RX_V4) || dst == IpAddr::V6(RX_V6) {
        Ok(())
    } else {
        Err(TestbedError::NotTestbedAddress { addr: dst })
    }
}

fn probe_err<'a>(
    probe: &'a str,
    step: &'static str,
) -> impl FnOnce(io::Error) -> TestbedError + 'a {
    move |source| TestbedError::Probe { probe: probe.to_owned(), step, source }
}

/// Accepts one connection and echoes the payload back; gives up without error when the
/// client is done (it timed out) or, as a backstop, after the longest a client can take.
fn echo_one(listener: &TcpListener, client_done: &AtomicBool) -> io::Result<()> {
    let deadline = Instant::now() + CONNECT_TIMEOUT + ECHO_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(ECHO_TIMEOUT))?;
                stream.set_write_timeout(Some(ECHO_TIMEOUT))?;
                let mut buf = [0; PROBE_PAYLOAD.len()];
                stream.read_exact(&mut buf)?;
                return stream.write_all(&buf);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if client_done.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    return Ok(());
                }
                thread::sleep(POLL_INTERVAL);
            }
            Err(e) => return Err(e),
        }
    }
}

fn connect_and_echo(addr: SocketAddr) -> Result<TcpOutcome, (&'static str, io::Error)> {
    let mut stream = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(stream) => stream,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(TcpOutcome::TimedOut),
        Err(e) => return Err(("connecting from tx", e)),
    };
    let echo = |stream: &mut TcpStream| -> io::Result<()> {
        stream.set_read_timeout(Some(ECHO_TIMEOUT))?;
        stream.set_write_timeout(Some(ECHO_TIMEOUT))?;
        stream.write_all(PROBE_PAYLOAD)?;
        let mut buf = [0; PROBE_PAYLOAD.len()];
        stream.read_exact(&mut buf)?;
        if buf == PROBE_PAYLOAD {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::InvalidData, "the echo differs from what was sent"))
        }
    };
    echo(&mut stream).map_err(|e| ("echoing over the connection", e))?;
    Ok(TcpOutcome::Connected)
}

/// How a daemon is started: `[LAUNCHER…] BINARY run --iface IFACE --policy POLICY
/// --xdp-mode MODE EXTRA…`, with `env` added to its environment.
#[derive(Clone, Copy, Debug)]
pub struct DaemonCommand<'a> {
    /// A command that runs the rest (such as `setpriv` with a capability set); usually
    /// none.
    pub launcher: &'a [&'a str],
    pub binary: &'a Path,
    /// The interface in rx to enforce on: [`RX_IFACE`] unless a test wants another.
    pub iface: &'a str,
    pub policy: &'a Path,
    pub mode: XdpMode,
    /// More `run` arguments.
    pub extra: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
}

impl<'a> DaemonCommand<'a> {
    /// `binary run --iface RX_IFACE --policy POLICY --xdp-mode MODE`, nothing else.
    pub fn new(binary: &'a Path, policy: &'a Path, mode: XdpMode) -> Self {
        Self { launcher: &[], binary, iface: RX_IFACE, policy, mode, extra: &[], env: &[] }
    }
}

/// A running `xdp-policy run` in a namespace of the testbed it borrows, so it is always
/// stopped before its namespace goes. Dropping it kills the daemon; [`Daemon::stop`]
/// ends it properly and returns what it printed.
pub struct Daemon<'tb> {
    process: DaemonProcess,
    mode: AttachMode,
    notify: Notifications,
    _netns: &'tb NetNs,
}

/// systemd's side of `Type=notify`: the datagram socket the daemon's `NOTIFY_SOCKET`
/// names, read all the time by a thread of its own as systemd reads it (a socket nobody
/// reads fills up after a few datagrams, and the daemon then blocks sending the next),
/// and what it sent that nobody has taken yet.
struct Notifications {
    path: std::path::PathBuf,
    unread: Arc<Mutex<std::collections::VecDeque<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Notifications {
    /// A fresh socket in `dir`, and its reader.
    fn bind(dir: &Path) -> Result<Self, TestbedError> {
        static SOCKETS: AtomicU32 = AtomicU32::new(0);
        let path = dir.join(format!("notify-{}.sock", SOCKETS.fetch_add(1, Ordering::Relaxed)));
        let err = |source| TestbedError::Notify { path: path.clone(), source };
        let socket = std::os::unix::net::UnixDatagram::bind(&path).map_err(err)?;
        socket.set_read_timeout(Some(POLL_INTERVAL)).map_err(err)?;
        let unread = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (unread, stop) = (Arc::clone(&unread), Arc::clone(&stop));
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    // Timeouts come back as errors: look at `stop`, then read again.
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        unread.lock().unwrap_or_else(PoisonError::into_inner).push_back(text);
                    }
                }
            })
        };
        Ok(Self { path, unread, stop, reader: Some(reader) })
    }

    /// Whether a READY=1 has arrived (taken or not).
    fn ready(&self, seen: &mut bool) -> bool {
        let unread = self.unread.lock().unwrap_or_else(PoisonError::into_inner);
        *seen |= unread.iter().any(|n| n.lines().any(|l| l == "READY=1"));
        *seen
    }

    /// The oldest notification not taken yet.
    fn take(&self) -> Option<String> {
        self.unread.lock().unwrap_or_else(PoisonError::into_inner).pop_front()
    }

    /// Stops reading once what was sent has been read; everything not taken yet.
    fn finish(&mut self) -> Vec<String> {
        // What an exited daemon sent is in the socket: one more timeout's worth of
        // reading takes it.
        thread::sleep(2 * POLL_INTERVAL);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.unread.lock().unwrap_or_else(PoisonError::into_inner).drain(..).collect()
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl<'tb> Daemon<'tb> {
    /// Runs `binary run --iface IFACE --policy POLICY --xdp-mode MODE` inside `netns`
    /// with `NOTIFY_SOCKET` naming `notify`, and waits (at most [`ATTACH_TIMEOUT`]) until
    /// it is ready: it said READY=1, as it does to systemd once every policy is applied
    /// and its state written, and the kernel shows an XDP program on `iface`. Fails with
    /// [`TestbedError::DaemonExited`], carrying the exit status and the log, if the
    /// daemon exits first.
    ///
    /// The daemon gets SIGTERM if the thread that started it dies, so drop or stop it on
    /// the thread that started it.
    fn start(
        command: &DaemonCommand<'_>,
        notify: Notifications,
        netns: &'tb NetNs,
    ) -> Result<Self, TestbedError> {
        let DaemonCommand { launcher, binary, iface, policy, mode, extra, env } = *command;
        let mut cmd = Command::new("ip");
        cmd.envs(env.iter().copied()).env("NOTIFY_SOCKET", &notify.path);
        cmd.args(["netns", "exec", netns.name()])
            .args(launcher)
            .arg(binary)
            .args(["run", "--iface", iface, "--policy"])
            .arg(policy)
            .args(["--xdp-mode", mode.flag()])
            .args(extra)
            // Plain log lines for the messages of failed tests and for matching.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at the terminal reaches only our process,
            // which then stops the daemon in order instead of racing it.
            .process_group(0);
        // SAFETY: between fork and exec only prctl(2), which is async-signal-safe, runs.
        // `ip netns exec` execs the daemon in place, so the setting reaches it; it
        // guarantees no daemon outlives a test process killed before its guards ran.
        unsafe {
            cmd.pre_exec(|| prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from));
        }
        let mut child = cmd
            .spawn()
            .map_err(|source| TestbedError::Spawn { command: describe(&cmd), source })?;
        let stdout = child.stdout.take().map(read_all);
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader =
            child.stderr.take().map(|pipe| collect_lines(pipe, Arc::clone(&stderr)));
        let mut process = DaemonProcess { child, stdout, stderr, stderr_reader };
        let mode = process.wait_ready(&notify, netns, iface)?;
        Ok(Self { process, mode, notify, _netns: netns })
    }

    /// The next notification the daemon sent (`READY=1\nSTATUS=…`, `RELOADING=1`, …),
    /// in order, READY=1 of the start included; at most 10 s away.
    pub fn next_notification(&self) -> Result<String, TestbedError> {
        const TIMEOUT: Duration = Duration::from_secs(10);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(next) = self.notify.take() {
                return Ok(next);
            }
            if Instant::now() >= deadline {
                return Err(TestbedError::NotifyTimeout { timeout: TIMEOUT });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The mode the kernel reports the program attached in.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        self.process.stderr_so_far()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Kills the daemon with SIGKILL, as a crash would, and reaps it; the filter it
    /// pinned stays in force.
    pub fn kill9(mut self) {
        self.process.kill();
    }

    /// Sends `signal` to the daemon (SIGHUP reloads).
    pub fn signal(&self, signal: Signal) -> Result<(), TestbedError> {
        let pid = self.process.child.id();
        // Pids are at most 2^22 (pid_max), so the cast is lossless.
        kill(Pid::from_raw(pid as i32), signal).map_err(|errno| TestbedError::Signal {
            signal,
            pid,
            source: errno.into(),
        })
    }

    /// Waits until the log contains `text` at least `count` times; fails with the log
    /// after `timeout`.
    pub fn wait_for_log(
        &self,
        text: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<(), TestbedError> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.matches(text).count() >= count {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestbedError::LogTimeout { text: text.to_owned(), count, log });
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends SIGTERM, waits at most [`STOP_TIMEOUT`] for the daemon to exit, and returns
    /// its exit status and everything it printed.
    pub fn stop(mut self) -> Result<DaemonOutput, TestbedError> {
        let process = &mut self.process;
        let running = process.child.try_wait().map_err(TestbedError::Wait)?.is_none();
        if running {
            let pid = process.child.id();
            // Pids are at most 2^22 (pid_max), so the cast is lossless.
            match kill(Pid::from_raw(pid as i32), Signal::SIGTERM) {
                // ESRCH: it exited between the check and the signal.
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => {
                    return Err(TestbedError::Signal {
                        signal: Signal::SIGTERM,
                        pid,
                        source: e.into(),
                    });
                }
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = process.child.try_wait().map_err(TestbedError::Wait)? {
                break status;
            }
            if Instant::now() >= deadline {
                process.kill();
                return Err(TestbedError::StopTimeout {
                    timeout: STOP_TIMEOUT,
                    stderr: process.finish_stderr(),
                });
            }
            thread::sleep(POLL_INTERVAL);
        };
        let stderr = process.finish_stderr();
        let stdout = process.stdout.take().map(|reader| reader.join().unwrap_or_default());
        let notifications = self.notify.finish();
        Ok(DaemonOutput { status, stdout: stdout.unwrap_or_default(), stderr, notifications })
    }
}

/// The daemon process and the threads draining its pipes, so it never blocks on a full
/// pipe. Killed and reaped when dropped.
struct DaemonProcess {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl DaemonProcess {
    fn wait_ready(
        &mut self,
        notify: &Notifications,
        netns: &NetNs,
        iface: &str,
    ) -> Result<AttachMode, TestbedError> {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        let mut ready = false;
        loop {
            if let Some(status) = self.child.try_wait().map_err(TestbedError::Wait)? {
                let stderr = self.finish_stderr();
                return Err(TestbedError::DaemonExited { iface: iface.to_owned(), status, stderr });
            }
            if notify.ready(&mut ready) {
                // The kernel's view, not a log line: attached means attached.
                let mut cmd = Command::new("ip");
                cmd.args(["-n", netns.name(), "link", "show", "dev", iface]);
                let shown = output(&mut cmd)?;
                if !shown.status.success() {
                    return Err(command_failed(&cmd, &shown));
                }
                let shown = String::from_utf8_lossy(&shown.stdout);
                if let Some(mode) = xdp_mode_in_link_show(&shown) {
                    return Ok(mode);
                }
            }
            if Instant::now() >= deadline {
                return Err(TestbedError::AttachTimeout {
                    iface: iface.to_owned(),
                    timeout: ATTACH_TIMEOUT,
                    stderr: self.stderr_so_far(),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// All of stderr; only once the process has exited (else it waits for it to).
    fn finish_stderr(&mut self) -> String {
        if let Some(reader) = self.stderr_reader.take() {
            // A panicking reader leaves what it had collected, which is what we return.
            let _ = reader.join();
        }
        self.stderr_so_far()
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        // Reaps it, so no zombie stays behind.
        let _ = self.child.wait();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_all(mut pipe: ChildStdout) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // On a read error, what came before it is still worth showing.
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn collect_lines(pipe: ChildStderr, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut pipe = BufReader::new(pipe);
        let mut line = Vec::new();
        while let Ok(n) = pipe.read_until(b'\n', &mut line) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_str(&String::from_utf8_lossy(&line));
            line.clear();
        }
    })
}

/// The XDP mode `ip link show` reports for an interface with a program attached: its
/// first line says `xdp` (native), `xdpgeneric` (skb), `xdpoffload` or `xdpmulti`, and
/// a later one `prog/xdp id N`.
fn xdp_mode_in_link_show(text: &str) -> Option<AttachMode> {
    if !text.contains("prog/xdp") {
        return None;
    }
    let first_line = text.lines().next()?;
    first_line.split_whitespace().find_map(|word| match word {
        "xdp" | "xdpdrv" => Some(AttachMode::Native),
        "xdpgeneric" => Some(AttachMode::Skb),
        _ => None,
    })
}

/// What the daemon printed, and how it exited.
#[derive(Clone, Debug)]
pub struct DaemonOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// What it sent systemd that was not read with [`Daemon::next_notification`].
    pub notifications: Vec<String>,
}

/// The counters of a filter, from `xdp-policy status --json` (which reads its pins, so
/// whether or not a daemon runs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    /// Packets per verdict name.
    pub packets: BTreeMap<String, u64>,
    /// Packets per rule name.
    pub rules: BTreeMap<String, u64>,
    /// Packets dropped and passed, over all verdicts.
    pub dropped: u64,
    pub passed: u64,
}

impl Counters {
    /// The counters of the first interface in `status --json` output; every verdict must
    /// be there.
    pub fn from_status_json(json: &str) -> Result<Self, TestbedError> {
        let err = |reason| TestbedError::Status { reason, json: json.to_owned() };
        let status: serde_json::Value = serde_json::from_str(json).map_err(|_| err("not JSON"))?;
        let iface = status.get(0).ok_or_else(|| err("no interface"))?;
        let mut counters =
            Self { packets: BTreeMap::new(), rules: BTreeMap::new(), dropped: 0, passed: 0 };
        for verdict in Verdict::ALL {
            let n = iface["verdicts"][verdict.name()]["packets"]
                .as_u64()
                .ok_or_else(|| err("a verdict without a packet count"))?;
            counters.packets.insert(verdict.name().to_owned(), n);
            if verdict.drops() { counters.dropped += n } else { counters.passed += n }
        }
        for rule in iface["rules"].as_array().ok_or_else(|| err("no rules"))? {
            let name = rule["name"].as_str().ok_or_else(|| err("a rule without a name"))?;
            let n = rule["packets"].as_u64().ok_or_else(|| err("a rule without packets"))?;
            counters.rules.insert(name.to_owned(), n);
        }
        Ok(counters)
    }

    pub fn packets(&self, verdict: Verdict) -> u64 {
        self.packets.get(verdict.name()).copied().unwrap_or(0)
    }
}

/// `ip ARGS`, with ARGS split at whitespace (no argument here contains any).
fn ip(args: &str) -> Result<(), TestbedError> {
    run(Command::new("ip").args(args.split_whitespace()))
}

/// Runs `cmd` to completion; fails unless it exits 0.
fn run(cmd: &mut Command) -> Result<(), TestbedError> {
    let output = output(cmd)?;
    if output.status.success() { Ok(()) } else { Err(command_failed(cmd, &output)) }
}

fn output(cmd: &mut Command) -> Result<Output, TestbedError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| TestbedError::Spawn { command: describe(cmd), source })
}

fn command_failed(cmd: &Command, output: &Output) -> TestbedError {
    TestbedError::Command {
        command: describe(cmd),
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).trim_end().to_owned(),
    }
}

fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|arg| arg.to_string_lossy().into_owned()));
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_status_json() {
        let verdicts: serde_json::Map<String, serde_json::Value> = Verdict::ALL
            .iter()
            .zip(1..)
            .map(|(v, n)| {
                (v.name().to_owned(), serde_json::json!({"packets": n, "bytes": 100 * n}))
            })
            .collect();
        let json = serde_json::json!([{
            "iface": "veth1",
            "verdicts": verdicts,
            "rules": [{"name": "block", "action": "drop", "mode": "enforce", "packets": 7, "bytes": 700}],
        }])
        .to_string();
        let counters = Counters::from_status_json(&json).expect("readable");
        assert_eq!(counters.packets(Verdict::DropRule), 2);
        assert_eq!(counters.rules.get("block"), Some(&7));
        let (dropped, passed) = Verdict::ALL
            .iter()
            .zip(1..)
            .fold((0, 0), |(d, p), (v, n)| if v.drops() { (d + n, p) } else { (d, p + n) });
        assert_eq!((counters.dropped, counters.passed), (dropped, passed));
        assert!(Counters::from_status_json("[]").is_err(), "no interface");
    }

    #[test]
    fn link_show_tells_native_from_skb() {
        let first = "2: veth1@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500";
        let rest = "qdisc noqueue state UP mode DEFAULT group default qlen 1000\n    \
                    link/ether 6e:40:98:51:57:1b brd ff:ff:ff:ff:ff:ff link-netns t-tx\n";
        let prog = "    prog/xdp id 106 name policy_xdp tag 5b3d10c4db7d47e7 jited\n";
        let native = format!("{first} xdp {rest}{prog}");
        let skb = format!("{first} xdpgeneric {rest}{prog}");
        let none = format!("{first} {rest}");
        assert_eq!(xdp_mode_in_link_show(&native), Some(AttachMode::Native), "{native}");
        assert_eq!(xdp_mode_in_link_show(&skb), Some(AttachMode::Skb), "{skb}");
        assert_eq!(xdp_mode_in_link_show(&none), None, "{none}");
    }

    #[test]
    fn probes_refuse_addresses_outside_the_testbed() {
        let documentation = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        for addr in [IpAddr::V4(TX_V4), IpAddr::V6(TX_V6), documentation] {
            assert!(check_rx_addr(addr).is_err(), "expected {addr} to be refused");
        }
        for addr in [IpAddr::V4(RX_V4), IpAddr::V6(RX_V6)] {
            assert!(check_rx_addr(addr).is_ok(), "expected {addr} to be accepted");
        }
    }
}
