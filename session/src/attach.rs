//! Where a session's connection file goes so clients find it, and cleanup.
//!
//! Copies: the session directory, Jupyter's runtime directory (found without
//! Python, following jupyter_core's rules) and jupyter_server's external
//! kernels directory (`<runtime>/external_kernels` unless `--external-dir`).
//!
//! The directory rules are jupyter_core 5.x's on Linux (`jupyter --runtime-dir`):
//! `$JUPYTER_RUNTIME_DIR`, else `<data dir>/runtime`, where the data dir is
//! `$JUPYTER_DATA_DIR`, else (with `$JUPYTER_PLATFORM_DIRS` set) platformdirs'
//! `user_data_dir("jupyter")`, else `$XDG_DATA_HOME/jupyter` or
//! `<home, symlinks resolved>/.local/share/jupyter`. jupyter_core stopped using
//! `$XDG_RUNTIME_DIR` for the runtime dir, so it is not read here either.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Environment lookups; the process environment in real use, a map in tests.
type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// A variable that is set and not empty (Python's `os.environ.get(name)` truthiness).
fn non_empty(env: Env, name: &str) -> Option<OsString> {
    env(name).filter(|v| !v.is_empty())
}

/// jupyter_core's `envset()`: set, and not one of no, n, false, off, 0, 0.0.
fn envset(env: Env, name: &str) -> bool {
    env(name).is_some_and(|v| {
        let v = v.to_string_lossy().to_lowercase();
        !matches!(v.as_str(), "no" | "n" | "false" | "off" | "0" | "0.0")
    })
}

/// The password database's home directory of the real user id.
fn passwd_home() -> Option<OsString> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter; getpwuid_r writes into
    // `pwd` and `buf` (whose length we pass) and sets `result`.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::getuid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(pwd.pw_dir);
        Some(OsStr::from_bytes(dir.to_bytes()).to_os_string())
    }
}

/// `userhome.rstrip('/') + rest or '/'`, as Python's expanduser builds it.
fn home_plus(home: &OsStr, rest: &str) -> PathBuf {
    let bytes = home.as_bytes();
    let end = bytes.iter().rposition(|b| *b != b'/').map_or(0, |i| i + 1);
    let mut joined = bytes[..end].to_vec();
    joined.extend_from_slice(rest.as_bytes());
    if joined.is_empty() {
        joined.push(b'/');
    }
    PathBuf::from(OsString::from_vec(joined))
}

/// Python's `os.path.expanduser("~" + rest)`: `$HOME` when set (even empty), else the password database.
fn expanduser(env: Env, rest: &str) -> PathBuf {
    match env("HOME").or_else(passwd_home) {
        Some(home) => home_plus(&home, rest),
        // Python leaves the path unexpanded; jupyter_core then fails. "/" keeps us going.
        None => home_plus(OsStr::new("/"), rest),
    }
}

/// Python's `os.path.realpath` (non-strict): symlinks resolved as far as the path exists.
fn realpath(path: &Path) -> PathBuf {
    let mut out = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
    };
    let split = |p: &Path| -> Vec<OsString> {
        p.as_os_str()
            .as_bytes()
            .split(|b| *b == b'/')
            .rev()
            .map(|part| OsStr::from_bytes(part).to_os_string())
            .collect()
    };
    let mut pending = split(path);
    let mut hops = 0;
    while let Some(name) = pending.pop() {
        if name.is_empty() || name == "." {
            continue;
        }
        if name == ".." {
            out.pop();
            continue;
        }
        let next = out.join(&name);
        match std::fs::read_link(&next) {
            // Like Python, give up resolving after a loop (40 links is the kernel's limit).
            Ok(target) if hops < 40 => {
                hops += 1;
                if target.is_absolute() {
                    out = PathBuf::from("/");
                }
                pending.extend(split(&target));
            }
            _ => out = next,
        }
    }
    out
}

