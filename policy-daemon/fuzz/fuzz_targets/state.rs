//! Arbitrary bytes as a per-interface state file: parsing and checking it never panics,
//! and a state that passes the checks renders in `status` (text and JSON) and in the
//! daemon's view (rule slots in range, for counters) without panicking either.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use policy_common::RULE_COUNTER_SLOTS;
use policy_daemon::{
    dataplane::state::State,
    render::{self, InterfaceStatus},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match State::parse(Path::new("/run/xdp-policy/eth0.json"), "eth0", text) {
        Ok(state) => {
            assert!(state.rules.iter().all(|r| r.slot < RULE_COUNTER_SLOTS), "a slot out of range");
            if let Some(audit) = &state.audit {
                let _ = render::describe_audit(audit);
            }
            let sets = state
                .sets
                .iter()
                .map(|s| render::SetStatus {
                    name: s.name.clone(),
                    entries: u64::from(s.max_entries),
                    max_entries: s.max_entries,
                    timeout_ms: s.timeout_ms,
                    counters: Default::default(),
                })
                .collect();
            let status = InterfaceStatus {
                iface: state.iface.clone(),
                attached: true,
                state: Some(state),
                state_error: None,
                verdicts: Default::default(),
                rules: Vec::new(),
                sets,
                kernel_memory: Default::default(),
                layout: Some(2),
                program: Some("policy_ports".into()),
            };
            let _ = render::render_status(std::slice::from_ref(&status));
            let _ = serde_json::to_string(&status);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
