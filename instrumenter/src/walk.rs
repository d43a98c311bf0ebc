//! Finding test files in a directory the way pytest does by default.

use crate::error::InstrumentError;
use std::path::{Component, Path, PathBuf};

/// Directory names pytest does not enter (its default `norecursedirs`).
const NO_RECURSE: [&str; 8] = [
    "_darcs",
    "build",
    "CVS",
    "dist",
    "node_modules",
    "venv",
    "{arch}",
    "__pycache__",
];

/// `test_*.py` or `*_test.py` (pytest's default `python_files`).
pub fn is_test_file(name: &str) -> bool {
    name.ends_with(".py")
        && (name.starts_with("test_")
            || (name.ends_with("_test.py") && name.len() > "_test.py".len()))
}

/// A directory pytest would skip: hidden, `*.egg`, a default `norecursedirs`
/// name, or a virtualenv (it holds `pyvenv.cfg`).
fn skipped_dir(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.starts_with('.')
        || name.ends_with(".egg")
        || NO_RECURSE.contains(&name.as_ref())
        || path.join("pyvenv.cfg").is_file()
}

/// The test files under `root`, in pytest's order (sorted by name, depth first).
pub fn test_files(root: &Path) -> Result<Vec<PathBuf>, InstrumentError> {
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_type().is_dir() || !skipped_dir(e.path()));
    for entry in walker {
        let entry = entry.map_err(|e| InstrumentError::Io {
            path: e.path().unwrap_or(root).to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("filesystem loop")),
        })?;
        if entry.file_type().is_file() && is_test_file(&entry.file_name().to_string_lossy()) {
            files.push(entry.into_path());
        }
    }
    Ok(files)
}

/// A path as the user wrote it, minus `./` parts, with `/` separators.
pub fn display_path(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.is_empty() {
        return ".".to_string();
    }
    let joined = parts.join("/");
    // A root component is "/" itself; joining adds a second one.
    joined
        .strip_prefix("//")
        .map_or(joined.clone(), |rest| format!("/{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_file_names_follow_pytest() {
        assert!(is_test_file("test_cart.py"));
        assert!(is_test_file("cart_test.py"));
        assert!(!is_test_file("_test.py"));
        assert!(!is_test_file("test_cart.pyc"));
        assert!(!is_test_file("cart.py"));
        assert!(!is_test_file("conftest.py"));
    }

    #[test]
    fn display_paths_drop_dot_components() {
        assert_eq!(
            display_path(Path::new("./tests/./test_a.py")),
            "tests/test_a.py"
        );
        assert_eq!(display_path(Path::new(".")), ".");
        assert_eq!(display_path(Path::new("/abs/test_a.py")), "/abs/test_a.py");
        assert_eq!(
            display_path(Path::new("../up/test_a.py")),
            "../up/test_a.py"
        );
    }

    #[test]
    fn walk_skips_hidden_venv_and_non_test_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let touch = |rel: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        };
        touch("b/test_b.py");
        touch("a_test.py");
        touch("helper.py");
        touch(".hidden/test_h.py");
        touch("env/pyvenv.cfg");
        touch("env/lib/test_v.py");
        touch("node_modules/test_n.py");
        touch("test_a.py");
        let found: Vec<String> = test_files(root)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(found, ["a_test.py", "b/test_b.py", "test_a.py"]);
    }
}
