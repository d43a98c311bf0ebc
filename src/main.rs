//! The `stepkernel` command: argument parsing and wiring of the library crates.

mod console_cmd;
mod ctl_cmd;
mod demo;
mod install;
mod kernel_cmd;
mod lab_cmd;
mod python;
mod replay_cmd;
mod report_cmd;
mod run_cmd;
mod sessions_cmd;
mod ssh_tunnel;
mod steps;
mod watch_cmd;
mod xdist_worker_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// The kernel parses, keeps and writes a JSON value per test event: mimalloc
/// makes those many small allocations about half as costly as glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// tree-sitter's C code allocates through mimalloc too (a cold run parses
/// every test file; glibc's malloc and free were a tenth of that).
fn tree_sitter_uses_mimalloc() {
    use libmimalloc_sys as mi;
    // SAFETY: one allocator family (mimalloc's, aligned as malloc), set before
    // any tree-sitter object exists, on the main thread before others start.
    unsafe {
        tree_sitter::set_allocator(Some(tree_sitter::Allocator {
            malloc: mi::mi_malloc,
            calloc: mi::mi_calloc,
            realloc: mi::mi_realloc,
            free: mi::mi_free,
        }));
    }
}

/// Run Python tests step by step; pause on failure and attach any Jupyter client.
#[derive(Parser)]
#[command(name = "stepkernel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run tests step by step; pause on failure so a Jupyter client can attach.
    Run(run_cmd::RunArgs),
    /// Run one walk of a `stepkernel.walks` trace again, pausing at the action that failed.
    Replay(replay_cmd::ReplayArgs),
    /// Copy the bundled example into a temporary git repo and run it.
    Demo(demo::DemoArgs),
    /// Export a session's edits as a patch for `git am`.
    Patch(sessions_cmd::PatchArgs),
    /// List stepping sessions in this project.
    Sessions(sessions_cmd::SessionsArgs),
    /// Attach `jupyter console` to a session.
    Console(console_cmd::ConsoleArgs),
    /// Start JupyterLab with a session's kernel listed (external kernels).
    Lab(lab_cmd::LabArgs),
    /// Serve a Jupyter kernel (started by Jupyter through the kernelspec).
    Kernel(kernel_cmd::KernelArgs),
    /// Install the `stepkernel` kernelspec for Jupyter.
    Install(install::InstallArgs),
    /// List the tests of a file or directory and their steps.
    Steps(steps::StepsArgs),
    /// Query or steer a session over its control socket (`stepkernel ctl help`).
    Ctl(ctl_cmd::CtlArgs),
    /// A session's state: where it is, tests done, counts, failures (live with --follow).
    Status(ctl_cmd::StatusArgs),
    /// Watch the project and rerun the tests each change affects, failures first.
    Watch(watch_cmd::WatchArgs),
    /// A session's results as a table by test, step, test plan id or error.
    Report(report_cmd::ReportArgs),
    /// The interpreter execnet starts for a pytest-xdist worker of `stepkernel run -n N`.
    #[command(hide = true)]
    XdistWorker(xdist_worker_cmd::XdistWorkerArgs),
}

fn main() -> ExitCode {
    tree_sitter_uses_mimalloc();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help, --version
        Err(err) => {
            // pytest's exit code for a usage error (clap's own is 2: "interrupted" to pytest).
            let _ = err.print();
            return ExitCode::from(run_cmd::USAGE_ERROR);
        }
    };
    let result = match cli.command {
        Command::Run(args) => run_cmd::run(args),
        Command::Replay(args) => replay_cmd::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Patch(args) => sessions_cmd::patch(args),
        Command::Sessions(args) => sessions_cmd::sessions(args),
        Command::Console(args) => console_cmd::console(args),
        Command::Lab(args) => lab_cmd::run(args),
        Command::Kernel(args) => kernel_cmd::run(args),
        Command::Install(args) => install::run(args),
        Command::Steps(args) => steps::run(args),
        Command::Ctl(args) => ctl_cmd::ctl(args),
        Command::Status(args) => ctl_cmd::status(args),
        Command::Watch(args) => watch_cmd::run(args),
        Command::Report(args) => report_cmd::report(args),
        Command::XdistWorker(args) => xdist_worker_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("stepkernel: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
