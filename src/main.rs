//! The `stepkernel` command: argument parsing and wiring of the library crates.

mod steps;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Run Python tests step by step; pause on failure and attach any Jupyter client.
#[derive(Parser)]
#[command(name = "stepkernel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the tests of a file or directory and their steps.
    Steps(steps::StepsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Steps(args) => steps::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("stepkernel: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
