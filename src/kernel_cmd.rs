//! `stepkernel kernel -f CONNECTION_FILE`: serve one Jupyter kernel.

use anyhow::Context;
use clap::Args;
use kernel::connection_file::ConnectionInfo;
use kernel::server::{BoundKernel, KernelOptions};
use kernel::worker::WorkerConfig;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `stepkernel kernel`.
#[derive(Args)]
pub struct KernelArgs {
    /// The connection file Jupyter wrote for this kernel.
    #[arg(short = 'f', long = "connection-file")]
    pub connection_file: PathBuf,
    /// The Python interpreter to run code in.
    #[arg(long)]
    pub python: Option<PathBuf>,
}

/// Runs the kernel until it is shut down.
pub fn run(args: KernelArgs) -> anyhow::Result<ExitCode> {
    let connection = ConnectionInfo::read(&args.connection_file)?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let python = crate::python::resolve(args.python.as_deref(), &cwd)?;
    let version = crate::python::launcher_version(&python);
    let package_dir = kernel::assets::unpack_worker().context("cannot unpack the Python worker")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let cwd_for_hooks = cwd.clone();
    runtime.block_on(async move {
        let cwd = cwd_for_hooks;
        let options = KernelOptions {
            connection,
            worker: WorkerConfig {
                python,
                package_dir,
                cwd: None,
                version,
                pass_through: None,
                zygote: None,
                terminal_output: false,
            },
            hooks: None,
            run: None,
            run_at_once: false,
        };
        let mut kernel = BoundKernel::bind(options).await?;
        match session::run::notebook_hooks(&cwd) {
            Ok(hooks) => kernel.set_hooks(hooks),
            Err(err) => eprintln!("[stepkernel] notebook stepping disabled: {err}"),
        }
        kernel.serve().await?;
        anyhow::Ok(())
    })?;
    // Background tasks may still hold sockets; leave without waiting for them.
    std::process::exit(0)
}