/// platformdirs' `user_data_dir("jupyter")` on Linux (used under `JUPYTER_PLATFORM_DIRS`).
fn platformdirs_user_data_dir(env: Env) -> PathBuf {
    if let Some(xdg) = env("XDG_DATA_HOME").filter(|v| v.as_bytes().first() == Some(&b'/')) {
        return PathBuf::from(xdg).join("jupyter");
    }
    // platformdirs treats a relative or empty HOME as unset.
    let home = env("HOME")
        .filter(|h| h.as_bytes().first() == Some(&b'/'))
        .or_else(passwd_home)
        .unwrap_or_else(|| OsString::from("/"));
    home_plus(&home, "/.local/share").join("jupyter")
}

fn data_dir_from(env: Env) -> PathBuf {
    if let Some(dir) = non_empty(env, "JUPYTER_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if envset(env, "JUPYTER_PLATFORM_DIRS") {
        return platformdirs_user_data_dir(env);
    }
    match non_empty(env, "XDG_DATA_HOME") {
        Some(xdg) => PathBuf::from(xdg).join("jupyter"),
        // get_home_dir(): Path("~").expanduser().resolve()
        None => realpath(&expanduser(env, "")).join(".local/share/jupyter"),
    }
}

fn runtime_dir_from(env: Env) -> PathBuf {
    match non_empty(env, "JUPYTER_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => data_dir_from(env).join("runtime"),
    }
}

/// jupyter_client's own SSH tunnel to a kernel on another host, as printed.
///
/// jupyter_client starts each of its five `ssh -f` under a pseudo-terminal
/// of its own (pexpect), as that terminal's session leader: when that ssh
/// goes to the background, its parent's exit hangs up the terminal and the
/// SIGHUP kills the child before it has left the terminal's process group.
/// A SIGHUP ignored by the console is inherited by its ssh, which then lives
/// (OpenSSH keeps an ignored SIGHUP ignored); `env --ignore-signal` (GNU
/// coreutils) sets that. README, "Remote workers", has the measurement.
pub fn jupyter_ssh_line(connection_file: &Path, destination: &str) -> String {
    format!(
        "env --ignore-signal=HUP jupyter console --existing {} --ssh {destination}",
        connection_file.display()
    )
}

/// For a kernel bound beyond loopback: attach from another machine with a
/// copy of its connection file, through jupyter_client's tunnel.
pub fn copy_then_ssh_line(connection_file: &Path) -> String {
    format!(
        "remote: copy {} to your machine, then: {}",
        connection_file.display(),
        jupyter_ssh_line(Path::new("./connection.json"), "USER@HOST")
    )
}

/// jupyter_core's `jupyter_data_dir()` on Linux (`jupyter --data-dir`).
pub fn jupyter_data_dir() -> PathBuf {
    data_dir_from(&process_env)
}

/// jupyter_core's `jupyter_runtime_dir()` on Linux (`jupyter --runtime-dir`).
pub fn jupyter_runtime_dir() -> PathBuf {
    runtime_dir_from(&process_env)
}

/// jupyter_server's default external kernels directory: `<runtime dir>/external_kernels`.
pub fn default_external_dir() -> PathBuf {
    jupyter_runtime_dir().join("external_kernels")
}

/// The name of a session's connection file outside its session directory.
pub fn copy_name(session_id: &str) -> String {
    format!("kernel-stepkernel-{session_id}.json")
}

