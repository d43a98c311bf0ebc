"""Function semantics that steps must keep."""
import contextlib
import sys

import pytest

SEEN = []


def test_match_statement():
    command = ("go", 3)
    match command:
        case ("go", steps) if steps > 2:
            result = f"far {steps}"
        case _:
            result = "other"
    assert result == "far 3"


def test_nonlocal_from_nested_def_and_closure_cells():
    total = 0

    def add(n):
        nonlocal total
        total += n
        return total

    add(2)
    readers = [lambda: total for _ in range(2)]
    add(3)
    assert [r() for r in readers] == [5, 5]


@pytest.mark.parametrize("run", [1, 2])
def test_mutated_default_persists(run, box=[]):  # noqa: B006 - the point of the test
    box.append(run)
    assert box == [1]  # fails on the second run: the default is shared


def test_nested_class_super_and_dunder_class():
    class Base:
        def name(self):
            return "base"

    class Child(Base):
        def name(self):
            return "child+" + super().name()

        def cls(self):
            return __class__

    obj = Child()
    assert obj.name() == "child+base"
    assert obj.cls() is Child
    assert Child.__qualname__ == "test_nested_class_super_and_dunder_class.<locals>.Child"


def test_qualname_of_nested_function():
    def inner():
        return 1

    assert inner.__qualname__ == "test_qualname_of_nested_function.<locals>.inner"


def test_raises_then_early_return():
    with pytest.raises(KeyError):
        {}["x"]
    if sys.version_info > (3,):
        return
    raise AssertionError("unreachable")


def test_del_and_reassign():
    value = 1
    del value
    value = 2
    assert value == 2


def test_unbound_local_is_a_name_error():
    try:
        print(later)  # noqa: F821 - bound below
    except NameError:
        caught = True
    later = 1
    assert caught and later == 1


def test_exception_var_cleared_then_fails():
    try:
        1 / 0
    except ZeroDivisionError as exc:
        kept = exc
    assert isinstance(kept, ZeroDivisionError)
    assert "exc" not in dir()


def test_locals_in_comprehension_scope():
    base = 10
    pairs = {k: base + k for k in range(3)}
    gen = (base * k for k in range(3))
    base = 100
    assert pairs == {0: 10, 1: 11, 2: 12}
    assert list(gen) == [0, 100, 200]


def test_annotated_locals():
    count: int = 1
    later: str
    count += 1
    assert count == 2


def test_global_declared_in_nested_block():
    if True:
        global SEEN
    SEEN = SEEN + ["x"]
    assert SEEN[-1] == "x"


def test_generator_body_is_not_split():
    def gen():
        yield 1

    values = list(gen())
    assert values == [1]


def test_private_names_in_class_methods():
    class Holder:
        def __init__(self):
            self.__secret = 4

        def get(self):
            return self.__secret

    h = Holder()
    assert h.get() == 4 and h._Holder__secret == 4


class TestPrivate:
    __token = "t"

    def test_mangled_attribute(self):
        value = self.__token
        __local = value * 2
        assert __local == "tt"


def test_failure_in_with_block():
    with pytest.raises(ValueError):
        int("3")


def test_fails_with_local_repr():
    items = list(range(5))
    expected = [0, 1, 2, 3]
    assert items == expected


def test_returns_value():
    value = 3
    return value


FREED = []


class _Tracked:
    def __del__(self):
        FREED.append("freed")


def test_locals_freed_when_the_test_returns_part1():
    obj = _Tracked()
    holder = [obj]
    assert holder[0] is obj


def test_locals_freed_when_the_test_returns_part2():
    # part1's locals went with its frame, without a gc.collect(), as under pytest.
    assert FREED == ["freed"]


def test_blocks_nested_to_the_compilers_limit():
    """20 nested blocks compile (the limit before 3.13): the steps' loop and try must not pass it."""
    hits = []
    with contextlib.nullcontext(0) as v0:
        with contextlib.nullcontext(1) as v1:
            with contextlib.nullcontext(2) as v2:
                with contextlib.nullcontext(3) as v3:
                    with contextlib.nullcontext(4) as v4:
                        with contextlib.nullcontext(5) as v5:
                            with contextlib.nullcontext(6) as v6:
                                with contextlib.nullcontext(7) as v7:
                                    with contextlib.nullcontext(8) as v8:
                                        with contextlib.nullcontext(9) as v9:
                                            with contextlib.nullcontext(10) as v10:
                                                with contextlib.nullcontext(11) as v11:
                                                    with contextlib.nullcontext(12) as v12:
                                                        with contextlib.nullcontext(13) as v13:
                                                            with contextlib.nullcontext(14) as v14:
                                                                with contextlib.nullcontext(15) as v15:
                                                                    with contextlib.nullcontext(16) as v16:
                                                                        with contextlib.nullcontext(17) as v17:
                                                                            with contextlib.nullcontext(18) as v18:
                                                                                with contextlib.nullcontext(19) as v19:
                                                                                    hits.append(v0 + v19)
    assert hits == [19]
