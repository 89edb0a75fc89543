//! The systemd layer (`cargo xtask systemd-test`, and the last layer of `cargo xtask
//! test`): the .deb on a booted Debian 12, under its real systemd 252, checked against the
//! journal and the wire.
//!
//! A root file system is made with debootstrap (minbase, systemd; cached: see `rootfs`)
//! and booted with `systemd-nspawn --boot` (see `container`). Then, each step timed:
//! `apt install` of the .deb starts and enables nothing and installs what it should, and
//! `systemd-analyze verify` finds nothing to say about the unit there; with a policy and
//! the container's interface configured, `systemctl start` reaches active (READY=1) with
//! a STATUS= line, the daemon's sandbox is what the unit says, and TCP and UDP from this
//! host to a dropped port are dropped and to an open port arrive, over IPv4 and IPv6; a
//! policy file replaced, and `systemctl reload`, are each enforced on the wire; a broken
//! policy is logged at priority err and the old one stays in force; a filter detached
//! under the daemon is logged at err with its interface, and `systemctl reload` puts it
//! back; `systemctl restart` under a UDP stream to a dropped port lets no datagram
//! through; `systemctl stop` leaves the filter in force; the daemon logs to the journal
//! natively, with priorities and fields; no system call of the unit was refused by its
//! seccomp filter; `apt purge` leaves nothing, no filter either. Then the package of the
//! previous map layout is installed and enforcing, and this one installed over it under
//! a stream: nothing through, the maps migrated in place, the rule's counter runs on,
//! `status` names the new version; and purged again. The container, its veth and the
//! bpffs are removed however a step ends.

mod container;
mod journal;
mod process;
mod rootfs;
pub mod wire;

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use self::{
    container::{COMMAND_TIMEOUT, Container, IFACE},
    journal::{Denial, Entry, Journal, KernelLog, field, from_daemon, message, summary},
    process::Interrupts,
    wire::{PORTS, Wire},
};
use crate::{package, setup};

/// Inside the container.
const DEB: &str = "/tmp/xdp-policy.deb";
const BINARY: &str = "/usr/bin/xdp-policy";
const UNIT_FILE: &str = "/usr/lib/systemd/system/xdp-policy.service";
const CONFIG: &str = "/etc/xdp-policy/xdp-policy.toml";
const CONFIG_DIR: &str = "/etc/xdp-policy";
const POLICY_DIR: &str = "/etc/xdp-policy/policies.d";
const POLICY: &str = "/etc/xdp-policy/policies.d/10-wire.toml";
const DOC_DIR: &str = "/usr/share/doc/xdp-policy";
const PIN_DIR: &str = "/sys/fs/bpf/xdp-policy";
const STATE_DIR: &str = "/run/xdp-policy";
/// The unit's descriptor limit (`LimitNOFILE=`).
const NOFILE: u64 = 65536;
/// How long a reload may take to show on the wire (the watcher debounces 25 ms).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon may take to log what an action causes.
const LOG_TIMEOUT: Duration = Duration::from_secs(5);
/// `clone3`: RestrictNamespaces= makes it fail with ENOSYS (seccomp cannot see its flags,
/// which are in memory), so that glibc falls back to clone(), whose flags it checks. The
/// one refusal a unit with RestrictNamespaces= always has, by design.
const SYS_CLONE3: u32 = 435;
/// `uname`, which the probe unit's filter refuses.
const SYS_UNAME: u32 = 63;

/// A deny-list dropping TCP and UDP to `port`.
fn policy(port: u16) -> String {
    format!(
        "# written by cargo xtask systemd-test\n[[rule]]\nname = \"drop-{port}\"\n\
         action = \"drop\"\ndst_ports = [{port}]\n"
    )
}

/// Runs the layer on `deb`, and the upgrade to it from `previous` (the package of the
/// previous map layout). Needs root.
pub fn test(deb: &Path, previous: &Path) -> Result<()> {
    ensure!(setup::is_root(), "the systemd layer boots a container (systemd-nspawn): run as root");
    setup::ensure_systemd_test()?;
    let _interrupts = Interrupts::catch()?;
    let lock = rootfs::lock()?;
    let mut timings = Timings::default();
    let started = Instant::now();
    let result = run(deb, previous, &lock, &mut timings);
    timings.print(started.elapsed());
    result.context("systemd layer")
}

