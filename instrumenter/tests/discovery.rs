//! Which tests are found, their ids, kinds and phases.

mod common;
use common::*;
use instrumenter::{Role, Scope, TestKind};

#[test]
fn unittest_classes_direct_and_through_bases() {
    let f = report(
        r#"
import unittest
from unittest import TestCase, IsolatedAsyncioTestCase

class A(unittest.TestCase):
    def test_a(self): pass
    def helper(self): pass

class B(TestCase):
    def testB(self): pass

class C(IsolatedAsyncioTestCase):
    async def test_c(self): pass

class Mixin:
    def test_from_mixin(self): pass

class D(Mixin, A):
    def test_d(self): pass

class E(django.test.SimpleTestCase):
    def test_e(self): pass

class NotATest:
    def test_no(self): pass
"#,
    );
    assert_eq!(
        ids(&f),
        [
            "A::test_a",
            "B::testB",
            "C::test_c",
            // unittest sorts names; inherited ones are included.
            "D::test_a",
            "D::test_d",
            "D::test_from_mixin",
            "E::test_e",
        ]
    );
    assert!(f.tests.iter().all(|t| t.kind == TestKind::Unittest));
    assert_eq!(phase(test(&f, "D::test_a"), "test_a").function, "A.test_a");
    assert_eq!(
        phase(test(&f, "D::test_from_mixin"), "test_from_mixin").function,
        "Mixin.test_from_mixin"
    );
    assert!(phase(test(&f, "C::test_c"), "test_c").is_async);
}

#[test]
fn unittest_dunder_test_del_and_run_test() {
    let f = report(
        r#"
import unittest

class Base(unittest.TestCase):
    __test__ = False
    def test_shared(self): pass

class Concrete(Base):
    __test__ = True

class StillHidden(Base):
    pass

class Gone(unittest.TestCase):
    def test_gone(self): pass

class Kept(Gone):
    pass

del Gone

class Runner(unittest.TestCase):
    def runTest(self): pass
"#,
    );
    assert_eq!(
        ids(&f),
        [
            "Concrete::test_shared",
            "Kept::test_gone",
            "Runner::runTest"
        ]
    );
    assert_eq!(
        phase(test(&f, "Kept::test_gone"), "test_gone").function,
        "Gone.test_gone"
    );
    // The deleted class's method is still a phase function.
    assert!(f.function("Gone.test_gone").is_some());
}

#[test]
fn pytest_functions_and_classes() {
    let f = report(
        r#"
import pytest

def test_plain(): pass

async def test_async(): pass

@pytest.mark.parametrize("x", [1, 2])
def test_decorated(x): pass

@pytest.fixture
def test_looks_like_a_fixture(): pass

def helper(): pass

class TestGroup:
    def test_one(self): pass
    @staticmethod
    def test_static(): pass
    @property
    def test_prop(self): return 1
    def other(self): pass

    class TestNested:
        def test_inner(self): pass

class TestWithInit:
    def __init__(self): pass
    def test_never(self): pass

class Helper:
    def test_not_collected(self): pass

class TestBase:
    def test_base(self): pass

class TestChild(TestBase):
    def test_child(self): pass

if True:
    def test_in_if(): pass
else:
    def test_in_else(): pass
"#,
    );
    assert_eq!(
        ids(&f),
        [
            "test_plain",
            "test_async",
            "test_decorated",
            "TestGroup::test_one",
            "TestGroup::test_static",
            "TestGroup::TestNested::test_inner",
            "TestBase::test_base",
            // Inherited tests come before the subclass's own.
            "TestChild::test_base",
            "TestChild::test_child",
            "test_in_if",
            "test_in_else",
        ]
    );
    assert!(f.tests.iter().all(|t| t.kind == TestKind::Pytest));
    assert!(phase(test(&f, "test_async"), "test_async").is_async);
    let inner = test(&f, "TestGroup::TestNested::test_inner");
    assert_eq!(inner.class.as_deref(), Some("TestGroup.TestNested"));
    assert_eq!(
        phase(inner, "test_inner").function,
        "TestGroup.TestNested.test_inner"
    );
}

