//! Evasion, with the Linux stack as the oracle: every crafted frame of
//! `support::crafted` that the Linux stack in rx delivers to a listening socket without a
//! filter must not be delivered while the real `xdp-policy run` enforces a policy that
//! stops it, in native and in skb mode.
//!
//! Per XDP mode, on a fresh testbed, the whole corpus is sent three times from an
//! AF_PACKET socket on tx: (a) with no filter, which records what Linux delivers; (b) with
//! an allow-list (default drop; TCP and UDP to the open port, ICMP and ICMPv6 echo
//! requests pass); (c) with a deny-list (default pass; TCP and UDP to the blocked port
//! dropped). Delivery is read from the stack itself: the UDP token on rx's socket, rx's
//! SYN-ACK to the shot's own source port, the echo reply with the shot's id, rx's
//! neighbour advertisement or ARP reply, all captured on tx. The test fails on any attack
//! that arrives under (b) or (c), with a table naming each (each list is run twice: as it
//! is, judged by the port program, and with a rule on a source prefix no shot uses, which
//! takes the full program); on a control that does not
//! arrive under every phase; and, so the oracle is never vacuous, on a shape known to be
//! delivered by Linux that was not delivered under (a).
//!
//! Needs root (see `support::privileged`); the tests share kernel state, so the test holds
//! `support::serial` while it runs. Traffic stays inside the testbed's two namespaces.

mod support;

use std::{
    collections::HashSet,
    fmt::Write as _,
    io, mem,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use policy_daemon::dataplane::error_chain;
use support::{
    DAEMON, PolicyFile,
    crafted::{self, BLOCKED_PORT, Family, Kind, OPEN_PORT, Params, Shot, Target},
    packet::{ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP},
    serial, wire,
};
use testbed::{
    AttachMode, Counters, RX_IFACE, RX_V4, RX_V6, TX_IFACE, TX_V4, TX_V6, Testbed, XdpMode,
};

/// How long after the last frame of a phase its answers may still come.
const SETTLE: Duration = Duration::from_millis(500);
/// A pause after each shot, so that no queue on the way (the veth ring, the backlog)
/// overflows and a lost frame is never mistaken for a dropped one.
const PACING: Duration = Duration::from_micros(200);
const ETH_P_ALL: u16 = 0x0003;
const ARP_REPLY: [u8; 2] = [0, 2];
const TCP_SYN_ACK: u8 = 0x12;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REPLY: u8 = 129;
const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
const CAPTURE_BUFFER: i32 = 8 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    NoFilter,
    AllowList,
    DenyList,
    AllowListFull,
    DenyListFull,
}

const PHASES: [Phase; 5] =
    [Phase::NoFilter, Phase::AllowList, Phase::DenyList, Phase::AllowListFull, Phase::DenyListFull];

/// A rule on a source prefix no shot uses (documentation addresses): it changes no
/// verdict, and takes the policy to the full program.
const FULL_PROGRAM_RULE: &str =
    "\n[[rule]]\nname = \"full-program\"\naction = \"drop\"\nsrc = [\"2001:db8:ffff::/48\"]\n";

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::NoFilter => "no filter",
            Self::AllowList => "allow-list",
            Self::DenyList => "deny-list",
            Self::AllowListFull => "allow, full prog",
            Self::DenyListFull => "deny, full prog",
        }
    }

    /// The program that judges the phase's policy.
    fn program(self) -> Option<&'static str> {
        match self {
            Self::NoFilter => None,
            Self::AllowList | Self::DenyList => Some("policy_ports"),
            Self::AllowListFull | Self::DenyListFull => Some("policy_xdp"),
        }
    }
}

/// The policies, each alone in a temporary directory (root's, not group- or
/// world-writable, as `run` requires) removed on drop.
struct Policies {
    allow: PolicyFile,
    deny: PolicyFile,
    allow_full: PolicyFile,
    deny_full: PolicyFile,
}

