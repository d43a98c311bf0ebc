//! The dependency database: `.stepkernel/watch.db` (SQLite, WAL, schema
//! version in `PRAGMA user_version`). Each test's dependencies are stored with
//! the fingerprint they had when the test ran, so going back to a branch whose
//! code matches what was recorded makes those tests fresh again.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};

/// The schema this build writes; any other is rebuilt.
pub const SCHEMA_VERSION: i64 = 2;

/// Dependency kind markers stored in `deps.block`.
pub const IMPORT: &str = "<import>";
/// A data file read by the test (fingerprint: its SHA-1).
pub const DATA: &str = "<data>";
/// A fingerprint that never matches (the file changed while the test ran).
pub const STALE: &str = "stale";

/// Database errors.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("dependency database {path}: {source}")]
    Sql {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The old file could not be removed to rebuild it.
    #[error("cannot remove the old dependency database {path}: {source}")]
    Remove {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// One recorded dependency of a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    /// The test's node id.
    pub test: String,
    /// The file (absolute).
    pub path: PathBuf,
    /// A qualified name, [`IMPORT`] or [`DATA`].
    pub block: String,
    /// The fingerprint when the test ran.
    pub fp: String,
}

/// What the database knows of a test.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TestRow {
    /// Node id.
    pub id: String,
    /// Its file, relative to the project.
    pub file: String,
    /// Last outcome.
    pub outcome: String,
    /// How often it failed or errored, all runs.
    pub failures: i64,
    /// Last duration in seconds.
    pub duration: f64,
    /// Last report text.
    pub report: String,
    /// Why its record is incomplete (then it always reruns).
    pub incomplete: Option<String>,
}

