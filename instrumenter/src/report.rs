//! What the instrumenter reports: files, tests, phases, steps and errors.
//! These serialize to the JSON of `stepkernel steps --json`.

use serde::{Deserialize, Serialize};

/// The output of `stepkernel steps --json`: one entry per file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Report {
    /// The files instrumented, in the order pytest would visit them.
    pub files: Vec<FileReport>,
}

impl Report {
    /// True when any file or test carries an error.
    pub fn has_errors(&self) -> bool {
        self.files.iter().any(FileReport::has_errors)
    }
}

/// The tests and phase functions of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReport {
    /// The path as given (relative when the user passed a relative path).
    pub path: String,
    /// A problem with the file as a whole: unreadable, binary, not UTF-8,
    /// or a syntax error outside every test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SourceError>,
    /// The tests, in the order pytest collects them.
    pub tests: Vec<TestReport>,
    /// Every function that can be a phase, in source order, unique by qualname.
    pub functions: Vec<FunctionReport>,
}

impl FileReport {
    /// An empty report for `path`.
    pub fn new(path: impl Into<String>) -> FileReport {
        FileReport {
            path: path.into(),
            error: None,
            tests: Vec::new(),
            functions: Vec::new(),
        }
    }

    /// True when the file or any of its tests carries an error.
    pub fn has_errors(&self) -> bool {
        self.error.is_some() || self.tests.iter().any(|t| t.error.is_some())
    }

    /// The function with this `__qualname__`, if the file defines it.
    pub fn function(&self, qualname: &str) -> Option<&FunctionReport> {
        self.functions.iter().find(|f| f.qualname == qualname)
    }
}

/// Which runner a test belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestKind {
    /// A test method of a `unittest.TestCase` subclass.
    Unittest,
    /// A pytest test function or a method of a `Test*` class.
    Pytest,
}

/// One test: its pytest node id and its phases, or why it cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestReport {
    /// pytest node id: `path::Class::method` or `path::function`.
    pub id: String,
    /// unittest or pytest.
    pub kind: TestKind,
    /// The test function's name.
    pub name: String,
    /// `__qualname__` of the class the test runs on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// 1-based line of the test's `def`.
    pub line: usize,
    /// setUp/test/tearDown phases in execution order (empty on error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
    /// A syntax error inside one of the test's functions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SourceError>,
}

/// When a phase runs relative to the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Before the test body (setUp, setup_method, setUpClass, ...).
    Setup,
    /// The test body itself.
    Test,
    /// After the test body (tearDown, teardown_method, ...).
    Teardown,
}

/// How often a phase runs: once per test, per class or per module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Once per test (setUp, the test, setup_method, setup_function, ...).
    Function,
    /// Once per class (setUpClass, setup_class, ...).
    Class,
    /// Once per module (setUpModule, setup_module, ...).
    Module,
}

/// One function run as part of a test, split into steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    /// The method or function name as written (`setUp`, `test_total`, ...).
    pub name: String,
    /// `__qualname__` of the function that runs (may be a base class's).
    pub function: String,
    /// The file defining the function.
    pub file: String,
    /// Setup, test or teardown.
    pub role: Role,
    /// Function, class or module.
    pub scope: Scope,
    /// `async def`.
    pub is_async: bool,
    /// The function contains `yield` at its own level, so it is one step.
    pub is_generator: bool,
    /// The steps of the function body.
    pub steps: Vec<Step>,
}

/// A function that can be a phase, looked up by `__qualname__`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionReport {
    /// `__qualname__`, e.g. `TestCart.test_total` or `Outer.Inner.setUp`.
    pub qualname: String,
    /// 1-based line of `def` (or `async def`), after decorators.
    pub def_line: usize,
    /// 1-based first line including decorators (Python's `co_firstlineno`).
    pub first_line: usize,
    /// 1-based line of the first statement of the body (docstring included).
    pub body_start_line: usize,
    /// 1-based last line of the function.
    pub end_line: usize,
    /// `async def`.
    pub is_async: bool,
    /// The body contains `yield` at its own level.
    pub is_generator: bool,
    /// The steps of the body.
    pub steps: Vec<Step>,
    /// A syntax error inside the function; `steps` is empty then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SourceError>,
}

/// A property of a step that changes how it must be executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flag {
    /// `return` at the step's own level: the step may end the function.
    Return,
    /// `await`, `async for`, `async with` or an async comprehension.
    Await,
    /// `yield` or `yield from` at the step's own level.
    Yield,
    /// A `global` declaration.
    Global,
    /// A `nonlocal` declaration.
    Nonlocal,
    /// Zero-argument `super()` (or a bare `__class__`): needs the `__class__` cell.
    Super,
}

impl Flag {
    /// All flags, in the order they are reported.
    pub const ALL: [Flag; 6] = [
        Flag::Return,
        Flag::Await,
        Flag::Yield,
        Flag::Global,
        Flag::Nonlocal,
        Flag::Super,
    ];

    /// The flag's bit in a [`FlagSet`].
    pub(crate) const fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The name used in JSON and in the human output.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Return => "return",
            Flag::Await => "await",
            Flag::Yield => "yield",
            Flag::Global => "global",
            Flag::Nonlocal => "nonlocal",
            Flag::Super => "super",
        }
    }
}

/// A set of [`Flag`]s as bits, cheap to union while walking the tree.
pub(crate) type FlagSet = u8;

/// Expands a [`FlagSet`] into its flags, in [`Flag::ALL`] order.
pub(crate) fn flag_list(set: FlagSet) -> Vec<Flag> {
    Flag::ALL
        .into_iter()
        .filter(|f| set & f.bit() != 0)
        .collect()
}

/// One step: consecutive statements of a function body run as a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// 0-based position in the function body.
    pub index: usize,
    /// The marker's name, else a short form of the first line.
    pub name: String,
    /// 1-based first line of the first statement.
    pub start_line: usize,
    /// 1-based last line of the last statement (or its trailing comment).
    pub end_line: usize,
    /// Byte offset of the first statement in the file.
    pub start_byte: usize,
    /// Byte offset just past the last statement (or its trailing comment).
    pub end_byte: usize,
    /// The exact text `file[start_byte..end_byte]`; lines after the first keep
    /// their indentation.
    pub source: String,
    /// The body's indentation (e.g. eight spaces or two tabs).
    pub indent: String,
    /// 1-based line of the `# step:` comment that named this step.
    pub marker_line: Option<usize>,
    /// Test plan items the marker names (`# step: log in [TP-101, TP-102]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan_ids: Vec<String>,
    /// What the step contains that changes how it is run.
    pub flags: Vec<Flag>,
}

/// Where and why something could not be instrumented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceError {
    /// What is wrong, e.g. "invalid syntax" or "not UTF-8".
    pub message: String,
    /// 1-based line, when the problem has a place.
    pub line: Option<usize>,
    /// 1-based column in characters, when the problem has a place.
    pub column: Option<usize>,
}

impl SourceError {
    /// An error without a position.
    pub fn new(message: impl Into<String>) -> SourceError {
        SourceError {
            message: message.into(),
            line: None,
            column: None,
        }
    }

    /// An error at a 1-based line and column.
    pub fn at(message: impl Into<String>, line: usize, column: usize) -> SourceError {
        SourceError {
            message: message.into(),
            line: Some(line),
            column: Some(column),
        }
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(col)) => write!(f, "line {line}, column {col}: {}", self.message),
            (Some(line), None) => write!(f, "line {line}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}
