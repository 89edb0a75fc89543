//! Raw frames on a testbed's wire: AF_PACKET sockets that send frames exactly as built
//! (bypassing the sender's stack) and capture what comes back.

use std::{
    ffi::CString,
    io, mem,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// An AF_PACKET raw socket bound to `iface` in the calling thread's namespace, receiving
/// `protocol` (an EtherType; 0: nothing).
pub fn packet_socket(iface: &str, protocol: u16) -> io::Result<OwnedFd> {
    let flags = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, flags, i32::from(protocol.to_be())) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor just opened, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = CString::new(iface).map_err(io::Error::other)?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain data, for which all zeros is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a sockaddr_ll of the length given, alive for the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends `frame` whole on `socket` (see [`packet_socket`]).
pub fn send(socket: &OwnedFd, frame: &[u8]) -> io::Result<()> {
    // SAFETY: `frame` is readable for its length during the call.
    let sent = unsafe { libc::send(socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    match usize::try_from(sent) {
        Ok(n) if n == frame.len() => Ok(()),
        Ok(n) => Err(io::Error::other(format!("sent {n} of {} bytes", frame.len()))),
        Err(_) => Err(io::Error::last_os_error()),
    }
}

/// The MAC address of `iface` in namespace `netns`.
pub fn mac(netns: &str, iface: &str) -> [u8; 6] {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "-j", "link", "show", "dev", iface])
        .output()
        .expect("running ip link show");
    let links: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("ip -j link show prints JSON");
    let text = links[0]["address"].as_str().expect("the link has an address");
    let bytes: Vec<u8> =
        text.split(':').map(|b| u8::from_str_radix(b, 16).expect("a MAC address byte")).collect();
    bytes.try_into().expect("a 6-byte MAC address")
}

/// tx's and rx's MAC addresses.
pub fn macs(testbed: &testbed::Testbed) -> ([u8; 6], [u8; 6]) {
    (mac(testbed.tx().name(), testbed::TX_IFACE), mac(testbed.rx().name(), testbed::RX_IFACE))
}

/// An AF_PACKET socket on tx's interface, sending only.
pub fn tx_socket(testbed: &testbed::Testbed) -> OwnedFd {
    testbed
        .tx()
        .run(|| packet_socket(testbed::TX_IFACE, 0))
        .expect("entering tx")
        .expect("an AF_PACKET socket on tx")
}