#[test]
fn redefinition_keeps_the_last_definition_at_the_first_position() {
    let f =
        report("def test_a():\n    first()\n\ndef test_b(): pass\n\ndef test_a():\n    second()\n");
    assert_eq!(ids(&f), ["test_a", "test_b"]);
    assert_eq!(sources(body(&f, "test_a")), ["second()"]);
    assert_eq!(
        f.functions
            .iter()
            .filter(|x| x.qualname == "test_a")
            .count(),
        1
    );
}

#[test]
fn unittest_phases_in_execution_order_with_inheritance() {
    let f = report(
        r#"
import unittest

def setUpModule(): pass
def tearDownModule(): pass

class Base(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls): pass
    def setUp(self): pass
    async def asyncSetUp(self): pass
    async def asyncTearDown(self): pass
    def tearDown(self): pass
    @classmethod
    def tearDownClass(cls): pass

class Child(Base):
    def setUp(self):
        super().setUp()
    def test_x(self): pass
"#,
    );
    let t = test(&f, "Child::test_x");
    let got: Vec<(&str, &str, Role, Scope)> = t
        .phases
        .iter()
        .map(|p| (p.name.as_str(), p.function.as_str(), p.role, p.scope))
        .collect();
    assert_eq!(
        got,
        [
            ("setUpModule", "setUpModule", Role::Setup, Scope::Module),
            ("setUpClass", "Base.setUpClass", Role::Setup, Scope::Class),
            ("setUp", "Child.setUp", Role::Setup, Scope::Function),
            (
                "asyncSetUp",
                "Base.asyncSetUp",
                Role::Setup,
                Scope::Function
            ),
            ("test_x", "Child.test_x", Role::Test, Scope::Function),
            (
                "asyncTearDown",
                "Base.asyncTearDown",
                Role::Teardown,
                Scope::Function
            ),
            ("tearDown", "Base.tearDown", Role::Teardown, Scope::Function),
            (
                "tearDownClass",
                "Base.tearDownClass",
                Role::Teardown,
                Scope::Class
            ),
            (
                "tearDownModule",
                "tearDownModule",
                Role::Teardown,
                Scope::Module
            ),
        ]
    );
    assert!(t.phases.iter().all(|p| p.file == "t.py"));
}

#[test]
fn pytest_xunit_phases() {
    let f = report(
        r#"
import pytest

def setup_module(module): pass
def setup_function(function): pass
def teardown_function(function): pass

def test_f(): pass

class TestC:
    def setup_class(cls): pass
    def setup_method(self, method): pass
    def setUp(self): pass
    def teardown_method(self, method): pass
    def test_m(self): pass

@pytest.fixture
def teardown_module(): pass
"#,
    );
    let names = |rel: &str| -> Vec<String> {
        test(&f, rel)
            .phases
            .iter()
            .map(|p| p.name.clone())
            .collect()
    };
    assert_eq!(
        names("test_f"),
        [
            "setup_module",
            "setup_function",
            "test_f",
            "teardown_function"
        ]
    );
    // setUp is unittest's: a pytest class does not run it.
    assert_eq!(
        names("TestC::test_m"),
        [
            "setup_module",
            "setup_class",
            "setup_method",
            "test_m",
            "teardown_method"
        ]
    );
}

#[test]
fn ids_use_the_path_as_given() {
    let f = instrumenter::instrument_source(
        "tests/sub/test_x.py",
        b"class TestA:\n    def test_b(self): pass\n",
        &instrumenter::Options::default(),
    );
    assert_eq!(f.tests[0].id, "tests/sub/test_x.py::TestA::test_b");
    assert_eq!(f.path, "tests/sub/test_x.py");
}

