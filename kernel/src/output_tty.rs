//! Terminals for a worker's output.
//!
//! When `stepkernel run` writes to a terminal, `python -m pytest` there would
//! write to it too: pytest colours its report and fits it to the terminal's
//! width, and test code sees a terminal (`sys.stdout.isatty()` under `-s`,
//! `os.get_terminal_size()`, libraries that colour their output). So the
//! worker's stdout and stderr are then pseudo-terminals shaped like the
//! kernel's own (its terminal's settings and size) instead of pipes. Output
//! post-processing (`OPOST`, which turns `\n` into `\r\n`) is off, so the
//! kernel reads the bytes the worker wrote, as from a pipe.
//!
//! The worker runs in a process group of its own, so a resize of the
//! kernel's terminal signals only the kernel: [`follow_resizes`] passes it on
//! (new size, then `SIGWINCH` to the worker's group, as the terminal sends it
//! to `python -m pytest`'s).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A pseudo-terminal pair: the kernel reads `master`; `slave` becomes the worker's stream.
pub struct OutputTty {
    /// The kernel's end (non-blocking, close-on-exec).
    pub master: OwnedFd,
    /// The worker's end (close-on-exec: given to the child as fd 1 or 2).
    pub slave: OwnedFd,
}

/// A pseudo-terminal like the terminal `like` is, or None when `like` is not a terminal.
pub fn like(like: BorrowedFd<'_>) -> io::Result<Option<OutputTty>> {
    let fd = like.as_raw_fd();
    // SAFETY: isatty only reads the descriptor's kind.
    if unsafe { libc::isatty(fd) } != 1 {
        return Ok(None);
    }
    let pair = open_pair()?;
    let slave = pair.slave.as_raw_fd();
    // SAFETY: termios and winsize are plain C structs filled by the calls below.
    unsafe {
        let mut settings: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut settings) != 0 && libc::tcgetattr(slave, &mut settings) != 0 {
            return Err(io::Error::last_os_error());
        }
        settings.c_oflag &= !libc::OPOST;
        if libc::tcsetattr(slave, libc::TCSANOW, &settings) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) == 0 {
            // A size the terminal does not know (0x0) is left as the pty's own.
            libc::ioctl(slave, libc::TIOCSWINSZ, &size);
        }
    }
    Ok(Some(pair))
}

/// Copies the size of terminal `from` to terminal `to`; false when `from` has none.
fn copy_size(from: RawFd, to: RawFd) -> bool {
    // SAFETY: winsize is a plain C struct filled by TIOCGWINSZ.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        libc::ioctl(from, libc::TIOCGWINSZ, &mut size) == 0
            && (size.ws_row, size.ws_col) != (0, 0)
            && libc::ioctl(to, libc::TIOCSWINSZ, &size) == 0
    }
}

/// Follows the kernel terminal's resizes ([`follow_resizes`]) for those of a
/// worker's output streams (stdout, stderr: their masters) that are terminals.
pub fn follow_for(
    streams: [Option<BorrowedFd<'_>>; 2],
    group: libc::pid_t,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut ttys = Vec::new();
    let likes = [libc::STDOUT_FILENO, libc::STDERR_FILENO];
    for (master, like) in streams.into_iter().zip(likes) {
        let Some(master) = master else { continue };
        // SAFETY: isatty only reads the descriptor's kind.
        if unsafe { libc::isatty(master.as_raw_fd()) } == 1 {
            if let Ok(copy) = master.try_clone_to_owned() {
                ttys.push((copy, like));
            }
        }
    }
    if ttys.is_empty() {
        return None;
    }
    follow_resizes(ttys, group).ok()
}

/// Until the task is aborted, on every `SIGWINCH` the kernel gets: gives each
/// worker terminal (a copy of its master, paired with the kernel's descriptor
/// it was made like) that terminal's new size, then sends `SIGWINCH` to
/// process group `group` (none when `group` is not positive).
pub fn follow_resizes(
    ttys: Vec<(OwnedFd, RawFd)>,
    group: libc::pid_t,
) -> io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut resized = signal(SignalKind::window_change())?;
    Ok(tokio::spawn(async move {
        while resized.recv().await.is_some() {
            let mut changed = false;
            for (master, like) in &ttys {
                changed |= copy_size(*like, master.as_raw_fd());
            }
            if changed && group > 0 {
                // SAFETY: plain syscall.
                unsafe { libc::killpg(group, libc::SIGWINCH) };
            }
        }
    }))
}

