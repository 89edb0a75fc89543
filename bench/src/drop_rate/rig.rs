//! One measurement: a fresh testbed with the device under test on veth1 (GRO on,
//! threaded NAPI, its kthread pinned to one vCPU), the generator on the other vCPU,
//! and the counters read around a window of steady traffic; for an XDP filter, then the
//! kernel's run-time statistics of its program over a second window, the traffic still
//! flowing.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use testbed::{RX_IFACE, RX_V4, TX_IFACE, Testbed};

use super::{
    counters::{self, UdpCounters, in_netns},
    generator::Generator,
    variants::{self, FilterCount, PORT, Policies, Variant},
};
use crate::{raw, xdpfilter::xdp_prog_id};

/// veth1's counter of frames its NAPI poll took off the ring: with or without an XDP
/// program, for frames from ndo_xdp_xmit (the generator's) and skbs alike.
pub const PROCESSED: &str = "rx_queue_0_xdp_packets";
/// veth1's counter of XDP_DROP verdicts of a native program.
pub const XDP_DROPS: &str = "rx_queue_0_xdp_drops";
/// Real-time priority of the NAPI thread.
const NAPI_PRIORITY: i32 = 50;
/// How long the ring may take to drain after the generator stops.
const DRAIN: Duration = Duration::from_millis(100);
/// The sysctl that turns the kernel's per-program run-time statistics on and off.
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// How long to run, on which CPUs, and how fast to send.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub warmup: Duration,
    /// The NAPI window (the kernel's program statistics off).
    pub window: Duration,
    /// The window after it in which the kernel's program statistics are on (XDP
    /// variants only).
    pub stats_window: Duration,
    pub gen_cpu: usize,
    pub napi_cpu: usize,
    /// Frames per second the generator is paced to; `None`: as fast as it can.
    pub rate: Option<f64>,
}

impl Plan {
    /// Most frames the generator may send in one measurement: 30 Mpps for its time limit.
    fn max_frames(&self) -> u64 {
        (self.limit().as_secs_f64() * 30e6) as u64
    }

    /// The generator's time limit: warm-up, both windows and three seconds for reading
    /// the counters (with both CPUs taken by real-time threads, the bench's own thread
    /// may wait up to a second for its turn).
    fn limit(&self) -> Duration {
        self.warmup + self.window + self.stats_window + Duration::from_secs(3)
    }
}

/// What one measurement found.
#[derive(Clone, Debug)]
pub struct Sample {
    /// NAPI-thread CPU time per processed packet in the window.
    pub ns_per_packet: f64,
    /// Packets processed per second in the window (wall clock).
    pub processed_mpps: f64,
    pub window_packets: u64,
    /// Share of the window the NAPI thread was on a CPU: near 1 when the generator
    /// keeps it saturated; below, each poll finds fewer packets and the cost of waking
    /// the thread is spread over fewer of them.
    pub napi_busy: f64,
    /// Frames the generator sent per second.
    pub generated_mpps: f64,
    /// The filter's XDP program's mean run time (ns per run, Δrun_time_ns ÷ Δrun_cnt
    /// from the kernel's statistics) in the second window; `None` for the filters that
    /// are not XDP programs.
    pub program_ns: Option<f64>,
    /// Whether the NAPI thread and the generator got SCHED_FIFO.
    pub fifo: bool,
    pub check: Check,
}

/// The counters over the whole run (quiet before, drained after), which must agree.
#[derive(Clone, Debug)]
pub struct Check {
    pub variant: Variant,
    /// Frames veth1 processed.
    pub processed: u64,
    /// XDP_DROP verdicts veth1 counted (native XDP only).
    pub xdp_drops: u64,
    /// The filter's own count, if it keeps one.
    pub filter: Option<FilterCount>,
    /// UDP datagrams that reached a socket in rx.
    pub socket: UdpCounters,
}

