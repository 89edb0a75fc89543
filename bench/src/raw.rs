//! The few bpf() commands the bench needs that aya 0.14 does not offer on a bare file
//! descriptor: loading a two-instruction XDP program and the minimal port filter (a
//! hand-assembled program with two maps of its own), opening a program someone else
//! loaded (xdp-filter's) by id, BPF_PROG_TEST_RUN on any program descriptor, reading a
//! program's run-time statistics, and attaching a program to an interface with a
//! bpf_link.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya_obj::generated::{
    BPF_PSEUDO_MAP_FD, bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_map_type, bpf_prog_info,
    bpf_prog_type,
};

/// `BPF_F_TEST_XDP_LIVE_FRAMES`: frames the program returns XDP_TX for are really sent.
pub const TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a fully initialised bpf_attr that outlives the call; every
    // pointer in it refers to memory the caller keeps alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a plain C union of integers; all zero is its documented
    // "no option" state.
    unsafe { std::mem::zeroed() }
}

/// Loads the XDP program `r0 = action; exit`: the floor of the per-packet cost (with
/// XDP_PASS) and the traffic generator (with XDP_TX, run with live frames).
pub fn load_constant_xdp(action: u32, name: &str) -> io::Result<OwnedFd> {
    load_xdp(&[insn(op::MOV_K, R0, 0, 0, action as i32), insn(op::EXIT, 0, 0, 0, 0)], name)
}

/// Loads the XDP program that returns `action` from a function of its own: the floor
/// and one BPF-to-BPF call with its return, what a global function costs a packet on
/// this host (CPU mitigations can make returns dear).
pub fn load_calling_xdp(action: u32, name: &str) -> io::Result<OwnedFd> {
    load_xdp(
        &[
            // Calls the instruction `imm` after the next: the function below.
            insn(op::CALL, 0, PSEUDO_CALL, 0, 1),
            insn(op::EXIT, 0, 0, 0, 0),
            insn(op::MOV_K, R0, 0, 0, action as i32),
            insn(op::EXIT, 0, 0, 0, 0),
        ],
        name,
    )
}

/// Loads `insns` as an XDP program named `name` (at most 15 bytes are kept).
fn load_xdp(insns: &[bpf_insn], name: &str) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integer fields of the prog-load member of the union.
    unsafe {
        let load = &mut attr.__bindgen_anon_3;
        load.prog_type = bpf_prog_type::BPF_PROG_TYPE_XDP as u32;
        load.insn_cnt = insns.len() as u32;
        load.insns = insns.as_ptr() as u64;
        load.license = license.as_ptr() as u64;
        for (dst, src) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *dst = src as libc::c_char;
        }
    }
    let fd = match sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => fd,
        Err(e) => return Err(with_verifier_log(e, attr)),
    };
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The load `attr` failed with `error`: loads it again with the verifier's log and
/// returns the error with the log's end, which says which instruction it refused.
fn with_verifier_log(error: io::Error, mut attr: bpf_attr) -> io::Error {
    let mut log = vec![0u8; 1 << 16];
    // SAFETY: plain integer fields of the prog-load member; the log buffer outlives the
    // call and the kernel writes at most `log_size` bytes into it.
    unsafe {
        let load = &mut attr.__bindgen_anon_3;
        load.log_level = 1;
        load.log_size = log.len() as u32;
        load.log_buf = log.as_mut_ptr() as u64;
    }
    if let Ok(fd) = sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        // SAFETY: the retry loaded the program after all: close what it returned.
        drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        return error;
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let tail: Vec<&str> = text.lines().rev().take(12).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    io::Error::new(error.kind(), format!("{error}; the verifier's log ends:\n{}", tail.join("\n")))
}

