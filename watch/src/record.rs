//! The recorder's output (`deps.jsonl`, written by the worker's
//! `stepkernel_worker.deps` plugin) turned into database rows.

use crate::blocks::MODULE;
use crate::db::{Dep, TestRow, DATA, IMPORT, STALE};
use crate::imports::Resolver;
use crate::select::Current;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A test the recorder saw end.
#[derive(Debug, Clone, Deserialize)]
pub struct Finished {
    /// Node id relative to the watched directory.
    pub test: String,
    /// Its file, relative.
    #[serde(default)]
    pub file: String,
    /// passed, failed, error, skipped, xfailed.
    pub outcome: String,
    /// pytest's report text when it did not pass.
    #[serde(default)]
    pub report: String,
    /// Seconds (setup, call and teardown).
    #[serde(default)]
    pub duration: f64,
    /// Code objects that ran: file, qualified name, first line.
    #[serde(default)]
    pub code: Vec<(String, String, usize)>,
    /// SHA-1 of each source file when the worker first saw it.
    #[serde(default)]
    pub hashes: HashMap<String, Option<String>>,
    /// Data files read, with their SHA-1 at the test's end.
    #[serde(default)]
    pub reads: HashMap<String, Option<String>>,
    /// Paths the test wrote or removed.
    #[serde(default)]
    pub writes: Vec<String>,
    /// Why the record is incomplete (the test then always reruns).
    #[serde(default)]
    pub incomplete: Option<String>,
}

/// A collection error.
#[derive(Debug, Clone, Deserialize)]
pub struct CollectError {
    /// The test file, relative.
    pub collect_error: String,
    /// Modules it could not import.
    #[serde(default)]
    pub missing: Vec<String>,
    /// pytest's text.
    #[serde(default)]
    pub text: String,
}

/// One line of `deps.jsonl`.
#[derive(Debug, Clone)]
pub enum Line {
    /// A test started.
    Start(String),
    /// A test ended.
    Finish(Box<Finished>),
    /// A file did not collect.
    Collect(CollectError),
    /// Node ids the cycle was given that name no test any more (relative).
    NotFound(Vec<String>),
}

/// Parses one line (None: not a recorder line).
pub fn parse_line(line: &str) -> Option<Line> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if let Some(start) = value.get("start").and_then(|s| s.as_str()) {
        return Some(Line::Start(start.to_string()));
    }
    if let Some(ids) = value.get("not_found").and_then(|v| v.as_array()) {
        let ids = ids
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        return Some(Line::NotFound(ids));
    }
    if value.get("collect_error").is_some() {
        return serde_json::from_value(value).ok().map(Line::Collect);
    }
    serde_json::from_value(value)
        .ok()
        .map(|f| Line::Finish(Box::new(f)))
}

/// Reads a growing file line by line.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Tail {
    /// Tails `path` from its start (it may not exist yet).
    pub fn new(path: &Path) -> Tail {
        Tail {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// The complete lines written since the last call.
    pub fn lines(&mut self) -> Vec<Line> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut text = String::new();
        if file.read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        self.offset += text.len() as u64;
        self.partial.push_str(&text);
        let mut out = Vec::new();
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            if let Some(parsed) = parse_line(line.trim_end()) {
                out.push(parsed);
            }
        }
        out
    }
}

/// Whether a recorded source file is the project's (not an installed package).
fn project_file(root: &Path, path: &Path) -> bool {
    path.starts_with(root)
        && !path.components().any(|c| {
            let c = c.as_os_str();
            c == "site-packages" || c == ".venv" || c == "venv" || c == "__pycache__"
        })
}

/// The database rows for a finished test: code blocks that ran (with the
/// fingerprint of the source that ran), data files read, and the static
/// imports of its test file.
pub fn test_rows(
    finished: &Finished,
    root: &Path,
    current: &mut Current,
    resolver: &mut Resolver,
) -> (TestRow, Vec<Dep>) {
    let mut seen = BTreeSet::new();
    let mut deps = Vec::new();
    let mut push = |path: PathBuf, block: String, fp: String, deps: &mut Vec<Dep>| {
        if seen.insert((path.clone(), block.clone())) {
            deps.push(Dep {
                test: finished.test.clone(),
                path,
                block,
                fp,
            });
        }
    };
    for (file, qualname, line) in &finished.code {
        let path = PathBuf::from(file);
        if !project_file(root, &path) {
            continue;
        }
        let recorded = finished.hashes.get(file).cloned().flatten();
        match current.file(&path) {
            Some(now) if Some(&now.sha1) == recorded.as_ref() => {
                if let Some(blocks) = &now.blocks {
                    let block = blocks.block_for(qualname, *line);
                    push(path, block.qualname.clone(), block.fp.clone(), &mut deps);
                }
            }
            // Saved while the test ran (or gone): what ran is not on disk.
            _ => push(path, qualname_or_module(qualname), STALE.into(), &mut deps),
        }
    }
    for (file, sha) in &finished.reads {
        let path = PathBuf::from(file);
        let fp = sha.clone().unwrap_or_else(|| STALE.into());
        push(path, DATA.into(), fp, &mut deps);
    }
    if !finished.file.is_empty() {
        for path in resolver.closure(&root.join(&finished.file)) {
            let fp = current.fp(&path, IMPORT).unwrap_or_else(|| STALE.into());
            push(path, IMPORT.into(), fp, &mut deps);
        }
    }
    let row = TestRow {
        id: finished.test.clone(),
        file: finished.file.clone(),
        outcome: finished.outcome.clone(),
        failures: 0,
        duration: finished.duration,
        report: finished.report.clone(),
        incomplete: finished.incomplete.clone(),
    };
    (row, deps)
}

fn qualname_or_module(qualname: &str) -> String {
    if qualname.is_empty() {
        MODULE.into()
    } else {
        qualname
            .split(".<locals>")
            .next()
            .unwrap_or(qualname)
            .to_string()
    }
}

/// The static-import rows of a test file that did not collect.
pub fn collect_error_rows(
    file: &str,
    root: &Path,
    current: &mut Current,
    resolver: &mut Resolver,
) -> Vec<Dep> {
    resolver
        .closure(&root.join(file))
        .into_iter()
        .map(|path| Dep {
            test: file.to_string(),
            fp: current.fp(&path, IMPORT).unwrap_or_else(|| STALE.into()),
            path,
            block: IMPORT.into(),
        })
        .collect()
}
