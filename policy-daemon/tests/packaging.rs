//! What `policy-daemon/packaging/` ships agrees with the daemon: the default
//! configuration file documents every setting with its true default, the systemd unit
//! passes `systemd-analyze verify` without a warning, the Debian package puts the files
//! where the unit and the daemon look for them, and the Kubernetes manifests have the
//! shape the README describes. No root needed; `cargo xtask package --verify` checks the
//! installed package itself.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use clap::Parser as _;
use policy_daemon::{
    cli::{Cli, Command as CliCommand},
    dataplane::XdpMode,
    reload::files,
    settings::{self, ConfigFile, MetricsAddr, Settings},
};
use serde_norway::Value;
use support::temp_dir;

mod support;

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging").join(file)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Writes `text` to `name` in `dir`; returns its path.
fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, text).expect("writing a temp file");
    path
}

/// The shipped configuration with every commented-out setting (`#key = …`, `#[table]`)
/// made live; prose comments (`# …`) stay comments.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

fn settings(args: &[&str]) -> Settings {
    let cli = Cli::try_parse_from([&["xdp-policy", "run"], args].concat())
        .unwrap_or_else(|e| panic!("xdp-policy run {args:?}: {e}"));
    let CliCommand::Run(run) = cli.command else { panic!("parsed as another command") };
    run.settings().unwrap_or_else(|e| panic!("settings of run {args:?}: {e}"))
}

#[test]
fn the_default_config_file_sets_nothing() {
    let path = packaging("xdp-policy.toml");
    let config = ConfigFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config,
        ConfigFile::default(),
        "{} as shipped should leave every setting at its default",
        path.display()
    );
}

#[test]
fn every_setting_is_documented_with_its_true_default() {
    let path = packaging("xdp-policy.toml");
    let live = uncommented(&read(&path));
    let config = ConfigFile::parse(&path, &live)
        .unwrap_or_else(|e| panic!("{} with its settings uncommented: {e}", path.display()));
    // Exhaustive: a new setting fails to compile here until it is documented.
    let ConfigFile {
        interfaces,
        xdp_mode,
        pin_dir,
        state_dir,
        metrics,
        watch,
        audit_interval,
        insecure_policy_files,
        crowdsec,
        max_sources,
    } = config;
    assert_eq!(max_sources, Some(policy_common::MAX_SOURCES), "max_sources");
    assert_eq!(xdp_mode, Some(XdpMode::default()), "xdp_mode");
    assert_eq!(pin_dir.as_deref(), Some(Path::new(settings::DEFAULT_PIN_DIR)), "pin_dir");
    assert_eq!(state_dir.as_deref(), Some(Path::new(settings::DEFAULT_STATE_DIR)), "state_dir");
    assert_eq!(metrics.as_deref(), Some(settings::DEFAULT_METRICS), "metrics");
    assert_eq!(watch, Some(true), "watch");
    assert_eq!(audit_interval, Some(settings::DEFAULT_AUDIT_INTERVAL), "audit_interval");
    assert_eq!(insecure_policy_files, Some(false), "insecure_policy_files");
    assert_eq!(
        crowdsec,
        Some(settings::CrowdSecConfig {
            url: "http://127.0.0.1:8080/".into(),
            key_file: "/etc/xdp-policy/crowdsec.key".into(),
            set: "crowdsec".into(),
            poll_interval: Some(settings::DEFAULT_CROWDSEC_POLL),
        }),
        "the [crowdsec] example"
    );
    assert_eq!(
        interfaces,
        BTreeMap::from([("eth0".to_string(), PathBuf::from("/etc/xdp-policy/policies.d"))]),
        "the [interfaces] example"
    );

    // And as `run` resolves them: the uncommented file, and a file that names only the
    // interface, come to the same settings. The [crowdsec] example turns the bouncer on
    // (with a key file that does not exist here): left out.
    let dir = temp_dir("config");
    let without_crowdsec = live.split("[crowdsec]").next().expect("the text before it");
    assert!(live.trim_end().ends_with("poll_interval = 10"), "[crowdsec] is the file's last table");
    let all = write(&dir, "all.toml", without_crowdsec);
    let only_interfaces =
        write(&dir, "interfaces.toml", "[interfaces]\neth0 = \"/etc/xdp-policy/policies.d\"\n");
    let with_everything = settings(&["--config", all.to_str().expect("utf-8 path")]);
    assert_eq!(
        with_everything,
        settings(&["--config", only_interfaces.to_str().expect("utf-8 path")])
    );
    // Flags override the file.
    let flagged = settings(&[
        "--config",
        all.to_str().expect("utf-8 path"),
        "--pin-dir",
        "/sys/fs/bpf/other",
        "--no-watch",
    ]);
    assert_eq!(flagged.places.pin_dir, PathBuf::from("/sys/fs/bpf/other"));
    assert!(!flagged.watch);
    assert_eq!(flagged.assignments, with_everything.assignments);
}

