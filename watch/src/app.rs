//! The watch loop: changes in, cycles out. Each cycle is a fresh `stepkernel
//! run` process, run with the recorder plugin, whose worker is forked from the
//! watch's pre-imported one ([`crate::zygote`]: it holds no module of the
//! project, so every cycle imports the project's code as it is on disk); its
//! results update the database, the watch's `events.jsonl` and the terminal.

use crate::control::{self, Request};
use crate::db::{Db, TestRow};
use crate::fswatch::{FsWatch, Ignore};
use crate::imports::Resolver;
use crate::keys::Key;
use crate::output::{Output, Stream};
use crate::record::{collect_error_rows, test_rows, Line, Tail};
use crate::screen::Screen;
use crate::select::{self, is_instance_of, rel, Current, Selected};
use crate::zygote::{Change, Zygote};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

/// What a change during a running cycle does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBusy {
    /// Drop the cycle's tests not yet run; start a new cycle with both selections.
    Restart,
    /// Let the cycle finish, then run the new selection.
    Queue,
    /// Let the cycle finish and ignore changes made meanwhile (Enter reruns).
    Wait,
}

/// Everything `stepkernel watch` was asked to do.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The project directory (canonical).
    pub rootdir: PathBuf,
    /// Files, directories, node ids the watch is limited to.
    pub targets: Vec<String>,
    /// Arguments for pytest.
    pub pytest_args: Vec<String>,
    /// `stepkernel run` and its fixed options, without targets.
    pub run_command: Vec<OsString>,
    /// The interpreter (syntax checks of saved files).
    pub python: PathBuf,
    /// The watch's session directory.
    pub session_dir: PathBuf,
    /// The dependency database file.
    pub db_path: PathBuf,
    /// Where each cycle's session directory goes (`.stepkernel/sessions`).
    pub cycles_root: PathBuf,
    /// Poll instead of inotify.
    pub poll: bool,
    /// Debounce of file events.
    pub debounce: Duration,
    /// Busy policy.
    pub on_busy: OnBusy,
    /// Rerun everything every N cycles.
    pub full_every: Option<u32>,
    /// First cycle runs everything.
    pub all: bool,
    /// The terminal screen (a footer with the totals) and keys: stdin and stdout are a TTY, no `--plain`.
    pub tui: bool,
    /// The worker package to pre-import in a zygote that forks each cycle's
    /// worker (None: `--no-fork`, every cycle starts Python afresh).
    pub fork_from: Option<PathBuf>,
}

/// Watch errors.
#[derive(Debug, thiserror::Error)]
pub enum WatchRunError {
    /// The database.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// The file watcher.
    #[error(transparent)]
    Watch(#[from] crate::fswatch::WatchError),
    /// Session directory, control socket, child process.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> WatchRunError {
    let what = what.into();
    move |source| WatchRunError::Io { what, source }
}

/// Why a cycle starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Trigger {
    /// Files changed.
    Changes,
    /// Enter / `rerun`: everything stale, plus failures.
    Rerun,
    /// `a` / `all`.
    All,
}

