//! What gets through, on the wire: TCP connections and UDP datagrams from this host to
//! listeners in the container's network namespace, over IPv4 and IPv6. The listener is
//! xtask itself (`cargo xtask systemd-test-listen`, hidden) started in that namespace
//! with nsenter: minbase has nothing that listens on a port. Every probe carries a token
//! of its own, so an arrival is matched to exactly one probe.

use std::{
    fmt,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::process::CommandExt as _,
    process::{Child, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{
    container::{CONTAINER_V4, CONTAINER_V6, Container},
    process,
};

/// The ports listened on: the policies of the layer drop one of them or neither.
pub const PORTS: [u16; 2] = [7001, 7002];
/// A TCP connection to a dropped port gets no SYN-ACK: it times out after this (before
/// the SYN is sent again, at 1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(600);
/// How long a probe that passes may take to be reported by the listener.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One datagram or connection the listener received.
struct Arrival {
    proto: Proto,
    port: u16,
    token: String,
}

pub struct Wire {
    listener: Child,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    targets: [IpAddr; 2],
    next: AtomicU64,
}

/// What one probe found.
struct Probe {
    target: IpAddr,
    proto: Proto,
    port: u16,
    token: String,
    /// For TCP: the connection's outcome.
    connect: Option<String>,
}

impl Wire {
    /// Starts the listener in the container's network namespace; returns once it has
    /// bound every port.
    pub fn start(container: &Container) -> Result<Self> {
        let exe = std::env::current_exe().context("the path of xtask")?;
        let mut cmd = container.net_command(&exe);
        cmd.arg("systemd-test-listen");
        for port in PORTS {
            cmd.arg("--port").arg(port.to_string());
        }
        let mut listener = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .context("starting the listener in the container's network namespace")?;
        let stdout = listener.stdout.take().context("the listener's stdout")?;
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let ready = Arc::new(AtomicBool::new(false));
        {
            let arrivals = Arc::clone(&arrivals);
            let ready = Arc::clone(&ready);
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let mut words = line.split(' ');
                    match (words.next(), words.next(), words.next()) {
                        (Some("ready"), _, _) => ready.store(true, Ordering::Relaxed),
                        (Some(proto), Some(port), Some(token)) => {
                            let proto = if proto == "tcp" { Proto::Tcp } else { Proto::Udp };
                            let Ok(port) = port.parse() else { continue };
                            let arrival = Arrival { proto, port, token: token.to_string() };
                            arrivals.lock().expect("not poisoned").push(arrival);
                        }
                        _ => {}
                    }
                }
            });
        }
        let wire = Self {
            listener,
            arrivals,
            targets: [
                CONTAINER_V4.parse().context("CONTAINER_V4")?,
                CONTAINER_V6.parse().context("CONTAINER_V6")?,
            ],
            next: AtomicU64::new(0),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.load(Ordering::Relaxed) {
            ensure!(Instant::now() < deadline, "the listener did not bind its ports");
            process::sleep(Duration::from_millis(10))?;
        }
        Ok(wire)
    }

    fn token(&self) -> String {
        format!("p{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Whether the listener received `probe`, by the protocol and at the port it was
    /// sent to.
    fn arrived(&self, probe: &Probe) -> bool {
        let arrivals = self.arrivals.lock().expect("not poisoned");
        arrivals
            .iter()
            .any(|a| a.token == probe.token && a.proto == probe.proto && a.port == probe.port)
    }

    /// UDP, and TCP if `tcp`, to every port over IPv4 and IPv6; which probes arrived.
    /// Waits up to `patience` for the probes `dropped` says will arrive (a connection
    /// made arrives whatever the expectation), then a little for the others.
    fn round(&self, tcp: bool, dropped: &[u16], patience: Duration) -> Result<Vec<(Probe, bool)>> {
        let udp4 = UdpSocket::bind("0.0.0.0:0").context("a UDP socket")?;
        let udp6 = UdpSocket::bind("[::]:0").context("a UDP socket")?;
        let mut probes = Vec::new();
        let mut connects = Vec::new();
        for target in self.targets {
            for port in PORTS {
                let token = self.token();
                let socket = if target.is_ipv4() { &udp4 } else { &udp6 };
                socket
                    .send_to(token.as_bytes(), SocketAddr::new(target, port))
                    .with_context(|| format!("sending to {target} port {port}"))?;
                probes.push(Probe { target, proto: Proto::Udp, port, token, connect: None });
                if tcp {
                    let token = self.token();
                    let t = token.clone();
                    connects
                        .push(thread::spawn(move || connect(SocketAddr::new(target, port), &t)));
                    probes.push(Probe { target, proto: Proto::Tcp, port, token, connect: None });
                }
            }
        }
        let mut outcomes =
            connects.into_iter().map(|c| c.join().unwrap_or_else(|_| "panicked".into()));
        for probe in probes.iter_mut().filter(|p| p.proto == Proto::Tcp) {
            probe.connect = outcomes.next();
        }
        let awaited = |p: &Probe| match p.proto {
            Proto::Udp => !dropped.contains(&p.port),
            Proto::Tcp => p.connect.as_deref() == Some("connected"),
        };
        let deadline = Instant::now() + patience;
        while probes.iter().filter(|p| awaited(p)).any(|p| !self.arrived(p))
            && Instant::now() < deadline
        {
            process::sleep(Duration::from_millis(2))?;
        }
        // On a veth pair a datagram that passes arrives within microseconds; one that has
        // not by now was dropped.
        process::sleep(Duration::from_millis(50))?;
        Ok(probes
            .into_iter()
            .map(|p| {
                let arrived = self.arrived(&p);
                (p, arrived)
            })
            .collect())
    }

    /// One round, TCP and UDP, must find every port in `dropped` dropped and every other
    /// one open.
    pub fn expect(&self, dropped: &[u16], what: &str) -> Result<()> {
        let round = self.round(true, dropped, ARRIVAL_TIMEOUT)?;
        if let Some(report) = mismatch(&round, dropped) {
            bail!("{what}: expected {}, but:\n{report}", describe(dropped));
        }
        Ok(())
    }

    /// Waits, within `limit`, for UDP to find `dropped` as expected, and returns how long
    /// that took; then a round of TCP and UDP must find the same.
    pub fn await_enforced(&self, dropped: &[u16], what: &str, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let round = self.round(false, dropped, Duration::from_millis(100))?;
            match mismatch(&round, dropped) {
                None => break,
                Some(report) if started.elapsed() >= limit => {
                    bail!("{what}: after {limit:?}, still not {}:\n{report}", describe(dropped))
                }
                Some(_) => {}
            }
        }
        let took = started.elapsed();
        self.expect(dropped, what)?;
        Ok(took)
    }

    /// Runs `during` under a stream of UDP datagrams, one every millisecond or so, to
    /// `blocked` and `open` over both families; how many were sent and arrived on each.
    pub fn stream<T>(
        &self,
        blocked: u16,
        open: u16,
        during: impl FnOnce() -> Result<T>,
    ) -> Result<(T, Stream)> {
        let prefix = format!("s{}-", self.next.fetch_add(1, Ordering::Relaxed));
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let stop = Arc::clone(&stop);
            let targets = self.targets;
            let prefix = prefix.clone();
            thread::spawn(move || -> io::Result<[u64; 2]> {
                let udp4 = UdpSocket::bind("0.0.0.0:0")?;
                let udp6 = UdpSocket::bind("[::]:0")?;
                let mut sent = [0_u64; 2];
                let mut seq = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    for target in targets {
                        let socket = if target.is_ipv4() { &udp4 } else { &udp6 };
                        for (i, port) in [blocked, open].into_iter().enumerate() {
                            seq += 1;
                            let token = format!("{prefix}{seq}");
                            socket.send_to(token.as_bytes(), SocketAddr::new(target, port))?;
                            sent[i] += 1;
                        }
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                Ok(sent)
            })
        };
        let lead = process::sleep(Duration::from_millis(300));
        let result = lead.and_then(|()| during());
        let tail = process::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let sent = sender.join().map_err(|_| anyhow::anyhow!("the sender panicked"))??;
        let value = result?;
        tail?;
        process::sleep(Duration::from_millis(200))?;
        let arrivals = self.arrivals.lock().expect("not poisoned");
        let arrived = |port: u16| {
            let ours = |a: &&Arrival| a.proto == Proto::Udp && a.token.starts_with(&prefix);
            arrivals.iter().filter(ours).filter(|a| a.port == port).count() as u64
        };
        let stream = Stream {
            blocked,
            open,
            sent_blocked: sent[0],
            arrived_blocked: arrived(blocked),
            sent_open: sent[1],
            arrived_open: arrived(open),
        };
        Ok((value, stream))
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        // Its stdin closing ends it; this is quicker and certain.
        process::kill_group(self.listener.id());
        let _ = self.listener.wait();
    }
}

/// Datagrams sent and arrived on each port of a stream.
pub struct Stream {
    pub blocked: u16,
    pub open: u16,
    pub sent_blocked: u64,
    pub arrived_blocked: u64,
    pub sent_open: u64,
    pub arrived_open: u64,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "to {} (dropped): {} sent, {} arrived; to {} (open): {} sent, {} arrived",
            self.blocked,
            self.sent_blocked,
            self.arrived_blocked,
            self.open,
            self.sent_open,
            self.arrived_open
        )
    }
}