impl Policies {
    fn write() -> Self {
        let (allow, deny) = (crafted::allow_list(), crafted::deny_list());
        Self {
            allow: PolicyFile::new("evasion-allow", &allow),
            deny: PolicyFile::new("evasion-deny", &deny),
            allow_full: PolicyFile::new("evasion-allow-full", &(allow + FULL_PROGRAM_RULE)),
            deny_full: PolicyFile::new("evasion-deny-full", &(deny + FULL_PROGRAM_RULE)),
        }
    }

    fn path(&self, phase: Phase) -> PathBuf {
        match phase {
            Phase::AllowList => self.allow.0.clone(),
            Phase::AllowListFull => self.allow_full.0.clone(),
            Phase::DenyListFull => self.deny_full.0.clone(),
            Phase::NoFilter | Phase::DenyList => self.deny.0.clone(),
        }
    }
}

/// The tx end of the wire: a socket that sends frames as they are and one that captures
/// what rx sends back, both AF_PACKET on [`TX_IFACE`] inside tx.
struct Wire {
    sender: OwnedFd,
    capture: OwnedFd,
}

impl Wire {
    fn open(testbed: &Testbed) -> Self {
        let opened = testbed.tx().run(|| -> io::Result<Self> {
            let sender = wire::packet_socket(TX_IFACE, 0)?;
            let capture = wire::packet_socket(TX_IFACE, ETH_P_ALL)?;
            // Root may go past rmem_max: nothing captured during a phase is ever lost.
            let size = CAPTURE_BUFFER;
            // SAFETY: an int option, pointer and length of a live i32.
            let rc = unsafe {
                libc::setsockopt(
                    capture.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&raw const size).cast(),
                    mem::size_of::<i32>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self { sender, capture })
        });
        opened
            .unwrap_or_else(|e| panic!("entering tx: {}", error_chain(&e)))
            .unwrap_or_else(|e| panic!("expected AF_PACKET sockets on {TX_IFACE} in tx: {e}"))
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        wire::send(&self.sender, frame)
    }

    /// The next frame captured that tx received (not one it sent), if one is waiting.
    fn receive(&self, buf: &mut [u8]) -> Option<usize> {
        loop {
            // SAFETY: sockaddr_ll is plain data; all zeros is valid.
            let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
            let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are writable for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.capture.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut from).cast(),
                    &raw mut len,
                )
            };
            let n = usize::try_from(n).ok()?;
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                return Some(n);
            }
        }
    }
}

/// What rx's answer (captured on tx) shows was delivered, as the [`Target`] it answers.
fn answered(frame: &[u8]) -> Option<Target> {
    let ether_type = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let l3 = frame.get(14..)?;
    match ether_type {
        ETH_P_ARP => {
            let reply = l3.get(6..8)? == ARP_REPLY && l3.get(14..18)? == RX_V4.octets();
            reply.then_some(Target::ArpRequest)
        }
        ETH_P_IPV4 => {
            if l3.get(12..16)? != RX_V4.octets() {
                return None;
            }
            let l4 = l3.get(usize::from(l3.first()? & 0xf) * 4..)?;
            transport_answer(Family::V4, l3[9], l4)
        }
        ETH_P_IPV6 => {
            if l3.get(8..24)? != RX_V6.octets() {
                return None;
            }
            transport_answer(Family::V6, l3[6], l3.get(40..)?)
        }
        _ => None,
    }
}

fn transport_answer(family: Family, proto: u8, l4: &[u8]) -> Option<Target> {
    let word = |at: usize| Some(u16::from_be_bytes(l4.get(at..at + 2)?.try_into().ok()?));
    match (family, proto, *l4.first()?) {
        (_, IPPROTO_TCP, _) if l4.get(13)? & TCP_SYN_ACK == TCP_SYN_ACK => {
            Some(Target::TcpSyn { family, port: word(0)?, src_port: word(2)? })
        }
        (Family::V4, IPPROTO_ICMP, ICMP_ECHO_REPLY)
        | (Family::V6, IPPROTO_ICMPV6, ICMPV6_ECHO_REPLY) => {
            Some(Target::Echo { family, id: word(4)? })
        }
        (Family::V6, IPPROTO_ICMPV6, ICMPV6_NEIGHBOUR_ADVERTISEMENT)
            if l4.get(8..24)? == RX_V6.octets() =>
        {
            Some(Target::NeighbourSolicitation)
        }
        _ => None,
    }
}

