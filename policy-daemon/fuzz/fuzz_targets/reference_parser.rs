//! Arbitrary frames (at least an Ethernet header, as XDP always has) through the
//! reference packet parser: it never panics, whatever the headers claim.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_daemon::policy::reference;

/// An Ethernet header: the shortest frame XDP hands the program.
const ETH_HLEN: usize = 14;

fuzz_target!(|data: &[u8]| {
    if data.len() >= ETH_HLEN {
        let _ = reference::parse_packet(data);
    }
});
