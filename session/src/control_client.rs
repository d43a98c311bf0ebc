//! A blocking client of a session's control socket (what `stepkernel ctl`
//! and `stepkernel status` use; `python/stepkernel/client.py` is the same in Python).

use crate::control::{self, PROTOCOL_VERSION};
use crate::session_dir::SessionMeta;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Why a session could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket: the session finished (its files still answer `status`) or never listened.
    #[error("session {id} has no control socket ({state}); its files still answer `status`")]
    NotListening {
        /// The session id.
        id: String,
        /// Its state.
        state: String,
    },
    /// The socket belonged to a dead process and was removed.
    #[error("session {id} is not running (its process {pid} is gone); the stale socket {} was removed", path.display())]
    Stale {
        /// The session id.
        id: String,
        /// The dead pid.
        pid: u32,
        /// The removed socket.
        path: PathBuf,
    },
    /// Talking to the socket failed.
    #[error("control socket {}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The session closed the connection before answering.
    #[error("the session ended before it answered")]
    Ended,
    /// The session's answer was not JSON.
    #[error("unreadable answer from the session: {0}")]
    Protocol(String),
}

/// One connection to a session's control socket.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the session in `dir`, removing a dead session's stale socket.
    pub fn connect(dir: &Path) -> Result<Client, ClientError> {
        let path = control::socket_path(dir);
        let meta = SessionMeta::load(dir).unwrap_or_default();
        let io = |source| ClientError::Io {
            path: path.clone(),
            source,
        };
        match UnixStream::connect(control::connect_path(&path)) {
            Ok(stream) => {
                let writer = stream.try_clone().map_err(io)?;
                Ok(Client {
                    path: path.clone(),
                    reader: BufReader::new(stream),
                    writer,
                })
            }
            Err(_) if exists(&path) && !meta.alive() && control::remove_stale(&path) => {
                Err(ClientError::Stale {
                    id: meta.id,
                    pid: meta.pid,
                    path,
                })
            }
            Err(err) if exists(&path) => Err(io(err)),
            Err(_) => Err(ClientError::NotListening {
                id: meta.id.clone(),
                state: meta.shown_state(),
            }),
        }
    }

    /// Sends one request and returns the whole response object.
    pub fn request(&mut self, verb: &str, args: &[String]) -> Result<Value, ClientError> {
        self.send(&json!({"v": PROTOCOL_VERSION, "verb": verb, "args": args}))?;
        self.read()
    }

    /// Sends `request` as one line.
    pub fn send(&mut self, request: &Value) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(request).expect("serializes");
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Reads one response line.
    pub fn read(&mut self) -> Result<Value, ClientError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(ClientError::Ended),
            Ok(_) => serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string())),
            Err(source) => Err(ClientError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// `events` with follow: calls `each` with every event line's object
    /// until the end line (returned) or `each` returns false.
    pub fn follow(
        &mut self,
        offset: u64,
        mut each: impl FnMut(&Value) -> bool,
    ) -> Result<Option<Value>, ClientError> {
        self.send(
            &json!({"v": PROTOCOL_VERSION, "verb": "events", "offset": offset, "follow": true}),
        )?;
        loop {
            let line = self.read()?;
            if line.get("ok") == Some(&json!(false)) || line.get("end").is_some() {
                return Ok(Some(line));
            }
            if line.get("event").is_some() && !each(&line) {
                return Ok(None);
            }
        }
    }
}

/// Whether `path` exists as a file or a symlink (even one whose target is gone).
fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}