fn run(deb: &Path, previous: &Path, lock: &rootfs::Lock, t: &mut Timings) -> Result<()> {
    let began = Instant::now();
    let (rootfs, built) = rootfs::ensure(lock)?;
    t.push(
        if built { "root file system (debootstrap)" } else { "root file system (cached)" },
        began,
    );
    let kernel_log = KernelLog::mark()?;
    let container = t.step("boot", || Container::boot(&rootfs))?;
    let session = Session {
        wire: Wire::start(&container)?,
        journal: Journal(&container),
        container: &container,
    };
    let checked = session.checks(deb, previous, &kernel_log, t);
    drop(session);
    if let Err(e) = checked {
        if process::interrupted() {
            return Err(e);
        }
        let argv =
            ["journalctl", "--no-pager", "-u", journal::UNIT, "-n", "40", "-o", "short-precise"];
        match container.run(&argv) {
            Ok(log) => eprintln!("xtask: systemd-test: the unit's journal ended with:\n{log}"),
            Err(e) => eprintln!("xtask: systemd-test: reading the unit's journal failed: {e:#}"),
        }
        return Err(e);
    }
    t.step("power off", || container.power_off())
}

struct Session<'c> {
    wire: Wire,
    journal: Journal<'c>,
    container: &'c Container,
}

