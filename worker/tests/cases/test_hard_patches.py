"""Decorated tests: class-level and stacked mock.patch, functools.wraps wrappers."""
import functools
import unittest
from unittest import mock

import pytest

CALLS = []


def target():
    return "real"


def other():
    return "other-real"


def logged(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        CALLS.append(func.__name__)
        return func(*args, **kwargs)

    return wrapper


def plain_decorator(func):
    def wrapper(*args, **kwargs):
        CALLS.append("plain")
        return func(*args, **kwargs)

    return wrapper


@mock.patch(f"{__name__}.other", return_value="B")
@mock.patch(f"{__name__}.target", return_value="A")
def test_stacked_patches(fake_target, fake_other):
    first = target()
    second = other()
    assert (first, second) == ("A", "B")
    fake_target.assert_called_once_with()


@mock.patch(f"{__name__}.target", return_value="A")
def test_stacked_patch_failure(fake_target):
    value = target()
    assert value == "not A"


@logged
def test_wraps_decorator_runs():
    before = list(CALLS)
    assert before[-1] == "test_wraps_decorator_runs"


@plain_decorator
def test_plain_decorator_runs():
    seen = CALLS[-1]
    assert seen == "plain"


@mock.patch(f"{__name__}.target", return_value="class-level")
class PatchedCase(unittest.TestCase):
    def setUp(self):
        self.value = target()

    def test_setup_sees_real(self, fake):
        # setUp is not patched by a class decorator (only test* methods are).
        self.assertEqual(self.value, "real")
        self.assertEqual(target(), "class-level")

    def test_patch_fails(self, fake):
        result = target()
        self.assertEqual(result, "nope")


@mock.patch(f"{__name__}.target", return_value="pytest-class")
class TestPatchedPytestClass:
    def test_uses_patch(self, fake):
        got = target()
        assert got == "pytest-class"

    @pytest.mark.parametrize("n", [1, 2])
    def test_param_and_patch(self, fake, n):
        got = target()
        assert got == "pytest-class" and n < 2


class TestSetupMethod:
    def setup_method(self, method):
        self.log = [method.__name__]
        self.log.append("setup")

    def teardown_method(self):
        self.log.append("teardown")
        assert self.log[-2] != "boom"

    def test_sees_setup(self):
        self.log.append("body")
        assert self.log == ["test_sees_setup", "setup", "body"]

    def test_teardown_fails(self):
        self.log.append("boom")
