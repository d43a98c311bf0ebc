//! Splitting one function body into steps, and the flags of each step.
//!
//! Each top-level statement of the body is walked exactly once (for its
//! flags); the split itself only looks at the body's direct children and the
//! comments in front of it.

use crate::grammar::{kinds, Kinds};
use crate::options::Options;
use crate::report::{flag_list, Flag, FlagSet, Step};
use crate::text;
use regex::Regex;
use std::sync::OnceLock;
use tree_sitter::Node;

/// The steps of a function body and what the split learned on the way.
pub(crate) struct Split {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The body yields at its own level (it is one step).
    pub is_generator: bool,
    /// 1-based line of the body's first statement.
    pub body_start_line: usize,
}

/// One element of a body, in source order.
enum Item<'t> {
    Statement(Node<'t>, FlagSet),
    /// A `# step:` comment on its own line, with its name and 1-based line.
    Marker(Option<String>, Vec<String>, usize),
    /// An `# endstep` comment on its own line.
    End,
    /// A comment that follows code on its line.
    Trailing(Node<'t>),
}

/// Statements being gathered into one step.
struct Run<'t> {
    name: Option<String>,
    plan_ids: Vec<String>,
    marker_line: Option<usize>,
    first: Option<Node<'t>>,
    end_byte: usize,
    end_row: usize,
    flags: FlagSet,
}

impl<'t> Run<'t> {
    fn new(name: Option<String>, marker_line: Option<usize>) -> Run<'t> {
        Run {
            name,
            plan_ids: Vec::new(),
            marker_line,
            first: None,
            end_byte: 0,
            end_row: 0,
            flags: 0,
        }
    }

    fn add(&mut self, node: Node<'t>, flags: FlagSet, (end_byte, end_row): (usize, usize)) {
        self.first.get_or_insert(node);
        self.end_byte = end_byte;
        self.end_row = end_row;
        self.flags |= flags;
    }

    /// Takes in a comment that trails the run's last statement on its line.
    fn add_trailing(&mut self, comment: Node<'t>) {
        if self.first.is_some() && comment.start_position().row == self.end_row {
            self.end_byte = comment.end_byte();
            self.end_row = comment.end_position().row;
        }
    }
}

/// How a body is cut.
#[derive(PartialEq)]
enum Mode {
    /// One step per top-level statement.
    PerStatement,
    /// Steps delimited by marker comments.
    Markers,
    /// The whole body is one step (generators).
    Whole,
}

/// Splits the body of `func` (a `function_definition`) into steps.
pub(crate) fn split(func: Node<'_>, src: &str, opts: &Options) -> Split {
    let k = kinds();
    let Some(body) = func.child_by_field_id(k.field_body) else {
        return Split {
            steps: Vec::new(),
            is_generator: false,
            body_start_line: func.end_position().row + 1,
        };
    };
    let items = body_items(func, body, src, opts, k);
    let mut statements = items.iter().filter_map(|item| match item {
        Item::Statement(node, _) => Some(*node),
        _ => None,
    });
    let docstring = statements
        .next()
        .filter(|first| is_docstring(*first, src, k))
        .map(|node| node.id());
    let is_generator = items.iter().any(|item| match item {
        Item::Statement(_, flags) => flags & Flag::Yield.bit() != 0,
        _ => false,
    });
    let mode = if is_generator {
        Mode::Whole
    } else if items
        .iter()
        .any(|item| matches!(item, Item::Marker(..) | Item::End))
    {
        Mode::Markers
    } else {
        Mode::PerStatement
    };

    let body_start = body.start_position();
    let indent = text::indent_before(src, body.start_byte(), body_start.column);
    let mut steps = Vec::new();
    let mut run = Run::new(None, None);
    for item in items {
        match item {
            Item::Statement(node, _) if Some(node.id()) == docstring => {}
            Item::Statement(node, flags) => {
                if mode == Mode::PerStatement {
                    finish(&mut run, Run::new(None, None), src, indent, &mut steps);
                }
                run.add(node, flags, statement_end(node, src, k));
            }
            Item::Marker(name, plan_ids, line) if mode == Mode::Markers => {
                let mut next = Run::new(name, Some(line));
                next.plan_ids = plan_ids;
                finish(&mut run, next, src, indent, &mut steps);
            }
            Item::End if mode == Mode::Markers => {
                finish(&mut run, Run::new(None, None), src, indent, &mut steps);
            }
            Item::Trailing(comment) => run.add_trailing(comment),
            Item::Marker(..) | Item::End => {}
        }
    }
    finish(&mut run, Run::new(None, None), src, indent, &mut steps);
    Split {
        steps,
        is_generator,
        body_start_line: body_start.row + 1,
    }
}

