//! A stepping session: what `stepkernel run` adds around the kernel.
//!
//! - [`run`]: start the kernel and the test run, wait for the end;
//! - [`hooks`]: the kernel's session hooks (instrumenter, journal, events, report, terminal);
//! - [`session_dir`]: `.stepkernel/sessions/<id>/` and `session.json`;
//! - [`report`]: `report.json` (tests written as they finish, by `nested_pretty`); [`report_table`]: `stepkernel report`; [`terminal`]: progress and pause banners;
//! - [`patches`]: `%diff`, `%patch`, `%apply` and `stepkernel patch`;
//! - [`attach`]: connection file copies where Jupyter clients look;
//! - [`control`]: the control socket (`control.sock`); [`control_client`]: talking to it;
//! - [`status`]: what `status` answers, live or from a session's files;
//! - [`discovery`]: finding sessions from any directory;
//! - [`kernel_label`]: the session's name in Jupyter's kernel lists;
//! - [`step_store`]: step reports shared by a run's xdist workers' kernels, and kept from run to run in `.stepkernel/step-reports/`;
//! - [`xdist`]: pytest-xdist workers, each served by a kernel of its own.

pub mod attach;
pub mod control;
pub mod control_client;
pub mod discovery;
pub mod hooks;
pub mod kernel_label;
pub mod listing;
mod nested_pretty;
pub mod patches;
pub mod report;
pub mod report_table;
pub mod run;
pub mod session_dir;
pub mod status;
pub mod step_store;
pub mod steps_reply;
pub mod terminal;
pub mod xdist;
