//! The kernel's [`SessionHooks`] for `stepkernel run`: instrumenter, journal,
//! events, report and terminal, all behind one lock.

use crate::patches;
use crate::report::Report;
use crate::session_dir::SessionMeta;
use crate::status::LiveStatus;
use crate::step_store::StepStore;
use crate::steps_reply::StepsReply;
use crate::terminal::Terminal;
use instrumenter::{FileReport, Options};
use kernel::session::{AfterRun, MagicOutput, SessionHooks};
use kernel::worker::StreamName;
use patchgen::{Edit, Journal};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// How often, at most, session.json is rewritten only to count finished tests.
const META_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Fixed facts about a session.
pub struct SessionContext {
    /// Session id.
    pub id: String,
    /// Session directory.
    pub dir: PathBuf,
    /// Where tests run from.
    pub rootdir: PathBuf,
    /// Edits are journaled relative to this (git work tree, else rootdir).
    pub patch_root: PathBuf,
    /// The commit the session started from.
    pub base_revision: Option<String>,
    /// Lines telling how to attach.
    pub attach: Vec<String>,
    /// Let clients' shutdown_request end the session.
    pub allow_client_shutdown: bool,
    /// A notebook kernel (`%test`): no terminal, the kernel outlives each run.
    pub notebook: bool,
    /// Instrumenter options (step marker).
    pub options: Options,
    /// Connection file copies to remove at the end.
    pub copies: Vec<PathBuf>,
    /// What the kernel does when the run is over (`--on-error fail`, `--linger`).
    pub after_run: AfterRun,
    /// The copy jupyter_server lists: its `kernel_name` tells what the session runs (see kernel_label).
    pub listed_copy: Option<PathBuf>,
}

struct Inner {
    terminal: Terminal,
    report: Report,
    /// events.jsonl, written out when the kernel's queue drains (see `flush`).
    events: Option<std::io::BufWriter<std::fs::File>>,
    journal: Option<Journal>,
    /// File contents as first loaded: edits are hashed and checked against these.
    originals: HashMap<PathBuf, String>,
    /// Files loaded since their report was made (or never reported): their latest bytes.
    unreported: HashMap<PathBuf, Vec<u8>>,
    /// Instrumenter reports by absolute path, made when first needed.
    reports: HashMap<PathBuf, FileReport>,
    last_pause: Option<Value>,
    meta: SessionMeta,
    /// When session.json was last written for a finished test.
    meta_saved: Instant,
    applied: bool,
    /// The patch `%patch` last wrote, if no edit came after it.
    exported: Option<PathBuf>,
    /// The runner's exit code once the run is over.
    run_code: Option<i32>,
    exit_code: Option<i32>,
    /// What the control socket's `status` answers.
    live: LiveStatus,
    /// Woken when events.jsonl was written out (control socket followers).
    events_written: Arc<tokio::sync::Notify>,
    /// xdist workers paused now (worker -> where), see `worker_paused`.
    paused_workers: std::collections::BTreeMap<String, String>,
    /// A worker's `collected` reached the terminal (each worker collects the whole run).
    workers_collected: bool,
}