/// The physical limit of a port filter: Ethernet, IPv4 (no options) and UDP parsed
/// with one bounds check, one lookup of the destination port in an array of 65,536
/// entries, drop if the entry is non-zero (counted in a per-CPU counter), else pass.
/// Hand-assembled, with two maps of its own; all three are freed when dropped.
pub struct MinimalPortFilter {
    prog: OwnedFd,
    /// ARRAY u32 → u32, one entry per UDP destination port: non-zero drops.
    ports: OwnedFd,
    /// PERCPU_ARRAY u32 → u64, one entry: the packets dropped, per CPU.
    drops: OwnedFd,
}

/// Entries of the minimal port filter's port array: one per port.
const PORT_ENTRIES: u32 = 1 << 16;

impl MinimalPortFilter {
    /// Creates the two maps and loads the program under `name` (at most 15 bytes kept).
    pub fn load(name: &str) -> io::Result<Self> {
        let ports =
            create_map(bpf_map_type::BPF_MAP_TYPE_ARRAY, 4, 4, PORT_ENTRIES, "bench_ports")?;
        let drops = create_map(bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1, "bench_drops")?;
        let insns = minimal_port_filter(ports.as_raw_fd(), drops.as_raw_fd());
        let prog = load_xdp(&insns, name)?;
        Ok(Self { prog, ports, drops })
    }

    /// The program, to attach or test-run.
    pub fn prog(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }

    /// Drops UDP to destination `port` from now on (BPF_MAP_UPDATE_ELEM).
    pub fn deny_port(&self, port: u16) -> io::Result<()> {
        let (key, value) = (u32::from(port), 1u32);
        let mut attr = zeroed_attr();
        // SAFETY: plain integer fields of the element member; key and value outlive the
        // call and are as large as the map's key and value.
        unsafe {
            let elem = &mut attr.__bindgen_anon_2;
            elem.map_fd = self.ports.as_raw_fd() as u32;
            elem.key = &key as *const u32 as u64;
            elem.__bindgen_anon_1.value = &value as *const u32 as u64;
            elem.flags = 0; // BPF_ANY
        }
        sys_bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    /// The packets dropped so far, summed over the CPUs (BPF_MAP_LOOKUP_ELEM on a
    /// per-CPU array returns one 8-byte value for each possible CPU).
    pub fn drops(&self) -> io::Result<u64> {
        let key = 0u32;
        let cpus = aya::util::nr_cpus().map_err(|(path, e)| {
            io::Error::new(e.kind(), format!("reading the possible CPUs ({path}): {e}"))
        })?;
        let mut values = vec![0u64; cpus];
        let mut attr = zeroed_attr();
        // SAFETY: plain integer fields of the element member; the key and the value
        // buffer (8 bytes per possible CPU, what the kernel writes) outlive the call.
        unsafe {
            let elem = &mut attr.__bindgen_anon_2;
            elem.map_fd = self.drops.as_raw_fd() as u32;
            elem.key = &key as *const u32 as u64;
            elem.__bindgen_anon_1.value = values.as_mut_ptr() as u64;
        }
        sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr)?;
        Ok(values.iter().sum())
    }
}

