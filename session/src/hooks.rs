//! The kernel's [`SessionHooks`] for `stepkernel run`: instrumenter, journal,
//! events, report and terminal, all behind one lock.

use crate::patches;
use crate::report::Report;
use crate::session_dir::SessionMeta;
use crate::terminal::Terminal;
use instrumenter::Options;
use kernel::session::{MagicOutput, SessionHooks};
use kernel::worker::StreamName;
use patchgen::{Edit, Journal};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
}

struct Inner {
    terminal: Terminal,
    report: Report,
    /// events.jsonl, written out when the kernel's queue drains (see `flush`).
    events: Option<std::io::BufWriter<std::fs::File>>,
    journal: Option<Journal>,
    /// File contents as first loaded: edits are hashed and checked against these.
    originals: HashMap<PathBuf, String>,
    /// Instrumenter reports by absolute path.
    reports: HashMap<PathBuf, Value>,
    last_pause: Option<Value>,
    meta: SessionMeta,
    /// When session.json was last written for a finished test.
    meta_saved: Instant,
    applied: bool,
    exit_code: Option<i32>,
}

impl Inner {
    /// Writes out the buffered lines of events.jsonl.
    fn flush_events(&mut self) {
        if let Some(file) = self.events.as_mut() {
            let _ = file.flush();
        }
    }
}

