//! `stepkernel console [SESSION]`: `jupyter console --existing` on a session,
//! from any directory, with the Jupyter client of the session's environment.
//!
//! The console replaces this process (exec), so the terminal belongs to it
//! and nothing is left behind; it runs under a small launcher whose Ctrl-C
//! sends `interrupt_request` (jupyter_console alone refuses to interrupt a
//! kernel it did not start).

use crate::sessions_cmd::root;
use anyhow::{bail, Context};
use clap::Args;
use session::discovery;
use session::session_dir::SessionMeta;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The launcher run with `python -c` (see its docstring).
const LAUNCHER: &str = include_str!("console_launcher.py");

/// Arguments of `stepkernel console`.
#[derive(Args)]
pub struct ConsoleArgs {
    /// Session id (or prefix, or directory); default: the latest live one.
    pub session: Option<String>,
    /// The pytest-xdist worker (gw0, gw1, ...) of a `stepkernel run -n N` to attach to
    /// (default: the first paused one, when the run is paused in a worker).
    #[arg(long, value_name = "GW_ID")]
    pub worker: Option<String>,
    /// A remote xdist worker: attach through an SSH tunnel to this host's
    /// loopback (jupyter_client's `--ssh`; default for an `--tx ssh=` worker: its host).
    #[arg(long, value_name = "[USER@]HOST")]
    pub ssh: Option<String>,
    /// Extra arguments for jupyter console.
    #[arg(last = true)]
    pub extra: Vec<String>,
}

fn live(meta: &SessionMeta) -> bool {
    // A finished run that stays up for its clients can still be attached to.
    meta.attachable()
}

/// Whether `python` runs and can import jupyter_console.
fn has_jupyter_console(python: &Path) -> bool {
    std::process::Command::new(python)
        .args([
            "-c",
            "import importlib.util, sys; sys.exit(importlib.util.find_spec('jupyter_console') is None)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The interpreter of the `jupyter-console` script on PATH (its `#!` line).
fn path_console_python() -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    let script = std::env::split_paths(&paths)
        .map(|dir| dir.join("jupyter-console"))
        .find(|p| p.is_file())?;
    let text = std::fs::read(&script).ok()?;
    let first = text.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?.strip_prefix("#!")?.trim();
    let program = line.split_whitespace().next()?;
    (Path::new(program).is_absolute() && !program.ends_with("/env")).then(|| PathBuf::from(program))
}

/// Runs `jupyter console --existing` on a session; returns only on failure.
pub fn console(args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let root = root()?;
    session::session_dir::remove_dead_copies(&session::session_dir::list(&root));
    let (dir, meta) = match args.session.as_deref() {
        Some(id) => discovery::find(&root, id).map_err(anyhow::Error::msg)?,
        None => discovery::preferred(&root, live).context(
            "no live stepkernel session here or in Jupyter's runtime directory \
             (start one with `stepkernel run`)",
        )?,
    };
    if !live(&meta) {
        bail!(
            "session {} is not running ({})",
            meta.id,
            meta.shown_state()
        );
    }
    let session_id = meta.id.clone();
    let mut worker_id = None;
    let (dir, meta) = match session::xdist::attach_target(&dir, &meta, args.worker.as_deref())
        .map_err(anyhow::Error::msg)?
    {
        Some((worker, worker_meta)) => {
            if !worker_meta.alive() || worker_meta.state == "finished" {
                bail!(
                    "xdist worker {worker} of session {} is not running ({})",
                    meta.id,
                    worker_meta.shown_state()
                );
            }
            eprintln!("stepkernel: xdist worker {worker} of session {}", meta.id);
            let worker_dir = session::xdist::worker_dir(&dir, &worker);
            worker_id = Some(worker);
            (worker_dir, worker_meta)
        }
        None => (dir, meta),
    };
    let tunnel = match (&meta.remote, args.ssh) {
        (Some(_), Some(host)) => Some(host),
        (Some(remote), None) if remote.ssh => Some(remote.host.clone()),
        (Some(remote), None) => bail!(
            "xdist worker {worker} of session {session_id} runs on {host} (a --tx socket= worker), its kernel \
             on that host's loopback: attach there with\n    jupyter console --existing {}\nor, if {host} runs \
             sshd, from here through an SSH tunnel:\n    {} console {session_id} --worker {worker} --ssh [USER@]{host}\n\
             or with jupyter_client's own tunnel:\n    {}",
            remote.connection_file,
            session::run::self_command(),
            session::attach::jupyter_ssh_line(
                &dir.join("connection.json"),
                &format!("[USER@]{}", remote.host)
            ),
            worker = worker_id.as_deref().unwrap_or("gwN"),
            host = remote.host,
        ),
        (None, Some(_)) => bail!(
            "--ssh is for a remote xdist worker; session {} runs on this machine \
             (jupyter console's own options go after --)",
            meta.id
        ),
        (None, None) => None,
    };
    // A relative `--python .venv/bin/python` is relative to where the run started.
    let mut candidates: Vec<PathBuf> = meta
        .python
        .iter()
        .map(PathBuf::from)
        .map(|p| {
            if p.is_relative() && p.components().count() > 1 {
                Path::new(&meta.rootdir).join(p)
            } else {
                p
            }
        })
        .collect();
    candidates.extend(path_console_python());
    let Some(python) = candidates.iter().find(|p| has_jupyter_console(p)) else {
        let python = meta.python.as_deref().unwrap_or("python3");
        bail!(
            "jupyter_console is not installed in the session's environment ({python}) nor on PATH; \
             install it with: {python} -m pip install jupyter_console"
        );
    };
    let state = match &meta.paused_at {
        Some(at) if meta.state == "paused" => format!("paused at {at}"),
        _ => meta.shown_state(),
    };
    eprintln!(
        "stepkernel: attaching to session {} ({state}; {})",
        meta.id,
        dir.display()
    );
    let connection_file = match (&tunnel, &meta.remote) {
        (Some(host), Some(remote)) => {
            eprintln!(
                "stepkernel: through an SSH tunnel to {host}, where its kernel runs (pid {})",
                remote.pid
            );
            crate::ssh_tunnel::tunnel(Path::new(&meta.connection_file), host)?
        }
        _ => PathBuf::from(&meta.connection_file),
    };
    let err = std::process::Command::new(python)
        .arg("-c")
        .arg(LAUNCHER)
        .arg("--existing")
        .arg(&connection_file)
        // The paused test's worker answers is_complete_request; the default 1 s
        // is short on a busy machine, and one miss turns multi-line cells off.
        .arg("--ZMQTerminalInteractiveShell.kernel_is_complete_timeout=10")
        .args(&args.extra)
        .exec();
    Err(err).with_context(|| format!("cannot run jupyter console with {}", python.display()))
}
