//! The screen gives the terminal its mode back on a panic: a child process
//! (this test binary, running an ignored helper) puts a pty in raw mode
//! through `Screen::enter` and then panics or exits without restoring; the
//! pty's mode afterwards tells.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

/// Set for the helpers: run with `--include-ignored` on their own they do nothing.
const ON_A_PTY: &str = "WATCH_SCREEN_RESTORE_HELPER";

fn pty() -> (OwnedFd, File) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two fds; no name, termios or winsize asked for.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened and are owned here only.
    unsafe { (OwnedFd::from_raw_fd(master), File::from_raw_fd(slave)) }
}

fn canonical(slave: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: tcgetattr on an open pty fd with a zeroed termios it fills.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::tcgetattr(slave.as_raw_fd(), &mut term) }, 0);
    term.c_lflag & libc::ICANON != 0 && term.c_lflag & libc::ECHO != 0
}

/// Puts the pty back in canonical mode with echo (after the control case).
fn set_canonical(slave: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: tcgetattr/tcsetattr on an open pty fd with a termios tcgetattr filled.
    unsafe {
        let mut term: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut term), 0);
        term.c_lflag |= libc::ICANON | libc::ECHO;
        assert_eq!(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &term), 0);
    }
}

/// Runs the ignored helper `name` on the pty; returns whether it succeeded.
fn run_helper(name: &str, slave: &File) -> bool {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", name, "--test-threads", "1"])
        .env(ON_A_PTY, "1")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .status()
        .unwrap();
    status.success()
}

#[test]
fn a_panic_gives_the_terminal_its_mode_back() {
    let (_master, slave) = pty();
    assert!(canonical(&slave));
    // Control: leaving without the screen's restore leaves the pty raw.
    assert!(run_helper(
        "helper_enters_and_exits_without_restoring",
        &slave
    ));
    assert!(
        !canonical(&slave),
        "the helper did not put the pty in raw mode"
    );
    set_canonical(&slave);
    assert!(canonical(&slave));
    assert!(
        !run_helper("helper_enters_and_panics", &slave),
        "the helper should panic"
    );
    assert!(canonical(&slave), "the panic left the terminal in raw mode");
}

#[test]
#[ignore = "run by a_panic_gives_the_terminal_its_mode_back on a pty"]
fn helper_enters_and_panics() {
    if std::env::var_os(ON_A_PTY).is_none() {
        return;
    }
    let _screen = watch::screen::Screen::enter().unwrap();
    panic!("a bug while the screen is up");
}

#[test]
#[ignore = "run by a_panic_gives_the_terminal_its_mode_back on a pty"]
fn helper_enters_and_exits_without_restoring() {
    if std::env::var_os(ON_A_PTY).is_none() {
        return;
    }
    let screen = watch::screen::Screen::enter().unwrap();
    std::mem::forget(screen);
    std::process::exit(0);
}
