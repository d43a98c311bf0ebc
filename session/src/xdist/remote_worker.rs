//! The session's view of a remote xdist worker (`--tx socket=`, `--tx ssh=`):
//! what the run's controller set up for it, its connection file kept here,
//! its state, and how its files map to this project's.
//!
//! The controller (`xdist_remote.py`) writes `<session>/workers/<gw>/remote.json`
//! before the worker starts: its host, whether it is reached over SSH, and
//! which of its directories are which of this machine's (see [`PathMap`]).
//! When the worker's kernel connects to the relay it sends its connection
//! info; the relay keeps it at `workers/<gw>/connection.json` and keeps
//! `workers/<gw>/session.json` (with [`RemoteSide`]) up to date.

use super::conflicts::note_edit;
use super::worker_dir;
use crate::attach::jupyter_ssh_line;
use crate::session_dir::{RemoteSide, SessionMeta};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Component, Path, PathBuf};

/// What the controller wrote for a remote worker before it started.
pub const REMOTE_FILE: &str = "remote.json";
/// The key marking a connection file kept here for a kernel on another host.
pub const REMOTE_HOST_KEY: &str = "stepkernel_remote_host";

/// Directories on the worker's host and the directories of this machine they are copies of.
///
/// The rule, as xdist lays the files out: each rsync root ROOT (`--rsyncdir`,
/// `rsyncdirs`, and pytest's own packages, which xdist always sends) is
/// copied to `<worker's directory>/<ROOT's name>`, so a file under that copy
/// is the file under ROOT here. When the user named no rsync directory the
/// worker runs in a tree of its own host's (its `//chdir=`, or the socket
/// server's directory), taken to be a checkout of the directory `stepkernel
/// run` ran from here. The deepest directory that holds the file wins. The
/// lines a worker edits must be the same here, or the edit is refused (see
/// `RunHooks::remote_worker_edit`), as is a file no directory maps.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PathMap {
    /// `[remote directory, local directory]` pairs.
    pub paths: Vec<(PathBuf, PathBuf)>,
}

/// What `remote.json` holds.
#[derive(Debug, Clone, Deserialize)]
pub struct RemoteSetup {
    /// The host as `--tx` names it.
    pub host: String,
    /// `--tx ssh=`.
    #[serde(default)]
    pub ssh: bool,
    /// How its files map to this machine's.
    #[serde(flatten)]
    pub map: PathMap,
}

