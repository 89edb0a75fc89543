//! The traffic generator: BPF_PROG_RUN with live frames of a two-instruction XDP_TX
//! program on the tx veth. Each run "receives" a 60-byte UDP frame on veth0 and
//! transmits it with XDP_TX, that is into veth1's receive ring, as a NIC's frames
//! would arrive; one vCPU sends about 10 Mpps this way. Paced, it sends a fixed rate
//! instead: a small burst of runs every [`PACE_TICK`].
//!
//! The same program stays attached (generic mode) to the tx namespace's `lo`: with no
//! XDP program anywhere in the namespace, every live-frames run would enable and
//! disable XDP machinery and wait for two RCU grace periods, and the generator would
//! idle half the time.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd as _, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use policy_daemon::packet::{self, Packet};
use testbed::{NetNs, RX_IFACE, RX_V4, TX_IFACE, TX_V4, Testbed};

use crate::raw;

/// Length of the generated frames: the Ethernet minimum without FCS.
pub const FRAME_LEN: usize = 60;
/// UDP source port of the generated frames.
pub const SRC_PORT: u16 = 40_000;
/// Runs per BPF_PROG_RUN call: ~25 ms at 10 Mpps, how late a stop request can be.
const REPEAT: u32 = 1 << 18;
/// Frames per batch the kernel transmits at once.
const BATCH_SIZE: u32 = 64;
const XDP_TX: u32 = 3;
/// SCHED_FIFO priority of the generator thread (below the NAPI thread's, on another CPU).
const GEN_PRIORITY: i32 = 40;
/// A paced generator's time between calls: each call's burst (rate × tick, 200 frames at
/// 2 Mpps) fits veth1's 256-frame ring, so a burst is never dropped there for arriving
/// all at once.
pub const PACE_TICK: Duration = Duration::from_micros(100);
/// How far a paced generator may fall behind its schedule (a preempted thread) and
/// still catch up; further behind, it starts a new schedule from now rather than send
/// the missed bursts back to back.
const PACE_SLIP: Duration = Duration::from_millis(1);

/// A UDP/IPv4 frame of [`FRAME_LEN`] bytes, with a valid IPv4 header checksum and no
/// UDP checksum (optional over IPv4): what the Linux stack delivers.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
) -> [u8; FRAME_LEN] {
    const HEADERS: usize = 14 + 20 + 8;
    let frame = Packet::ipv4(packet::udp(dst_port))
        .macs(src_mac, dst_mac)
        .src_ip(src.into())
        .dst_ip(dst.into())
        .src_port(src_port)
        .payload(FRAME_LEN - HEADERS)
        .ipv4_checksum()
        .build();
    let mut out = [0; FRAME_LEN];
    out.copy_from_slice(&frame);
    out
}

/// An interface's index and MAC address in a namespace, from `ip -j link show`.
pub fn link_info(netns: &str, iface: &str) -> Result<(u32, [u8; 6])> {
    let text =
        crate::drop_rate::counters::in_netns(netns, "ip", &["-j", "link", "show", "dev", iface])?;
    parse_link_info(&text)
        .with_context(|| format!("no ifindex or MAC for {iface} in {netns}: {text}"))
}

fn parse_link_info(json: &str) -> Option<(u32, [u8; 6])> {
    let links: serde_json::Value = serde_json::from_str(json).ok()?;
    let ifindex = u32::try_from(links[0]["ifindex"].as_u64()?).ok()?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = links[0]["address"].as_str()?.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    Some((ifindex, mac))
}

/// What one generator run sent.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    /// Frames the program transmitted (some are dropped when veth1's ring is full).
    pub frames: u64,
    pub elapsed: Duration,
    /// Whether the thread got SCHED_FIFO (else nice -20).
    pub realtime: bool,
}

/// The loaded generator: its program (also attached to tx's `lo`), the frame and the
/// `xdp_md` it runs with.
pub struct Generator {
    prog: OwnedFd,
    /// Keeps the program attached to `lo` while the generator exists.
    _lo_link: OwnedFd,
    frame: [u8; FRAME_LEN],
    ctx: [u8; 24],
}

