//! How bodies are split into steps, and the flags of each step.

mod common;
use common::*;
use instrumenter::{instrument_source, Flag, Options};

#[test]
fn one_step_per_top_level_statement_and_compound_is_one() {
    let f = report(
        "def test_a():\n    x = 1\n    for i in range(3):\n        x += i\n\n    with open('f') as fh:\n        data = fh.read()\n    assert x\n",
    );
    let steps = body(&f, "test_a");
    assert_eq!(
        sources(steps),
        [
            "x = 1",
            "for i in range(3):\n        x += i",
            "with open('f') as fh:\n        data = fh.read()",
            "assert x"
        ]
    );
    assert_eq!(
        steps
            .iter()
            .map(|s| (s.start_line, s.end_line))
            .collect::<Vec<_>>(),
        [(2, 2), (3, 4), (6, 7), (8, 8)]
    );
    assert_eq!(
        names(steps),
        [
            "x = 1",
            "for i in range(3):",
            "with open('f') as fh:",
            "assert x"
        ]
    );
    assert!(steps
        .iter()
        .all(|s| s.indent == "    " && s.marker_line.is_none()));
}

#[test]
fn byte_ranges_are_exact_and_trailing_comments_stay_with_their_line() {
    let src = "def test_a():\n    a = 1  # one\n    # standalone\n    b = 2; c = 3  # three\n";
    let f = report(src);
    let steps = body(&f, "test_a");
    assert_eq!(sources(steps), ["a = 1  # one", "b = 2", "c = 3  # three"]);
    // The name is the statement, not its comment.
    assert_eq!(names(steps), ["a = 1", "b = 2", "c = 3"]);
    for s in steps {
        assert_eq!(&src[s.start_byte..s.end_byte], s.source);
    }
    check_invariants(src.as_bytes(), &f);
}

#[test]
fn docstring_is_not_a_step_but_fstrings_and_bytes_are_not_docstrings() {
    let f = report(
        "def test_a():\n    \"\"\"Doc.\"\"\"\n    x = 1\n\ndef test_b():\n    f\"not {doc}\"\n    x = 1\n\ndef test_c():\n    'a' 'b'\n    x = 1\n\ndef test_d():\n    b'bytes'\n",
    );
    assert_eq!(sources(body(&f, "test_a")), ["x = 1"]);
    assert_eq!(sources(body(&f, "test_b")), ["f\"not {doc}\"", "x = 1"]);
    assert_eq!(sources(body(&f, "test_c")), ["x = 1"]);
    assert_eq!(sources(body(&f, "test_d")), ["b'bytes'"]);
}

#[test]
fn markers_name_steps_up_to_the_next_marker() {
    let src = r#"def test_flow():
    setup = 1
    # step: fill the cart
    cart = []
    # a plain comment inside the step
    cart.append(1)  # trailing
    # step: pay
    total = sum(cart)

    # step: verify
    assert total == 1
"#;
    let f = report(src);
    let steps = body(&f, "test_flow");
    assert_eq!(
        names(steps),
        ["setup = 1", "fill the cart", "pay", "verify"]
    );
    assert_eq!(
        sources(steps),
        [
            "setup = 1",
            "cart = []\n    # a plain comment inside the step\n    cart.append(1)  # trailing",
            "total = sum(cart)",
            "assert total == 1",
        ]
    );
    assert_eq!(
        steps.iter().map(|s| s.marker_line).collect::<Vec<_>>(),
        [None, Some(3), Some(7), Some(10)]
    );
    assert_eq!(
        steps
            .iter()
            .map(|s| (s.start_line, s.end_line))
            .collect::<Vec<_>>(),
        [(2, 2), (4, 6), (8, 8), (11, 11)]
    );
    check_invariants(src.as_bytes(), &f);
}

#[test]
fn marker_on_the_first_line_of_the_body_is_found() {
    // tree-sitter puts this comment outside the body `block`.
    for src in [
        "def test_a():\n    # step: first\n    x = 1\n    y = 2\n",
        "class TestA:\n    @mark\n    def test_a(self):\n        # step: first\n        x = 1\n        y = 2\n",
        "async def test_a():\n    # step: first\n    \"\"\"Doc.\"\"\"\n    x = 1\n    y = 2\n",
    ] {
        let f = report(src);
        let t = &f.tests[0];
        let steps = &t.phases.last().unwrap().steps;
        assert_eq!(names(steps), ["first"], "{src}");
        assert_eq!(steps[0].source.lines().next(), Some("x = 1"), "{src}");
        assert!(steps[0].source.ends_with("y = 2"), "{src}");
    }
}

