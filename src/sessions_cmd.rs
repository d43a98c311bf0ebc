//! `stepkernel sessions`, `patch`, `console`: working with past and live sessions.

use anyhow::{bail, Context};
use clap::Args;
use session::session_dir;
use session::session_dir::SessionMeta;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

/// Arguments of `stepkernel sessions`.
#[derive(Args)]
pub struct SessionsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Show only sessions whose process is alive.
    #[arg(long)]
    pub live: bool,
}

/// Arguments of `stepkernel patch`.
#[derive(Args)]
pub struct PatchArgs {
    /// Session id (or prefix, or directory); default: the latest.
    pub session: Option<String>,
    /// Output file (default: in the session directory).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Commit message (first line is the subject).
    #[arg(short, long)]
    pub message: Option<String>,
}

/// Arguments of `stepkernel console`.
#[derive(Args)]
pub struct ConsoleArgs {
    /// Session id (or prefix); default: the latest live one.
    pub session: Option<String>,
    /// Extra arguments for jupyter console.
    #[arg(last = true)]
    pub extra: Vec<String>,
}

fn root() -> anyhow::Result<PathBuf> {
    Ok(session_dir::sessions_root(
        &std::env::current_dir().context("cannot read the current directory")?,
    ))
}

/// When a session started: its start stamp, then its connection file's mtime.
///
/// Ids and start stamps have one-second resolution, so two runs started in the
/// same second would otherwise be ordered by the random part of their ids; the
/// connection file is written once, at start, with a finer timestamp.
fn start_key(dir: &Path, meta: &SessionMeta) -> (String, SystemTime) {
    let written = std::fs::metadata(dir.join("connection.json"))
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    (meta.started.clone(), written)
}

/// The session named by `id` (id, id prefix or directory), else the one started last.
fn find_session(root: &Path, id: Option<&str>) -> anyhow::Result<(PathBuf, SessionMeta)> {
    if id.is_some() {
        return session_dir::find(root, id).map_err(anyhow::Error::msg);
    }
    latest(session_dir::list(root), |_| true).ok_or_else(|| {
        anyhow::anyhow!(
            "no stepkernel sessions in {} (start one with `stepkernel run`)",
            root.display()
        )
    })
}

/// The session started last among those `keep` accepts.
fn latest(
    sessions: Vec<(PathBuf, SessionMeta)>,
    keep: impl Fn(&SessionMeta) -> bool,
) -> Option<(PathBuf, SessionMeta)> {
    sessions
        .into_iter()
        .filter(|(_, m)| keep(m))
        .max_by_key(|(dir, m)| start_key(dir, m))
}

/// Lists sessions.
pub fn sessions(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let listed = session_dir::list(&root()?);
    session_dir::remove_dead_copies(&listed);
    let mut all: Vec<_> = listed
        .into_iter()
        .filter(|(_, m)| !args.live || (m.alive() && m.state != "finished"))
        .collect();
    all.sort_by_cached_key(|(dir, m)| start_key(dir, m));
    if args.json {
        let list: Vec<_> = all.iter().map(|(d, m)| m.summary(d)).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!("no sessions (start one with `stepkernel run`)");
    }
    for (_, m) in &all {
        let state = match &m.paused_at {
            Some(at) if m.state == "paused" && !m.dead() => format!("paused at {at}"),
            _ => m.shown_state(),
        };
        println!(
            "{}  pid {:<7} {:<40} tests {:<4} edits {:<3} {}",
            m.id, m.pid, state, m.tests, m.edits, m.connection_file
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Exports a session's edits.
pub fn patch(args: PatchArgs) -> anyhow::Result<ExitCode> {
    let (dir, meta) = find_session(&root()?, args.session.as_deref())?;
    let (edits, note) = session::patches::read_edits(&dir)?;
    if let Some(note) = note {
        eprintln!("stepkernel: {note}");
    }
    let written = session::patches::write_patch(
        std::path::Path::new(&meta.patch_root),
        &edits,
        meta.base_revision.clone(),
        args.message,
        args.output.as_deref(),
        &dir,
    )?;
    println!("{}", written.path.display());
    for note in written.notes {
        eprintln!("stepkernel: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `jupyter console --existing` on a session.
pub fn console(args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let root = root()?;
    session_dir::remove_dead_copies(&session_dir::list(&root));
    let (_, meta) = match args.session.as_deref() {
        Some(id) => session_dir::find(&root, Some(id)).map_err(anyhow::Error::msg)?,
        None => latest(session_dir::list(&root), |m| {
            m.alive() && m.state != "finished"
        })
        .context("no live session here (start one with `stepkernel run`)")?,
    };
    if !meta.alive() || meta.state == "finished" {
        bail!(
            "session {} is not running ({})",
            meta.id,
            meta.shown_state()
        );
    }
    let status = std::process::Command::new("jupyter")
        .arg("console")
        .arg("--existing")
        .arg(&meta.connection_file)
        .args(&args.extra)
        .status()
        .context("cannot run `jupyter console` (install it with: pip install jupyter_console)")?;
    Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
}
