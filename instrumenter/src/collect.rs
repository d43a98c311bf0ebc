//! Finding the tests of a module the way pytest collects them: module and
//! class namespaces, base classes and their method resolution order, and the
//! phases (setUp, the test, tearDown, ...) each test runs.

use crate::grammar::{kinds, Kinds};
use crate::options::Options;
use crate::report::{Role, Scope, TestKind};
use std::collections::{HashMap, HashSet};
use tree_sitter::Node;

/// Index of a function in [`Module::funcs`].
pub(crate) type FuncId = usize;
/// Index of a class in [`Module::classes`].
pub(crate) type ClassId = usize;

/// Python refuses deeper nesting long before this; it bounds our recursion.
const MAX_DEPTH: usize = 100;
/// Longest method resolution order kept (real ones are a few classes long).
const MAX_MRO: usize = 512;

/// Module-level setup and teardown functions (pytest tries them in order).
const MODULE_SETUP: [&str; 2] = ["setUpModule", "setup_module"];
const MODULE_TEARDOWN: [&str; 2] = ["tearDownModule", "teardown_module"];
/// Names of functions that can be phases besides the tests themselves.
const MODULE_PHASES: [&str; 6] = [
    "setUpModule",
    "setup_module",
    "tearDownModule",
    "teardown_module",
    "setup_function",
    "teardown_function",
];
const CLASS_PHASES: [&str; 11] = [
    "setUp",
    "asyncSetUp",
    "tearDown",
    "asyncTearDown",
    "setUpClass",
    "tearDownClass",
    "setup_method",
    "teardown_method",
    "setup_class",
    "teardown_class",
    "runTest",
];

/// What a name is bound to in a namespace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Binding {
    Func(FuncId),
    Class(ClassId),
    /// Anything else (an assignment): it hides a function of the same name.
    Other,
}

/// One binding (or `del`, when `binding` is `None`) in source order.
struct Entry<'s> {
    name: &'s str,
    binding: Option<Binding>,
    /// Byte where the binding takes effect (the end of its statement).
    end: usize,
}

/// A module or class body: its bindings in order and, once finished, its
/// final `__dict__` (insertion ordered, last binding wins, `del` removes).
#[derive(Default)]
pub(crate) struct Namespace<'s> {
    entries: Vec<Entry<'s>>,
    order: Vec<(&'s str, Binding)>,
    index: HashMap<&'s str, usize>,
}

impl<'s> Namespace<'s> {
    fn bind(&mut self, name: &'s str, binding: Option<Binding>, end: usize) {
        self.entries.push(Entry { name, binding, end });
    }

    /// The binding of `name` in effect at byte `pos` (while scanning).
    fn before(&self, name: &str, pos: usize) -> Option<Binding> {
        self.entries
            .iter()
            .rev()
            .filter(|e| e.end <= pos)
            .find(|e| e.name == name)
            .and_then(|e| e.binding)
    }

    /// Computes the final namespace, in `__dict__` order.
    fn finish(&mut self) {
        let mut order: Vec<Option<(&'s str, Binding)>> = Vec::with_capacity(self.entries.len());
        let mut index: HashMap<&'s str, usize> = HashMap::with_capacity(self.entries.len());
        for e in &self.entries {
            match (e.binding, index.get(e.name).copied()) {
                (Some(b), Some(at)) => order[at] = Some((e.name, b)),
                (Some(b), None) => {
                    index.insert(e.name, order.len());
                    order.push(Some((e.name, b)));
                }
                (None, Some(at)) => {
                    order[at] = None;
                    index.remove(e.name);
                }
                (None, None) => {}
            }
        }
        self.order = order.into_iter().flatten().collect();
        self.index = self
            .order
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (*name, i))
            .collect();
    }

    /// The final binding of `name`.
    pub fn get(&self, name: &str) -> Option<Binding> {
        self.index.get(name).map(|&i| self.order[i].1)
    }

