//! Arbitrary bytes as the daemon's configuration file: parsing, reading its `metrics`
//! value and rendering an error never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use policy_daemon::settings::{ConfigFile, MetricsAddr};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ConfigFile::parse(Path::new("fuzz.toml"), text) {
        Ok(config) => {
            if let Some(metrics) = &config.metrics {
                let _ = metrics.parse::<MetricsAddr>();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