struct Cycle {
    number: u32,
    child: Child,
    dir: PathBuf,
    tail: Tail,
    selection: Vec<Selected>,
    whole: bool,
    /// The reason of tests a whole-suite cycle finds that were not listed.
    default_why: String,
    started: HashSet<String>,
    finished: HashSet<String>,
    writes: HashSet<PathBuf>,
    failing_before: BTreeMap<String, usize>,
    killed: bool,
    /// The test running now (its output is what prints).
    current: Option<String>,
    /// Threads passing the cycle's output to the screen (TUI only).
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// The watch's state.
pub struct Watch {
    opts: WatchOptions,
    db: Db,
    current: Current,
    resolver: Resolver,
    ignore: Ignore,
    events: std::fs::File,
    cycle: Option<Cycle>,
    cycles: u32,
    pending: BTreeSet<PathBuf>,
    trigger: Option<Trigger>,
    carry: Vec<Selected>,
    /// Paths the run wrote, with when (their events are not changes).
    run_writes: HashMap<PathBuf, Instant>,
    hashes: HashMap<PathBuf, Option<String>>,
    /// The project's Python sources as last seen, and as the running cycle loaded them.
    sources: HashMap<PathBuf, Vec<u8>>,
    cycle_sources: HashMap<PathBuf, Vec<u8>>,
    /// Saves already tried as a hot reload of the paused test.
    reload_tried: BTreeSet<PathBuf>,
    /// Saves hot-reloaded into a paused cycle: they rerun what they affect after it.
    after_cycle: BTreeSet<PathBuf>,
    /// Files a hot reload briefly put back as loaded: their events then are not changes.
    suppress: HashMap<PathBuf, (Instant, Option<String>, Option<String>)>,
    failing_only: bool,
    file_filter: Option<String>,
    test_filter: Option<String>,
    known: HashMap<String, TestRow>,
    had_failures: bool,
    quit: bool,
    /// The footer and raw mode (TUI only).
    screen: RefCell<Option<Screen>>,
    /// A `p` / `t` pattern being typed.
    prompt: Option<(char, String)>,
    /// The cycle's output chunks (TUI: the cycle's stdout and stderr are piped through the watch).
    out_tx: Sender<(Stream, Vec<u8>)>,
    out_rx: Receiver<(Stream, Vec<u8>)>,
    output: Output,
    /// The pre-imported worker cycles fork from (None: `--no-fork`, or not started).
    zygote: Option<Zygote>,
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A thread that sends what `from` writes, chunk by chunk, as `stream`'s.
fn pass_output(
    mut from: impl std::io::Read + Send + 'static,
    stream: Stream,
    to: Sender<(Stream, Vec<u8>)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.send((stream, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// At most `max` names of `tests`, then how many more.
fn truncated(tests: &[&str], max: usize) -> String {
    let mut text = tests
        .iter()
        .take(max)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if tests.len() > max {
        text.push_str(&format!(" … +{} more", tests.len() - max));
    }
    text
}

fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".py") && (name.starts_with("test_") || name.ends_with("_test.py"))
}

impl Watch {
    /// Opens the database and the session directory's files.
    pub fn new(opts: WatchOptions) -> Result<(Watch, Option<String>), WatchRunError> {
        let (db, warning) = Db::open(&opts.db_path)?;
        let events = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(opts.session_dir.join("events.jsonl"))
            .map_err(io("cannot write events.jsonl"))?;
        let known = db.tests()?.into_iter().map(|t| (t.id.clone(), t)).collect();
        let (out_tx, out_rx) = channel();
        let watch = Watch {
            resolver: Resolver::new(&opts.rootdir),
            ignore: Ignore::new(&opts.rootdir),
            opts,
            db,
            current: Current::default(),
            events,
            cycle: None,
            cycles: 0,
            pending: BTreeSet::new(),
            trigger: None,
            carry: Vec::new(),
            run_writes: HashMap::new(),
            hashes: HashMap::new(),
            sources: HashMap::new(),
            cycle_sources: HashMap::new(),
            reload_tried: BTreeSet::new(),
            after_cycle: BTreeSet::new(),
            suppress: HashMap::new(),
            failing_only: false,
            file_filter: None,
            test_filter: None,
            known,
            had_failures: false,
            quit: false,
            screen: RefCell::new(None),
            prompt: None,
            out_tx,
            out_rx,
            output: Output::default(),
            zygote: None,
        };
        Ok((watch, warning))
    }

    fn emit(&mut self, event: &str, fields: Value) {
        let mut line = json!({"event": event, "time": now_secs()});
        if let (Some(obj), Value::Object(extra)) = (line.as_object_mut(), fields) {
            obj.extend(extra);
        }
        let mut bytes = serde_json::to_vec(&line).expect("serializes");
        bytes.push(b'\n');
        let _ = self.events.write_all(&bytes);
    }

    fn say(&self, text: &str) {
        if self.screen.borrow().is_some() {
            let footer = self.footer(self.paused());
            if let Some(screen) = self.screen.borrow_mut().as_mut() {
                screen.print(text, footer);
            }
            return;
        }
        let mut out = std::io::stdout().lock();
        for line in text.lines() {
            let _ = write!(out, "{line}\r\n");
        }
        let _ = out.flush();
    }

    fn in_targets(&self, test: &str) -> bool {
        if self.opts.targets.is_empty() {
            return true;
        }
        self.opts.targets.iter().any(|t| {
            let t = t.trim_end_matches('/');
            let t = t.strip_prefix("./").unwrap_or(t);
            is_instance_of(test, t)
                || test.starts_with(&format!("{t}/"))
                || test.starts_with(&format!("{t}::"))
                || test == t
        })
    }

    fn passes_filters(&self, test: &str) -> bool {
        let (file, name) = test.split_once("::").unwrap_or((test, ""));
        if let Some(f) = &self.file_filter {
            if !file.contains(f.as_str()) {
                return false;
            }
        }
        if let Some(t) = &self.test_filter {
            if !name.contains(t.as_str()) {
                return false;
            }
        }
        if self.failing_only {
            let failing = self
                .known
                .get(test)
                .is_some_and(|r| matches!(r.outcome.as_str(), "failed" | "error"))
                || self
                    .db
                    .collect_errors()
                    .is_ok_and(|errors| errors.iter().any(|(file, _, _)| file == test));
            if !failing {
                return false;
            }
        }
        true
    }

    fn failing(&self) -> Vec<Selected> {
        self.known
            .values()
            .filter(|r| matches!(r.outcome.as_str(), "failed" | "error"))
            .map(|r| Selected {
                test: r.id.clone(),
                why: format!("{} last time", r.outcome),
            })
            .collect()
    }

    /// Test files under the targets, for new-test detection at start.
    fn test_files(&self) -> Vec<PathBuf> {
        let roots: Vec<PathBuf> = if self.opts.targets.is_empty() {
            vec![self.opts.rootdir.clone()]
        } else {
            self.opts
                .targets
                .iter()
                .map(|t| self.opts.rootdir.join(t.split("::").next().unwrap_or(t)))
                .collect()
        };
        let mut files = Vec::new();
        for root in roots {
            if root.is_file() {
                files.push(root);
                continue;
            }
            for entry in walkdir::WalkDir::new(&root)
                .into_iter()
                .filter_entry(|e| e.depth() == 0 || !self.ignore.ignored(e.path()))
                .filter_map(Result::ok)
            {
                if entry.file_type().is_file() && is_test_file(entry.path()) {
                    files.push(entry.into_path());
                }
            }
        }
        files
    }

    /// New tests in `file` (not in the database), and tests it lost.
    fn new_tests(&mut self, file: &Path) -> Vec<Selected> {
        let rel_file = rel(&self.opts.rootdir, file);
        let Some(blocks) = self.current.file(file).and_then(|f| f.blocks.clone()) else {
            return Vec::new();
        };
        let ids = select::test_ids_in(&self.opts.rootdir, file, &blocks);
        let known_here: Vec<String> = self
            .known
            .keys()
            .filter(|k| k.split("::").next() == Some(rel_file.as_str()))
            .cloned()
            .collect();
        let collect_error = self
            .db
            .collect_errors()
            .is_ok_and(|errors| errors.iter().any(|(f, _, _)| *f == rel_file));
        if collect_error {
            // Its collection error decides (rerun when it changes or a module appears).
            return Vec::new();
        }
        if known_here.is_empty() && !ids.is_empty() {
            // Nothing recorded for the file: run it whole (pytest finds what tree-sitter cannot).
            return vec![Selected {
                test: rel_file,
                why: "test file not run yet".into(),
            }];
        }
        let mut out = Vec::new();
        for id in &ids {
            if !known_here.iter().any(|k| is_instance_of(k, id)) {
                out.push(Selected {
                    test: id.clone(),
                    why: "new test".into(),
                });
            }
        }
        for gone in known_here {
            let base = gone.split('[').next().unwrap_or(&gone).to_string();
            // Only base ids tree-sitter can see; other ids (generated tests) stay.
            let visible = base.matches("::").count() <= 2;
            if visible && !ids.contains(&base) && !blocks.syntax_error {
                let _ = self.db.forget(&gone);
                self.known.remove(&gone);
            }
        }
        out
    }

    /// What the next cycle runs: (selection, run everything).
    fn selection(
        &mut self,
        trigger: &Trigger,
        changed: &[PathBuf],
    ) -> Result<(Vec<Selected>, bool), WatchRunError> {
        self.current.clear();
        for path in changed {
            self.resolver.invalidate(path);
        }
        // Tests whose file is gone are gone (their dependents' records too).
        let gone: Vec<String> = self
            .known
            .values()
            .filter(|r| !r.file.is_empty() && !self.opts.rootdir.join(&r.file).exists())
            .map(|r| r.id.clone())
            .collect();
        for id in gone {
            self.db.forget(&id)?;
            self.known.remove(&id);
        }
        let mut chosen: BTreeMap<String, String> = BTreeMap::new();
        let add = |chosen: &mut BTreeMap<String, String>, test: String, why: String| {
            chosen.entry(test).or_insert(why);
        };
        let first = self.cycles == 0;
        let full_due = self
            .opts
            .full_every
            .is_some_and(|n| n > 0 && self.cycles > 0 && self.cycles.is_multiple_of(n));
        if *trigger == Trigger::All || (first && (self.opts.all || self.db.is_empty()?)) || full_due
        {
            let why = if first && self.db.is_empty()? {
                "no recorded dependencies yet"
            } else if full_due {
                "--full-every"
            } else {
                "all"
            };
            let mut tests: Vec<Selected> = self
                .known
                .keys()
                .filter(|t| self.in_targets(t))
                .map(|t| Selected {
                    test: t.clone(),
                    why: why.into(),
                })
                .collect();
            tests.sort_by(|a, b| a.test.cmp(&b.test));
            return Ok((tests, true));
        }
        let stale = if first || *trigger == Trigger::Rerun {
            select::stale(&self.db, &mut self.current, &self.opts.rootdir, None)?
        } else {
            select::stale(
                &self.db,
                &mut self.current,
                &self.opts.rootdir,
                Some(changed),
            )?
        };
        let mut stale = stale;
        // Code and data exactly as a recorded run saw them (a branch switched
        // back): that run's result stands, nothing reruns.
        for row in select::restore_known_states(&mut self.db, &mut self.current, &stale)? {
            stale.remove(&row.id);
            self.emit(
                "restored",
                json!({"test": row.id, "file": row.file, "outcome": row.outcome, "report": row.report}),
            );
            self.known.insert(row.id.clone(), row);
        }
        for (test, why) in stale {
            add(&mut chosen, test, why);
        }
        if first || *trigger == Trigger::Rerun {
            for s in self.failing() {
                add(&mut chosen, s.test, s.why);
            }
            for file in self.test_files() {
                for s in self.new_tests(&file) {
                    add(&mut chosen, s.test, s.why);
                }
            }
        }
        for path in changed.iter().filter(|p| is_test_file(p)) {
            for s in self.new_tests(path) {
                add(&mut chosen, s.test, s.why);
            }
        }
        // Collection errors: the file changed, or a module it missed appeared.
        for (file, missing, _) in self.db.collect_errors()? {
            let abs = self.opts.rootdir.join(&file);
            if !abs.exists() {
                self.db.clear_collect_error(&file)?;
                continue;
            }
            if first || *trigger == Trigger::Rerun || changed.contains(&abs) {
                add(
                    &mut chosen,
                    file.clone(),
                    "collection error last time".into(),
                );
                continue;
            }
            'paths: for path in changed.iter().filter(|p| p.exists()) {
                for name in self.resolver.module_names(path) {
                    if let Some(m) = missing.iter().find(|m| {
                        **m == name
                            || m.starts_with(&format!("{name}."))
                            || name.starts_with(&format!("{m}."))
                    }) {
                        add(
                            &mut chosen,
                            file.clone(),
                            format!(
                                "ModuleNotFoundError: {m} now exists ({})",
                                rel(&self.opts.rootdir, path)
                            ),
                        );
                        break 'paths;
                    }
                }
            }
        }
        for row in self.known.values().filter(|r| r.incomplete.is_some()) {
            add(
                &mut chosen,
                row.id.clone(),
                format!(
                    "recording incomplete: {}",
                    row.incomplete.as_deref().unwrap_or("")
                ),
            );
        }
        let mut tests: Vec<Selected> = chosen
            .into_iter()
            .filter(|(t, _)| {
                let file = t.split("::").next().unwrap_or(t);
                self.opts.rootdir.join(file).exists()
            })
            .map(|(test, why)| Selected { test, why })
            .collect();
        // A whole file selected covers its tests.
        let files: Vec<String> = tests
            .iter()
            .filter(|s| !s.test.contains("::"))
            .map(|s| s.test.clone())
            .collect();
        tests.retain(|s| {
            !s.test.contains("::") || !files.iter().any(|f| s.test.starts_with(&format!("{f}::")))
        });
        Ok((tests, false))
    }

    fn start_cycle(
        &mut self,
        mut tests: Vec<Selected>,
        whole: bool,
        changed: &[PathBuf],
    ) -> Result<(), WatchRunError> {
        let carry = std::mem::take(&mut self.carry);
        for s in carry {
            if !tests.iter().any(|t| t.test == s.test) {
                tests.push(s);
            }
        }
        tests.retain(|s| self.in_targets(&s.test) || whole);
        if !whole {
            tests.retain(|s| self.passes_filters(&s.test));
        }
        select::order(&mut tests, changed, &self.known);
        if tests.is_empty() && !whole {
            self.emit("selection", json!({"tests": [], "all": false}));
            self.say("stepkernel watch: nothing to rerun");
            self.idle_line();
            return Ok(());
        }
        self.cycles += 1;
        let number = self.cycles;
        let listed: Vec<Value> = tests
            .iter()
            .map(|s| json!({"test": s.test, "why": s.why}))
            .collect();
        self.emit(
            "selection",
            json!({"cycle": number, "tests": listed, "all": whole}),
        );
        // Said once the cycle is on (so the footer below it is the cycle's).
        let mut header = Vec::new();
        if whole {
            header.push(format!("── cycle {number}: all tests"));
        } else {
            header.push(format!("── cycle {number}: {} test(s)", tests.len()));
            for s in tests.iter().take(20) {
                header.push(format!("   {}  ({})", s.test, s.why));
            }
            if tests.len() > 20 {
                header.push(format!("   … and {} more", tests.len() - 20));
            }
        }
        // A session of its own where `stepkernel status`, `console` and `patch` look.
        let watch_id = self
            .opts
            .session_dir
            .file_name()
            .map_or_else(|| "watch".into(), |n| n.to_string_lossy().into_owned());
        let dir = self.opts.cycles_root.join(format!("{watch_id}-c{number}"));
        let deps_file = self
            .opts
            .session_dir
            .join(format!("cycle-{number}.deps.jsonl"));
        let _ = std::fs::remove_file(&deps_file);
        let mut command = Command::new(&self.opts.run_command[0]);
        command.args(&self.opts.run_command[1..]);
        // The ids are the watch's own records: the recorder reports those gone (`not_found`).
        command.arg("--session-dir").arg(&dir).arg("--no-id-hints");
        if let Some(socket) = self.zygote.as_ref().and_then(Zygote::socket) {
            command.arg("--zygote").arg(socket);
        }
        if whole {
            command.args(&self.opts.targets);
        } else {
            command.args(tests.iter().map(|s| &s.test));
        }
        command.arg("--");
        // One file that does not import must not stop the others (pytest stops by default).
        command.args([
            "-p",
            "stepkernel_worker.deps",
            "--continue-on-collection-errors",
        ]);
        let tui = self.screen.borrow().is_some();
        if tui
            && !self
                .opts
                .pytest_args
                .iter()
                .any(|a| a.starts_with("--color"))
        {
            // Its output is piped through the watch to the terminal: pytest colours it as on one.
            command.arg("--color=yes");
        }
        command.args(&self.opts.pytest_args);
        command.env("STEPKERNEL_DEPS_FILE", &deps_file);
        command.current_dir(&self.opts.rootdir);
        // The watch reads the keys; the cycle is steered through its socket.
        command.stdin(std::process::Stdio::null());
        if tui {
            // Its output prints above the footer (so it cannot overwrite it).
            command.stdout(std::process::Stdio::piped());
            command.stderr(std::process::Stdio::piped());
        }
        // fork and exec, not posix_spawn: glibc's posix_spawn leaves its
        // internal signals (32, 33) ignored in the child, and the run's worker
        // would inherit that, unlike a worker forked from the zygote or one
        // `stepkernel run` starts from a shell.
        // SAFETY: the closure does nothing.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| Ok(()));
        }
        let mut child = command
            .spawn()
            .map_err(io("cannot start a cycle (stepkernel run)"))?;
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(pass_output(stdout, Stream::Out, self.out_tx.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(pass_output(stderr, Stream::Err, self.out_tx.clone()));
        }
        let mut failing_before = BTreeMap::new();
        for row in self.known.values() {
            if matches!(row.outcome.as_str(), "failed" | "error") {
                *failing_before.entry(row.file.clone()).or_insert(0) += 1;
            }
        }
        self.cycle_sources = self.sources.clone();
        self.reload_tried.clear();
        self.emit(
            "cycle_start",
            json!({"cycle": number, "tests": tests.len(), "all": whole}),
        );
        self.cycle = Some(Cycle {
            number,
            child,
            dir,
            tail: Tail::new(&deps_file),
            selection: tests,
            whole,
            default_why: if whole && self.known.is_empty() {
                "no recorded dependencies yet".into()
            } else {
                "all".into()
            },
            started: HashSet::new(),
            finished: HashSet::new(),
            writes: HashSet::new(),
            failing_before,
            killed: false,
            current: None,
            readers,
        });
        self.say(&header.join("\n"));
        self.warm_for_results();
        Ok(())
    }

    /// Reads and parses now what recording the cycle's results needs (the
    /// import closure of its test files, the blocks of the files in it), while
    /// the cycle's Python starts on another core: the first result is then
    /// reported as soon as it arrives, not after a parse of a saved 5,000-line file.
    fn warm_for_results(&mut self) {
        let Some(cycle) = self.cycle.as_ref() else {
            return;
        };
        let files: BTreeSet<PathBuf> = cycle
            .selection
            .iter()
            .filter_map(|s| s.test.split("::").next())
            .map(|file| self.opts.rootdir.join(file))
            .take(WARM_FILES_MAX)
            .collect();
        for file in files {
            for path in self.resolver.closure(&file) {
                let _ = self.current.file(&path);
            }
        }
    }

    fn totals(&self) -> Value {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for row in self.known.values() {
            let key = match row.outcome.as_str() {
                "passed" | "xfailed" | "xpassed" | "fixed" => "passed",
                "failed" | "forced" => "failed",
                "error" => "errors",
                _ => "skipped",
            };
            *counts.entry(key).or_insert(0) += 1;
        }
        // A whole-suite cycle's selection is the tests known so far (new ones are not counted).
        let to_be_run = self.cycle.as_ref().map_or(0, |c| {
            c.selection
                .iter()
                .filter(|s| !c.finished.contains(&s.test))
                .count()
        });
        json!({
            "passed": counts.get("passed").copied().unwrap_or(0),
            "failed": counts.get("failed").copied().unwrap_or(0),
            "errors": counts.get("errors").copied().unwrap_or(0) + self.collect_error_count(),
            "skipped": counts.get("skipped").copied().unwrap_or(0),
            "to_be_run": to_be_run,
        })
    }

    fn collect_error_count(&self) -> usize {
        self.db.collect_errors().map_or(0, |e| e.len())
    }

    /// The failures now, those of the files just run first, with their report's last line.
    fn failures_summary(&self, ran_files: &BTreeSet<String>) {
        let mut failing: Vec<&TestRow> = self
            .known
            .values()
            .filter(|r| matches!(r.outcome.as_str(), "failed" | "error" | "forced"))
            .collect();
        failing.sort_by_key(|r| (!ran_files.contains(&r.file), r.id.clone()));
        let errors = self.db.collect_errors().unwrap_or_default();
        if failing.is_empty() && errors.is_empty() {
            return;
        }
        self.say("── failures (files just run first):");
        for (file, _, text) in &errors {
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            self.say(&format!("   {file}: collection error: {}", last.trim()));
        }
        for row in failing.iter().take(20) {
            // pytest's first `E` line is the error itself; later ones explain it.
            let last = row
                .report
                .lines()
                .find(|l| l.trim_start().starts_with("E "))
                .or_else(|| row.report.lines().rev().find(|l| !l.trim().is_empty()))
                .unwrap_or("");
            self.say(&format!(
                "   {} {}: {}",
                row.outcome.to_uppercase(),
                row.id,
                last.trim()
            ));
            if self.screen.borrow().is_some() {
                // On a terminal the report itself (its last lines: the assertion and where).
                let report: Vec<&str> = row.report.lines().collect();
                let from = report.len().saturating_sub(25);
                if from > 0 {
                    self.say("      …");
                }
                for line in &report[from..] {
                    self.say(&format!("      {line}"));
                }
            }
        }
        if failing.len() > 20 {
            self.say(&format!("   … and {} more", failing.len() - 20));
        }
    }

    /// The cycle's output gathered so far, above the footer.
    fn print_output(&mut self, ended: bool) {
        let mut lines = Vec::new();
        while let Ok((stream, bytes)) = self.out_rx.try_recv() {
            lines.extend(self.output.push(stream, &bytes));
        }
        if ended {
            lines.extend(self.output.flush());
        }
        if !lines.is_empty() {
            self.say(&lines.join("\n"));
        }
    }

    /// The filters on, as the status line shows them.
    fn filters_text(&self) -> String {
        let mut filters = Vec::new();
        if self.failing_only {
            filters.push("failing only".to_string());
        }
        if let Some(f) = &self.file_filter {
            filters.push(format!("file ~ {f}"));
        }
        if let Some(f) = &self.test_filter {
            filters.push(format!("test ~ {f}"));
        }
        if filters.is_empty() {
            String::new()
        } else {
            format!(" [{}]", filters.join(", "))
        }
    }

    /// The footer: during a cycle the running test and the queue (in run
    /// order, truncated); always the totals and what the keys do.
    fn footer(&self, paused: bool) -> Vec<String> {
        let mut lines = Vec::new();
        let t = self.totals();
        let totals = format!(
            "{} passed, {} failed, {} errors, {} skipped, {} to be run",
            t["passed"], t["failed"], t["errors"], t["skipped"], t["to_be_run"]
        );
        let filters = self.filters_text();
        let status = match &self.cycle {
            Some(cycle) => {
                let mut queue: Vec<&str> = cycle
                    .selection
                    .iter()
                    .filter(|s| !cycle.started.contains(&s.test) && !cycle.finished.contains(&s.test))
                    .map(|s| s.test.as_str())
                    .collect();
                if cycle.whole {
                    // pytest runs the whole suite by file, not in the selection's order.
                    queue.sort_unstable();
                }
                if let Some(line) = self.output.pending() {
                    // The line the cycle is writing: pytest's progress of the running file.
                    lines.push(line);
                }
                let running = cycle.current.as_deref().unwrap_or("(collecting)");
                lines.push(format!(
                    "{} {running}",
                    if paused { "paused:" } else { "running:" }
                ));
                if !queue.is_empty() {
                    lines.push(format!("queue ({}): {}", queue.len(), truncated(&queue, 8)));
                }
                let keys = if paused {
                    "r retry, s skip, c continue, q quit"
                } else {
                    "Enter rerun, a all, f failing, p file, t test, q quit"
                };
                format!("── cycle {}: {totals}{filters} ({keys})", cycle.number)
            }
            None => format!(
                "── {totals}; watching{filters} (Enter rerun, a all, f failing, p file, t test, q quit)"
            ),
        };
        lines.push(status);
        if let Some((kind, text)) = &self.prompt {
            let what = if *kind == 'p' {
                "file name contains"
            } else {
                "test name contains"
            };
            lines.push(format!("{what} (empty: any, Esc: cancel): {text}"));
        }
        lines
    }

    fn idle_line(&self) {
        if let Some(screen) = self.screen.borrow_mut().as_mut() {
            // On a terminal the footer is the status line.
            screen.set_footer(self.footer(false));
            return;
        }
        let t = self.totals();
        let filters = self.filters_text();
        self.say(&format!(
            "── {} passed, {} failed, {} errors, {} skipped; watching{filters} (Enter rerun, a all, f failing, p file, t test, q quit)",
            t["passed"], t["failed"], t["errors"], t["skipped"]
        ));
    }

    fn cycle_lines(&mut self) -> Result<(), WatchRunError> {
        let Some(cycle) = self.cycle.as_mut() else {
            return Ok(());
        };
        let lines = cycle.tail.lines();
        for line in lines {
            match line {
                Line::Start(test) => {
                    let cycle = self.cycle.as_mut().expect("running");
                    cycle.started.insert(test.clone());
                    cycle.current = Some(test.clone());
                    let why = cycle
                        .selection
                        .iter()
                        .find(|s| {
                            is_instance_of(&test, &s.test)
                                || test.starts_with(&format!("{}::", s.test))
                        })
                        .map_or_else(|| cycle.default_why.clone(), |s| s.why.clone());
                    let file = test.split("::").next().unwrap_or("").to_string();
                    self.emit(
                        "test_start",
                        json!({"test": test, "file": file, "why": why}),
                    );
                }
                Line::Finish(finished) => {
                    let (row, deps) = test_rows(
                        &finished,
                        &self.opts.rootdir,
                        &mut self.current,
                        &mut self.resolver,
                    );
                    self.db.record(&row, &deps)?;
                    let cycle = self.cycle.as_mut().expect("running");
                    cycle.finished.insert(finished.test.clone());
                    for key in cycle.selection.iter().filter(|s| {
                        is_instance_of(&finished.test, &s.test)
                            || finished.test.starts_with(&format!("{}::", s.test))
                    }) {
                        cycle.finished.insert(key.test.clone());
                    }
                    for w in &finished.writes {
                        cycle.writes.insert(PathBuf::from(w));
                        self.run_writes.insert(PathBuf::from(w), Instant::now());
                    }
                    let mut stored = row.clone();
                    stored.failures = self.known.get(&row.id).map_or(0, |r| r.failures)
                        + i64::from(matches!(row.outcome.as_str(), "failed" | "error"));
                    self.known.insert(row.id.clone(), stored);
                    let _ = self.db.clear_collect_error(&finished.file);
                    self.emit(
                        "test_finish",
                        json!({"test": finished.test, "file": finished.file, "outcome": finished.outcome,
                               "report": finished.report, "duration": finished.duration}),
                    );
                    let totals = self.totals();
                    self.emit("totals", totals);
                }
                Line::NotFound(gone) => {
                    // Renamed or removed since recorded (or no longer collected, as
                    // a TestCase turned mixin): forgotten; the cycle ran the rest.
                    for id in &gone {
                        self.known.remove(id);
                        self.db.forget(id)?;
                    }
                    let cycle = self.cycle.as_mut().expect("running");
                    cycle.finished.extend(gone.iter().cloned());
                    self.emit("not_found", json!({"tests": gone}));
                    let totals = self.totals();
                    self.emit("totals", totals);
                }
                Line::Collect(error) => {
                    let deps = collect_error_rows(
                        &error.collect_error,
                        &self.opts.rootdir,
                        &mut self.current,
                        &mut self.resolver,
                    );
                    self.db.record_collect_error(
                        &error.collect_error,
                        &error.missing,
                        &error.text,
                        &deps,
                    )?;
                    // Its tests did not run: forget their outcomes so totals do not count them twice.
                    let file = error.collect_error.clone();
                    let gone: Vec<String> = self
                        .known
                        .values()
                        .filter(|r| r.file == file)
                        .map(|r| r.id.clone())
                        .collect();
                    for id in gone {
                        self.known.remove(&id);
                        let _ = self.db.forget(&id);
                    }
                    self.emit(
                        "collection_error",
                        json!({"file": file, "missing": error.missing, "text": error.text}),
                    );
                    let totals = self.totals();
                    self.emit("totals", totals);
                }
            }
        }
        Ok(())
    }

    fn finish_cycle(&mut self, status: std::process::ExitStatus) -> Result<(), WatchRunError> {
        self.cycle_lines()?;
        // The cycle's last lines print before its summary, under its own
        // footer (a worker that outlives it and keeps the pipe open is not
        // waited for long).
        let readers = std::mem::take(&mut self.cycle.as_mut().expect("running").readers);
        let until = Instant::now() + Duration::from_secs(2);
        while readers.iter().any(|r| !r.is_finished()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.print_output(true);
        let cycle = self.cycle.take().expect("running");
        if !self.after_cycle.is_empty() {
            self.pending.extend(std::mem::take(&mut self.after_cycle));
            self.trigger.get_or_insert(Trigger::Changes);
        }
        if cycle.killed {
            // Not yet run (or cut short): part of the next cycle.
            for s in &cycle.selection {
                if !cycle.finished.contains(&s.test) {
                    self.carry.push(s.clone());
                }
            }
        }
        let mut failing_after: BTreeMap<String, usize> = BTreeMap::new();
        for row in self.known.values() {
            if matches!(row.outcome.as_str(), "failed" | "error") {
                *failing_after.entry(row.file.clone()).or_insert(0) += 1;
            }
        }
        let ran_files: BTreeSet<String> = cycle
            .finished
            .iter()
            .map(|t| t.split("::").next().unwrap_or(t).to_string())
            .collect();
        for (file, before) in &cycle.failing_before {
            if ran_files.contains(file) {
                let after = failing_after.get(file).copied().unwrap_or(0);
                self.emit(
                    "rerun_of_failing_file",
                    json!({"file": file, "previous_failures": before, "failures": after}),
                );
            }
        }
        let totals = self.totals();
        let failures =
            totals["failed"].as_u64().unwrap_or(0) + totals["errors"].as_u64().unwrap_or(0);
        self.emit(
            "cycle_end",
            json!({"cycle": cycle.number, "exit_code": status.code(), "interrupted": cycle.killed, "totals": totals}),
        );
        let code = status.code();
        if matches!(code, Some(3) | Some(4)) && !cycle.killed {
            self.say(&format!(
                "stepkernel watch: cycle {} could not run its tests (exit code {}); see above",
                cycle.number,
                code.unwrap_or(-1)
            ));
        }
        let ran = !cycle.finished.is_empty() && matches!(code, Some(0) | Some(1));
        if failures == 0 && ran && (self.had_failures || cycle.number == 1) && !cycle.killed {
            self.emit("all_green", json!({"cycle": cycle.number}));
            if self.had_failures {
                self.say("── all green");
            }
        }
        self.had_failures = failures > 0;
        if !cycle.killed {
            self.failures_summary(&ran_files);
            self.idle_line();
        }
        Ok(())
    }

    fn paused(&self) -> bool {
        let Some(cycle) = &self.cycle else {
            return false;
        };
        session::session_dir::SessionMeta::load(&cycle.dir).is_some_and(|m| m.state == "paused")
    }

    /// Which changed paths are real changes: not ignored, not the run's own
    /// writes, and with a content different from the last seen.
    fn accept(&mut self, paths: Vec<PathBuf>, fs: &mut FsWatch) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let grace = Duration::from_secs(2);
        self.run_writes
            .retain(|_, when| when.elapsed() < grace || self.cycle.is_some());
        let mut queue: std::collections::VecDeque<PathBuf> = paths.into();
        while let Some(path) = queue.pop_front() {
            if !path.starts_with(&self.opts.rootdir) || self.ignore.ignored(&path) {
                continue;
            }
            if path.is_dir() {
                // A new directory: what was written into it before its watch began
                // sent no event (a `git checkout` makes a directory and its files at once).
                if fs.add_dir(&path).unwrap_or(false) {
                    if let Ok(entries) = std::fs::read_dir(&path) {
                        queue.extend(entries.filter_map(Result::ok).map(|e| e.path()));
                    }
                }
                continue;
            }
            if self.run_writes.contains_key(&path)
                || self
                    .cycle
                    .as_ref()
                    .is_some_and(|c| c.writes.contains(&path))
            {
                continue;
            }
            let bytes = std::fs::read(&path).ok();
            let hash = bytes.as_deref().map(select::content_hash);
            if let Some((when, old, new)) = self.suppress.get(&path) {
                if when.elapsed() < Duration::from_secs(3) && (hash == *old || hash == *new) {
                    continue;
                }
            }
            if let Some(bytes) = bytes.filter(|_| path.extension().is_some_and(|e| e == "py")) {
                self.sources.insert(path.clone(), bytes);
            }
            if self.hashes.get(&path) == Some(&hash) {
                continue;
            }
            self.hashes.insert(path.clone(), hash);
            out.push(path);
        }
        out
    }

    /// The project's Python files, as the first cycle will load them.
    fn read_sources(&mut self) {
        let walker = walkdir::WalkDir::new(&self.opts.rootdir)
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !self.ignore.ignored(e.path()));
        for entry in walker.filter_map(Result::ok) {
            let path = entry.path();
            if entry.file_type().is_file() && path.extension().is_some_and(|e| e == "py") {
                if let Ok(bytes) = std::fs::read(path) {
                    self.sources.insert(path.to_path_buf(), bytes);
                }
            }
        }
    }

