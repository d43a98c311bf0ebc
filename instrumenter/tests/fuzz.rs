//! Property tests: no input panics, and every report is consistent with its
//! source. Cases per property: `INSTRUMENTER_FUZZ_CASES` (default 200), e.g.
//! `INSTRUMENTER_FUZZ_CASES=100000 cargo test --release -p instrumenter --test fuzz`.

mod common;
use common::*;
use instrumenter::{instrument_source, Options};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("INSTRUMENTER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Pieces of Python that exercise the interesting paths when shuffled.
const FRAGMENTS: &[&str] = &[
    "def ",
    "async ",
    "class ",
    "test_a",
    "test_b",
    "TestX",
    "setUp",
    "tearDown",
    "setUpClass",
    "setup_method",
    "__init__",
    "(",
    ")",
    "(self)",
    ":",
    "\n",
    "\n",
    "\n",
    "    ",
    "    ",
    "\t",
    "        ",
    "# step: one",
    "# step:",
    "# endstep",
    "# plain",
    "yield",
    "yield from x",
    "return",
    "await ",
    "async for i in x:",
    "async with y:",
    "super()",
    "super(A, self)",
    "__class__",
    "global g",
    "nonlocal n",
    "lambda: ",
    "\"\"\"doc\"\"\"",
    "'",
    "\"",
    "f\"{x}\"",
    "b'x'",
    "@pytest.fixture\n",
    "@decorator\n",
    "(unittest.TestCase)",
    "(TestCase)",
    "(Base)",
    "self",
    " = ",
    ",",
    "[",
    "]",
    "{",
    "}",
    "if x:",
    "elif y:",
    "else:",
    "try:",
    "except E as e:",
    "finally:",
    "with ctx:",
    "for i in y:",
    "while 1:",
    "\r\n",
    "é",
    "\u{1F600}",
    "\\\n",
    "del ",
    "__test__ = False",
    "__test__ = True",
    "pass",
    "1",
    ";",
    "x",
    "Base",
    "import unittest\n",
    "match x:",
    "case 1:",
    "type T = int",
    "print",
    "#",
    "\u{feff}",
];

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..120).prop_map(|parts| parts.concat())
}

/// A seed corpus: the fidelity cases when present, else a built-in file.
fn seeds() -> Vec<String> {
    let builtin = "import unittest\n\nclass T(unittest.TestCase):\n    def setUp(self):\n        # step: s\n        self.x = 1\n\n    def test_a(self):\n        \"\"\"Doc.\"\"\"\n        super().setUp()\n        for i in range(3):\n            yield i\n\n\ndef test_b():\n    # step: first\n    a = 1\n    # endstep\n    return a\n".to_string();
    let mut out = vec![builtin];
    if let Some(dir) = cases_dir() {
        for path in case_files(&dir) {
            out.push(std::fs::read_to_string(path).unwrap());
        }
    }
    out
}

/// A seed file with a few random byte-level edits.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    (
        0..seeds.len(),
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                0usize..40,
                0u8..4,
                prop::sample::select(FRAGMENTS),
            ),
            1..8,
        ),
    )
        .prop_map(move |(which, edits)| {
            let mut bytes = seeds[which].clone().into_bytes();
            for (at, len, op, fragment) in edits {
                let at = at.index(bytes.len() + 1);
                let end = (at + len).min(bytes.len());
                match op {
                    0 => {
                        bytes.drain(at..end);
                    }
                    1 => {
                        bytes.splice(at..at, fragment.bytes());
                    }
                    2 => {
                        let copy = bytes[at..end].to_vec();
                        bytes.splice(at..at, copy);
                    }
                    _ => {
                        bytes.splice(at..end, fragment.bytes());
                    }
                }
            }
            bytes
        })
}

fn check(bytes: &[u8]) {
    let report = instrument_source("fuzz.py", bytes, &Options::default());
    check_invariants(bytes, &report);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        check(&bytes);
    }

    #[test]
    fn python_token_soup_is_consistent(src in soup()) {
        check(src.as_bytes());
    }

    #[test]
    fn mutated_test_files_are_consistent(bytes in mutated()) {
        check(&bytes);
    }
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    let parens = format!(
        "def test_a():\n    x = {}1{}\n",
        "(".repeat(50_000),
        ")".repeat(50_000)
    );
    check(parens.as_bytes());
    let unclosed = format!("def test_a():\n    x = {}\n", "[".repeat(50_000));
    check(unclosed.as_bytes());
    let mut ifs = String::from("def test_a():\n");
    for depth in 1..2000 {
        ifs.push_str(&" ".repeat(depth));
        ifs.push_str("if x:\n");
    }
    ifs.push_str(&" ".repeat(2000));
    ifs.push_str("pass\n");
    check(ifs.as_bytes());
    let mut classes = String::new();
    for depth in 0..1000 {
        classes.push_str(&" ".repeat(depth));
        classes.push_str(&format!("class Test{depth}:\n"));
    }
    classes.push_str(&" ".repeat(1000));
    classes.push_str("def test_x(self): pass\n");
    check(classes.as_bytes());
}

#[test]
fn long_inheritance_chains_stay_fast() {
    let mut src = String::from("import unittest\nclass C0(unittest.TestCase):\n    pass\n");
    for i in 1..1000 {
        src.push_str(&format!("class C{i}(C{}, Mixin{i}):\n    x = {i}\n", i - 1));
    }
    src.push_str("class Last(C999, Mixin):\n    def test_last(self): pass\n");
    let report = instrument_source("chain.py", src.as_bytes(), &Options::default());
    assert_eq!(ids_of(&report), ["chain.py::Last::test_last"]);
    check_invariants(src.as_bytes(), &report);
}

fn ids_of(report: &instrumenter::FileReport) -> Vec<&str> {
    report.tests.iter().map(|t| t.id.as_str()).collect()
}