/// rx's sockets for one phase: TCP listeners (which answer SYNs by themselves) and UDP
/// sockets on both ports and both families. Closed after the phase, with any half-open
/// connection, so nothing answers into the next.
struct Sockets {
    _tcp: Vec<TcpListener>,
    udp: Vec<(Family, u16, UdpSocket)>,
}

impl Sockets {
    fn bind(testbed: &Testbed) -> Self {
        let bound = testbed.rx().run(|| -> io::Result<Self> {
            let mut tcp = Vec::new();
            let mut udp = Vec::new();
            let addrs = [(Family::V4, IpAddr::V4(RX_V4)), (Family::V6, IpAddr::V6(RX_V6))];
            for (family, addr) in addrs {
                for port in [BLOCKED_PORT, OPEN_PORT] {
                    tcp.push(TcpListener::bind(SocketAddr::new(addr, port))?);
                    let socket = UdpSocket::bind(SocketAddr::new(addr, port))?;
                    socket.set_nonblocking(true)?;
                    udp.push((family, port, socket));
                }
            }
            Ok(Self { _tcp: tcp, udp })
        });
        bound
            .unwrap_or_else(|e| panic!("entering rx: {}", error_chain(&e)))
            .unwrap_or_else(|e| panic!("expected to bind the test ports in rx: {e}"))
    }
}

/// Collects what was delivered until `stop` is set: UDP tokens from rx's sockets and
/// answers captured on tx.
fn collect(wire: &Wire, sockets: &Sockets, stop: &AtomicBool) -> HashSet<Target> {
    let mut delivered = HashSet::new();
    let mut fds: Vec<libc::pollfd> = std::iter::once(wire.capture.as_raw_fd())
        .chain(sockets.udp.iter().map(|(_, _, s)| s.as_raw_fd()))
        .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
        .collect();
    let mut buf = vec![0u8; 65_536];
    loop {
        // Read after the stop flag is seen, so nothing that came before it is missed.
        let last = stop.load(Ordering::Acquire);
        while let Some(n) = wire.receive(&mut buf) {
            delivered.extend(answered(&buf[..n]));
        }
        for (family, port, socket) in &sockets.udp {
            while let Ok(n) = socket.recv(&mut buf) {
                let token = String::from_utf8_lossy(&buf[..n]).into_owned();
                delivered.insert(Target::Udp { family: *family, port: *port, token });
            }
        }
        if last {
            return delivered;
        }
        // SAFETY: `fds` is a live array of that many pollfd.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
    }
}

/// Sends every shot, waits [`SETTLE`], and says which were delivered.
fn run_phase(wire: &Wire, testbed: &Testbed, shots: &[Shot]) -> Vec<bool> {
    let sockets = Sockets::bind(testbed);
    let mut buf = vec![0u8; 65_536];
    while wire.receive(&mut buf).is_some() {} // what came before this phase
    let stop = AtomicBool::new(false);
    let delivered = thread::scope(|scope| {
        let collector = scope.spawn(|| collect(wire, &sockets, &stop));
        let sent = (|| -> io::Result<()> {
            for shot in shots {
                for frame in &shot.frames {
                    wire.send(frame)?;
                }
                thread::sleep(PACING);
            }
            Ok(())
        })();
        thread::sleep(SETTLE);
        stop.store(true, Ordering::Release);
        let delivered = collector.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        sent.unwrap_or_else(|e| panic!("expected every frame to be sent from tx: {e}"));
        delivered
    });
    shots.iter().map(|shot| delivered.contains(&shot.target)).collect()
}

