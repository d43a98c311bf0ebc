//! `stepkernel replay TRACE WALK_ID`: one walk of a `stepkernel.walks` trace, run as `stepkernel run` runs tests.
//!
//! The Python side (`python -m stepkernel.walks replay-target`) reads the trace and
//! answers what to run: the walk's pytest node id, or a generated one-walk test file.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use crate::run_cmd::{RunArgs, USAGE_ERROR};

/// Arguments of `stepkernel replay`.
#[derive(Args)]
pub struct ReplayArgs {
    /// A trace written by `stepkernel.walks` (`log_dir=`).
    pub trace: PathBuf,
    /// The walk's id (`Add:1-Discount:10`) or its index in the trace.
    pub walk: String,
    /// Arguments passed to pytest (after `--`).
    #[arg(last = true, value_name = "PYTEST_ARGS")]
    pub pytest_args: Vec<String>,
    /// The Python interpreter (chosen as for `stepkernel run`).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// What a failing action does: pause for a client, or fail.
    #[arg(long, default_value = "pause", value_parser = ["pause", "fail"])]
    pub on_error: String,
    /// Session directory (default: .stepkernel/sessions/<id>).
    #[arg(long, value_name = "DIR")]
    pub session_dir: Option<PathBuf>,
    /// Write a JUnit XML report.
    #[arg(long, value_name = "FILE")]
    pub junit_xml: Option<PathBuf>,
    /// Less output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Once the run is over, stay up at most SECONDS for attached clients.
    #[arg(long, value_name = "SECONDS")]
    pub linger: Option<u64>,
}

/// What the Python side says to run.
#[derive(serde::Deserialize)]
struct Target {
    target: String,
    #[serde(default)]
    pytest_args: Vec<String>,
    walk: String,
    #[serde(default)]
    outcome: String,
}

/// Runs the subcommand (exit codes as `stepkernel run`'s; a bad trace or id is a usage error).
pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let rootdir = std::env::current_dir().context("cannot read the current directory")?;
    let python = match crate::python::resolve(args.python.as_deref(), &rootdir) {
        Ok(python) => python,
        Err(err) => {
            eprintln!("stepkernel: error: {err:#}");
            return Ok(ExitCode::from(USAGE_ERROR));
        }
    };
    let asked = Command::new(&python)
        .args(["-m", "stepkernel.walks", "replay-target"])
        .arg(&args.trace)
        .arg(&args.walk)
        .current_dir(&rootdir)
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let stderr = String::from_utf8_lossy(&asked.stderr);
    if !asked.status.success() {
        if stderr.contains("No module named stepkernel.walks")
            || stderr.contains("No module named 'stepkernel'")
        {
            eprintln!(
                "stepkernel: error: {} cannot import stepkernel.walks: install the stepkernel wheel there \
                 (pip install stepkernel-*.whl), or put a checkout's python/ on PYTHONPATH",
                python.display()
            );
        } else {
            eprint!("{stderr}");
        }
        return Ok(ExitCode::from(USAGE_ERROR));
    }
    eprint!("{stderr}"); // warnings: lines of the trace skipped
    let target: Target = serde_json::from_slice(&asked.stdout)
        .with_context(|| format!("unexpected answer from {}", python.display()))?;
    if !args.quiet {
        let was = if target.outcome.is_empty() {
            String::new()
        } else {
            format!(" (it {} in the trace)", target.outcome)
        };
        eprintln!(
            "stepkernel: replaying walk {}{was}: {}",
            target.walk, target.target
        );
    }
    let mut pytest_args = target.pytest_args;
    pytest_args.extend(args.pytest_args);
    crate::run_cmd::run(RunArgs {
        targets: vec![target.target],
        pytest_args,
        runner: "pytest".into(),
        python: Some(python),
        on_error: args.on_error,
        junit_xml: args.junit_xml,
        session_dir: args.session_dir,
        ip: "127.0.0.1".into(),
        ports: "auto".into(),
        step_marker: None,
        plan_id: None,
        quiet: args.quiet,
        allow_client_shutdown: false,
        linger: args.linger,
        external_dir: None,
        hooks: None,
        numprocesses: None,
        zygote: None,
        no_id_hints: false,
    })
}
