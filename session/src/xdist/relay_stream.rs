//! A worker kernel's end of the relay: the session's UNIX socket for a local
//! worker, a TCP connection back to the controller for a remote one, and the
//! lines and requests it sends over it ([`RelayClient`]).

use serde_json::Value;
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The environment variable a remote worker's kernel reads its relay token from
/// (set in the remote interpreter that starts it, never on a command line).
pub const TOKEN_ENV: &str = "STEPKERNEL_RELAY_TOKEN";

/// One connection to the session's relay.
pub enum RelayStream {
    /// `<session>/workers.sock` (a local worker).
    Unix(UnixStream),
    /// The controller's TCP relay (a remote worker), already past its token line.
    Tcp(TcpStream),
}

impl RelayStream {
    /// Connects to the controller's TCP relay at `address` and presents `token`.
    pub fn connect_tcp(address: &str, token: &str) -> std::io::Result<RelayStream> {
        let mut stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        stream.write_all(format!("{token}\n").as_bytes())?;
        Ok(RelayStream::Tcp(stream))
    }

    /// Sets how long a read may wait.
    pub fn set_read_timeout(&self, wait: Option<Duration>) -> std::io::Result<()> {
        match self {
            RelayStream::Unix(s) => s.set_read_timeout(wait),
            RelayStream::Tcp(s) => s.set_read_timeout(wait),
        }
    }

    /// A second handle on the same connection (for reading).
    pub fn try_clone(&self) -> std::io::Result<RelayStream> {
        Ok(match self {
            RelayStream::Unix(s) => RelayStream::Unix(s.try_clone()?),
            RelayStream::Tcp(s) => RelayStream::Tcp(s.try_clone()?),
        })
    }
}

impl Write for RelayStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            RelayStream::Unix(s) => s.write(buf),
            RelayStream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            RelayStream::Unix(s) => s.flush(),
            RelayStream::Tcp(s) => s.flush(),
        }
    }
}

impl Read for RelayStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            RelayStream::Unix(s) => s.read(buf),
            RelayStream::Tcp(s) => s.read(buf),
        }
    }
}

/// A worker kernel's connection to the session's relay (see relay.rs for what goes over it).
pub struct RelayClient {
    write: RelayStream,
    read: std::io::BufReader<RelayStream>,
    /// The last request's number.
    asked: u64,
}

impl RelayClient {
    /// Reads and writes over `stream`.
    pub fn new(stream: RelayStream) -> std::io::Result<RelayClient> {
        let read = std::io::BufReader::new(stream.try_clone()?);
        Ok(RelayClient {
            write: stream,
            read,
            asked: 0,
        })
    }

    /// Sends one message (a line).
    pub fn send(&mut self, message: &Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(message).expect("serializes");
        line.push(b'\n');
        self.write.write_all(&line)
    }

    /// Sends a request and waits (up to `wait`) for its answer: the text, or why the session refused.
    pub fn request(
        &mut self,
        mut message: Value,
        wait: std::time::Duration,
    ) -> std::io::Result<Result<String, String>> {
        self.asked += 1;
        message["reply"] = serde_json::json!(self.asked);
        self.send(&message)?;
        self.write.set_read_timeout(Some(wait))?;
        loop {
            let mut line = String::new();
            if self.read.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let Ok(answer) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            // A late answer to an earlier request is not this one's.
            if answer.get("reply") != Some(&serde_json::json!(self.asked)) {
                continue;
            }
            let text = |k: &str| {
                answer
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            return Ok(if answer.get("ok") == Some(&Value::Bool(true)) {
                Ok(text("text"))
            } else {
                Err(text("error"))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_request_takes_its_own_answer_and_skips_late_or_broken_lines() {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let mut client = RelayClient::new(RelayStream::Unix(mine)).unwrap();
        let session = std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(theirs.try_clone().unwrap()).lines();
            let mut theirs = theirs;
            let asked: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            assert_eq!(asked["kind"], "journal");
            let id = asked["reply"].clone();
            // A late answer to an earlier request, a broken line, then this one's.
            let late = serde_json::json!({"reply": 0, "ok": true, "text": "old"});
            let answer = serde_json::json!({"reply": id, "ok": false, "error": "refused"});
            write!(theirs, "{late}\nnot json\n{answer}\n").unwrap();
        });
        let answer = client
            .request(
                serde_json::json!({"kind": "journal"}),
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(answer, Err("refused".to_string()));
        session.join().unwrap();
        // The session gone: the request fails (the worker then drops its relay).
        assert!(client
            .request(serde_json::json!({"kind": "sync"}), Duration::from_secs(10))
            .is_err());
    }
}
