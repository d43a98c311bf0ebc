//! `stepkernel watch`: arguments, then the watch crate does the work; each
//! cycle is this binary's `stepkernel run` with the same options.

use crate::run_cmd::{INTERNAL_ERROR, USAGE_ERROR};
use anyhow::Context;
use clap::Args;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Arguments of `stepkernel watch`.
#[derive(Args)]
pub struct WatchArgs {
    /// Test files, directories or node ids to limit the watch to; then `-- PYTEST_ARGS`.
    #[arg(value_name = "PATH|NODEID")]
    pub targets: Vec<String>,
    /// Arguments passed to pytest (after `--`).
    #[arg(last = true, value_name = "PYTEST_ARGS")]
    pub pytest_args: Vec<String>,
    /// Which runner collects tests (recording needs pytest, which also runs unittest tests).
    #[arg(long, default_value = "auto", value_parser = ["auto", "pytest", "unittest"])]
    pub runner: String,
    /// The Python interpreter (as `stepkernel run`).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// What a failing step does: pause for a client, or fail and only record.
    #[arg(long, default_value = "pause", value_parser = ["pause", "fail"])]
    pub on_error: String,
    /// Poll the file system (network and overlay file systems).
    #[arg(long)]
    pub poll: bool,
    /// A change during a cycle: restart with both selections, queue after it, or wait (ignore it).
    #[arg(long, default_value = "restart", value_parser = ["restart", "queue", "wait"])]
    pub on_busy: String,
    /// Rerun every test every N cycles (a conservative mode).
    #[arg(long, value_name = "N")]
    pub full_every: Option<u32>,
    /// Run every test in the first cycle, not only the stale ones.
    #[arg(long)]
    pub all: bool,
    /// Plain lines and no keys even on a terminal (also when stdin or stdout is not one).
    #[arg(long)]
    pub plain: bool,
    /// Milliseconds file events are gathered before a cycle starts.
    #[arg(long, default_value = "100", value_name = "MS")]
    pub debounce: u64,
    /// The watch's directory (default: .stepkernel/watch/<id>).
    #[arg(long, value_name = "DIR")]
    pub session_dir: Option<PathBuf>,
    /// Start Python afresh for every cycle instead of forking each cycle's
    /// worker from one that imported pytest once.
    #[arg(long)]
    pub no_fork: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Runs the subcommand.
pub fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let rootdir = std::env::current_dir().context("cannot read the current directory")?;
    let rootdir = rootdir.canonicalize().unwrap_or(rootdir);
    if args.runner == "unittest" {
        eprintln!("stepkernel: error: watch records dependencies through pytest (which runs unittest tests too); use --runner pytest or auto");
        return Ok(ExitCode::from(USAGE_ERROR));
    }
    for target in &args.targets {
        let file = target.split("::").next().unwrap_or(target);
        if !rootdir.join(file).exists() {
            eprintln!("stepkernel: error: file or directory not found: {file}");
            return Ok(ExitCode::from(USAGE_ERROR));
        }
    }
    let python = match crate::python::resolve(args.python.as_deref(), &rootdir) {
        Ok(python) => python,
        Err(err) => {
            eprintln!("stepkernel: error: {err:#}");
            return Ok(ExitCode::from(USAGE_ERROR));
        }
    };
    let state = rootdir.join(".stepkernel");
    kernel::private_files::ensure_private_dir(&state).context("cannot create .stepkernel")?;
    let id = session::session_dir::new_id();
    let session_dir = match &args.session_dir {
        Some(dir) => rootdir.join(dir),
        None => {
            kernel::private_files::ensure_private_dir(&state.join("watch"))
                .context("cannot create .stepkernel/watch")?;
            state.join("watch").join(&id)
        }
    };
    let session_dir = kernel::private_files::ensure_private_dir(&session_dir)
        .with_context(|| format!("cannot create {}", session_dir.display()))?;
    let cycles_root = session::session_dir::sessions_root(&rootdir);
    kernel::private_files::ensure_private_dir(&cycles_root)
        .context("cannot create .stepkernel/sessions")?;
    let me = std::env::current_exe().context("cannot find this stepkernel binary")?;
    let run_command: Vec<OsString> = vec![
        me.into_os_string(),
        "run".into(),
        "--python".into(),
        python.clone().into_os_string(),
        "--runner".into(),
        "pytest".into(),
        "--on-error".into(),
        args.on_error.clone().into(),
        "--linger".into(),
        "0".into(),
    ];
    use std::io::IsTerminal;
    // The screen needs both: keys from stdin, the footer drawn on stdout.
    let tui = std::io::stdin().is_terminal() && std::io::stdout().is_terminal() && !args.plain;
    let options = watch::app::WatchOptions {
        rootdir: rootdir.clone(),
        targets: args.targets,
        pytest_args: args.pytest_args,
        run_command,
        python,
        session_dir,
        db_path: state.join("watch.db"),
        cycles_root,
        poll: args.poll,
        debounce: Duration::from_millis(args.debounce),
        on_busy: match args.on_busy.as_str() {
            "queue" => watch::app::OnBusy::Queue,
            "wait" => watch::app::OnBusy::Wait,
            _ => watch::app::OnBusy::Restart,
        },
        full_every: args.full_every,
        all: args.all,
        tui,
        fork_from: if args.no_fork {
            None
        } else {
            Some(kernel::assets::unpack_worker().context("cannot unpack the Python worker")?)
        },
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, on_signal as *const () as libc::sighandler_t);
    }
    let result = watch::app::Watch::new(options).and_then(|(watch, warning)| {
        if let Some(warning) = warning {
            eprintln!("stepkernel: warning: {warning}");
        }
        watch.run(&INTERRUPTED)
    });
    match result {
        Ok(code) => Ok(ExitCode::from(code as u8)),
        Err(err) => {
            eprintln!("stepkernel: error: {err}");
            Ok(ExitCode::from(INTERNAL_ERROR))
        }
    }
}
