//! The only module that talks to the kernel: load the embedded eBPF object, write a
//! compiled [`Ruleset`] into its maps, attach the program to interfaces, read counters.
//!
//! Maps are filled before the program is attached anywhere, so the first packet it sees
//! is already judged by the full policy.

use std::fmt;

use aya::{
    Ebpf, EbpfLoader, TestRun as _, TestRunOptions,
    maps::{Array, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode},
};
use policy_common::{
    Counter, PROGRAM_NAME, PortEntry, TCP_DST_PORTS_MAP, UDP_DST_PORTS_MAP, VERDICT_COUNTERS_MAP,
    Verdict,
};

use crate::policy::{PortTable, Ruleset};

/// The eBPF object `cargo xtask build` produced (empty when built without it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policy-ebpf.o"));

/// The embedded eBPF object; empty when the daemon was built without it.
pub fn embedded_object() -> &'static [u8] {
    OBJECT
}

/// Which XDP mode to attach in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeChoice {
    /// Native (driver) mode if the driver takes it, else generic (skb) mode.
    Auto,
    Native,
    Skb,
}

/// The mode a program was attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Skb,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Skb => "skb",
        })
    }
}

impl AttachMode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Skb => XdpMode::Skb,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this xdp-policy binary was built without its eBPF program: build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the eBPF object failed")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no program `{PROGRAM_NAME}`")]
    MissingProgram,
    #[error("program `{PROGRAM_NAME}` is not an XDP program")]
    ProgramType(#[source] ProgramError),
    #[error("the kernel rejected program `{PROGRAM_NAME}`")]
    ProgramLoad(#[source] ProgramError),
    #[error("the eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("map `{map}` does not have the expected type or layout")]
    MapType {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("writing entry {index} of map `{map}` failed")]
    MapWrite {
        map: &'static str,
        index: u32,
        #[source]
        source: MapError,
    },
    #[error("reading map `{map}` failed")]
    MapRead {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("attaching to `{iface}` in {mode} mode failed{hint}")]
    Attach {
        iface: String,
        mode: AttachMode,
        hint: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("interface `{0}` does not exist")]
    UnknownInterface(String),
    #[error("BPF_PROG_TEST_RUN of `{PROGRAM_NAME}` failed")]
    TestRun(#[source] ProgramError),
}

/// Per-verdict totals, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounts(pub [Counter; Verdict::COUNT as usize]);

impl VerdictCounts {
    pub fn get(&self, verdict: Verdict) -> Counter {
        self.0[verdict as usize]
    }

    /// Packets dropped and passed.
    pub fn dropped_passed(&self) -> (u64, u64) {
        Verdict::ALL.iter().fold((0, 0), |(d, p), v| {
            let n = self.get(*v).packets;
            if v.drops() { (d + n, p) } else { (d, p + n) }
        })
    }
}

/// The loaded program and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
}

impl Dataplane {
    /// Loads the program into the kernel and fills its maps from `ruleset`; attaches
    /// nothing.
    pub fn load(ruleset: &Ruleset) -> Result<Self, DataplaneError> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let ebpf = EbpfLoader::new().load(OBJECT).map_err(DataplaneError::Load)?;
        let mut dataplane = Self { ebpf };
        dataplane.write_ports(TCP_DST_PORTS_MAP, &ruleset.tcp_dst)?;
        dataplane.write_ports(UDP_DST_PORTS_MAP, &ruleset.udp_dst)?;
        dataplane.program()?.load().map_err(DataplaneError::ProgramLoad)?;
        Ok(dataplane)
    }

    fn program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        let program = self.ebpf.program_mut(PROGRAM_NAME).ok_or(DataplaneError::MissingProgram)?;
        program.try_into().map_err(DataplaneError::ProgramType)
    }

    /// Writes the entries of a freshly created (all zero, i.e. `NoRule`) port map.
    fn write_ports(&mut self, map: &'static str, table: &PortTable) -> Result<(), DataplaneError> {
        let raw = self.ebpf.map_mut(map).ok_or(DataplaneError::MissingMap(map))?;
        let mut array: Array<_, PortEntry> =
            Array::try_from(raw).map_err(|source| DataplaneError::MapType { map, source })?;
        for (port, action) in table.entries() {
            let index = u32::from(port);
            array
                .set(index, PortEntry::new(action), 0)
                .map_err(|source| DataplaneError::MapWrite { map, index, source })?;
        }
        Ok(())
    }

    /// Attaches the program to `iface`. With [`ModeChoice::Auto`], native mode is tried
    /// first and generic mode used when the driver refuses, with the reason logged.
    pub fn attach(
        &mut self,
        iface: &str,
        choice: ModeChoice,
    ) -> Result<AttachMode, DataplaneError> {
        match choice {
            ModeChoice::Native => self.attach_in(iface, AttachMode::Native),
            ModeChoice::Skb => self.attach_in(iface, AttachMode::Skb),
            ModeChoice::Auto => match self.attach_in(iface, AttachMode::Native) {
                Ok(mode) => Ok(mode),
                Err(e @ DataplaneError::UnknownInterface(_)) => Err(e),
                Err(e) => {
                    tracing::warn!(
                        iface,
                        reason = %error_chain(&e),
                        "native XDP refused, falling back to skb (generic) mode"
                    );
                    self.attach_in(iface, AttachMode::Skb)
                }
            },
        }
    }

    fn attach_in(&mut self, iface: &str, mode: AttachMode) -> Result<AttachMode, DataplaneError> {
        let result = self.program()?.attach(iface, mode.xdp_mode());
        match result {
            Ok(_link) => Ok(mode),
            Err(ProgramError::UnknownInterface { name }) => {
                Err(DataplaneError::UnknownInterface(name))
            }
            Err(source) => Err(DataplaneError::Attach {
                iface: iface.to_string(),
                mode,
                hint: attach_hint(mode, &source),
                source,
            }),
        }
    }

    /// Per-verdict packet and byte counts since the program was loaded.
    pub fn verdict_counts(&self) -> Result<VerdictCounts, DataplaneError> {
        let map = VERDICT_COUNTERS_MAP;
        let raw = self.ebpf.map(map).ok_or(DataplaneError::MissingMap(map))?;
        let array: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(raw).map_err(|source| DataplaneError::MapType { map, source })?;
        let mut counts = VerdictCounts::default();
        for verdict in Verdict::ALL {
            let per_cpu = array
                .get(&(verdict as u32), 0)
                .map_err(|source| DataplaneError::MapRead { map, source })?;
            let total = &mut counts.0[verdict as usize];
            for c in per_cpu.iter() {
                total.packets += c.packets;
                total.bytes += c.bytes;
            }
        }
        Ok(counts)
    }

    /// Runs the loaded program once on `packet` (BPF_PROG_TEST_RUN) and returns its XDP
    /// action. Counters are updated as for a real packet.
    pub fn test_run(&mut self, packet: &[u8]) -> Result<u32, DataplaneError> {
        let opts = TestRunOptions { data_in: Some(packet), ..TestRunOptions::default() };
        let result = self.program()?.test_run(opts).map_err(DataplaneError::TestRun)?;
        Ok(result.return_value)
    }
}

/// A hint for attach errors the kernel reports with nothing but an errno.
fn attach_hint(mode: AttachMode, error: &ProgramError) -> &'static str {
    let errno = match error {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    };
    match (mode, errno) {
        (AttachMode::Native, Some(libc::ERANGE)) => {
            " (ERANGE: on veth this means the peer's MTU is too large for native XDP; \
             lower it to 3,500 or less, or use --xdp-mode skb)"
        }
        (AttachMode::Native, Some(libc::EOPNOTSUPP)) => {
            " (the driver has no native XDP support: use --xdp-mode skb)"
        }
        (_, Some(libc::EBUSY) | Some(libc::EEXIST)) => {
            " (another XDP program is attached to this interface in a different mode or \
             without a replaceable link: detach it first)"
        }
        _ => "",
    }
}

/// `error: cause: cause`, for logging an error as one field.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
