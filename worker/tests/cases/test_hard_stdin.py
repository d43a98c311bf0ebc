"""Reading stdin from test code: what pytest gives, not what a Jupyter client would."""
import builtins
import io
import sys

import pytest


def test_input_reads_a_monkeypatched_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("typed\nmore\n"))
    first = input("prompt> ")
    second = input()
    assert (first, second) == ("typed", "more")


def test_input_under_capture_is_pytests_error():
    with pytest.raises(OSError, match="reading from stdin while output is captured"):
        input()


def test_input_replaced_by_monkeypatch(monkeypatch):
    monkeypatch.setattr(builtins, "input", lambda prompt="": "canned")
    assert input("? ") == "canned"
