//! Syntax errors, non-UTF-8 and binary files, and the JSON shape.

mod common;
use common::*;
use instrumenter::{instrument_source, Options};

#[test]
fn syntax_error_in_one_test_leaves_the_others_reported() {
    let src = "def test_ok():\n    a = 1\n\ndef test_bad():\n    x = (1,\n    y = 2\n\ndef test_after():\n    b = 2\n";
    let f = report(src);
    assert_eq!(ids(&f), ["test_ok", "test_bad", "test_after"]);
    let bad = test(&f, "test_bad");
    assert!(bad.phases.is_empty());
    let error = bad.error.as_ref().expect("test_bad has an error");
    assert_eq!(error.line, Some(5));
    assert!(error.column.is_some());
    assert!(error.message.contains("invalid syntax"), "{error}");
    assert!(test(&f, "test_ok").error.is_none());
    assert_eq!(sources(body(&f, "test_ok")), ["a = 1"]);
    assert_eq!(sources(body(&f, "test_after")), ["b = 2"]);
    // The error is the test's, not the file's.
    assert!(f.error.is_none(), "{:?}", f.error);
    assert!(f.has_errors());
    assert!(f.function("test_bad").unwrap().error.is_some());
    check_invariants(src.as_bytes(), &f);
}

#[test]
fn missing_token_is_named() {
    let f = report("def test_a():\n    if x\n        pass\n\ndef test_b():\n    pass\n");
    let error = test(&f, "test_a").error.clone().expect("error");
    assert_eq!(error.line, Some(2));
    assert!(test(&f, "test_b").error.is_none());
}

#[test]
fn error_in_setup_marks_every_test_of_the_class() {
    let f = report(
        "import unittest\n\nclass T(unittest.TestCase):\n    def setUp(self):\n        self.x = = 1\n\n    def test_a(self):\n        pass\n\n    def test_b(self):\n        pass\n\ndef test_free():\n    pass\n",
    );
    assert!(test(&f, "T::test_a").error.is_some(), "{:?}", f.tests);
    assert!(test(&f, "T::test_b").error.is_some());
    assert!(test(&f, "test_free").error.is_none());
}

#[test]
fn error_outside_tests_is_a_file_error_and_tests_remain() {
    let src = "def helper(:\n    pass\n\ndef test_a():\n    x = 1\n";
    let f = report(src);
    let error = f.error.as_ref().expect("file error");
    assert_eq!(error.line, Some(1));
    assert_eq!(sources(body(&f, "test_a")), ["x = 1"]);
}

#[test]
fn column_is_one_based_in_characters() {
    let f = report("def test_a():\n    é = (1 +)\n");
    let error = test(&f, "test_a").error.clone().expect("error");
    assert_eq!(error.line, Some(2));
    // `)` is the 13th character of the line; tree-sitter counts 14 bytes.
    let column = error.column.unwrap();
    assert!((8..=13).contains(&column), "column {column}: {error}");
}

#[test]
fn non_utf8_and_binary_files_get_a_clear_error() {
    let opts = Options::default();
    let latin = instrument_source(
        "t.py",
        b"# coding: latin-1\ndef test_a():\n    s = '\xe9'\n",
        &opts,
    );
    let error = latin.error.expect("not UTF-8");
    assert!(error.message.contains("not UTF-8"), "{error}");
    assert_eq!(error.line, Some(3));
    assert!(latin.tests.is_empty());
    let binary = instrument_source("t.py", b"\x7fELF\x02\x01\x01\x00\x00", &opts);
    assert!(binary.error.expect("binary").message.contains("binary"));
}

#[test]
fn empty_and_odd_files_do_not_fail() {
    for src in [
        "",
        "\n\n",
        "   ",
        "\u{feff}def test_a():\n    pass\n",
        "def",
        "class",
        "@",
        "def test_():",
    ] {
        let f = report(src);
        check_invariants(src.as_bytes(), &f);
    }
    let bom = report("\u{feff}def test_a():\n    pass\n");
    assert_eq!(ids(&bom), ["test_a"]);
}

