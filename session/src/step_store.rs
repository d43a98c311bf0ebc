//! The step reports of one run's test files, shared by the run's processes.
//!
//! Every pytest-xdist worker collects every test file, so without this each
//! local worker's kernel instrumented each file again (tree-sitter's parse
//! and the report: most of a kernel's work on a cold run). The session
//! instruments the files ahead of need (its prefetch, started while the
//! controller's Python starts) and each kernel takes a file's report from
//! here, making it only when it is not here yet.
//!
//! One entry per test file in `<session>/steps/`, named by a hash of the
//! file's path and the instrumenter's options, holding the source bytes the
//! report was made from (compared whole: an edited file never gets an old
//! report) and the report as JSON. Whoever makes a report (the prefetch or
//! a kernel) holds an `flock` on the entry's `.lock` file meanwhile, so a
//! kernel asking then waits for it and reads the entry: each file is
//! instrumented once for the run. The prefetch skips a file a kernel is
//! making; it runs at normal priority (a kernel may wait on it).
//!
//! The same entries, in a store opened with [`StepStore::open_at`] in a
//! project's `.stepkernel/step-reports/`, keep reports from run to run: a cold
//! run reads the report of a file whose bytes are those it was made from.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The directory of the store in a session directory.
pub const STEPS_DIR: &str = "steps";

/// A project's reports kept from run to run, in its `.stepkernel/`: a run with no
/// stepped `.pyc` to read (`PYTHONDONTWRITEBYTECODE=1`, a fresh checkout of the
/// same files) reads the report of a file it has seen with these bytes instead
/// of parsing the file again. One entry per file (the newest bytes win).
pub const REPORTS_DIR: &str = "step-reports";

/// The first bytes of an entry; the source's length follows, then a newline.
const MAGIC: &[u8] = b"stepkernel-steps 1 ";

/// One run's shared step reports (see the module's doc).
#[derive(Debug)]
pub struct StepStore {
    dir: PathBuf,
    /// The instrumenter's options: part of every entry's name.
    options: String,
}

/// An entry's files.
struct Entry {
    data: PathBuf,
    lock: PathBuf,
}

impl StepStore {
    /// The store in `session_dir` (created 0700 if missing), for reports made with `options`.
    pub fn open(
        session_dir: &Path,
        options: &str,
    ) -> Result<StepStore, kernel::private_files::PrivateError> {
        let dir = kernel::private_files::ensure_private_dir(&session_dir.join(STEPS_DIR))?;
        Ok(StepStore {
            dir,
            options: options.to_string(),
        })
    }

    /// A store that outlives runs, in `dir` itself (created 0700 if missing): a
    /// project's `.stepkernel/step-reports/` (see [`REPORTS_DIR`]).
    pub fn open_at(
        dir: &Path,
        options: &str,
    ) -> Result<StepStore, kernel::private_files::PrivateError> {
        let dir = kernel::private_files::ensure_private_dir(dir)?;
        Ok(StepStore {
            dir,
            options: options.to_string(),
        })
    }

    /// Removes the store of `session_dir` (the run is over: no process reads it now).
    pub fn remove(session_dir: &Path) {
        let _ = std::fs::remove_dir_all(session_dir.join(STEPS_DIR));
    }

    fn entry(&self, path: &Path) -> Entry {
        let mut hash = Sha256::new();
        hash.update(path.as_os_str().as_encoded_bytes());
        hash.update([0]);
        hash.update(self.options.as_bytes());
        let name: String = hash.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Entry {
            data: self.dir.join(format!("{name}.json")),
            lock: self.dir.join(format!("{name}.lock")),
        }
    }

    /// The report of `path` holding `bytes`: the stored one, else (another
    /// kernel making it is waited for) made by `make` and stored.
    pub fn report<R: Serialize + DeserializeOwned>(
        &self,
        path: &Path,
        bytes: &[u8],
        make: impl FnOnce() -> R,
    ) -> R {
        let entry = self.entry(path);
        if let Some(value) = read(&entry.data, bytes) {
            return value;
        }
        let lock = lock(&entry.lock, true);
        if lock.is_some() {
            // Made by the kernel that held the lock while this one waited.
            if let Some(value) = read(&entry.data, bytes) {
                return value;
            }
        }
        let value = make();
        write(&entry.data, bytes, &value);
        drop(lock);
        value
    }

    /// Makes and stores the report of `path` holding `bytes` ahead of need,
    /// unless it is stored already or a kernel is making it; whether it did.
    pub fn prefetch<R: Serialize>(
        &self,
        path: &Path,
        bytes: &[u8],
        make: impl FnOnce() -> R,
    ) -> bool {
        let entry = self.entry(path);
        if entry.data.exists() {
            return false;
        }
        let Some(lock) = lock(&entry.lock, false) else {
            return false;
        };
        // Made by a kernel between the look and the lock.
        if entry.data.exists() {
            return false;
        }
        write(&entry.data, bytes, &make());
        drop(lock);
        true
    }
}

