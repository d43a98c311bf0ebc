//! `stepkernel xdist-worker`: the interpreter execnet starts for one
//! pytest-xdist worker of a `stepkernel run -n N` (set by the run itself).

use anyhow::Context;
use clap::Args;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `stepkernel xdist-worker` (not for users: the run passes them).
#[derive(Args)]
pub struct XdistWorkerArgs {
    /// The session directory of the run this worker belongs to.
    #[arg(long, value_name = "DIR")]
    pub session_dir: PathBuf,
    /// xdist's id of the worker (gw0, gw1, ...).
    #[arg(long)]
    pub worker: String,
    /// The worker's interpreter.
    #[arg(long)]
    pub python: PathBuf,
    /// Address the worker's kernel binds.
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: String,
    /// The run's step marker regex.
    #[arg(long, value_name = "REGEX")]
    pub step_marker: Option<String>,
    /// The run's plan id regex.
    #[arg(long, value_name = "REGEX")]
    pub plan_id: Option<String>,
    /// The run's jupyter_server external kernels directory.
    #[arg(long, value_name = "DIR")]
    pub external_dir: Option<PathBuf>,
    /// The interpreter's arguments from execnet (after `--`).
    #[arg(last = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

/// Serves the worker until it ends.
pub fn run(args: XdistWorkerArgs) -> anyhow::Result<ExitCode> {
    let package_dir = kernel::assets::unpack_worker().context("cannot unpack the Python worker")?;
    let options = session::xdist::WorkerOptions {
        session_dir: args.session_dir,
        worker: args.worker,
        python: args.python,
        args: args.args,
        ip: args.ip,
        step_marker: args.step_marker,
        plan_id: args.plan_id,
        external_dir: args.external_dir,
        package_dir,
    };
    let code = session::xdist::serve_worker(options).context("the xdist worker's kernel")?;
    // Tasks may still hold sockets; leave without waiting for them.
    std::process::exit(code)
}