#[test]
fn json_has_the_documented_shape() {
    let src = "import unittest\n\n\nclass TestCart(unittest.TestCase):\n\n    def setUp(self):\n\n        self.cart = Cart()\n\n    def test_total(self):\n        return\n";
    let f = instrument_source("tests/test_cart.py", src.as_bytes(), &Options::default());
    let report = instrumenter::Report { files: vec![f] };
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    let test = &json["files"][0]["tests"][0];
    assert_eq!(json["files"][0]["path"], "tests/test_cart.py");
    assert_eq!(test["id"], "tests/test_cart.py::TestCart::test_total");
    assert_eq!(test["kind"], "unittest");
    let phase = &test["phases"][0];
    assert_eq!(phase["name"], "setUp");
    assert_eq!(phase["function"], "TestCart.setUp");
    assert_eq!(phase["file"], "tests/test_cart.py");
    let step = &phase["steps"][0];
    assert_eq!(step["index"], 0);
    assert_eq!(step["name"], "self.cart = Cart()");
    assert_eq!(step["start_line"], 8);
    assert_eq!(step["end_line"], 8);
    assert_eq!(step["source"], "self.cart = Cart()");
    assert_eq!(step["flags"], serde_json::json!([]));
    assert_eq!(step["indent"], "        ");
    assert_eq!(step["marker_line"], serde_json::Value::Null);
    let start = step["start_byte"].as_u64().unwrap() as usize;
    let end = step["end_byte"].as_u64().unwrap() as usize;
    assert_eq!(&src[start..end], "self.cart = Cart()");
    assert_eq!(
        test["phases"][1]["steps"][0]["flags"],
        serde_json::json!(["return"])
    );
    let function = &json["files"][0]["functions"][0];
    for key in [
        "qualname",
        "def_line",
        "body_start_line",
        "is_async",
        "is_generator",
        "steps",
    ] {
        assert!(function.get(key).is_some(), "functions[] lacks {key}");
    }
    // Error shapes.
    let bad = instrument_source("t.py", b"def test_a():\n    x = = 1\n", &Options::default());
    let json = serde_json::to_value(&bad).unwrap();
    let test = &json["tests"][0];
    assert!(test.get("phases").is_none());
    for key in ["message", "line", "column"] {
        assert!(test["error"].get(key).is_some(), "error lacks {key}");
    }
    let binary =
        serde_json::to_value(instrument_source("t.py", b"\0", &Options::default())).unwrap();
    assert!(binary["error"]["message"].is_string());
}

#[test]
fn tests_swallowed_by_an_unclosed_bracket_are_still_listed_with_an_error() {
    let src = "import unittest\n\nclass T(unittest.TestCase):\n    def setUp(self):\n        self.x = [1,\n\n    def test_a(self):\n        pass\n\n    def test_b(self):\n        pass\n\ndef test_free():\n    f(1, 2\n\ndef test_after():\n    pass\n\ndef helper():\n    def test_nested():\n        pass\n";
    let f = report(src);
    assert_eq!(
        ids(&f),
        ["T::test_a", "T::test_b", "test_free", "test_after"]
    );
    let a = test(&f, "T::test_a");
    let error = a.error.as_ref().expect("swallowed test has an error");
    assert!(error.message.contains("could not be parsed"), "{error}");
    assert_eq!(error.line, Some(5));
    assert_eq!(a.kind, instrumenter::TestKind::Unittest);
    assert_eq!(a.line, 7);
    assert!(test(&f, "T::test_b").error.is_some());
    assert!(test(&f, "test_free").error.is_some());
    let after = test(&f, "test_after");
    assert_eq!(
        after.error.as_ref().map(|e| e.line),
        Some(Some(14)),
        "{after:?}"
    );
    check_invariants(src.as_bytes(), &f);
}