/// Hooks for one `stepkernel run` session.
pub struct RunHooks {
    ctx: SessionContext,
    started: Instant,
    inner: Mutex<Inner>,
    /// Reports instrumented ahead of need (path -> bytes seen, report).
    prefetched: Mutex<HashMap<PathBuf, (Vec<u8>, Value)>>,
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
                reports: HashMap::new(),
                last_pause: None,
                meta,
                meta_saved: Instant::now(),
                applied: false,
                exit_code: None,
            }),
            started: Instant::now(),
            prefetched: Mutex::new(HashMap::new()),
            ctx,
        }
    }

    /// Records `abs` as loaded with content `bytes` (what edits are checked
    /// against) and returns its report (prefetched when it can be).
    fn record_file(&self, abs: PathBuf, bytes: Vec<u8>) -> Value {
        let ready = self
            .prefetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&abs)
            .filter(|(seen, _)| *seen == bytes)
            .map(|(_, value)| value);
        let value = ready.unwrap_or_else(|| self.instrument(&abs, &bytes));
        let mut inner = self.lock();
        if let Ok(text) = String::from_utf8(bytes) {
            inner.originals.entry(abs.clone()).or_insert(text);
        }
        inner.reports.insert(abs, value.clone());
        value
    }

    /// The instrumenter's report of `abs` (holding `bytes`), as JSON.
    fn instrument(&self, abs: &Path, bytes: &[u8]) -> Value {
        let shown = abs
            .strip_prefix(&self.ctx.rootdir)
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_else(|_| abs.to_string_lossy().to_string());
        let report = instrumenter::instrument_source(&shown, bytes, &self.ctx.options);
        serde_json::to_value(&report).unwrap_or(json!({}))
    }

    /// Instruments `files` in the background, so the worker's `need_steps`
    /// finds them ready (it asks while running tests; this runs while it is
    /// still importing pytest).
    pub fn prefetch(self: &Arc<Self>, files: Vec<PathBuf>) {
        if files.is_empty() {
            return;
        }
        let hooks = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("stepkernel-prefetch".into())
            .spawn(move || {
                lower_priority();
                for file in files {
                    let Ok(bytes) = std::fs::read(&file) else {
                        continue;
                    };
                    let value = hooks.instrument(&file, &bytes);
                    hooks
                        .prefetched
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(file, (bytes, value));
                }
            });
        if let Err(err) = spawned {
            self.say(&format!("stepkernel: no prefetch thread: {err}"));
        }
    }

    /// The exit code once the run ended.
    pub fn exit_code(&self) -> Option<i32> {
        self.lock().exit_code
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

    fn step_source(inner: &Inner, info: &Value) -> Option<String> {
        // Exact bytes when the worker sent them (`file_bytes`: a name that is not UTF-8).
        let file = kernel::worker::message_path(info, "file")?;
        let function = info.get("function")?.as_str()?;
        let step = info.get("step")?.as_u64()?;
        let report = inner.reports.get(&file)?;
        let func = report
            .get("functions")?
            .as_array()?
            .iter()
            .find(|f| f.get("qualname").and_then(Value::as_str) == Some(function))?;
        let step = func.get("steps")?.as_array()?.get(step as usize)?;
        let indent = step.get("indent").and_then(Value::as_str).unwrap_or("");
        let source = step.get("source")?.as_str()?;
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
        Some(rel.to_string_lossy().replace('\\', "/"))
    }

    fn build_edit(&self, inner: &mut Inner, edit: &Value) -> Result<Edit, String> {
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
        let content = match inner.originals.get(&file) {
            Some(content) => content.clone(),
            None => {
                let content = std::fs::read_to_string(&file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                inner.originals.insert(file.clone(), content.clone());
                content
            }
        };
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
        Ok(Edit {
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
        })
    }

    fn edits(&self) -> Result<Vec<Edit>, String> {
        let (edits, note) = patches::read_edits(&self.ctx.dir).map_err(|e| e.to_string())?;
        if let Some(note) = note {
            self.say(&note);
        }
        Ok(edits)
    }

    fn magic_result(&self, name: &str, args: &str) -> Result<MagicOutput, String> {
        match name {
            "diff" => {
                let edits = self.edits()?;
                let text =
                    patches::diff(&self.ctx.patch_root, &edits, true).map_err(|e| e.to_string())?;
                Ok(MagicOutput { text, html: None })
            }
            "patch" => {
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
                    &self.ctx.dir,
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
                Ok(MagicOutput { text, html: None })
            }
            "apply" => {
                let edits = self.edits()?;
                if edits.is_empty() {
                    return Err("this session has no edits yet".into());
                }
                let written =
                    patchgen::apply(&self.ctx.patch_root, &edits).map_err(|e| e.to_string())?;
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
            other => Err(format!("%{other} is not available in this session")),
        }
    }

    fn finish(&self, code: i32) -> i32 {
        let mut inner = self.lock();
        inner.flush_events();
        let counts = inner.report.counts().clone();
        let failing: u64 = ["failed", "error", "forced"]
            .iter()
            .filter_map(|k| counts.get(*k))
            .sum();
        let fixed = counts.get("fixed").copied().unwrap_or(0);
        let final_code = if code == 1 && failing == 0 && fixed > 0 && inner.applied {
            0
        } else if code == 4 {
            2 // pytest's usage error
        } else {
            code
        };
        let report = inner.report.to_json(&self.ctx.id, Some(final_code));
        let _ = kernel::private_files::write_atomic(
            &self.ctx.dir.join("report.json"),
            &serde_json::to_vec_pretty(&report).expect("serializes"),
            false,
        );
        inner.meta.state = "finished".into();
        inner.meta.paused_at = None;
        inner.meta.exit_code = Some(final_code);
        self.save_meta(&inner);
        let mut extra = vec![format!(
            "session {} in {}",
            self.ctx.id,
            self.ctx.dir.display()
        )];
        let edits = inner.meta.edits;
        if edits > 0 {
            if inner.applied {
                extra.push(format!("{edits} edit(s) written to the working tree"));
            } else {
                // The edits leave with the session: write the patch on the way out.
                let written = patches::read_edits(&self.ctx.dir)
                    .ok()
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
                        extra.push(format!(
                            "{edits} edit(s) not yet in your files; patch written to {}",
                            written.path.display()
                        ));
                        extra.extend(written.notes);
                    }
                    None => extra.push(format!(
                        "{edits} edit(s) not yet in your files: `stepkernel patch {}` exports them",
                        self.ctx.id
                    )),
                }
            }
        }
        let seconds = self.started.elapsed().as_secs_f64();
        inner.terminal.summary(&counts, seconds, &extra);
        inner.exit_code = Some(final_code);
        for copy in &self.ctx.copies {
            let _ = std::fs::remove_file(copy);
        }
        final_code
    }
}

