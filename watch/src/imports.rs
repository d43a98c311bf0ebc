//! The static import graph: which project files a test file imports,
//! directly or through others (module-level code runs at import, before any
//! test, so the runtime recorder cannot attribute it to a test).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tree_sitter::{Language, Node, Parser};

fn language() -> &'static Language {
    static LANGUAGE: OnceLock<Language> = OnceLock::new();
    LANGUAGE.get_or_init(|| tree_sitter_python::LANGUAGE.into())
}

/// One import statement: `level` leading dots, the module, and the names of
/// a `from` import (which may be submodules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// Leading dots of a relative import.
    pub level: usize,
    /// `a.b` (empty for `from . import x`).
    pub module: String,
    /// Names after `import` in `from M import a, b`.
    pub names: Vec<String>,
}

fn walk_imports(node: Node<'_>, source: &[u8], out: &mut Vec<Import>) {
    match node.kind() {
        "import_statement" => {
            let mut cursor = node.walk();
            for child in node.children_by_field_name("name", &mut cursor) {
                let name = match child.kind() {
                    "aliased_import" => child.child_by_field_name("name").unwrap_or(child),
                    _ => child,
                };
                out.push(Import {
                    level: 0,
                    module: name.utf8_text(source).unwrap_or("").to_string(),
                    names: Vec::new(),
                });
            }
        }
        "import_from_statement" => {
            let (level, module) = match node.child_by_field_name("module_name") {
                Some(m) if m.kind() == "relative_import" => {
                    let text = m.utf8_text(source).unwrap_or("");
                    let dots = text.chars().take_while(|c| *c == '.').count();
                    (dots, text[dots..].trim().to_string())
                }
                Some(m) => (0, m.utf8_text(source).unwrap_or("").to_string()),
                None => (0, String::new()),
            };
            let mut names = Vec::new();
            let mut cursor = node.walk();
            for child in node.children_by_field_name("name", &mut cursor) {
                let name = match child.kind() {
                    "aliased_import" => child.child_by_field_name("name").unwrap_or(child),
                    _ => child,
                };
                names.push(name.utf8_text(source).unwrap_or("").to_string());
            }
            out.push(Import {
                level,
                module,
                names,
            });
        }
        _ => {
            let mut cursor = node.walk();
            for child in node.children(&mut cursor) {
                walk_imports(child, source, out);
            }
        }
    }
}

/// The import statements of a source (anywhere in it, functions included).
pub fn imports(source: &[u8]) -> Vec<Import> {
    let mut parser = Parser::new();
    parser
        .set_language(language())
        .expect("the Python grammar loads");
    let mut out = Vec::new();
    if let Some(tree) = parser.parse(source, None) {
        walk_imports(tree.root_node(), source, &mut out);
    }
    out
}

/// Resolves module names to the project's files.
#[derive(Debug, Clone)]
pub struct Resolver {
    rootdir: PathBuf,
    cache: HashMap<PathBuf, Vec<PathBuf>>,
}

/// The directory pytest puts on `sys.path` for a file (rootdir-insertion
/// "prepend"): the first ancestor that is not a package.
fn base_dir(file: &Path) -> PathBuf {
    let mut dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    while dir.join("__init__.py").is_file() {
        match dir.parent() {
            Some(parent) => dir = parent.to_path_buf(),
            None => break,
        }
    }
    dir
}

/// The files importing `a.b.c` from `root` runs: each package's
/// `__init__.py` and the module itself.
fn module_files(root: &Path, dotted: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dir = root.to_path_buf();
    let parts: Vec<&str> = dotted.split('.').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let package = dir.join(part);
        let init = package.join("__init__.py");
        if init.is_file() {
            files.push(init);
            dir = package;
            continue;
        }
        let module = dir.join(format!("{part}.py"));
        if i + 1 == parts.len() && module.is_file() {
            files.push(module);
        } else if !package.is_dir() {
            return Vec::new();
        } else {
            // A namespace package.
            dir = package;
        }
    }
    files
}

impl Resolver {
    /// A resolver for the project at `rootdir`.
    pub fn new(rootdir: &Path) -> Resolver {
        Resolver {
            rootdir: rootdir.to_path_buf(),
            cache: HashMap::new(),
        }
    }

    fn roots(&self, file: &Path) -> Vec<PathBuf> {
        let mut roots = vec![
            base_dir(file),
            self.rootdir.clone(),
            self.rootdir.join("src"),
        ];
        roots.dedup();
        roots
    }

