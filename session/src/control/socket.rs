//! Where the socket lives: `control.sock` in the session directory, or a
//! symlink to a short path when the directory is too deep for `sun_path`.

use super::SOCKET_NAME;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The socket path of a session directory.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_NAME)
}

/// Longest socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
pub(super) const MAX_SOCKET_PATH: usize = 107;

/// Where to bind when `path` is too long for a UNIX socket: a short path in
/// a private directory of the temp dir (`path` becomes a symlink to it).
pub(super) fn short_socket_path(path: &Path) -> std::io::Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    // SAFETY: getuid has no failure mode.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("stepkernel-{uid}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut hasher);
    Ok(dir.join(format!("{:016x}.sock", hasher.finish())))
}

/// The path to connect to for `path` (a symlink to a short path when the
/// session directory is deep).
pub fn connect_path(path: &Path) -> PathBuf {
    match std::fs::read_link(path) {
        Ok(target) => target,
        Err(_) => path.to_path_buf(),
    }
}

/// Removes `path` (and the short socket it links to) if nobody listens on it
/// (a dead session's). Returns true when one was removed.
pub fn remove_stale(path: &Path) -> bool {
    if std::fs::symlink_metadata(path).is_err() {
        return false;
    }
    let target = connect_path(path);
    match std::os::unix::net::UnixStream::connect(&target) {
        Ok(_) => false,
        Err(_) => {
            if target != path {
                let _ = std::fs::remove_file(&target);
            }
            std::fs::remove_file(path).is_ok()
        }
    }
}

/// Binds a private (0600) UNIX socket at `path`, inside the tokio runtime. A
/// path too long for `sun_path` binds a short one in the temp dir instead and
/// `path` becomes a symlink to it ([`connect_path`] follows it).
pub fn bind_private(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    let at = if path.as_os_str().len() > MAX_SOCKET_PATH {
        short_socket_path(path)?
    } else {
        path.to_path_buf()
    };
    let _ = std::fs::remove_file(&at);
    let listener = tokio::net::UnixListener::bind(&at)?;
    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o600))?;
    if at != path {
        std::os::unix::fs::symlink(&at, path)?;
    }
    Ok(listener)
}

/// Removes a socket [`bind_private`] made (and the short one it links to).
pub fn remove_socket(path: &Path) {
    let target = connect_path(path);
    if target != path {
        let _ = std::fs::remove_file(target);
    }
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `remove_stale` once the listener is gone. Other tests of this process
    /// spawn children, and a child holds a copy of the listening socket from
    /// fork until exec, so for a moment a closed listener still answers.
    fn removed_once_closed(path: &Path) -> bool {
        (0..500).any(|_| {
            remove_stale(path) || {
                std::thread::sleep(std::time::Duration::from_millis(10));
                false
            }
        })
    }

    #[test]
    fn stale_sockets_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET_NAME);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(!remove_stale(&path), "a live socket stays");
        drop(listener);
        assert!(path.exists());
        assert!(removed_once_closed(&path));
        assert!(!path.exists());
    }

    #[test]
    fn deep_directories_get_a_short_socket_behind_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(120));
        std::fs::create_dir_all(&deep).unwrap();
        let path = socket_path(&deep);
        let short = short_socket_path(&path).unwrap();
        assert!(
            short.as_os_str().len() <= MAX_SOCKET_PATH,
            "{}",
            short.display()
        );
        let listener = std::os::unix::net::UnixListener::bind(&short).unwrap();
        std::os::unix::fs::symlink(&short, &path).unwrap();
        assert_eq!(connect_path(&path), short);
        std::os::unix::net::UnixStream::connect(connect_path(&path)).unwrap();
        assert!(!remove_stale(&path));
        drop(listener);
        assert!(removed_once_closed(&path));
        assert!(!short.exists() && std::fs::symlink_metadata(&path).is_err());
    }
}
