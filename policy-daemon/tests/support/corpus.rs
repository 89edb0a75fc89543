//! The corpus of bad policies in `tests/bad-policies/`, copied (and the entries too big or
//! too silly to commit generated) into a fresh directory for a test.

use std::{
    fmt::Write as _,
    fs::{self, File},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-policies")
}

/// Writes a generated entry's file at the path given.
pub type Generator = fn(&Path);

/// Entries written by the test: name and what writes `NAME.toml` into the directory.
pub const GENERATED: &[(&str, Generator)] = &[
    ("huge-file", |path| {
        // Sparse: 100 MB that cost no disk, and must not be read.
        let file = File::create(path).expect("creating the big file");
        file.set_len(100 * 1024 * 1024).expect("growing the big file");
    }),
    ("deeply-nested-arrays", |path| {
        let depth = 100_000;
        fs::write(path, format!("a = {}{}\n", "[".repeat(depth), "]".repeat(depth)))
            .expect("writing");
    }),
    ("deeply-nested-inline-tables", |path| {
        let depth = 100_000;
        fs::write(path, format!("a = {}{}\n", "{ a = ".repeat(depth), "}".repeat(depth)))
            .expect("writing");
    }),
    ("deeply-nested-dotted-keys", |path| {
        fs::write(path, format!("{} = 1\n", vec!["a"; 100_000].join("."))).expect("writing");
    }),
    ("deeply-nested-table-headers", |path| {
        fs::write(path, format!("{}rule{}\n", "[".repeat(100_000), "]".repeat(100_000)))
            .expect("writing");
    }),
    ("too-many-prefixes", |path| {
        // One line, no spaces: a million and one addresses must stay under the file
        // size limit (MAX_POLICY_FILE_BYTES) for the prefix limit to be what trips.
        let mut text =
            String::from("[[rule]]\nname = \"many-networks\"\naction = \"drop\"\nsrc = [");
        for i in 0..=policy_common::MAX_PREFIXES {
            let [_, a, b, c] = i.to_be_bytes();
            write!(text, "\"10.{a}.{b}.{c}\",").expect("writing to a string");
        }
        text.push_str("]\n");
        assert!(text.len() as u64 <= policy_daemon::reload::files::MAX_POLICY_FILE_BYTES);
        fs::write(path, text).expect("writing");
    }),
    ("too-many-rules", |path| {
        // One rule past the limit, each on its own port.
        let mut text = String::new();
        for i in 0..=policy_common::MAX_RULES {
            let port = i + 1;
            write!(
                text,
                "[[rule]]\nname = \"r{i}\"\naction = \"drop\"\nprotocol = \"udp\"\n\
                 dst_ports = {port}\n\n"
            )
            .expect("writing to a string");
        }
        fs::write(path, text).expect("writing");
    }),
    ("too-many-port-classes", |path| {
        // Rule `bit-k` takes the ports below 2^BITS whose bit k is set: every combination
        // of the rules is a class of its own, 2^BITS of them, past the limit.
        const BITS: u32 = (policy_common::MAX_PORT_CLASSES.ilog2()) + 1;
        let mut text = String::new();
        for k in 0..BITS {
            let run = 1u32 << k;
            let ranges: Vec<String> = (0..(1u32 << (BITS - k - 1)))
                .map(|j| {
                    let low = j * 2 * run + run;
                    let high = low + run - 1;
                    if low == high { format!("{low}") } else { format!("\"{low}-{high}\"") }
                })
                .collect();
            write!(
                text,
                "[[rule]]\nname = \"bit-{k}\"\naction = \"drop\"\nprotocol = \"udp\"\n\
                 dst_ports = [{}]\n\n",
                ranges.join(", ")
            )
            .expect("writing to a string");
        }
        fs::write(path, text).expect("writing");
    }),
];

/// One entry of the corpus, copied (or generated) into a fresh directory.
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub expected: String,
}

/// The corpus, copied into a fresh temporary directory owned by the test with modes
/// 0755/0644, so the ownership checks pass whoever runs the test; removed on drop.
pub struct Corpus {
    pub dir: PathBuf,
    pub entries: Vec<Entry>,
}

impl Corpus {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir()
            .join(format!("xdp-policy-bad-policies-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating the corpus copy");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut entries = Vec::new();
        let mut names: Vec<PathBuf> = fs::read_dir(corpus_dir())
            .expect("tests/bad-policies exists")
            .map(|e| e.expect("readable entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "expected"))
            .collect();
        names.sort();
        for expected_file in names {
            let name = expected_file.file_stem().expect("stem").to_string_lossy().into_owned();
            let expected = fs::read_to_string(&expected_file).expect("reading .expected");
            let file = corpus_dir().join(format!("{name}.toml"));
            let d = corpus_dir().join(format!("{name}.d"));
            let path = if let Some((_, generate)) = GENERATED.iter().find(|(n, _)| *n == name) {
                let path = dir.join(format!("{name}.toml"));
                generate(&path);
                path
            } else if file.is_file() {
                let path = dir.join(format!("{name}.toml"));
                fs::copy(&file, &path).expect("copying");
                path
            } else if d.is_dir() {
                let path = dir.join(format!("{name}.d"));
                fs::create_dir(&path).expect("mkdir");
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
                for f in fs::read_dir(&d).expect("reading the .d") {
                    let f = f.expect("entry").path();
                    fs::copy(&f, path.join(f.file_name().expect("name"))).expect("copying");
                }
                path
            } else {
                panic!("{name}.expected has neither {name}.toml nor {name}.d nor a generator");
            };
            entries.push(Entry { name, path, expected });
        }
        for (name, _) in GENERATED {
            assert!(
                entries.iter().any(|e| e.name == *name),
                "generated entry {name} has no {name}.expected"
            );
        }
        for p in fs::read_dir(corpus_dir()).expect("corpus").map(|e| e.expect("entry").path()) {
            let stem = p.file_stem().expect("stem").to_string_lossy().into_owned();
            let stem = stem.strip_suffix(".d").unwrap_or(&stem).to_string();
            assert!(
                entries.iter().any(|e| e.name == stem),
                "{} has no .expected file",
                p.display()
            );
        }
        Self { dir, entries }
    }

    /// The text an entry's rejection is expected to render as.
    pub fn expected(&self, entry: &Entry) -> String {
        entry.expected.replace("{dir}", &self.dir.display().to_string())
    }
}

impl Drop for Corpus {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