#[test]
fn functions_list_is_complete() {
    let f = report(
        r#"
import unittest

def setup_module(): pass
def helper(): pass

class Base(unittest.TestCase):
    def setUp(self):
        """Docstring."""
        self.x = 1
    def helper(self): pass

class Outer:
    class Inner(Base):
        @unittest.skip("no")
        def test_x(self):
            yield 1

    async def test_async(self):
        await thing()
"#,
    );
    let names: Vec<&str> = f.functions.iter().map(|x| x.qualname.as_str()).collect();
    assert_eq!(
        names,
        [
            "setup_module",
            "Base.setUp",
            "Outer.Inner.test_x",
            "Outer.test_async"
        ]
    );
    let setup = f.function("Base.setUp").unwrap();
    assert_eq!(
        (setup.def_line, setup.body_start_line, setup.end_line),
        (8, 9, 10)
    );
    assert_eq!(sources(&setup.steps), ["self.x = 1"]);
    let inner = f.function("Outer.Inner.test_x").unwrap();
    assert_eq!((inner.first_line, inner.def_line), (15, 16));
    assert!(inner.is_generator && !inner.is_async);
    let a = f.function("Outer.test_async").unwrap();
    assert!(a.is_async && !a.is_generator);
    // Outer is not a test class, but Inner (a TestCase) is not reachable
    // from a collected class either: only Outer.Inner is collected by pytest
    // if Outer were collected, so nothing is.
    assert!(ids(&f).is_empty());
}

#[test]
fn main_guard_blocks_are_not_collected() {
    let f = report(
        "import unittest\n\nif __name__ == '__main__':\n    class TestMain(unittest.TestCase):\n        def test_m(self): pass\nelse:\n    def test_imported(): pass\n",
    );
    assert_eq!(ids(&f), ["test_imported"]);
}

#[test]
fn methods_misplaced_by_error_recovery_keep_their_class() {
    // tree-sitter-python mistakes a dedent inside brackets for the end of
    // the class body; the methods after it must not become module functions.
    let src = "import unittest\n\nclass T(unittest.TestCase):\n    def test_a(self):\n        def f():\n            (bar.\n        baz)\n        pass\n\n    def test_b(self):\n        x = \"\"\"\\\nf(\n)\n\"\"\"\n        pass\n\n    def test_c(self):\n        pass\n";
    let f = report(src);
    let found = ids(&f);
    assert!(found.iter().all(|id| id.starts_with("T::")), "{found:?}");
    for name in ["T::test_b", "T::test_c"] {
        assert!(
            found.iter().any(|id| id == name),
            "{name} missing from {found:?}"
        );
    }
    check_invariants(src.as_bytes(), &f);
}

#[test]
fn odd_class_hierarchies_do_not_break_collection() {
    let f = report(
        "import unittest\n\nclass A(unittest.TestCase):\n    def test_a(self): pass\n\nclass B(A, A):\n    pass\n\nclass C(A, B):\n    pass\n\nclass D(B, A):\n    def test_d(self): pass\n\nclass E(Unknown.thing(), A):\n    pass\n\nclass TestF(*bases):\n    def test_f(self): pass\n",
    );
    let found = ids(&f);
    for id in [
        "A::test_a",
        "B::test_a",
        "C::test_a",
        "D::test_a",
        "D::test_d",
        "E::test_a",
        "TestF::test_f",
    ] {
        assert!(found.iter().any(|x| x == id), "{id} missing from {found:?}");
    }
}

#[test]
fn phases_follow_the_c3_method_resolution_order() {
    // D's MRO is D, B, C, A: C.setUp wins over A.setUp (depth-first would
    // pick A's through B).
    let f = report(
        "import unittest\n\nclass A(unittest.TestCase):\n    def setUp(self): pass\n    def tearDown(self): pass\n\nclass B(A):\n    pass\n\nclass C(A):\n    def setUp(self): pass\n\nclass D(B, C):\n    def test_x(self): pass\n",
    );
    let t = test(&f, "D::test_x");
    assert_eq!(phase(t, "setUp").function, "C.setUp");
    assert_eq!(phase(t, "tearDown").function, "A.tearDown");
}

#[test]
fn a_redefined_class_keeps_the_functions_its_subclasses_run() {
    let src = "class TestT:\n    def test_x(self):\n        first()\n\nclass TestU(TestT):\n    pass\n\nclass TestT:\n    def test_y(self):\n        second()\n";
    let f = report(src);
    // Module `__dict__` order: `TestT` keeps its first slot.
    assert_eq!(ids(&f), ["TestT::test_y", "TestU::test_x"]);
    assert_eq!(
        sources(&f.function("TestT.test_x").unwrap().steps),
        ["first()"]
    );
    assert_eq!(
        sources(&f.function("TestT.test_y").unwrap().steps),
        ["second()"]
    );
    check_invariants(src.as_bytes(), &f);
}