impl SessionHooks for RunHooks {
    fn steps_for(&self, path: &Path) -> Value {
        let abs = path.to_path_buf();
        let bytes = match std::fs::read(&abs) {
            Ok(bytes) => bytes,
            Err(err) => {
                return json!({"path": path.to_string_lossy(), "error": {"message": err.to_string()}, "tests": [], "functions": []})
            }
        };
        slim_report(&self.record_file(abs, bytes))
    }

    fn steps_loaded(&self, path: &Path) {
        let abs = path.to_path_buf();
        if let Ok(bytes) = std::fs::read(&abs) {
            self.record_file(abs, bytes);
        }
    }

    fn flush(&self) {
        self.lock().flush_events();
    }

    fn steps_fingerprint(&self) -> Option<String> {
        Some(self.ctx.options.fingerprint())
    }

    fn on_event(&self, event: &Value) {
        let mut event = event.clone();
        event["session"] = json!(self.ctx.id);
        event["timestamp"] = json!(patchgen::now_rfc3339());
        let mut inner = self.lock();
        if let Some(file) = inner.events.as_mut() {
            let mut line = serde_json::to_vec(&event).expect("serializes");
            line.push(b'\n');
            let _ = file.write_all(&line);
        }
        inner.report.add(&event);
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
            }
            _ => {}
        }
    }

    fn on_paused(&self, info: &Value) {
        let mut inner = self.lock();
        // Whoever reads the terminal's pause notice may read events.jsonl next.
        inner.flush_events();
        inner.last_pause = Some(info.clone());
        inner.report.add_pause_info(info);
        let source = Self::step_source(&inner, info);
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
        let mut inner = self.lock();
        let edit = self.build_edit(&mut inner, edit)?;
        if inner.journal.is_none() {
            let journal =
                Journal::open(&self.ctx.dir.join("journal.jsonl")).map_err(|e| e.to_string())?;
            inner.journal = Some(journal);
        }
        inner
            .journal
            .as_mut()
            .expect("opened")
            .append(&edit)
            .map_err(|e| format!("the edit could not be journaled: {e}"))?;
        inner.meta.edits += 1;
        inner.applied = false;
        self.save_meta(&inner);
        Ok(format!(
            "journaled for {} lines {}-{}",
            edit.file, edit.start_line, edit.end_line
        ))
    }

    fn magic(&self, name: &str, args: &str) -> Option<Result<MagicOutput, String>> {
        Some(self.magic_result(name, args))
    }

    fn on_run_finished(&self, exit_code: i32) -> bool {
        if self.ctx.notebook {
            return false;
        }
        self.finish(exit_code);
        true
    }

    fn allow_client_shutdown(&self) -> bool {
        self.ctx.allow_client_shutdown
    }

    fn notice(&self, text: &str) {
        if self.ctx.notebook {
            eprintln!("[stepkernel] {text}");
        } else {
            self.say(&format!("stepkernel: {text}"));
        }
    }
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

/// What the worker reads of a report: function steps without their source
/// (it slices its own copy of the file) and phase names; the rest can be
/// most of the reply.
fn slim_report(report: &Value) -> Value {
    let mut slim = report.clone();
    if let Some(tests) = slim.get_mut("tests").and_then(Value::as_array_mut) {
        for test in tests {
            if let Some(phases) = test.get_mut("phases").and_then(Value::as_array_mut) {
                for phase in phases {
                    if let Some(phase) = phase.as_object_mut() {
                        phase.retain(|k, _| k == "name" || k == "function");
                    }
                }
            }
        }
    }
    if let Some(functions) = slim.get_mut("functions").and_then(Value::as_array_mut) {
        for function in functions {
            if let Some(steps) = function.get_mut("steps").and_then(Value::as_array_mut) {
                for step in steps {
                    if let Some(step) = step.as_object_mut() {
                        step.remove("source");
                        step.remove("flags");
                    }
                }
            }
        }
    }
    slim
}