impl Check {
    /// What disagrees, in words; empty if all agree.
    pub fn mismatches(&self) -> Vec<String> {
        let mut wrong = Vec::new();
        let p = self.processed;
        if p == 0 {
            wrong.push("veth1 processed no packets".to_owned());
        }
        let reached = self.socket.reached_socket();
        if self.variant.delivers() {
            if reached != p {
                wrong.push(format!("{reached} reached the socket, {p} processed"));
            }
        } else if reached != self.variant.passes_first() {
            wrong.push(format!("{reached} reached the socket"));
        }
        // What the filter should drop: all but what it passes first.
        let dropped = p.saturating_sub(self.variant.passes_first());
        if let Some(filter) = self.filter {
            if filter.dropped != dropped {
                wrong.push(format!("filter dropped {}, {dropped} expected", filter.dropped));
            }
            if let Some(seen) = filter.seen
                && seen != p
            {
                wrong.push(format!("program saw {seen}, {p} processed"));
            }
        }
        if self.variant.native_xdp() && self.xdp_drops != dropped {
            wrong.push(format!("veth counted {} XDP drops, {p} processed", self.xdp_drops));
        }
        wrong
    }
}

/// Gives thread `pid` (0: the calling thread) SCHED_FIFO `priority`; false if not
/// permitted.
pub fn make_realtime(pid: u32, priority: i32) -> bool {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: plain syscall with a pointer to a live sched_param.
    unsafe { libc::sched_setscheduler(pid as libc::pid_t, libc::SCHED_FIFO, &param) == 0 }
}

/// Turns on GRO and threaded NAPI on veth1 and returns its NAPI kthread's pid, found as
/// the `napi/veth1-*` thread that appears when threading is turned on.
fn threaded_napi(testbed: &Testbed) -> Result<u32> {
    let rx = testbed.rx().name();
    let before = counters::napi_threads(RX_IFACE)?;
    // `ip netns exec` remounts /sys for the namespace, so this is rx's veth1.
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", rx, "sh", "-c"])
        .arg(format!("echo 1 > /sys/class/net/{RX_IFACE}/threaded"))
        .status()
        .context("running ip netns exec")?;
    if !status.success() {
        bail!("turning on threaded NAPI on {RX_IFACE} in {rx} failed ({status})");
    }
    let after = counters::napi_threads(RX_IFACE)?;
    let new: Vec<(&u32, &String)> =
        after.iter().filter(|(pid, _)| !before.contains_key(pid)).collect();
    match new[..] {
        [(pid, _)] => Ok(*pid),
        [] => bail!("no napi/{RX_IFACE}-* kthread appeared in threaded mode (had: {before:?})"),
        _ => bail!("several napi/{RX_IFACE}-* kthreads appeared at once, can't tell ours: {new:?}"),
    }
}

/// Counters read at one moment of a measurement.
struct Snapshot {
    stats: BTreeMap<String, u64>,
    napi_ns: u64,
    at: Instant,
}

fn snapshot(ethtool: &counters::EthtoolReader, napi: u32) -> Result<Snapshot> {
    // The statistics, then the clock and schedstat a few microseconds later, the same
    // way at both ends of the window.
    let stats = ethtool.read()?;
    let at = Instant::now();
    let napi_ns = counters::cpu_ns(napi)?;
    Ok(Snapshot { stats, napi_ns, at })
}

/// The kernel's per-program run-time statistics turned on (`kernel.bpf_stats_enabled`)
/// while this lives; the previous setting is written back when it is dropped, on every
/// way out.
struct BpfStatsOn {
    previous: String,
}

impl BpfStatsOn {
    fn new() -> Result<Self> {
        let previous = std::fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_owned();
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStatsOn {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.previous) {
            eprintln!("bench: restoring {BPF_STATS} to {}: {e}", self.previous);
        }
    }
}

/// The XDP program attached to veth1 in rx, opened by its id (which `ip link` shows).
struct AttachedProgram {
    id: u32,
    fd: OwnedFd,
}

impl AttachedProgram {
    fn open(rx: &str) -> Result<Self> {
        let id = xdp_prog_id(rx, RX_IFACE)?;
        let fd = raw::prog_fd_by_id(id)
            .with_context(|| format!("opening the XDP program {id} on {RX_IFACE}"))?;
        Ok(Self { id, fd })
    }

    /// The program's mean run time over `window`, the statistics on just for it:
    /// Δrun_time_ns ÷ Δrun_cnt.
    fn ns_per_run<T>(
        &self,
        window: Duration,
        interrupted: &AtomicBool,
        sender: &thread::ScopedJoinHandle<'_, T>,
    ) -> Result<f64> {
        let _stats = BpfStatsOn::new()?;
        let read = || {
            raw::run_stats(self.fd.as_fd())
                .with_context(|| format!("reading the statistics of XDP program {}", self.id))
        };
        let first = read()?;
        sleep_unless(window, interrupted, sender)?;
        let last = read()?;
        let runs = last.run_cnt.wrapping_sub(first.run_cnt);
        if runs == 0 {
            bail!("XDP program {} counted no runs with the statistics on", self.id);
        }
        Ok(last.run_time_ns.wrapping_sub(first.run_time_ns) as f64 / runs as f64)
    }
}