impl Inner {
    /// Writes out the buffered lines of events.jsonl.
    fn flush_events(&mut self) {
        if let Some(file) = self.events.as_mut() {
            // Followers are woken only by new lines: each of them flushes too,
            // and waking the others on an empty flush would keep them spinning.
            if !file.buffer().is_empty() {
                let _ = file.flush();
                self.events_written.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
impl SessionContext {
    /// A notebook-mode context for unit tests: session files in `dir`, the project in `project`.
    pub(crate) fn for_tests(dir: &Path, project: &Path) -> SessionContext {
        SessionContext {
            id: "s".into(),
            dir: dir.to_path_buf(),
            rootdir: project.to_path_buf(),
            patch_root: project.to_path_buf(),
            base_revision: None,
            attach: Vec::new(),
            allow_client_shutdown: false,
            notebook: true,
            options: instrumenter::Options::default(),
            copies: Vec::new(),
            after_run: kernel::session::AfterRun::Serve,
            listed_copy: None,
        }
    }
}

/// A test file in the prefetch's list: instrumented ahead of need, or asked for first.
enum Prefetch {
    /// Being instrumented by the prefetch: an asker waits for it rather than
    /// parsing the file a second time (cold, parsing is most of the kernel's work).
    Working,
    /// Instrumented ahead of need: the bytes seen and the report.
    Ready(Vec<u8>, FileReport),
    /// Its report was asked for before the prefetch reached it (and made
    /// then): the prefetch skips it, rather than instrumenting it again.
    Claimed,
}

/// Hooks for one `stepkernel run` session.
pub struct RunHooks {
    ctx: SessionContext,
    started: Instant,
    inner: Mutex<Inner>,
    /// Reports instrumented ahead of need, and files asked for first.
    prefetched: Mutex<HashMap<PathBuf, Prefetch>>,
    /// Signalled when a `Prefetch::Working` entry is done.
    prefetch_done: Condvar,
    /// Copies of edited files as loaded (see `patches::loaded_dir`).
    loaded_dir: PathBuf,
    /// Where journal.jsonl is (the session directory; an xdist worker's
    /// hooks share the session's, see `share_journal`).
    journal_dir: PathBuf,
    /// The run's shared reports (a local xdist worker's kernel; see `share_steps`).
    store: Option<Arc<StepStore>>,
    /// The project's reports kept from run to run (`keep_reports`).
    kept: Option<StepStore>,
}

impl RunHooks {
    /// Sets up the hooks; `meta` is the session.json to keep up to date.
    pub fn new(ctx: SessionContext, meta: SessionMeta, quiet: bool) -> RunHooks {
        let events = kernel::private_files::open_append(&ctx.dir.join("events.jsonl"))
            .ok()
            .map(|file| std::io::BufWriter::with_capacity(1 << 16, file));
        RunHooks {
            inner: Mutex::new(Inner {
                terminal: Terminal::new(quiet),
                report: Report::default(),
                events,
                journal: None,
                originals: HashMap::new(),
                unreported: HashMap::new(),
                reports: HashMap::new(),
                last_pause: None,
                meta,
                meta_saved: Instant::now(),
                applied: false,
                exported: None,
                run_code: None,
                exit_code: None,
                live: LiveStatus::default(),
                events_written: Arc::new(tokio::sync::Notify::new()),
                paused_workers: Default::default(),
                workers_collected: false,
            }),
            started: Instant::now(),
            prefetched: Mutex::new(HashMap::new()),
            prefetch_done: Condvar::new(),
            loaded_dir: crate::patches::loaded_dir(&ctx.dir),
            journal_dir: ctx.dir.clone(),
            store: None,
            kept: None,
            ctx,
        }
    }

    /// Reads and keeps the instrumenter's reports in `store` (the project's
    /// `.stepkernel/step-reports/`), so a file seen before with the same bytes is not parsed again.
    pub fn keep_reports(mut self, store: StepStore) -> RunHooks {
        self.kept = Some(store);
        self
    }

    /// Takes reports from the run's shared store, making (and storing) only
    /// those not there yet (a local xdist worker's kernel: see step_store.rs).
    pub fn share_steps(mut self, store: Arc<StepStore>) -> RunHooks {
        self.store = Some(store);
        self
    }

    /// Journals edits in `dir` (an xdist worker's hooks: the session's
    /// directory, one journal for every worker of the run).
    pub fn share_journal(mut self, dir: &Path) -> RunHooks {
        self.journal_dir = dir.to_path_buf();
        self.loaded_dir = crate::patches::loaded_dir(dir);
        self
    }

    /// The source of the step `info` pauses at (None when not known).
    pub fn paused_source(&self, info: &Value) -> Option<String> {
        self.step_source(&mut self.lock(), info)
    }

    /// An event of xdist worker `worker`, relayed by its kernel: into
    /// events.jsonl (with `worker`), the report, the status and the terminal.
    pub fn worker_event(&self, worker: &str, event: &Value) {
        let mut event = event.clone();
        event["worker"] = json!(worker);
        let kind = event.get("event").and_then(Value::as_str).unwrap_or("");
        let only_logged = match kind {
            // The controller's run has its own start and summary.
            "session_start" | "summary" | "queue_ready" => true,
            "collected" => std::mem::replace(&mut self.lock().workers_collected, true),
            _ => false,
        };
        if only_logged {
            event["session"] = json!(self.ctx.id);
            event["timestamp"] = json!(patchgen::now_rfc3339());
            let mut inner = self.lock();
            if let Some(file) = inner.events.as_mut() {
                let mut line = serde_json::to_vec(&event).expect("serializes");
                line.push(b'\n');
                let _ = file.write_all(&line);
            }
            return;
        }
        let resumed = kind == "resume";
        self.on_event(event);
        if resumed {
            let mut inner = self.lock();
            inner.paused_workers.remove(worker);
            // Another worker may still be paused.
            if let Some((other, at)) = inner.paused_workers.iter().next() {
                let at = format!("{other}: {at}");
                inner.meta.state = "paused".into();
                inner.meta.paused_at = Some(at);
                self.save_meta(&inner);
            }
        }
    }

    /// xdist worker `worker` paused (relayed by its kernel): the banner
    /// with its attach lines, the session's state.
    pub fn worker_paused(
        &self,
        worker: &str,
        info: &Value,
        source: Option<&str>,
        attach: &[String],
    ) {
        let mut info = info.clone();
        info["worker"] = json!(worker);
        let mut inner = self.lock();
        inner.flush_events();
        inner.last_pause = Some(info.clone());
        inner.report.add_pause_info(&info);
        inner.live.set_paused(&info);
        inner.terminal.paused(&info, source, attach);
        let get = |k: &str| {
            info.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let at = format!(
            "{}::{} step {}",
            get("test"),
            get("phase"),
            info.get("step").cloned().unwrap_or(Value::Null)
        );
        inner.paused_workers.insert(worker.to_string(), at.clone());
        inner.meta.state = "paused".into();
        inner.meta.paused_at = Some(format!("{worker}: {at}"));
        self.save_meta(&inner);
    }

    /// A client of an xdist worker ran `%patch` (wrote `path`) or `%apply`
    /// (`path` None): the session's edits are exported.
    pub fn worker_exported(&self, path: Option<PathBuf>) {
        let mut inner = self.lock();
        match path {
            Some(path) => inner.exported = Some(path),
            None => inner.applied = true,
        }
    }

    /// An xdist worker journaled an edit (in this session's journal).
    pub fn worker_edit(&self) {
        let mut inner = self.lock();
        inner.meta.edits += 1;
        inner.applied = false;
        inner.exported = None;
        self.save_meta(&inner);
    }

    /// Records `abs` as loaded with content `bytes`: the first content is what
    /// edits are checked against; the latest is what a report describes.
    /// Instrumenting waits until a report is asked for (a pause, a worker's
    /// `need_steps`): a run whose tests pass never needs one.
    fn record_file(&self, inner: &mut Inner, abs: PathBuf, bytes: Vec<u8>) {
        if !inner.originals.contains_key(&abs) {
            if let Ok(text) = std::str::from_utf8(&bytes) {
                inner.originals.insert(abs.clone(), text.to_string());
            }
        }
        inner.unreported.insert(abs, bytes);
    }

    /// The instrumenter's report of `abs` as last loaded (prefetched when it
    /// can be), made when first asked for.
    fn report_of<'a>(&self, inner: &'a mut Inner, abs: &Path) -> Option<&'a FileReport> {
        if let Some(bytes) = inner.unreported.remove(abs) {
            let mut prefetched = self.prefetched.lock().unwrap_or_else(|e| e.into_inner());
            while matches!(prefetched.get(abs), Some(Prefetch::Working)) {
                prefetched = self
                    .prefetch_done
                    .wait(prefetched)
                    .unwrap_or_else(|e| e.into_inner());
            }
            let taken = prefetched.insert(abs.to_path_buf(), Prefetch::Claimed);
            drop(prefetched);
            let ready = match taken {
                Some(Prefetch::Ready(seen, value)) if seen == bytes => Some(value),
                _ => None,
            };
            let value = ready.unwrap_or_else(|| match &self.store {
                Some(store) => store.report(abs, &bytes, || self.instrument(abs, &bytes)),
                None => self.instrument(abs, &bytes),
            });
            inner.reports.insert(abs.to_path_buf(), value);
        }
        inner.reports.get(abs)
    }

    /// The instrumenter's report of `abs` (holding `bytes`).
    fn instrument(&self, abs: &Path, bytes: &[u8]) -> FileReport {
        let shown = abs
            .strip_prefix(&self.ctx.rootdir)
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_else(|_| abs.to_string_lossy().to_string());
        let make = || instrumenter::instrument_source(&shown, bytes, &self.ctx.options);
        match &self.kept {
            Some(kept) => kept.report(abs, bytes, make),
            None => make(),
        }
    }

    /// `path`'s report as the worker reads it, given to `reply`; a file
    /// that cannot be read gets a report naming the error, given to `missing`.
    fn with_steps_reply<T>(
        &self,
        path: &Path,
        reply: impl FnOnce(&StepsReply<'_>) -> T,
        missing: impl FnOnce(Value) -> T,
    ) -> T {
        let abs = path.to_path_buf();
        let bytes = match std::fs::read(&abs) {
            Ok(bytes) => bytes,
            Err(err) => {
                return missing(
                    json!({"path": path.to_string_lossy(), "error": {"message": err.to_string()}, "tests": [], "functions": []}),
                )
            }
        };
        let mut inner = self.lock();
        self.record_file(&mut inner, abs.clone(), bytes);
        match self.report_of(&mut inner, &abs) {
            Some(report) => reply(&StepsReply::of(report)),
            None => missing(json!({"path": path.to_string_lossy(), "tests": [], "functions": []})),
        }
    }

    /// Instruments `files` in the background, so the worker's `need_steps`
    /// finds them ready (it asks while running tests; this runs while it is
    /// still importing pytest), at the lowest priority.
    ///
    /// With `store`, into that store for the run's xdist workers' kernels
    /// (this session's own worker runs no test), at normal priority: every
    /// worker imports every collected file, so what is made here is needed
    /// (a file with a fresh stepped .pyc is skipped), and a kernel asking for
    /// the file in progress waits for it rather than making it again (see
    /// step_store.rs), which it must not do on a thread a busy machine starves.
    pub fn prefetch(self: &Arc<Self>, files: Vec<PathBuf>, store: Option<Arc<StepStore>>) {
        if files.is_empty() {
            return;
        }
        let hooks = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("stepkernel-prefetch".into())
            .spawn(move || {
                if store.is_none() {
                    lower_priority();
                }
                for file in files {
                    match &store {
                        Some(store) => hooks.prefetch_shared(store, &file),
                        None => hooks.prefetch_file(file),
                    };
                }
            });
        if let Err(err) = spawned {
            self.say(&format!("stepkernel: no prefetch thread: {err}"));
        }
    }

    /// Instruments `file` ahead of need unless its report was asked for
    /// already (a busy machine runs the idle-priority prefetch behind the
    /// worker: made on demand then, not again here); whether it did.
    fn prefetch_file(&self, file: PathBuf) -> bool {
        // A fresh stepped .pyc: pytest loads it from its cache, no report needed.
        if has_fresh_stepped_pyc(&file) {
            return false;
        }
        {
            let mut prefetched = self.prefetched.lock().unwrap_or_else(|e| e.into_inner());
            if prefetched.contains_key(&file) {
                return false;
            }
            prefetched.insert(file.clone(), Prefetch::Working);
        }
        // Whatever happens below (an unreadable file, a panic), the entry
        // stops being `Working` and waiters wake.
        let mut pending = PendingPrefetch {
            hooks: self,
            file: Some(file),
            done: None,
        };
        let file = pending.file.as_ref().expect("set above");
        if let Ok(bytes) = std::fs::read(file) {
            let value = self.instrument(file, &bytes);
            pending.done = Some(Prefetch::Ready(bytes, value));
        }
        let made = pending.done.is_some();
        drop(pending);
        made
    }

    /// Instruments `file` into the run's shared store unless a fresh stepped
    /// .pyc or the store has it, or a kernel is making it; whether it did.
    fn prefetch_shared(&self, store: &StepStore, file: &Path) -> bool {
        if has_fresh_stepped_pyc(file) {
            return false;
        }
        let Ok(bytes) = std::fs::read(file) else {
            return false;
        };
        store.prefetch(file, &bytes, || self.instrument(file, &bytes))
    }

    /// The exit code once the run ended.
    pub fn exit_code(&self) -> Option<i32> {
        self.lock().exit_code
    }

    /// The session's fixed facts.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The control socket's `status` answer.
    pub fn status(&self) -> Value {
        let inner = self.lock();
        let mut status = inner
            .live
            .to_json(&inner.meta, &self.ctx.dir, crate::status::now());
        if !inner.paused_workers.is_empty() {
            // Under xdist more than one worker may be paused at once.
            status["paused_workers"] = json!(inner.paused_workers);
        }
        status
    }

    /// Reads the live run state.
    pub fn with_live<R>(&self, read: impl FnOnce(&LiveStatus) -> R) -> R {
        read(&self.lock().live)
    }

    /// Records a `set on_error` the worker accepted (shown by `status`).
    pub fn note_on_error(&self, test: Option<&str>, mode: &str) {
        self.lock().live.set_on_error(test, mode);
    }

    /// Writes out buffered events now (before events.jsonl is read).
    pub fn flush_events(&self) {
        self.lock().flush_events();
    }

    /// Woken each time events.jsonl has been written out.
    pub fn events_written(&self) -> Arc<tokio::sync::Notify> {
        self.lock().events_written.clone()
    }

    /// Prints a line on the terminal (not in a notebook kernel: no one reads its stdout).
    pub fn say(&self, text: &str) {
        if !self.ctx.notebook {
            self.lock().terminal.line(text);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save_meta(&self, inner: &Inner) {
        let _ = inner.meta.save(&self.ctx.dir);
    }

    fn step_source(&self, inner: &mut Inner, info: &Value) -> Option<String> {
        // Exact bytes when the worker sent them (`file_bytes`: a name that is not UTF-8).
        let file = kernel::worker::message_path(info, "file")?;
        let function = info.get("function")?.as_str()?;
        let step = info.get("step")?.as_u64()?;
        let report = self.report_of(inner, &file)?;
        let step = report.function(function)?.steps.get(step as usize)?;
        let indent = step.indent.as_str();
        let source = step.source.as_str();
        // The first line starts at the statement; the others keep the file's indentation.
        let lines: Vec<&str> = source
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == 0 {
                    l
                } else {
                    l.strip_prefix(indent).unwrap_or(l)
                }
            })
            .collect();
        Some(lines.join("\n"))
    }

    /// `path` relative to the patch root, '/'-separated; None when it is outside.
    ///
    /// The worker names files as the interpreter knows them, which may be
    /// relative to the rootdir or go through a symlink, so a plain prefix test
    /// is retried on canonical paths.
    fn relative(&self, path: &Path) -> Option<String> {
        let root = &self.ctx.patch_root;
        let rel = match path.strip_prefix(root) {
            Ok(rel) => rel.to_path_buf(),
            Err(_) => {
                let (path, root) = (path.canonicalize().ok()?, root.canonicalize().ok()?);
                path.strip_prefix(root).ok()?.to_path_buf()
            }
        };
        Some(patchgen::path_text(rel.as_os_str()))
    }

    /// Names the listed connection file copy by what runs (a test, when known).
    fn relabel(&self, test: Option<&str>, state: &str) {
        let (Some(copy), Some(test)) = (&self.ctx.listed_copy, test) else {
            return;
        };
        let _ = crate::kernel_label::relabel(copy, &crate::kernel_label::label(test, state));
    }

    /// The journal entry for a client's edit, and the file it edits.
    fn build_edit(&self, inner: &mut Inner, edit: &Value) -> Result<(Edit, PathBuf), String> {
        let text = |k: &str| {
            edit.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let number = |k: &str| edit.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
        let file = self
            .ctx
            .rootdir
            .join(kernel::worker::message_path(edit, "file").unwrap_or_default());
        let relative = self.relative(&file).ok_or_else(|| {
            format!(
                "{} is outside {}: edits there cannot be exported as a patch",
                file.display(),
                self.ctx.patch_root.display()
            )
        })?;
        let content = Self::original_content(inner, &file)?;
        let (start, end) = (number("start_line"), number("end_line"));
        let original = patchgen::original_text(&content, start, end).ok_or_else(|| {
            format!(
                "lines {start}-{end} are not in {} as loaded",
                file.display()
            )
        })?;
        let error = inner
            .last_pause
            .as_ref()
            .filter(|p| p.get("test") == edit.get("test"))
            .and_then(|p| p.get("error").and_then(Value::as_str).map(String::from));
        let built = Edit {
            file: relative,
            start_line: start,
            end_line: end,
            original_sha256: patchgen::sha256_hex(&original),
            new_text: text("new_source"),
            indent: text("indent"),
            test_id: text("test"),
            step_index: number("step"),
            step_name: text("name"),
            error,
            time: patchgen::now_rfc3339(),
            function: edit.get("target").and_then(Value::as_str).map(String::from),
        };
        Ok((built, file))
    }

    /// The content of `file` as this session first read it (kept to check edits against).
    fn original_content(inner: &mut Inner, file: &Path) -> Result<String, String> {
        if let Some(content) = inner.originals.get(file) {
            return Ok(content.clone());
        }
        let content = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        inner.originals.insert(file.to_path_buf(), content.clone());
        Ok(content)
    }

    /// Appends `edit` to the session's journal (opened on the first).
    fn journal_edit(&self, inner: &mut Inner, edit: &Edit) -> Result<(), String> {
        self.keep_loaded_copy(inner, edit);
        if inner.journal.is_none() {
            let journal = Journal::open(&self.journal_dir.join("journal.jsonl"))
                .map_err(|e| e.to_string())?;
            inner.journal = Some(journal);
        }
        inner
            .journal
            .as_mut()
            .expect("opened")
            .append(edit)
            .map_err(|e| format!("the edit could not be journaled: {e}"))?;
        inner.meta.edits += 1;
        inner.applied = false;
        inner.exported = None;
        self.save_meta(inner);
        Ok(())
    }

    /// [`SessionHooks::record_edit`] with a step in between: `before` gets the
    /// journal entry and the edited file once the edit is checked, and may
    /// refuse it (nothing is journaled) or give the answer the client sees.
    /// Returns that answer and the entry journaled.
    pub fn record_edit_then(
        &self,
        edit: &Value,
        before: impl FnOnce(&Edit, &Path) -> Result<Option<String>, String>,
    ) -> Result<(String, Edit), String> {
        let (built, file) = self.build_edit(&mut self.lock(), edit)?;
        // Unlocked: `before` may wait on the session (a remote worker's relay).
        let answer = before(&built, &file)?;
        self.journal_edit(&mut self.lock(), &built)?;
        let answer = answer.unwrap_or_else(|| {
            format!(
                "journaled for {} lines {}-{}",
                built.file, built.start_line, built.end_line
            )
        });
        Ok((answer, built))
    }

    /// A remote xdist worker's edit (journaled on its host), to go in this
    /// session's journal: `local` is this machine's copy of the file it
    /// edited, which must hold the lines the worker ran. Returns the entry
    /// as journaled here (its file relative to this session's patch root).
    pub fn remote_worker_edit(&self, mut edit: Edit, local: &Path) -> Result<Edit, String> {
        let relative = self.relative(local).ok_or_else(|| {
            format!(
                "{} is outside {}: edits there cannot be exported as a patch",
                local.display(),
                self.ctx.patch_root.display()
            )
        })?;
        let mut inner = self.lock();
        let content = Self::original_content(&mut inner, local)?;
        let here = patchgen::original_text(&content, edit.start_line, edit.end_line)
            .map(|text| patchgen::sha256_hex(&text));
        if here.as_deref() != Some(edit.original_sha256.as_str()) {
            return Err(format!(
                "lines {}-{} of {} here are not the lines the worker ran on its host, so its edit \
                 cannot go in this session's patch; bring the two copies in line (e.g. rsync again)",
                edit.start_line,
                edit.end_line,
                local.display()
            ));
        }
        edit.file = relative;
        self.journal_edit(&mut inner, &edit)?;
        Ok(edit)
    }

    /// Where the files as this session loaded them are found (changes on disk are merged from them).
    fn bases(&self) -> patchgen::Bases<'_> {
        patchgen::Bases {
            loaded: Some(&self.loaded_dir),
            revision: self.ctx.base_revision.as_deref(),
        }
    }

    /// Keeps a copy of `edit`'s file as the session loaded it (once), so a
    /// change made on disk later can be merged with the edits even outside git.
    fn keep_loaded_copy(&self, inner: &Inner, edit: &Edit) {
        let copy = self.loaded_dir.join(&edit.file);
        if copy.exists() {
            return;
        }
        let Some(content) = inner.originals.get(&self.ctx.patch_root.join(&edit.file)) else {
            return;
        };
        if let Some(parent) = copy.parent() {
            // Private like every session file: it holds the project's code.
            use std::os::unix::fs::DirBuilderExt;
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent);
        }
        let _ = kernel::private_files::write_atomic(&copy, content.as_bytes(), false);
    }

    fn edits(&self) -> Result<Vec<Edit>, String> {
        let (edits, note) = patches::read_edits(&self.journal_dir).map_err(|e| e.to_string())?;
        if let Some(note) = note {
            self.say(&note);
        }
        Ok(edits)
    }

    fn magic_result(&self, name: &str, args: &str) -> Result<MagicOutput, String> {
        match name {
            "diff" => {
                let edits = self.edits()?;
                let text = patches::diff(&self.ctx.patch_root, &edits, self.bases(), true)
                    .map_err(|e| e.to_string())?;
                Ok(MagicOutput { text, html: None })
            }
            "patch" => {
                crate::xdist::check_conflicts(&self.journal_dir)?;
                let (file, message) = patches::parse_patch_args(args)?;
                let file = file.map(|f| {
                    if f.is_absolute() {
                        f
                    } else {
                        self.ctx.rootdir.join(f)
                    }
                });
                let edits = self.edits()?;
                let written = patches::write_patch(
                    &self.ctx.patch_root,
                    &edits,
                    self.ctx.base_revision.clone(),
                    message,
                    file.as_deref(),
                    &self.journal_dir,
                )
                .map_err(|e| e.to_string())?;
                let mut text = format!("Wrote {}\n", written.path.display());
                for note in &written.notes {
                    text.push_str(note);
                    text.push('\n');
                }
                self.say(&format!(
                    "stepkernel: patch written to {}",
                    written.path.display()
                ));
                self.lock().exported = Some(written.path.clone());
                Ok(MagicOutput { text, html: None })
            }
            "apply" => {
                crate::xdist::check_conflicts(&self.journal_dir)?;
                let edits = self.edits()?;
                if edits.is_empty() {
                    return Err("this session has no edits yet".into());
                }
                let written = patchgen::apply_from(&self.ctx.patch_root, &edits, self.bases())
                    .map_err(|e| e.to_string())?;
                self.lock().applied = true;
                let text = if written.is_empty() {
                    "The edits are already in the working tree.".to_string()
                } else {
                    format!("Wrote the edits into: {}", written.join(", "))
                };
                self.say(&format!("stepkernel: {text}"));
                Ok(MagicOutput { text, html: None })
            }
            "tests" => {
                let target = if args.is_empty() { "." } else { args };
                // Relative ids, as pytest prints them (the process runs in rootdir).
                let path = if self.ctx.rootdir == std::env::current_dir().unwrap_or_default() {
                    PathBuf::from(target)
                } else {
                    self.ctx.rootdir.join(target)
                };
                let files = instrumenter::instrument_path(&path, &self.ctx.options)
                    .map_err(|e| e.to_string())?;
                Ok(crate::listing::tests_table(&files))
            }
            "status" => Ok(MagicOutput {
                text: crate::status::render(&self.status()),
                html: None,
            }),
            "report" => {
                let word = args.trim().trim_start_matches("--by").trim();
                let word = if word.is_empty() { "test" } else { word };
                let by = crate::report_table::By::parse(word).ok_or_else(|| {
                    format!("usage: %report [test|step|plan|error] (not {word:?})")
                })?;
                let report = self.lock().report.to_json(&self.ctx.id, None);
                Ok(MagicOutput {
                    text: crate::report_table::render(&report, by),
                    html: None,
                })
            }
            "queue" | "rerun" if self.with_live(LiveStatus::queue_ready) => Err(format!(
                "%{name} is not a magic yet: `stepkernel ctl {name} ...` (or stepkernel.client's Session) does it"
            )),
            "queue" | "rerun" => Err(crate::control::NOT_SUPPORTED_QUEUE.to_string()),
            other => Err(format!("%{other} is not available in this session")),
        }
    }

    /// The exit code of the session: the runner's, except a run fixed only
    /// by edits that are now in the working tree passes.
    fn final_code(inner: &Inner, code: i32) -> i32 {
        let counts = inner.report.counts();
        let failing: u64 = ["failed", "error", "forced"]
            .iter()
            .filter_map(|k| counts.get(*k))
            .sum();
        let fixed = counts.get("fixed").copied().unwrap_or(0);
        // pytest's own codes pass through (4 usage error, 5 no tests collected).
        if code == 1 && failing == 0 && fixed > 0 && inner.applied {
            0
        } else if code == 0 && fixed > 0 && !inner.applied {
            // xdist's controller counts a test fixed on a worker as passed.
            1
        } else {
            code
        }
    }

    /// Writes report.json and session.json with the exit code as it stands.
    fn write_outcome(&self, inner: &mut Inner, code: i32) {
        let _ = kernel::private_files::write_atomic(
            &self.ctx.dir.join("report.json"),
            &inner.report.to_json_bytes(&self.ctx.id, Some(code)),
            false,
        );
        inner.meta.state = "finished".into();
        inner.meta.paused_at = None;
        inner.meta.exit_code = Some(code);
        inner.live.finish(code);
        self.save_meta(inner);
    }

    /// The run is over: report, summary line.
    fn run_finished(&self, code: i32) {
        let mut inner = self.lock();
        inner.flush_events();
        inner.run_code = Some(code);
        let final_code = Self::final_code(&inner, code);
        self.write_outcome(&mut inner, final_code);
        let counts = inner.report.counts().clone();
        let subtests = inner.report.subtests().clone();
        // The line reads as pytest's: "1 passed, 3 rerun" (a count of tries, not of tests).
        let mut line_counts = counts.clone();
        if inner.report.reruns() > 0 {
            line_counts.insert("rerun".into(), inner.report.reruns());
        }
        let mut extra = vec![format!(
            "session {} in {}",
            self.ctx.id,
            self.ctx.dir.display()
        )];
        if code == 4 {
            extra.push(
                "pytest stopped on a usage error (exit code 4): see its message above".into(),
            );
        }
        let not_passing: u64 = ["failed", "error", "forced", "fixed"]
            .iter()
            .filter_map(|k| counts.get(*k))
            .sum();
        if code == 1 && not_passing == 0 {
            // unittest counts a failing module or class fixture as an error of its own.
            extra.push(
                "the runner reported an error outside the tests (a module or class fixture such as \
                 tearDownModule: see its report above), so the exit code is 1"
                    .into(),
            );
        }
        if let Some(note) = fixture_note(inner.report.fixture_errors()) {
            extra.insert(0, note);
        }
        let seconds = self.started.elapsed().as_secs_f64();
        inner
            .terminal
            .summary(&line_counts, &subtests, seconds, &extra);
        inner.exit_code = Some(final_code);
    }

    /// Edits neither exported by `%patch` nor written by `%apply`.
    fn unexported_edits(inner: &Inner) -> bool {
        inner.meta.edits > 0 && !inner.applied && inner.exported.is_none()
    }

    /// The session ends: unexported edits go to a patch, the attach files go.
    fn end(&self, reason: &str) {
        let mut inner = self.lock();
        let code = inner.run_code.unwrap_or(3);
        let final_code = Self::final_code(&inner, code);
        let lingered = std::mem::take(&mut inner.meta.lingering);
        if Some(final_code) != inner.meta.exit_code || lingered {
            // `%apply` while the session lingered may have made a fixed run pass.
            self.write_outcome(&mut inner, final_code);
        }
        let mut lines = Vec::new();
        let edits = inner.meta.edits;
        if edits > 0 {
            if inner.applied {
                lines.push(format!("{edits} edit(s) written to the working tree"));
            } else if let Some(path) = &inner.exported {
                lines.push(format!(
                    "{edits} edit(s) not yet in your files; exported to {} (git am applies it)",
                    path.display()
                ));
            } else {
                // The edits leave with the session: write the patch on the way out.
                let conflicts = crate::xdist::conflicts(&self.journal_dir);
                lines.extend(conflicts.iter().map(|c| format!("not exported: {c}")));
                let written = patches::read_edits(&self.journal_dir)
                    .ok()
                    .filter(|_| conflicts.is_empty())
                    .and_then(|(edits, _)| {
                        patches::write_patch(
                            &self.ctx.patch_root,
                            &edits,
                            self.ctx.base_revision.clone(),
                            None,
                            None,
                            &self.ctx.dir,
                        )
                        .ok()
                    });
                match written {
                    Some(written) => {
                        lines.push(format!(
                            "{edits} edit(s) not yet in your files; patch written to {}",
                            written.path.display()
                        ));
                        lines.extend(written.notes);
                    }
                    None => lines.push(format!(
                        "{edits} edit(s) not yet in your files: `stepkernel patch {}` exports them",
                        self.ctx.id
                    )),
                }
            }
        }
        if inner.run_code.is_some() && reason != "the run is over" {
            lines.push(format!("session ended: {reason}"));
        }
        inner.terminal.flush_partial();
        for line in lines {
            inner.terminal.line(&format!("stepkernel: {line}"));
        }
        inner.exit_code = Some(final_code);
        for copy in &self.ctx.copies {
            let _ = std::fs::remove_file(copy);
        }
    }
}

impl RunHooks {
    /// An event into events.jsonl (its worker text copied where it has one), the report and the status.
    fn take_event(&self, mut event: Value, text: Option<&[u8]>) {
        // The worker's own text serves unless the event already names a session or time.
        let mut text =
            text.filter(|_| event.get("session").is_none() && event.get("timestamp").is_none());
        let timestamp = patchgen::now_rfc3339();
        event["session"] = json!(self.ctx.id);
        event["timestamp"] = json!(timestamp);
        let mut inner = self.lock();
        if inner.workers_collected && event.get("event").and_then(Value::as_str) == Some("summary")
        {
            crate::xdist::count_workers_tests(&mut event, inner.report.counts());
            text = None;
        }
        if let Some(file) = inner.events.as_mut() {
            let line = match text {
                Some(text) => event_line(text, &self.ctx.id, &timestamp),
                None => {
                    let mut line = serde_json::to_vec(&event).expect("serializes");
                    line.push(b'\n');
                    line
                }
            };
            let _ = file.write_all(&line);
        }
        inner.report.add(&event);
        inner.live.apply(&event);
        inner.terminal.event(&event);
        let kind = event.get("event").and_then(Value::as_str).unwrap_or("");
        match kind {
            "test_finish" => {
                inner.meta.tests += 1;
                // A count for `stepkernel sessions`: fresh enough twice a second.
                if inner.meta_saved.elapsed() >= META_INTERVAL {
                    self.save_meta(&inner);
                    inner.meta_saved = Instant::now();
                }
            }
            "resume" => {
                inner.meta.state = "running".into();
                inner.meta.paused_at = None;
                self.save_meta(&inner);
                let test = event.get("test").and_then(Value::as_str).map(String::from);
                self.relabel(test.as_deref(), "running");
            }
            _ => {}
        }
    }
}

/// events.jsonl's line for an event the worker wrote as `text` (a JSON
/// object): the session and timestamp first, then the worker's fields as written.
fn event_line(text: &[u8], session: &str, timestamp: &str) -> Vec<u8> {
    let head = format!(
        "{{\"session\":{},\"timestamp\":{}",
        json!(session),
        json!(timestamp)
    );
    let body = text.trim_ascii();
    let fields = body
        .get(1..body.len().saturating_sub(1))
        .unwrap_or_default();
    let mut line = Vec::with_capacity(head.len() + body.len() + 3);
    line.extend_from_slice(head.as_bytes());
    if !fields.trim_ascii().is_empty() {
        line.push(b',');
        line.extend_from_slice(fields);
    }
    line.extend_from_slice(b"}\n");
    line
}

impl SessionHooks for RunHooks {
    fn steps_for(&self, path: &Path) -> Value {
        self.with_steps_reply(
            path,
            |reply| serde_json::to_value(reply).unwrap_or(json!({})),
            |missing| missing,
        )
    }

    fn steps_reply(&self, path: &Path) -> String {
        self.with_steps_reply(
            path,
            |reply| serde_json::to_string(reply).unwrap_or_else(|_| "{}".to_string()),
            |missing| missing.to_string(),
        )
    }

    fn edited_text(&self, path: &Path) -> Option<String> {
        let edits = self.edits().ok().filter(|e| !e.is_empty())?;
        let root = &self.ctx.patch_root;
        let relative = path
            .strip_prefix(root)
            .ok()
            .map(Path::to_path_buf)
            .or_else(|| {
                let real = std::fs::canonicalize(path).ok()?;
                let root = std::fs::canonicalize(root).ok()?;
                real.strip_prefix(root).ok().map(Path::to_path_buf)
            })?;
        let file = relative.to_string_lossy().replace('\\', "/");
        let changes = patchgen::plan_from(root, &edits, self.bases()).ok()?;
        changes
            .into_iter()
            .find(|c| c.file == file)
            .map(|c| c.after)
    }

    fn steps_loaded(&self, path: &Path) {
        let abs = path.to_path_buf();
        if let Ok(bytes) = std::fs::read(&abs) {
            self.record_file(&mut self.lock(), abs, bytes);
        }
    }

    fn flush(&self) {
        self.lock().flush_events();
    }

    fn steps_fingerprint(&self) -> Option<String> {
        Some(self.ctx.options.fingerprint())
    }

    fn on_event(&self, event: Value) {
        self.take_event(event, None);
    }

    fn on_event_text(&self, event: Value, text: &[u8]) {
        self.take_event(event, Some(text));
    }

    fn on_paused(&self, info: &Value) {
        let mut inner = self.lock();
        // Whoever reads the terminal's pause notice may read events.jsonl next.
        inner.flush_events();
        inner.last_pause = Some(info.clone());
        inner.report.add_pause_info(info);
        inner.live.set_paused(info);
        let source = self.step_source(&mut inner, info);
        if !self.ctx.notebook {
            inner
                .terminal
                .paused(info, source.as_deref(), &self.ctx.attach);
        }
        let get = |k: &str| {
            info.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        self.relabel(info.get("test").and_then(Value::as_str), "paused");
        inner.meta.state = "paused".into();
        inner.meta.paused_at = Some(format!(
            "{}::{} step {}",
            get("test"),
            get("phase"),
            info.get("step").cloned().unwrap_or(Value::Null)
        ));
        self.save_meta(&inner);
    }

    fn on_output(&self, stream: StreamName, text: &str) {
        if !self.ctx.notebook {
            self.lock()
                .terminal
                .output(text, stream == StreamName::Stderr);
        }
    }

    fn record_edit(&self, edit: &Value) -> Result<String, String> {
        self.record_edit_then(edit, |_, _| Ok(None))
            .map(|(answer, _)| answer)
    }

    fn magic(&self, name: &str, args: &str) -> Option<Result<MagicOutput, String>> {
        Some(self.magic_result(name, args))
    }

    fn on_run_finished(&self, exit_code: i32) -> AfterRun {
        if self.ctx.notebook {
            return AfterRun::Serve;
        }
        self.run_finished(exit_code);
        self.ctx.after_run
    }

    fn holds_session(&self) -> bool {
        Self::unexported_edits(&self.lock())
    }

    fn on_linger(&self, clients: usize) {
        let mut inner = self.lock();
        inner.meta.lingering = true;
        self.save_meta(&inner);
        let why = match (clients, Self::unexported_edits(&inner)) {
            (0, _) => format!(
                "{} edit(s) not exported yet: attach (stepkernel console {}) and %patch or %apply them",
                inner.meta.edits, self.ctx.id
            ),
            (n, false) => format!("{n} client(s) attached"),
            (n, true) => format!(
                "{n} client(s) attached, {} edit(s) not exported yet",
                inner.meta.edits
            ),
        };
        inner.terminal.line(&format!(
            "stepkernel: the run is over; the session stays up ({why}): %status %steps %diff %patch %apply work in a client."
        ));
        inner.terminal.line(
            "stepkernel: end it with Ctrl-C here or %end from a client (it also ends when the last client detaches with nothing left to export; --linger SECONDS limits the wait)",
        );
    }

    fn on_session_end(&self, reason: &str) {
        if !self.ctx.notebook {
            self.end(reason);
        }
    }

    fn status_lines(&self) -> Vec<String> {
        let inner = self.lock();
        let edits = inner.meta.edits;
        let state = if edits == 0 {
            String::new()
        } else if inner.applied {
            " (written to the working tree)".into()
        } else if let Some(path) = &inner.exported {
            format!(" (exported to {})", path.display())
        } else {
            " (not exported yet: %patch or %apply)".into()
        };
        vec![
            format!("session: {} in {}", self.ctx.id, self.ctx.dir.display()),
            format!("edits: {edits}{state}"),
        ]
    }

    fn allow_client_shutdown(&self) -> bool {
        self.ctx.allow_client_shutdown
    }

    fn identity(&self) -> Option<String> {
        Some(format!(
            "session {} ({})",
            self.ctx.id,
            self.ctx.dir.display()
        ))
    }

    fn notice(&self, text: &str) {
        if self.ctx.notebook {
            eprintln!("[stepkernel] {text}");
        } else {
            self.say(&format!("stepkernel: {text}"));
        }
    }
}

/// Whether `file`'s `__pycache__` holds a stepped module (`*-stepkernel-*.pyc`,
/// under any tag) written after the file last changed.
fn has_fresh_stepped_pyc(file: &Path) -> bool {
    let (Some(dir), Some(stem)) = (file.parent(), file.file_stem()) else {
        return false;
    };
    let Ok(source) = std::fs::metadata(file).and_then(|m| m.modified()) else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir(dir.join("__pycache__")) else {
        return false;
    };
    let prefix = format!("{}.", stem.to_string_lossy());
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.starts_with(&prefix)
            && name.contains("-stepkernel-")
            && name.ends_with(".pyc")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|written| written >= source)
    })
}

/// Lets the calling thread run only when a core is idle: the prefetch is
/// useful on a cold start but must not slow the worker's own start.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

/// A file the prefetch is instrumenting: on drop its entry becomes the
/// report made (`done`), or is removed so an asker makes its own.
struct PendingPrefetch<'a> {
    hooks: &'a RunHooks,
    file: Option<PathBuf>,
    done: Option<Prefetch>,
}