/// Where a statement's text ends: after its last token, or after a comment
/// following that token on the same line. tree-sitter ends a compound
/// statement's block after any comment lines that follow its last token;
/// those lines are not part of the statement (nor of Python's `end_lineno`).
fn statement_end(stmt: Node<'_>, src: &str, k: &Kinds) -> (usize, usize) {
    let end = (stmt.end_byte(), stmt.end_position().row);
    let text = src.get(stmt.start_byte()..stmt.end_byte()).unwrap_or("");
    let last_line = &text[text.rfind('\n').map_or(0, |i| i + 1)..];
    if !last_line.contains('#') {
        // A node that ends with a comment has one on its last line.
        return end;
    }
    let mut token = stmt;
    let mut depth = 0;
    while token.child_count() > 0 && depth < 10_000 {
        let last = token.child_count() - 1;
        let mut child = token.child(last);
        while let Some(c) = child.filter(|c| c.kind_id() == k.comment) {
            child = c.prev_sibling();
        }
        match child {
            Some(c) => token = c,
            None => break,
        }
        depth += 1;
    }
    let token_end = token.end_byte();
    let rest = src.get(token_end..).unwrap_or("");
    let rest = &rest[..rest.find('\n').unwrap_or(rest.len())];
    let row = token.end_position().row;
    if rest.trim_start().starts_with('#') {
        (token_end + rest.trim_end().len(), row)
    } else {
        (token_end, row)
    }
}

/// Turns `run` into a step (if it holds any statement) and starts `next`.
fn finish<'t>(run: &mut Run<'t>, next: Run<'t>, src: &str, indent: &str, steps: &mut Vec<Step>) {
    let done = std::mem::replace(run, next);
    let Some(first) = done.first else {
        return;
    };
    let start_byte = first.start_byte();
    let raw = src.get(start_byte..done.end_byte).unwrap_or("");
    // Comment nodes keep the `\r` of a CRLF line end: leave it out.
    let source = raw.trim_end();
    let end_byte = start_byte + source.len();
    let end_row = done
        .end_row
        .saturating_sub(raw[source.len()..].matches('\n').count());
    // An unnamed step is named after its first statement's first line,
    // without a trailing comment.
    let name = match done.name {
        Some(name) => name,
        None => text::short_name(src.get(start_byte..first.end_byte()).unwrap_or("")),
    };
    steps.push(Step {
        index: steps.len(),
        name,
        start_line: first.start_position().row + 1,
        end_line: end_row + 1,
        start_byte,
        end_byte,
        source: source.to_string(),
        indent: indent.to_string(),
        marker_line: done.marker_line,
        plan_ids: done.plan_ids,
        flags: flag_list(done.flags),
    });
}

/// The statements and relevant comments of a body, in order. Comments in
/// front of the first statement hang off the `function_definition`, outside
/// the `block`, so those are gathered first.
fn body_items<'t>(
    func: Node<'t>,
    body: Node<'t>,
    src: &str,
    opts: &Options,
    k: &Kinds,
) -> Vec<Item<'t>> {
    let mut items = Vec::new();
    let mut cursor = func.walk();
    if cursor.goto_first_child() {
        loop {
            let node = cursor.node();
            if node.start_byte() >= body.start_byte() {
                break;
            }
            if node.kind_id() == k.comment {
                push_comment(node, src, opts, &mut items);
            }
            if !cursor.goto_next_sibling() {
                break;
            }
        }
    }
    cursor.reset(body);
    if cursor.goto_first_child() {
        loop {
            let node = cursor.node();
            if node.kind_id() == k.comment {
                push_comment(node, src, opts, &mut items);
            } else if node.is_named() {
                items.push(Item::Statement(node, statement_flags(node, src, k)));
            }
            if !cursor.goto_next_sibling() {
                break;
            }
        }
    }
    items
}

fn push_comment<'t>(comment: Node<'t>, src: &str, opts: &Options, items: &mut Vec<Item<'t>>) {
    let start = comment.start_position();
    if !text::starts_line(src, comment.start_byte(), start.column) {
        items.push(Item::Trailing(comment));
        return;
    }
    let Some(body) = src.get(comment.start_byte()..comment.end_byte()) else {
        return;
    };
    if opts.end_marker.is_match(body) {
        items.push(Item::End);
    } else if let Some(caps) = opts.step_marker.captures(body) {
        let (name, plan_ids) = opts.split_plan_ids(caps.get(1).map_or("", |m| m.as_str()));
        let name = Some(name).filter(|name| !name.is_empty());
        items.push(Item::Marker(name, plan_ids, start.row + 1));
    }
}

/// A string-literal expression statement that Python takes as a docstring
/// (not an f-string, not bytes).
fn is_docstring(stmt: Node<'_>, src: &str, k: &Kinds) -> bool {
    if stmt.kind_id() != k.expression_statement || stmt.named_child_count() != 1 {
        return false;
    }
    let Some(expr) = stmt.named_child(0) else {
        return false;
    };
    if expr.kind_id() == k.string {
        return is_plain_string(expr, src, k);
    }
    if expr.kind_id() == k.concatenated_string {
        let mut cursor = expr.walk();
        return expr
            .named_children(&mut cursor)
            .filter(|part| part.kind_id() != k.comment)
            .all(|part| part.kind_id() == k.string && is_plain_string(part, src, k));
    }
    false
}

