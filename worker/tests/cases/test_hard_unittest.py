"""unittest edge cases: class/module fixtures, cleanups, subTest, skips, expected failures."""
import unittest


class SetUpClassBroken(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        raise RuntimeError("class setup exploded")

    def test_a(self):
        pass

    def test_b(self):
        pass


class TearDownClassBroken(unittest.TestCase):
    @classmethod
    def tearDownClass(cls):
        raise RuntimeError("class teardown exploded")

    def test_first(self):
        self.assertTrue(True)

    def test_second(self):
        self.assertTrue(True)


class FailingCleanup(unittest.TestCase):
    def setUp(self):
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        raise ValueError("cleanup failed")

    def test_body_ok(self):
        self.assertEqual(1, 1)


class SubTests(unittest.TestCase):
    def test_some_subtests_fail(self):
        for n in range(3):
            with self.subTest(n=n):
                self.assertNotEqual(n, 1)

    def test_all_subtests_pass(self):
        for n in range(3):
            with self.subTest(n=n):
                self.assertGreaterEqual(n, 0)


@unittest.skipIf(True, "class skipped")
class SkippedClass(unittest.TestCase):
    def test_never(self):
        raise AssertionError("never")


class Expectations(unittest.TestCase):
    @unittest.expectedFailure
    def test_expected_failure_fails(self):
        self.assertEqual(1, 2)

    @unittest.expectedFailure
    def test_unexpected_success(self):
        self.assertEqual(1, 1)

    @unittest.skipUnless(False, "never true")
    def test_skip_unless(self):
        pass


class GeneratorMethod(unittest.TestCase):
    def test_generator_method(self):
        yield 1


class ErrorVersusFailure(unittest.TestCase):
    def test_error(self):
        {}["missing"]

    def test_failure(self):
        self.assertIn("a", "bcd")


class SuperInSteps(unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.ready = True

    def tearDown(self):
        self.ready = False
        super().tearDown()

    def test_ready(self):
        self.assertTrue(self.ready)
