//! The few bpf() commands the bench needs that aya 0.14 does not offer on a bare file
//! descriptor: loading a two-instruction XDP program, opening a program someone else
//! loaded (xdp-filter's) by id, BPF_PROG_TEST_RUN on any program descriptor, and
//! attaching a program to an interface with a bpf_link.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya_obj::generated::{
    bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_info, bpf_prog_type,
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
    // SAFETY: bpf_insn is plain integers; zero is a valid value of each.
    let mut mov: bpf_insn = unsafe { std::mem::zeroed() };
    mov.code = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    mov.set_dst_reg(0);
    mov.imm = action as i32;
    let mut exit = mov;
    exit.set_dst_reg(0);
    exit.imm = 0;
    exit.code = 0x95; // BPF_JMP | BPF_EXIT
    let insns = [mov, exit];
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
    let fd = sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
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
    let info_of = |buffer: Option<&mut Vec<u8>>| -> io::Result<bpf_prog_info> {
        // SAFETY: bpf_prog_info is plain integers; zero asks for nothing.
        let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
        if let Some(buffer) = buffer {
            info.jited_prog_len = buffer.len() as u32;
            info.jited_prog_insns = buffer.as_mut_ptr() as u64;
        }
        let mut attr = zeroed_attr();
        attr.info.bpf_fd = prog.as_raw_fd() as u32;
        attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
        attr.info.info = &mut info as *mut bpf_prog_info as u64;
        sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        Ok(info)
    };
    let len = info_of(None)?.jited_prog_len;
    let mut image = vec![0u8; len as usize];
    info_of(Some(&mut image))?;
    Ok(image)
}
