//! `stepkernel run`: start a kernel whose worker runs the tests step by step.

use crate::attach;
use crate::control::ControlServer;
use crate::hooks::{RunHooks, SessionContext};
use crate::session_dir::{self, SessionMeta};
use crate::step_store::StepStore;
use instrumenter::Options;
use kernel::connection_file::ConnectionInfo;
use kernel::server::{BoundKernel, KernelOptions};
use kernel::session::AfterRun;
use kernel::worker::WorkerConfig;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything `stepkernel run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Files, directories and node ids.
    pub targets: Vec<String>,
    /// Arguments after `--`, passed to pytest.
    pub pytest_args: Vec<String>,
    /// `auto`, `pytest` or `unittest`.
    pub runner: String,
    /// The user's interpreter.
    pub python: PathBuf,
    /// `pause` or `fail`.
    pub on_error: String,
    /// Where to write JUnit XML.
    pub junit_xml: Option<PathBuf>,
    /// The session directory (default `.stepkernel/sessions/<id>`).
    pub session_dir: Option<PathBuf>,
    /// Address to bind.
    pub ip: String,
    /// First of five consecutive ports (None: any free ports).
    pub first_port: Option<u16>,
    /// Custom step marker regex.
    pub step_marker: Option<String>,
    /// Custom plan id regex.
    pub plan_id: Option<String>,
    /// `--hooks MODULE`: step hooks as plain functions of an importable module.
    pub hooks: Option<String>,
    /// Less output.
    pub quiet: bool,
    /// Let a client's shutdown_request end the session.
    pub allow_client_shutdown: bool,
    /// The longest a finished run stays up for its clients (None: until
    /// they detach or `%end`; zero: end at once).
    pub linger: Option<std::time::Duration>,
    /// jupyter_server's external kernels directory (default `<runtime>/external_kernels`).
    pub external_dir: Option<PathBuf>,
    /// A pre-imported worker's socket to fork the worker from (`stepkernel watch`).
    pub zygote: Option<PathBuf>,
    /// Hints for node ids the instrumenter does not find (they parse each named file).
    pub id_hints: bool,
    /// The unpacked worker package.
    pub package_dir: PathBuf,
    /// Where tests run from.
    pub rootdir: PathBuf,
}

/// Errors that prevent a session from starting.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad arguments (exit code 4, pytest's usage error).
    #[error("{0}")]
    Usage(String),
    /// Session directory or connection file problems.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The kernel could not start.
    #[error(transparent)]
    Kernel(#[from] kernel::server::KernelError),
    /// Connection file problems.
    #[error(transparent)]
    Connection(#[from] kernel::connection_file::ConnectionFileError),
    /// The session directory is not private to this user.
    #[error("unsafe session directory (another user could take the session over)")]
    Unsafe(#[from] kernel::private_files::PrivateError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// Checks the targets name existing files or directories.
/// The file or directory part of a target (`path::Class::test`), if it has one.
fn target_path(target: &str) -> Option<&str> {
    let file = target.split("::").next().unwrap_or(target);
    (!file.is_empty() && !file.starts_with('-')).then_some(file)
}

fn check_targets(rootdir: &Path, targets: &[String]) -> Result<(), RunError> {
    for file in targets.iter().filter_map(|t| target_path(t)) {
        let path = rootdir.join(file);
        if !path.exists() {
            return Err(RunError::Usage(format!(
                "file or directory not found: {file}"
            )));
        }
    }
    Ok(())
}

/// A `--session-dir` used before: refuse a live session's, else start afresh.
fn reuse_session_dir(dir: &Path) -> Result<(), RunError> {
    if let Some(old) = SessionMeta::load(dir) {
        if old.attachable() && old.pid != std::process::id() {
            return Err(RunError::Usage(format!(
                "{} belongs to a live session (pid {}, {}); choose another --session-dir",
                dir.display(),
                old.pid,
                old.state
            )));
        }
    }
    for name in [
        crate::control::SOCKET_NAME,
        crate::xdist::RELAY_SOCKET,
        "events.jsonl",
        "journal.jsonl",
        "report.json",
        "session.json",
        "connection.json",
    ] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    // An earlier run's xdist workers (their states, which edits were whose).
    let _ = std::fs::remove_dir_all(dir.join(crate::xdist::WORKERS_DIR));
    Ok(())
}

/// The project's reports kept from run to run (`.stepkernel/step-reports/`, see
/// step_store.rs), named by the instrumenter's options; None when that cannot be made
/// (then every run instruments its files, as before).
fn kept_reports(rootdir: &Path, options: &Options) -> Option<StepStore> {
    let state = kernel::private_files::ensure_private_dir(&rootdir.join(".stepkernel")).ok()?;
    StepStore::open_at(
        &state.join(crate::step_store::REPORTS_DIR),
        &options.fingerprint(),
    )
    .ok()
}

/// `.stepkernel/` and `.stepkernel/sessions/` are the user's own and private:
/// another user's could swap the session directory inside them.
fn ensure_sessions_root(rootdir: &Path) -> Result<(), RunError> {
    kernel::private_files::ensure_private_dir(&rootdir.join(".stepkernel"))?;
    kernel::private_files::ensure_private_dir(&session_dir::sessions_root(rootdir))?;
    Ok(())
}

/// Node ids the instrumenter cannot find: suggestions for the user (pytest
/// still decides, since it may collect tests the instrumenter cannot see).
fn unknown_node_ids(rootdir: &Path, targets: &[String], options: &Options) -> Vec<String> {
    let mut notes = Vec::new();
    // Each file's test ids, read once: a watch cycle passes hundreds of ids of one file.
    let mut files: std::collections::HashMap<&str, Option<Vec<String>>> =
        std::collections::HashMap::new();
    for target in targets {
        let Some((file, name)) = target.split_once("::") else {
            continue;
        };
        let rel = files.entry(file).or_insert_with(|| {
            let report = instrumenter::instrument_file(&rootdir.join(file), options);
            if report.error.is_some() || report.tests.is_empty() {
                return None;
            }
            Some(
                report
                    .tests
                    .iter()
                    .map(|t| {
                        t.id.split_once("::")
                            .map_or(t.id.clone(), |(_, r)| r.to_string())
                    })
                    .collect(),
            )
        });
        let Some(rel) = rel.as_ref() else {
            continue;
        };
        let base = name.split('[').next().unwrap_or(name);
        let prefix = format!("{base}::");
        let known = rel.iter().any(|id| id == base || id.starts_with(&prefix));
        if !known && !assigned_at_top_level(&rootdir.join(file), base) {
            let ids: Vec<String> = rel.iter().map(|r| format!("{file}::{r}")).collect();
            let close = instrumenter::closest(base, &ids);
            notes.push(format!(
                "no test {target} in {file}; closest: {}",
                close.join(", ")
            ));
        }
    }
    notes
}

/// Whether `name = ...` is a top-level statement of the file: a test made by a
/// call (`test_x = walks([...])`), which pytest collects and the instrumenter cannot see.
fn assigned_at_top_level(file: &Path, name: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(file) else {
        return false;
    };
    text.lines().any(|line| {
        line.strip_prefix(name).is_some_and(|rest| {
            let rest = rest.trim_start();
            rest.starts_with('=') && !rest.starts_with("==")
                || rest.starts_with(':') && rest.contains('=')
        })
    })
}

/// The instrumenter's options from `--step-marker` and `--plan-id` (a bad regex is a usage error).
pub(crate) fn instrumenter_options(
    step_marker: Option<&str>,
    plan_id: Option<&str>,
) -> Result<Options, RunError> {
    let options = match step_marker {
        Some(pattern) => Options::with_step_marker(pattern)
            .map_err(|e| RunError::Usage(format!("--step-marker: {e}")))?,
        None => Options::default(),
    };
    match plan_id {
        Some(pattern) => options
            .with_plan_id(pattern)
            .map_err(|e| RunError::Usage(format!("--plan-id: {e}"))),
        None => Ok(options),
    }
}

/// Runs a session to its end; returns the process exit code.
pub fn run(opts: RunOptions) -> Result<i32, RunError> {
    check_targets(&opts.rootdir, &opts.targets)?;
    let options = instrumenter_options(opts.step_marker.as_deref(), opts.plan_id.as_deref())?;
    let id = session_dir::new_id();
    let dir = opts
        .session_dir
        .clone()
        .unwrap_or_else(|| session_dir::sessions_root(&opts.rootdir).join(&id));
    if opts.session_dir.is_none() {
        ensure_sessions_root(&opts.rootdir)?;
    }
    let dir = kernel::private_files::ensure_private_dir(&dir)?;
    reuse_session_dir(&dir)?;
    let mut connection = ConnectionInfo::new_random(&opts.ip, "stepkernel");
    if let Some(first) = opts.first_port {
        connection.shell_port = first;
        connection.iopub_port = first + 1;
        connection.stdin_port = first + 2;
        connection.control_port = first + 3;
        connection.hb_port = first + 4;
    }
    connection
        .extra
        .insert("stepkernel_pid".into(), json!(std::process::id()));
    connection
        .extra
        .insert("stepkernel_session".into(), json!(id));
    // Lets `stepkernel console`/`sessions`/`patch` find the session from any directory.
    connection.extra.insert(
        crate::discovery::SESSION_DIR_KEY.into(),
        json!(dir.display().to_string()),
    );

    let mut args = opts.targets.clone();
    args.extend(opts.pytest_args.iter().cloned());
    let mut run_message = json!({
        // Complete here, so the worker gets it as soon as it starts (the kernel's `start_run`).
        "steps_fingerprint": options.fingerprint(),
        "args": args,
        "runner": opts.runner,
        "on_error": opts.on_error,
        "junit_xml": opts.junit_xml.as_ref().map(|p| opts.rootdir.join(p).display().to_string()),
        "hooks": opts.hooks,
        // What a `stepkernel_pause` hook tells about attaching.
        "session": {
            "id": id,
            "dir": dir.display().to_string(),
            "connection_file": dir.join("connection.json").display().to_string(),
        },
        // How xdist workers start kernels of their own (`stepkernel xdist-worker`).
        "xdist": {
            "bin": std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "stepkernel".into()),
            "session_dir": dir.display().to_string(),
            "session_id": id,
            "ip": opts.ip,
            "step_marker": opts.step_marker,
            "plan_id": opts.plan_id,
            "external_dir": opts.external_dir.as_ref().map(|d| d.display().to_string()),
        },
    });
    // A project directory whose name is not UTF-8 goes as bytes too (lossless).
    run_message
        .as_object_mut()
        .expect("an object")
        .extend(kernel::worker::path_fields(&opts.rootdir, "rootdir"));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io("cannot start the async runtime"))?;
    runtime.block_on(async move {
        let kernel_options = KernelOptions {
            connection,
            worker: WorkerConfig {
                version: None,
                python: opts.python.clone(),
                package_dir: opts.package_dir.clone(),
                cwd: Some(opts.rootdir.clone()),
                pass_through: None,
                zygote: opts.zygote.clone(),
                terminal_output: true,
            },
            hooks: None,
            run: Some(run_message),
            // A watch cycle's worker (forked, ready at once) starts its tests
            // while the session is set up; not under xdist, whose workers look
            // for the session's relay socket as they start.
            run_at_once: opts.zygote.is_some() && !uses_xdist(&opts.pytest_args),
        };
        let mut bound = BoundKernel::bind(kernel_options).await?;
        // The worker is starting (bind began it): finish the session's setup
        // (git, attach files) meanwhile. The hints about node ids the
        // instrumenter does not find parse every named test file: beside the
        // run, not before it (a worker forked by a watch's zygote is ready at
        // once, and a watch cycle names hundreds of ids).
        let hint = |rootdir: &Path, targets: &[String], options: &Options| {
            for note in unknown_node_ids(rootdir, targets, options) {
                eprintln!("stepkernel: {note}");
            }
        };
        let (rootdir, hint_options) = (opts.rootdir.clone(), options.clone());
        let targets = if opts.id_hints {
            opts.targets.clone()
        } else {
            Vec::new()
        };
        let hints = std::thread::Builder::new()
            .name("stepkernel-hints".into())
            .spawn(move || hint(&rootdir, &targets, &hint_options));
        if hints.is_err() && opts.id_hints {
            hint(&opts.rootdir, &opts.targets, &options);
        }
        let patch_root =
            patchgen::repo_root(&opts.rootdir).unwrap_or_else(|| opts.rootdir.clone());
        let base_revision = patchgen::head_revision(&patch_root);
        let runtime_dir = attach::jupyter_runtime_dir();
        let external_dir = opts
            .external_dir
            .clone()
            .unwrap_or_else(|| runtime_dir.join("external_kernels"));
        let copy_dirs = vec![runtime_dir.clone(), external_dir.clone()];
        attach::remove_stale(&copy_dirs);
        let connection_file = dir.join("connection.json");
        bound.connection.write(&connection_file)?;
        let (copies, skipped) = attach::place_copies(&connection_file, &id, &copy_dirs);
        for note in skipped {
            eprintln!("stepkernel: {note}");
        }
        let listed_copy = copies
            .iter()
            .find(|p| p.parent() == Some(external_dir.as_path()))
            .cloned();
        if let Some(copy) = &listed_copy {
            let what = crate::kernel_label::targets_label(&opts.targets, &opts.rootdir);
            let _ = crate::kernel_label::relabel(copy, &crate::kernel_label::label(&what, "running"));
        }
        let me = self_command();
        let mut attach_lines = vec![
            format!("jupyter console --existing {}", connection_file.display()),
            format!("{me} console {id}      (the same, shorter; from any directory)"),
            format!("{me} lab {id}          (JupyterLab: Kernel > Change Kernel > the stepkernel session)"),
        ];
        if !matches!(opts.ip.as_str(), "127.0.0.1" | "localhost" | "::1") {
            attach_lines.push(attach::copy_then_ssh_line(&connection_file));
        }
        let meta = SessionMeta {
            id: id.clone(),
            pid: std::process::id(),
            state: "running".into(),
            paused_at: None,
            rootdir: opts.rootdir.display().to_string(),
            patch_root: patch_root.display().to_string(),
            base_revision: base_revision.clone(),
            args: opts.targets.clone(),
            python: Some(opts.python.display().to_string()),
            connection_file: connection_file.display().to_string(),
            connection_copies: copies.iter().map(|p| p.display().to_string()).collect(),
            started: patchgen::now_rfc3339(),
            ..Default::default()
        };
        let _ = meta.save(&dir);
        let kept = kept_reports(&opts.rootdir, &options);
        let hooks = RunHooks::new(
            SessionContext {
                id: id.clone(),
                dir: dir.clone(),
                rootdir: opts.rootdir.clone(),
                patch_root,
                base_revision,
                attach: attach_lines,
                allow_client_shutdown: opts.allow_client_shutdown,
                notebook: false,
                options,
                copies,
                after_run: after_run(&opts),
                listed_copy,
            },
            meta,
            opts.quiet,
        );
        let hooks = Arc::new(match kept {
            Some(kept) => hooks.keep_reports(kept),
            None => hooks,
        });
        if !opts.quiet {
            hooks.say(&format!(
                "stepkernel: session {id} — attach any time: jupyter console --existing {}",
                connection_file.display()
            ));
        }
        if !matches!(opts.ip.as_str(), "127.0.0.1" | "localhost" | "::1") {
            hooks.say("stepkernel: WARNING: the kernel's ZeroMQ ports are reachable from the network. \
                       Messages are signed with the session key but NOT encrypted: prefer an SSH tunnel \
                       (jupyter console --existing FILE --ssh HOST) or a Jupyter server beside the tests.");
        }
        // Under xdist this process runs no test: it instruments the files once
        // for every local worker's kernel (each worker collects every file).
        let xdist = uses_xdist(&opts.pytest_args);
        let store = if xdist {
            match StepStore::open(&dir, &hooks.context().options.fingerprint()) {
                Ok(store) => Some(Arc::new(store)),
                Err(err) => {
                    hooks.say(&format!("stepkernel: no shared step reports for the xdist workers ({err}): each instruments its own"));
                    None
                }
            }
        } else {
            None
        };
        if store.is_some() || !xdist {
            hooks.prefetch(prefetch_candidates(&opts.rootdir, &opts.targets), store);
        }
        let control = match ControlServer::start(hooks.clone(), bound.steering()) {
            Ok(control) => Some(control),
            Err(err) => {
                hooks.say(&format!("stepkernel: no control socket ({err}); `stepkernel ctl` cannot steer this run"));
                None
            }
        };
        let relay = match crate::xdist::WorkerRelay::start(&dir, hooks.clone()) {
            Ok(relay) => Some(relay),
            Err(err) => {
                hooks.say(&format!("stepkernel: no relay for xdist workers ({err}); their events stay in their own directories"));
                None
            }
        };
        bound.set_hooks(hooks.clone());
        let served = bound.serve().await;
        if let Ok(hints) = hints {
            let _ = hints.join();
        }
        if let Some(control) = control {
            control.close().await;
        }
        if let Some(relay) = relay {
            relay.close();
        }
        // Also the one the workers' kernels made (`-n` in the ini's addopts, not seen above).
        StepStore::remove(&dir);
        served?;
        Ok(hooks.exit_code().unwrap_or(3))
    })
}

/// A run with `--on-error fail` (nothing pauses, no one is waited for) or
/// `--linger 0` ends with its last test; others stay up for their clients.
fn after_run(opts: &RunOptions) -> AfterRun {
    if opts.on_error == "fail" || opts.linger == Some(std::time::Duration::ZERO) {
        AfterRun::Stop
    } else {
        AfterRun::Linger { limit: opts.linger }
    }
}

/// How a second terminal runs this binary: `stepkernel` when that is what
/// PATH finds, else its full path (as after `scripts/demo.sh`, which runs it
/// from the build directory).
pub fn self_command() -> String {
    let Ok(me) = std::env::current_exe() else {
        return "stepkernel".into();
    };
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("stepkernel"))
            .find(|p| p.is_file())
    });
    let same = on_path
        .and_then(|p| p.canonicalize().ok())
        .is_some_and(|p| me.canonicalize().is_ok_and(|m| m == p));
    if same {
        "stepkernel".into()
    } else {
        me.display().to_string()
    }
}

/// Hooks for a notebook kernel (`stepkernel kernel`): `%test`, `%tests`,
/// `%%edit`, `%diff`, `%patch`, `%apply`, with a session directory under
/// `rootdir/.stepkernel/sessions/`.
pub fn notebook_hooks(rootdir: &Path) -> Result<Arc<RunHooks>, RunError> {
    let id = session_dir::new_id();
    ensure_sessions_root(rootdir)?;
    let dir =
        kernel::private_files::ensure_private_dir(&session_dir::sessions_root(rootdir).join(&id))?;
    let patch_root = patchgen::repo_root(rootdir).unwrap_or_else(|| rootdir.to_path_buf());
    let base_revision = patchgen::head_revision(&patch_root);
    let meta = SessionMeta {
        id: id.clone(),
        pid: std::process::id(),
        state: "running".into(),
        rootdir: rootdir.display().to_string(),
        patch_root: patch_root.display().to_string(),
        base_revision: base_revision.clone(),
        started: patchgen::now_rfc3339(),
        ..Default::default()
    };
    let _ = meta.save(&dir);
    Ok(Arc::new(RunHooks::new(
        SessionContext {
            id,
            dir,
            rootdir: rootdir.to_path_buf(),
            patch_root,
            base_revision,
            attach: Vec::new(),
            allow_client_shutdown: true,
            notebook: true,
            options: Options::default(),
            copies: Vec::new(),
            after_run: AfterRun::Serve,
            listed_copy: None,
        },
        meta,
        true,
    )))
}

/// Most files `prefetch` instruments (a run naming a huge tree still starts at once).
const PREFETCH_LIMIT: usize = 2000;

/// Whether pytest's arguments run pytest-xdist workers (`-n N`, `--tx ...`;
/// `-n 0` runs none). An `addopts` in the ini file is not seen here.
fn uses_xdist(pytest_args: &[String]) -> bool {
    let mut args = pytest_args.iter().map(String::as_str);
    while let Some(arg) = args.next() {
        let (name, value) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value)),
            _ => (arg, None),
        };
        let count = match name {
            "-n" | "--numprocesses" => value.or_else(|| args.next()),
            _ if name.starts_with("-n") && !name.starts_with("--") => Some(&name[2..]),
            "--tx" => return true,
            _ => continue,
        };
        if count.is_some_and(|n| n != "0") {
            return true;
        }
    }
    false
}

/// The files pytest would collect for `targets` by default (`test_*.py`,
/// `*_test.py`; the named file of a node id), in collection order.
pub(crate) fn prefetch_candidates(rootdir: &Path, targets: &[String]) -> Vec<PathBuf> {
    let roots: Vec<PathBuf> = if targets.is_empty() {
        vec![rootdir.to_path_buf()]
    } else {
        targets
            .iter()
            .filter_map(|t| target_path(t))
            .map(|file| rootdir.join(file))
            .collect()
    };
    let mut files = Vec::new();
    for root in roots {
        if root.is_file() {
            files.push(root);
        } else if root.is_dir() {
            files.extend(instrumenter::test_files(&root).unwrap_or_default());
        }
        if files.len() >= PREFETCH_LIMIT {
            files.truncate(PREFETCH_LIMIT);
            break;
        }
    }
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.clone()));
    files
}

#[cfg(test)]
mod xdist_args_tests {
    use super::uses_xdist;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn n_and_tx_run_workers_and_n0_does_not() {
        assert!(uses_xdist(&args(&["-n", "2", "-p", "no:cacheprovider"])));
        assert!(uses_xdist(&args(&["-n2"])));
        assert!(uses_xdist(&args(&["--numprocesses=auto"])));
        assert!(uses_xdist(&args(&["--tx", "socket=h:1"])));
        assert!(uses_xdist(&args(&["--tx=ssh=h"])));
        assert!(!uses_xdist(&args(&["-n", "0"])));
        assert!(!uses_xdist(&args(&["-n0", "-q"])));
        assert!(!uses_xdist(&args(&["-q", "--no-header"])));
    }
}

#[cfg(test)]
mod assigned_tests {
    use super::assigned_at_top_level;

    #[test]
    fn a_test_made_by_assignment_is_found_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("test_w.py");
        std::fs::write(
            &file,
            "test_a = walks([A])\ntest_b: object = walks([B])\nif test_c == 1:\n    pass\n    test_d = 1\n",
        )
        .unwrap();
        assert!(assigned_at_top_level(&file, "test_a"));
        assert!(assigned_at_top_level(&file, "test_b"));
        assert!(
            !assigned_at_top_level(&file, "test_c"),
            "a comparison is no assignment"
        );
        assert!(
            !assigned_at_top_level(&file, "test_d"),
            "indented: not top level"
        );
        assert!(!assigned_at_top_level(
            &dir.path().join("missing.py"),
            "test_a"
        ));
    }
}