/// Permanent neighbour entries both ways: no address resolution runs during the test, so
/// every neighbour advertisement and ARP reply rx sends answers a shot.
fn pin_neighbours(testbed: &Testbed, tx_mac: [u8; 6], rx_mac: [u8; 6]) {
    let hex = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
    let (tx, rx) = (testbed.tx().name(), testbed.rx().name());
    let entries: [(&str, &str, IpAddr, String); 4] = [
        (tx, TX_IFACE, IpAddr::V4(RX_V4), hex(rx_mac)),
        (tx, TX_IFACE, IpAddr::V6(RX_V6), hex(rx_mac)),
        (rx, RX_IFACE, IpAddr::V4(TX_V4), hex(tx_mac)),
        (rx, RX_IFACE, IpAddr::V6(TX_V6), hex(tx_mac)),
    ];
    for (netns, iface, addr, lladdr) in entries {
        let status = Command::new("ip")
            .args(["-n", netns, "neigh", "replace", &addr.to_string(), "lladdr", &lladdr])
            .args(["dev", iface, "nud", "permanent"])
            .status()
            .expect("running ip neigh replace");
        assert!(status.success(), "expected `ip neigh replace {addr}` in {netns} to work");
    }
}

/// Takes the pinned filter off rx's interface (it outlives the daemon), so the next phase
/// starts from no filter and its counters are its own. `detach` returns once the kernel
/// has let the link go.
fn detach(testbed: &Testbed) {
    let out = support::xdp_policy(testbed, &["detach", "--iface", RX_IFACE]);
    assert!(out.status.success(), "detach: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(support::attached_program(testbed), None, "a program is still on {RX_IFACE}");
}

/// What one XDP mode saw.
struct ModeRun {
    mode: AttachMode,
    /// The shots of the first phase (the others differ only in their identifiers).
    shots: Vec<Shot>,
    /// Per phase, whether each shot was delivered.
    delivered: [Vec<bool>; PHASES.len()],
    /// Per phase with a daemon, the verdict counts it printed when it stopped.
    counters: Vec<(Phase, Counters)>,
    seconds: f64,
}

fn run_mode(mode: XdpMode, expect: AttachMode, first_epoch: u16, policies: &Policies) -> ModeRun {
    let start = Instant::now();
    let testbed = Testbed::new()
        .unwrap_or_else(|e| panic!("expected the testbed to set up: {}", error_chain(&e)));
    let tx_mac = wire::mac(testbed.tx().name(), TX_IFACE);
    let rx_mac = wire::mac(testbed.rx().name(), RX_IFACE);
    pin_neighbours(&testbed, tx_mac, rx_mac);
    let wire = Wire::open(&testbed);
    let mut delivered: [Vec<bool>; PHASES.len()] = Default::default();
    let mut counters = Vec::new();
    let mut shots = Vec::new();
    for (i, phase) in PHASES.into_iter().enumerate() {
        let params = Params { rx_mac, tx_mac, epoch: first_epoch + i as u16 };
        let corpus = crafted::corpus(&params);
        let daemon = (phase != Phase::NoFilter).then(|| {
            let daemon = testbed
                .start_daemon(Path::new(DAEMON), &policies.path(phase), mode)
                .unwrap_or_else(|e| {
                    panic!("expected xdp-policy to attach ({}): {}", phase.name(), error_chain(&e))
                });
            assert_eq!(daemon.mode(), expect, "attach mode; log:\n{}", daemon.log());
            let program = format!("program={}", phase.program().unwrap_or_default());
            assert!(daemon.log().contains(&program), "{program}; log:\n{}", daemon.log());
            daemon
        });
        delivered[i] = run_phase(&wire, &testbed, &corpus);
        if let Some(daemon) = daemon {
            let output = daemon
                .stop()
                .unwrap_or_else(|e| panic!("expected xdp-policy to stop: {}", error_chain(&e)));
            assert!(
                output.status.success(),
                "xdp-policy exited {}:\n{}",
                output.status,
                output.stderr
            );
            let table = testbed
                .counters(Path::new(DAEMON))
                .unwrap_or_else(|e| panic!("expected the counters: {}", error_chain(&e)));
            counters.push((phase, table));
            detach(&testbed);
        }
        if shots.is_empty() {
            shots = corpus;
        } else {
            let same = shots.iter().map(|s| &s.name).eq(corpus.iter().map(|s| &s.name));
            assert!(same, "every epoch of the corpus must hold the same shapes in the same order");
        }
    }
    ModeRun { mode: expect, shots, delivered, counters, seconds: start.elapsed().as_secs_f64() }
}

/// Corpus size, and per mode what was delivered in each phase and the daemon's verdicts.
fn counts(runs: &[ModeRun]) -> String {
    let mut out = String::new();
    let shots = &runs[0].shots;
    let attacks = shots.iter().filter(|s| s.kind == Kind::Attack).count();
    let _ = writeln!(
        out,
        "evasion corpus: {} shots ({attacks} attacks, {} controls), {} frames",
        shots.len(),
        shots.len() - attacks,
        shots.iter().map(|s| s.frames.len()).sum::<usize>()
    );
    for run in runs {
        let count = |phase: usize, kind: Kind| {
            let delivered = run.shots.iter().zip(&run.delivered[phase]);
            delivered.filter(|(s, d)| s.kind == kind && **d).count()
        };
        let _ =
            write!(out, "{} mode ({:.1} s), attacks + controls delivered:", run.mode, run.seconds);
        for (p, phase) in PHASES.into_iter().enumerate() {
            let (a, c) = (count(p, Kind::Attack), count(p, Kind::Control));
            let _ = write!(out, " {} {a} + {c};", phase.name());
        }
        out.push('\n');
        for (phase, table) in &run.counters {
            let verdicts: Vec<String> = table
                .packets
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(v, n)| format!("{v} {n}"))
                .collect();
            let _ = writeln!(out, "  {} verdicts: {}", phase.name(), verdicts.join(", "));
        }
    }
    out
}

