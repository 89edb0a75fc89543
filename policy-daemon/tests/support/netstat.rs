//! The kernel's own network counters of a namespace, the oracle of the wire tests: what
//! a namespace's stack received, whatever the filter says it did.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read as _, Seek as _},
};

/// Kernel counters of one namespace: `/proc/net/snmp` and `/proc/net/netstat`, opened
/// from a thread inside it (`/proc/thread-self/net` is the opening thread's namespace;
/// the open files stay that namespace's whoever reads them).
pub struct NetCounters {
    files: [File; 2],
}

impl NetCounters {
    pub fn open(ns: &testbed::NetNs) -> Self {
        let open = |name: &str| {
            ns.run(|| File::open(format!("/proc/thread-self/net/{name}")))
                .expect("entering the namespace")
                .unwrap_or_else(|e| panic!("opening /proc/thread-self/net/{name}: {e}"))
        };
        Self { files: [open("snmp"), open("netstat")] }
    }

    /// Every counter, as `Group:Name` (`Tcp:InSegs`, `TcpExt:ListenDrops`): each group
    /// is a line of names followed by a line of values.
    pub fn read(&mut self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for file in &mut self.files {
            let mut text = String::new();
            file.rewind().expect("rewinding");
            file.read_to_string(&mut text).expect("reading");
            let lines: Vec<&str> = text.lines().collect();
            for pair in lines.chunks(2) {
                let [names, values] = pair else { continue };
                let mut names = names.split_whitespace();
                let group = names.next().unwrap_or_default();
                for (name, value) in names.zip(values.split_whitespace().skip(1)) {
                    if let Ok(v) = value.parse() {
                        all.insert(format!("{group}{name}"), v);
                    }
                }
            }
        }
        all
    }

    /// One counter now, as `Group:Name`.
    pub fn get(&mut self, key: &str) -> u64 {
        *self
            .read()
            .get(key)
            .unwrap_or_else(|| panic!("no counter {key} in /proc/net/{{snmp,netstat}}"))
    }
}

/// `after[key] - before[key]`.
pub fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, key: &str) -> u64 {
    let get = |m: &BTreeMap<String, u64>| {
        *m.get(key).unwrap_or_else(|| panic!("no counter {key} in /proc/net/{{snmp,netstat}}"))
    };
    get(after) - get(before)
}
