//! Fingerprints of a Python file's blocks: the module body, each class body
//! and each function or method (nested functions belong to theirs). A block's
//! fingerprint hashes its tokens without comments and without the blocks it
//! contains, so a comment- or blank-only edit changes nothing and editing one
//! function changes only that function's fingerprint.

use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use tree_sitter::{Language, Node, Parser};

/// The qualified name of the module body block.
pub const MODULE: &str = "<module>";

/// What a block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Top-level statements (imports, constants, decorators).
    Module,
    /// A class body without its methods.
    Class,
    /// A function or method, nested functions included.
    Function,
}

/// One block of a file.
#[derive(Debug, Clone)]
pub struct Block {
    /// `Class.method`, `function`, or [`MODULE`].
    pub qualname: String,
    /// What it is.
    pub kind: Kind,
    /// First line (1-based; the first decorator's line when decorated).
    pub start_line: usize,
    /// The `def`/`class` line.
    pub def_line: usize,
    /// Last line (1-based).
    pub end_line: usize,
    /// The fingerprint (hex).
    pub fp: String,
}

/// The blocks of one source file.
#[derive(Debug, Clone)]
pub struct SourceBlocks {
    /// Module block first, then in source order.
    pub blocks: Vec<Block>,
    /// Fingerprint of what runs at import time (module and class bodies).
    pub skeleton: String,
    /// The parser found a syntax error.
    pub syntax_error: bool,
}

fn language() -> &'static Language {
    static LANGUAGE: OnceLock<Language> = OnceLock::new();
    LANGUAGE.get_or_init(|| tree_sitter_python::LANGUAGE.into())
}

fn hash(parts: &[&str]) -> String {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update(part.as_bytes());
        digest.update([0x1f]);
    }
    let out = digest.finalize();
    out.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The definition inside a `decorated_definition`, else the node itself.
fn definition(node: Node<'_>) -> Node<'_> {
    if node.kind() == "decorated_definition" {
        node.child_by_field_name("definition").unwrap_or(node)
    } else {
        node
    }
}

fn is_block_node(node: Node<'_>) -> bool {
    matches!(
        definition(node).kind(),
        "function_definition" | "class_definition"
    )
}

/// Leaf tokens of `node`, skipping comments and (when `skip_blocks`) the
/// bodies of function/class definitions below it, which become `def NAME`.
fn tokens<'a>(node: Node<'a>, source: &'a [u8], skip_blocks: bool, out: &mut Vec<&'a str>) {
    if node.kind() == "comment" {
        return;
    }
    if skip_blocks && is_block_node(node) {
        let def = definition(node);
        let name = def
            .child_by_field_name("name")
            .and_then(|n| n.utf8_text(source).ok())
            .unwrap_or("");
        // A test added or removed is no change to its neighbours (nothing
        // imports a test); any other name defined is part of the module.
        if def.kind() == "function_definition" && name.starts_with("test") {
            return;
        }
        out.push(def.kind());
        out.push(name);
        return;
    }
    if node.child_count() == 0 {
        out.push(node.utf8_text(source).unwrap_or(""));
        return;
    }
    let mut cursor = node.walk();
    for child in node.children(&mut cursor) {
        tokens(child, source, skip_blocks, out);
    }
}

/// Parses `source` and fingerprints its blocks.
pub fn python_blocks(source: &[u8]) -> SourceBlocks {
    let mut parser = Parser::new();
    parser
        .set_language(language())
        .expect("the Python grammar loads");
    let Some(tree) = parser.parse(source, None) else {
        return SourceBlocks {
            blocks: Vec::new(),
            skeleton: hash(&["unparsable"]),
            syntax_error: true,
        };
    };
    let root = tree.root_node();
    let mut module_tokens = Vec::new();
    tokens(root, source, true, &mut module_tokens);
    let mut blocks = vec![Block {
        qualname: MODULE.into(),
        kind: Kind::Module,
        start_line: 1,
        def_line: 1,
        end_line: root.end_position().row + 1,
        fp: hash(&module_tokens),
    }];
    collect(root, source, "", &mut blocks);
    let mut skeleton_parts: Vec<&str> = Vec::new();
    for block in blocks.iter().filter(|b| b.kind != Kind::Function) {
        skeleton_parts.push(&block.qualname);
        skeleton_parts.push(&block.fp);
    }
    let skeleton = hash(&skeleton_parts);
    SourceBlocks {
        blocks,
        skeleton,
        syntax_error: root.has_error(),
    }
}