    /// Saves while a test is paused: the functions they changed go into the
    /// live process through `%%edit` (journaled as the user's edit of the
    /// file), then the paused step is retried. A change no function swap can
    /// apply waits for the pause to end.
    fn hot_reload(&mut self) {
        let fresh: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|p| !self.reload_tried.contains(*p))
            .cloned()
            .collect();
        if fresh.is_empty() {
            return;
        }
        self.reload_tried.extend(fresh.iter().cloned());
        let Some(cycle) = &self.cycle else { return };
        let connection = cycle.dir.join("connection.json");
        let dir = cycle.dir.clone();
        let mut edits: Vec<(PathBuf, String, String)> = Vec::new();
        for path in self.pending.clone() {
            let rel_path = rel(&self.opts.rootdir, &path);
            let new = std::fs::read(&path).unwrap_or_default();
            let why = if path.extension().is_none_or(|e| e != "py") {
                Some("not a Python file".to_string())
            } else {
                match self.cycle_sources.get(&path) {
                    None => Some("not loaded by this cycle".to_string()),
                    Some(old) => match crate::hot_reload::plan(old, &new) {
                        crate::hot_reload::Plan::Functions(functions) => {
                            for (qualname, source) in functions {
                                edits.push((path.clone(), qualname, source));
                            }
                            None
                        }
                        crate::hot_reload::Plan::Nothing => None,
                        crate::hot_reload::Plan::NotReloadable(why) => Some(why),
                    },
                }
            };
            if let Some(why) = why {
                self.say(&format!(
                    "── {rel_path}: {why}; not hot-reloaded (it reruns when the pause ends)"
                ));
                return;
            }
        }
        if edits.is_empty() {
            return;
        }
        let mut done = Vec::new();
        let files: BTreeSet<PathBuf> = edits.iter().map(|(p, _, _)| p.clone()).collect();
        for file in files {
            // The session journals an edit against the file as it reads it at
            // the first edit: for that moment the file is as the test loaded it,
            // so the patch is the save. Then the save is put back.
            let saved = std::fs::read(&file).unwrap_or_default();
            let loaded = self.cycle_sources.get(&file).cloned().unwrap_or_default();
            self.suppress.insert(
                file.clone(),
                (
                    Instant::now(),
                    Some(select::content_hash(&loaded)),
                    Some(select::content_hash(&saved)),
                ),
            );
            // Should the watch die in between, the save is kept here.
            let backup = self
                .opts
                .session_dir
                .join("saved")
                .join(rel(&self.opts.rootdir, &file));
            let kept = backup
                .parent()
                .map(std::fs::create_dir_all)
                .is_some_and(|r| r.is_ok())
                && std::fs::write(&backup, &saved).is_ok();
            if !kept {
                self.say(&format!(
                    "── hot reload skipped: cannot keep a copy of your save in {}",
                    backup.display()
                ));
                return;
            }
            let _ = std::fs::write(&file, &loaded);
            let mut failed = None;
            for (_, qualname, source) in edits.iter().filter(|(p, _, _)| *p == file) {
                let target = format!("{}::{qualname}", rel(&self.opts.rootdir, &file));
                let cell = format!("%%edit {target}\n{source}\n");
                match crate::hot_reload::execute(&connection, &cell, Duration::from_secs(10)) {
                    Ok(()) => done.push(target),
                    Err(why) => {
                        failed = Some(format!("{target}: {why}"));
                        break;
                    }
                }
            }
            if std::fs::write(&file, &saved).is_ok() {
                let _ = std::fs::remove_file(&backup);
            } else {
                self.say(&format!(
                    "── cannot put your save back into {}: it is in {}",
                    rel(&self.opts.rootdir, &file),
                    backup.display()
                ));
            }
            if let Some(why) = failed {
                self.say(&format!("── hot reload refused: {why}"));
                self.emit("hot_reload", json!({"functions": done, "error": why}));
                return;
            }
        }
        for (path, _, _) in &edits {
            if let Ok(bytes) = std::fs::read(path) {
                self.cycle_sources.insert(path.clone(), bytes);
            }
        }
        let moved: Vec<PathBuf> = std::mem::take(&mut self.pending).into_iter().collect();
        self.after_cycle.extend(moved);
        self.trigger = None;
        self.say(&format!(
            "── hot-reloaded {} into the paused test; its step runs again and the test goes on",
            done.join(", ")
        ));
        // `continue` reruns the failed step (with the new code) and runs on; a
        // step that still fails pauses again.
        let resumed = control::forward(&dir, "continue", &[]);
        self.emit(
            "hot_reload",
            json!({"functions": done, "resumed": resumed.is_ok()}),
        );
    }