impl Drop for PendingPrefetch<'_> {
    fn drop(&mut self) {
        let Some(file) = self.file.take() else {
            return;
        };
        let mut prefetched = self
            .hooks
            .prefetched
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match self.done.take() {
            Some(done) => prefetched.insert(file, done),
            None => prefetched.remove(&file),
        };
        drop(prefetched);
        self.hooks.prefetch_done.notify_all();
    }
}

/// Says which unit the error count counts when failing class or module
/// fixtures errored their tests: stepkernel counts each test, as pytest does,
/// where `python -m unittest` counts one error per fixture.
fn fixture_note(by_fixture: &BTreeMap<String, u64>) -> Option<String> {
    let tests: u64 = by_fixture.values().sum();
    if tests == 0 {
        return None;
    }
    let each: Vec<String> = by_fixture
        .iter()
        .map(|(fixture, n)| format!("{fixture}: {n}"))
        .collect();
    let fixtures = by_fixture.len();
    Some(format!(
        "{tests} error{} {} a failing fixture kept from running ({}); they count \
         per test as in pytest (python -m unittest counts {fixtures} error{})",
        if tests == 1 { "" } else { "s" },
        if tests == 1 { "is a test" } else { "are tests" },
        each.join(", "),
        if fixtures == 1 { "" } else { "s" }
    ))
}