fn unit_settings(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .collect()
}

#[test]
fn the_unit_runs_the_packaged_binary_with_least_privilege() {
    let unit = read(&packaging("xdp-policy.service"));
    let one = |key: &str| {
        let values = unit_settings(&unit, key);
        assert_eq!(values.len(), 1, "{key}= should be set once: {values:?}");
        values[0].clone()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("ExecStart"), "/usr/bin/xdp-policy run");
    // systemd sends SIGHUP itself: /bin/kill is procps's, which the package does not
    // depend on and minimal systems lack.
    assert_eq!(one("ExecReload"), "/bin/systemctl kill --kill-who=main --signal=SIGHUP %n");
    assert_eq!(one("CapabilityBoundingSet"), "CAP_BPF CAP_NET_ADMIN CAP_PERFMON");
    assert_eq!(one("AmbientCapabilities"), one("CapabilityBoundingSet"));
    assert_eq!(one("RuntimeDirectory"), "xdp-policy");
    // The daemon's defaults live where the unit lets it write. ProtectKernelTunables=
    // makes /sys/fs/bpf read-only and only a path below it can be made writable again:
    // the pin directory itself, made before the namespace is set up.
    assert_eq!(one("ProtectKernelTunables"), "yes");
    assert_eq!(one("ReadWritePaths"), format!("-{}", settings::DEFAULT_PIN_DIR));
    assert_eq!(one("ExecStartPre"), format!("+/bin/mkdir -p {}", settings::DEFAULT_PIN_DIR));
    assert!(settings::DEFAULT_PIN_DIR.starts_with("/sys/fs/bpf/"));
    assert_eq!(settings::DEFAULT_STATE_DIR, "/run/xdp-policy");
    // Room for the maps of many interfaces and the metrics endpoint's connections.
    assert_eq!(one("LimitNOFILE"), "65536");
    // Bad configuration exits 64 (EX_USAGE): not worth restarting.
    assert_eq!(one("RestartPreventExitStatus"), "64");
}

/// `systemd-analyze verify` exits 0 on unknown settings and bad values, with a warning:
/// any output about the unit fails. It also insists that ExecStart's binary exists, so
/// the copy verified here runs the binary this test was built with.
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        if std::env::var_os("CI").is_some() {
            panic!("systemd-analyze is missing; CI installs it (cargo xtask setup)");
        }
        eprintln!("skipping: systemd-analyze is missing (apt-get install systemd)");
        return;
    }
    let unit = read(&packaging("xdp-policy.service")).replace(
        "ExecStart=/usr/bin/xdp-policy ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_xdp-policy")),
    );
    let dir = temp_dir("unit");
    let path = write(&dir, "xdp-policy.service", &unit);
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let about_unit: Vec<&str> = text.lines().filter(|l| l.contains("xdp-policy")).collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify ({}):\n{text}",
        out.status
    );
}

/// `[package.metadata.deb]`: where each packaged file goes.
fn deb_assets() -> Vec<(String, String)> {
    let manifest: toml::Table =
        toml::from_str(&read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")))
            .expect("Cargo.toml parses");
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .expect("[package.metadata.deb] assets");
    assets
        .iter()
        .map(|a| {
            let a = a.as_array().expect("assets are [source, dest, mode]");
            (a[0].as_str().expect("source").to_string(), a[1].as_str().expect("dest").to_string())
        })
        .collect()
}

#[test]
fn the_package_installs_what_the_unit_and_the_daemon_expect() {
    let assets = deb_assets();
    let dest = |source: &str| {
        assets
            .iter()
            .find(|(s, _)| s == source)
            .map(|(_, d)| format!("/{d}"))
            .unwrap_or_else(|| panic!("{source} is not packaged: {assets:?}"))
    };
    assert_eq!(dest("target/release/xdp-policy"), "/usr/bin/");
    assert_eq!(dest("packaging/xdp-policy.toml"), settings::DEFAULT_CONFIG);
    assert_eq!(dest("../policies/*.toml"), "/usr/share/doc/xdp-policy/examples/");
    assert_eq!(dest("../policies/edge.d/*.toml"), "/usr/share/doc/xdp-policy/examples/edge.d/");
}

/// The YAML documents of the manifest, by kind.
fn manifests() -> BTreeMap<String, Value> {
    let path = packaging("k8s/daemonset.yaml");
    let text = read(&path);
    let mut by_kind = BTreeMap::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let value = <Value as serde::Deserialize>::deserialize(doc)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let kind = value["kind"].as_str().expect("every document has a kind").to_string();
        assert!(by_kind.insert(kind.clone(), value).is_none(), "two {kind} documents");
    }
    by_kind
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("expected a list, got {value:?}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("expected a string, got {v:?}")))
        .collect()
}

/// The volume mounted at `path` in `container`, looked up in the pod's `volumes`.
fn volume_at<'a>(pod: &'a Value, container: &Value, path: &str) -> &'a Value {
    let mount = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(path))
        .unwrap_or_else(|| panic!("nothing is mounted at {path}"));
    let name = mount["name"].as_str().expect("mount name");
    pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

