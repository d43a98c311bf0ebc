//! Steering a stepping run from outside the Jupyter channels (the session's
//! control socket): the same worker messages the magics send, serialised by
//! the executor so two steering clients never race each other.

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::executor::Control;

/// What a steering client asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum SteerCommand {
    /// `retry`, `next`, `continue`, `skip`, `fail`, `abort` (while paused).
    Resume(String),
    /// Pause before the next step (while running).
    Pause,
    /// Add one breakpoint (`{"test", "phase", "step"}`; null test or phase: any).
    AddBreakpoint(Value),
    /// Replace all breakpoints (`%break N...`; empty: `clear`).
    SetBreakpoints(Vec<Value>),
    /// Replace the debugger's breakpoints of one source (None: of every source),
    /// keeping the others (`%break`'s included).
    SetSourceBreakpoints {
        /// The debugger client's path of the source.
        source: Option<String>,
        /// Breakpoint items, each with a `source` key.
        items: Vec<Value>,
    },
    /// `queue add|remove NODEID...`: tests to run in this session after the
    /// selected ones (the pytest plugin takes them with `host.take_queued()`).
    Queue {
        /// `add` or `remove`.
        op: String,
        /// pytest node ids.
        nodeids: Vec<String>,
    },
    /// `on_error` for the rest of the run (`test` None) or for one test.
    OnError {
        /// `pause` or `fail`.
        mode: String,
        /// A pytest node id, or None for every test.
        test: Option<String>,
    },
}

/// The resume actions a paused test accepts.
pub const RESUME_ACTIONS: &[&str] = &["retry", "next", "continue", "skip", "fail", "abort"];

/// Why a steering command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SteerError {
    /// The run is not in a state where the command applies (not paused, finished...).
    #[error("{0}")]
    State(String),
    /// The command needs something this build does not do yet.
    #[error("{0}")]
    Unsupported(String),
    /// The kernel has stopped.
    #[error("the session has ended")]
    Ended,
}

/// A handle that sends steering commands to a kernel's executor.
#[derive(Clone)]
pub struct Steering {
    pub(crate) tx: mpsc::UnboundedSender<Control>,
}

impl Steering {
    /// Sends `command` and waits for the executor's answer (a sentence saying what it did).
    pub async fn send(&self, command: SteerCommand) -> Result<String, SteerError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Control::Steer(command, reply))
            .map_err(|_| SteerError::Ended)?;
        answer.await.map_err(|_| SteerError::Ended)?
    }
}

/// Parses `on_error MODE [TEST]` arguments (`%set on_error ...`, the socket's `set`).
pub fn parse_on_error(args: &[&str]) -> Result<SteerCommand, String> {
    let usage = "usage: set on_error pause|fail [TEST]";
    match args {
        ["on_error", mode, rest @ ..] if rest.len() <= 1 => {
            if *mode != "pause" && *mode != "fail" {
                return Err(format!("on_error is pause or fail, not {mode:?}; {usage}"));
            }
            Ok(SteerCommand::OnError {
                mode: mode.to_string(),
                test: rest.first().map(|t| t.to_string()),
            })
        }
        [name, ..] if *name != "on_error" => {
            Err(format!("unknown setting {name:?} (only on_error); {usage}"))
        }
        _ => Err(usage.to_string()),
    }
}

/// The worker message for `on_error` (applied at the next step boundary).
pub(crate) fn on_error_message(mode: &str, test: Option<&str>) -> Value {
    json!({"type": "on_error", "mode": mode, "test": test})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_error_arguments() {
        assert_eq!(
            parse_on_error(&["on_error", "fail", "t.py::test_a"]),
            Ok(SteerCommand::OnError {
                mode: "fail".into(),
                test: Some("t.py::test_a".into())
            })
        );
        assert!(parse_on_error(&["on_error", "stop"])
            .unwrap_err()
            .contains("pause or fail"));
        assert!(parse_on_error(&["on_error"]).unwrap_err().contains("usage"));
        assert!(parse_on_error(&["colour", "red"])
            .unwrap_err()
            .contains("unknown setting"));
        assert!(parse_on_error(&["on_error", "fail", "a", "b"]).is_err());
    }
}