#[cfg(test)]
mod event_line_tests {
    use super::*;

    #[test]
    fn an_event_line_from_the_workers_text_reads_as_the_event_with_session_and_time() {
        for text in [
            &br#"{"event":"test_finish","test":"t.py::test_\u00e9[a,b]","duration_s":0.000664,"nested":{"k":[1,"}"]}}"#[..],
            br#"{}"#,
            br#" { } "#,
        ] {
            let line = event_line(text, "20261203-1", "2026-12-03T17:55:09Z");
            assert!(line.ends_with(b"}\n"), "{line:?}");
            let read: Value = serde_json::from_slice(&line).unwrap();
            let mut expected: Value = serde_json::from_slice(text).unwrap();
            expected["session"] = json!("20261203-1");
            expected["timestamp"] = json!("2026-12-03T17:55:09Z");
            assert_eq!(read, expected);
        }
    }
}

#[cfg(test)]
mod prefetch_tests {
    use super::*;

    #[test]
    fn the_prefetch_skips_a_file_asked_for_first_and_its_own_report_is_taken_once() {
        let session = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        let (asked, ahead) = (
            project.path().join("test_a.py"),
            project.path().join("test_b.py"),
        );
        std::fs::write(&asked, "def test_a():\n    assert 1\n").unwrap();
        std::fs::write(&ahead, "def test_b():\n    assert 2\n").unwrap();
        let ctx = SessionContext::for_tests(session.path(), project.path());
        let hooks = RunHooks::new(ctx, Default::default(), true);
        // The worker asks before the prefetch reaches the file: made then, not again.
        let report = hooks.steps_for(&asked);
        assert_eq!(report["tests"][0]["name"], "test_a", "{report}");
        assert!(!hooks.prefetch_file(asked.clone()));
        // A file the prefetch reaches first: its report is what the worker gets.
        assert!(hooks.prefetch_file(ahead.clone()));
        assert!(matches!(
            hooks.prefetched.lock().unwrap().get(&ahead),
            Some(Prefetch::Ready(..))
        ));
        let report = hooks.steps_for(&ahead);
        assert_eq!(report["tests"][0]["name"], "test_b", "{report}");
        assert!(matches!(
            hooks.prefetched.lock().unwrap().get(&ahead),
            Some(Prefetch::Claimed)
        ));
        assert!(!hooks.prefetch_file(ahead));
    }