fn connect(to: SocketAddr, token: &str) -> String {
    match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
        Ok(mut stream) => match stream.write_all(format!("{token}\n").as_bytes()) {
            Ok(()) => "connected".into(),
            Err(e) => format!("connected, then {e}"),
        },
        Err(e) if e.kind() == io::ErrorKind::TimedOut => "timed out".into(),
        Err(e) => e.to_string(),
    }
}

fn describe(dropped: &[u16]) -> String {
    let open: Vec<String> =
        PORTS.iter().filter(|p| !dropped.contains(p)).map(u16::to_string).collect();
    let dropped: Vec<String> = dropped.iter().map(u16::to_string).collect();
    match (dropped.is_empty(), open.is_empty()) {
        (true, _) => format!("everything through ({})", open.join(", ")),
        (false, true) => format!("{} dropped", dropped.join(", ")),
        (false, false) => format!("{} dropped and {} open", dropped.join(", "), open.join(", ")),
    }
}

/// The probes that did not go as `dropped` says, one line each; `None` if all did.
fn mismatch(round: &[(Probe, bool)], dropped: &[u16]) -> Option<String> {
    let wrong: Vec<String> = round
        .iter()
        .filter(|(p, arrived)| *arrived == dropped.contains(&p.port))
        .map(|(p, arrived)| {
            format!(
                "  {} from this host to [{}]:{}: {}{}",
                p.proto,
                p.target,
                p.port,
                if *arrived { "arrived" } else { "did not arrive" },
                p.connect.as_ref().map(|c| format!(" (connect: {c})")).unwrap_or_default()
            )
        })
        .collect();
    (!wrong.is_empty()).then(|| wrong.join("\n"))
}

