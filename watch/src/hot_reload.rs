//! Hot reload of a paused test on save: the functions a save changed are
//! sent to the paused cycle's kernel as `%%edit FILE::QUALNAME` cells (a
//! Jupyter execute request on its shell channel, as any client's), so they
//! are swapped into the live process and journaled as the user's own edit of
//! the file; the watch then retries the paused step.

use crate::blocks::{python_blocks, Kind};
use kernel::connection_file::{Channel, ConnectionInfo};
use kernel::signing::Signer;
use kernel::wire::{new_header, Message};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use zeromq::{Socket, SocketRecv, SocketSend};

/// What a save changed, for a hot reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Functions to replace: (qualified name, new source with its decorators).
    Functions(Vec<(String, String)>),
    /// A change no function swap can apply (module or class level, a new or
    /// removed function, a syntax error): the reason.
    NotReloadable(String),
    /// Nothing that runs changed.
    Nothing,
}

/// Compares the loaded and the saved source of one file.
pub fn plan(old: &[u8], new: &[u8]) -> Plan {
    let before = python_blocks(old);
    let after = python_blocks(new);
    if after.syntax_error {
        return Plan::NotReloadable("the saved file does not parse".into());
    }
    let names = |b: &crate::blocks::SourceBlocks| {
        let mut n: Vec<String> = b.blocks.iter().map(|b| b.qualname.clone()).collect();
        n.sort();
        n
    };
    if names(&before) != names(&after) {
        return Plan::NotReloadable("functions or classes were added or removed".into());
    }
    let mut functions = Vec::new();
    let text = String::from_utf8_lossy(new);
    let lines: Vec<&str> = text.lines().collect();
    for block in &after.blocks {
        let Some(old_fp) = before.fp_of(&block.qualname) else {
            continue;
        };
        if old_fp == block.fp {
            continue;
        }
        if block.kind != Kind::Function {
            return Plan::NotReloadable(format!(
                "{} changed at {} level",
                block.qualname,
                if block.kind == Kind::Module {
                    "module"
                } else {
                    "class"
                }
            ));
        }
        if block.qualname.contains('.')
            && !after.blocks.iter().any(|b| {
                b.kind == Kind::Class && block.qualname.starts_with(&format!("{}.", b.qualname))
            })
        {
            return Plan::NotReloadable(format!(
                "{} is not a module function or method",
                block.qualname
            ));
        }
        let source = lines[block.start_line - 1..block.end_line.min(lines.len())].join("\n");
        functions.push((block.qualname.clone(), source));
    }
    if functions.is_empty() {
        Plan::Nothing
    } else {
        Plan::Functions(functions)
    }
}

/// Runs `code` in the kernel of `connection_file` as a client's cell;
/// returns the error text when it failed.
pub fn execute(connection_file: &Path, code: &str, timeout: Duration) -> Result<(), String> {
    let info = ConnectionInfo::read(connection_file).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let signer = Signer::new(&info.key);
        let mut shell = zeromq::DealerSocket::new();
        shell
            .connect(&info.endpoint(Channel::Shell))
            .await
            .map_err(|e| format!("cannot reach the paused kernel: {e}"))?;
        let session = uuid_like();
        let request = Message {
            identities: Vec::new(),
            header: new_header("execute_request", &session),
            parent_header: json!({}),
            metadata: json!({}),
            content: json!({"code": code, "silent": false, "store_history": false,
                            "user_expressions": {}, "allow_stdin": false, "stop_on_error": true}),
            buffers: Vec::new(),
        };
        let msg_id = request.header["msg_id"].clone();
        let frames =
            kernel::server::to_zmq(request.to_frames(&signer)).ok_or("cannot frame the request")?;
        shell.send(frames).await.map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let reply = tokio::time::timeout_at(deadline, shell.recv())
                .await
                .map_err(|_| "the kernel did not answer the edit".to_string())?
                .map_err(|e| e.to_string())?;
            let Ok(reply) = Message::parse(reply.into_vec(), &signer) else {
                continue;
            };
            if reply.msg_type() != "execute_reply"
                || reply.parent_header.get("msg_id") != Some(&msg_id)
            {
                continue;
            }
            return match reply.content.get("status").and_then(Value::as_str) {
                Some("ok") => Ok(()),
                _ => Err(format!(
                    "{}: {}",
                    reply
                        .content
                        .get("ename")
                        .and_then(Value::as_str)
                        .unwrap_or("error"),
                    reply
                        .content
                        .get("evalue")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                )),
            };
        }
    })
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("stepkernel-watch-{}-{nanos:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "RATE = 1\n\nclass Cart:\n    def total(self):\n        return 1\n\n\ndef helper():\n    return 2\n";

    #[test]
    fn plans_function_swaps_only() {
        let new = OLD.replace("return 1", "return 3");
        match plan(OLD.as_bytes(), new.as_bytes()) {
            Plan::Functions(f) => {
                assert_eq!(f.len(), 1);
                assert_eq!(f[0].0, "Cart.total");
                assert_eq!(f[0].1, "    def total(self):\n        return 3");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            plan(
                OLD.as_bytes(),
                OLD.replace("RATE = 1", "RATE = 2").as_bytes()
            ),
            Plan::NotReloadable("<module> changed at module level".into())
        );
        assert_eq!(
            plan(OLD.as_bytes(), format!("{OLD}# note\n").as_bytes()),
            Plan::Nothing
        );
        assert!(matches!(
            plan(
                OLD.as_bytes(),
                format!("{OLD}\ndef more():\n    pass\n").as_bytes()
            ),
            Plan::NotReloadable(_)
        ));
    }
}
