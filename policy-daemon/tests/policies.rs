//! Every example policy in `policies/` is valid, and `xdp-policy check` / `run` report
//! policy problems with the right text and exit status. No root needed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use policy_daemon::reload::files;
use support::PolicyFile;

mod support;

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(policies_dir())
        .expect("policies/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn xdp_policy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xdp-policy")).args(args).output().expect("runs xdp-policy")
}

#[test]
fn every_example_policy_is_valid() {
    let files = example_files();
    assert!(files.len() >= 2, "expected the documented examples in policies/, found {files:?}");
    for file in &files {
        let policy = files::load(file, Default::default())
            .unwrap_or_else(|e| panic!("{} is invalid:\n{e}", file.display()));
        assert!(!policy.rules.is_empty(), "{} has no rules", file.display());
        assert!(policy.warnings.is_empty(), "{}: {:?}", file.display(), policy.warnings);
    }
}

#[test]
fn the_conf_d_example_merges_in_file_name_order() {
    let dir = policies_dir().join("edge.d");
    let policy =
        files::load(&dir, Default::default()).unwrap_or_else(|e| panic!("policies/edge.d:\n{e}"));
    let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["base-block-telnet", "reflection-memcached", "reflection-ssdp"]);
    assert_eq!(policy.sources, vec![dir.join("10-base.toml"), dir.join("20-reflection.toml")]);
}

#[test]
fn check_accepts_the_examples() {
    for file in example_files() {
        let path = file.to_str().expect("utf-8 path");
        let out = xdp_policy(&["check", path]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "check {path} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with(&format!("{path}: valid, ")), "unexpected output: {stdout}");
        if path.ends_with("tcp-scans.toml") {
            assert!(
                stdout.contains("drop-null-scan  drop tcp flags =\n")
                    && stdout
                        .contains("drain-8443      drop tcp (monitor) dport 8443 flags syn,!ack"),
                "the rules' flags: {stdout}"
            );
        }
        if path.ends_with("syn-flood.toml") {
            assert!(
                stdout.contains(
                    "limit-syn-ssh  limit tcp (monitor) dport 22 flags syn,!ack rate 10/m burst \
                     10 packets per source/24,64\n"
                ),
                "the rules' limits: {stdout}"
            );
        }
    }
}

#[test]
fn check_rejects_an_invalid_policy_with_its_location() {
    let bad = PolicyFile::new(
        "check",
        "[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_ports = [\"90-80\"]\n",
    );
    let path = bad.0.to_str().expect("utf-8 path");
    let out = xdp_policy(&["check", path]);
    assert_eq!(out.status.code(), Some(1), "an invalid policy must fail check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{path}:4:14: invalid port range \"90-80\": the low end is above the high end\n"
        )),
        "unexpected stderr: {stderr}"
    );
}

#[test]
fn run_refuses_an_invalid_policy_with_ex_usage() {
    let bad = PolicyFile::new("run", "[[rule]]\nname = \"a\"\naction = \"block\"\n");
    let path = bad.0.to_str().expect("utf-8 path");
    // Refused before anything touches the kernel, so no root is needed and the
    // interface need not exist.
    let out = xdp_policy(&["run", "--iface", "xdpp-none0", "--policy", path]);
    assert_eq!(out.status.code(), Some(64), "bad configuration exits 64 (EX_USAGE)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{path}:3:10: unknown variant `block`, expected one of `pass`, `drop`, `limit`"
        )),
        "unexpected stderr: {stderr}"
    );
}

#[test]
fn check_reports_a_missing_file() {
    let out = xdp_policy(&["check", "/nonexistent/xdp-policy.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("/nonexistent/xdp-policy.toml: No such file or directory"),
        "{stderr}"
    );
}

#[test]
fn check_refuses_a_world_writable_policy_unless_allowed() {
    use std::os::unix::fs::PermissionsExt as _;
    let policy = PolicyFile::new("insecure", "[[rule]]\nname = \"a\"\naction = \"pass\"\n");
    fs::set_permissions(&policy.0, fs::Permissions::from_mode(0o666)).expect("chmod");
    let path = policy.0.to_str().expect("utf-8 path");
    let out = xdp_policy(&["check", path]);
    assert_eq!(out.status.code(), Some(1), "a world-writable policy must fail check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{path}: refusing the policy file: it is writable by its group or others (mode 666), \
             and only root may be able to change a policy; fix it with `chown root: {path} && \
             chmod go-w {path}`"
        )),
        "unexpected stderr: {stderr}"
    );
    let out = xdp_policy(&["check", "--allow-insecure-policy-files", path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The configuration file's setting, as `run` reads it.
    let config = policy.0.with_file_name("xdp-policy.toml");
    fs::write(&config, "insecure_policy_files = true\n").expect("writing the config");
    let out = xdp_policy(&["check", "--config", config.to_str().expect("utf-8"), path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The SSH lock-out check, end to end: `check` refuses a default-drop policy that lets
/// no SSH in, naming the family and the address that would be cut (here the stand-in
/// address: `lo` has none the check counts). `run` refusing it is in `lifecycle.rs`: it
/// needs a network namespace of its own.
#[test]
fn a_policy_that_cuts_ssh_is_refused_naming_the_address() {
    let locked = PolicyFile::new(
        "ssh",
        "interfaces = [\"lo\"]\n[defaults]\naction = \"drop\"\n[[rule]]\nname = \"web\"\n\
         action = \"pass\"\nprotocol = \"tcp\"\ndst_ports = 443\n",
    );
    let path = locked.0.to_str().expect("utf-8 path");
    let out = xdp_policy(&["check", path]);
    assert_eq!(out.status.code(), Some(1), "check must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("would drop SSH (tcp/")
            && stderr.contains("to this host's IPv4 address 192.0.2.100"),
        "{stderr}"
    );
}
