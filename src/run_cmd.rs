//! `stepkernel run`: arguments, then the session crate does the work.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `stepkernel run`.
#[derive(Args)]
pub struct RunArgs {
    /// Test files, directories or node ids (`path::Class::test`); then `-- PYTEST_ARGS`.
    #[arg(value_name = "PATH|NODEID")]
    pub targets: Vec<String>,
    /// Arguments passed to pytest (after `--`), e.g. `-k cart -m "not slow"`.
    #[arg(last = true, value_name = "PYTEST_ARGS")]
    pub pytest_args: Vec<String>,
    /// Run the tests in N pytest-xdist workers (`auto`: one per CPU), each stepped
    /// and pausing on its own; `--dist worksteal` unless `-- --dist ...` says otherwise.
    #[arg(short = 'n', long = "numprocesses", value_name = "N")]
    pub numprocesses: Option<String>,
    /// Which runner collects and reports tests.
    #[arg(long, default_value = "auto", value_parser = ["auto", "pytest", "unittest"])]
    pub runner: String,
    /// The Python interpreter (default: $STEPKERNEL_PYTHON, $VIRTUAL_ENV, the project's .venv, stepkernel's own virtualenv, python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// What a failing step does: pause for a client, or fail like a normal run.
    #[arg(long, default_value = "pause", value_parser = ["pause", "fail"])]
    pub on_error: String,
    /// Write a JUnit XML report (pytest's conventions).
    #[arg(long, value_name = "FILE")]
    pub junit_xml: Option<PathBuf>,
    /// Session directory (default: .stepkernel/sessions/<id>).
    #[arg(long, value_name = "DIR")]
    pub session_dir: Option<PathBuf>,
    /// Address the kernel binds (0.0.0.0 to attach from another machine).
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: String,
    /// Ports: `auto` or a range of five, e.g. 9000-9004.
    #[arg(long, default_value = "auto")]
    pub ports: String,
    /// Regex for step marker comments, with one capture group for the name.
    #[arg(long, value_name = "REGEX")]
    pub step_marker: Option<String>,
    /// Regex for one test plan id in `# step: NAME [ID, ID]` (default `[A-Z][A-Z0-9_]*-[0-9]+`).
    #[arg(long, value_name = "REGEX")]
    pub plan_id: Option<String>,
    /// A module of step hooks (`stepkernel_step_error`, ...) as plain functions,
    /// imported from the project directory; for `--runner unittest` (pytest also takes them from conftest.py).
    #[arg(long, value_name = "MODULE")]
    pub hooks: Option<String>,
    /// Less output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Let an attached client's shutdown request end the session.
    #[arg(long)]
    pub allow_client_shutdown: bool,
    /// Once the run is over, stay up at most SECONDS for attached clients
    /// (default: until they detach or send %end; 0: end at once).
    #[arg(long, value_name = "SECONDS")]
    pub linger: Option<u64>,
    /// jupyter_server's external kernels directory.
    #[arg(long, value_name = "DIR")]
    pub external_dir: Option<PathBuf>,
    /// A pre-imported worker's socket to fork the worker from (`stepkernel watch` gives it).
    #[arg(long, value_name = "SOCKET", hide = true)]
    pub zygote: Option<PathBuf>,
    /// No hints for node ids the instrumenter does not find (`stepkernel
    /// watch` names ids it recorded; the recorder reports those that are gone).
    #[arg(long, hide = true)]
    pub no_id_hints: bool,
}

fn parse_ports(spec: &str) -> anyhow::Result<Option<u16>> {
    if spec == "auto" {
        return Ok(None);
    }
    let (a, b) = spec
        .split_once('-')
        .context("--ports takes `auto` or a range like 9000-9004")?;
    let first: u16 = a.trim().parse().context("--ports: bad first port")?;
    let last: u16 = b.trim().parse().context("--ports: bad last port")?;
    anyhow::ensure!(
        last >= first && last - first >= 4,
        "--ports needs five ports (shell, iopub, stdin, control, heartbeat), e.g. 9000-9004"
    );
    Ok(Some(first))
}

/// pytest's exit code for a usage error (bad option, missing file, unknown node id).
pub const USAGE_ERROR: u8 = 4;
/// pytest's exit code for an internal error.
pub const INTERNAL_ERROR: u8 = 3;

/// Runs the subcommand; exit codes follow pytest's table.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let first_port = match parse_ports(&args.ports) {
        Ok(port) => port,
        Err(err) => {
            eprintln!("stepkernel: error: {err:#}");
            return Ok(ExitCode::from(USAGE_ERROR));
        }
    };
    match start(args, first_port) {
        Ok(code) => Ok(code),
        Err(err) => {
            eprintln!("stepkernel: error: {err:#}");
            Ok(ExitCode::from(INTERNAL_ERROR))
        }
    }
}

fn start(args: RunArgs, first_port: Option<u16>) -> anyhow::Result<ExitCode> {
    let rootdir = std::env::current_dir().context("cannot read the current directory")?;
    let python = match crate::python::resolve(args.python.as_deref(), &rootdir) {
        Ok(python) => python,
        Err(err) => {
            // A --python that names nothing is a usage error, as pytest counts them.
            eprintln!("stepkernel: error: {err:#}");
            return Ok(ExitCode::from(USAGE_ERROR));
        }
    };
    let package_dir = kernel::assets::unpack_worker().context("cannot unpack the Python worker")?;
    let mut pytest_args = args.pytest_args;
    if let Some(n) = args.numprocesses {
        pytest_args.splice(0..0, ["-n".to_string(), n]);
    }
    let options = session::run::RunOptions {
        targets: args.targets,
        pytest_args,
        runner: args.runner,
        python,
        on_error: args.on_error,
        junit_xml: args.junit_xml,
        session_dir: args.session_dir,
        ip: args.ip,
        first_port,
        step_marker: args.step_marker,
        plan_id: args.plan_id,
        hooks: args.hooks,
        quiet: args.quiet,
        allow_client_shutdown: args.allow_client_shutdown,
        linger: args.linger.map(std::time::Duration::from_secs),
        external_dir: args.external_dir,
        zygote: args.zygote,
        id_hints: !args.no_id_hints,
        package_dir,
        rootdir,
    };
    match session::run::run(options) {
        Ok(code) => {
            // Tasks may still hold sockets; leave without waiting for them.
            std::process::exit(code)
        }
        Err(session::run::RunError::Usage(message)) => {
            eprintln!("stepkernel: error: {message}");
            Ok(ExitCode::from(USAGE_ERROR))
        }
        Err(err) => Err(err.into()),
    }
}