/// Creates a map (BPF_MAP_CREATE) named `name` (at most 15 bytes kept).
fn create_map(
    map_type: bpf_map_type,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // SAFETY: plain integer fields of the map-create member of the union.
    unsafe {
        let create = &mut attr.__bindgen_anon_1;
        create.map_type = map_type as u32;
        create.key_size = key_size;
        create.value_size = value_size;
        create.max_entries = max_entries;
        for (dst, src) in create.map_name.iter_mut().zip(name.bytes().take(15)) {
            *dst = src as libc::c_char;
        }
    }
    let fd = sys_bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The encodings the minimal port filter uses (`code` of struct bpf_insn).
mod op {
    /// BPF_LDX | BPF_MEM | BPF_B: `dst = *(u8 *)(src + off)`.
    pub const LDX_B: u8 = 0x71;
    /// BPF_LDX | BPF_MEM | BPF_H: `dst = *(u16 *)(src + off)`.
    pub const LDX_H: u8 = 0x69;
    /// BPF_LDX | BPF_MEM | BPF_W: `dst = *(u32 *)(src + off)`.
    pub const LDX_W: u8 = 0x61;
    /// BPF_LDX | BPF_MEM | BPF_DW: `dst = *(u64 *)(src + off)`.
    pub const LDX_DW: u8 = 0x79;
    /// BPF_ST | BPF_MEM | BPF_W: `*(u32 *)(dst + off) = imm`.
    pub const ST_W: u8 = 0x62;
    /// BPF_STX | BPF_MEM | BPF_W: `*(u32 *)(dst + off) = src`.
    pub const STX_W: u8 = 0x63;
    /// BPF_STX | BPF_MEM | BPF_DW: `*(u64 *)(dst + off) = src`.
    pub const STX_DW: u8 = 0x7b;
    /// BPF_ALU64 | BPF_MOV | BPF_K: `dst = imm`.
    pub const MOV_K: u8 = 0xb7;
    /// BPF_ALU64 | BPF_MOV | BPF_X: `dst = src`.
    pub const MOV_X: u8 = 0xbf;
    /// BPF_ALU64 | BPF_ADD | BPF_K: `dst += imm`.
    pub const ADD_K: u8 = 0x07;
    /// BPF_ALU | BPF_END | BPF_TO_BE: `dst = be<imm>(dst)` (a byte swap on this host).
    pub const TO_BE: u8 = 0xdc;
    /// BPF_JMP | BPF_JGT | BPF_X: `if dst > src goto +off`.
    pub const JGT_X: u8 = 0x2d;
    /// BPF_JMP | BPF_JNE | BPF_K: `if dst != imm goto +off`.
    pub const JNE_K: u8 = 0x55;
    /// BPF_JMP | BPF_JEQ | BPF_K: `if dst == imm goto +off`.
    pub const JEQ_K: u8 = 0x15;
    /// BPF_JMP | BPF_CALL: call helper `imm`.
    pub const CALL: u8 = 0x85;
    /// BPF_JMP | BPF_EXIT.
    pub const EXIT: u8 = 0x95;
    /// BPF_LD | BPF_IMM | BPF_DW: a 64-bit immediate over two instructions.
    pub const LD_DW: u8 = 0x18;
}

/// Return value, and what a helper returns.
const R0: u8 = 0;
/// The context (`struct xdp_md *`) at entry, a helper's first argument.
const R1: u8 = 1;
/// The frame's start, then a helper's second argument.
const R2: u8 = 2;
/// The frame's end.
const R3: u8 = 3;
/// Scratch.
const R4: u8 = 4;
/// The frame pointer (read-only; the stack is below it).
const R10: u8 = 10;
/// `src_reg` of a call to a function of the program (BPF_PSEUDO_CALL), not a helper.
const PSEUDO_CALL: u8 = 1;
/// `bpf_map_lookup_elem`'s helper number.
const MAP_LOOKUP_ELEM: i32 = 1;
/// The headers the minimal port filter reads within: Ethernet (14), IPv4 without options
/// (20) and UDP (8), checked against the frame's end once.
const HEADERS: i32 = 14 + 20 + 8;

/// One instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
    // SAFETY: bpf_insn is plain integers; zero is a valid value of each.
    let mut insn: bpf_insn = unsafe { std::mem::zeroed() };
    insn.code = code;
    insn.set_dst_reg(dst);
    insn.set_src_reg(src);
    insn.off = off;
    insn.imm = imm;
    insn
}

/// Where a conditional jump of the minimal port filter goes.
#[derive(Clone, Copy)]
enum Exit {
    Drop,
    Pass,
}

