//! What the layer reads back: the container's journal as JSON (`journalctl -o json`),
//! and the kernel's audit records of system calls a seccomp filter refused.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{container::Container, process};

pub type Entry = serde_json::Map<String, Value>;

pub const UNIT: &str = "xdp-policy.service";

pub struct Journal<'a>(pub &'a Container);

impl Journal<'_> {
    /// `journalctl -o json` with `args`.
    pub fn query(&self, args: &[&str]) -> Result<Vec<Entry>> {
        let mut argv = vec!["journalctl", "--no-pager", "-o", "json"];
        argv.extend(args);
        let text = self.0.run(&argv)?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("journalctl printed {l:?}")))
            .collect()
    }

    /// Where the journal ends now: what an action logs comes after it.
    pub fn cursor(&self) -> Result<String> {
        let last = self.query(&["-n", "1"])?;
        let entry = last.first().context("the container's journal is empty")?;
        field(entry, "__CURSOR").map(str::to_string).context("an entry without a cursor")
    }

    /// The unit's entries after `cursor` (the daemon's, systemd's about it, and those of
    /// its other processes).
    pub fn unit_after(&self, cursor: &str) -> Result<Vec<Entry>> {
        self.query(&["-u", UNIT, &format!("--after-cursor={cursor}")])
    }

    /// Waits for the daemon to log an entry after `cursor` that `wanted` accepts.
    pub fn await_entry(
        &self,
        cursor: &str,
        what: &str,
        limit: Duration,
        wanted: impl Fn(&Entry) -> bool,
    ) -> Result<Entry> {
        let deadline = Instant::now() + limit;
        loop {
            let entries = self.unit_after(cursor)?;
            if let Some(entry) = entries.iter().find(|e| from_daemon(e) && wanted(e)) {
                return Ok(entry.clone());
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = entries.iter().map(summary).collect();
                bail!(
                    "the daemon did not log {what} within {limit:?}; it logged:\n{}",
                    seen.join("\n")
                );
            }
            process::sleep(Duration::from_millis(100))?;
        }
    }
}

/// A field's value as text (journalctl prints binary values as arrays of bytes).
pub fn field<'e>(entry: &'e Entry, name: &str) -> Option<&'e str> {
    entry.get(name)?.as_str()
}

pub fn message(entry: &Entry) -> &str {
    field(entry, "MESSAGE").unwrap_or("")
}

/// Logged by the daemon itself (not by systemd about it, nor by ExecReload's systemctl).
pub fn from_daemon(entry: &Entry) -> bool {
    field(entry, "_COMM") == Some("xdp-policy")
}

/// `PRIORITY IDENTIFIER: MESSAGE`, for error reports.
pub fn summary(entry: &Entry) -> String {
    format!(
        "  <{}> {}: {}",
        field(entry, "PRIORITY").unwrap_or("?"),
        field(entry, "SYSLOG_IDENTIFIER").or(field(entry, "_COMM")).unwrap_or("?"),
        message(entry).lines().next().unwrap_or("")
    )
}

/// The kernel's log from a line this run wrote into it on.
pub struct KernelLog {
    mark: String,
}

impl KernelLog {
    /// Writes a line of its own into the kernel's log (/dev/kmsg): what follows it is this
    /// run's.
    pub fn mark() -> Result<Self> {
        let mark = format!("xtask systemd-test {} begins", std::process::id());
        fs::write("/dev/kmsg", format!("{mark}\n")).context("writing to /dev/kmsg")?;
        Ok(Self { mark })
    }

    /// The kernel's log lines since the mark.
    pub fn lines(&self) -> Result<Vec<String>> {
        let text = process::run_within(
            std::process::Command::new("dmesg").arg("--notime"),
            Duration::from_secs(10),
        )?;
        let lines: Vec<&str> = text.lines().collect();
        let start = lines
            .iter()
            .rposition(|l| l.contains(&self.mark))
            .context("this run's mark is no longer in the kernel's log")?;
        Ok(lines[start + 1..].iter().map(|l| l.to_string()).collect())
    }
}

/// A system call a seccomp filter refused, as the kernel's audit record (type 1326)
/// has it.
#[derive(Debug, PartialEq, Eq)]
pub struct Denial {
    pub comm: String,
    pub exe: String,
    pub syscall: u32,
}

impl Denial {
    pub fn parse(line: &str) -> Option<Self> {
        if !line.contains("type=1326 ") {
            return None;
        }
        let quoted = |key: &str| {
            let rest = &line[line.find(&format!(" {key}=\""))? + key.len() + 3..];
            Some(rest[..rest.find('"')?].to_string())
        };
        let syscall = line.split(' ').find_map(|w| w.strip_prefix("syscall="))?.parse().ok()?;
        Some(Self { comm: quoted("comm")?, exe: quoted("exe")?, syscall })
    }
}

/// Lines by which printk's rate limit says it dropped audit records.
pub fn suppressed(line: &str) -> bool {
    line.contains("kauditd_printk_skb") && line.contains("suppressed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_audit_records_are_read() {
        let line = "audit: type=1326 audit(1796055837.173:5): auid=4294967295 uid=0 gid=0 \
                    ses=4294967295 pid=26305 comm=\"uname\" exe=\"/usr/bin/uname\" sig=0 \
                    arch=c000003e syscall=63 compat=0 ip=0x7fb6eedddb07 code=0x50000";
        assert_eq!(
            Denial::parse(line),
            Some(Denial { comm: "uname".into(), exe: "/usr/bin/uname".into(), syscall: 63 })
        );
        assert_eq!(Denial::parse("audit: type=1400 apparmor=\"DENIED\""), None);
        assert!(suppressed("kauditd_printk_skb: 4 callbacks suppressed"));
        assert!(!suppressed("audit: type=1326 …"));
    }
}
