//! Where a session's connection file goes so clients find it, and cleanup.
//!
//! Copies: the session directory, Jupyter's runtime directory (found without
//! Python, following jupyter_core's rules) and jupyter_server's external
//! kernels directory (`<runtime>/external_kernels` unless `--external-dir`).

use std::path::{Path, PathBuf};

fn env_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn truthy(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// jupyter_core's `jupyter_data_dir()` on Linux.
pub fn jupyter_data_dir() -> PathBuf {
    if let Some(dir) = env_dir("JUPYTER_DATA_DIR") {
        return dir;
    }
    let home = env_dir("HOME").unwrap_or_else(|| PathBuf::from("/"));
    let base = env_dir("XDG_DATA_HOME").unwrap_or_else(|| home.join(".local/share"));
    base.join("jupyter")
}

/// jupyter_core's `jupyter_runtime_dir()` (`jupyter --runtime-dir`).
pub fn jupyter_runtime_dir() -> PathBuf {
    if let Some(dir) = env_dir("JUPYTER_RUNTIME_DIR") {
        return dir;
    }
    if truthy("JUPYTER_PLATFORM_DIRS") {
        // platformdirs' user_runtime_dir("jupyter").
        let base = env_dir("XDG_RUNTIME_DIR").unwrap_or_else(|| {
            // SAFETY: getuid has no failure mode.
            PathBuf::from(format!("/run/user/{}", unsafe { libc::getuid() }))
        });
        return base.join("jupyter");
    }
    jupyter_data_dir().join("runtime")
}

/// The name of a session's connection file outside its session directory.
pub fn copy_name(session_id: &str) -> String {
    format!("kernel-stepkernel-{session_id}.json")
}

/// Writes copies of `source` (mode 0600) into `dirs`; returns the paths written.
pub fn place_copies(source: &Path, session_id: &str, dirs: &[PathBuf]) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut written = Vec::new();
    for dir in dirs {
        if std::fs::create_dir_all(dir).is_err() {
            continue;
        }
        let target = dir.join(copy_name(session_id));
        if std::fs::copy(source, &target).is_ok() {
            let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600));
            written.push(target);
        }
    }
    written
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
            if let Some(pid) = pid {
                if !crate::session_dir::pid_alive(pid as u32) && std::fs::remove_file(&path).is_ok()
                {
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

    #[test]
    fn stale_files_of_dead_sessions_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join("kernel-stepkernel-a.json");
        let alive = dir.path().join("kernel-stepkernel-b.json");
        let other = dir.path().join("kernel-1234.json");
        std::fs::write(&dead, r#"{"stepkernel_pid": 999999999}"#).unwrap();
        std::fs::write(
            &alive,
            format!(r#"{{"stepkernel_pid": {}}}"#, std::process::id()),
        )
        .unwrap();
        std::fs::write(&other, r#"{"stepkernel_pid": 999999999}"#).unwrap();
        let removed = remove_stale(&[dir.path().to_path_buf()]);
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists() && alive.exists() && other.exists());
    }
}