    fn syntax_errors(&mut self, changed: &[PathBuf]) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        // Files as they are now (the parse is kept for the selection that follows).
        self.current.clear();
        for path in changed
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "py"))
        {
            let syntax_error = self
                .current
                .file(path)
                .and_then(|f| f.blocks.as_ref())
                .is_some_and(|b| b.syntax_error);
            if !syntax_error {
                continue;
            }
            // tree-sitter is lenient in places; Python's own parser decides and words the error.
            let output = Command::new(&self.opts.python)
                .args(["-c", "import sys\nsrc = open(sys.argv[1], 'rb').read()\ntry:\n    compile(src, sys.argv[1], 'exec')\nexcept SyntaxError as e:\n    import traceback\n    print(''.join(traceback.format_exception_only(type(e), e)), end='')\n    sys.exit(1)\n"])
                .arg(path)
                .output();
            if let Ok(out) = output {
                if !out.status.success() {
                    errors.push((
                        rel(&self.opts.rootdir, path),
                        String::from_utf8_lossy(&out.stdout).into_owned(),
                    ));
                }
            }
        }
        errors
    }

    fn handle_request(&mut self, request: Request) {
        let verb = request.verb.as_str();
        let result = match verb {
            "changed" => {
                if request.args.is_empty() {
                    Err(("bad_args".into(), "usage: changed PATH...".into()))
                } else {
                    let paths: Vec<PathBuf> = request
                        .args
                        .iter()
                        .map(|p| {
                            let p = Path::new(p);
                            if p.is_absolute() { p.to_path_buf() } else { self.opts.rootdir.join(p) }
                        })
                        .collect();
                    for p in &paths {
                        self.hashes.remove(p);
                    }
                    self.announce(&paths);
                    self.pending.extend(paths.iter().cloned());
                    self.trigger.get_or_insert(Trigger::Changes);
                    Ok(json!({"paths": paths.iter().map(|p| rel(&self.opts.rootdir, p)).collect::<Vec<_>>()}))
                }
            }
            "rerun" => {
                self.trigger = Some(Trigger::Rerun);
                Ok(json!({"queued": "rerun"}))
            }
            "all" => {
                self.trigger = Some(Trigger::All);
                Ok(json!({"queued": "all"}))
            }
            "failing" => {
                let on = match request.args.first().map(String::as_str) {
                    None => Ok(!self.failing_only),
                    Some("on") => Ok(true),
                    Some("off") => Ok(false),
                    Some(other) => Err(("bad_args".to_string(), format!("usage: failing [on|off], not {other:?}"))),
                };
                on.map(|on| {
                    self.failing_only = on;
                    if on {
                        self.trigger = Some(Trigger::Rerun);
                    }
                    json!({"failing_only": on})
                })
            }
            "filter" => match request.args.first().map(String::as_str) {
                Some(kind @ ("file" | "test")) => {
                    let text = request.args.get(1).cloned().filter(|t| !t.is_empty());
                    if kind == "file" {
                        self.file_filter = text.clone();
                    } else {
                        self.test_filter = text.clone();
                    }
                    Ok(json!({"filter": kind, "text": text}))
                }
                _ => Err(("bad_args".into(), "usage: filter file|test [TEXT]".into())),
            },
            "watch" => Ok(self.state()),
            "quit" => {
                self.quit = true;
                Ok(json!({"quitting": true}))
            }
            "help" => {
                let mut verbs: Vec<Value> = control::WATCH_VERBS.iter().map(|(v, d)| json!({"verb": v, "does": d})).collect();
                verbs.push(json!({"verb": "(others)", "does": "sent to the running cycle's session: status, retry, skip, continue, ..."}));
                Ok(json!({"verbs": verbs}))
            }
            _ => match &self.cycle {
                Some(cycle) => control::forward(&cycle.dir, verb, &request.args),
                None => Err(("state".into(), format!("no cycle is running; {verb:?} needs one (watch verbs: changed, rerun, all, failing, filter, watch, quit)"))),
            },
        };
        let _ = request.reply.send(result);
    }

    /// The `change` event and line, when a change is seen (it may run later: a cycle is busy).
    fn announce(&mut self, paths: &[PathBuf]) {
        let paths: Vec<String> = paths.iter().map(|p| rel(&self.opts.rootdir, p)).collect();
        self.emit("change", json!({"paths": paths}));
        self.say(&format!("── change: {}", paths.join(", ")));
    }

    fn state(&self) -> Value {
        json!({
            "cycle": self.cycles,
            "running": self.cycle.is_some(),
            "paused": self.paused(),
            "queue": self.cycle.as_ref().map(|c| c.selection.iter().filter(|s| !c.started.contains(&s.test)).map(|s| s.test.clone()).collect::<Vec<_>>()).unwrap_or_default(),
            "pending_changes": self.pending.iter().map(|p| rel(&self.opts.rootdir, p)).collect::<Vec<_>>(),
            "totals": self.totals(),
            "failing_only": self.failing_only,
            "file_filter": self.file_filter,
            "test_filter": self.test_filter,
        })
    }

    fn handle_key(&mut self, key: Key) {
        if let Some((kind, mut text)) = self.prompt.take() {
            match key {
                Key::Enter => {
                    let text = Some(text).filter(|t| !t.is_empty());
                    if kind == 'p' {
                        self.file_filter = text;
                    } else {
                        self.test_filter = text;
                    }
                    self.trigger = Some(Trigger::Rerun);
                }
                Key::Esc => {}
                Key::Interrupt => self.quit = true,
                Key::Resize => {
                    self.prompt = Some((kind, text));
                    if let Some(screen) = self.screen.borrow_mut().as_mut() {
                        screen.redraw();
                    }
                }
                Key::Backspace => {
                    text.pop();
                    self.prompt = Some((kind, text));
                }
                Key::Char(c) => {
                    text.push(c);
                    self.prompt = Some((kind, text));
                }
            }
            return;
        }
        match key {
            Key::Interrupt => self.quit = true,
            Key::Resize => {
                if let Some(screen) = self.screen.borrow_mut().as_mut() {
                    screen.redraw();
                }
            }
            Key::Char(c @ ('p' | 't')) => self.prompt = Some((c, String::new())),
            Key::Enter => self.trigger = Some(Trigger::Rerun),
            Key::Char('a') => self.trigger = Some(Trigger::All),
            Key::Char('f') => {
                self.failing_only = !self.failing_only;
                self.say(&format!(
                    "── failing tests only: {}",
                    if self.failing_only { "on" } else { "off" }
                ));
                if self.failing_only {
                    self.trigger = Some(Trigger::Rerun);
                } else {
                    self.idle_line();
                }
            }
            Key::Char('q') => self.quit = true,
            Key::Char(c @ ('r' | 's' | 'c')) => {
                let verb = match c {
                    'r' => "retry",
                    's' => "skip",
                    _ => "continue",
                };
                match &self.cycle {
                    Some(cycle) if self.paused() => {
                        if let Err((_, message)) = control::forward(&cycle.dir, verb, &[]) {
                            self.say(&format!("stepkernel watch: {verb}: {message}"));
                        }
                    }
                    _ => self.say(&format!(
                        "stepkernel watch: `{c}` ({verb}) works while a test is paused"
                    )),
                }
            }
            Key::Char(_) | Key::Backspace | Key::Esc => {}
        }
    }

    /// Starts the pre-imported worker cycles fork from (unless `--no-fork`).
    fn start_zygote(&mut self) {
        let Some(package_dir) = self.opts.fork_from.clone() else {
            self.say("stepkernel watch: --no-fork: every cycle starts Python afresh");
            self.emit("zygote", json!({"state": "off", "reason": "--no-fork"}));
            return;
        };
        match Zygote::start(
            &self.opts.python,
            &package_dir,
            &self.opts.rootdir,
            &self.opts.session_dir,
        ) {
            Ok(zygote) => {
                self.emit("zygote", json!({"state": "started", "pid": zygote.pid()}));
                self.zygote = Some(zygote);
            }
            Err(err) => {
                self.say(&format!("stepkernel watch: no pre-imported worker ({err}); every cycle starts Python afresh"));
                self.emit("zygote", json!({"state": "off", "reason": err.to_string()}));
            }
        }
    }

    /// Says when the pre-imported worker was replaced or gave up.
    fn poll_zygote(&mut self) {
        let Some(change) = self.zygote.as_mut().and_then(Zygote::poll) else {
            return;
        };
        let pid = self.zygote.as_ref().and_then(Zygote::pid);
        match change {
            Change::Ready(seconds) => {
                self.emit(
                    "zygote",
                    json!({"state": "ready", "pid": pid, "seconds": seconds}),
                );
            }
            Change::Restarted(why) => {
                self.say(&format!(
                    "stepkernel watch: the pre-imported worker is started again ({why})"
                ));
                self.emit(
                    "zygote",
                    json!({"state": "restarted", "reason": why, "pid": pid}),
                );
            }
            Change::Off(why) => {
                self.say(&format!("stepkernel watch: no pre-imported worker ({why}); every cycle starts Python afresh"));
                self.emit("zygote", json!({"state": "off", "reason": why}));
            }
        }
    }

    fn kill_cycle(&mut self) {
        if let Some(cycle) = self.cycle.as_mut() {
            if !cycle.killed {
                cycle.killed = true;
                // SIGTERM ends a run like Ctrl-C: the worker is torn down, the report written.
                // SAFETY: kill(2) on our own child's pid.
                unsafe {
                    libc::kill(cycle.child.id() as i32, libc::SIGTERM);
                }
            }
        }
    }

    /// Runs until `q`, `quit` or a signal.
    pub fn run(
        mut self,
        interrupted: &std::sync::atomic::AtomicBool,
    ) -> Result<i32, WatchRunError> {
        let (fs_tx, fs_rx) = channel();
        let mut fs = FsWatch::start(
            &self.opts.rootdir,
            &self.ignore,
            self.opts.poll,
            self.opts.debounce,
            fs_tx,
        )?;
        let (ctl_tx, ctl_rx) = channel();
        self.read_sources();
        let socket = control::start(&self.opts.session_dir, ctl_tx)
            .map_err(io("cannot listen on the control socket"))?;
        if self.opts.tui {
            let screen = Screen::enter().map_err(io("cannot set up the terminal"))?;
            *self.screen.borrow_mut() = Some(screen);
        }
        let keys: Option<Receiver<Key>> = self.opts.tui.then(crate::keys::start);
        self.say(&format!(
            "stepkernel watch: watching {} ({}); control socket {}",
            self.opts.rootdir.display(),
            fs.mode(),
            socket.display()
        ));
        if let Some(note) = &fs.fell_back {
            self.say(&format!("stepkernel watch: {note}"));
        }
        self.emit(
            "watch_start",
            json!({"rootdir": self.opts.rootdir.display().to_string(), "mode": fs.mode(), "socket": socket.display().to_string(),
                   "db": self.opts.db_path.display().to_string(), "fallback": fs.fell_back}),
        );
        self.start_zygote();
        let (tests, whole) = self.selection(&Trigger::Rerun, &[])?;
        self.start_cycle(tests, whole, &[])?;
        let mut fell_back_said = fs.fell_back.is_some();
        let mut woken: Vec<Vec<PathBuf>> = Vec::new();
        loop {
            if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
                self.quit = true;
            }
            if self.quit {
                self.kill_cycle();
                if let Some(mut cycle) = self.cycle.take() {
                    let _ = cycle.child.wait();
                }
                if let Some(mut zygote) = self.zygote.take() {
                    zygote.stop();
                }
                self.emit("watch_end", json!({}));
                self.print_output(true);
                if let Some(mut screen) = self.screen.borrow_mut().take() {
                    screen.leave();
                }
                if let Ok(target) = std::fs::read_link(&socket) {
                    let _ = std::fs::remove_file(target);
                }
                let _ = std::fs::remove_file(&socket);
                return Ok(0);
            }
            let mut batch = std::mem::take(&mut woken);
            batch.extend(fs_rx.try_iter());
            for paths in batch {
                let accepted = self.accept(paths, &mut fs);
                if !accepted.is_empty() {
                    self.announce(&accepted);
                    self.pending.extend(accepted);
                    self.trigger.get_or_insert(Trigger::Changes);
                }
            }
            if !fell_back_said {
                if let Some(note) = &fs.fell_back {
                    self.say(&format!("stepkernel watch: {note}"));
                    fell_back_said = true;
                }
            }
            while let Ok(request) = ctl_rx.try_recv() {
                self.handle_request(request);
            }
            self.poll_zygote();
            if let Some(keys) = &keys {
                let pressed: Vec<Key> = keys.try_iter().collect();
                for key in pressed {
                    self.handle_key(key);
                }
            }
            if self.cycle.is_some() {
                self.cycle_lines()?;
                let status = self
                    .cycle
                    .as_mut()
                    .and_then(|c| c.child.try_wait().ok().flatten());
                if let Some(status) = status {
                    self.finish_cycle(status)?;
                }
            }
            if let Some(trigger) = self.trigger.clone() {
                if self.cycle.is_some() {
                    match self.opts.on_busy {
                        _ if self.paused() => self.hot_reload(),
                        OnBusy::Restart => self.kill_cycle(),
                        // `wait` ignores file changes made during a cycle; keys and verbs
                        // (Enter, a, f, ...) still run after it.
                        OnBusy::Wait if trigger == Trigger::Changes => {
                            self.pending.clear();
                            self.trigger = None;
                        }
                        _ => {}
                    }
                } else {
                    self.trigger = None;
                    let changed: Vec<PathBuf> =
                        std::mem::take(&mut self.pending).into_iter().collect();
                    let errors = self.syntax_errors(&changed);
                    if !errors.is_empty() {
                        for (file, text) in &errors {
                            self.emit("collection_error", json!({"file": file, "text": text}));
                            self.say(&format!(
                                "── {file} does not compile; nothing runs until it does:\n{text}"
                            ));
                        }
                        // Kept: the next good save reruns what these changes affect.
                        self.pending.extend(changed);
                        continue;
                    }
                    let (tests, whole) = self.selection(&trigger, &changed)?;
                    self.start_cycle(tests, whole, &changed)?;
                }
            }
            // After the trigger: a cycle it starts is in this footer, not an idle one in between.
            if self.screen.borrow().is_some() {
                self.print_output(false);
                let footer = self.footer(self.paused());
                if let Some(screen) = self.screen.borrow_mut().as_mut() {
                    screen.set_footer(footer);
                }
            }
            // A change wakes the loop at once; while a cycle runs, its results
            // are looked at every few milliseconds (the first one is the latency).
            let wait = if self.cycle.is_some() {
                CYCLE_POLL
            } else {
                IDLE_POLL
            };
            if let Ok(paths) = fs_rx.recv_timeout(wait) {
                woken.push(paths);
            }
        }
    }
}

/// Test files whose imports are read ahead of a cycle's results, at most.
const WARM_FILES_MAX: usize = 64;

/// How often the loop looks at a running cycle's results.
const CYCLE_POLL: Duration = Duration::from_millis(5);
/// How long the idle loop waits for a change before it looks at keys and requests.
const IDLE_POLL: Duration = Duration::from_millis(20);