impl Session<'_> {
    fn checks(
        &self,
        deb: &Path,
        previous: &Path,
        kernel_log: &KernelLog,
        t: &mut Timings,
    ) -> Result<()> {
        t.step("wire without a filter", || self.wire.expect(&[], "before installing"))?;
        t.step("install", || self.install(deb))?;
        t.step("start", || self.start())?;
        t.step("enforced on the wire", || self.wire.expect(&[PORTS[0]], "after start"))?;
        t.step("reload on a file change", || self.reload_on_file_change())?;
        t.step("broken policy", || self.broken_policy())?;
        t.step("detach, then systemctl reload", || self.detach_and_reload())?;
        t.step("restart under a stream", || self.restart_under_stream())?;
        t.step("systemctl reload", || self.systemctl_reload())?;
        t.step("stop", || self.stop())?;
        t.step("logs", || self.logs())?;
        t.step("system calls", || self.syscalls(kernel_log))?;
        t.step("purge", || self.purge())?;
        t.step("upgrade from the previous layout", || self.upgrade(previous, deb))
    }

    fn run(&self, argv: &[&str]) -> Result<String> {
        self.container.run(argv)
    }

    /// stdout of a command whose exit status tells something else (`systemctl is-*`).
    fn answer(&self, argv: &[&str]) -> Result<String> {
        let out = self.container.output_within(argv, COMMAND_TIMEOUT)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn show(&self, property: &str) -> Result<String> {
        self.run(&["systemctl", "show", "--value", "-p", property, journal::UNIT])
            .map(|v| v.trim().to_string())
    }

    fn xdp_on_iface(&self) -> Result<bool> {
        let link = process::run_within(
            self.container.net_command("ip").args(["-d", "link", "show", "dev", IFACE]),
            COMMAND_TIMEOUT,
        )?;
        Ok(link.contains("prog/xdp"))
    }

    fn exists(&self, inside: &str) -> bool {
        self.container.path(inside).symlink_metadata().is_ok()
    }

    /// `apt-get install` of the package file `inside` the container; an upgrade keeps
    /// the configuration files the administrator changed (`--force-confold`, as an
    /// unattended upgrade does) instead of asking.
    fn apt_install(&self, inside: &str) -> Result<()> {
        let out = self.container.output_within(
            &[
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                "-o",
                "Dpkg::Options::=--force-confdef",
                "-o",
                "Dpkg::Options::=--force-confold",
                inside,
            ],
            Duration::from_secs(180),
        )?;
        ensure!(
            out.status.success(),
            "apt install {inside} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let status = self.run(&["dpkg-query", "-W", "-f=${db:Status-Status}", "xdp-policy"])?;
        ensure!(status == "installed", "dpkg says xdp-policy is {status:?}");
        Ok(())
    }

    fn install(&self, deb: &Path) -> Result<()> {
        self.container.copy_in(deb, DEB)?;
        self.apt_install(DEB)?;

        let mut files = vec![
            BINARY.to_string(),
            UNIT_FILE.into(),
            CONFIG.into(),
            format!("{DOC_DIR}/README.md"),
            format!("{DOC_DIR}/copyright"),
        ];
        for example in package::example_policies()? {
            files.push(format!("{DOC_DIR}/examples/{}", example.display()));
        }
        for file in &files {
            ensure!(self.container.path(file).is_file(), "{file} is not installed");
        }
        let policies: Vec<_> = std::fs::read_dir(self.container.path(POLICY_DIR))
            .with_context(|| format!("{POLICY_DIR} is not installed"))?
            .collect();
        ensure!(policies.is_empty(), "{POLICY_DIR} is not empty: {policies:?}");
        let conffiles = self.run(&["dpkg-query", "-W", "-f=${Conffiles}", "xdp-policy"])?;
        ensure!(conffiles.contains(CONFIG), "{CONFIG} is not a conffile: {conffiles:?}");

        // Nothing started, nothing enabled.
        let enabled = self.answer(&["systemctl", "is-enabled", journal::UNIT])?;
        ensure!(enabled == "disabled", "installing left the unit {enabled:?}, not disabled");
        let active = self.answer(&["systemctl", "is-active", journal::UNIT])?;
        ensure!(active == "inactive", "installing left the unit {active:?}, not inactive");
        ensure!(!self.xdp_on_iface()?, "installing put an XDP program on {IFACE}");
        ensure!(!self.exists(PIN_DIR), "installing made {PIN_DIR}");

        // On this minimal system: the unit names no program it lacks (/bin/kill did).
        let out = self
            .container
            .output_within(&["systemd-analyze", "verify", journal::UNIT], COMMAND_TIMEOUT)?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let about_unit: Vec<&str> = said.lines().filter(|l| l.contains("xdp-policy")).collect();
        ensure!(
            out.status.success() && about_unit.is_empty(),
            "systemd-analyze verify {} ({}):\n{said}",
            journal::UNIT,
            out.status
        );
        // As the loaded unit is rated, and as the README quotes it (--offline=yes).
        let exposure = |offline: &[&str]| -> Result<String> {
            let mut argv = vec!["systemd-analyze", "security", "--no-pager"];
            argv.extend(offline);
            argv.push(journal::UNIT);
            let text = self.run(&argv)?;
            Ok(text
                .lines()
                .find_map(|l| l.split("Overall exposure level for xdp-policy.service: ").nth(1))
                .unwrap_or("not printed")
                .to_string())
        };
        let (loaded, offline) = (exposure(&[])?, exposure(&["--offline=yes"])?);
        eprintln!(
            "xtask: systemd-test: installed {} files, {POLICY_DIR} empty, {CONFIG} a conffile; \
             unit disabled and inactive, no filter; systemd-analyze verify: clean; \
             exposure {loaded} (offline {offline})",
            files.len()
        );
        Ok(())
    }

    /// The configuration as installed, naming the container's interface (and `extra`
    /// settings before the table).
    fn configure(&self, extra: &str) -> Result<()> {
        let shipped = std::fs::read_to_string(self.container.path(CONFIG))
            .with_context(|| format!("reading {CONFIG}"))?;
        let shipped =
            shipped.split("\n# written by cargo xtask systemd-test\n").next().unwrap_or("");
        self.container.write(
            CONFIG,
            &format!(
                "{shipped}\n# written by cargo xtask systemd-test\n{extra}\n[interfaces]\n\
                 {IFACE} = \"{POLICY_DIR}\"\n"
            ),
        )
    }

    fn start(&self) -> Result<()> {
        self.container.write(POLICY, &policy(PORTS[0]))?;
        self.configure("")?;
        let cursor = self.journal.cursor()?;
        self.run(&["systemctl", "start", journal::UNIT])?;
        let state = (self.show("ActiveState")?, self.show("SubState")?);
        ensure!(state == ("active".into(), "running".into()), "after start: {state:?}");
        let status = self.show("StatusText")?;
        ensure!(status.starts_with(&format!("{IFACE}: ")), "STATUS= is {status:?}");
        let shown = self.answer(&["systemctl", "status", "--no-pager", journal::UNIT])?;
        ensure!(
            shown.contains(&format!("Status: \"{status}\"")),
            "systemctl status does not show the STATUS= line:\n{shown}"
        );
        ensure!(self.show("NRestarts")? == "0", "the unit restarted on the way up");
        let attached = self.journal.await_entry(&cursor, "attached", LOG_TIMEOUT, |e| {
            message(e).contains("attached and pinned")
        })?;
        ensure!(
            field(&attached, "_TRANSPORT") == Some("journal")
                && message(&attached) == "attached and pinned"
                && field(&attached, "IFACE") == Some(IFACE),
            "the daemon logged through {:?}, not natively: {attached:?}",
            field(&attached, "_TRANSPORT")
        );

        // The sandbox as the daemon has it: /sys read-only but for its own pins.
        let pid = self.show("MainPID")?;
        let proc = |file: &str| {
            std::fs::read_to_string(self.container.path(&format!("/proc/{pid}/{file}")))
                .with_context(|| format!("reading the daemon's /proc/{pid}/{file}"))
        };
        let mounts = proc("mountinfo")?;
        for (path, want) in
            [("/sys", "ro"), ("/sys/fs/bpf", "ro"), (PIN_DIR, "rw"), ("/proc/sys", "ro")]
        {
            // The last mount on a path is the one seen.
            let options = mounts
                .lines()
                .rfind(|l| l.split(' ').nth(4) == Some(path))
                .and_then(|l| l.split(' ').nth(5))
                .with_context(|| format!("nothing is mounted at {path} for the daemon"))?;
            ensure!(
                options.split(',').any(|o| o == want),
                "{path} is mounted {options} for the daemon, not {want}"
            );
        }
        // systemd sets LimitNOFILE= as far as its own hard limit allows: a host without
        // CAP_SYS_RESOURCE cannot give the container's systemd more than it has itself.
        let nofile = nofile(&proc("limits")?)?;
        let manager = nofile_of(&self.container.path("/proc/1/limits"))?;
        let want = NOFILE.min(manager.1);
        ensure!(
            nofile == (want, want),
            "the daemon's descriptor limits are {nofile:?}, not {want} (LimitNOFILE={NOFILE}, \
             the container's systemd may go up to {})",
            manager.1
        );
        let clamped = if want < NOFILE {
            format!(" (LimitNOFILE={NOFILE}, clamped to the {} systemd has here)", manager.1)
        } else {
            String::new()
        };
        eprintln!(
            "xtask: systemd-test: active (READY=1), STATUS={status:?}; logged natively; /sys and \
             /sys/fs/bpf read-only, {PIN_DIR} writable; {want} descriptors{clamped}"
        );
        Ok(())
    }

    fn reload_on_file_change(&self) -> Result<()> {
        let cursor = self.journal.cursor()?;
        self.container.write(POLICY, &policy(PORTS[1]))?;
        let took =
            self.wire.await_enforced(&[PORTS[1]], "a policy file replaced", RELOAD_TIMEOUT)?;
        let applied =
            self.journal.await_entry(&cursor, "the policy applied", LOG_TIMEOUT, |e| {
                message(e) == "policy applied"
            })?;
        ensure!(
            field(&applied, "TRIGGER") == Some("file change")
                && field(&applied, "GENERATION") == Some("2")
                && field(&applied, "POLICY") == Some(POLICY_DIR),
            "the apply was logged as {applied:?}"
        );
        eprintln!(
            "xtask: systemd-test: a replaced policy file was enforced on the wire within {took:?}"
        );
        Ok(())
    }

    fn broken_policy(&self) -> Result<()> {
        let cursor = self.journal.cursor()?;
        self.container.write(
            POLICY,
            "[[rule]]\nname = \"broken\"\naction = \"drop\"\ndst_ports = [70000]\n",
        )?;
        let rejected =
            self.journal.await_entry(&cursor, "the broken policy rejected", LOG_TIMEOUT, |e| {
                message(e).starts_with("policy rejected")
            })?;
        ensure!(
            field(&rejected, "PRIORITY") == Some("3")
                && field(&rejected, "POLICY") == Some(POLICY_DIR),
            "the rejection was logged as {rejected:?}"
        );
        ensure!(
            message(&rejected).contains("10-wire.toml:4:"),
            "the rejection does not point at the line: {}",
            message(&rejected)
        );
        let errors =
            self.run(&["journalctl", "--no-pager", "-p", "err", "-u", journal::UNIT, "-o", "cat"])?;
        ensure!(
            errors.contains("policy rejected, the previous one stays in force"),
            "journalctl -p err -u {} does not show the rejection:\n{errors}",
            journal::UNIT
        );
        self.wire.expect(&[PORTS[1]], "after a broken policy")?;
        ensure!(
            self.show("ActiveState")? == "active",
            "the daemon did not survive a broken policy"
        );
        // Back to the first policy, by the same path.
        self.container.write(POLICY, &policy(PORTS[0]))?;
        self.wire.await_enforced(
            &[PORTS[0]],
            "a good policy after a broken one",
            RELOAD_TIMEOUT,
        )?;
        eprintln!(
            "xtask: systemd-test: a broken policy was logged at err and the one in force stayed"
        );
        Ok(())
    }

    fn detach_and_reload(&self) -> Result<()> {
        let cursor = self.journal.cursor()?;
        let detached = self.run(&[BINARY, "detach", "--iface", IFACE])?;
        ensure!(detached.trim() == format!("{IFACE}: detached"), "detach printed {detached:?}");
        let error = self.journal.await_entry(&cursor, "the detached filter", LOG_TIMEOUT, |e| {
            message(e).starts_with("the filter was detached")
        })?;
        ensure!(
            field(&error, "PRIORITY") == Some("3") && field(&error, "IFACE") == Some(IFACE),
            "the detach was logged as {error:?}"
        );
        self.wire.expect(&[], "after detach")?;
        let cursor = self.journal.cursor()?;
        self.run(&["systemctl", "reload", journal::UNIT])?;
        let took = self.wire.await_enforced(
            &[PORTS[0]],
            "systemctl reload after detach",
            RELOAD_TIMEOUT,
        )?;
        self.journal.await_entry(&cursor, "the filter attached again", LOG_TIMEOUT, |e| {
            message(e).starts_with("the detached filter is attached again")
        })?;
        eprintln!(
            "xtask: systemd-test: detached under the daemon: logged at err with IFACE={IFACE}; \
             systemctl reload attached it again within {took:?}"
        );
        Ok(())
    }

    fn restart_under_stream(&self) -> Result<()> {
        // From here on the daemon reloads on `systemctl reload` only, as fleets run it.
        self.configure("watch = false")?;
        let cursor = self.journal.cursor()?;
        let ((), stream) = self.wire.stream(PORTS[0], PORTS[1], || {
            self.run(&["systemctl", "restart", journal::UNIT]).map(drop)
        })?;
        ensure!(
            stream.arrived_blocked == 0 && stream.arrived_open > 0,
            "systemctl restart under a stream: {stream}"
        );
        ensure!(self.show("ActiveState")? == "active", "not active after restart");
        self.journal.await_entry(&cursor, "the pins adopted", LOG_TIMEOUT, |e| {
            message(e).starts_with("adopted the pinned filter")
        })?;
        self.journal.await_entry(&cursor, "no watching", LOG_TIMEOUT, |e| {
            message(e).contains("files are not watched")
        })?;
        self.wire.expect(&[PORTS[0]], "after restart")?;
        eprintln!("xtask: systemd-test: systemctl restart under a UDP stream: {stream}");
        Ok(())
    }

    fn systemctl_reload(&self) -> Result<()> {
        self.container.write(POLICY, &policy(PORTS[1]))?;
        process::sleep(Duration::from_secs(1))?;
        self.wire.expect(&[PORTS[0]], "a changed policy file, unwatched, before the reload")?;
        let cursor = self.journal.cursor()?;
        self.run(&["systemctl", "reload", journal::UNIT])?;
        let took = self.wire.await_enforced(&[PORTS[1]], "systemctl reload", RELOAD_TIMEOUT)?;
        let applied =
            self.journal.await_entry(&cursor, "the policy applied", LOG_TIMEOUT, |e| {
                message(e) == "policy applied"
            })?;
        ensure!(field(&applied, "TRIGGER") == Some("SIGHUP"), "applied by {applied:?}");
        eprintln!("xtask: systemd-test: systemctl reload: enforced on the wire within {took:?}");
        Ok(())
    }

    fn stop(&self) -> Result<()> {
        self.run(&["systemctl", "stop", journal::UNIT])?;
        let state = (self.show("ActiveState")?, self.show("Result")?);
        ensure!(state == ("inactive".into(), "success".into()), "after stop: {state:?}");
        self.wire.expect(&[PORTS[1]], "after systemctl stop")?;
        ensure!(self.xdp_on_iface()?, "no XDP program on {IFACE} after stop");
        for kept in [format!("{PIN_DIR}/{IFACE}/link"), format!("{STATE_DIR}/{IFACE}.json")] {
            ensure!(self.exists(&kept), "{kept} is gone after stop");
        }
        eprintln!("xtask: systemd-test: stopped; the filter stays in force");
        Ok(())
    }

    fn logs(&self) -> Result<()> {
        let entries = self.journal.query(&["-u", journal::UNIT])?;
        let daemon: Vec<&Entry> = entries.iter().filter(|e| from_daemon(e)).collect();
        // Everything the daemon logged with a level went to the journal natively, none
        // as text on stderr, none with a timestamp of its own.
        let text: Vec<String> = daemon
            .iter()
            .filter(|e| {
                field(e, "_TRANSPORT") != Some("journal") && message(e).contains("policy_daemon")
            })
            .map(|e| summary(e))
            .collect();
        ensure!(text.is_empty(), "log lines on stderr, not native:\n{}", text.join("\n"));
        let native: Vec<&&Entry> =
            daemon.iter().filter(|e| field(e, "_TRANSPORT") == Some("journal")).collect();
        let stamped: Vec<String> =
            native.iter().filter(|e| starts_with_date(message(e))).map(|e| summary(e)).collect();
        ensure!(
            stamped.is_empty(),
            "messages with a timestamp of their own:\n{}",
            stamped.join("\n")
        );
        for entry in &native {
            ensure!(
                field(entry, "SYSLOG_IDENTIFIER") == Some("xdp-policy")
                    && field(entry, "TARGET").is_some()
                    && field(entry, "CODE_FILE").is_some(),
                "an entry without its identifier or source: {entry:?}"
            );
        }
        let mut by_priority = [0_usize; 8];
        for entry in &native {
            if let Some(p) = field(entry, "PRIORITY").and_then(|p| p.parse::<usize>().ok()) {
                by_priority[p.min(7)] += 1;
            }
        }
        let errors = native.iter().filter(|e| field(e, "PRIORITY") == Some("3"));
        ensure!(
            errors.clone().any(|e| field(e, "IFACE") == Some(IFACE))
                && errors.clone().any(|e| field(e, "POLICY") == Some(POLICY_DIR)),
            "no error logged with IFACE= and one with POLICY="
        );
        let err_text =
            self.run(&["journalctl", "--no-pager", "-p", "err", "-u", journal::UNIT, "-o", "cat"])?;
        for expected in ["policy rejected", "the filter was detached"] {
            ensure!(
                err_text.contains(expected),
                "journalctl -p err lacks {expected:?}:\n{err_text}"
            );
        }
        let mut fields: Vec<&str> = native
            .iter()
            .flat_map(|e| e.keys())
            .map(String::as_str)
            .filter(|k| ["IFACE", "POLICY", "TRIGGER", "GENERATION", "MODE", "RULES"].contains(k))
            .collect();
        fields.sort_unstable();
        fields.dedup();
        eprintln!(
            "xtask: systemd-test: {} entries from the daemon, {} native (err {}, warning {}, \
             info {}, debug {}), none as text or stamped twice; fields {}",
            daemon.len(),
            native.len(),
            by_priority[3],
            by_priority[4],
            by_priority[6],
            by_priority[7],
            fields.join(", ")
        );
        Ok(())
    }

    /// No system call of the unit was refused by its filter. Refusals return EPERM
    /// (SystemCallErrorNumber=) and the daemon would log an error naming them; the
    /// kernel's audit log has every refusal, whatever the daemon made of it. A probe
    /// unit whose filter refuses uname(2) shows that refusals reach that log here.
    fn syscalls(&self, kernel_log: &KernelLog) -> Result<()> {
        let entries = self.journal.query(&["-u", journal::UNIT])?;
        let eperm: Vec<String> = entries
            .iter()
            .filter(|e| {
                let m = message(e);
                m.contains("Operation not permitted")
                    || m.contains("os error 1)")
                    || m.contains("EPERM")
            })
            .map(summary)
            .collect();
        ensure!(eperm.is_empty(), "the unit's journal has EPERM errors:\n{}", eperm.join("\n"));

        self.container.write(
            "/etc/systemd/system/xdp-policy-seccomp-probe.service",
            "[Service]\nType=oneshot\nSystemCallFilter=@system-service\nSystemCallFilter=~uname\n\
             SystemCallErrorNumber=EPERM\nExecStart=-/usr/bin/uname\n",
        )?;
        self.run(&["systemctl", "daemon-reload"])?;
        self.run(&["systemctl", "start", "xdp-policy-seccomp-probe.service"])?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let lines = loop {
            let lines = kernel_log.lines()?;
            let probe =
                Denial { comm: "uname".into(), exe: "/usr/bin/uname".into(), syscall: SYS_UNAME };
            if lines.iter().any(|l| Denial::parse(l).as_ref() == Some(&probe)) {
                break lines;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the probe unit's refused uname(2) is not in the kernel's log (dmesg): \
                     refused system calls cannot be seen on this machine (audit off?)"
                );
            }
            process::sleep(Duration::from_millis(100))?;
        };
        let ours = ["/usr/bin/xdp-policy", "/usr/bin/systemctl"];
        let refused: Vec<Denial> = lines
            .iter()
            .filter_map(|l| Denial::parse(l))
            .filter(|d| ours.contains(&d.exe.as_str()))
            .collect();
        let clone3 = refused.iter().filter(|d| d.syscall == SYS_CLONE3).count();
        let other: Vec<String> = refused
            .iter()
            .filter(|d| d.syscall != SYS_CLONE3)
            .map(|d| format!("  {} ({}): system call {}", d.exe, d.comm, d.syscall))
            .collect();
        ensure!(
            other.is_empty(),
            "the unit's seccomp filter refused (x86_64 numbers, asm/unistd_64.h):\n{}",
            other.join("\n")
        );
        // printk drops audit records past 10 in 5 s; then one could hide among them.
        let suppressed: Vec<&String> = lines.iter().filter(|l| journal::suppressed(l)).collect();
        ensure!(
            suppressed.is_empty(),
            "the kernel dropped audit records ({}): cannot tell that none was a refusal",
            suppressed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ")
        );
        eprintln!(
            "xtask: systemd-test: no system call refused (clone3 {clone3} times, ENOSYS by \
             RestrictNamespaces=, for glibc's fallback to clone); no EPERM in the journal"
        );
        Ok(())
    }

    fn purge(&self) -> Result<()> {
        let out = self
            .container
            .output_within(&["apt-get", "purge", "-y", "xdp-policy"], Duration::from_secs(180))?;
        ensure!(
            out.status.success(),
            "apt purge failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let status = self.answer(&["dpkg-query", "-W", "-f=${db:Status-Status}", "xdp-policy"])?;
        ensure!(status.is_empty() || status == "not-installed", "after purge dpkg says {status:?}");
        let left: Vec<&str> = [CONFIG, STATE_DIR, PIN_DIR, UNIT_FILE, BINARY, DOC_DIR]
            .into_iter()
            .filter(|p| self.exists(p))
            .collect();
        ensure!(left.is_empty(), "purging left {left:?}");
        // The policy this test put in place as an administrator would is kept, by design
        // (postrm); nothing else is under /etc/xdp-policy.
        let mut etc = Vec::new();
        let mut dirs = vec![self.container.path(CONFIG_DIR)];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path.clone());
                }
                etc.push(path.strip_prefix(self.container.path(CONFIG_DIR))?.display().to_string());
            }
        }
        etc.sort();
        ensure!(
            etc == ["policies.d", "policies.d/10-wire.toml"],
            "after purge {CONFIG_DIR} holds {etc:?}, not only the administrator's policy"
        );
        ensure!(!self.xdp_on_iface()?, "purging left an XDP program on {IFACE}");
        let load = self.show("LoadState")?;
        ensure!(load == "not-found", "after purge systemd has the unit {load:?}");
        self.wire.expect(&[], "after purge")?;
        eprintln!(
            "xtask: systemd-test: purged: nothing of the package left (the administrator's \
             {POLICY} kept), no filter"
        );
        Ok(())
    }
}

