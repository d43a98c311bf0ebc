//! Which code a client means: JupyterLab names every cell and editor by
//! `tmpFilePrefix + murmur2(code, hashSeed) + tmpFileSuffix` (its
//! `debugger/src/config.ts`), and `dumpCell` tells the kernel that text.
//! Text equal to a test file's current text stands for that file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The seed ipykernel uses (JupyterLab accepts any u32 from `debugInfo`).
pub const HASH_SEED: u32 = 0xC70F_6907;

/// Cells and editor texts dumped by clients, by the path the client names them with.
#[derive(Debug, Clone)]
pub struct SourceMap {
    prefix: String,
    suffix: String,
    /// hash path -> (code, the test file it equals, if any)
    dumped: HashMap<String, (String, Option<PathBuf>)>,
}

impl SourceMap {
    /// A map whose paths start with `prefix` (a directory, ending in `/`) and end in `suffix`.
    pub fn new(prefix: impl Into<String>, suffix: impl Into<String>) -> SourceMap {
        SourceMap {
            prefix: prefix.into(),
            suffix: suffix.into(),
            dumped: HashMap::new(),
        }
    }

    /// `tmpFilePrefix` of `debugInfo`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `tmpFileSuffix` of `debugInfo`.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// The path JupyterLab computes for `code`.
    pub fn path_of(&self, code: &str) -> String {
        format!(
            "{}{}{}",
            self.prefix,
            murmur2::murmur2(code.as_bytes(), HASH_SEED),
            self.suffix
        )
    }

    /// Records dumped code; `file` is the test file whose text it equals. Returns its path.
    pub fn dump(&mut self, code: &str, file: Option<PathBuf>) -> String {
        let path = self.path_of(code);
        self.dumped.insert(path.clone(), (code.to_string(), file));
        path
    }

    /// The text dumped under `path`.
    pub fn code(&self, path: &str) -> Option<&str> {
        self.dumped.get(path).map(|(code, _)| code.as_str())
    }

    /// Whether `path` is one of this map's hash paths (dumped or not).
    pub fn is_hash_path(&self, path: &str) -> bool {
        path.strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_suffix(&self.suffix))
            .is_some_and(|hash| !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The real file a client's path stands for: itself, or the test file its dumped text equals.
    pub fn resolve(&self, path: &str) -> Option<PathBuf> {
        if let Some((_, file)) = self.dumped.get(path) {
            return file.clone();
        }
        if self.is_hash_path(path) {
            return None;
        }
        Some(Path::new(path).to_path_buf())
    }

    /// The hash path whose dumped text is `file`'s, if a client dumped it.
    pub fn hash_path_for(&self, file: &Path) -> Option<&str> {
        self.dumped
            .iter()
            .find(|(_, (_, f))| f.as_deref() == Some(file))
            .map(|(path, _)| path.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_as_jupyterlab_and_ipykernel_do() {
        // The values ipykernel's `compiler.murmur2_x86(code, 0xC70F6907)` gives.
        let map = SourceMap::new("/tmp/stepkernel_1/", ".py");
        assert_eq!(map.path_of("a = 1"), "/tmp/stepkernel_1/3780943274.py");
        assert_eq!(
            map.path_of("print('hello')\n"),
            "/tmp/stepkernel_1/4288063316.py"
        );
        assert_eq!(
            map.path_of("h\u{e9}llo \u{2713}"),
            "/tmp/stepkernel_1/1691783381.py"
        );
        let path = map.path_of("a = 1");
        assert!(path.starts_with("/tmp/stepkernel_1/") && path.ends_with(".py"));
        assert!(map.is_hash_path(&path));
        assert!(!map.is_hash_path("/tmp/stepkernel_1/x.py"));
        assert_eq!(
            map.path_of("a = 1"),
            path,
            "the same code has the same path"
        );
        assert_ne!(map.path_of("a = 2"), path);
    }

    #[test]
    fn dumped_text_of_a_test_file_resolves_to_it() {
        let mut map = SourceMap::new("/tmp/p/", ".py");
        let file = PathBuf::from("/src/tests/test_a.py");
        let path = map.dump("def test(): pass\n", Some(file.clone()));
        assert_eq!(map.resolve(&path), Some(file.clone()));
        assert_eq!(map.hash_path_for(&file), Some(path.as_str()));
        let cell = map.dump("x = 1", None);
        assert_eq!(map.resolve(&cell), None);
        assert_eq!(map.code(&cell), Some("x = 1"));
        assert_eq!(
            map.resolve("/src/tests/test_b.py"),
            Some(PathBuf::from("/src/tests/test_b.py"))
        );
    }
}