/// The open database.
pub struct Db {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE tests (id TEXT PRIMARY KEY, file TEXT NOT NULL, outcome TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0, duration REAL NOT NULL DEFAULT 0,
    report TEXT NOT NULL DEFAULT '', incomplete TEXT);
CREATE TABLE deps (test TEXT NOT NULL, path TEXT NOT NULL, block TEXT NOT NULL, fp TEXT NOT NULL);
CREATE INDEX deps_path ON deps(path);
CREATE INDEX deps_test ON deps(test);
CREATE TABLE collect_errors (file TEXT PRIMARY KEY, missing TEXT NOT NULL, text TEXT NOT NULL);
CREATE TABLE states (test TEXT NOT NULL, state TEXT NOT NULL, outcome TEXT NOT NULL,
    report TEXT NOT NULL, duration REAL NOT NULL, PRIMARY KEY (test, state));
";

/// The hash of a test's dependencies with their fingerprints: the code and
/// data it ran. None when one is unknown (then no history is kept).
pub fn state_of<'a>(
    deps: impl IntoIterator<Item = (&'a Path, &'a str, &'a str)>,
) -> Option<String> {
    use sha2::{Digest, Sha256};
    let mut rows: Vec<(&Path, &str, &str)> = deps.into_iter().collect();
    if rows.iter().any(|(_, _, fp)| *fp == STALE) {
        return None;
    }
    rows.sort();
    let mut digest = Sha256::new();
    for (path, block, fp) in rows {
        digest.update(path.to_string_lossy().as_bytes());
        digest.update([0]);
        digest.update(block.as_bytes());
        digest.update([0]);
        digest.update(fp.as_bytes());
        digest.update([1]);
    }
    Some(
        digest
            .finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

impl Db {
    /// Opens (or creates) the database; an unreadable, corrupt or older one is
    /// rebuilt and the returned warning says so.
    pub fn open(path: &Path) -> Result<(Db, Option<String>), DbError> {
        let sql = |source| DbError::Sql {
            path: path.to_path_buf(),
            source,
        };
        let existed = path.exists();
        let mut warning = None;
        if existed {
            match Self::check(path) {
                Ok(()) => {}
                Err(why) => {
                    for suffix in ["", "-wal", "-shm"] {
                        let file = PathBuf::from(format!("{}{suffix}", path.display()));
                        match std::fs::remove_file(&file) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(source) => return Err(DbError::Remove { path: file, source }),
                        }
                    }
                    warning = Some(format!(
                        "the dependency database {} was {why}; rebuilt (every test runs once to record again)",
                        path.display()
                    ));
                }
            }
        }
        let conn = Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        if version == 0 {
            conn.execute_batch(SCHEMA).map_err(sql)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sql)?;
        }
        Ok((
            Db {
                conn,
                path: path.to_path_buf(),
            },
            warning,
        ))
    }

    /// Why an existing file cannot be used, if it cannot.
    fn check(path: &Path) -> Result<(), String> {
        let conn = Connection::open(path).map_err(|_| "unreadable".to_string())?;
        let ok: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|_| "corrupt".to_string())?;
        if ok != "ok" {
            return Err("corrupt".into());
        }
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|_| "corrupt".to_string())?;
        if version != SCHEMA_VERSION {
            return Err(format!(
                "of schema version {version} (this stepkernel uses {SCHEMA_VERSION})"
            ));
        }
        Ok(())
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> DbError + '_ {
        move |source| DbError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// Whether any test was recorded.
    pub fn is_empty(&self) -> Result<bool, DbError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM tests", [], |r| r.get(0))
            .map_err(self.sql())?;
        Ok(n == 0)
    }

    /// Replaces a test's record and dependencies.
    pub fn record(&mut self, test: &TestRow, deps: &[Dep]) -> Result<(), DbError> {
        let failed = matches!(test.outcome.as_str(), "failed" | "error");
        let tx = self.conn.transaction().map_err(|source| DbError::Sql {
            path: self.path.clone(),
            source,
        })?;
        let path = self.path.clone();
        let sql = |source| DbError::Sql {
            path: path.clone(),
            source,
        };
        let failures: i64 = tx
            .query_row(
                "SELECT failures FROM tests WHERE id = ?1",
                params![test.id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)?
            .unwrap_or(0);
        tx.execute(
            "INSERT OR REPLACE INTO tests (id, file, outcome, failures, duration, report, incomplete)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                test.id,
                test.file,
                test.outcome,
                failures + i64::from(failed),
                test.duration,
                test.report,
                test.incomplete
            ],
        )
        .map_err(sql)?;
        tx.execute("DELETE FROM deps WHERE test = ?1", params![test.id])
            .map_err(sql)?;
        {
            let mut insert = tx
                .prepare("INSERT INTO deps (test, path, block, fp) VALUES (?1, ?2, ?3, ?4)")
                .map_err(sql)?;
            for dep in deps {
                insert
                    .execute(params![
                        dep.test,
                        dep.path.to_string_lossy(),
                        dep.block,
                        dep.fp
                    ])
                    .map_err(sql)?;
            }
        }
        // The result of this exact code and data, for when a branch switch brings it back.
        let state = state_of(
            deps.iter()
                .map(|d| (d.path.as_path(), d.block.as_str(), d.fp.as_str())),
        );
        if let (Some(state), None) = (state, &test.incomplete) {
            tx.execute(
                "INSERT OR REPLACE INTO states (test, state, outcome, report, duration) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![test.id, state, test.outcome, test.report, test.duration],
            )
            .map_err(sql)?;
        }
        // A test file that collects again has no collection error any more.
        tx.execute(
            "DELETE FROM collect_errors WHERE file = ?1",
            params![test.file],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)
    }

    /// Records a collection error of `file` (relative), replacing the last.
    pub fn record_collect_error(
        &mut self,
        file: &str,
        missing: &[String],
        text: &str,
        deps: &[Dep],
    ) -> Result<(), DbError> {
        let missing = serde_json::to_string(missing).expect("serializes");
        self.conn
            .execute(
                "INSERT OR REPLACE INTO collect_errors (file, missing, text) VALUES (?1, ?2, ?3)",
                params![file, missing, text],
            )
            .map_err(self.sql())?;
        // The file's own imports, under its path as the "test" id.
        let mut test = TestRow {
            id: file.to_string(),
            file: file.to_string(),
            outcome: "error".into(),
            report: text.to_string(),
            ..Default::default()
        };
        test.failures = 0;
        self.conn
            .execute("DELETE FROM deps WHERE test = ?1", params![file])
            .map_err(self.sql())?;
        for dep in deps {
            self.conn
                .execute(
                    "INSERT INTO deps (test, path, block, fp) VALUES (?1, ?2, ?3, ?4)",
                    params![file, dep.path.to_string_lossy(), dep.block, dep.fp],
                )
                .map_err(self.sql())?;
        }
        Ok(())
    }

    /// The result recorded for `test` when its dependencies were in `state`.
    pub fn state_result(&self, test: &str, state: &str) -> Result<Option<TestRow>, DbError> {
        self.conn
            .query_row(
                "SELECT s.outcome, s.report, s.duration, t.file, t.failures FROM states s JOIN tests t ON t.id = s.test
                 WHERE s.test = ?1 AND s.state = ?2",
                params![test, state],
                |r| {
                    Ok(TestRow {
                        id: test.to_string(),
                        outcome: r.get(0)?,
                        report: r.get(1)?,
                        duration: r.get(2)?,
                        file: r.get(3)?,
                        failures: r.get(4)?,
                        incomplete: None,
                    })
                },
            )
            .optional()
            .map_err(self.sql())
    }

    /// Makes a recorded state current again: the test's outcome and its
    /// dependencies' fingerprints become that state's (no rerun needed).
    pub fn restore(&mut self, row: &TestRow, deps: &[Dep]) -> Result<(), DbError> {
        let path = self.path.clone();
        let sql = |source| DbError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        tx.execute(
            "UPDATE tests SET outcome = ?2, report = ?3, duration = ?4 WHERE id = ?1",
            params![row.id, row.outcome, row.report, row.duration],
        )
        .map_err(sql)?;
        tx.execute("DELETE FROM deps WHERE test = ?1", params![row.id])
            .map_err(sql)?;
        for dep in deps {
            tx.execute(
                "INSERT INTO deps (test, path, block, fp) VALUES (?1, ?2, ?3, ?4)",
                params![dep.test, dep.path.to_string_lossy(), dep.block, dep.fp],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }

    /// Every dependency of one test.
    pub fn deps_of(&self, test: &str) -> Result<Vec<Dep>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT test, path, block, fp FROM deps WHERE test = ?1")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params![test], |r| {
                Ok(Dep {
                    test: r.get(0)?,
                    path: PathBuf::from(r.get::<_, String>(1)?),
                    block: r.get(2)?,
                    fp: r.get(3)?,
                })
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Forgets a collection error (the file collected, or is gone).
    pub fn clear_collect_error(&mut self, file: &str) -> Result<(), DbError> {
        self.conn
            .execute("DELETE FROM collect_errors WHERE file = ?1", params![file])
            .map_err(self.sql())?;
        Ok(())
    }

    /// Collection errors: (file, missing modules, text).
    pub fn collect_errors(&self) -> Result<Vec<(String, Vec<String>, String)>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT file, missing, text FROM collect_errors ORDER BY file")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| {
                let missing: String = r.get(1)?;
                Ok((
                    r.get::<_, String>(0)?,
                    serde_json::from_str(&missing).unwrap_or_default(),
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Every dependency on `path`, or on any file when `path` is None.
    pub fn deps_on(&self, path: Option<&Path>) -> Result<Vec<Dep>, DbError> {
        let row = |r: &rusqlite::Row<'_>| {
            Ok(Dep {
                test: r.get(0)?,
                path: PathBuf::from(r.get::<_, String>(1)?),
                block: r.get(2)?,
                fp: r.get(3)?,
            })
        };
        let deps: Result<Vec<Dep>, rusqlite::Error> = match path {
            Some(p) => {
                let mut stmt = self
                    .conn
                    .prepare("SELECT test, path, block, fp FROM deps WHERE path = ?1")
                    .map_err(self.sql())?;
                let rows = stmt
                    .query_map(params![p.to_string_lossy()], row)
                    .map_err(self.sql())?;
                rows.collect()
            }
            None => {
                let mut stmt = self
                    .conn
                    .prepare("SELECT test, path, block, fp FROM deps")
                    .map_err(self.sql())?;
                let rows = stmt.query_map([], row).map_err(self.sql())?;
                rows.collect()
            }
        };
        deps.map_err(self.sql())
    }

    /// Every recorded test.
    pub fn tests(&self) -> Result<Vec<TestRow>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, file, outcome, failures, duration, report, incomplete FROM tests ORDER BY id")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(TestRow {
                    id: r.get(0)?,
                    file: r.get(1)?,
                    outcome: r.get(2)?,
                    failures: r.get(3)?,
                    duration: r.get(4)?,
                    report: r.get(5)?,
                    incomplete: r.get(6)?,
                })
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Forgets a test (its file no longer has it).
    pub fn forget(&mut self, test: &str) -> Result<(), DbError> {
        self.conn
            .execute("DELETE FROM tests WHERE id = ?1", params![test])
            .map_err(self.sql())?;
        self.conn
            .execute("DELETE FROM deps WHERE test = ?1", params![test])
            .map_err(self.sql())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, outcome: &str) -> TestRow {
        TestRow {
            id: id.into(),
            file: "t.py".into(),
            outcome: outcome.into(),
            ..Default::default()
        }
    }

    #[test]
    fn records_and_counts_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.db");
        let (mut db, warning) = Db::open(&path).unwrap();
        assert!(warning.is_none());
        assert!(db.is_empty().unwrap());
        let dep = Dep {
            test: "t.py::a".into(),
            path: "/p/lib.py".into(),
            block: "f".into(),
            fp: "1".into(),
        };
        db.record(&row("t.py::a", "failed"), std::slice::from_ref(&dep))
            .unwrap();
        db.record(&row("t.py::a", "failed"), std::slice::from_ref(&dep))
            .unwrap();
        assert_eq!(db.tests().unwrap()[0].failures, 2);
        assert_eq!(db.deps_on(Some(Path::new("/p/lib.py"))).unwrap(), [dep]);
    }

    #[test]
    fn corrupt_and_older_databases_are_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.db");
        std::fs::write(
            &path,
            b"this is not a database, just text that is long enough",
        )
        .unwrap();
        let (db, warning) = Db::open(&path).unwrap();
        assert!(warning.unwrap().contains("corrupt"));
        assert!(db.is_empty().unwrap());
        drop(db);
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 0i64).unwrap();
        drop(conn);
        let (_db, warning) = Db::open(&path).unwrap();
        assert!(warning.unwrap().contains("schema version 0"), "rebuilt");
    }
}