#[test]
fn the_daemonset_runs_unprivileged_on_the_host_network() {
    let docs = manifests();
    assert_eq!(docs.keys().collect::<Vec<_>>(), ["ConfigMap", "DaemonSet", "Namespace"]);
    let namespace = docs["Namespace"]["metadata"]["name"].as_str().expect("namespace name");
    let ds = &docs["DaemonSet"];
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    assert_eq!(ds["metadata"]["namespace"].as_str(), Some(namespace));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true), "XDP needs the node's interfaces");
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    let security = &c["securityContext"];
    assert_eq!(security["privileged"].as_bool(), Some(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    // The same set as the systemd unit's CapabilityBoundingSet=.
    let unit = read(&packaging("xdp-policy.service"));
    let unit_caps: Vec<String> = unit_settings(&unit, "CapabilityBoundingSet")[0]
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    assert_eq!(strings(&security["capabilities"]["add"]), unit_caps);

    let bpffs = volume_at(pod, c, "/sys/fs/bpf");
    assert_eq!(bpffs["hostPath"]["path"].as_str(), Some("/sys/fs/bpf"));
    let policies = volume_at(pod, c, "/etc/xdp-policy/policies.d");
    let config_map = policies["configMap"]["name"].as_str().expect("a ConfigMap volume");
    assert_eq!(docs["ConfigMap"]["metadata"]["name"].as_str(), Some(config_map));
    assert_eq!(docs["ConfigMap"]["metadata"]["namespace"].as_str(), Some(namespace));

    // run --policy <the ConfigMap> --iface $(XDP_IFACE), every $(VAR) defined in env.
    let args = strings(&c["args"]);
    assert_eq!(
        args[..5],
        ["run", "--policy", "/etc/xdp-policy/policies.d", "--iface", "$(XDP_IFACE)"]
    );
    let env: Vec<&str> = c["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| e["name"].as_str().expect("env name"))
        .collect();
    for arg in &args {
        if let Some(var) = arg.strip_prefix("$(").and_then(|a| a.split_once(')')).map(|(v, _)| v) {
            assert!(env.contains(&var), "args use $({var}), which env does not define");
        }
    }
    // With the variables filled in, the args are valid `xdp-policy run` flags.
    let concrete: Vec<String> = args.iter().map(|a| a.replace("$(XDP_IFACE)", "eth0")).collect();
    let cli = Cli::try_parse_from(
        std::iter::once("xdp-policy").chain(concrete.iter().map(String::as_str)),
    );
    assert!(cli.is_ok(), "the DaemonSet's args are not valid flags: {:?}", cli.err());
    // Metrics on the node's loopback: with hostNetwork, any other address of the node is
    // reachable from wherever the node is.
    let metrics_arg = args.iter().skip_while(|a| **a != "--metrics").nth(1).expect("--metrics");
    match metrics_arg.parse() {
        Ok(MetricsAddr::On(addr)) => assert!(addr.ip().is_loopback(), "--metrics {addr}"),
        other => panic!("--metrics {metrics_arg}: {other:?}"),
    }
    // The state beside the pins, on the node: a replaced pod adopts both.
    let state = volume_at(pod, c, "/run/xdp-policy");
    assert_eq!(state["hostPath"]["path"].as_str(), Some("/run/xdp-policy"));
}

#[test]
fn the_configmap_policy_is_valid() {
    let docs = manifests();
    let data = docs["ConfigMap"]["data"].as_mapping().expect("ConfigMap data");
    let dir = temp_dir("configmap");
    for (name, text) in data {
        let name = name.as_str().expect("key");
        assert!(name.ends_with(".toml"), "{name}: only *.toml files are read");
        write(&dir, name, text.as_str().expect("text"));
    }
    let policy = files::load(dir.path(), Default::default())
        .unwrap_or_else(|e| panic!("the ConfigMap's policy:\n{e}"));
    assert!(!policy.rules.is_empty());
    assert!(policy.warnings.is_empty(), "{:?}", policy.warnings);
}