    /// The final bindings in `__dict__` order.
    pub fn iter(&self) -> impl Iterator<Item = (&'s str, Binding)> + '_ {
        self.order.iter().copied()
    }
}

/// Where `scan_block` is: the namespace it fills, how deep it is, the
/// column definitions of that namespace start at, and whether it is inside
/// an `ERROR` node.
#[derive(Clone, Copy)]
struct Place {
    scope: Option<ClassId>,
    depth: usize,
    column: usize,
    in_error: bool,
}

impl Place {
    fn deeper(self, error: bool) -> Place {
        Place {
            depth: self.depth + 1,
            in_error: self.in_error || error,
            ..self
        }
    }
}

/// A `def` at module or class level.
pub(crate) struct FuncDef<'s> {
    /// The `function_definition` node.
    pub node: Node<'s>,
    /// The `decorated_definition` around it, or the node itself.
    pub outer: Node<'s>,
    pub name: &'s str,
    pub qualname: String,
    pub is_async: bool,
    /// Decorated with `@pytest.fixture` (or any `*.fixture`).
    pub is_fixture: bool,
    /// Decorated with `@property` or `@cached_property`: not callable.
    pub is_property: bool,
}

/// A base class expression, resolved as far as the file allows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Key {
    /// A class of this file.
    Local(ClassId),
    /// A class from elsewhere (an index into `Module::external`) or an
    /// expression that cannot be resolved.
    External(usize),
}

/// A `class` at module or class level.
pub(crate) struct ClassDef<'s> {
    pub qualname: String,
    /// The class body's namespace.
    pub ns: Namespace<'s>,
    /// `__test__ = True/False` in the body.
    test_attr: Option<bool>,
    /// C3 linearization, starting with the class itself.
    mro: Vec<Key>,
    /// Derives (here or in a base) from a class named `*TestCase`.
    is_unittest: bool,
}

/// A test pytest would collect.
pub(crate) struct Found {
    /// The node id after `path::`, e.g. `TestCart::test_total`.
    pub node_path: String,
    pub name: String,
    pub func: FuncId,
    pub class: Option<ClassId>,
    pub kind: TestKind,
}

/// One function a test runs.
pub(crate) struct PlannedPhase<'s> {
    pub name: &'s str,
    pub func: FuncId,
    pub role: Role,
    pub scope: Scope,
}

/// A scanned module: every module- and class-level function and class.
pub(crate) struct Module<'s> {
    pub funcs: Vec<FuncDef<'s>>,
    pub classes: Vec<ClassDef<'s>>,
    pub ns: Namespace<'s>,
    /// Names of external bases; `None` for expressions that are not names.
    external: Vec<Option<String>>,
    src: &'s str,
    k: &'static Kinds,
}