impl RemoteSetup {
    /// Reads `workers/<gw>/remote.json` (None: the controller set no remote worker up by that id).
    pub fn load(session_dir: &Path, worker: &str) -> Option<RemoteSetup> {
        let text = std::fs::read(worker_dir(session_dir, worker).join(REMOTE_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// `path` with `.` and `..` resolved by name (the file is on another host:
/// nothing here can be asked); None when `..` climbs above the root.
fn lexical(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            other => out.push(other),
        }
    }
    Some(out)
}

impl PathMap {
    /// This machine's copy of `remote` (an absolute path on the worker's host).
    pub fn local(&self, remote: &Path, host: &str) -> Result<PathBuf, String> {
        let file = lexical(remote).filter(|p| p.is_absolute()).ok_or_else(|| {
            format!(
                "{} on {host} is not a plain absolute path",
                remote.display()
            )
        })?;
        let mut best: Option<(&Path, &Path)> = None;
        for (there, here) in &self.paths {
            if file.starts_with(there)
                && best.is_none_or(|(b, _)| there.components().count() > b.components().count())
            {
                best = Some((there, here));
            }
        }
        let Some((there, here)) = best else {
            let dirs: Vec<String> = self
                .paths
                .iter()
                .map(|(there, here)| format!("{} (= {} here)", there.display(), here.display()))
                .collect();
            return Err(format!(
                "{} on {host} is not under a directory that maps to this machine's ({}), \
                 so its edit cannot go in this session's patch",
                file.display(),
                if dirs.is_empty() {
                    "none".to_string()
                } else {
                    dirs.join(", ")
                }
            ));
        };
        let rest = file.strip_prefix(there).expect("starts with it");
        Ok(here.join(rest))
    }
}

/// A remote worker's kernel said hello: keep its connection file here (0600,
/// not copied to Jupyter's directories: its ports are on its host's loopback)
/// and its `session.json`. None when the controller set no such worker up.
pub fn register(
    session_dir: &Path,
    session: &SessionMeta,
    worker: &str,
    hello: &Value,
) -> Option<RemoteSetup> {
    let setup = RemoteSetup::load(session_dir, worker)?;
    let dir = worker_dir(session_dir, worker);
    let mut info = hello.get("connection").cloned().filter(Value::is_object)?;
    info[REMOTE_HOST_KEY] = Value::from(setup.host.clone());
    let file = dir.join("connection.json");
    let bytes = serde_json::to_vec_pretty(&info).expect("serializes");
    kernel::private_files::write_atomic(&file, &bytes, false).ok()?;
    let text = |k: &str| {
        hello
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let meta = SessionMeta {
        id: format!("{}-{worker}", session.id),
        // This session's process keeps the file: the worker is live while it is.
        pid: std::process::id(),
        state: "running".into(),
        rootdir: session.rootdir.clone(),
        patch_root: session.patch_root.clone(),
        base_revision: session.base_revision.clone(),
        // The client runs here: this session's interpreter has its Jupyter.
        python: session.python.clone(),
        connection_file: file.display().to_string(),
        started: patchgen::now_rfc3339(),
        remote: Some(RemoteSide {
            host: setup.host.clone(),
            ssh: setup.ssh,
            pid: hello.get("pid").and_then(Value::as_u64).unwrap_or(0) as u32,
            connection_file: text("connection_file"),
        }),
        ..Default::default()
    };
    meta.save(&dir).ok()?;
    Some(setup)
}

/// Updates a remote worker's `session.json` here.
pub fn update(session_dir: &Path, worker: &str, change: impl FnOnce(&mut SessionMeta)) {
    let dir = worker_dir(session_dir, worker);
    if let Some(mut meta) = SessionMeta::load(&dir) {
        change(&mut meta);
        let _ = meta.save(&dir);
    }
}

/// A remote worker's edit, journaled on its host: into this session's
/// journal too, its file mapped to this machine's. The answer its client sees.
pub fn journal(
    hooks: &crate::hooks::RunHooks,
    session_dir: &Path,
    worker: &str,
    setup: &RemoteSetup,
    message: &Value,
) -> Result<String, String> {
    let edit: patchgen::Edit = serde_json::from_value(message["edit"].clone())
        .map_err(|e| format!("a bad edit from worker {worker}: {e}"))?;
    let remote = message
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("an edit from worker {worker} names no file"))?;
    let local = setup.map.local(Path::new(remote), &setup.host)?;
    let journaled = hooks.remote_worker_edit(edit, &local)?;
    note_edit(&worker_dir(session_dir, worker), &journaled);
    update(session_dir, worker, |meta| meta.edits += 1);
    Ok(format!(
        "journaled in the session's journal for {} lines {}-{}, on the machine that runs `stepkernel run`",
        journaled.file, journaled.start_line, journaled.end_line
    ))
}

/// How to attach to a remote worker, as the session's terminal prints it.
pub fn attach_lines(session_dir: &Path, session_id: &str, worker: &str) -> Vec<String> {
    let Some(remote) = SessionMeta::load(&worker_dir(session_dir, worker)).and_then(|m| m.remote)
    else {
        return Vec::new();
    };
    let host = &remote.host;
    let me = crate::run::self_command();
    let kept = worker_dir(session_dir, worker).join("connection.json");
    let on_host = format!(
        "on {host}: jupyter console --existing {}",
        remote.connection_file
    );
    if remote.ssh {
        let mut lines = vec![format!(
            "{me} console {session_id} --worker {worker}      (through an SSH tunnel to {host}'s loopback)"
        )];
        // An xdist ssh spec may hold ssh options ("-p 2222 me@host"); jupyter_client takes a destination.
        if !host.contains(char::is_whitespace) {
            lines.push(format!(
                "{}      (the same with jupyter_client's own tunnel)",
                jupyter_ssh_line(&kept, host)
            ));
        }
        lines.push(on_host);
        return lines;
    }
    vec![
        on_host,
        format!(
            "from here, if {host} runs sshd: {me} console {session_id} --worker {worker} --ssh [USER@]{host}      \
             (through an SSH tunnel to its loopback)"
        ),
        format!(
            "    or: {}      (jupyter_client's own tunnel)",
            jupyter_ssh_line(&kept, &format!("[USER@]{host}"))
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hooks(session: &Path, project: &Path) -> crate::hooks::RunHooks {
        let ctx = crate::hooks::SessionContext::for_tests(session, project);
        crate::hooks::RunHooks::new(ctx, Default::default(), true)
    }

    fn edit_of(line: &str) -> Value {
        json!({
            "file": "test_x.py", "start_line": 2, "end_line": 2,
            "original_sha256": patchgen::sha256_hex(line), "new_text": "    assert v == 1\n",
            "indent": "    ", "test_id": "proj/test_x.py::test_x", "step_index": 1,
            "step_name": "assert v == 2", "time": "2026-12-01T00:00:00Z",
        })
    }

    #[test]
    fn a_remote_edit_goes_in_the_sessions_journal_under_this_projects_name_or_is_refused() {
        let session = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        std::fs::write(
            project.path().join("test_x.py"),
            "def test_x():\n    assert v == 2\n",
        )
        .unwrap();
        let dir = worker_dir(session.path(), "gw0");
        std::fs::create_dir_all(&dir).unwrap();
        let setup = RemoteSetup {
            host: "root@h".into(),
            ssh: true,
            map: map(&[("/srv/proj", project.path().to_str().unwrap())]),
        };
        let hooks = hooks(session.path(), project.path());
        let message = json!({"edit": edit_of("    assert v == 2"), "path": "/srv/proj/test_x.py"});
        let answer = journal(&hooks, session.path(), "gw0", &setup, &message).unwrap();
        assert!(answer.contains("for test_x.py lines 2-2"), "{answer}");
        let (edits, _) = crate::patches::read_edits(session.path()).unwrap();
        assert_eq!(edits.len(), 1);
        assert_eq!(edits[0].file, "test_x.py");
        let noted = std::fs::read_to_string(dir.join(super::super::conflicts::EDITS_FILE)).unwrap();
        assert!(noted.contains("\"file\":\"test_x.py\""), "{noted}");
        // The worker ran other lines than this machine's copy has: refused, nothing journaled.
        let stale = json!({"edit": edit_of("    assert v == 3"), "path": "/srv/proj/test_x.py"});
        let err = journal(&hooks, session.path(), "gw0", &setup, &stale).unwrap_err();
        assert!(
            err.contains("are not the lines the worker ran on its host"),
            "{err}"
        );
        // A file outside what maps here: refused with the rule's directories.
        let outside = json!({"edit": edit_of("    assert v == 2"), "path": "/srv/other/test_x.py"});
        let err = journal(&hooks, session.path(), "gw0", &setup, &outside).unwrap_err();
        assert!(
            err.contains("is not under a directory that maps to this machine's"),
            "{err}"
        );
        assert_eq!(
            crate::patches::read_edits(session.path()).unwrap().0.len(),
            1
        );
    }

    fn printed(host: &str, ssh: bool) -> Vec<String> {
        let session = tempfile::tempdir().unwrap();
        let dir = worker_dir(session.path(), "gw0");
        std::fs::create_dir_all(&dir).unwrap();
        let meta = SessionMeta {
            remote: Some(crate::session_dir::RemoteSide {
                host: host.into(),
                ssh,
                pid: 7,
                connection_file: "/srv/.stepkernel/remote/S/workers/gw0/connection.json".into(),
            }),
            ..Default::default()
        };
        meta.save(&dir).unwrap();
        let lines = attach_lines(session.path(), "S", "gw0");
        let kept = dir.join("connection.json").display().to_string();
        lines
            .into_iter()
            .map(|l| l.replace(&kept, "KEPT"))
            .collect()
    }

    #[test]
    fn the_printed_routes_include_jupyter_clients_own_tunnel_with_sighup_ignored() {
        let ssh = printed("me@h", true);
        assert_eq!(ssh.len(), 3, "{ssh:?}");
        assert!(ssh[0].contains(" console S --worker gw0 "), "{ssh:?}");
        assert!(
            ssh[1]
                .starts_with("env --ignore-signal=HUP jupyter console --existing KEPT --ssh me@h "),
            "{ssh:?}"
        );
        assert!(ssh[2].starts_with("on me@h: jupyter console --existing /srv/"));
        // ssh options in the spec: no destination jupyter_client takes.
        let options = printed("-p 2222 me@h", true);
        assert_eq!(options.len(), 2, "{options:?}");
        assert!(!options.iter().any(|l| l.contains("--ignore-signal")));
        let socket = printed("10.0.0.2", false);
        assert_eq!(socket.len(), 3, "{socket:?}");
        assert!(socket[2].contains(
            "env --ignore-signal=HUP jupyter console --existing KEPT --ssh [USER@]10.0.0.2 "
        ));
    }

    fn map(pairs: &[(&str, &str)]) -> PathMap {
        PathMap {
            paths: pairs
                .iter()
                .map(|(a, b)| (PathBuf::from(a), PathBuf::from(b)))
                .collect(),
        }
    }

    #[test]
    fn a_file_under_an_rsynced_copy_is_the_file_under_its_root_here() {
        let m = map(&[
            ("/srv/cache/proj", "/home/me/proj"),
            ("/srv/cache/lib", "/opt/lib"),
        ]);
        assert_eq!(
            m.local(Path::new("/srv/cache/proj/tests/test_x.py"), "h")
                .unwrap(),
            PathBuf::from("/home/me/proj/tests/test_x.py")
        );
        assert_eq!(
            m.local(Path::new("/srv/cache/proj/./a/../b.py"), "h")
                .unwrap(),
            PathBuf::from("/home/me/proj/b.py")
        );
    }

    #[test]
    fn the_deepest_remote_directory_wins() {
        let m = map(&[
            ("/srv", "/here/checkout"),
            ("/srv/vendored", "/here/vendor"),
        ]);
        assert_eq!(
            m.local(Path::new("/srv/vendored/x.py"), "h").unwrap(),
            PathBuf::from("/here/vendor/x.py")
        );
    }

    #[test]
    fn a_file_elsewhere_on_the_host_is_refused_with_the_directories_that_map() {
        let m = map(&[("/srv/cache/proj", "/home/me/proj")]);
        let err = m
            .local(Path::new("/srv/cache/other/x.py"), "root@h")
            .unwrap_err();
        assert!(
            err.contains("/srv/cache/other/x.py on root@h is not under"),
            "{err}"
        );
        assert!(
            err.contains("/srv/cache/proj (= /home/me/proj here)"),
            "{err}"
        );
        // `..` out of the copy does not count as in it.
        assert!(m.local(Path::new("/srv/cache/proj/../x.py"), "h").is_err());
        assert!(m.local(Path::new("relative.py"), "h").is_err());
        // A sibling whose name only starts like the copy's is not in it.
        assert!(m.local(Path::new("/srv/cache/project/x.py"), "h").is_err());
    }
}