/// Finds the definitions directly in a module or class scope (looking into
/// `if`/`try`/`with` statements there, not into functions).
fn collect(scope: Node<'_>, source: &[u8], prefix: &str, blocks: &mut Vec<Block>) {
    let mut cursor = scope.walk();
    for child in scope.children(&mut cursor) {
        if !is_block_node(child) {
            if child.child_count() > 0 && !matches!(child.kind(), "lambda" | "comment") {
                collect(child, source, prefix, blocks);
            }
            continue;
        }
        let def = definition(child);
        let name = def
            .child_by_field_name("name")
            .and_then(|n| n.utf8_text(source).ok())
            .unwrap_or("?");
        let qualname = format!("{prefix}{name}");
        let is_class = def.kind() == "class_definition";
        let mut toks = Vec::new();
        tokens(child, source, false, &mut toks);
        if is_class {
            let mut own = Vec::new();
            // The class's own statements: header and body minus its methods.
            let mut c = def.walk();
            for part in def.children(&mut c) {
                tokens(part, source, true, &mut own);
            }
            if let Some(decorators) = (child.kind() == "decorated_definition").then_some(child) {
                let mut c = decorators.walk();
                for d in decorators
                    .children(&mut c)
                    .filter(|d| d.kind() == "decorator")
                {
                    tokens(d, source, false, &mut own);
                }
            }
            toks = own;
        }
        blocks.push(Block {
            qualname: qualname.clone(),
            kind: if is_class {
                Kind::Class
            } else {
                Kind::Function
            },
            start_line: child.start_position().row + 1,
            def_line: def.start_position().row + 1,
            end_line: child.end_position().row + 1,
            fp: hash(&toks),
        });
        if is_class {
            if let Some(body) = def.child_by_field_name("body") {
                collect(body, source, &format!("{qualname}."), blocks);
            }
        }
    }
}

impl SourceBlocks {
    /// The block a code object belongs to: by its first line (decorators
    /// included, as `co_firstlineno` counts them), else the innermost
    /// function or class containing that line, else the module.
    pub fn block_for(&self, qualname: &str, first_line: usize) -> &Block {
        if qualname == MODULE {
            return &self.blocks[0];
        }
        if let Some(exact) = self.blocks[1..].iter().find(|b| {
            (b.start_line == first_line || b.def_line == first_line)
                && qualname.ends_with(b.qualname.rsplit('.').next().unwrap_or(""))
        }) {
            return exact;
        }
        // A lambda, comprehension or nested function: the smallest function
        // (else class) around it.
        let around = |kind: Kind| {
            self.blocks[1..]
                .iter()
                .filter(|b| {
                    b.kind == kind && b.start_line <= first_line && first_line <= b.end_line
                })
                .min_by_key(|b| b.end_line - b.start_line)
        };
        around(Kind::Function)
            .or_else(|| around(Kind::Class))
            .unwrap_or(&self.blocks[0])
    }

    /// The fingerprint of the block named `qualname`, if the file still has it.
    pub fn fp_of(&self, qualname: &str) -> Option<&str> {
        self.blocks
            .iter()
            .find(|b| b.qualname == qualname)
            .map(|b| b.fp.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "import os\nLIMIT = 3\n\n@dec\ndef f(x):\n    # note\n    return x + 1\n\nclass C:\n    rate = 2\n    def m(self):\n        return [i for i in range(3)]\n";

    #[test]
    fn finds_blocks_with_decorator_lines() {
        let b = python_blocks(SOURCE.as_bytes());
        let names: Vec<_> = b.blocks.iter().map(|b| b.qualname.as_str()).collect();
        assert_eq!(names, ["<module>", "f", "C", "C.m"]);
        assert_eq!(b.blocks[1].start_line, 4);
        assert_eq!(b.blocks[1].def_line, 5);
        assert!(!b.syntax_error);
        assert_eq!(b.block_for("C.m.<locals>.<listcomp>", 12).qualname, "C.m");
        assert_eq!(b.block_for("f", 4).qualname, "f");
    }

    #[test]
    fn comment_and_blank_edits_change_nothing() {
        let a = python_blocks(SOURCE.as_bytes());
        let edited = SOURCE.replace("# note", "# another note\n\n   # more");
        let b = python_blocks(edited.as_bytes());
        for (x, y) in a.blocks.iter().zip(&b.blocks) {
            assert_eq!(x.fp, y.fp, "{}", x.qualname);
        }
        assert_eq!(a.skeleton, b.skeleton);
    }

    #[test]
    fn one_function_edit_changes_only_it() {
        let a = python_blocks(SOURCE.as_bytes());
        let b = python_blocks(SOURCE.replace("x + 1", "x + 2").as_bytes());
        let changed: Vec<_> = a
            .blocks
            .iter()
            .zip(&b.blocks)
            .filter(|(x, y)| x.fp != y.fp)
            .map(|(x, _)| x.qualname.clone())
            .collect();
        assert_eq!(changed, ["f"]);
        assert_eq!(a.skeleton, b.skeleton);
        let c = python_blocks(SOURCE.replace("rate = 2", "rate = 3").as_bytes());
        assert_ne!(a.skeleton, c.skeleton);
        assert_eq!(a.fp_of("C.m"), c.fp_of("C.m"));
    }

    #[test]
    fn syntax_errors_are_seen() {
        assert!(python_blocks(b"def f(:\n  pass\n").syntax_error);
    }
}