impl<'s> Module<'s> {
    /// Scans the module's top level, class bodies and the `if`/`try`/`with`
    /// blocks around definitions (never function bodies).
    pub fn scan(root: Node<'s>, src: &'s str) -> Module<'s> {
        let mut module = Module {
            funcs: Vec::new(),
            classes: Vec::new(),
            ns: Namespace::default(),
            external: Vec::new(),
            src,
            k: kinds(),
        };
        module.scan_block(
            root,
            Place {
                scope: None,
                depth: 0,
                column: 0,
                in_error: false,
            },
        );
        module.ns.finish();
        module
    }

    fn text(&self, node: Node<'_>) -> &'s str {
        self.src
            .get(node.start_byte()..node.end_byte())
            .unwrap_or("")
    }

    fn namespace(&mut self, scope: Option<ClassId>) -> &mut Namespace<'s> {
        match scope {
            Some(c) => &mut self.classes[c].ns,
            None => &mut self.ns,
        }
    }

    fn scan_block(&mut self, parent: Node<'s>, at: Place) {
        if at.depth > MAX_DEPTH {
            return;
        }
        let k = self.k;
        let mut cursor = parent.walk();
        if !cursor.goto_first_child() {
            return;
        }
        loop {
            let node = cursor.node();
            let kind = node.kind_id();
            // Inside an ERROR node, tree-sitter may have lost the class a
            // definition belongs to: trust only those at the scope's column
            // (the others are reported by `recover`).
            let placed = !at.in_error || node.start_position().column == at.column;
            if kind == k.function_definition {
                if placed {
                    self.add_function(node, node, at.scope);
                }
            } else if kind == k.class_definition {
                if placed {
                    self.add_class(node, node, at);
                }
            } else if kind == k.decorated_definition {
                if let Some(def) = node
                    .child_by_field_id(k.field_definition)
                    .filter(|_| placed)
                {
                    if def.kind_id() == k.function_definition {
                        self.add_function(def, node, at.scope);
                    } else if def.kind_id() == k.class_definition {
                        self.add_class(def, node, at);
                    }
                }
            } else if kind == k.if_statement && self.is_main_guard(node) {
                // `if __name__ == "__main__":` does not run on import.
                let mut inner = node.walk();
                for clause in node.children(&mut inner) {
                    if clause.kind_id() == k.elif_clause || clause.kind_id() == k.else_clause {
                        self.scan_block(clause, at.deeper(false));
                    }
                }
            } else if node.is_error()
                || kind == k.block
                || kind == k.if_statement
                || kind == k.elif_clause
                || kind == k.else_clause
                || kind == k.try_statement
                || kind == k.except_clause
                || kind == k.finally_clause
                || kind == k.with_statement
            {
                // Definitions under `if`/`try`/`with` (and inside syntax
                // errors) still land in this namespace.
                self.scan_block(node, at.deeper(node.is_error()));
            } else if kind == k.expression_statement {
                self.scan_assignment(node, at.scope);
            } else if kind == k.delete_statement {
                self.scan_delete(node, at.scope);
            }
            if !cursor.goto_next_sibling() {
                break;
            }
        }
    }

    /// `if __name__ == "__main__":` (either way round, either quote).
    fn is_main_guard(&self, node: Node<'s>) -> bool {
        let Some(condition) = node.child_by_field_id(self.k.field_condition) else {
            return false;
        };
        let text: String = self
            .text(condition)
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| if c == '\'' { '"' } else { c })
            .collect();
        text == "__name__==\"__main__\"" || text == "\"__main__\"==__name__"
    }

    fn add_function(&mut self, def: Node<'s>, outer: Node<'s>, scope: Option<ClassId>) {
        let k = self.k;
        let Some(name_node) = def.child_by_field_id(k.field_name) else {
            return;
        };
        let name = self.text(name_node);
        let (mut is_fixture, mut is_property) = (false, false);
        let mut cursor = outer.walk();
        for decorator in outer
            .children(&mut cursor)
            .filter(|c| c.kind_id() == k.decorator)
        {
            let target = decorator_target(decorator, self.src, k);
            is_fixture |= target == "fixture" || target.ends_with(".fixture");
            is_property |= target == "property" || target.ends_with("cached_property");
        }
        let qualname = self.qualname(scope, name);
        let id = self.funcs.len();
        self.funcs.push(FuncDef {
            node: def,
            outer,
            name,
            qualname,
            is_async: def.child(0).is_some_and(|c| c.kind_id() == k.async_kw),
            is_fixture,
            is_property,
        });
        let end = outer.end_byte();
        self.namespace(scope)
            .bind(name, Some(Binding::Func(id)), end);
    }

    fn qualname(&self, scope: Option<ClassId>, name: &str) -> String {
        match scope {
            Some(c) => format!("{}.{name}", self.classes[c].qualname),
            None => name.to_string(),
        }
    }

    fn add_class(&mut self, def: Node<'s>, outer: Node<'s>, at: Place) {
        let scope = at.scope;
        let k = self.k;
        let Some(name_node) = def.child_by_field_id(k.field_name) else {
            return;
        };
        let name = self.text(name_node);
        let mut bases = Vec::new();
        if let Some(args) = def.child_by_field_id(k.field_superclasses) {
            let mut cursor = args.walk();
            for arg in args.named_children(&mut cursor) {
                if arg.kind_id() != k.keyword_argument && arg.kind_id() != k.comment {
                    bases.push(self.resolve_base(arg, scope, outer.start_byte()));
                }
            }
        }
        let id = self.classes.len();
        let qualname = self.qualname(scope, name);
        let mro = self.linearize(id, &bases);
        let is_unittest = mro.iter().any(|key| match key {
            Key::Local(c) => *c != id && self.classes[*c].is_unittest,
            Key::External(e) => self.external[*e]
                .as_deref()
                .is_some_and(|n| n.rsplit('.').next().unwrap_or(n).ends_with("TestCase")),
        });
        self.classes.push(ClassDef {
            qualname,
            ns: Namespace::default(),
            test_attr: None,
            mro,
            is_unittest,
        });
        if let Some(body) = def.child_by_field_id(k.field_body) {
            let place = Place {
                scope: Some(id),
                depth: at.depth + 1,
                column: body.start_position().column,
                in_error: false,
            };
            self.scan_block(body, place);
        }
        self.classes[id].ns.finish();
        let end = outer.end_byte();
        self.namespace(scope)
            .bind(name, Some(Binding::Class(id)), end);
    }

    /// Resolves a base class expression evaluated at byte `pos` in `scope`.
    fn resolve_base(&mut self, expr: Node<'s>, scope: Option<ClassId>, pos: usize) -> Key {
        let k = self.k;
        let mut parts = Vec::new();
        let mut node = expr;
        // `a.b.C` is attribute(attribute(a, b), C): collect names right to left.
        while node.kind_id() == k.attribute && parts.len() <= MAX_DEPTH {
            let (Some(object), Some(attr)) = (
                node.child_by_field_id(k.field_object),
                node.child_by_field_id(k.field_attribute),
            ) else {
                break;
            };
            parts.push(self.text(attr));
            node = object;
        }
        if node.kind_id() != k.identifier {
            return self.external_key(None);
        }
        parts.push(self.text(node));
        parts.reverse();
        let first = parts[0];
        let found = match scope {
            Some(c) => self.classes[c].ns.before(first, pos),
            None => None,
        }
        .or_else(|| self.ns.before(first, pos));
        match found {
            Some(Binding::Class(mut c)) => {
                for part in &parts[1..] {
                    match self.classes[c].ns.get(part) {
                        Some(Binding::Class(inner)) => c = inner,
                        _ => return self.external_key(None),
                    }
                }
                Key::Local(c)
            }
            Some(Binding::Func(_)) => self.external_key(None),
            Some(Binding::Other) | None => self.external_key(Some(parts.join("."))),
        }
    }

    fn external_key(&mut self, name: Option<String>) -> Key {
        if let Some(name) = &name {
            if let Some(i) = self.external.iter().position(|e| e.as_ref() == Some(name)) {
                return Key::External(i);
            }
        }
        self.external.push(name);
        Key::External(self.external.len() - 1)
    }

    /// C3 linearization of a new class `id` with `bases` (all already known).
    fn linearize(&self, id: ClassId, bases: &[Key]) -> Vec<Key> {
        let of = |key: &Key| -> Vec<Key> {
            match key {
                Key::Local(c) => self.classes[*c].mro.clone(),
                Key::External(_) => vec![*key],
            }
        };
        let mut mro = vec![Key::Local(id)];
        match bases {
            [] => {}
            [only] => mro.extend(of(only)),
            _ => {
                let mut seqs: Vec<Vec<Key>> = bases.iter().map(of).collect();
                seqs.push(bases.to_vec());
                let total: usize = seqs.iter().map(Vec::len).sum();
                match (total <= 4 * MAX_MRO)
                    .then(|| c3_merge(seqs.clone()))
                    .flatten()
                {
                    Some(merged) => mro.extend(merged),
                    None => {
                        // An inconsistent order: Python would refuse the class;
                        // depth-first without repeats is a fair guess.
                        let mut seen = HashSet::new();
                        seen.insert(Key::Local(id));
                        for key in seqs.into_iter().flatten() {
                            if seen.insert(key) {
                                mro.push(key);
                            }
                        }
                    }
                }
            }
        }
        mro.truncate(MAX_MRO);
        mro
    }

    /// Records `name = ...` (and `__test__ = True/False` in class bodies).
    fn scan_assignment(&mut self, stmt: Node<'s>, scope: Option<ClassId>) {
        let k = self.k;
        let Some(assign) = stmt.named_child(0).filter(|n| n.kind_id() == k.assignment) else {
            return;
        };
        let Some(left) = assign
            .child_by_field_id(k.field_left)
            .filter(|n| n.kind_id() == k.identifier)
        else {
            return;
        };
        let name = self.text(left);
        if let (Some(c), "__test__") = (scope, name) {
            let right = assign.child_by_field_id(k.field_right).map(|r| r.kind_id());
            self.classes[c].test_attr = if right == Some(k.true_lit) {
                Some(true)
            } else if right == Some(k.false_lit) {
                Some(false)
            } else {
                None
            };
        }
        let end = stmt.end_byte();
        self.namespace(scope).bind(name, Some(Binding::Other), end);
    }

    /// Records `del name, ...`.
    fn scan_delete(&mut self, stmt: Node<'s>, scope: Option<ClassId>) {
        let k = self.k;
        let mut targets = Vec::new();
        let mut cursor = stmt.walk();
        for child in stmt.named_children(&mut cursor) {
            if child.kind_id() == k.identifier {
                targets.push(child);
            } else if child.kind_id() == k.expression_list {
                let mut inner = child.walk();
                targets.extend(
                    child
                        .named_children(&mut inner)
                        .filter(|n| n.kind_id() == k.identifier),
                );
            }
        }
        let end = stmt.end_byte();
        for target in targets {
            let name = self.text(target);
            self.namespace(scope).bind(name, None, end);
        }
    }

    /// The first binding of `name` along the method resolution order of `c`.
    fn lookup(&self, c: ClassId, name: &str) -> Option<Binding> {
        self.classes[c].mro.iter().find_map(|key| match key {
            Key::Local(id) => self.classes[*id].ns.get(name),
            Key::External(_) => None,
        })
    }

    fn local_mro(&self, c: ClassId) -> impl Iterator<Item = ClassId> + '_ {
        self.classes[c].mro.iter().filter_map(|key| match key {
            Key::Local(id) => Some(*id),
            Key::External(_) => None,
        })
    }

    /// `__test__` as seen on class `c` (inherited too).
    fn test_attr(&self, c: ClassId) -> Option<bool> {
        self.local_mro(c)
            .find(|id| self.classes[*id].ns.get("__test__").is_some())
            .and_then(|id| self.classes[id].test_attr)
    }

    fn is_test_name(&self, name: &str, opts: &Options) -> bool {
        name.starts_with(opts.function_prefix.as_str())
    }

    /// A function pytest would call as a test or use as a setup function.
    fn callable_func(&self, binding: Option<Binding>) -> Option<FuncId> {
        match binding {
            Some(Binding::Func(f)) if !self.funcs[f].is_property && !self.funcs[f].is_fixture => {
                Some(f)
            }
            _ => None,
        }
    }

    /// The tests of the module in pytest's collection order.
    pub fn tests(&self, opts: &Options) -> Vec<Found> {
        let mut found = Vec::new();
        for (name, binding) in self.ns.iter() {
            match binding {
                Binding::Func(f)
                    if self.is_test_name(name, opts)
                        && self.callable_func(Some(binding)).is_some() =>
                {
                    found.push(Found {
                        node_path: name.to_string(),
                        name: name.to_string(),
                        func: f,
                        class: None,
                        kind: TestKind::Pytest,
                    });
                }
                Binding::Class(c) => {
                    self.collect_class(c, name, name.to_string(), opts, 0, &mut found)
                }
                _ => {}
            }
        }
        found
    }

    /// Collects class `c`, bound as `attr`, if pytest would.
    fn collect_class(
        &self,
        c: ClassId,
        attr: &str,
        path: String,
        opts: &Options,
        depth: usize,
        found: &mut Vec<Found>,
    ) {
        let class = &self.classes[c];
        let test_attr = self.test_attr(c);
        if depth > MAX_DEPTH || test_attr == Some(false) {
            return;
        }
        if class.is_unittest {
            self.collect_unittest(c, path, opts, found);
            return;
        }
        if !(attr.starts_with(opts.class_prefix.as_str()) || test_attr == Some(true)) {
            return;
        }
        let has_ctor = self.local_mro(c).any(|id| {
            self.classes[id].ns.get("__init__").is_some()
                || self.classes[id].ns.get("__new__").is_some()
        });
        if has_ctor {
            return;
        }
        // Like pytest: each class's own names in definition order, a name
        // only once, and inherited names before the subclass's.
        let mut seen = HashSet::new();
        let mut per_class = Vec::new();
        for id in self.local_mro(c) {
            let mut items = Vec::new();
            for (name, binding) in self.classes[id].ns.iter() {
                if !seen.insert(name) {
                    continue;
                }
                match binding {
                    Binding::Func(f)
                        if self.is_test_name(name, opts)
                            && self.callable_func(Some(binding)).is_some() =>
                    {
                        items.push(Found {
                            node_path: format!("{path}::{name}"),
                            name: name.to_string(),
                            func: f,
                            class: Some(c),
                            kind: TestKind::Pytest,
                        });
                    }
                    Binding::Class(inner) => self.collect_class(
                        inner,
                        name,
                        format!("{path}::{name}"),
                        opts,
                        depth + 1,
                        &mut items,
                    ),
                    _ => {}
                }
            }
            per_class.push(items);
        }
        for items in per_class.into_iter().rev() {
            found.extend(items);
        }
    }

    /// unittest's `TestLoader.getTestCaseNames`: sorted `test*` methods,
    /// inherited ones included, else `runTest`.
    fn collect_unittest(&self, c: ClassId, path: String, opts: &Options, found: &mut Vec<Found>) {
        let mut names: Vec<(&str, FuncId)> = Vec::new();
        let mut seen = HashSet::new();
        for id in self.local_mro(c) {
            for (name, _) in self.classes[id].ns.iter() {
                if self.is_test_name(name, opts) && seen.insert(name) {
                    if let Some(Binding::Func(f)) = self.lookup(c, name) {
                        if !self.funcs[f].is_property {
                            names.push((name, f));
                        }
                    }
                }
            }
        }
        names.sort_unstable_by(|a, b| a.0.cmp(b.0));
        if names.is_empty() {
            if let Some(Binding::Func(f)) = self.lookup(c, "runTest") {
                names.push(("runTest", f));
            }
        }
        for (name, f) in names {
            found.push(Found {
                node_path: format!("{path}::{name}"),
                name: name.to_string(),
                func: f,
                class: Some(c),
                kind: TestKind::Unittest,
            });
        }
    }

    /// The phases of a test in execution order.
    pub fn phases(&self, test: &Found) -> Vec<PlannedPhase<'s>> {
        let mut out = Vec::new();
        let module_first = |names: &[&'static str]| {
            names
                .iter()
                .find_map(|n| self.callable_func(self.ns.get(n)).map(|f| (*n, f)))
        };
        let push =
            |found: Option<(&'s str, FuncId)>, role, scope, out: &mut Vec<PlannedPhase<'s>>| {
                if let Some((name, func)) = found {
                    out.push(PlannedPhase {
                        name,
                        func,
                        role,
                        scope,
                    });
                }
            };
        push(
            module_first(&MODULE_SETUP),
            Role::Setup,
            Scope::Module,
            &mut out,
        );
        match test.class {
            None => {
                let f = |n: &'static str| self.callable_func(self.ns.get(n)).map(|f| (n, f));
                push(f("setup_function"), Role::Setup, Scope::Function, &mut out);
                push(
                    Some((self.funcs[test.func].name, test.func)),
                    Role::Test,
                    Scope::Function,
                    &mut out,
                );
                push(
                    f("teardown_function"),
                    Role::Teardown,
                    Scope::Function,
                    &mut out,
                );
            }
            Some(c) => {
                let unit = test.kind == TestKind::Unittest;
                let f = |n: &'static str| self.callable_func(self.lookup(c, n)).map(|f| (n, f));
                let u = |n: &'static str| if unit { f(n) } else { None };
                push(u("setUpClass"), Role::Setup, Scope::Class, &mut out);
                push(f("setup_class"), Role::Setup, Scope::Class, &mut out);
                push(f("setup_method"), Role::Setup, Scope::Function, &mut out);
                push(u("setUp"), Role::Setup, Scope::Function, &mut out);
                push(u("asyncSetUp"), Role::Setup, Scope::Function, &mut out);
                push(
                    Some((self.funcs[test.func].name, test.func)),
                    Role::Test,
                    Scope::Function,
                    &mut out,
                );
                push(
                    u("asyncTearDown"),
                    Role::Teardown,
                    Scope::Function,
                    &mut out,
                );
                push(u("tearDown"), Role::Teardown, Scope::Function, &mut out);
                push(
                    f("teardown_method"),
                    Role::Teardown,
                    Scope::Function,
                    &mut out,
                );
                push(f("teardown_class"), Role::Teardown, Scope::Class, &mut out);
                push(u("tearDownClass"), Role::Teardown, Scope::Class, &mut out);
            }
        }
        push(
            module_first(&MODULE_TEARDOWN),
            Role::Teardown,
            Scope::Module,
            &mut out,
        );
        out
    }

    /// Functions that can be phases: tests and setup/teardown functions of
    /// the module and of every class body (final bindings only).
    pub fn phase_candidates(&self, opts: &Options) -> Vec<FuncId> {
        let mut out = Vec::new();
        for (name, binding) in self.ns.iter() {
            if let Some(f) = self.callable_func(Some(binding)) {
                if self.is_test_name(name, opts) || MODULE_PHASES.contains(&name) {
                    out.push(f);
                }
            }
        }
        for class in &self.classes {
            for (name, binding) in class.ns.iter() {
                if let Some(f) = self.callable_func(Some(binding)) {
                    if self.is_test_name(name, opts) || CLASS_PHASES.contains(&name) {
                        out.push(f);
                    }
                }
            }
        }
        out
    }

    /// `__qualname__`s of the classes that derive from a `*TestCase`.
    pub fn unittest_classes(&self) -> Vec<&str> {
        self.classes
            .iter()
            .filter(|c| c.is_unittest)
            .map(|c| c.qualname.as_str())
            .collect()
    }

    /// `__qualname__` of class `c`.
    pub fn class_qualname(&self, c: ClassId) -> &str {
        &self.classes[c].qualname
    }
}

