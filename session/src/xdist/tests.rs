//! The workers' bookkeeping: conflicts, the run's counts, attach targets.

use super::conflicts::EDITS_FILE;
use super::*;

fn worker_with_edits(session: &Path, worker: &str, edits: &[Value]) {
    let dir = worker_dir(session, worker);
    std::fs::create_dir_all(&dir).unwrap();
    let meta = SessionMeta {
        id: format!("s-{worker}"),
        state: "running".into(),
        ..Default::default()
    };
    meta.save(&dir).unwrap();
    let lines: String = edits.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(dir.join(EDITS_FILE), lines).unwrap();
}

fn edit(start: u64, text: &str) -> Value {
    json!({"file": "/p/shop.py", "start_line": start, "end_line": start + 1,
           "new_source": text, "name": "def net"})
}

#[test]
fn differing_edits_of_the_same_lines_by_two_workers_conflict() {
    let session = tempfile::tempdir().unwrap();
    worker_with_edits(session.path(), "gw0", &[edit(1, "a")]);
    worker_with_edits(session.path(), "gw1", &[edit(1, "b"), edit(9, "c")]);
    let found = conflicts(session.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("/p/shop.py lines 1-2"), "{found:?}");
    assert!(
        found[0].contains("gw0 (def net) and gw1 (def net)"),
        "{found:?}"
    );
    assert!(check_conflicts(session.path()).is_err());
}

#[test]
fn the_same_edit_in_two_workers_and_a_later_agreeing_one_do_not_conflict() {
    let session = tempfile::tempdir().unwrap();
    worker_with_edits(session.path(), "gw0", &[edit(1, "a")]);
    // gw1 first differed, then made its edit agree: only its last one counts.
    worker_with_edits(session.path(), "gw1", &[edit(1, "b"), edit(1, "a")]);
    worker_with_edits(session.path(), "gw2", &[edit(5, "x")]);
    assert!(conflicts(session.path()).is_empty());
    assert!(check_conflicts(session.path()).is_ok());
    let names: Vec<String> = workers(session.path()).into_iter().map(|w| w.0).collect();
    assert_eq!(names, ["gw0", "gw1", "gw2"]);
}

#[test]
fn the_controllers_summary_counts_the_workers_tests() {
    let mut summary = json!({"event": "summary", "passed": 0, "total": 0, "exit_code": 0});
    let counts = [("passed".to_string(), 3), ("fixed".to_string(), 1)].into();
    count_workers_tests(&mut summary, &counts);
    assert_eq!(summary["passed"], 3);
    assert_eq!(summary["fixed"], 1);
    assert_eq!(summary["total"], 4);
    assert_eq!(summary["exit_code"], 1, "a fixed test fails the run");
}

#[test]
fn attaching_names_the_workers_there_are() {
    let session = tempfile::tempdir().unwrap();
    let meta = SessionMeta {
        id: "s".into(),
        state: "paused".into(),
        ..Default::default()
    };
    let err = attach_target(session.path(), &meta, Some("gw0")).unwrap_err();
    assert!(err.contains("has no xdist workers"), "{err}");
    worker_with_edits(session.path(), "gw0", &[]);
    worker_with_edits(session.path(), "gw1", &[]);
    let err = attach_target(session.path(), &meta, Some("gw5")).unwrap_err();
    assert!(err.contains("its workers: gw0, gw1"), "{err}");
    let (id, _) = attach_target(session.path(), &meta, Some("gw1"))
        .unwrap()
        .unwrap();
    assert_eq!(id, "gw1");
}
