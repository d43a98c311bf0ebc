//! Find Python tests and split them into steps (see DESIGN.md, "Steps").
//!
//! [`instrument_source`] turns one file into a [`FileReport`]: its tests
//! (pytest node ids, in pytest's collection order), each test's phases
//! (setUpModule, setUpClass, setUp, the test, tearDown, ... in execution
//! order, inherited ones resolved within the file) and each phase's steps,
//! plus a flat list of every function that can be a phase, keyed by
//! `__qualname__`. It never fails and never panics: problems with the input
//! are reported inside the report. [`instrument_path`] does the same for a
//! file or a directory of test files, in parallel.
//!
//! Splitting rules: one step per top-level statement of a body (a compound
//! statement is one step; a trailing comment on the same line belongs to
//! it; the docstring is not a step). A standalone comment matching
//! [`Options::step_marker`] starts a named step that runs to the next marker,
//! an [`Options::end_marker`] comment or the end of the body; statements
//! outside named steps form unnamed steps. A body that yields is one step.
//! `Step::source` is exactly `file[start_byte..end_byte]`; its lines after
//! the first keep their indentation, `Step::indent` is the body's.

mod collect;
mod error;
mod grammar;
mod options;
mod recover;
mod report;
mod select;
mod split;
mod syntax;
mod text;
mod walk;

pub use error::InstrumentError;
pub use options::{Options, DEFAULT_END_MARKER, DEFAULT_PLAN_ID, DEFAULT_STEP_MARKER};
pub use report::{
    FileReport, Flag, FunctionReport, Phase, Report, Role, Scope, SourceError, Step, TestKind,
    TestReport,
};
pub use select::{closest, edit_distance, select};
pub use walk::{display_path, is_test_file, test_files};

use collect::{FuncId, Module};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Instruments the Python source `source`, reported under `path`.
pub fn instrument_source(path: &str, source: &[u8], opts: &Options) -> FileReport {
    let mut report = FileReport::new(path);
    let src = match text::check(source) {
        Ok(src) => src,
        Err(error) => {
            report.error = Some(error);
            return report;
        }
    };
    let tree = match grammar::parse(src.as_bytes()) {
        Ok(tree) => tree,
        Err(message) => {
            report.error = Some(SourceError::new(message));
            return report;
        }
    };
    let root = tree.root_node();
    let module = Module::scan(root, src);
    let mut functions: Vec<Option<FunctionReport>> = vec![None; module.funcs.len()];
    let mut used: Vec<FuncId> = Vec::new();

    for found in module.tests(opts) {
        let plan = module.phases(&found);
        let test_func = &module.funcs[found.func];
        let mut test = TestReport {
            id: format!("{path}::{}", found.node_path),
            kind: found.kind,
            name: found.name,
            class: found.class.map(|c| module.class_qualname(c).to_string()),
            line: test_func.node.start_position().row + 1,
            phases: Vec::with_capacity(plan.len()),
            error: None,
        };
        for phase in &plan {
            used.push(phase.func);
            let function = functions[phase.func]
                .get_or_insert_with(|| function_report(&module, phase.func, src, opts));
            if let Some(error) = &function.error {
                test.error = Some(error.clone());
                test.phases.clear();
                break;
            }
            test.phases.push(Phase {
                name: phase.name.to_string(),
                function: function.qualname.clone(),
                file: path.to_string(),
                role: phase.role,
                scope: phase.scope,
                is_async: function.is_async,
                is_generator: function.is_generator,
                steps: function.steps.clone(),
            });
        }
        report.tests.push(test);
    }

    // The flat list of phase functions in source order, unique by qualname:
    // the last definition wins, as in Python, unless only an earlier one
    // runs as a phase (a subclass kept it alive).
    let mut ids = module.phase_candidates(opts);
    ids.extend(used.iter().copied());
    ids.sort_unstable_by_key(|&f| module.funcs[f].outer.start_byte());
    ids.dedup();
    let used: HashSet<FuncId> = used.into_iter().collect();
    let mut winner: HashMap<&str, FuncId> = HashMap::with_capacity(ids.len());
    for &f in &ids {
        let qualname = module.funcs[f].qualname.as_str();
        match winner.get(qualname) {
            Some(w) if used.contains(w) && !used.contains(&f) => {}
            _ => {
                winner.insert(qualname, f);
            }
        }
    }
    let keep = ids
        .into_iter()
        .filter(|&f| winner.get(module.funcs[f].qualname.as_str()) == Some(&f));
    for f in keep {
        let function = match functions[f].take() {
            Some(function) => function,
            None => function_report(&module, f, src, opts),
        };
        report.functions.push(function);
    }

    if root.has_error() {
        let used: Vec<FuncId> = used.into_iter().collect();
        report.error = error_outside(root, &module, &used, src);
        let known: Vec<usize> = module.funcs.iter().map(|f| f.node.start_byte()).collect();
        let unittest = module.unittest_classes();
        let lost = recover::swallowed_tests(
            root,
            src,
            path,
            &known,
            &unittest,
            &opts.function_prefix,
            &opts.class_prefix,
        );
        for test in lost {
            if report.tests.iter().any(|t| t.id == test.id) {
                continue;
            }
            let at = report.tests.partition_point(|t| t.line < test.line);
            report.tests.insert(at, test);
        }
    }
    report
}

