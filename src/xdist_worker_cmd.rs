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
    /// The session directory of the run this worker belongs to (a local worker).
    #[arg(long, value_name = "DIR", required_unless_present = "relay")]
    pub session_dir: Option<PathBuf>,
    /// A remote worker: `HOST:PORT` of the controller's TCP relay (its token in
    /// the environment's STEPKERNEL_RELAY_TOKEN); files stay on this host.
    #[arg(
        long,
        value_name = "HOST:PORT",
        requires = "session_id",
        conflicts_with = "session_dir"
    )]
    pub relay: Option<String>,
    /// A remote worker: the id of the session it belongs to.
    #[arg(long, value_name = "ID")]
    pub session_id: Option<String>,
    /// A remote worker: this host as the controller names it (attach lines).
    #[arg(long, value_name = "HOST", default_value = "HOST")]
    pub remote_host: String,
    /// A remote worker reached over SSH (`--tx ssh=`).
    #[arg(long)]
    pub ssh: bool,
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
    let remote = match args.relay {
        Some(address) => {
            let token = std::env::var(session::xdist::relay_stream::TOKEN_ENV).map_err(|_| {
                anyhow::anyhow!(
                    "--relay needs the relay's token in {}",
                    session::xdist::relay_stream::TOKEN_ENV
                )
            })?;
            // The tests this kernel serves must not see it. SAFETY: no other
            // thread runs yet (the async runtime starts later).
            std::env::remove_var(session::xdist::relay_stream::TOKEN_ENV);
            Some(session::xdist::RemoteRelay {
                address,
                token,
                session_id: args.session_id.unwrap_or_default(),
                host: args.remote_host,
                ssh: args.ssh,
            })
        }
        None => None,
    };
    let package_dir = kernel::assets::unpack_worker().context("cannot unpack the Python worker")?;
    let options = session::xdist::WorkerOptions {
        session_dir: args.session_dir.unwrap_or_default(),
        worker: args.worker,
        python: args.python,
        args: args.args,
        ip: args.ip,
        step_marker: args.step_marker,
        plan_id: args.plan_id,
        external_dir: args.external_dir,
        package_dir,
        remote,
    };
    let code = session::xdist::serve_worker(options).context("the xdist worker's kernel")?;
    // Tasks may still hold sockets; leave without waiting for them.
    std::process::exit(code)
}
