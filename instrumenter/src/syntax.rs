//! Locating syntax errors: tree-sitter's `ERROR` and `MISSING` nodes, turned
//! into a message with a 1-based line and column.

use crate::grammar::kinds;
use crate::report::SourceError;
use crate::text;
use tree_sitter::Node;

/// Calls `f` on each error node under `root` in source order until `f`
/// returns false. Only subtrees that contain errors are entered.
pub(crate) fn for_each_error<'t>(root: Node<'t>, mut f: impl FnMut(Node<'t>) -> bool) {
    if !root.has_error() {
        return;
    }
    let mut cursor = root.walk();
    let mut depth = 0usize;
    loop {
        let node = cursor.node();
        let mut descend = node.has_error();
        if node.is_missing() || (node.is_error() && is_culprit(node)) {
            if !f(node) {
                return;
            }
            descend = false;
        }
        if descend && cursor.goto_first_child() {
            depth += 1;
            continue;
        }
        loop {
            if depth == 0 {
                return;
            }
            if cursor.goto_next_sibling() {
                break;
            }
            cursor.goto_parent();
            depth -= 1;
        }
    }
}

/// An `ERROR` node that holds stray tokens, or no further errors. One that
/// only wraps complete definitions with errors of their own is not reported
/// (tree-sitter often wraps a whole module like that).
fn is_culprit(error: Node<'_>) -> bool {
    let comment = kinds().comment;
    let mut cursor = error.walk();
    let mut nested = false;
    for child in error.children(&mut cursor) {
        if child.child_count() == 0 && child.kind_id() != comment {
            return true;
        }
        nested |= child.has_error();
    }
    !nested
}

/// The first syntax error under `node`.
pub(crate) fn first_error(node: Node<'_>, src: &str) -> Option<SourceError> {
    let mut first = None;
    for_each_error(node, |error| {
        first = Some(describe(error, src));
        false
    });
    first
}

/// A message and position for an error node.
pub(crate) fn describe(node: Node<'_>, src: &str) -> SourceError {
    let (anchor, message) = if node.is_missing() {
        let kind = node.kind();
        let message = if node.is_named() {
            format!("missing {kind}")
        } else {
            format!("missing `{kind}`")
        };
        (node, message)
    } else {
        let comment = kinds().comment;
        let mut cursor = node.walk();
        let anchor = node
            .children(&mut cursor)
            .find(|c| c.child_count() == 0 && c.kind_id() != comment)
            .unwrap_or(node);
        let snippet = text::short_name(
            src.get(anchor.start_byte()..anchor.end_byte())
                .unwrap_or(""),
        );
        let message = if snippet.is_empty() {
            "invalid syntax".to_string()
        } else {
            format!("invalid syntax at `{snippet}`")
        };
        (anchor, message)
    };
    let start = anchor.start_position();
    SourceError::at(
        message,
        start.row + 1,
        text::char_column(src, anchor.start_byte(), start.column),
    )
}
