//! pytest-xdist workers under `stepkernel run -n N`.
//!
//! The run's Python worker is xdist's controller; each xdist worker's
//! interpreter is started by execnet through `stepkernel xdist-worker`,
//! which serves it as a kernel of its own ([`worker_kernel`]): that worker's
//! tests are stepped, a failing step pauses it alone, and clients attach at
//! `<session>/workers/<gw-id>/connection.json`. Its kernel journals edits in
//! the session's journal and relays its events, pauses and edits to the
//! session over `<session>/workers.sock` ([`relay`]), so events.jsonl,
//! report.json, the terminal and the exit code cover the whole run.
//! execnet's channel (the worker's stdin and stdout) is handed to the
//! interpreter untouched; the kernel writes nothing there.
//!
//! A remote worker (`--tx socket=`, `--tx ssh=`) has its kernel and files
//! on its own host and reaches `workers.sock` through a TCP relay; the
//! session keeps its connection info and state and journals its edits
//! ([`remote_worker`]).
//!
//! Two workers' different edits of the same lines are a conflict
//! ([`conflicts()`]), reported by every export.

mod conflicts;
pub mod relay;
pub mod relay_stream;
pub mod remote_worker;
pub mod worker_kernel;

pub use conflicts::{check_conflicts, conflicts};
pub use relay::WorkerRelay;
pub use worker_kernel::{serve_worker, RemoteRelay, WorkerOptions};

use crate::session_dir::SessionMeta;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The session's socket the workers' kernels relay to.
pub const RELAY_SOCKET: &str = "workers.sock";
/// The session's subdirectory holding one directory per worker.
pub const WORKERS_DIR: &str = "workers";

/// The directory of worker `worker` (`gw0`, ...) of a session.
pub fn worker_dir(session_dir: &Path, worker: &str) -> PathBuf {
    session_dir.join(WORKERS_DIR).join(worker)
}

/// The workers of a session with their `session.json` (sorted by id).
pub fn workers(session_dir: &Path) -> Vec<(String, PathBuf, SessionMeta)> {
    let Ok(entries) = std::fs::read_dir(session_dir.join(WORKERS_DIR)) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf, SessionMeta)> = entries
        .flatten()
        .filter_map(|entry| {
            let dir = entry.path();
            let meta = SessionMeta::load(&dir)?;
            Some((entry.file_name().to_string_lossy().to_string(), dir, meta))
        })
        .collect();
    found.sort_by_key(|(id, _, _)| (id.len(), id.clone()));
    found
}

/// The controller's `summary` under xdist: its engine ran no test, the
/// workers did; their outcomes (relayed) are the run's counts.
pub fn count_workers_tests(summary: &mut Value, counts: &std::collections::BTreeMap<String, u64>) {
    let mut total = 0;
    for (outcome, n) in counts {
        summary[outcome.as_str()] = json!(n);
        total += n;
    }
    summary["total"] = json!(total);
    let fixed = counts.get("fixed").copied().unwrap_or(0);
    if fixed > 0 && summary.get("exit_code").and_then(Value::as_i64) == Some(0) {
        summary["exit_code"] = json!(1);
    }
}

/// The worker a client of session `dir` attaches to: `worker` if given
/// (an error naming the workers there are when it is not one of them), else
/// the first paused worker when the session is paused in one; None: the
/// session's own kernel.
pub fn attach_target(
    dir: &Path,
    meta: &SessionMeta,
    worker: Option<&str>,
) -> Result<Option<(String, SessionMeta)>, String> {
    let all = workers(dir);
    if let Some(wanted) = worker {
        return match all.into_iter().find(|(id, _, _)| id == wanted) {
            Some((id, _, meta)) => Ok(Some((id, meta))),
            None => {
                let names: Vec<String> = workers(dir).into_iter().map(|(id, _, _)| id).collect();
                Err(if names.is_empty() {
                    format!(
                        "session {} has no xdist workers (it was not run with -n)",
                        meta.id
                    )
                } else {
                    format!(
                        "session {} has no xdist worker {wanted}; its workers: {}",
                        meta.id,
                        names.join(", ")
                    )
                })
            }
        };
    }
    if meta.state != "paused" {
        return Ok(None);
    }
    Ok(all
        .into_iter()
        .find(|(_, _, m)| m.state == "paused" && m.alive())
        .map(|(id, _, m)| (id, m)))
}

#[cfg(test)]
mod tests;