/// A table of `rows` (shot indices): per phase and mode, whether the shot was delivered.
fn table(runs: &[ModeRun], rows: impl Iterator<Item = usize>) -> String {
    let mut out = String::new();
    let modes: Vec<String> = runs.iter().map(|r| r.mode.to_string()).collect();
    let _ = write!(out, "  {:<66} {:<7} {:>6}", "shot", "kind", "frames");
    for phase in PHASES {
        let _ = write!(out, "  {:<20}", format!("{} ({})", phase.name(), modes.join("/")));
    }
    out.push('\n');
    for i in rows {
        let shot = &runs[0].shots[i];
        let kind = format!("{:?}", shot.kind).to_lowercase();
        let _ = write!(out, "  {:<66} {kind:<7} {:>6}", shot.name, shot.frames.len());
        for (p, phase) in PHASES.into_iter().enumerate() {
            let cells: Vec<&str> = runs
                .iter()
                .map(|r| match (r.delivered[p][i], shot.kind, phase) {
                    (false, _, _) => "-",
                    (true, Kind::Attack, p) if p != Phase::NoFilter => "LEAK",
                    (true, _, _) => "yes",
                })
                .collect();
            let _ = write!(out, "  {:<20}", cells.join(" / "));
        }
        out.push('\n');
    }
    out
}

/// Which shots Linux delivers, and what the filter did with them; then the shots Linux
/// does not deliver.
fn delivery_report(runs: &[ModeRun]) -> String {
    let shots = &runs[0].shots;
    let delivered_somewhere = |i: &usize| runs.iter().any(|r| r.delivered[0][*i]);
    let mut out = String::from("shots the Linux stack delivers without a filter:\n");
    out.push_str(&table(runs, (0..shots.len()).filter(delivered_somewhere)));
    let refused: Vec<&str> = (0..shots.len())
        .filter(|i| !delivered_somewhere(i))
        .map(|i| shots[i].name.as_str())
        .collect();
    let _ = writeln!(out, "\nshots Linux does not deliver ({}):", refused.len());
    for chunk in refused.chunks(4) {
        let _ = writeln!(out, "  {}", chunk.join("  "));
    }
    out
}