    #[test]
    fn a_file_asked_for_while_the_prefetch_parses_it_waits_for_that_report() {
        let session = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        let file = project.path().join("test_c.py");
        let text = b"def test_c():\n    assert 3\n".to_vec();
        std::fs::write(&file, &text).unwrap();
        let ctx = SessionContext::for_tests(session.path(), project.path());
        let hooks = Arc::new(RunHooks::new(ctx, Default::default(), true));
        // The prefetch has started on the file...
        hooks
            .prefetched
            .lock()
            .unwrap()
            .insert(file.clone(), Prefetch::Working);
        let asker = {
            let (hooks, file) = (Arc::clone(&hooks), file.clone());
            std::thread::spawn(move || hooks.steps_for(&file))
        };
        // ... and finishes with a report no parse of the file would give:
        // the asker returns it, so it waited instead of parsing again.
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(PendingPrefetch {
            hooks: &hooks,
            file: Some(file.clone()),
            done: Some(Prefetch::Ready(
                text,
                // The report of another file (its test is test_other).
                instrumenter::instrument_source(
                    "test_other.py",
                    b"def test_other():\n    pass\n",
                    &Default::default(),
                ),
            )),
        });
        let report = asker.join().unwrap();
        assert_eq!(report["tests"][0]["name"], "test_other", "{report}");
        // A prefetch that made nothing (unreadable file): the asker parses it itself.
        let other = project.path().join("test_d.py");
        std::fs::write(&other, "def test_d():\n    assert 4\n").unwrap();
        hooks
            .prefetched
            .lock()
            .unwrap()
            .insert(other.clone(), Prefetch::Working);
        let asker = {
            let (hooks, other) = (Arc::clone(&hooks), other.clone());
            std::thread::spawn(move || hooks.steps_for(&other))
        };
        drop(PendingPrefetch {
            hooks: &hooks,
            file: Some(other),
            done: None,
        });
        let report = asker.join().unwrap();
        assert_eq!(report["tests"][0]["name"], "test_d", "{report}");
    }
}
