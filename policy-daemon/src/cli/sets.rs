//! `xdp-policy set`: the run-time entries of the named sets, written straight into the
//! pinned `SETS` map of every interface whose policy has the set (as its state file
//! says), so it works whether or not a daemon runs. Each change holds the sets' lock,
//! which the daemon also takes when it applies a policy or removes expired entries.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    net::IpAddr,
    path::Path,
    time::Duration,
};

use ipnet::IpNet;
use policy_common::SETS_MAP;

use super::{CliError, PlacesArgs, SetAction, SetArgs, SetTarget};
use crate::{
    dataplane::{
        Places,
        pinned::PinnedFilter,
        pins::Pins,
        sets::{self, ChangeError, SetInfo, SetMap, SetMapError},
        state::State,
    },
    policy, render,
};

/// Why a set command did nothing (or not everything).
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("no interface enforces a policy with a set named \"{name}\"{}", known_sets(.known))]
    Unknown { name: String, known: Vec<String> },
    #[error("{0}")]
    Input(String),
    #[error("{iface}: {error}")]
    Map { iface: String, error: Box<SetMapError> },
    #[error("{iface}: {error}")]
    Change { iface: String, error: Box<ChangeError> },
    #[error("{addr} is not in set \"{name}\"")]
    NotIn { addr: IpAddr, name: String },
}

fn known_sets(known: &[String]) -> String {
    if known.is_empty() {
        " (no policy in force has sets)".to_string()
    } else {
        format!(" (sets in force: {})", known.join(", "))
    }
}

/// One interface holding the set.
struct Target {
    iface: String,
    pins: Pins,
    set: SetInfo,
}

pub fn set(args: &SetArgs) -> Result<(), CliError> {
    match &args.action {
        SetAction::Add { target, addrs, timeout } => {
            let nets = parse_nets(addrs)?;
            let timeout = timeout.as_deref().map(parse_timeout).transpose()?;
            for t in targets(target)? {
                let timeout = timeout.unwrap_or(t.set.timeout);
                let expires = sets::expiry(sets::boot_now_ns(), timeout);
                let entries: Vec<_> = nets.iter().map(|n| (*n, expires)).collect();
                let report = change(&t, |map| sets::add(map, &t.set, &entries, 0))?;
                println!("{}", render::set_added(&t.set.name, &t.iface, &report, timeout));
            }
            Ok(())
        }
        SetAction::Del { target, addrs } => {
            let nets = parse_nets(addrs)?;
            for t in targets(target)? {
                let report =
                    change(&t, |map| sets::delete(map, t.set.id, &nets).map_err(Into::into))?;
                println!("{}", render::set_deleted(&t.set.name, &t.iface, &report));
            }
            Ok(())
        }
        SetAction::Flush { target } => {
            for t in targets(target)? {
                let (written, removed) = change(&t, |map| sets::replace(map, &t.set, &[], 0))?;
                debug_assert_eq!(written, 0);
                println!("{} on {}: {removed} run-time entries removed", t.set.name, t.iface);
            }
            Ok(())
        }
        SetAction::Load { target, file, timeout } => {
            // Read twice, a line at a time: once to check every line and count, once to
            // write, so that a million entries never sit in memory at once.
            let total = check_set_file(file)?;
            let timeout = timeout.as_deref().map(parse_timeout).transpose()?;
            for t in targets(target)? {
                let timeout = timeout.unwrap_or(t.set.timeout);
                let expires = sets::expiry(sets::boot_now_ns(), timeout);
                let chunks = set_file_chunks(file)?;
                let (written, removed) =
                    change(&t, |map| sets::replace_chunks(map, &t.set, total, expires, chunks))?;
                println!(
                    "{} on {}: {written} run-time entries written, {removed} others removed",
                    t.set.name, t.iface
                );
            }
            Ok(())
        }
        SetAction::List { target, json } => {
            let now = sets::boot_now_ns();
            let mut lists = Vec::new();
            for t in targets(target)? {
                let mut map = open(&t)?;
                let mut entries = map.entries(Some(t.set.id)).map_err(|error| SetError::Map {
                    iface: t.iface.clone(),
                    error: Box::new(error),
                })?;
                entries.retain(|e| !e.expired(now));
                entries.sort_by_key(|e| e.net);
                lists.push((t.iface, t.set.name, entries));
            }
            print!("{}", render::set_lists(&lists, now, *json));
            Ok(())
        }
        SetAction::Test { target, addr } => {
            let addr: IpAddr = addr.parse().map_err(|_| {
                SetError::Input(format!(
                    "invalid address \"{addr}\": expected an IPv4 or IPv6 address"
                ))
            })?;
            let now = sets::boot_now_ns();
            let mut found = false;
            for t in targets(target)? {
                let mut map = open(&t)?;
                let entries = map.entries(Some(t.set.id)).map_err(|error| SetError::Map {
                    iface: t.iface.clone(),
                    error: Box::new(error),
                })?;
                let hit = sets::matching(&entries, t.set.id, addr, now);
                found |= hit.is_some();
                println!("{}", render::set_test(&t.set.name, &t.iface, addr, hit.as_ref(), now));
            }
            if found {
                Ok(())
            } else {
                Err(SetError::NotIn { addr, name: target.name.clone() }.into())
            }
        }
    }
}