/// The first syntax error that is not inside a function some test runs
/// (those errors are reported on the tests).
fn error_outside(
    root: tree_sitter::Node<'_>,
    module: &Module<'_>,
    used: &[FuncId],
    src: &str,
) -> Option<SourceError> {
    let mut spans: Vec<(usize, usize)> = used
        .iter()
        .map(|&f| {
            (
                module.funcs[f].outer.start_byte(),
                module.funcs[f].outer.end_byte(),
            )
        })
        .collect();
    spans.sort_unstable();
    let inside = |node: tree_sitter::Node<'_>| {
        let (start, end) = (node.start_byte(), node.end_byte());
        let at = spans.partition_point(|s| s.0 <= start);
        spans[..at].iter().rev().any(|s| s.1 >= end)
    };
    let mut first = None;
    syntax::for_each_error(root, |error| {
        if inside(error) {
            return true;
        }
        first = Some(syntax::describe(error, src));
        false
    });
    first
}

fn function_report(module: &Module<'_>, f: FuncId, src: &str, opts: &Options) -> FunctionReport {
    let func = &module.funcs[f];
    let error = syntax::first_error(func.outer, src);
    let mut report = FunctionReport {
        qualname: func.qualname.clone(),
        def_line: func.node.start_position().row + 1,
        first_line: func.outer.start_position().row + 1,
        body_start_line: func.node.end_position().row + 1,
        end_line: func.node.end_position().row + 1,
        is_async: func.is_async,
        is_generator: false,
        steps: Vec::new(),
        error,
    };
    if report.error.is_none() {
        let split = split::split(func.node, src, opts);
        report.steps = split.steps;
        report.is_generator = split.is_generator;
        report.body_start_line = split.body_start_line;
    }
    report
}

/// Instruments a file, or every test file under a directory (in parallel).
/// Problems with single files are reported inside their [`FileReport`];
/// the error is for a missing path or a directory that cannot be walked.
pub fn instrument_path(path: &Path, opts: &Options) -> Result<Vec<FileReport>, InstrumentError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => InstrumentError::NotFound {
            path: path.to_path_buf(),
        },
        _ => InstrumentError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    if !meta.is_dir() {
        return Ok(vec![instrument_file(path, opts)]);
    }
    let files = test_files(path)?;
    Ok(files
        .par_iter()
        .map(|file| instrument_file(file, opts))
        .collect())
}

/// Reads and instruments one file; a read error becomes the file's error.
pub fn instrument_file(path: &Path, opts: &Options) -> FileReport {
    let shown = display_path(path);
    match std::fs::read(path) {
        Ok(source) => instrument_source(&shown, &source, opts),
        Err(e) => {
            let mut report = FileReport::new(shown);
            report.error = Some(SourceError::new(format!("cannot read the file: {e}")));
            report
        }
    }
}