fn open_pair() -> io::Result<OutputTty> {
    // SAFETY: posix_openpt returns a new descriptor or -1.
    let master = unsafe {
        libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK)
    };
    if master < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: master was just opened and is owned here alone.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the calls take the open master; ptsname_r writes at most name.len() bytes.
    unsafe {
        if libc::grantpt(master.as_raw_fd()) != 0
            || libc::unlockpt(master.as_raw_fd()) != 0
            || libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: ptsname_r wrote a NUL-terminated path into name.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    // SAFETY: open returns a new descriptor or -1.
    let slave = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: slave was just opened and is owned here alone.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    Ok(OutputTty { master, slave })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_pipe_is_not_a_terminal() {
        let mut fds = [0; 2];
        // SAFETY: pipe fills two new descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both were just opened.
        let (read, _write) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        assert!(like(read.as_fd()).unwrap().is_none());
    }

    #[test]
    fn a_terminal_gets_a_terminal_of_its_size_that_passes_bytes_unchanged() {
        let outer = open_pair().unwrap();
        let size = libc::winsize {
            ws_row: 31,
            ws_col: 117,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: sets the size of an open pty.
        assert_eq!(
            unsafe { libc::ioctl(outer.slave.as_raw_fd(), libc::TIOCSWINSZ, &size) },
            0
        );
        let inner = like(outer.slave.as_fd()).unwrap().expect("a terminal");
        // SAFETY: isatty and TIOCGWINSZ read an open descriptor.
        let mut got: libc::winsize = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::isatty(inner.slave.as_raw_fd()) }, 1);
        assert_eq!(
            unsafe { libc::ioctl(inner.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut got) },
            0
        );
        assert_eq!((got.ws_row, got.ws_col), (31, 117));

        let mut writer = std::fs::File::from(inner.slave);
        writer
            .write_all(b"one\ntwo\r\n\x1b[31mred\x1b[0m\n")
            .unwrap();
        drop(writer);
        // SAFETY: makes the master blocking for this plain read.
        unsafe { libc::fcntl(inner.master.as_raw_fd(), libc::F_SETFL, 0) };
        let mut reader = std::fs::File::from(inner.master);
        let mut read = Vec::new();
        // Once the worker's end is closed a pty's reader gets EIO, not EOF.
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            read.extend_from_slice(&buf[..n]);
        }
        assert_eq!(read, b"one\ntwo\r\n\x1b[31mred\x1b[0m\n");
    }

    #[tokio::test]
    async fn a_resize_of_the_kernels_terminal_reaches_the_workers() {
        let outer = open_pair().unwrap();
        let inner = like(outer.slave.as_fd()).unwrap().expect("a terminal");
        let follow = follow_resizes(
            vec![(inner.master.try_clone().unwrap(), outer.slave.as_raw_fd())],
            0,
        )
        .unwrap();
        let size = libc::winsize {
            ws_row: 40,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: resizes an open pty, then signals this process as a terminal would.
        unsafe {
            assert_eq!(
                libc::ioctl(outer.slave.as_raw_fd(), libc::TIOCSWINSZ, &size),
                0
            );
            libc::raise(libc::SIGWINCH);
        }
        let mut got: libc::winsize = unsafe { std::mem::zeroed() };
        for _ in 0..500 {
            // SAFETY: TIOCGWINSZ reads an open descriptor.
            unsafe { libc::ioctl(inner.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut got) };
            if (got.ws_row, got.ws_col) == (40, 100) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        follow.abort();
        assert_eq!((got.ws_row, got.ws_col), (40, 100));
    }
}