/// A string whose prefix has no `f`, `b` or `t`.
fn is_plain_string(string: Node<'_>, src: &str, k: &Kinds) -> bool {
    let Some(start) = string.child(0).filter(|c| c.kind_id() == k.string_start) else {
        return false;
    };
    src.get(start.start_byte()..start.end_byte())
        .is_some_and(|quote| {
            quote
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .all(|c| matches!(c, 'r' | 'R' | 'u' | 'U'))
        })
}

/// Where the flag walk is, relative to the function being split.
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    /// The function's own code: every flag counts.
    Own,
    /// Inside a nested `def` or `lambda` body: only the `__class__` cell counts.
    Nested,
    /// Inside a nested class body: nothing counts.
    Skip,
}

/// Words without which a statement cannot have a flag.
fn flag_words() -> &'static Regex {
    static WORDS: OnceLock<Regex> = OnceLock::new();
    WORDS.get_or_init(|| {
        Regex::new("return|await|yield|global|nonlocal|super|__class__|async")
            .expect("constant pattern compiles")
    })
}

/// The flags of one statement. Most statements contain none of the words a
/// flag needs, and searching the text (SIMD literal search) is far cheaper
/// than walking the subtree; otherwise one iterative walk of the subtree
/// (iterative, so deeply nested input cannot overflow the stack) decides.
pub(crate) fn statement_flags(stmt: Node<'_>, src: &str, k: &Kinds) -> FlagSet {
    let text = src.get(stmt.start_byte()..stmt.end_byte()).unwrap_or("");
    if !flag_words().is_match(text) {
        return 0;
    }
    let bytes = src.as_bytes();
    let mut flags: FlagSet = 0;
    let mut cursor = stmt.walk();
    // (kind, scope) of each ancestor of the cursor's node below `stmt`.
    let mut stack: Vec<(u16, Scope)> = Vec::with_capacity(32);
    let mut scope = Scope::Own;
    loop {
        let node = cursor.node();
        let kind = node.kind_id();
        if scope != Scope::Skip {
            if scope == Scope::Own {
                flags |= own_flags(node, kind, k);
            }
            let super_call = kind == k.call && is_zero_arg_super(node, bytes, k);
            let class_cell = kind == k.identifier
                && bytes.get(node.start_byte()..node.end_byte()) == Some(b"__class__")
                && cursor.field_id().map(|f| f.get()) != Some(k.field_attribute);
            if super_call || class_cell {
                flags |= Flag::Super.bit();
            }
            if cursor.goto_first_child() {
                stack.push((kind, scope));
                scope = child_scope(kind, scope, field(&cursor), k);
                continue;
            }
        }
        loop {
            let Some(&(parent_kind, parent_scope)) = stack.last() else {
                return flags;
            };
            if cursor.goto_next_sibling() {
                scope = child_scope(parent_kind, parent_scope, field(&cursor), k);
                break;
            }
            cursor.goto_parent();
            stack.pop();
        }
    }
}

fn field(cursor: &tree_sitter::TreeCursor<'_>) -> u16 {
    cursor.field_id().map_or(0, |f| f.get())
}

/// Flags a node sets when it is in the function's own scope.
fn own_flags(node: Node<'_>, kind: u16, k: &Kinds) -> FlagSet {
    if kind == k.return_statement {
        Flag::Return.bit()
    } else if kind == k.await_expr {
        Flag::Await.bit()
    } else if kind == k.yield_expr {
        Flag::Yield.bit()
    } else if kind == k.global_statement {
        Flag::Global.bit()
    } else if kind == k.nonlocal_statement {
        Flag::Nonlocal.bit()
    } else if (kind == k.for_statement || kind == k.with_statement || kind == k.for_in_clause)
        && node.child(0).is_some_and(|c| c.kind_id() == k.async_kw)
    {
        // `async for`, `async with` and async comprehensions need a coroutine.
        Flag::Await.bit()
    } else {
        0
    }
}

/// The scope of a child, from its parent's kind and scope and its field.
fn child_scope(parent_kind: u16, parent: Scope, field: u16, k: &Kinds) -> Scope {
    if parent == Scope::Skip || field != k.field_body {
        return parent;
    }
    if parent_kind == k.function_definition || parent_kind == k.lambda {
        Scope::Nested
    } else if parent_kind == k.class_definition {
        Scope::Skip
    } else {
        parent
    }
}

/// `super()` with no arguments (comments aside).
fn is_zero_arg_super(call: Node<'_>, bytes: &[u8], k: &Kinds) -> bool {
    let start = call.start_byte();
    if bytes.get(start..start + 5) != Some(b"super") {
        return false;
    }
    let is_super = call
        .child_by_field_id(k.field_function)
        .is_some_and(|f| f.kind_id() == k.identifier && f.end_byte() - f.start_byte() == 5);
    let no_args = call
        .child_by_field_id(k.field_arguments)
        .is_some_and(|args| {
            if args.kind_id() != k.argument_list {
                return false;
            }
            let mut cursor = args.walk();
            let empty = args
                .named_children(&mut cursor)
                .all(|c| c.kind_id() == k.comment);
            empty
        });
    is_super && no_args
}
