//! A worker kernel's end of the relay: the session's UNIX socket for a local
//! worker, a TCP connection back to the controller for a remote one.

use std::io::{Read, Write};
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