/// Writes `bytes` to a new file `target` created with mode 0600 (never readable by others, even briefly).
fn write_private(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(target) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Writes copies of `source` (mode 0600) into `dirs`; returns the paths
/// written and, for each directory skipped, why: a directory that is not the
/// user's own or is writable by others would hand the key to someone else.
pub fn place_copies(
    source: &Path,
    session_id: &str,
    dirs: &[PathBuf],
) -> (Vec<PathBuf>, Vec<String>) {
    let Ok(bytes) = std::fs::read(source) else {
        return (Vec::new(), Vec::new());
    };
    let mut written = Vec::new();
    let mut skipped = Vec::new();
    for dir in dirs {
        if let Err(err) = kernel::private_files::ensure_private_dir(dir) {
            skipped.push(format!(
                "no connection file copy in {}: {err}",
                dir.display()
            ));
            continue;
        }
        let target = dir.join(copy_name(session_id));
        if written.contains(&target) {
            continue;
        }
        if write_private(&target, &bytes).is_ok() {
            written.push(target);
        }
    }
    (written, skipped)
}

/// Whether `pid` is a live stepkernel process (a reused pid of another program is not).
pub fn stepkernel_alive(pid: u32) -> bool {
    if !crate::session_dir::pid_alive(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
            base.windows(10).any(|w| w == b"stepkernel")
        }
        // No /proc: trust the pid.
        Err(_) => true,
    }
}

