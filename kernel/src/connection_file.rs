//! Jupyter connection files: reading them leniently, writing them safely.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The contents of a Jupyter connection file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectionInfo {
    /// `tcp` or `ipc`.
    #[serde(default = "default_transport")]
    pub transport: String,
    /// IP address for tcp, path prefix for ipc.
    #[serde(default = "default_ip")]
    pub ip: String,
    /// Shell channel port.
    #[serde(default)]
    pub shell_port: u16,
    /// IOPub channel port.
    #[serde(default)]
    pub iopub_port: u16,
    /// Stdin channel port.
    #[serde(default)]
    pub stdin_port: u16,
    /// Control channel port.
    #[serde(default)]
    pub control_port: u16,
    /// Heartbeat port.
    #[serde(default)]
    pub hb_port: u16,
    /// HMAC key; empty disables signing (as Jupyter does).
    #[serde(default)]
    pub key: String,
    /// Only `hmac-sha256` is supported.
    #[serde(default = "default_scheme")]
    pub signature_scheme: String,
    /// The kernelspec name clients should show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_name: Option<String>,
    /// Keys added by newer Jupyter versions are kept, not rejected.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_transport() -> String {
    "tcp".into()
}
fn default_ip() -> String {
    "127.0.0.1".into()
}
fn default_scheme() -> String {
    "hmac-sha256".into()
}

/// Errors reading or writing connection files.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionFileError {
    /// The file could not be read or written.
    #[error("cannot access connection file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid connection file.
    #[error("connection file {path} is not valid JSON for a Jupyter connection: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// An unsupported transport or signature scheme.
    #[error("connection file {path}: {message}")]
    Unsupported {
        /// The file.
        path: String,
        /// What is unsupported.
        message: String,
    },
}

/// The five channels of a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Requests and replies.
    Shell,
    /// Broadcast output and status.
    IoPub,
    /// input() round trips.
    Stdin,
    /// Interrupt, shutdown, kernel_info while busy.
    Control,
    /// Liveness echo.
    Heartbeat,
}

impl ConnectionInfo {
    /// Reads and validates a connection file.
    pub fn read(path: &Path) -> Result<Self, ConnectionFileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConnectionFileError::Io {
            path: name.clone(),
            source,
        })?;
        let info: ConnectionInfo =
            serde_json::from_str(&text).map_err(|source| ConnectionFileError::Parse {
                path: name.clone(),
                source,
            })?;
        if info.transport != "tcp" && info.transport != "ipc" {
            return Err(ConnectionFileError::Unsupported {
                path: name,
                message: format!("transport {:?} (expected tcp or ipc)", info.transport),
            });
        }
        if !info.key.is_empty() && info.signature_scheme != "hmac-sha256" {
            return Err(ConnectionFileError::Unsupported {
                path: name,
                message: format!(
                    "signature scheme {:?} (only hmac-sha256)",
                    info.signature_scheme
                ),
            });
        }
        Ok(info)
    }

    /// A fresh description binding `ip` with ports chosen later (0) and a random 256-bit key.
    pub fn new_random(ip: &str, kernel_name: &str) -> Self {
        let key = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        ConnectionInfo {
            transport: "tcp".into(),
            ip: ip.into(),
            shell_port: 0,
            iopub_port: 0,
            stdin_port: 0,
            control_port: 0,
            hb_port: 0,
            key,
            signature_scheme: default_scheme(),
            kernel_name: Some(kernel_name.into()),
            extra: Default::default(),
        }
    }

    /// The port of one channel.
    pub fn port(&self, channel: Channel) -> u16 {
        match channel {
            Channel::Shell => self.shell_port,
            Channel::IoPub => self.iopub_port,
            Channel::Stdin => self.stdin_port,
            Channel::Control => self.control_port,
            Channel::Heartbeat => self.hb_port,
        }
    }

    /// Records the port a channel actually bound.
    pub fn set_port(&mut self, channel: Channel, port: u16) {
        match channel {
            Channel::Shell => self.shell_port = port,
            Channel::IoPub => self.iopub_port = port,
            Channel::Stdin => self.stdin_port = port,
            Channel::Control => self.control_port = port,
            Channel::Heartbeat => self.hb_port = port,
        }
    }

    /// The ZeroMQ endpoint for a channel (`tcp://ip:port` or `ipc://ip-port`).
    pub fn endpoint(&self, channel: Channel) -> String {
        let port = self.port(channel);
        if self.transport == "ipc" {
            format!("ipc://{}-{}", self.ip, port)
        } else if self.ip.contains(':') {
            format!("tcp://[{}]:{}", self.ip, port)
        } else {
            format!("tcp://{}:{}", self.ip, port)
        }
    }

    /// The IPC socket files this description uses (empty for tcp).
    pub fn ipc_paths(&self) -> Vec<String> {
        if self.transport != "ipc" {
            return Vec::new();
        }
        [
            Channel::Shell,
            Channel::IoPub,
            Channel::Stdin,
            Channel::Control,
            Channel::Heartbeat,
        ]
        .iter()
        .map(|c| format!("{}-{}", self.ip, self.port(*c)))
        .collect()
    }

    /// Writes the file with mode 0600 (it holds the key), through a fresh
    /// temporary file renamed into place: a file or symlink someone put at
    /// `path` is replaced, never written through.
    pub fn write(&self, path: &Path) -> Result<(), ConnectionFileError> {
        let name = path.display().to_string();
        let text = serde_json::to_string_pretty(self).expect("connection info serializes");
        crate::private_files::write_atomic(path, text.as_bytes(), true).map_err(|err| {
            ConnectionFileError::Io {
                path: name,
                source: std::io::Error::other(err.to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unknown_keys_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        std::fs::write(
            &path,
            r#"{"shell_port": 5, "key": "abc", "jupyter_session": "x", "hb_port": 9}"#,
        )
        .unwrap();
        let info = ConnectionInfo::read(&path).unwrap();
        assert_eq!(info.shell_port, 5);
        assert_eq!(info.transport, "tcp");
        assert_eq!(info.extra.get("jupyter_session").unwrap(), "x");
        assert_eq!(info.endpoint(Channel::Heartbeat), "tcp://127.0.0.1:9");
    }

    #[test]
    fn rejects_unknown_transport_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        std::fs::write(&path, r#"{"transport": "udp"}"#).unwrap();
        assert!(matches!(
            ConnectionInfo::read(&path),
            Err(ConnectionFileError::Unsupported { .. })
        ));
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(
            ConnectionInfo::read(&path),
            Err(ConnectionFileError::Parse { .. })
        ));
    }

    #[test]
    fn written_file_is_private_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let info = ConnectionInfo::new_random("127.0.0.1", "stepkernel");
        assert_eq!(info.key.len(), 64);
        info.write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ConnectionInfo::read(&path).unwrap(), info);
    }

    #[test]
    fn ipc_endpoints() {
        let mut info = ConnectionInfo::new_random("/tmp/kern", "x");
        info.transport = "ipc".into();
        info.shell_port = 1;
        assert_eq!(info.endpoint(Channel::Shell), "ipc:///tmp/kern-1");
        assert_eq!(info.ipc_paths().len(), 5);
    }
}