/// Sets the flag when dropped: the generator stops on every way out.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Measures `variant` once on a testbed of its own.
pub fn measure(
    variant: Variant,
    plan: &Plan,
    daemon: &Path,
    policies: &Policies,
    interrupted: &AtomicBool,
) -> Result<Sample> {
    let testbed = Testbed::new().context("creating the testbed")?;
    let (tx, rx) = (testbed.tx(), testbed.rx().name());
    // Quiet: no router solicitations or MLD reports from tx mixed into the counts.
    tx.run(|| std::fs::write(format!("/proc/sys/net/ipv6/conf/{TX_IFACE}/disable_ipv6"), "1"))?
        .context("disabling IPv6 on veth0 in tx")?;
    in_netns(rx, "ethtool", &["-K", RX_IFACE, "gro", "on"])?;
    let addr = SocketAddr::from((RX_V4, PORT));
    let socket = testbed
        .rx()
        .run(|| UdpSocket::bind(addr))?
        .with_context(|| format!("binding a UDP socket to {addr} in rx"))?;
    let generator = Generator::new(&testbed, PORT)?;
    let installed = variants::install(variant, &testbed, daemon, policies)
        .with_context(|| format!("installing {}", variant.label()))?;
    let napi = threaded_napi(&testbed)?;
    crate::opts::pin_to_cpu(napi, plan.napi_cpu).context("pinning the NAPI thread")?;
    let fifo = make_realtime(napi, NAPI_PRIORITY);
    let program = if variant.xdp() { Some(AttachedProgram::open(rx)?) } else { None };

    let ethtool = counters::EthtoolReader::open(testbed.rx(), RX_IFACE)?;
    let start_stats = counters::ethtool_stats(rx, RX_IFACE)?;
    let start_filter = installed.count()?;
    let start_udp = counters::udp_counters(testbed.rx())?;

    let stop = AtomicBool::new(false);
    let (sent, first, last, program_ns) = thread::scope(|scope| -> Result<_> {
        let sender = scope.spawn(|| {
            generator.run(tx, plan.gen_cpu, &stop, plan.limit(), plan.max_frames(), plan.rate)
        });
        let window = || -> Result<(Snapshot, Snapshot, Option<f64>)> {
            let _stop = StopOnDrop(&stop);
            sleep_unless(plan.warmup, interrupted, &sender)?;
            let first = snapshot(&ethtool, napi)?;
            sleep_unless(plan.window, interrupted, &sender)?;
            let last = snapshot(&ethtool, napi)?;
            // The statistics cost every run a clock read or two: on only now, after the
            // NAPI window.
            let program_ns = match &program {
                Some(program) => {
                    Some(program.ns_per_run(plan.stats_window, interrupted, &sender)?)
                }
                None => None,
            };
            Ok((first, last, program_ns))
        };
        let window = window();
        let sent = sender.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        // The generator's own error first: it explains a window cut short.
        let sent = sent.context("the traffic generator failed")?;
        let (first, last, program_ns) = window?;
        Ok((sent, first, last, program_ns))
    })?;
    if let Some(program) = &program {
        let now = xdp_prog_id(rx, RX_IFACE)?;
        if now != program.id {
            bail!(
                "the XDP program on {RX_IFACE} changed during the run ({} → {now}): its \
                 statistics are not the filter's",
                program.id
            );
        }
    }
    thread::sleep(DRAIN);
    // What waits in the socket's queue was delivered too: reading it moves it into
    // InDatagrams.
    drain(&socket)?;

    let end_stats = counters::ethtool_stats(rx, RX_IFACE)?;
    let end_filter = installed.count()?;
    let end_udp = counters::udp_counters(testbed.rx())?;
    installed.finish().with_context(|| format!("removing {}", variant.label()))?;

    let delta = |name: &str, a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| -> Result<u64> {
        Ok(counters::stat(b, name)?.wrapping_sub(counters::stat(a, name)?))
    };
    let window_packets = delta(PROCESSED, &first.stats, &last.stats)?;
    if window_packets == 0 {
        bail!("{RX_IFACE} processed no packets in the window: is the generator sending?");
    }
    let napi_ns = last.napi_ns.saturating_sub(first.napi_ns);
    let seconds = last.at.duration_since(first.at).as_secs_f64();
    let filter = match (start_filter, end_filter) {
        (Some(a), Some(b)) => Some(FilterCount {
            dropped: b.dropped.wrapping_sub(a.dropped),
            seen: b.seen.zip(a.seen).map(|(b, a)| b.wrapping_sub(a)),
        }),
        _ => None,
    };
    Ok(Sample {
        ns_per_packet: napi_ns as f64 / window_packets as f64,
        processed_mpps: window_packets as f64 / seconds / 1e6,
        napi_busy: napi_ns as f64 / 1e9 / seconds,
        window_packets,
        generated_mpps: sent.frames as f64 / sent.elapsed.as_secs_f64() / 1e6,
        program_ns,
        fifo: fifo && sent.realtime,
        check: Check {
            variant,
            processed: delta(PROCESSED, &start_stats, &end_stats)?,
            xdp_drops: delta(XDP_DROPS, &start_stats, &end_stats)?,
            filter,
            socket: end_udp.since(&start_udp),
        },
    })
}