#[test]
fn endstep_closes_a_step_and_what_follows_is_unnamed() {
    let f = report(
        "def test_a():\n    # step: one\n    a = 1\n    # endstep\n    b = 2\n    c = 3\n    # step: two\n    d = 4\n    # endstep\n",
    );
    let steps = body(&f, "test_a");
    assert_eq!(names(steps), ["one", "b = 2", "two"]);
    assert_eq!(sources(steps), ["a = 1", "b = 2\n    c = 3", "d = 4"]);
}

#[test]
fn empty_marker_steps_are_dropped_and_empty_names_fall_back() {
    let f = report("def test_a():\n    # step: nothing here\n    # step:\n    a = 1\n");
    let steps = body(&f, "test_a");
    assert_eq!(names(steps), ["a = 1"]);
    assert_eq!(steps[0].marker_line, Some(3));
}

#[test]
fn markers_inside_compound_statements_or_after_code_do_not_split() {
    let f = report(
        "def test_a():\n    if x:\n        # step: inner\n        a = 1\n    b = 2  # step: trailing\n",
    );
    assert_eq!(
        sources(body(&f, "test_a")),
        [
            "if x:\n        # step: inner\n        a = 1",
            "b = 2  # step: trailing"
        ]
    );
}

#[test]
fn custom_marker_regex() {
    let opts = Options::with_step_marker(r"^#\s*STEP\s+(\w+)").unwrap();
    let src =
        "def test_a():\n    # STEP alpha\n    a = 1\n    # step: not a marker now\n    b = 2\n";
    let f = instrument_source("t.py", src.as_bytes(), &opts);
    let steps = body(&f, "test_a");
    assert_eq!(names(steps), ["alpha"]);
    assert_eq!(
        steps[0].source,
        "a = 1\n    # step: not a marker now\n    b = 2"
    );
}

#[test]
fn generator_body_is_one_step() {
    let src = "def test_gen():\n    \"\"\"Doc.\"\"\"\n    # step: ignored\n    x = 1\n    yield x\n    y = 2  # end\n";
    let f = report(src);
    let t = test(&f, "test_gen");
    let p = phase(t, "test_gen");
    assert!(p.is_generator);
    assert_eq!(sources(&p.steps), ["x = 1\n    yield x\n    y = 2  # end"]);
    assert_eq!(p.steps[0].flags, [Flag::Yield]);
    assert_eq!(p.steps[0].marker_line, None);
    // A nested generator does not make the test one.
    let f = report("def test_a():\n    def gen():\n        yield 1\n    x = list(gen())\n");
    assert_eq!(body(&f, "test_a").len(), 2);
    assert!(!f.function("test_a").unwrap().is_generator);
}

#[test]
fn flags_at_step_level_only() {
    let src = r#"
class TestF:
    async def test_flags(self):
        global G
        nonlocal_thing = 1
        if ready:
            return
        def inner():
            return 1
        lambda: (yield)
        await thing()
        async with ctx():
            pass
        async for i in it():
            pass
        [i async for i in it()]
        async def nested():
            await other()
        super().method()
        super(TestF, self).method()
        class Local(Base):
            def m(self):
                return super().m()
        def uses_super():
            return super().m()
        print(__class__)
        print(self.__class__)
"#;
    let f = report(src);
    let steps = body(&f, "TestF::test_flags");
    let flags: Vec<(&str, Vec<&str>)> = steps
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.flags.iter().map(|f| f.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        flags,
        [
            ("global G", vec!["global"]),
            ("nonlocal_thing = 1", vec![]),
            ("if ready:", vec!["return"]),
            ("def inner():", vec![]),
            ("lambda: (yield)", vec![]),
            ("await thing()", vec!["await"]),
            ("async with ctx():", vec!["await"]),
            ("async for i in it():", vec!["await"]),
            ("[i async for i in it()]", vec!["await"]),
            ("async def nested():", vec![]),
            ("super().method()", vec!["super"]),
            ("super(TestF, self).method()", vec![]),
            ("class Local(Base):", vec![]),
            ("def uses_super():", vec!["super"]),
            ("print(__class__)", vec!["super"]),
            ("print(self.__class__)", vec![]),
        ]
    );
    let f = report("def test_n():\n    def inner():\n        nonlocal x\n        x = 1\n    x = 0\n    def f():\n        nonlocal y\n    nonlocal z\n");
    let flags: Vec<Vec<Flag>> = body(&f, "test_n").iter().map(|s| s.flags.clone()).collect();
    assert_eq!(flags, [vec![], vec![], vec![], vec![Flag::Nonlocal]]);
}

