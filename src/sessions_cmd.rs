//! `stepkernel sessions`, `patch`, `console`: working with past and live sessions.

use anyhow::{bail, Context};
use clap::Args;
use session::discovery;
use session::session_dir;
use session::session_dir::SessionMeta;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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

/// This project's sessions root (from the current directory).
pub fn root() -> anyhow::Result<PathBuf> {
    Ok(session_dir::sessions_root(
        &std::env::current_dir().context("cannot read the current directory")?,
    ))
}

/// The session named by `id` (id, id prefix or directory), else the latest one with edits.
fn find_session(root: &Path, id: Option<&str>) -> anyhow::Result<(PathBuf, SessionMeta)> {
    if let Some(id) = id {
        return discovery::find(root, id).map_err(anyhow::Error::msg);
    }
    if let Some(found) = discovery::preferred(root, |m| m.edits > 0) {
        return Ok(found);
    }
    match discovery::preferred(root, |_| true) {
        None => bail!(
            "no stepkernel sessions in {} (start one with `stepkernel run`)",
            root.display()
        ),
        Some((_, newest)) => bail!(
            "no session has edits yet (the latest, {}, has none): %%edit a step or a function first",
            newest.id
        ),
    }
}

/// Lists sessions.
pub fn sessions(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let root = root()?;
    session_dir::remove_dead_copies(&session_dir::list(&root));
    let mut all: Vec<_> = discovery::all_sessions(&root)
        .into_iter()
        .filter(|(_, m)| !args.live || m.attachable())
        .collect();
    all.sort_by_cached_key(|(dir, m)| discovery::start_key(dir, m));
    if args.json {
        let list: Vec<_> = all
            .iter()
            .map(|(d, m)| {
                let mut summary = m.summary(d);
                let workers = session::xdist::workers(d);
                if !workers.is_empty() {
                    summary["workers"] = workers
                        .iter()
                        .map(|(id, dir, w)| {
                            let mut one = w.summary(dir);
                            one["worker"] = id.as_str().into();
                            one
                        })
                        .collect();
                }
                summary
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!("no sessions (start one with `stepkernel run`)");
    }
    for (dir, m) in &all {
        let state = match &m.paused_at {
            Some(at) if m.state == "paused" && !m.dead() => format!("paused at {at}"),
            _ => m.shown_state(),
        };
        println!(
            "{}  pid {:<7} {:<40} tests {:<4} edits {:<3} {}",
            m.id, m.pid, state, m.tests, m.edits, m.connection_file
        );
        for (id, _, w) in session::xdist::workers(dir) {
            let state = match &w.paused_at {
                Some(at) if w.state == "paused" && !w.dead() => format!("paused at {at}"),
                _ => w.shown_state(),
            };
            match &w.remote {
                // Its kernel runs there; the connection file here is for a tunnel (--ssh).
                Some(remote) => println!(
                    "  worker {id:<6} on {} (pid {} there) {:<40} {}",
                    remote.host, remote.pid, state, w.connection_file
                ),
                None => println!(
                    "  worker {id:<6} pid {:<7} {:<40} {}",
                    w.pid, state, w.connection_file
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Exports a session's edits.
pub fn patch(args: PatchArgs) -> anyhow::Result<ExitCode> {
    let (dir, meta) = find_session(&root()?, args.session.as_deref())?;
    if args.session.is_none() {
        eprintln!(
            "stepkernel: session {} ({} edit(s), {}; started {})",
            meta.id,
            meta.edits,
            meta.shown_state(),
            meta.started
        );
    }
    session::xdist::check_conflicts(&dir).map_err(anyhow::Error::msg)?;
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