/// Reads every datagram queued on `socket` (at most a million: a socket buffer holds
/// far fewer).
fn drain(socket: &UdpSocket) -> Result<u64> {
    socket.set_nonblocking(true).context("draining the UDP socket")?;
    let mut buf = [0u8; 64];
    for n in 0..1_000_000 {
        match socket.recv(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(n),
            Err(e) => return Err(e).context("draining the UDP socket"),
        }
    }
    bail!("the UDP socket did not run dry after a million datagrams")
}

/// Sleeps `duration`, failing early if the bench is interrupted or the generator ended.
fn sleep_unless<T>(
    duration: Duration,
    interrupted: &AtomicBool,
    sender: &thread::ScopedJoinHandle<'_, T>,
) -> Result<()> {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if sender.is_finished() {
            bail!("the generator stopped early");
        }
        thread::sleep(
            deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_runs_through_both_windows() {
        let plan = Plan {
            warmup: Duration::from_millis(500),
            window: Duration::from_secs(3),
            stats_window: Duration::from_secs(1),
            gen_cpu: 0,
            napi_cpu: 1,
            rate: None,
        };
        assert_eq!(plan.limit(), Duration::from_millis(7500));
    }

    #[test]
    fn xdp_variants_are_the_ones_with_a_program() {
        let xdp: Vec<Variant> = Variant::ALL.into_iter().filter(|v| v.xdp()).collect();
        assert_eq!(xdp.len(), 9, "{xdp:?}");
        for variant in [Variant::NoFilter, Variant::Iptables, Variant::Nft] {
            assert!(!variant.xdp(), "{variant:?}");
        }
        assert!(Variant::ALL.iter().filter(|v| v.native_xdp()).all(|v| v.xdp()));
    }

    fn check(
        variant: Variant,
        processed: u64,
        xdp_drops: u64,
        filter: Option<u64>,
        socket: u64,
    ) -> Check {
        Check {
            variant,
            processed,
            xdp_drops,
            filter: filter.map(|dropped| FilterCount { dropped, seen: None }),
            socket: UdpCounters { in_datagrams: 0, rcvbuf_errors: socket },
        }
    }

    #[test]
    fn counters_must_agree() {
        assert!(check(Variant::NoFilter, 100, 0, None, 100).mismatches().is_empty());
        assert!(check(Variant::Nft, 100, 0, Some(100), 0).mismatches().is_empty());
        assert!(check(Variant::XdpDrop, 100, 100, None, 0).mismatches().is_empty());
        assert!(check(Variant::LimitNative, 100, 100, Some(100), 0).mismatches().is_empty());
        assert_eq!(check(Variant::LimitNative, 100, 100, Some(99), 0).mismatches().len(), 1);
        assert_eq!(check(Variant::LimitNative, 100, 99, Some(100), 0).mismatches().len(), 1);
        assert_eq!(check(Variant::NoFilter, 100, 0, None, 90).mismatches().len(), 1);
        assert_eq!(check(Variant::Iptables, 100, 0, Some(99), 1).mismatches().len(), 2);
        assert_eq!(check(Variant::XdpFilterUdp, 100, 98, Some(100), 0).mismatches().len(), 1);
        assert_eq!(check(Variant::Nft, 0, 0, Some(0), 0).mismatches().len(), 1);
    }
}
