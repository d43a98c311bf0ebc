//! The tree-sitter-python grammar: the language, the node kind and field ids
//! the instrumenter compares against, and one reusable parser per thread.

use std::cell::RefCell;
use std::sync::OnceLock;
use tree_sitter::{Language, Parser, Tree};

/// Node kind and field ids, looked up once: comparing `u16`s is much cheaper
/// than `Node::kind()`, which measures a C string on every call.
pub(crate) struct Kinds {
    pub function_definition: u16,
    pub class_definition: u16,
    pub decorated_definition: u16,
    pub decorator: u16,
    pub block: u16,
    pub comment: u16,
    pub expression_statement: u16,
    pub string: u16,
    pub string_start: u16,
    pub concatenated_string: u16,
    pub return_statement: u16,
    pub await_expr: u16,
    pub yield_expr: u16,
    pub global_statement: u16,
    pub nonlocal_statement: u16,
    pub lambda: u16,
    pub call: u16,
    pub identifier: u16,
    pub attribute: u16,
    pub argument_list: u16,
    pub keyword_argument: u16,
    pub for_statement: u16,
    pub with_statement: u16,
    pub for_in_clause: u16,
    pub async_kw: u16,
    pub if_statement: u16,
    pub elif_clause: u16,
    pub else_clause: u16,
    pub try_statement: u16,
    pub except_clause: u16,
    pub finally_clause: u16,
    pub delete_statement: u16,
    pub expression_list: u16,
    pub assignment: u16,
    pub true_lit: u16,
    pub false_lit: u16,
    pub field_body: u16,
    pub field_name: u16,
    pub field_definition: u16,
    pub field_superclasses: u16,
    pub field_function: u16,
    pub field_arguments: u16,
    pub field_attribute: u16,
    pub field_left: u16,
    pub field_object: u16,
    pub field_condition: u16,
    pub field_right: u16,
}

impl Kinds {
    fn load(lang: &Language) -> Kinds {
        let named = |kind: &str| lang.id_for_node_kind(kind, true);
        let field = |name: &str| lang.field_id_for_name(name).map_or(0, |f| f.get());
        Kinds {
            function_definition: named("function_definition"),
            class_definition: named("class_definition"),
            decorated_definition: named("decorated_definition"),
            decorator: named("decorator"),
            block: named("block"),
            comment: named("comment"),
            expression_statement: named("expression_statement"),
            string: named("string"),
            string_start: named("string_start"),
            concatenated_string: named("concatenated_string"),
            return_statement: named("return_statement"),
            await_expr: named("await"),
            yield_expr: named("yield"),
            global_statement: named("global_statement"),
            nonlocal_statement: named("nonlocal_statement"),
            lambda: named("lambda"),
            call: named("call"),
            identifier: named("identifier"),
            attribute: named("attribute"),
            argument_list: named("argument_list"),
            keyword_argument: named("keyword_argument"),
            for_statement: named("for_statement"),
            with_statement: named("with_statement"),
            for_in_clause: named("for_in_clause"),
            async_kw: lang.id_for_node_kind("async", false),
            if_statement: named("if_statement"),
            elif_clause: named("elif_clause"),
            else_clause: named("else_clause"),
            try_statement: named("try_statement"),
            except_clause: named("except_clause"),
            finally_clause: named("finally_clause"),
            delete_statement: named("delete_statement"),
            expression_list: named("expression_list"),
            assignment: named("assignment"),
            true_lit: named("true"),
            false_lit: named("false"),
            field_body: field("body"),
            field_name: field("name"),
            field_definition: field("definition"),
            field_superclasses: field("superclasses"),
            field_function: field("function"),
            field_arguments: field("arguments"),
            field_attribute: field("attribute"),
            field_left: field("left"),
            field_object: field("object"),
            field_condition: field("condition"),
            field_right: field("right"),
        }
    }
}

/// The Python language of tree-sitter-python.
pub(crate) fn language() -> &'static Language {
    static LANGUAGE: OnceLock<Language> = OnceLock::new();
    LANGUAGE.get_or_init(|| tree_sitter_python::LANGUAGE.into())
}

/// The kind and field ids of [`language`].
pub(crate) fn kinds() -> &'static Kinds {
    static KINDS: OnceLock<Kinds> = OnceLock::new();
    KINDS.get_or_init(|| Kinds::load(language()))
}

thread_local! {
    // A parser keeps its allocations between files, so each thread owns one.
    static PARSER: RefCell<Option<Parser>> = const { RefCell::new(None) };
}

/// Parses `source` with this thread's parser; the error says why not.
pub(crate) fn parse(source: &[u8]) -> Result<Tree, String> {
    PARSER.with(|cell| {
        let mut slot = cell
            .try_borrow_mut()
            .map_err(|_| "the parser is already in use on this thread".to_string())?;
        let parser = match slot.as_mut() {
            Some(parser) => parser,
            None => {
                let mut parser = Parser::new();
                parser
                    .set_language(language())
                    .map_err(|e| format!("tree-sitter-python cannot be loaded: {e}"))?;
                slot.insert(parser)
            }
        };
        parser
            .parse(source, None)
            .ok_or_else(|| "tree-sitter stopped before the end of the file".to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_and_field_exists_in_the_grammar() {
        let k = kinds();
        let ids = [
            k.function_definition,
            k.class_definition,
            k.decorated_definition,
            k.decorator,
            k.block,
            k.comment,
            k.expression_statement,
            k.string,
            k.string_start,
            k.concatenated_string,
            k.return_statement,
            k.await_expr,
            k.yield_expr,
            k.global_statement,
            k.nonlocal_statement,
            k.lambda,
            k.call,
            k.identifier,
            k.attribute,
            k.argument_list,
            k.keyword_argument,
            k.for_statement,
            k.with_statement,
            k.for_in_clause,
            k.async_kw,
            k.if_statement,
            k.elif_clause,
            k.else_clause,
            k.try_statement,
            k.except_clause,
            k.finally_clause,
            k.delete_statement,
            k.expression_list,
            k.assignment,
            k.true_lit,
            k.false_lit,
            k.field_body,
            k.field_name,
            k.field_definition,
            k.field_superclasses,
            k.field_function,
            k.field_arguments,
            k.field_attribute,
            k.field_left,
            k.field_object,
            k.field_condition,
            k.field_right,
        ];
        for (i, id) in ids.iter().enumerate() {
            assert_ne!(*id, 0, "kind or field #{i} is missing from the grammar");
        }
    }

    #[test]
    fn parser_is_reused_and_parses() {
        let a = parse(b"x = 1\n").expect("parse");
        let b = parse(b"def f():\n    pass\n").expect("parse");
        assert_eq!(a.root_node().kind(), "module");
        assert_eq!(
            b.root_node().child(0).map(|n| n.kind_id()),
            Some(kinds().function_definition)
        );
    }
}
