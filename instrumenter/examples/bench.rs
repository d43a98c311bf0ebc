//! Throughput of the instrumenter over a directory of Python files.
//!
//! `cargo run --release -p instrumenter --example bench -- DIR [--repeat N]
//! [--single] [--files-out FILE]` reads every `*.py` under DIR into memory,
//! instruments all of them in parallel N times (and once on one thread with
//! `--single`), and prints the best times as `key=value` lines. Reading the
//! files is not timed. `--files-out` writes the file list, so another tool
//! can time itself on exactly the same files. `BENCH_PARSE_ONLY=1` also
//! prints the CPU time of a bare tree-sitter parse of the same files.

use instrumenter::{instrument_source, FileReport, Options};
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

struct Totals {
    tests: usize,
    steps: usize,
    file_errors: usize,
    test_errors: usize,
}

fn totals(reports: &[FileReport]) -> Totals {
    Totals {
        tests: reports.iter().map(|r| r.tests.len()).sum(),
        steps: reports
            .iter()
            .flat_map(|r| &r.functions)
            .map(|f| f.steps.len())
            .sum(),
        file_errors: reports.iter().filter(|r| r.error.is_some()).count(),
        test_errors: reports
            .iter()
            .flat_map(|r| &r.tests)
            .filter(|t| t.error.is_some())
            .count(),
    }
}

/// CPU seconds used by this thread so far (Linux), to compare runs on a
/// busy machine where wall-clock time drifts.
fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let mut repeat = 3usize;
    let mut files_out = None;
    let mut single = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--repeat" => repeat = args.next().ok_or("--repeat needs a number")?.parse()?,
            "--files-out" => files_out = Some(args.next().ok_or("--files-out needs a path")?),
            "--single" => single = true,
            _ => dir = Some(PathBuf::from(arg)),
        }
    }
    let dir = dir.ok_or("usage: bench DIR [--repeat N] [--single] [--files-out FILE]")?;

    let mut paths: Vec<PathBuf> = walkdir::WalkDir::new(&dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "py"))
        .map(|e| e.into_path())
        .collect();
    paths.sort();
    let mut files: Vec<(String, Vec<u8>)> = Vec::with_capacity(paths.len());
    for path in &paths {
        files.push((path.display().to_string(), std::fs::read(path)?));
    }
    if let Some(out) = files_out {
        let list: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        std::fs::write(out, list.join("\n") + "\n")?;
    }
    // Big files first, so no core is left alone with a large file at the end.
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(files[i].1.len()));
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    let opts = Options::default();

    let mut best_parallel = f64::INFINITY;
    let mut reports = Vec::new();
    for _ in 0..repeat.max(1) {
        drop(std::mem::take(&mut reports));
        let start = Instant::now();
        reports = order
            .par_iter()
            .map(|&i| instrument_source(&files[i].0, &files[i].1, &opts))
            .collect::<Vec<_>>();
        best_parallel = best_parallel.min(start.elapsed().as_secs_f64());
    }
    if std::env::var_os("BENCH_PARSE_ONLY").is_some() {
        let lang: tree_sitter::Language = tree_sitter_python::LANGUAGE.into();
        let mut parser = tree_sitter::Parser::new();
        parser.set_language(&lang)?;
        let cpu = thread_cpu_seconds();
        let mut n = 0;
        for (_, source) in &files {
            n += parser
                .parse(source, None)
                .map_or(0, |t| t.root_node().child_count());
        }
        if let (Some(a), Some(b)) = (cpu, thread_cpu_seconds()) {
            eprintln!("parse only, one thread: {:.2} cpu s ({n})", b - a);
        }
    }
    let t = totals(&reports);
    if single {
        let cpu_start = thread_cpu_seconds();
        let start = Instant::now();
        let one: Vec<FileReport> = files
            .iter()
            .map(|(path, source)| instrument_source(path, source, &opts))
            .collect();
        let seconds = start.elapsed().as_secs_f64();
        let cpu = match (cpu_start, thread_cpu_seconds()) {
            (Some(a), Some(b)) => b - a,
            _ => seconds,
        };
        assert_eq!(totals(&one).steps, t.steps, "one thread and many disagree");
        println!("seconds_one_thread={seconds:.6}");
        println!("cpu_seconds_one_thread={cpu:.2}");
    }
    println!("files={}", files.len());
    println!("bytes={bytes}");
    println!("threads={}", rayon::current_num_threads());
    println!("seconds={best_parallel:.6}");
    println!("tests={}", t.tests);
    println!("steps={}", t.steps);
    println!("file_errors={}", t.file_errors);
    println!("test_errors={}", t.test_errors);
    Ok(())
}