/// The listener (`cargo xtask systemd-test-listen`): UDP and TCP on every port, both
/// families (one dual-stack socket each); prints `ready` once bound, then one line per
/// datagram or connection, `udp|tcp PORT TOKEN`, until its stdin closes.
pub fn listen(ports: &[u16]) -> Result<()> {
    let out = Arc::new(Mutex::new(io::stdout()));
    let say = move |line: String| {
        let mut out = out.lock().expect("not poisoned");
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let mut sockets = Vec::new();
    for &port in ports {
        let any = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
        let udp = UdpSocket::bind(any).with_context(|| format!("binding udp port {port}"))?;
        let tcp = TcpListener::bind(any).with_context(|| format!("binding tcp port {port}"))?;
        sockets.push((port, udp, tcp));
    }
    for (port, udp, tcp) in sockets {
        let say_udp = say.clone();
        thread::spawn(move || {
            let mut buf = [0_u8; 512];
            while let Ok((n, _)) = udp.recv_from(&mut buf) {
                say_udp(format!("udp {port} {}", String::from_utf8_lossy(&buf[..n]).trim()));
            }
        });
        let say_tcp = say.clone();
        thread::spawn(move || {
            for stream in tcp.incoming().map_while(Result::ok) {
                let say = say_tcp.clone();
                thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut line = String::new();
                    if BufReader::new(stream).read_line(&mut line).is_ok() {
                        say(format!("tcp {port} {}", line.trim()));
                    }
                });
            }
        });
    }
    say("ready".into());
    let _ = io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(port: u16, proto: Proto) -> Probe {
        Probe {
            target: "198.18.241.2".parse().expect("an address"),
            proto,
            port,
            token: "p0".into(),
            connect: (proto == Proto::Tcp).then(|| "timed out".into()),
        }
    }

    #[test]
    fn a_probe_mismatches_when_it_arrives_at_a_dropped_port_or_not_at_an_open_one() {
        let round = vec![(probe(7001, Proto::Udp), false), (probe(7002, Proto::Tcp), true)];
        assert_eq!(mismatch(&round, &[7001]), None);
        let report = mismatch(&round, &[7002]).expect("a mismatch");
        assert_eq!(
            report,
            "  udp from this host to [198.18.241.2]:7001: did not arrive\n  \
             tcp from this host to [198.18.241.2]:7002: arrived (connect: timed out)"
        );
        assert_eq!(describe(&[7001]), "7001 dropped and 7002 open");
        assert_eq!(describe(&[]), "everything through (7001, 7002)");
    }
}