/// The minimal port filter's instructions, its port array and drop counter referred to
/// by these descriptors (`ld_imm64` with BPF_PSEUDO_MAP_FD, resolved by the kernel at
/// load).
fn minimal_port_filter(ports: i32, drops: i32) -> Vec<bpf_insn> {
    let mut insns = Vec::new();
    let mut jumps = Vec::new();
    let mut jump = |insns: &mut Vec<bpf_insn>, code, dst, src, imm, to: Exit| {
        jumps.push((insns.len(), to));
        insns.push(insn(code, dst, src, 0, imm));
    };
    // r0 = bpf_map_lookup_elem(map `fd`, the u32 key at r10 - 4).
    let lookup = |insns: &mut Vec<bpf_insn>, fd: i32| {
        insns.push(insn(op::MOV_X, R2, R10, 0, 0));
        insns.push(insn(op::ADD_K, R2, 0, 0, -4));
        insns.push(insn(op::LD_DW, R1, BPF_PSEUDO_MAP_FD as u8, 0, fd));
        insns.push(insn(0, 0, 0, 0, 0));
        insns.push(insn(op::CALL, 0, 0, 0, MAP_LOOKUP_ELEM));
    };
    // r2 = xdp_md->data, r3 = xdp_md->data_end; one bounds check for every read below.
    insns.push(insn(op::LDX_W, R2, R1, 0, 0));
    insns.push(insn(op::LDX_W, R3, R1, 4, 0));
    insns.push(insn(op::MOV_X, R4, R2, 0, 0));
    insns.push(insn(op::ADD_K, R4, 0, 0, HEADERS));
    jump(&mut insns, op::JGT_X, R4, R3, 0, Exit::Pass);
    // EtherType IPv4 (0x0800, read as a little-endian u16).
    insns.push(insn(op::LDX_H, R4, R2, 12, 0));
    jump(&mut insns, op::JNE_K, R4, 0, 0x0008, Exit::Pass);
    // Version 4, header length 5 words: no options.
    insns.push(insn(op::LDX_B, R4, R2, 14, 0));
    jump(&mut insns, op::JNE_K, R4, 0, 0x45, Exit::Pass);
    // Protocol UDP.
    insns.push(insn(op::LDX_B, R4, R2, 23, 0));
    jump(&mut insns, op::JNE_K, R4, 0, 17, Exit::Pass);
    // The destination port, in host order, as the key on the stack.
    insns.push(insn(op::LDX_H, R4, R2, 36, 0));
    insns.push(insn(op::TO_BE, R4, 0, 0, 16));
    insns.push(insn(op::STX_W, R10, R4, -4, 0));
    lookup(&mut insns, ports);
    jump(&mut insns, op::JEQ_K, R0, 0, 0, Exit::Pass);
    insns.push(insn(op::LDX_W, R1, R0, 0, 0));
    jump(&mut insns, op::JEQ_K, R1, 0, 0, Exit::Pass);
    // Counted: this CPU's drop counter += 1.
    insns.push(insn(op::ST_W, R10, 0, -4, 0));
    lookup(&mut insns, drops);
    jump(&mut insns, op::JEQ_K, R0, 0, 0, Exit::Drop);
    insns.push(insn(op::LDX_DW, R1, R0, 0, 0));
    insns.push(insn(op::ADD_K, R1, 0, 0, 1));
    insns.push(insn(op::STX_DW, R0, R1, 0, 0));
    let drop_at = insns.len();
    insns.push(insn(op::MOV_K, R0, 0, 0, 1)); // XDP_DROP
    insns.push(insn(op::EXIT, 0, 0, 0, 0));
    let pass_at = insns.len();
    insns.push(insn(op::MOV_K, R0, 0, 0, 2)); // XDP_PASS
    insns.push(insn(op::EXIT, 0, 0, 0, 0));
    for (at, to) in jumps {
        let target = match to {
            Exit::Drop => drop_at,
            Exit::Pass => pass_at,
        };
        insns[at].off = (target - at - 1) as i16;
    }
    insns
}