/// The dotted name a decorator applies, without call arguments:
/// `@pytest.fixture(scope="module")` gives `pytest.fixture`.
fn decorator_target<'s>(decorator: Node<'s>, src: &'s str, k: &Kinds) -> &'s str {
    let Some(mut expr) = decorator.named_child(0) else {
        return "";
    };
    if expr.kind_id() == k.call {
        if let Some(function) = expr.child_by_field_id(k.field_function) {
            expr = function;
        }
    }
    src.get(expr.start_byte()..expr.end_byte()).unwrap_or("")
}

/// Merges linearizations the C3 way; `None` when no consistent order exists.
/// Counting how often each class sits in a tail keeps this linear-ish.
fn c3_merge(mut seqs: Vec<Vec<Key>>) -> Option<Vec<Key>> {
    let mut out = Vec::new();
    let mut in_tails: HashMap<Key, usize> = HashMap::new();
    for seq in &mut seqs {
        seq.reverse(); // the head is last: popping it is cheap
        if let Some((_, tail)) = seq.split_last() {
            for key in tail {
                *in_tails.entry(*key).or_default() += 1;
            }
        }
    }
    loop {
        seqs.retain(|s| !s.is_empty());
        let candidate = seqs
            .iter()
            .filter_map(|s| s.last().copied())
            .find(|c| in_tails.get(c).copied().unwrap_or(0) == 0);
        let Some(candidate) = candidate else {
            return seqs.is_empty().then_some(out);
        };
        out.push(candidate);
        for seq in &mut seqs {
            if seq.last() == Some(&candidate) {
                seq.pop();
                if let Some(head) = seq.last() {
                    if let Some(count) = in_tails.get_mut(head) {
                        *count = count.saturating_sub(1);
                    }
                }
            }
        }
    }
}
