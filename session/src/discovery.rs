//! Finding sessions from any directory: the project's own session directories,
//! plus every live session whose connection file copy sits in Jupyter's
//! runtime directory (each copy names its session directory).

use crate::attach;
use crate::session_dir::{self, SessionMeta};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The key in a connection file naming the session directory.
pub const SESSION_DIR_KEY: &str = "stepkernel_session_dir";

/// Session directories named by the connection file copies in `runtime_dir`.
pub fn dirs_in_runtime(runtime_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(runtime_dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with("kernel-stepkernel-") && name.ends_with(".json")
        })
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            let info: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
            info.get(SESSION_DIR_KEY)?.as_str().map(PathBuf::from)
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// The sessions under `root` (this project's), then the live ones elsewhere
/// that Jupyter's runtime directory lists; each session once, oldest id first.
pub fn all_sessions(root: &Path) -> Vec<(PathBuf, SessionMeta)> {
    all_sessions_with(root, &attach::jupyter_runtime_dir())
}

/// [`all_sessions`] with an explicit runtime directory.
pub fn all_sessions_with(root: &Path, runtime_dir: &Path) -> Vec<(PathBuf, SessionMeta)> {
    let mut found = session_dir::list(root);
    for dir in dirs_in_runtime(runtime_dir) {
        let Some(meta) = SessionMeta::load(&dir) else {
            continue;
        };
        if meta.alive() && !found.iter().any(|(_, m)| m.id == meta.id) {
            found.push((dir, meta));
        }
    }
    found.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    found
}

/// When a session started: its start stamp, then its connection file's mtime.
///
/// Ids and start stamps have one-second resolution, so two runs started in the
/// same second would otherwise be ordered by the random part of their ids; the
/// connection file is written once, at start, with a finer timestamp.
pub fn start_key(dir: &Path, meta: &SessionMeta) -> (String, SystemTime) {
    let written = std::fs::metadata(dir.join("connection.json"))
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    (meta.started.clone(), written)
}

/// The session started last among those `keep` accepts.
pub fn latest(
    sessions: Vec<(PathBuf, SessionMeta)>,
    keep: impl Fn(&SessionMeta) -> bool,
) -> Option<(PathBuf, SessionMeta)> {
    sessions
        .into_iter()
        .filter(|(_, m)| keep(m))
        .max_by_key(|(dir, m)| start_key(dir, m))
}

/// The latest session `keep` accepts: this project's (under `root`) when it
/// has one, else the latest live one elsewhere that Jupyter's runtime directory lists.
pub fn preferred(
    root: &Path,
    keep: impl Fn(&SessionMeta) -> bool,
) -> Option<(PathBuf, SessionMeta)> {
    latest(session_dir::list(root), &keep).or_else(|| latest(all_sessions(root), &keep))
}

/// A session by id, unique id prefix or directory, among [`all_sessions`].
pub fn find(root: &Path, id: &str) -> Result<(PathBuf, SessionMeta), String> {
    let as_path = Path::new(id);
    if as_path.join("session.json").exists() {
        let meta = SessionMeta::load(as_path)
            .ok_or_else(|| format!("{id}/session.json is not readable"))?;
        return Ok((as_path.to_path_buf(), meta));
    }
    let matching: Vec<_> = all_sessions(root)
        .into_iter()
        .filter(|(_, m)| m.id.starts_with(id))
        .collect();
    let count = matching.len();
    match count {
        1 => Ok(matching.into_iter().next().expect("one")),
        0 => Err(format!(
            "no session {id:?} in {} nor among the live sessions Jupyter's runtime directory lists \
             (`stepkernel sessions` shows them)",
            root.display()
        )),
        n => Err(format!(
            "{n} sessions start with {id:?}; give more of the id"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_copies_name_live_sessions_elsewhere() {
        let tmp = tempfile::tempdir().unwrap();
        let runtime = tmp.path().join("rt");
        std::fs::create_dir_all(&runtime).unwrap();
        let elsewhere = tmp
            .path()
            .join("other/.stepkernel/sessions/20260101-000000-aaaaaa");
        std::fs::create_dir_all(&elsewhere).unwrap();
        // A live stepkernel process (liveness checks the program, not only the pid).
        use std::os::unix::process::CommandExt;
        let mut live = std::process::Command::new("sleep")
            .arg0("stepkernel")
            .arg("30")
            .spawn()
            .unwrap();
        while !std::fs::read(format!("/proc/{}/cmdline", live.id()))
            .is_ok_and(|c| c.starts_with(b"stepkernel\0"))
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        SessionMeta {
            id: "20260101-000000-aaaaaa".into(),
            pid: live.id(),
            state: "paused".into(),
            ..Default::default()
        }
        .save(&elsewhere)
        .unwrap();
        let copy = serde_json::json!({SESSION_DIR_KEY: elsewhere, "key": "k"});
        std::fs::write(
            runtime.join("kernel-stepkernel-20260101-000000-aaaaaa.json"),
            copy.to_string(),
        )
        .unwrap();
        std::fs::write(runtime.join("kernel-stepkernel-junk.json"), "{not json").unwrap();
        let here = tmp.path().join("here/.stepkernel/sessions");
        let found = all_sessions_with(&here, &runtime);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, elsewhere);
        assert_eq!(found[0].1.state, "paused");
        let _ = live.kill();
        let _ = live.wait();
    }
}