    /// The project files `file` imports directly.
    pub fn direct(&mut self, file: &Path) -> Vec<PathBuf> {
        if let Some(hit) = self.cache.get(file) {
            return hit.clone();
        }
        let source = std::fs::read(file).unwrap_or_default();
        let mut out = BTreeSet::new();
        for import in imports(&source) {
            let mut bases: Vec<(PathBuf, String)> = Vec::new();
            if import.level > 0 {
                let mut dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
                for _ in 1..import.level {
                    dir = dir.parent().unwrap_or(&dir).to_path_buf();
                }
                if !import.module.is_empty() {
                    // Relative: resolve under the package directory.
                    for f in module_files(&dir, &import.module) {
                        out.insert(f);
                    }
                    let sub = dir.join(import.module.replace('.', "/"));
                    bases.push((sub, String::new()));
                } else {
                    bases.push((dir, String::new()));
                }
            } else {
                for root in self.roots(file) {
                    let found = module_files(&root, &import.module);
                    if !found.is_empty() {
                        out.extend(found);
                        bases.push((root.join(import.module.replace('.', "/")), String::new()));
                    }
                }
            }
            // `from pkg import sub` may name a submodule.
            for (dir, _) in bases {
                for name in &import.names {
                    for f in module_files(&dir, name) {
                        out.insert(f);
                    }
                }
            }
        }
        out.remove(file);
        let found: Vec<PathBuf> = out
            .into_iter()
            .filter(|p| p.starts_with(&self.rootdir))
            .collect();
        self.cache.insert(file.to_path_buf(), found.clone());
        found
    }

    /// `file` and every project file it imports, transitively, with the
    /// `conftest.py` files pytest loads for it.
    pub fn closure(&mut self, file: &Path) -> BTreeSet<PathBuf> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![file.to_path_buf()];
        let mut dir = file.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            let conftest = d.join("conftest.py");
            if conftest.is_file() {
                todo.push(conftest);
            }
            if d == self.rootdir || !d.starts_with(&self.rootdir) {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        while let Some(next) = todo.pop() {
            if seen.insert(next.clone()) {
                todo.extend(self.direct(&next));
            }
        }
        seen
    }

    /// Forgets what `file` imports (it changed).
    pub fn invalidate(&mut self, file: &Path) {
        self.cache.remove(file);
    }

    /// The dotted module names a file provides (`shop/discount.py` →
    /// `shop.discount`, also `discount` from its own directory).
    pub fn module_names(&self, file: &Path) -> Vec<String> {
        let mut names = Vec::new();
        for root in [
            self.rootdir.clone(),
            self.rootdir.join("src"),
            base_dir(file),
        ] {
            let Ok(rel) = file.strip_prefix(&root) else {
                continue;
            };
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let Some(last) = parts.pop() else { continue };
            if last != "__init__.py" {
                match last.strip_suffix(".py") {
                    Some(stem) => parts.push(stem.to_string()),
                    None => continue,
                }
            }
            if !parts.is_empty() {
                names.push(parts.join("."));
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_import_forms() {
        let found = imports(b"import a.b as c, d\nfrom ..x import (y,\n z as w)\nfrom . import q\ndef f():\n    import late\n");
        assert_eq!(found.len(), 5);
        assert_eq!(found[0].module, "a.b");
        assert_eq!(found[2].level, 2);
        assert_eq!(found[2].names, ["y", "z"]);
        assert_eq!(found[3].module, "");
        assert_eq!(found[4].module, "late");
    }

    #[test]
    fn closure_follows_packages_and_conftest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("shop")).unwrap();
        std::fs::create_dir_all(root.join("tests")).unwrap();
        std::fs::write(root.join("shop/__init__.py"), "from .cart import Cart\n").unwrap();
        std::fs::write(root.join("shop/cart.py"), "from shop import prices\n").unwrap();
        std::fs::write(root.join("shop/prices.py"), "RATE = 1\n").unwrap();
        std::fs::write(root.join("tests/conftest.py"), "").unwrap();
        std::fs::write(
            root.join("tests/test_a.py"),
            "from shop.cart import Cart\nimport json\n",
        )
        .unwrap();
        let mut r = Resolver::new(root);
        let got: Vec<_> = r
            .closure(&root.join("tests/test_a.py"))
            .into_iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "shop/__init__.py",
                "shop/cart.py",
                "shop/prices.py",
                "tests/conftest.py",
                "tests/test_a.py"
            ]
        );
        assert_eq!(
            r.module_names(&root.join("shop/prices.py")),
            ["shop.prices"]
        );
    }
}