impl Generator {
    /// Loads the generator for `testbed`, sending to UDP port `dst_port` on rx.
    pub fn new(testbed: &Testbed, dst_port: u16) -> Result<Self> {
        let prog = raw::load_constant_xdp(XDP_TX, "bench_gen")
            .context("loading the generator's XDP_TX program")?;
        let (tx_index, tx_mac) = link_info(testbed.tx().name(), TX_IFACE)?;
        let (_, rx_mac) = link_info(testbed.rx().name(), RX_IFACE)?;
        let lo_link = testbed
            .tx()
            .run(|| -> std::io::Result<OwnedFd> {
                let lo = nix::net::if_::if_nametoindex("lo")?;
                raw::xdp_link(prog.as_fd(), lo, raw::XDP_FLAGS_SKB_MODE)
            })?
            .context("attaching the generator program to lo in tx (generic mode)")?;
        let mut ctx = [0u8; 24];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; data_end must be the frame length.
        ctx[4..8].copy_from_slice(&(FRAME_LEN as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&tx_index.to_ne_bytes());
        let frame = udp_frame(tx_mac, rx_mac, TX_V4, RX_V4, SRC_PORT, dst_port);
        Ok(Self { prog, _lo_link: lo_link, frame, ctx })
    }

    /// Sends from a thread in `tx` pinned to `cpu` until `stop` is set, `limit` has
    /// passed or `max_frames` are sent, whichever comes first: as fast as it can, or
    /// paced to `rate` frames per second (bursts of rate × [`PACE_TICK`] on a schedule of
    /// absolute deadlines, so that late wake-ups do not add up).
    pub fn run(
        &self,
        tx: &NetNs,
        cpu: usize,
        stop: &AtomicBool,
        limit: Duration,
        max_frames: u64,
        rate: Option<f64>,
    ) -> Result<Sent> {
        tx.run(|| {
            crate::opts::pin_to_cpu(0, cpu).context("pinning the generator thread")?;
            // Ahead of whatever else runs on its CPU (a build, say): every pause of more
            // than a few microseconds empties veth1's 256-frame ring, the NAPI thread
            // goes to sleep, and its cost per packet then includes being woken.
            // Real-time if permitted, else the highest nice.
            let realtime = crate::drop_rate::rig::make_realtime(0, GEN_PRIORITY);
            if !realtime {
                // SAFETY: plain syscalls on the calling thread.
                unsafe {
                    let tid = libc::gettid();
                    libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -20);
                }
            }
            let repeat = match rate {
                Some(rate) => (rate * PACE_TICK.as_secs_f64()).round().max(1.0) as u32,
                None => REPEAT,
            };
            let start = Instant::now();
            let mut deadline = start;
            let mut frames = 0u64;
            let run = raw::TestRun {
                data: &self.frame,
                ctx: Some(&self.ctx),
                repeat,
                flags: raw::TEST_XDP_LIVE_FRAMES,
                batch_size: BATCH_SIZE,
            };
            while !stop.load(Ordering::Relaxed) && start.elapsed() < limit && frames < max_frames {
                // With live frames the kernel reports no return value: the frames
                // themselves are the result, counted on veth1.
                raw::test_run(self.prog.as_fd(), &run)
                    .context("BPF_PROG_RUN with live frames (the generator)")?;
                frames += u64::from(repeat);
                if rate.is_some() {
                    deadline += PACE_TICK;
                    let now = Instant::now();
                    if deadline > now {
                        std::thread::sleep(deadline - now);
                    } else if now - deadline > PACE_SLIP {
                        deadline = now;
                    }
                }
            }
            Ok(Sent { frames, elapsed: start.elapsed(), realtime })
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_a_valid_ipv4_checksum() {
        let frame = udp_frame([2; 6], [4; 6], TX_V4, RX_V4, SRC_PORT, 9000);
        assert_eq!(frame.len(), 60);
        // The checksum over a header including its checksum is zero.
        assert_eq!(packet::internet_checksum(&frame[14..34]), 0);
        assert_eq!(&frame[0..6], &[4; 6]);
        assert_eq!(&frame[26..30], &[198, 18, 0, 1]);
        assert_eq!(u16::from_be_bytes([frame[36], frame[37]]), 9000);
        assert_eq!(u16::from_be_bytes([frame[16], frame[17]]), 46);
        assert_eq!(u16::from_be_bytes([frame[38], frame[39]]), 26);
    }

    #[test]
    fn reads_ifindex_and_mac() {
        let json = r#"[{"ifindex":5,"ifname":"veth1","address":"6e:40:98:51:57:1b"}]"#;
        assert_eq!(parse_link_info(json), Some((5, [0x6e, 0x40, 0x98, 0x51, 0x57, 0x1b])));
        assert_eq!(parse_link_info(r#"[{"ifindex":5,"address":"6e:40"}]"#), None);
        assert_eq!(parse_link_info("[]"), None);
    }
}
