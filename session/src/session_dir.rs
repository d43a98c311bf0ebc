//! Session directories: `.stepkernel/sessions/<id>/` and their `session.json`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What `session.json` records about a session.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SessionMeta {
    /// Session id (also the directory name).
    pub id: String,
    /// Process id of `stepkernel run`.
    pub pid: u32,
    /// `running`, `paused`, `finished`.
    pub state: String,
    /// Where the run is paused: `test::phase step N`.
    #[serde(default)]
    pub paused_at: Option<String>,
    /// The project directory tests ran from.
    pub rootdir: String,
    /// Root against which edits are journaled (git work tree or rootdir).
    pub patch_root: String,
    /// The commit the session started from.
    #[serde(default)]
    pub base_revision: Option<String>,
    /// The test selection.
    pub args: Vec<String>,
    /// The interpreter the tests run in.
    #[serde(default)]
    pub python: Option<String>,
    /// Connection file in the session directory.
    pub connection_file: String,
    /// Copies of the connection file elsewhere (runtime dir, external kernels).
    #[serde(default)]
    pub connection_copies: Vec<String>,
    /// Start time (RFC 3339).
    pub started: String,
    /// Number of tests finished.
    #[serde(default)]
    pub tests: u64,
    /// Number of edits journaled.
    #[serde(default)]
    pub edits: u64,
    /// Exit code once finished.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The run is finished and the session stays up for its clients (`%end` ends it).
    #[serde(default)]
    pub lingering: bool,
    /// A remote xdist worker (`--tx socket=`, `--tx ssh=`): where its kernel
    /// lives. Its `session.json` here is kept by the session's process (`pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteSide>,
}

/// Where a remote xdist worker's kernel lives.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct RemoteSide {
    /// The host as the run's `--tx` names it (`user@host`, or the socket's address).
    pub host: String,
    /// Reached over SSH (`--tx ssh=`), so jupyter_client's `--ssh HOST` tunnels to it.
    pub ssh: bool,
    /// The kernel's process id on that host.
    pub pid: u32,
    /// Its connection file on that host.
    pub connection_file: String,
}

/// The default parent of session directories for a project.
pub fn sessions_root(rootdir: &Path) -> PathBuf {
    rootdir.join(".stepkernel").join("sessions")
}

/// A new session id: sortable by time, unique.
pub fn new_id() -> String {
    let now = patchgen::now_rfc3339();
    let stamp: String = now
        .chars()
        .filter(|c| c.is_ascii_digit())
        .take(14)
        .collect();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}-{}", &stamp[..8], &stamp[8..], &random[..6])
}

impl SessionMeta {
    /// Writes `session.json` atomically, mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), kernel::private_files::PrivateError> {
        let bytes = serde_json::to_vec_pretty(self).expect("serializes");
        kernel::private_files::write_atomic(&dir.join("session.json"), &bytes, false)
    }

    /// Reads `dir/session.json`.
    pub fn load(dir: &Path) -> Option<SessionMeta> {
        let text = std::fs::read(dir.join("session.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// True when the session's process is still alive (a pid reused by
    /// another program does not count).
    pub fn alive(&self) -> bool {
        crate::attach::stepkernel_alive(self.pid)
    }

    /// True when the session's process died before it finished (killed, crashed).
    pub fn dead(&self) -> bool {
        self.state != "finished" && !self.alive()
    }

    /// A client can attach: the process is alive and its run goes on, or it
    /// is finished but lingering for its clients.
    pub fn attachable(&self) -> bool {
        self.alive() && (self.state != "finished" || self.lingering)
    }

    /// The state to show: a dead process cannot be running or paused.
    pub fn shown_state(&self) -> String {
        if self.state != "finished" && !self.alive() {
            format!("died ({})", self.state)
        } else {
            self.state.clone()
        }
    }

    /// A JSON summary for `stepkernel sessions --json`.
    pub fn summary(&self, dir: &Path) -> Value {
        let mut summary = serde_json::json!({
            "id": self.id, "pid": self.pid, "state": self.shown_state(),
            "paused_at": self.paused_at, "tests": self.tests, "edits": self.edits,
            "connection_file": self.connection_file, "dir": dir.display().to_string(),
            "started": self.started, "exit_code": self.exit_code,
            "lingering": self.lingering && self.alive(),
        });
        if let Some(remote) = &self.remote {
            summary["remote"] = serde_json::json!(remote);
        }
        summary
    }
}

/// Whether a process exists.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    pid > 0 && unsafe { libc::kill(pid as i32, 0) } == 0
}

/// Removes the connection-file copies (Jupyter's runtime and external kernels
/// directories) of sessions whose process died, so clients stop listing a
/// kernel that is gone. Only a copy that still names its session is removed.
pub fn remove_dead_copies(sessions: &[(PathBuf, SessionMeta)]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for (_, meta) in sessions.iter().filter(|(_, m)| m.dead()) {
        for copy in &meta.connection_copies {
            let names_it = std::fs::read(copy)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| {
                    v.get("stepkernel_session").and_then(Value::as_str) == Some(&meta.id)
                });
            if names_it && std::fs::remove_file(copy).is_ok() {
                removed.push(PathBuf::from(copy));
            }
        }
    }
    removed
}