/// Removes connection files of stepkernel sessions whose process is gone.
pub fn remove_stale(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.starts_with("kernel-stepkernel-") || !name.ends_with(".json") {
                continue;
            }
            let pid = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("stepkernel_pid").and_then(|p| p.as_u64()));
            if let Some(pid) = pid.and_then(|p| u32::try_from(p).ok()) {
                if !stepkernel_alive(pid) && std::fs::remove_file(&path).is_ok() {
                    removed.push(path);
                }
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn runtime_dir_follows_jupyter_core() {
        let home = tempfile::tempdir().unwrap();
        let real = home.path().canonicalize().unwrap();
        let h = real.to_str().unwrap();
        let cases: Vec<(Vec<(&str, &str)>, PathBuf)> = vec![
            (
                vec![("HOME", h), ("JUPYTER_RUNTIME_DIR", "/x/rt")],
                "/x/rt".into(),
            ),
            (
                vec![
                    ("HOME", h),
                    ("JUPYTER_RUNTIME_DIR", ""),
                    ("JUPYTER_DATA_DIR", "/d/"),
                ],
                "/d/runtime".into(),
            ),
            (
                vec![("HOME", h), ("XDG_DATA_HOME", "/xdg")],
                "/xdg/jupyter/runtime".into(),
            ),
            (
                vec![("HOME", h), ("XDG_DATA_HOME", "rel")],
                "rel/jupyter/runtime".into(),
            ),
            (
                vec![("HOME", h), ("XDG_RUNTIME_DIR", "/run/user/5")],
                real.join(".local/share/jupyter/runtime"),
            ),
            (
                vec![
                    ("HOME", h),
                    ("JUPYTER_PLATFORM_DIRS", "1"),
                    ("XDG_RUNTIME_DIR", "/run/x"),
                ],
                real.join(".local/share/jupyter/runtime"),
            ),
            (
                vec![
                    ("HOME", h),
                    ("JUPYTER_PLATFORM_DIRS", "yes"),
                    ("XDG_DATA_HOME", "rel"),
                ],
                real.join(".local/share/jupyter/runtime"),
            ),
            (
                vec![
                    ("HOME", h),
                    ("JUPYTER_PLATFORM_DIRS", ""),
                    ("XDG_DATA_HOME", "/p"),
                ],
                "/p/jupyter/runtime".into(),
            ),
            (
                vec![
                    ("HOME", h),
                    ("JUPYTER_PLATFORM_DIRS", "Off"),
                    ("XDG_DATA_HOME", "/p"),
                ],
                "/p/jupyter/runtime".into(),
            ),
        ];
        for (vars, want) in cases {
            assert_eq!(runtime_dir_from(&env_of(&vars)), want, "{vars:?}");
        }
    }

    #[test]
    fn home_symlinks_are_resolved_like_pathlib() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("target")).unwrap();
        std::os::unix::fs::symlink(real.join("target"), real.join("link")).unwrap();
        std::os::unix::fs::symlink("target/../missing", real.join("rel")).unwrap();
        let link = format!("{}/link/", real.display());
        let got = runtime_dir_from(&env_of(&[("HOME", &link)]));
        assert_eq!(got, real.join("target/.local/share/jupyter/runtime"));
        // Under platform dirs the home is used as given.
        let got = runtime_dir_from(&env_of(&[("HOME", &link), ("JUPYTER_PLATFORM_DIRS", "1")]));
        assert_eq!(got, real.join("link/.local/share/jupyter/runtime"));
        assert_eq!(realpath(&real.join("rel/x")), real.join("missing/x"));
        assert_eq!(realpath(&real.join("nope/../link")), real.join("target"));
        assert_eq!(
            runtime_dir_from(&env_of(&[("HOME", "")])),
            PathBuf::from("/.local/share/jupyter/runtime")
        );
    }

    #[test]
    fn copies_are_private_and_replace_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("connection.json");
        std::fs::write(&source, br#"{"key": "k"}"#).unwrap();
        let runtime = dir.path().join("rt");
        let external = runtime.join("external_kernels");
        std::fs::create_dir_all(&external).unwrap();
        let old = external.join(copy_name("s1"));
        std::fs::write(&old, "old").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (written, skipped) = place_copies(&source, "s1", &[runtime.clone(), external.clone()]);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(written, vec![runtime.join(copy_name("s1")), old.clone()]);
        for path in &written {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
            assert_eq!(std::fs::read(path).unwrap(), br#"{"key": "k"}"#);
        }
    }

    #[test]
    fn no_copy_goes_into_a_directory_others_can_write() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("connection.json");
        std::fs::write(&source, br#"{"key": "k"}"#).unwrap();
        let shared = dir.path().join("shared-runtime");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (written, skipped) = place_copies(&source, "s2", std::slice::from_ref(&shared));
        assert!(written.is_empty());
        assert!(skipped[0].contains("writable by everyone"), "{skipped:?}");
        assert!(!shared.join(copy_name("s2")).exists());
    }

    #[test]
    fn stale_files_of_dead_sessions_are_removed() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let mut stepkernel = std::process::Command::new("sleep")
            .arg0("stepkernel")
            .arg("30")
            .spawn()
            .unwrap();
        let mut other_program = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Until exec, a child's /proc cmdline is this test binary's: wait for both execs.
        for child in [&stepkernel, &other_program] {
            while !std::fs::read(format!("/proc/{}/cmdline", child.id()))
                .is_ok_and(|c| c.starts_with(b"stepkernel\0") || c.starts_with(b"sleep\0"))
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let files = [
            ("kernel-stepkernel-dead.json", 999_999_999),
            ("kernel-stepkernel-alive.json", stepkernel.id()),
            ("kernel-stepkernel-reused.json", other_program.id()),
            ("kernel-1234.json", 999_999_999),
        ];
        for (name, pid) in files {
            std::fs::write(
                dir.path().join(name),
                format!(r#"{{"stepkernel_pid": {pid}}}"#),
            )
            .unwrap();
        }
        let mut removed = remove_stale(&[dir.path().to_path_buf()]);
        for child in [&mut stepkernel, &mut other_program] {
            let _ = child.kill();
            let _ = child.wait();
        }
        removed.sort();
        let dead = dir.path().join("kernel-stepkernel-dead.json");
        let reused = dir.path().join("kernel-stepkernel-reused.json");
        assert_eq!(removed, vec![dead, reused]);
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["kernel-1234.json", "kernel-stepkernel-alive.json"]);
    }

    #[test]
    fn every_jupyter_client_tunnel_hint_ignores_sighup() {
        let copy = copy_then_ssh_line(Path::new("/s/connection.json"));
        assert_eq!(
            copy,
            "remote: copy /s/connection.json to your machine, then: env --ignore-signal=HUP \
             jupyter console --existing ./connection.json --ssh USER@HOST"
        );
    }
}
