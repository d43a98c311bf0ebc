//! How a session names itself in Jupyter's kernel lists: the copy of its
//! connection file in jupyter_server's external kernels directory carries a
//! `kernel_name` saying what the session runs and its state
//! (`stepkernel: tests/test_calc.py::test_mean — paused`), which JupyterLab
//! shows where it would show `stepkernel (489c1053)`.
//!
//! jupyter_server reads a connection file once, when it first appears, so a
//! server started later (as `stepkernel lab` is) sees the state of that time.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The label of a session running `what` in `state` (`running`, `paused`).
pub fn label(what: &str, state: &str) -> String {
    format!("stepkernel: {what} — {state}")
}

/// What a run's targets amount to, for its label before any test pauses.
pub fn targets_label(targets: &[String], rootdir: &Path) -> String {
    match targets {
        [] => rootdir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| rootdir.display().to_string()),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} and {} more", rest.len()),
    }
}

/// Rewrites the connection file at `path` with `kernel_name` set to `label`
/// (atomically, mode 0600 like the original).
pub fn relabel(path: &Path, label: &str) -> std::io::Result<()> {
    let bytes = std::fs::read(path)?;
    let mut info: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    info["kernel_name"] = serde_json::json!(label);
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(&info).expect("serializes"))?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn relabel_keeps_the_rest_and_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernel-stepkernel-x.json");
        std::fs::write(
            &path,
            r#"{"key": "k", "kernel_name": "stepkernel", "shell_port": 1}"#,
        )
        .unwrap();
        relabel(&path, &label("t.py::test_a", "paused")).unwrap();
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(info["kernel_name"], "stepkernel: t.py::test_a — paused");
        assert_eq!(info["key"], "k");
        assert_eq!(info["shell_port"], 1);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            targets_label(&["a.py".into(), "b.py".into()], dir.path()),
            "a.py and 1 more"
        );
    }
}