/// All sessions under `root`, oldest first.
pub fn list(root: &Path) -> Vec<(PathBuf, SessionMeta)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            SessionMeta::load(&dir).map(|m| (dir, m))
        })
        .collect();
    found.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    found
}

/// Finds a session by id (or unique id prefix), or the latest when `id` is None.
pub fn find(root: &Path, id: Option<&str>) -> Result<(PathBuf, SessionMeta), String> {
    if let Some(id) = id {
        let as_path = Path::new(id);
        if as_path.join("session.json").exists() {
            let meta = SessionMeta::load(as_path)
                .ok_or_else(|| format!("{id}/session.json is not readable"))?;
            return Ok((as_path.to_path_buf(), meta));
        }
    }
    let all = list(root);
    if all.is_empty() {
        return Err(format!(
            "no stepkernel sessions in {} (start one with `stepkernel run`)",
            root.display()
        ));
    }
    match id {
        None => Ok(all.into_iter().next_back().expect("non-empty")),
        Some(id) => {
            let matching: Vec<_> = all
                .into_iter()
                .filter(|(_, m)| m.id.starts_with(id))
                .collect();
            match matching.len() {
                1 => Ok(matching.into_iter().next().expect("one")),
                0 => Err(format!("no session {id:?} in {}", root.display())),
                n => Err(format!(
                    "{n} sessions start with {id:?}; give more of the id"
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_lookup_works() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (i, id) in ["20260101-000000-aaaaaa", "20260102-000000-bbbbbb"]
            .iter()
            .enumerate()
        {
            let d = root.join(id);
            std::fs::create_dir_all(&d).unwrap();
            SessionMeta {
                id: id.to_string(),
                pid: i as u32 + 999_999_990,
                state: "finished".into(),
                ..Default::default()
            }
            .save(&d)
            .unwrap();
        }
        assert_eq!(find(root, None).unwrap().1.id, "20260102-000000-bbbbbb");
        assert_eq!(
            find(root, Some("20260101")).unwrap().1.id,
            "20260101-000000-aaaaaa"
        );
        assert!(find(root, Some("2026")).unwrap_err().contains("2 sessions"));
        assert!(find(root, Some("x")).is_err());
        assert!(!find(root, None).unwrap().1.dead(), "finished is not dead");
        let id = new_id();
        assert_eq!(id.len(), 8 + 1 + 6 + 1 + 6, "{id}");
    }

    #[test]
    fn copies_of_dead_sessions_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("kernel-stepkernel-a.json");
        let other = dir.path().join("kernel-stepkernel-b.json");
        std::fs::write(&copy, r#"{"stepkernel_session": "a"}"#).unwrap();
        std::fs::write(&other, r#"{"stepkernel_session": "someone-else"}"#).unwrap();
        let meta = |state: &str| SessionMeta {
            id: "a".into(),
            pid: 999_999_999,
            state: state.into(),
            connection_copies: vec![copy.display().to_string(), other.display().to_string()],
            ..Default::default()
        };
        let finished = vec![(dir.path().to_path_buf(), meta("finished"))];
        assert!(remove_dead_copies(&finished).is_empty());
        let dead = vec![(dir.path().to_path_buf(), meta("paused"))];
        assert!(dead[0].1.dead());
        assert_eq!(dead[0].1.shown_state(), "died (paused)");
        assert_eq!(remove_dead_copies(&dead), vec![copy.clone()]);
        assert!(!copy.exists() && other.exists());
    }
}
