//! SIGKILL while journaling: every acknowledged edit is in the journal afterwards.
//!
//! No libtest harness: the binary re-runs itself as the writer (selected by an
//! environment variable), which acknowledges each edit on stdout only after
//! `Journal::append` returned, and is killed once enough edits were acknowledged.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use patchgen::{effective_edits, render_file, Journal};

const WRITER_ENV: &str = "PATCHGEN_JOURNAL_KILL_WRITER";
const SRC: &str = "def test_a():\n    x = 0\n    assert x == 1\n";
const ACKS_BEFORE_KILL: usize = 200;

fn nth_edit(n: usize) -> patchgen::Edit {
    let mut e = support::edit(SRC, "test_a.py", (2, 2), "    ", "", "test_a.py::test_a", n);
    e.new_text = format!("x = {n}\n# {}", "padding ".repeat(n % 50));
    e
}

fn writer(path: &Path) {
    let mut journal = Journal::open(path).expect("open journal");
    let mut stdout = std::io::stdout().lock();
    for n in 0.. {
        journal.append(&nth_edit(n)).expect("append");
        writeln!(stdout, "{n}").expect("ack");
        stdout.flush().expect("flush");
    }
}

fn main() {
    if let Some(path) = std::env::var_os(WRITER_ENV) {
        writer(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(WRITER_ENV, &path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn writer");
    let mut acked = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let n: usize = line.unwrap().trim().parse().unwrap();
        acked = Some(n);
        if n + 1 >= ACKS_BEFORE_KILL {
            break;
        }
    }
    child.kill().expect("SIGKILL the writer");
    child.wait().unwrap();
    let acked = acked.expect("the writer acknowledged edits") + 1;

    let contents = Journal::read(&path).unwrap();
    assert!(
        contents.damaged_lines.is_empty(),
        "{:?}",
        contents.damaged_lines
    );
    assert!(
        contents.edits.len() >= acked,
        "{} acknowledged, {} journaled",
        acked,
        contents.edits.len()
    );
    for (n, e) in contents.edits.iter().enumerate() {
        // The writer stamped its own time; compare everything else.
        let mut expected = nth_edit(n);
        expected.time = e.time.clone();
        assert_eq!(*e, expected, "record {n}");
    }
    // Replay gives the last journaled edit of the step.
    let last = contents.edits.len() - 1;
    let replayed = render_file(SRC, &effective_edits(&contents.edits)).unwrap();
    assert!(
        replayed.starts_with(&format!("def test_a():\n    x = {last}\n")),
        "{replayed}"
    );
    println!(
        "journal_kill: ok ({acked} acknowledged, {} journaled, truncated tail: {})",
        contents.edits.len(),
        contents.truncated_tail
    );
}