/// `flock(LOCK_EX)` on `path` (created 0600), waiting for it when `wait`;
/// None when it is held (and not waited for) or cannot be opened.
fn lock(path: &Path, wait: bool) -> Option<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let how = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: flock on a descriptor this function owns; released when it is closed.
        if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
            return Some(file);
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// The stored report, when the entry is there and was made from exactly `bytes`.
fn read<R: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Option<R> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).ok()?;
    let rest = data.strip_prefix(MAGIC)?;
    let newline = rest.iter().position(|&b| b == b'\n')?;
    let len: usize = std::str::from_utf8(&rest[..newline]).ok()?.parse().ok()?;
    let rest = &rest[newline + 1..];
    if rest.len() < len || &rest[..len] != bytes {
        return None;
    }
    serde_json::from_slice(&rest[len..]).ok()
}

/// Stores `value` as the report of `bytes` (renamed into place: a reader
/// sees the whole entry or none). A store that cannot be written only costs
/// the other kernels their own instrumenting.
fn write<R: Serialize>(path: &Path, bytes: &[u8], value: &R) {
    let mut data = Vec::with_capacity(bytes.len() * 8 + 32);
    data.extend_from_slice(MAGIC);
    data.extend_from_slice(format!("{}\n", bytes.len()).as_bytes());
    data.extend_from_slice(bytes);
    if serde_json::to_writer(&mut data, value).is_ok() {
        let _ = kernel::private_files::write_atomic(path, &data, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_report_is_made_once_and_then_read_for_the_same_bytes_only() {
        let session = tempfile::tempdir().unwrap();
        let store = StepStore::open(session.path(), "opts").unwrap();
        let file = Path::new("/p/test_a.py");
        let made = AtomicUsize::new(0);
        let make = |n: u64| {
            made.fetch_add(1, Ordering::SeqCst);
            json!({"tests": [n]})
        };
        assert_eq!(
            store.report(file, b"a = 1\n", || make(1)),
            json!({"tests": [1]})
        );
        // Another process of the run (another store on the same directory).
        let other = StepStore::open(session.path(), "opts").unwrap();
        assert_eq!(
            other.report(file, b"a = 1\n", || make(2)),
            json!({"tests": [1]})
        );
        assert_eq!(made.load(Ordering::SeqCst), 1);
        // The file changed: never the old report.
        assert_eq!(
            other.report(file, b"a = 2\n", || make(3)),
            json!({"tests": [3]})
        );
        assert_eq!(
            store.report(file, b"a = 2\n", || make(4)),
            json!({"tests": [3]})
        );
        // Other options: another entry.
        let marked = StepStore::open(session.path(), "other opts").unwrap();
        assert_eq!(
            marked.report(file, b"a = 2\n", || make(5)),
            json!({"tests": [5]})
        );
        assert_eq!(made.load(Ordering::SeqCst), 3);
        // The prefetch makes nothing that is stored already.
        assert!(!store.prefetch(file, b"a = 2\n", || make(6)));
        StepStore::remove(session.path());
        assert!(!session.path().join(STEPS_DIR).exists());
    }

    #[test]
    fn a_kernel_asking_while_another_makes_the_report_waits_and_reads_it() {
        let session = tempfile::tempdir().unwrap();
        let store = Arc::new(StepStore::open(session.path(), "opts").unwrap());
        let file = Path::new("/p/test_a.py");
        let (started, release) = (
            std::sync::mpsc::channel::<()>(),
            std::sync::mpsc::channel::<()>(),
        );
        let (started_tx, started_rx) = started;
        let (release_tx, release_rx) = release;
        let first = {
            let store = store.clone();
            std::thread::spawn(move || {
                store.report(file, b"x\n", || {
                    started_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    json!("first")
                })
            })
        };
        started_rx.recv().unwrap();
        // The lock is held: the prefetch leaves the file to that kernel.
        assert!(!store.prefetch(file, b"x\n", || json!("prefetch")));
        let second = {
            let store = store.clone();
            std::thread::spawn(move || store.report(file, b"x\n", || json!("second")))
        };
        release_tx.send(()).unwrap();
        assert_eq!(first.join().unwrap(), json!("first"));
        assert_eq!(second.join().unwrap(), json!("first"));
    }

    #[test]
    fn a_kernel_asking_while_the_prefetch_makes_the_report_waits_for_it() {
        let session = tempfile::tempdir().unwrap();
        let store = Arc::new(StepStore::open(session.path(), "opts").unwrap());
        let file = Path::new("/p/test_c.py");
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let prefetch = {
            let store = store.clone();
            std::thread::spawn(move || {
                store.prefetch(file, b"c\n", || {
                    started_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    json!("prefetched")
                })
            })
        };
        started_rx.recv().unwrap();
        let kernel = {
            let store = store.clone();
            std::thread::spawn(move || store.report(file, b"c\n", || json!("made again")))
        };
        release_tx.send(()).unwrap();
        assert!(prefetch.join().unwrap());
        assert_eq!(kernel.join().unwrap(), json!("prefetched"));
    }

    #[test]
    fn the_prefetch_stores_a_report_the_kernels_then_read() {
        let session = tempfile::tempdir().unwrap();
        let store = StepStore::open(session.path(), "opts").unwrap();
        let file = Path::new("/p/test_b.py");
        assert!(store.prefetch(file, b"b\n", || json!("ahead")));
        assert_eq!(
            store.report(file, b"b\n", || json!("again")),
            json!("ahead")
        );
        // A broken entry is no report.
        let entry = store.entry(file);
        std::fs::write(&entry.data, b"stepkernel-steps 1 99\nb\n").unwrap();
        assert_eq!(
            store.report(file, b"b\n", || json!("remade")),
            json!("remade")
        );
    }
}