#[test]
fn named_step_flags_are_the_union_of_its_statements() {
    let f = report(
        "async def test_a():\n    # step: all\n    await a()\n    if b:\n        return 1\n",
    );
    assert_eq!(body(&f, "test_a")[0].flags, [Flag::Return, Flag::Await]);
}

#[test]
fn tabs_and_crlf_are_kept_exactly() {
    let src =
        "class TestT:\r\n\tdef test_t(self):\r\n\t\tx = 1  # c\r\n\t\tif x:\r\n\t\t\ty = 2\r\n";
    let f = report(src);
    let steps = body(&f, "TestT::test_t");
    assert_eq!(sources(steps), ["x = 1  # c", "if x:\r\n\t\t\ty = 2"]);
    assert!(steps.iter().all(|s| s.indent == "\t\t"));
    check_invariants(src.as_bytes(), &f);
}

#[test]
fn long_first_lines_are_shortened() {
    let f =
        report("def test_a():\n    self_assert_equal(something_rather_long, another_value_too)\n");
    let name = &body(&f, "test_a")[0].name;
    assert_eq!(name.chars().count(), 40);
    assert!(name.ends_with('…'));
}

#[test]
fn one_line_body() {
    let f = report("def test_a(): x = 1; y = 2\n");
    let steps = body(&f, "test_a");
    assert_eq!(sources(steps), ["x = 1", "y = 2"]);
    assert_eq!(steps[0].indent, "");
}

#[test]
fn comment_lines_after_a_compound_statement_are_not_part_of_it() {
    let src = "def test_a():\n    class Hex(int):\n        def f(self):\n            return 1  # one\n        # a note inside the class body\n        # and another\n    x = Hex(1)\n    if x:\n        y = 2  # same line\n    # body-level comment\n    z = '#'\n";
    let f = report(src);
    let steps = body(&f, "test_a");
    assert_eq!(
        sources(steps),
        [
            "class Hex(int):\n        def f(self):\n            return 1  # one",
            "x = Hex(1)",
            "if x:\n        y = 2  # same line",
            "z = '#'",
        ]
    );
    assert_eq!(steps[0].end_line, 4);
    check_invariants(src.as_bytes(), &f);
}

#[test]
fn step_markers_name_plan_items_in_the_json_report() {
    let src = "def test_login():\n    # step: open the page [TP-101]\n    page = 1\n    # step: log in [TP-101, TP-102]\n    user = page\n    # step: check items[0]\n    assert user\n";
    let f = report(src);
    let steps = body(&f, "test_login");
    assert_eq!(names(steps), ["open the page", "log in", "check items[0]"]);
    let ids: Vec<Vec<String>> = steps.iter().map(|s| s.plan_ids.clone()).collect();
    assert_eq!(
        ids,
        [
            vec!["TP-101".to_string()],
            vec!["TP-101".into(), "TP-102".into()],
            vec![]
        ]
    );
    let json = serde_json::to_value(&f).unwrap();
    let step = &json["functions"][0]["steps"][1];
    assert_eq!(step["plan_ids"], serde_json::json!(["TP-101", "TP-102"]));
    // No ids: no key, so reports without plans stay as they were.
    assert!(json["functions"][0]["steps"][2].get("plan_ids").is_none());
    check_invariants(src.as_bytes(), &f);
}

#[test]
fn the_plan_id_pattern_is_configurable() {
    let src = "def test_a():\n    # step: pay [REQ#12, REQ#13]\n    x = 1\n    # step: refund [TP-1]\n    y = 2\n";
    let opts = Options::default().with_plan_id(r"REQ#\d+").unwrap();
    let f = instrument_source("t.py", src.as_bytes(), &opts);
    let steps = &f.functions[0].steps;
    assert_eq!(steps[0].name, "pay");
    assert_eq!(steps[0].plan_ids, ["REQ#12", "REQ#13"]);
    // TP-1 is not an id under this pattern: the brackets stay in the name.
    assert_eq!(steps[1].name, "refund [TP-1]");
    assert!(steps[1].plan_ids.is_empty());
}
