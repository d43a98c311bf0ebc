//! `stepkernel report`: a session's results by test, step, test plan id or error.

use clap::Args;
use session::report_table::{self, By};
use std::process::ExitCode;

/// Arguments of `stepkernel report`.
#[derive(Args)]
pub struct ReportArgs {
    /// Session id, id prefix or directory (default: the latest live session, else the latest).
    pub session: Option<String>,
    /// What one row is: a test, a step name, a test plan id, or a failure kind
    /// (exception type and first line of its message).
    #[arg(long, default_value = "test", value_parser = ["test", "step", "plan", "error"])]
    pub by: String,
    /// Print JSON (the report.json section the table shows).
    #[arg(long)]
    pub json: bool,
}

/// `stepkernel report [SESSION] [--by test|step|plan|error] [--json]`.
pub fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let (dir, meta) = crate::ctl_cmd::choose(args.session.as_deref(), true)?;
    let by = By::parse(&args.by).expect("clap checked --by");
    let report = report_table::load(&dir, &meta.id)?;
    if args.json {
        println!("{}", report_table::section(&report, by));
    } else {
        println!("{}", report_table::render(&report, by));
    }
    Ok(ExitCode::SUCCESS)
}
