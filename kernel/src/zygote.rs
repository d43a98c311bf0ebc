//! Workers forked from a pre-imported zygote (`stepkernel watch`): the
//! kernel's side of the request; the zygote is
//! `worker/stepkernel_worker/zygote.py`, whose docstring has the protocol.
//!
//! The kernel sends the environment it would give a worker it starts and the
//! worker's descriptors (stdout and stderr pipes, the channel, the event
//! ring); the zygote answers with the child's pid, later with its exit. The
//! connection stays open for the child's life: when it closes (this kernel
//! ended, or was killed) the zygote kills the child, as a worker started here
//! dies with its kernel.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Names the zygote's listening descriptor in its environment.
pub const FD_ENV: &str = "STEPKERNEL_ZYGOTE_FD";

/// How long a zygote may take to answer (it may still be importing when the
/// first cycle asks: waiting is then shorter than a start of Python).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a worker was not forked.
#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    /// No zygote listens (not started yet, ended, or restarting).
    #[error("no pre-imported worker at {path}: {error}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The zygote ended while asked (it refused to start, or was replaced).
    #[error("the pre-imported worker ended: {0}")]
    Gone(std::io::Error),
    /// The zygote would not fork (`stale`: it is being replaced).
    #[error("the pre-imported worker refused: {reason}")]
    Refused {
        /// What it said.
        reason: String,
        /// Something it imported changed.
        stale: bool,
    },
    /// The request or its answer failed.
    #[error("talking to the pre-imported worker: {0}")]
    Io(std::io::Error),
}

/// What the zygote needs to make a child the worker this kernel would start.
pub struct Request<'a> {
    /// The interpreter (as the kernel would run it).
    pub python: &'a Path,
    /// The embedded worker package's directory.
    pub package_dir: &'a Path,
    /// The worker's working directory.
    pub cwd: &'a Path,
    /// The worker's whole environment.
    pub env: Vec<(OsString, OsString)>,
    /// The worker's end of the channel.
    pub channel: BorrowedFd<'a>,
    /// The event ring's memory, when there is one.
    pub ring: Option<BorrowedFd<'a>>,
    /// Terminals for the child's output where the kernel's are (`output_tty`).
    pub terminal_output: bool,
}

/// A forked worker.
pub struct Forked {
    /// The child's pid (also its process group).
    pub pid: i32,
    /// The connection its exit is reported on; closing it kills the child.
    pub status: UnixStream,
    /// Read end of the child's stdout (a pipe, or a terminal's master).
    pub stdout: OwnedFd,
    /// Read end of the child's stderr (a pipe, or a terminal's master).
    pub stderr: OwnedFd,
}

/// Asks the zygote listening at `socket` for a worker.
pub fn fork(socket: &Path, request: &Request<'_>) -> Result<Forked, ZygoteError> {
    // A deep directory's socket is a symlink to a short path (`sun_path` is 108 bytes).
    let target = std::fs::read_link(socket).unwrap_or_else(|_| socket.to_path_buf());
    let mut stream = UnixStream::connect(&target).map_err(|error| ZygoteError::Connect {
        path: socket.to_path_buf(),
        error,
    })?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(ZygoteError::Io)?;
    let output = |like: BorrowedFd<'_>| match request.terminal_output {
        true => match crate::output_tty::like(like) {
            Ok(Some(tty)) => Ok((tty.master, tty.slave)),
            _ => pipe(),
        },
        false => pipe(),
    };
    let (stdout_read, stdout_write) = output(std::io::stdout().as_fd()).map_err(ZygoteError::Io)?;
    let (stderr_read, stderr_write) = output(std::io::stderr().as_fd()).map_err(ZygoteError::Io)?;
    let mut names = vec!["stdout", "stderr", "channel"];
    let mut fds = vec![
        stdout_write.as_raw_fd(),
        stderr_write.as_raw_fd(),
        request.channel.as_raw_fd(),
    ];
    if let Some(ring) = request.ring {
        names.push("ring");
        fds.push(ring.as_raw_fd());
    }
    let env_hex: Vec<String> = request
        .env
        .iter()
        .map(|(k, v)| {
            let mut entry = k.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(v.as_bytes());
            hex(&entry)
        })
        .collect();
    let lossy = |p: &Path| p.to_string_lossy().into_owned();
    let mut line = serde_json::to_vec(&serde_json::json!({
        "v": 1,
        "python": lossy(request.python),
        "package_dir": lossy(request.package_dir),
        "cwd": lossy(request.cwd),
        "env_hex": env_hex,
        "fds": names,
    }))
    .expect("JSON serializes");
    line.push(b'\n');
    let sent = send_with_fds(&stream, &line, &fds).map_err(ZygoteError::Io)?;
    stream.write_all(&line[sent..]).map_err(ZygoteError::Io)?;
    // The child has its copies now.
    drop(stdout_write);
    drop(stderr_write);
    let answer = read_line(&mut stream).map_err(|err| match err.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            ZygoteError::Gone(err)
        }
        _ => ZygoteError::Io(err),
    })?;
    let answer: serde_json::Value = serde_json::from_slice(&answer)
        .map_err(|e| ZygoteError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    if let Some(reason) = answer.get("refused") {
        return Err(ZygoteError::Refused {
            reason: reason.as_str().unwrap_or("no reason given").to_string(),
            stale: answer.get("stale").and_then(|s| s.as_bool()) == Some(true),
        });
    }
    let pid = answer
        .get("pid")
        .and_then(|p| p.as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            ZygoteError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected answer {answer}"),
            ))
        })?;
    stream.set_read_timeout(None).map_err(ZygoteError::Io)?;
    Ok(Forked {
        pid,
        status: stream,
        stdout: stdout_read,
        stderr: stderr_read,
    })
}

/// How the zygote said the child ended (None: the zygote ended first).
pub fn describe_exit(line: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    if let Some(code) = value.get("exit").and_then(|c| c.as_i64()) {
        return Some(format!("exited with code {code}"));
    }
    let sig = value.get("signal").and_then(|s| s.as_i64())?;
    let name = match sig as i32 {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    };
    Some(format!("killed by signal {sig} ({name})"))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The first line of the answer, byte by byte (what follows is the exit
/// report, read later by the kernel's exit watcher).
fn read_line(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the zygote closed the connection",
                ))
            }
            _ if byte[0] == b'\n' => return Ok(line),
            _ => line.push(byte[0]),
        }
    }
}

/// Sends `data` with `fds` attached; returns how many bytes went.
fn send_with_fds(stream: &UnixStream, data: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer is CMSG_SPACE(fd_bytes) long, so the first
    // header and its data fit; the descriptors are copied into it.
    let sent = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, libc::CMSG_DATA(cmsg), fd_bytes);
        libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// A pipe (read end, write end), both close-on-exec.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints; both fds are owned right after.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two open descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reports_read_as_the_kernel_words_them() {
        assert_eq!(
            describe_exit(br#"{"exit": 3}"#).as_deref(),
            Some("exited with code 3")
        );
        assert_eq!(
            describe_exit(br#"{"signal": 9}"#).as_deref(),
            Some("killed by signal 9 (SIGKILL)")
        );
        assert_eq!(describe_exit(b"garbage"), None);
        assert_eq!(hex(b"A=\xff"), "413dff");
    }
}