/// Opens the loaded program with this id (BPF_PROG_GET_FD_BY_ID).
pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_6.__bindgen_anon_1.prog_id = id;
    let fd = sys_bpf(bpf_cmd::BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `XDP_FLAGS_SKB_MODE`: generic XDP, run on the skb.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native XDP, run by the driver.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Attaches the XDP program to the interface with index `ifindex` in the calling
/// thread's network namespace (BPF_LINK_CREATE), in the mode `flags` says. The program
/// stays attached while the returned link descriptor is open.
pub fn xdp_link(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // SAFETY: plain integer fields of the link-create member of the union.
    unsafe {
        let link = &mut attr.link_create;
        link.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
        link.__bindgen_anon_2.target_ifindex = ifindex;
        link.attach_type = bpf_attach_type::BPF_XDP as u32;
        link.flags = flags;
    }
    let fd = sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One BPF_PROG_TEST_RUN call.
pub struct TestRun<'a> {
    pub data: &'a [u8],
    /// An `xdp_md` to start from (ingress ifindex for live frames), or none.
    pub ctx: Option<&'a [u8]>,
    pub repeat: u32,
    pub flags: u32,
    pub batch_size: u32,
}

/// Runs the program `repeat` times on `data`; returns its last return value and the
/// kernel's mean time per run in ns (an integer, so the bench times calls itself).
pub fn test_run(prog: BorrowedFd<'_>, run: &TestRun<'_>) -> io::Result<(u32, u32)> {
    let mut attr = zeroed_attr();
    // SAFETY: plain integer fields of the test member; the data and context buffers
    // outlive the call and the kernel only reads them (no data_out/ctx_out given).
    unsafe {
        let test = &mut attr.test;
        test.prog_fd = prog.as_raw_fd() as u32;
        test.data_in = run.data.as_ptr() as u64;
        test.data_size_in = run.data.len() as u32;
        if let Some(ctx) = run.ctx {
            test.ctx_in = ctx.as_ptr() as u64;
            test.ctx_size_in = ctx.len() as u32;
        }
        test.repeat = run.repeat;
        test.flags = run.flags;
        test.batch_size = run.batch_size;
    }
    sys_bpf(bpf_cmd::BPF_PROG_TEST_RUN, &mut attr)?;
    // SAFETY: reading back integer fields the kernel filled in.
    Ok(unsafe { (attr.test.retval, attr.test.duration) })
}

/// The program's machine code as the JIT produced it (for `objdump -b binary
/// -m i386:x86-64 -D`), to read a `perf` profile of it by offset.
pub fn jited_image(prog: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let len = prog_info(prog, None)?.jited_prog_len;
    let mut image = vec![0u8; len as usize];
    prog_info(prog, Some(&mut image))?;
    Ok(image)
}

/// The program's `bpf_prog_info` (BPF_OBJ_GET_INFO_BY_FD), with its JITed code copied
/// into `jited` if given (as much as fits).
fn prog_info(prog: BorrowedFd<'_>, jited: Option<&mut Vec<u8>>) -> io::Result<bpf_prog_info> {
    // SAFETY: bpf_prog_info is plain integers; zero asks for nothing.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    if let Some(buffer) = jited {
        info.jited_prog_len = buffer.len() as u32;
        info.jited_prog_insns = buffer.as_mut_ptr() as u64;
    }
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = prog.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = &mut info as *mut bpf_prog_info as u64;
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// A program's run-time statistics (`bpf_prog_info`), counted by the kernel only while
/// `kernel.bpf_stats_enabled` is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Nanoseconds spent in the program, summed over its runs.
    pub run_time_ns: u64,
    /// Runs counted.
    pub run_cnt: u64,
}

/// The program's run-time statistics so far (BPF_OBJ_GET_INFO_BY_FD).
pub fn run_stats(prog: BorrowedFd<'_>) -> io::Result<RunStats> {
    let info = prog_info(prog, None)?;
    Ok(RunStats { run_time_ns: info.run_time_ns, run_cnt: info.run_cnt })
}

#[cfg(test)]
mod tests {
    use policy_daemon::packet::{Packet, tcp, udp};
    use testbed::privileged;

    use super::*;