impl Session<'_> {
    /// The package of the previous map layout installed and enforcing, then this one
    /// installed over it (an upgrade: its postinst restarts the running unit) under a
    /// UDP stream to a dropped port: nothing gets through, the new daemon migrates the
    /// pinned maps in place and logs it, the rule's counter runs on, and `status` names
    /// the new version and layout. Then the downgrade back, and purged.
    fn upgrade(&self, previous: &Path, deb: &Path) -> Result<()> {
        const PREVIOUS: &str = "/tmp/xdp-policy-previous.deb";
        self.container.copy_in(previous, PREVIOUS)?;
        self.apt_install(PREVIOUS)?;
        let old = self.run(&[BINARY, "--version"])?;
        self.container.write(POLICY, &policy(PORTS[0]))?;
        self.configure("")?;
        self.run(&["systemctl", "start", journal::UNIT])?;
        self.wire.await_enforced(&[PORTS[0]], "the previous version", RELOAD_TIMEOUT)?;
        let before = self.blocked_packets()?;
        let cursor = self.journal.cursor()?;
        self.container.copy_in(deb, DEB)?;
        let ((), stream) = self.wire.stream(PORTS[0], PORTS[1], || self.apt_install(DEB))?;
        ensure!(
            stream.arrived_blocked == 0 && stream.arrived_open > 0,
            "the upgrade under a stream: {stream}"
        );
        let migrated = self.journal.await_entry(&cursor, "the migration", LOG_TIMEOUT, |e| {
            message(e).starts_with("migrated the pinned filter to new maps")
        })?;
        let from = package::PREVIOUS_LAYOUT.to_string();
        ensure!(
            field(&migrated, "FROM_LAYOUT") == Some(from.as_str())
                && field(&migrated, "IFACE") == Some(IFACE),
            "the migration was logged as {migrated:?}"
        );
        ensure!(self.show("ActiveState")? == "active", "not active after the upgrade");
        let new = self.run(&[BINARY, "--version"])?;
        ensure!(new != old, "the upgrade left {old:?}");
        let status = self.run(&[BINARY, "status"])?;
        let version = env!("CARGO_PKG_VERSION");
        ensure!(
            status.contains(&format!("daemon: xdp-policy {version} (pid"))
                && status.contains(&format!("map layout {}", package::PREVIOUS_LAYOUT + 1)),
            "status after the upgrade:\n{status}"
        );
        // Every datagram to the dropped port was counted by its rule, but for what the
        // migration's second copy may lose (see policy-daemon's `dataplane::migrate`).
        let counted = self.blocked_packets()? - before;
        ensure!(
            counted <= stream.sent_blocked && counted + 2 >= stream.sent_blocked,
            "the rule counted {counted} of the {} datagrams to the dropped port",
            stream.sent_blocked
        );
        self.wire.expect(&[PORTS[0]], "after the upgrade")?;
        let upgraded = format!(
            "upgraded {} to {} under a stream ({stream}); migrated from layout {from} in place \
             ({}); the rule counted {counted} of {}",
            old.trim(),
            new.trim(),
            field(&migrated, "CARRIED").unwrap_or("?"),
            stream.sent_blocked
        );
        self.downgrade(PREVIOUS)?;
        eprintln!("xtask: systemd-test: {upgraded}");
        self.purge()
    }

    /// The previous version installed over this one: its daemon refuses the newer
    /// layout and leaves the filter in force; `xdp-policy detach` and a start then
    /// attach it afresh.
    fn downgrade(&self, previous: &str) -> Result<()> {
        let cursor = self.journal.cursor()?;
        let out = self.container.output_within(
            &[
                "apt-get",
                "install",
                "-y",
                "--allow-downgrades",
                "-o",
                "Dpkg::Options::=--force-confold",
                previous,
            ],
            Duration::from_secs(180),
        )?;
        ensure!(out.status.success(), "apt install of {previous} (a downgrade): {}", out.status);
        let refused = self.journal.await_entry(&cursor, "the refusal", LOG_TIMEOUT, |e| {
            message(e).contains("was set up by a newer xdp-policy")
        })?;
        // The previous version exits 1 on pins it cannot take, so systemd tries again
        // (and again refused) until its start limit: failed or between attempts.
        let state = self.show("ActiveState")?;
        ensure!(state != "active", "the downgraded unit is {state}");
        self.wire.expect(&[PORTS[0]], "after the downgrade, before the detach")?;
        self.run(&[BINARY, "detach"])?;
        self.run(&["systemctl", "restart", journal::UNIT])?;
        ensure!(self.show("ActiveState")? == "active", "the downgraded unit did not start");
        self.wire.await_enforced(&[PORTS[0]], "the downgraded version", RELOAD_TIMEOUT)?;
        eprintln!(
            "xtask: systemd-test: downgraded: the previous version refused the newer pins ({}) \
             and the filter stayed in force; after `xdp-policy detach` it attached afresh",
            message(&refused)
        );
        Ok(())
    }

    /// Packets the policy's one rule has dropped, from `xdp-policy status --json`.
    fn blocked_packets(&self) -> Result<u64> {
        let json = self.run(&[BINARY, "status", "--json"])?;
        let status: serde_json::Value = serde_json::from_str(&json).context("status --json")?;
        status[0]["rules"][0]["packets"]
            .as_u64()
            .with_context(|| format!("no rule counter in {json}"))
    }
}

