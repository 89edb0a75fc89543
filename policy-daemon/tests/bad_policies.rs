//! The corpus of bad policies in `tests/bad-policies/`: every `NAME.toml` (or `NAME.d/`
//! directory) is rejected by `reload::files::load` and by `xdp-policy check` with exactly the
//! text in `NAME.expected` (`{dir}` stands for the directory the corpus was copied to),
//! and `check` exits 1. A few entries too big or too silly to commit are generated here
//! (see `support::corpus::GENERATED`). No root needed.
//!
//! `BLESS=1 cargo xtask test -- --test bad_policies` rewrites the `.expected` files from
//! what is rejected now; review the diff.

mod support;

use std::{
    fs::{self, File},
    io::Write as _,
    process::Command,
};

use policy_daemon::reload::files;
use support::corpus::{Corpus, corpus_dir};

const CHECK: &str = env!("CARGO_BIN_EXE_xdp-policy");
const MIN_ENTRIES: usize = 50;

#[test]
fn every_bad_policy_is_rejected_with_its_exact_message() {
    let corpus = Corpus::new("load");
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for entry in &corpus.entries {
        let got = match files::load(&entry.path, Default::default()) {
            Ok(p) => format!("accepted, {} rules", p.rules.len()),
            Err(e) => e.to_string(),
        };
        if bless {
            let text = got.replace(&corpus.dir.display().to_string(), "{dir}");
            fs::write(corpus_dir().join(format!("{}.expected", entry.name)), text)
                .expect("blessing");
            continue;
        }
        let expected = corpus.expected(entry);
        if got != expected {
            failures.push(format!("{}:\n--- expected\n{expected}\n--- got\n{got}\n", entry.name));
            continue;
        }
        let out = Command::new(CHECK).arg("check").arg(&entry.path).output().expect("runs check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = format!("{expected}\nxdp-policy: error: 1 of 1 policies are invalid\n");
        if out.status.code() != Some(1) || stderr != want || !out.stdout.is_empty() {
            failures.push(format!(
                "{}: check exited {:?}\n--- expected stderr\n{want}--- got\n{stderr}",
                entry.name, out.status
            ));
        }
    }
    eprintln!("bad-policy corpus: {} entries, {} failed", corpus.entries.len(), failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        corpus.entries.len() >= MIN_ENTRIES,
        "the corpus has {} entries, fewer than {MIN_ENTRIES}",
        corpus.entries.len()
    );
}

/// Not errors, though they look suspicious: they stay valid, and `check` warns.
#[test]
fn valid_edge_cases_are_accepted_with_a_warning() {
    let dir = std::env::temp_dir().join(format!("xdp-policy-edge-cases-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("mkdir");
    for (name, text) in [
        ("empty", ""),
        ("comments-only", "# nothing here yet\n\n# [[rule]]\n"),
        ("defaults-only", "[defaults]\naction = \"pass\"\n"),
    ] {
        let path = dir.join(format!("{name}.toml"));
        File::create(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("writing the policy");
        let policy = files::load(&path, Default::default())
            .unwrap_or_else(|e| panic!("{name} must be valid: {e}"));
        assert!(policy.rules.is_empty());
        let out = Command::new(CHECK).arg("check").arg(&path).output().expect("runs check");
        assert!(out.status.success(), "{name}: check must pass: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "warning: {}: the policy has no rules: every packet gets the default action\n",
                path.display()
            )
        );
    }
    let _ = fs::remove_dir_all(&dir);
}