/// Most bad lines of a set file listed in an error.
const MAX_REPORTED_LINES: usize = 20;

fn open_set_file(file: &Path) -> Result<std::io::Lines<BufReader<File>>, SetError> {
    File::open(file)
        .map(|f| BufReader::new(f).lines())
        .map_err(|e| SetError::Input(format!("{}: {e}", file.display())))
}

/// Checks every line of a set file; returns how many entries it lists.
fn check_set_file(file: &Path) -> Result<usize, SetError> {
    let mut count = 0;
    let mut bad = Vec::new();
    let mut bad_lines = 0;
    for (n, line) in open_set_file(file)?.enumerate() {
        let line = line.map_err(|e| SetError::Input(format!("{}: {e}", file.display())))?;
        match policy::parse_set_line(&line) {
            Ok(Some(_)) => count += 1,
            Ok(None) => {}
            Err((at, _, message)) => {
                bad_lines += 1;
                if bad.len() < MAX_REPORTED_LINES {
                    bad.push(format!("{}:{}:{}: {message}", file.display(), n + 1, at + 1));
                }
            }
        }
    }
    if bad_lines > 0 {
        let more = bad_lines - bad.len();
        let mut text = bad.join("\n");
        if more > 0 {
            text.push_str(&format!("\n… and {more} more bad lines"));
        }
        text.push_str("\nnothing was changed");
        return Err(SetError::Input(text));
    }
    Ok(count)
}

/// The entries of a set file already checked, in chunks.
fn set_file_chunks(
    file: &Path,
) -> Result<impl Iterator<Item = Result<Vec<IpNet>, ChangeError>>, SetError> {
    let mut lines = open_set_file(file)?;
    let path = file.to_path_buf();
    Ok(std::iter::from_fn(move || {
        let mut chunk = Vec::with_capacity(sets::REPLACE_CHUNK);
        for line in lines.by_ref() {
            let changed = |why: String| {
                ChangeError::Changed(format!(
                    "{}: {why} (it changed while being read)",
                    path.display()
                ))
            };
            match line.map_err(|e| changed(e.to_string())).and_then(|l| {
                policy::parse_set_line(&l).map_err(|(_, _, message)| changed(message))
            }) {
                Ok(Some(net)) => chunk.push(net),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if chunk.len() == sets::REPLACE_CHUNK {
                break;
            }
        }
        (!chunk.is_empty()).then_some(Ok(chunk))
    }))
}

/// The interfaces whose policy in force has the set (only `--iface` if given).
fn targets(target: &SetTarget) -> Result<Vec<Target>, CliError> {
    let Places { pin_dir, state_dir } = PlacesArgs::resolve(&target.places)?;
    let mut found = Vec::new();
    let mut known = Vec::new();
    for filter in PinnedFilter::all(&pin_dir, target.iface.as_deref())? {
        let iface = filter.iface().to_string();
        if !filter.attached() {
            continue;
        }
        let Some(state) =
            State::read(&state_dir, &iface).map_err(crate::dataplane::pinned::PinnedError::from)?
        else {
            continue;
        };
        for s in &state.sets {
            if !known.contains(&s.name) {
                known.push(s.name.clone());
            }
        }
        if let Some(s) = state.sets.iter().find(|s| s.name == target.name) {
            found.push(Target {
                pins: Pins::new(&pin_dir, &iface),
                iface,
                set: SetInfo {
                    name: s.name.clone(),
                    id: s.id,
                    max_entries: s.max_entries,
                    timeout: Duration::from_millis(s.timeout_ms),
                },
            });
        }
    }
    if found.is_empty() {
        known.sort();
        return Err(SetError::Unknown { name: target.name.clone(), known }.into());
    }
    Ok(found)
}

fn open(t: &Target) -> Result<SetMap, SetError> {
    SetMap::from_pin(&t.pins.map(SETS_MAP))
        .map_err(|error| SetError::Map { iface: t.iface.clone(), error: Box::new(error) })
}

/// Runs `f` on the set's map under the sets' lock.
fn change<T>(
    t: &Target,
    f: impl FnOnce(&mut SetMap) -> Result<T, ChangeError>,
) -> Result<T, SetError> {
    let _lock = sets::lock(&t.pins.maps())
        .map_err(|error| SetError::Map { iface: t.iface.clone(), error: Box::new(error) })?;
    let mut map = open(t)?;
    f(&mut map).map_err(|error| SetError::Change { iface: t.iface.clone(), error: Box::new(error) })
}

fn parse_nets(addrs: &[String]) -> Result<Vec<IpNet>, SetError> {
    addrs.iter().map(|a| policy::parse_net(a).map_err(SetError::Input)).collect()
}

fn parse_timeout(text: &str) -> Result<Duration, SetError> {
    policy::parse_duration(text).map_err(SetError::Input)
}