/// The soft and hard limits on open files in a `/proc/PID/limits`.
fn nofile(limits: &str) -> Result<(u64, u64)> {
    let line =
        limits.lines().find(|l| l.starts_with("Max open files")).context("no Max open files")?;
    let mut values = line.split_whitespace().skip(3).map(str::parse::<u64>);
    match (values.next(), values.next()) {
        (Some(Ok(soft)), Some(Ok(hard))) => Ok((soft, hard)),
        _ => bail!("cannot read {line:?}"),
    }
}

fn nofile_of(limits: &Path) -> Result<(u64, u64)> {
    nofile(
        &std::fs::read_to_string(limits)
            .with_context(|| format!("reading {}", limits.display()))?,
    )
}

/// `2026-…`: a message that starts with a date carries a second timestamp.
fn starts_with_date(message: &str) -> bool {
    let b = message.as_bytes();
    b.len() > 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

#[derive(Default)]
struct Timings(Vec<(String, Duration)>);

impl Timings {
    fn push(&mut self, step: &str, began: Instant) {
        self.0.push((step.to_string(), began.elapsed()));
    }

    fn step<T>(&mut self, step: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let began = Instant::now();
        let result = f().with_context(|| format!("step `{step}`"));
        self.push(step, began);
        result
    }

    fn print(&self, total: Duration) {
        let mut text = String::from("xtask: systemd-test: timings\n");
        for (step, took) in &self.0 {
            let _ = writeln!(text, "  {step:<34} {:>6.1} s", took.as_secs_f64());
        }
        let _ = write!(text, "  {:<34} {:>6.1} s", "total", total.as_secs_f64());
        eprintln!("{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::starts_with_date;

    #[test]
    fn a_second_timestamp_is_seen() {
        assert!(starts_with_date("2026-11-30T16:27:34.851602Z  INFO policy_daemon::daemon: x"));
        assert!(!starts_with_date("policy applied"));
        assert!(!starts_with_date("2026"));
    }
}
