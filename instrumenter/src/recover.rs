//! Tests that a syntax error swallowed. tree-sitter's recovery can fold the
//! `def` lines after an unclosed bracket into an `ERROR` node, so those tests
//! never appear in the tree. Python's indentation still shows where they are:
//! this finds such `def test*` lines and reports each as a test with an error.

use crate::grammar::kinds;
use crate::report::{SourceError, TestKind, TestReport};
use crate::syntax;
use tree_sitter::Node;

/// A byte range.
type Span = (usize, usize);

/// A `def` line found in the text.
struct DefLine<'s> {
    /// Byte offset of `def` (or `async`).
    at: usize,
    indent: usize,
    name: &'s str,
    line: usize,
}

/// One line of the file: its start, indentation and text after it.
struct Line<'s> {
    /// 1-based line number.
    number: usize,
    start: usize,
    indent: usize,
    text: &'s str,
}

fn lines(src: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, raw) in src.split_inclusive('\n').enumerate() {
        let trimmed = raw.trim_start_matches([' ', '\t', '\x0c']);
        let indent = raw.len() - trimmed.len();
        out.push(Line {
            number: i + 1,
            start,
            indent,
            text: trimmed.trim_end(),
        });
        start += raw.len();
    }
    out
}

fn def_name(text: &str) -> Option<&str> {
    let rest = text
        .strip_prefix("async")
        .map(str::trim_start)
        .unwrap_or(text);
    let rest = rest.strip_prefix("def")?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    leading_identifier(rest.trim_start())
}

/// The identifier `text` starts with, if any.
fn leading_identifier(text: &str) -> Option<&str> {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    (end > 0).then(|| &text[..end])
}

fn class_name(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("class")?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    leading_identifier(rest.trim_start())
}

/// Byte ranges of all `ERROR` nodes, and of the strings that span lines
/// (their lines say nothing about indentation).
fn regions(root: Node<'_>) -> (Vec<Span>, Vec<Span>) {
    let string = kinds().string;
    let mut errors = Vec::new();
    let mut strings = Vec::new();
    let mut cursor = root.walk();
    let mut depth = 0usize;
    loop {
        let node = cursor.node();
        if node.is_error() {
            errors.push((node.start_byte(), node.end_byte()));
        }
        let is_string = node.kind_id() == string;
        if is_string && node.start_position().row != node.end_position().row {
            strings.push((node.start_byte(), node.end_byte()));
        }
        if !is_string && cursor.goto_first_child() {
            depth += 1;
            continue;
        }
        loop {
            if depth == 0 {
                return (errors, strings);
            }
            if cursor.goto_next_sibling() {
                break;
            }
            cursor.goto_parent();
            depth -= 1;
        }
    }
}

/// Sorts spans and merges those that overlap.
fn outermost(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable();
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match out.last_mut() {
            Some(last) if start < last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// The span of sorted, disjoint `spans` that holds `at`.
fn containing(spans: &[Span], at: usize) -> Option<Span> {
    let i = spans.partition_point(|&(start, _)| start <= at);
    spans[..i].last().copied().filter(|&(_, end)| at < end)
}

/// Tests whose `def` lies inside an `ERROR` node and so is missing from
/// the tree. `known` holds the start bytes of every function found.
pub(crate) fn swallowed_tests(
    root: Node<'_>,
    src: &str,
    path: &str,
    known: &[usize],
    unittest_classes: &[&str],
    function_prefix: &str,
    class_prefix: &str,
) -> Vec<TestReport> {
    let (regions, strings) = regions(root);
    if regions.is_empty() {
        return Vec::new();
    }
    // Tree nodes nest or are disjoint, so merging leaves the outermost.
    let regions = outermost(regions);
    let strings = outermost(strings);
    let mut known = known.to_vec();
    known.sort_unstable();
    let mut culprits = Vec::new();
    syntax::for_each_error(root, |node| {
        culprits.push(node);
        true
    });
    let mut lines = lines(src);
    // Lines inside multi-line strings say nothing about structure.
    lines.retain(|l| containing(&strings, l.start).is_none_or(|(s, _)| s == l.start));
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = def_name(line.text) else {
            continue;
        };
        let def = DefLine {
            at: line.start + line.indent,
            indent: line.indent,
            name,
            line: line.number,
        };
        if !def.name.starts_with(function_prefix) || known.binary_search(&def.at).is_ok() {
            continue;
        }
        // The outermost error region holding the line; none: not swallowed.
        let Some((region_start, _)) = containing(&regions, def.at) else {
            continue;
        };
        let Some((classes, class_lines)) = enclosing_classes(&lines[..i], def.indent) else {
            continue;
        };
        let kind = if classes.is_empty() {
            TestKind::Pytest
        } else if unittest_classes.contains(&classes.join(".").as_str())
            || class_lines.iter().any(|l| l.contains("TestCase"))
        {
            TestKind::Unittest
        } else if classes.iter().all(|c| c.starts_with(class_prefix)) {
            TestKind::Pytest
        } else {
            continue;
        };
        // The error that swallowed it: the first one in that region.
        let cause = culprits
            .iter()
            .find(|n| n.start_byte() >= region_start && n.start_byte() <= def.at)
            .map(|n| syntax::describe(*n, src));
        let error = match cause {
            Some(cause) => SourceError {
                message: format!("{}; this test could not be parsed", cause.message),
                ..cause
            },
            None => SourceError::at("this test could not be parsed", def.line, def.indent + 1),
        };
        let mut node_path = classes.join("::");
        if !node_path.is_empty() {
            node_path.push_str("::");
        }
        out.push(TestReport {
            id: format!("{path}::{node_path}{}", def.name),
            kind,
            name: def.name.to_string(),
            class: (!classes.is_empty()).then(|| classes.join(".")),
            line: def.line,
            phases: Vec::new(),
            error: Some(error),
        });
    }
    out
}

/// The classes around a line with indentation `indent`, outermost first,
/// with their header lines; `None` when it is nested in a function.
fn enclosing_classes<'s>(
    before: &[Line<'s>],
    indent: usize,
) -> Option<(Vec<&'s str>, Vec<&'s str>)> {
    let mut classes = Vec::new();
    let mut headers = Vec::new();
    let mut current = indent;
    for line in before.iter().rev() {
        if current == 0 {
            break;
        }
        if line.text.is_empty() || line.text.starts_with('#') || line.indent >= current {
            continue;
        }
        current = line.indent;
        if let Some(name) = class_name(line.text) {
            classes.push(name);
            headers.push(line.text);
        } else if def_name(line.text).is_some() {
            return None;
        }
    }
    classes.reverse();
    headers.reverse();
    Some((classes, headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_merge_and_contain() {
        let spans = outermost(vec![(10, 20), (0, 5), (12, 15), (18, 30)]);
        assert_eq!(spans, [(0, 5), (10, 30)]);
        assert_eq!(containing(&spans, 4), Some((0, 5)));
        assert_eq!(containing(&spans, 5), None);
        assert_eq!(containing(&spans, 29), Some((10, 30)));
        assert_eq!(containing(&spans, 30), None);
    }

    #[test]
    fn def_and_class_names() {
        assert_eq!(def_name("def test_a(self):"), Some("test_a"));
        assert_eq!(def_name("async  def test_b():"), Some("test_b"));
        assert_eq!(def_name("define = 1"), None);
        assert_eq!(class_name("class TestX(Base):"), Some("TestX"));
        assert_eq!(class_name("classy = 1"), None);
    }
}