/// Everything wrong: attacks that got past a policy (as a table), controls that did not
/// arrive, and shapes known to be delivered by Linux that were not without a filter.
fn failures(runs: &[ModeRun]) -> Vec<String> {
    let shots = &runs[0].shots;
    let mut out = Vec::new();
    let leaked: Vec<usize> = (0..shots.len())
        .filter(|&i| shots[i].kind == Kind::Attack)
        .filter(|&i| runs.iter().any(|r| r.delivered[1..].iter().any(|phase| phase[i])))
        .collect();
    if !leaked.is_empty() {
        out.push(format!(
            "{} attack shot(s) got past a policy that stops them (LEAK):\n{}",
            leaked.len(),
            table(runs, leaked.into_iter())
        ));
    }
    for run in runs {
        for (i, shot) in run.shots.iter().enumerate() {
            if shot.linux_delivers && !run.delivered[0][i] {
                out.push(format!(
                    "oracle: {} mode: {} is a shape Linux is known to deliver, but it was not \
                     delivered without a filter",
                    run.mode, shot.name
                ));
            }
            for (p, phase) in PHASES.into_iter().enumerate() {
                if shot.kind == Kind::Control && !run.delivered[p][i] {
                    out.push(format!(
                        "control: {} mode: {} did not arrive ({})",
                        run.mode,
                        shot.name,
                        phase.name()
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn crafted_packets_the_linux_stack_delivers_never_get_past_the_filter() {
    let Some(_serial) =
        serial("crafted_packets_the_linux_stack_delivers_never_get_past_the_filter")
    else {
        return;
    };
    let policies = Policies::write();
    let modes = [(XdpMode::Native, AttachMode::Native), (XdpMode::Skb, AttachMode::Skb)];
    let runs: Vec<ModeRun> = modes
        .into_iter()
        .enumerate()
        .map(|(i, (mode, expect))| {
            run_mode(mode, expect, PHASES.len() as u16 * i as u16, &policies)
        })
        .collect();
    let counts = counts(&runs);
    println!("{counts}\n{}", delivery_report(&runs));
    let failures = failures(&runs);
    assert!(
        failures.is_empty(),
        "expected no attack to get past the filter, every control to arrive and every shape \
         known to Linux to be delivered without a filter:\n{}\n{counts}",
        failures.join("\n")
    );
}

#[test]
fn the_corpus_is_well_formed() {
    // No root needed: shapes and identifiers only.
    let shots = crafted::corpus(&Params::default());
    assert!(shots.len() > 60, "expected well over 60 shots, got {}", shots.len());
    let targets: HashSet<&Target> = shots.iter().map(|s| &s.target).collect();
    assert_eq!(targets.len(), shots.len(), "every shot must have a target of its own");
    // Answers to one phase's shots can never be taken for another's.
    let later = crafted::corpus(&Params { epoch: crafted::MAX_EPOCHS - 1, ..Params::default() });
    let ours = |t: &&Target| !matches!(t, Target::NeighbourSolicitation | Target::ArpRequest);
    let shared = later.iter().map(|s| &s.target).filter(ours).filter(|t| targets.contains(t));
    assert_eq!(shared.count(), 0, "corpora of different epochs must not share targets");
    let names = |c: &[Shot]| c.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&shots), names(&later), "every epoch holds the same shapes in order");
    let attacks = shots.iter().filter(|s| s.kind == Kind::Attack);
    assert!(
        attacks.clone().all(|s| match &s.target {
            Target::TcpSyn { port, .. } | Target::Udp { port, .. } => *port == BLOCKED_PORT,
            _ => false,
        }),
        "every attack is aimed at the blocked port"
    );
    for shot in &shots {
        assert!(!shot.frames.is_empty(), "{}: no frames", shot.name);
        for frame in &shot.frames {
            assert!(
                frame.len() >= 14 && frame.len() <= 1514,
                "{}: a {}-byte frame",
                shot.name,
                frame.len()
            );
        }
    }
}
