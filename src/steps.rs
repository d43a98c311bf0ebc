//! `stepkernel steps`: print the tests and steps the instrumenter finds.

use clap::Args;
use std::path::PathBuf;
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
}

/// Runs the `steps` subcommand.
pub fn run(_args: StepsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
