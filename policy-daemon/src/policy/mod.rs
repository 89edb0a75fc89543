//! Policies: TOML text → validated [`Policy`] → compiled [`Ruleset`].
//!
//! Pure code: no aya, no kernel, no I/O beyond reading the policy files it is pointed at,
//! so every step is unit-tested without root. `check`, `run` and (later) reload all go
//! through [`load`].
#![forbid(unsafe_code)]

mod compile;
mod diagnostic;
mod schema;

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

pub use compile::{PortTable, Ruleset, compile};
pub use diagnostic::{Diagnostic, Location};
pub use schema::{Action, PortRange, Protocol};

/// A validated policy: the rules of one file, or of every `*.toml` file of a directory
/// in file-name order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The files the rules came from, in the order they were read.
    pub sources: Vec<PathBuf>,
    /// Rules in evaluation order: the first that matches decides.
    pub rules: Vec<Rule>,
}

/// One validated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub protocol: Protocol,
    /// `None` matches every port.
    pub dst_ports: Option<Vec<PortRange>>,
    /// Where the rule's `name` is written.
    pub location: Location,
}

/// Why a policy was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no *.toml policy files in this directory", path.display())]
    EmptyDirectory { path: PathBuf },
    #[error("{}", render_all(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render_all(diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diagnostics {
        out.push_str(&d.to_string());
    }
    let n = diagnostics.len();
    out.push_str(&format!("{n} error{}", if n == 1 { "" } else { "s" }));
    out
}

/// Reads and validates the policy at `path`: a file, or a directory whose `*.toml`
/// files are merged in file-name order. All problems of all files are reported at once.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let read_err = |source| PolicyError::Read { path: path.to_path_buf(), source };
    let files = if fs::metadata(path).map_err(read_err)?.is_dir() {
        let mut files = Vec::new();
        for entry in fs::read_dir(path).map_err(read_err)? {
            let file = entry.map_err(read_err)?.path();
            if file.extension().is_some_and(|ext| ext == "toml") && file.is_file() {
                files.push(file);
            }
        }
        if files.is_empty() {
            return Err(PolicyError::EmptyDirectory { path: path.to_path_buf() });
        }
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut sources = Vec::with_capacity(files.len());
    for file in files {
        let text = fs::read_to_string(&file)
            .map_err(|source| PolicyError::Read { path: file.clone(), source })?;
        sources.push((file, text));
    }
    parse(sources.iter().map(|(file, text)| (file.as_path(), text.as_str())))
}

/// Parses and validates policy texts (`(file name for messages, text)`), merged in the
/// order given.
pub fn parse<'a>(
    sources: impl IntoIterator<Item = (&'a Path, &'a str)>,
) -> Result<Policy, PolicyError> {
    let mut diagnostics = Vec::new();
    let mut policy = Policy { sources: Vec::new(), rules: Vec::new() };
    let mut names = HashMap::new();
    for (file, text) in sources {
        policy.sources.push(file.to_path_buf());
        match schema::parse_file(file, text, &mut names) {
            Ok(rules) => policy.rules.extend(rules),
            Err(mut errors) => diagnostics.append(&mut errors),
        }
    }
    if diagnostics.is_empty() { Ok(policy) } else { Err(PolicyError::Invalid(diagnostics)) }
}

#[cfg(test)]
mod tests;