    #[test]
    fn minimal_port_filter_encoding() {
        let insns = minimal_port_filter(7, 8);
        assert_eq!(insns.len(), 36);
        let maps: Vec<(usize, i32)> = insns
            .iter()
            .enumerate()
            .filter(|(_, i)| i.code == op::LD_DW)
            .map(|(at, i)| {
                assert_eq!(i.src_reg(), BPF_PSEUDO_MAP_FD as u8, "at {at}");
                assert_eq!(i.dst_reg(), R1, "at {at}");
                let second = insns[at + 1];
                assert_eq!((second.code, second.imm), (0, 0), "the second half at {at}");
                (at, i.imm)
            })
            .collect();
        assert_eq!(maps, [(16, 7), (25, 8)]);
        // Every jump lands on one of the two exits' first instruction.
        let exits = [insns.len() - 4, insns.len() - 2];
        for (at, i) in insns.iter().enumerate() {
            if [op::JGT_X, op::JNE_K, op::JEQ_K].contains(&i.code) {
                let target = (at as i64 + 1 + i64::from(i.off)) as usize;
                assert!(exits.contains(&target), "the jump at {at} goes to {target}");
            }
        }
        let tail: Vec<(u8, i32)> = insns[exits[0]..].iter().map(|i| (i.code, i.imm)).collect();
        assert_eq!(tail, [(op::MOV_K, 1), (op::EXIT, 0), (op::MOV_K, 2), (op::EXIT, 0)]);
        let swap = insns.iter().find(|i| i.code == op::TO_BE).expect("a byte swap");
        assert_eq!(swap.imm, 16);
    }

    #[test]
    fn minimal_port_filter_judges_in_the_kernel() {
        if !privileged("minimal_port_filter_judges_in_the_kernel") {
            return;
        }
        let filter = MinimalPortFilter::load("bench_limit").expect("loads");
        filter.deny_port(9000).expect("sets the port");
        let frame = |packet: Packet| packet.src("198.18.0.1").dst("198.18.0.2").build();
        let mut options = frame(Packet::ipv4(udp(9000)));
        options[14] = 0x46;
        let cases = [
            ("IPv4 UDP to the port", frame(Packet::ipv4(udp(9000))), 1),
            ("IPv4 UDP to another port", frame(Packet::ipv4(udp(9001))), 2),
            ("IPv4 TCP to the port", frame(Packet::ipv4(tcp(9000))), 2),
            (
                "IPv6 UDP to the port",
                Packet::ipv6(udp(9000)).src("fd00::1").dst("fd00::2").build(),
                2,
            ),
            ("IPv4 with options", options, 2),
            ("a frame too short", frame(Packet::ipv4(udp(9000)))[..41].to_vec(), 2),
        ];
        for (what, bytes, expected) in &cases {
            let run = TestRun { data: bytes, ctx: None, repeat: 1, flags: 0, batch_size: 0 };
            let (action, _) = test_run(filter.prog(), &run).expect("test run");
            assert_eq!(action, *expected, "{what}");
        }
        assert_eq!(filter.drops().expect("reads the counter"), 1);
        let run = TestRun { data: &cases[0].1, ctx: None, repeat: 100, flags: 0, batch_size: 0 };
        test_run(filter.prog(), &run).expect("test run");
        assert_eq!(filter.drops().expect("reads the counter"), 101);
    }

    #[test]
    fn the_calling_program_returns_its_functions_action() {
        if !privileged("the_calling_program_returns_its_functions_action") {
            return;
        }
        let frame = Packet::ipv4(udp(9000)).src("198.18.0.1").dst("198.18.0.2").build();
        for action in [1, 2] {
            let prog = load_calling_xdp(action, "bench_call").expect("loads");
            let run = TestRun { data: &frame, ctx: None, repeat: 1, flags: 0, batch_size: 0 };
            assert_eq!(test_run(prog.as_fd(), &run).expect("test run").0, action);
        }
    }

    #[test]
    fn a_refused_program_comes_with_the_verifier_log() {
        if !privileged("a_refused_program_comes_with_the_verifier_log") {
            return;
        }
        // `exit` without setting r0.
        let error = load_xdp(&[insn(op::EXIT, 0, 0, 0, 0)], "bench_refused")
            .expect_err("the verifier refuses it");
        assert!(error.to_string().contains("R0 !read_ok"), "{error}");
    }
}
