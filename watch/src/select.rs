//! Which tests a change affects, why, and in which order they run.

use crate::blocks::{python_blocks, SourceBlocks, MODULE};
use crate::db::{Db, DbError, Dep, TestRow, DATA, IMPORT, STALE};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A selected test and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// Node id (a file path for a whole test file).
    pub test: String,
    /// Why it runs, e.g. `calls shop/cart.py::Cart.subtotal (changed)`.
    pub why: String,
}

/// A file as it is now.
#[derive(Debug, Clone)]
pub struct FileNow {
    /// SHA-1 of the content (git's and the recorder's hash of data files).
    pub sha1: String,
    /// Blocks, for a Python file.
    pub blocks: Option<Rc<SourceBlocks>>,
}

/// Current fingerprints, read from disk once per file per cycle.
#[derive(Default)]
pub struct Current {
    files: HashMap<PathBuf, Option<FileNow>>,
    /// Parsed sources by content (SHA-1), kept across cycles: a save re-parses
    /// only the file saved, not the 6,000-line test file its tests depend on.
    parsed: HashMap<String, Rc<SourceBlocks>>,
}

/// Parsed sources kept at most (then the cache starts again).
const PARSED_MAX: usize = 4096;

/// SHA-1, as the recorder (hashlib) hashes the files it saw.
fn sha1_hex(bytes: &[u8]) -> String {
    sha1::Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A content hash for change detection (any file).
pub fn content_hash(bytes: &[u8]) -> String {
    let out = Sha256::digest(bytes);
    out.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

impl Current {
    /// Forgets what was read (files changed).
    pub fn clear(&mut self) {
        self.files.clear();
    }

    /// The file now (None: it does not exist).
    pub fn file(&mut self, path: &Path) -> Option<&FileNow> {
        let parsed = &mut self.parsed;
        self.files
            .entry(path.to_path_buf())
            .or_insert_with(|| {
                let bytes = std::fs::read(path).ok()?;
                let sha1 = sha1_hex(&bytes);
                let blocks = path.extension().is_some_and(|e| e == "py").then(|| {
                    if parsed.len() >= PARSED_MAX {
                        parsed.clear();
                    }
                    parsed
                        .entry(sha1.clone())
                        .or_insert_with(|| Rc::new(python_blocks(&bytes)))
                        .clone()
                });
                Some(FileNow { sha1, blocks })
            })
            .as_ref()
    }

    /// The fingerprint `dep` would have now (None: the file or block is gone).
    pub fn fp(&mut self, path: &Path, block: &str) -> Option<String> {
        let file = self.file(path)?;
        match block {
            DATA => Some(file.sha1.clone()),
            IMPORT => file.blocks.as_ref().map(|b| b.skeleton.clone()),
            name => file
                .blocks
                .as_ref()
                .and_then(|b| b.fp_of(name))
                .map(str::to_string),
        }
    }
}

/// `path` relative to `root`, '/'-separated.
pub fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

fn why_of(root: &Path, dep: &Dep, gone: bool) -> String {
    let state = if gone { "deleted" } else { "changed" };
    let file = rel(root, &dep.path);
    match dep.block.as_str() {
        DATA => format!("reads {file} ({state})"),
        IMPORT => format!("imports {file} (module level {state})"),
        MODULE => format!("runs {file} at module level ({state})"),
        name => {
            let own = dep.test.split("::").next() == Some(file.as_str())
                && dep.test.replace("::", ".").ends_with(name);
            if own {
                format!("test changed ({file}::{name})")
            } else {
                format!("calls {file}::{name} ({state})")
            }
        }
    }
}

/// Tests whose recorded dependencies on `paths` (every file when None)
/// differ from the files now; the first reason found per test.
pub fn stale(
    db: &Db,
    current: &mut Current,
    root: &Path,
    paths: Option<&[PathBuf]>,
) -> Result<BTreeMap<String, String>, DbError> {
    let deps = match paths {
        None => db.deps_on(None)?,
        Some(paths) => {
            let mut all = Vec::new();
            for p in paths {
                all.extend(db.deps_on(Some(p))?);
            }
            all
        }
    };
    let mut out = BTreeMap::new();
    for dep in deps {
        if out.contains_key(&dep.test) {
            continue;
        }
        let now = current.fp(&dep.path, &dep.block);
        if now.as_deref() != Some(dep.fp.as_str()) || dep.fp == STALE {
            out.insert(dep.test.clone(), why_of(root, &dep, now.is_none()));
        }
    }
    Ok(out)
}

/// Of the stale tests, those whose dependencies are now exactly as in a
/// state recorded before (a branch switched back): their recorded result
/// stands. Returns them with that result; the database is updated.
pub fn restore_known_states(
    db: &mut Db,
    current: &mut Current,
    stale: &BTreeMap<String, String>,
) -> Result<Vec<TestRow>, DbError> {
    let mut restored = Vec::new();
    for test in stale.keys() {
        let deps = db.deps_of(test)?;
        if deps.is_empty() {
            continue;
        }
        let mut now = Vec::with_capacity(deps.len());
        for dep in &deps {
            match current.fp(&dep.path, &dep.block) {
                Some(fp) => now.push(Dep { fp, ..dep.clone() }),
                None => break,
            }
        }
        if now.len() != deps.len() {
            continue;
        }
        let Some(state) = crate::db::state_of(
            now.iter()
                .map(|d| (d.path.as_path(), d.block.as_str(), d.fp.as_str())),
        ) else {
            continue;
        };
        if let Some(row) = db.state_result(test, &state)? {
            db.restore(&row, &now)?;
            restored.push(row);
        }
    }
    Ok(restored)
}

/// Test functions in a test file, as node ids (`file::test`, `file::Class::test`).
pub fn test_ids_in(root: &Path, file: &Path, blocks: &SourceBlocks) -> Vec<String> {
    let rel_file = rel(root, file);
    let class_names: Vec<&str> = blocks
        .blocks
        .iter()
        .filter(|b| b.kind == crate::blocks::Kind::Class)
        .map(|b| b.qualname.as_str())
        .collect();
    blocks
        .blocks
        .iter()
        .filter(|b| b.kind == crate::blocks::Kind::Function)
        .filter_map(|b| {
            let (owner, name) = match b.qualname.rsplit_once('.') {
                Some((owner, name)) => (Some(owner), name),
                None => (None, b.qualname.as_str()),
            };
            if !name.starts_with("test") {
                return None;
            }
            match owner {
                None => Some(format!("{rel_file}::{name}")),
                Some(owner) if class_names.contains(&owner) && !owner.contains('.') => {
                    Some(format!("{rel_file}::{owner}::{name}"))
                }
                Some(_) => None,
            }
        })
        .collect()
}

/// Whether a test id (possibly parametrized) belongs to the base id.
pub fn is_instance_of(test: &str, base: &str) -> bool {
    test == base || test.strip_prefix(base).is_some_and(|r| r.starts_with('['))
}

/// The seed's order: tests whose file name contains a changed module's base
/// name first (shortest test file name first), then the most recorded
/// failures, then the fastest. Stable for ties.
pub fn order(selected: &mut [Selected], changed: &[PathBuf], known: &HashMap<String, TestRow>) {
    let bases: Vec<String> = changed
        .iter()
        .filter_map(|p| {
            let stem = p.file_stem()?.to_string_lossy().into_owned();
            if stem == "__init__" {
                p.parent()?
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            } else {
                Some(stem.trim_start_matches("test_").to_string())
            }
        })
        .filter(|b| !b.is_empty())
        .collect();
    let key = |s: &Selected| {
        let file = s.test.split("::").next().unwrap_or("");
        let name = file.rsplit('/').next().unwrap_or(file);
        let matched = bases.iter().any(|b| name.contains(b.as_str()));
        let rank = if matched { name.len() } else { usize::MAX };
        let row = known.get(&s.test);
        let failures = row.map_or(0, |r| r.failures);
        let duration = row.map_or(0.0, |r| r.duration);
        (rank, -failures, (duration * 1e6) as i64)
    };
    selected.sort_by_key(key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_known_values() {
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn orders_by_name_then_failures_then_speed() {
        let mut known = HashMap::new();
        for (id, failures, duration) in [
            ("tests/test_other.py::a", 5, 0.1),
            ("tests/test_other.py::b", 0, 0.01),
            ("tests/test_cart_more.py::c", 0, 0.5),
            ("tests/test_cart.py::d", 0, 0.9),
        ] {
            known.insert(
                id.to_string(),
                TestRow {
                    id: id.into(),
                    failures,
                    duration,
                    ..Default::default()
                },
            );
        }
        let mut selected: Vec<Selected> = known
            .keys()
            .map(|t| Selected {
                test: t.clone(),
                why: String::new(),
            })
            .collect();
        selected.sort_by(|a, b| a.test.cmp(&b.test));
        order(&mut selected, &[PathBuf::from("/p/shop/cart.py")], &known);
        let ids: Vec<_> = selected.iter().map(|s| s.test.as_str()).collect();
        assert_eq!(
            ids,
            [
                "tests/test_cart.py::d",
                "tests/test_cart_more.py::c",
                "tests/test_other.py::a",
                "tests/test_other.py::b"
            ]
        );
    }

    #[test]
    fn finds_test_ids() {
        let src = b"def test_a():\n    pass\nclass TestB:\n    def test_c(self):\n        pass\n    def helper(self):\n        pass\ndef helper():\n    pass\n";
        let blocks = python_blocks(src);
        let ids = test_ids_in(Path::new("/p"), Path::new("/p/tests/test_x.py"), &blocks);
        assert_eq!(
            ids,
            ["tests/test_x.py::test_a", "tests/test_x.py::TestB::test_c"]
        );
        assert!(is_instance_of("t.py::a[1]", "t.py::a"));
        assert!(!is_instance_of("t.py::ab", "t.py::a"));
    }
}
