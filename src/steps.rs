//! `stepkernel steps`: print the tests and steps the instrumenter finds.

use anyhow::Context;
use clap::Args;
use instrumenter::{FileReport, Options, Phase, Report, SourceError, Step, TestReport};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `stepkernel steps`.
#[derive(Args)]
pub struct StepsArgs {
    /// A file or directory, optionally followed by `::TEST`.
    pub target: PathBuf,
    /// Print JSON instead of a tree.
    #[arg(long)]
    pub json: bool,
    /// Regex for step marker comments, with one capture group for the name.
    #[arg(long)]
    pub step_marker: Option<String>,
    /// Regex for one test plan id in `# step: NAME [ID, ID]` (default `[A-Z][A-Z0-9_]*-[0-9]+`).
    #[arg(long, value_name = "REGEX")]
    pub plan_id: Option<String>,
}

/// Runs the `steps` subcommand: exit 1 when any file or test has an error.
pub fn run(args: StepsArgs) -> anyhow::Result<ExitCode> {
    let mut opts = match &args.step_marker {
        Some(pattern) => Options::with_step_marker(pattern)?,
        None => Options::default(),
    };
    if let Some(pattern) = &args.plan_id {
        opts = opts.with_plan_id(pattern)?;
    }
    let (path, name) = split_target(&args.target);
    let mut files = instrumenter::instrument_path(&path, &opts)?;
    if let Some(name) = name {
        files = instrumenter::select(files, &name)?;
    }
    let report = Report { files };
    match print(&report, args.json) {
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.context("writing the report")?,
    }
    Ok(if report.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print(report: &Report, json: bool) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json {
        serde_json::to_writer(&mut out, report)?;
        writeln!(out)?;
    } else {
        for file in &report.files {
            write_file(&mut out, file)?;
        }
    }
    out.flush()
}

/// Splits `PATH::NAME`; a target that exists as a path is taken whole.
fn split_target(target: &Path) -> (PathBuf, Option<String>) {
    let text = target.to_string_lossy();
    if target.exists() {
        return (target.to_path_buf(), None);
    }
    match text.split_once("::") {
        Some((path, name)) if !name.is_empty() => (PathBuf::from(path), Some(name.to_string())),
        _ => (target.to_path_buf(), None),
    }
}

fn write_file(out: &mut impl Write, file: &FileReport) -> std::io::Result<()> {
    writeln!(out, "{}", file.path)?;
    if let Some(error) = &file.error {
        writeln!(out, "  error: {}", located(&file.path, error))?;
    }
    if file.tests.is_empty() && file.error.is_none() {
        writeln!(out, "  (no tests)")?;
    }
    let prefix = format!("{}::", file.path);
    for test in &file.tests {
        write_test(out, file, test, &prefix)?;
    }
    Ok(())
}

/// `path:line:column: message`, the form editors and terminals link.
fn located(path: &str, error: &SourceError) -> String {
    match (error.line, error.column) {
        (Some(line), Some(col)) => format!("{path}:{line}:{col}: {}", error.message),
        (Some(line), None) => format!("{path}:{line}: {}", error.message),
        _ => format!("{path}: {}", error.message),
    }
}

fn write_test(
    out: &mut impl Write,
    file: &FileReport,
    test: &TestReport,
    prefix: &str,
) -> std::io::Result<()> {
    let rel = test.id.strip_prefix(prefix).unwrap_or(&test.id);
    let kind = match test.kind {
        instrumenter::TestKind::Unittest => "unittest",
        instrumenter::TestKind::Pytest => "pytest",
    };
    writeln!(out, "  {rel}  [{kind}]")?;
    if let Some(error) = &test.error {
        writeln!(out, "    error: {}", located(&file.path, error))?;
    }
    for phase in &test.phases {
        write_phase(out, phase, test.class.as_deref())?;
    }
    Ok(())
}

fn write_phase(out: &mut impl Write, phase: &Phase, class: Option<&str>) -> std::io::Result<()> {
    let mut notes = Vec::new();
    // Name the function only when it is not the obvious one (inherited).
    let obvious = match class {
        Some(class) => format!("{class}.{}", phase.name),
        None => phase.name.clone(),
    };
    if phase.function != obvious {
        notes.push(format!("from {}", phase.function));
    }
    if phase.is_async {
        notes.push("async".into());
    }
    if phase.is_generator {
        notes.push("generator: one step".into());
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!("  ({})", notes.join(", "))
    };
    writeln!(out, "    {}{notes}", phase.name)?;
    if phase.steps.is_empty() {
        writeln!(out, "      (no steps)")?;
    }
    for step in &phase.steps {
        write_step(out, step)?;
    }
    Ok(())
}

fn write_step(out: &mut impl Write, step: &Step) -> std::io::Result<()> {
    let lines = if step.start_line == step.end_line {
        format!("{}", step.start_line)
    } else {
        format!("{}-{}", step.start_line, step.end_line)
    };
    let flags = if step.flags.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = step.flags.iter().map(|f| f.as_str()).collect();
        format!("  [{}]", names.join(", "))
    };
    let plan = if step.plan_ids.is_empty() {
        String::new()
    } else {
        format!("  plan {}", step.plan_ids.join(", "))
    };
    writeln!(
        out,
        "      {:>3}  L{lines:<8} {}{flags}{plan}",
        step.index, step.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_splits_at_the_first_double_colon_unless_it_exists() {
        let (path, name) = split_target(Path::new("tests/test_x.py::TestA::test_b"));
        assert_eq!(path, PathBuf::from("tests/test_x.py"));
        assert_eq!(name.as_deref(), Some("TestA::test_b"));
        let (path, name) = split_target(Path::new("Cargo.toml"));
        assert_eq!(path, PathBuf::from("Cargo.toml"));
        assert_eq!(name, None);
        let (_, name) = split_target(Path::new("missing.py::"));
        assert_eq!(name, None);
    }
}
