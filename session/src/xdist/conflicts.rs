//! Two xdist workers' edits of the same lines: each worker's own list of
//! what it journaled tells whose an edit in the session's journal is.

use super::workers;
use serde_json::Value;
use std::path::Path;

/// Each worker's journaled edits (`<worker dir>/edits.jsonl`), to tell whose an edit is.
pub(super) const EDITS_FILE: &str = "edits.jsonl";

/// Notes in a worker's `edits.jsonl` that it made `edit` (as journaled:
/// its file relative to the session's patch root, the same for every worker).
pub(super) fn note_edit(worker_dir: &Path, edit: &patchgen::Edit) {
    use std::io::Write;
    let mine = serde_json::json!({
        "file": edit.file, "start_line": edit.start_line, "end_line": edit.end_line,
        "new_source": edit.new_text, "name": edit.step_name,
    });
    let mut line = serde_json::to_vec(&mine).expect("serializes");
    line.push(b'\n');
    if let Ok(mut file) = kernel::private_files::open_append(&worker_dir.join(EDITS_FILE)) {
        let _ = file.write_all(&line);
    }
}

/// Edits of the same lines by two workers that differ: each says which
/// workers, file and lines (empty: none). The session's journal keeps the
/// last edit of a range; between two workers that would be an arbitrary
/// pick, so exports refuse until one worker's edit agrees with the other's.
pub fn conflicts(session_dir: &Path) -> Vec<String> {
    use std::collections::BTreeMap;
    // (file, start, end) -> worker -> (the worker's last text, name)
    type ByWorker = BTreeMap<String, (String, String)>;
    let mut ranges: BTreeMap<(String, u64, u64), ByWorker> = BTreeMap::new();
    for (worker, dir, _) in workers(session_dir) {
        let Ok(text) = std::fs::read_to_string(dir.join(EDITS_FILE)) else {
            continue;
        };
        for edit in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            let field = |k: &str| {
                edit.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let line = |k: &str| edit.get(k).and_then(Value::as_u64).unwrap_or(0);
            ranges
                .entry((field("file"), line("start_line"), line("end_line")))
                .or_default()
                .insert(worker.clone(), (field("new_source"), field("name")));
        }
    }
    let mut found = Vec::new();
    for ((file, start, end), by_worker) in ranges {
        let mut versions: Vec<&String> = by_worker.values().map(|(text, _)| text).collect();
        versions.sort();
        versions.dedup();
        if versions.len() > 1 {
            let names: Vec<String> = by_worker
                .iter()
                .map(|(worker, (_, name))| format!("{worker} ({name})"))
                .collect();
            found.push(format!(
                "{file} lines {start}-{end} were edited differently by xdist workers {}",
                names.join(" and ")
            ));
        }
    }
    found
}

/// [`conflicts`] as an error for an export: nothing is written.
pub fn check_conflicts(session_dir: &Path) -> Result<(), String> {
    let found = conflicts(session_dir);
    if found.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{}; nothing was written: %%edit the same lines again in one of the workers (while it is paused) \
         so both agree, then export",
        found.join("; ")
    ))
}
