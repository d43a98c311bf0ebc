"""stepkernel.walks as a library: the seed document's examples, generation, ids, serial barriers
(in this process and in worker processes), traces and replay, and every bad input named."""

from __future__ import annotations

import itertools
import json
import os
import sys
import warnings

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "python"))

from stepkernel.walks import (  # noqa: E402
    Action, CancelWalk, Model, OptionSet, SerialAction, Trace, Walk, WalkError, WalkNotFound, replay, run_tests,
    run_walks,
)
from stepkernel.walks.generation import all_pairs, covered_pairs  # noqa: E402
from stepkernel.walks.pairwise import ipog, pairwise_rows  # noqa: E402


# ------------------------------------------------------- the seed's examples


class Something:
    def __init__(self):
        self.value = None

    def method(self, param):
        self.value = param


class ScaryError(Exception):
    pass


class MyAction(Action):
    OPTIONS = [True, False]

    def run(self, param, state=None):
        something = state["something"]
        something.method(param)
        if something.value is False:
            raise ScaryError(":(")


class MyStateClass(dict):
    @property
    def A(self):
        return self.get("A", None)

    @A.setter
    def A(self, value):
        self["A"] = value

    @property
    def B(self):
        return self.get("B", None)

    @B.setter
    def B(self, value):
        self["B"] = value


class MyActionA(Action):
    OPTIONS = [1, 2, 3]

    def run(self, param, state):
        state.A = param


class MyActionB(MyActionA):
    def run(self, param, state):
        state.B = param


class FreshSomething(dict):
    """Each walk's copy gets its own Something (the seed's state is a dict holding one)."""

    def __copy__(self):
        return FreshSomething(something=Something())


def test_the_seed_example_a_failing_option_fails_its_walk_only():
    results = run_tests([MyAction], state=FreshSomething(something=Something()))
    assert (results.walk_count, results.error_count) == (2, 1)
    assert results.failed == ["MyAction:False"] and results.errors == {"MyAction:False": "ScaryError: :("}
    assert results.elapsed > 0


def test_the_seed_example_gather_states_gives_the_seed_states():
    results = run_tests([MyActionA, MyActionB], state=MyStateClass(), gather_states=True)
    # The seed prints these nine states (grouped by its workers; here in walk order).
    seed = [[{"A": 1, "B": 1}, {"A": 2, "B": 1}, {"A": 3, "B": 1}], [{"A": 1, "B": 2}, {"A": 2, "B": 2},
            {"A": 3, "B": 2}], [{"A": 3, "B": 3}, {"A": 1, "B": 3}, {"A": 2, "B": 3}]]
    expected = sorted((s["A"], s["B"]) for group in seed for s in group)
    assert sorted((s.A, s.B) for s in results.states) == expected
    assert [(s.A, s.B) for s in results.states] == list(itertools.product([1, 2, 3], [1, 2, 3]))
    assert all(type(s) is MyStateClass for s in results.states), "copy.copy keeps the state's class"
    parallel = run_tests([MyActionA, MyActionB], state=MyStateClass(), gather_states=True, parallel=2)
    assert [dict(s) for s in parallel.states] == [dict(s) for s in results.states]


def test_get_option_set_with_an_option_set_over_an_iterator():
    class Counted(Action):
        @classmethod
        def get_option_set(cls):
            return OptionSet(iter(range(4)), cls)

        def run(self, param, state):
            state.append(param)

    results = run_walks([Counted], state=[], gather_states=True)
    assert results.states == [[0], [1], [2], [3]]


# ------------------------------------------------------------------ the ids


class Color(Action):
    OPTIONS = ["red", "green"]

    def run(self, param, state):
        pass


class Size(Action):
    OPTIONS = [1, 2.5, None, True]

    def run(self, param, state):
        pass


def test_ids_are_built_from_the_options_and_stable_when_one_is_added():
    ids = [w.id for w in Model([Color, Size]).walks()]
    assert ids[:4] == ["Color:red-Size:1", "Color:red-Size:2.5", "Color:red-Size:None", "Color:red-Size:True"]

    class Color2(Color):
        OPTIONS = ["blue", "red", "green"]

    Color2.__name__ = "Color"
    more = [w.id for w in Model([Color2, Size]).walks()]
    assert set(ids) < set(more) and len(more) == 12


def test_options_without_a_usable_id_fall_back_to_their_index():
    marker = object()

    class Odd(Action):
        OPTIONS = [marker, "two words", "x" * 50, "same", "same", "ok"]

        def run(self, param, state):
            pass

    assert [w.id for w in Model([Odd]).walks()] == ["Odd[0]", "Odd[1]", "Odd[2]", "Odd[3]", "Odd[4]", "Odd:ok"]

    class Named(Action):
        OPTIONS = [marker]

        @classmethod
        def option_id(cls, param):
            return "marker"

        def run(self, param, state):
            pass

    assert [w.id for w in Model([Named]).walks()] == ["Named:marker"]


# --------------------------------------------------------------- generation


def _five():
    sizes = [2, 4, 2, 4, 5]
    classes = []
    for k, n in enumerate(sizes):
        classes.append(type(f"F{k}", (Action,), {"OPTIONS": list(range(n)), "run": lambda self, p, s: None}))
    return classes


def test_product_and_pairwise_counts_of_a_five_action_model():
    model = Model(_five())
    assert model.product_count() == 320 and len(model.walks()) == 320
    rows = [tuple(int(part.split(":")[1]) for part in w.id.split("-")) for w in model.walks("pairwise")]
    assert covered_pairs(rows) == all_pairs(model.sizes), "every pair of option values is in some walk"
    assert len(rows) <= 25, len(rows)
    assert len(set(rows)) == len(rows)


@pytest.mark.parametrize("sizes", [[2, 4, 2, 4, 5], [5, 7, 2, 3, 8, 2], [3] * 4, [3] * 13, [1, 3, 4], [2, 1, 3, 1, 2],
                                   [10, 10, 10], [2] * 10])
def test_the_own_pairwise_generator_covers_every_pair(sizes):
    rows = ipog(sizes) if len([n for n in sizes if n > 1]) > 2 else pairwise_rows(sizes, use_library=False)
    assert covered_pairs(rows) == all_pairs(sizes)
    assert all(len(r) == len(sizes) and all(0 <= v < n for v, n in zip(r, sizes)) for r in rows)
    assert len(rows) <= max(1, len(list(itertools.product(*(range(n) for n in sizes)))))


def test_allpairspy_when_installed_covers_every_pair():
    pytest.importorskip("allpairspy")
    rows = pairwise_rows([2, 4, 2, 4, 5])
    assert covered_pairs(rows) == all_pairs([2, 4, 2, 4, 5])


def test_random_walks_are_a_reproducible_sample():
    model = Model(_five())
    first = [w.id for w in model.walks("random", count=30, seed=7)]
    assert first == [w.id for w in model.walks("random", count=30, seed=7)]
    assert first != [w.id for w in model.walks("random", count=30, seed=8)]
    assert len(set(first)) == 30 and set(first) <= {w.id for w in model.walks()}
    assert len(model.walks("random", count=1000, seed=1)) == 320, "more than the product gives the product"
    with pytest.raises(WalkError, match="needs count=N"):
        model.walks("random")


def test_should_cancel_leaves_out_the_combinations_it_rejects():
    class Picky(Action):
        OPTIONS = [1, 2, 3]

        def run(self, param, state):
            pass

        def should_cancel(self, walk, index):
            return index == 1 and self.param == walk.actions[0].param

    ids = [w.id for w in Model([MyActionA, Picky]).walks()]
    assert len(ids) == 6 and "MyActionA:2-Picky:2" not in ids


def test_a_walk_of_one_action_adds_up():
    walk = Walk([MyActionA(1)]) + [MyActionB(2)]
    assert [a.param for a in walk] == [1, 2] and walk.id == "MyActionA:1-MyActionB:2"
    assert len(Walk([]) + Walk([MyActionA(3)])) == 1


# ----------------------------------------------------------------- bad input


def test_bad_models_and_states_are_named():
    class NoRun(Action):
        OPTIONS = [1]

    class Empty(Action):
        OPTIONS = []

        def run(self, param, state):
            pass

    class NoOptions(Action):
        def run(self, param, state):
            pass

    class Uncopyable:
        def __copy__(self):
            raise TypeError("holds a socket")

    cases = [
        (lambda: run_walks([NoRun]), "NoRun has no run"),
        (lambda: run_walks([Empty]), "Empty has no options"),
        (lambda: run_walks([NoOptions]), "NoOptions has no OPTIONS"),
        (lambda: run_walks([]), "action_order is empty"),
        (lambda: run_walks([int]), "is not an Action subclass"),
        (lambda: run_walks(MyActionA), "must be a list"),
        (lambda: run_walks([MyActionA], strategy="fancy"), "unknown strategy 'fancy'"),
        (lambda: run_walks([MyActionA], state=Uncopyable()), "cannot be copied for each walk.*holds a socket"),
        (lambda: run_walks([MyActionA], on_error="explode"), "on_error must be"),
        (lambda: run_walks([MyActionA], parallel=0), "parallel must be"),
    ]
    for call, message in cases:
        with pytest.raises(WalkError, match=message):
            call()


def test_a_serial_action_returning_no_mapping_fails_its_walks_saying_so():
    class Odd(SerialAction):
        OPTIONS = [1]

        def run(self, param, state):
            return 42

    results = run_walks([MyActionA, Odd], state=MyStateClass())
    assert results.error_count == 3
    assert set(results.errors.values()) == {"WalkError: Odd(1) returned a int; a serial action returns a mapping "
                                            "(merged into each walk's state) or None"}


def test_walks_for_pytest_refuses_bad_models_and_tests_without_a_walk_argument():
    from stepkernel.walks import walks

    with pytest.raises(WalkError, match="has no options"):
        walks([type("Empty", (Action,), {"OPTIONS": [], "run": lambda self, p, s: None})])
    with pytest.raises(WalkError, match="needs a test taking a `walk` argument"):
        @walks([MyActionA])
        def test_nothing(tmp_path):
            pass
    with pytest.raises(WalkError, match="on_error must be"):
        walks([MyActionA], on_error="later")


def test_walks_for_pytest_take_the_strategies():
    from stepkernel.walks import walks

    def count(test):
        [mark] = [m for m in test.pytestmark if m.name == "parametrize"]
        return len(mark.args[1])

    assert count(walks(_five())) == 320
    assert count(walks(_five(), strategy="pairwise")) == 20
    assert count(walks(_five(), strategy="random", count=12, seed=3)) == 12


def test_cancelled_walks_are_counted_not_failed():
    class MaybeCancel(Action):
        OPTIONS = [1, 2]

        def run(self, param, state):
            if param == 2:
                raise CancelWalk("not applicable")

    results = run_walks([MaybeCancel, MyActionB], state=MyStateClass())
    assert results.cancelled == ["MaybeCancel:2-MyActionB:1", "MaybeCancel:2-MyActionB:2", "MaybeCancel:2-MyActionB:3"]
    assert results.error_count == 0 and results.walk_count == 6


# ----------------------------------------------------------- serial barriers


def _logger(path):
    def log(*parts):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (json.dumps([os.getpid(), *parts]) + "\n").encode())
        os.close(fd)
    return log


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_serial_action_runs_once_per_option_after_every_walk_reached_it(tmp_path, parallel):
    log = _logger(tmp_path / "log")

    class Before(Action):
        OPTIONS = [1, 2, 3]

        def run(self, param, state):
            log("before", param)
            state["before"] = param

    class Config(SerialAction):
        OPTIONS = ["fast", "safe"]

        def run(self, param, state):
            log("serial", param, sorted(state))  # a copy of the initial state
            return {"mode": param}

    class After(Action):
        OPTIONS = [True, False]

        def run(self, param, state):
            log("after", state["before"], state["mode"], param)
            if state["before"] == 3 and param is False:
                raise ValueError("planted")

    results = run_walks([Before, Config, After], state={"seed": 1}, parallel=parallel, gather_states=True)
    lines = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    kinds = [line[1] for line in lines]
    serial = [line for line in lines if line[1] == "serial"]
    assert sorted(line[2] for line in serial) == ["fast", "safe"], "exactly once per option"
    assert all(line[3] == ["seed"] for line in serial)
    first_serial = kinds.index("serial")
    # Every walk (12) ran its first segment before the first serial action.
    assert kinds[:first_serial].count("before") == 12 and "before" not in kinds[first_serial:]
    assert kinds[first_serial + 2:].count("after") == 12, "the walks go on after both serial options ran"
    coordinator = os.getpid()
    assert all(line[0] == coordinator for line in serial), "serial actions run in this process"
    workers = {line[0] for line in lines if line[1] != "serial"}
    assert (workers == {coordinator}) if parallel == 1 else (len(workers) == 2 and coordinator not in workers)
    assert results.walk_count == 12 and sorted(results.failed) == ["Before:3-Config:fast-After:False",
                                                                   "Before:3-Config:safe-After:False"]
    assert [(s["before"], s["mode"]) for s in results.states][:2] == [(1, "fast"), (1, "fast")]


def test_a_worker_process_that_dies_fails_its_walks_and_the_run_ends():
    class Crash(Action):
        OPTIONS = [1, 2, 3, 4]

        def run(self, param, state):
            if param == 3:
                os._exit(7)  # a segfault, an OOM kill: the process is gone

    results = run_walks([Crash], state=[], parallel=2)
    # Walks 0 and 2 (options 1, 3) were worker 0's: both lost with it; worker 1's walks passed.
    assert sorted(results.failed) == ["Crash:1", "Crash:3"]
    assert set(results.errors.values()) == {"walk worker process 0 died (exit code 7)"}


def test_a_failing_serial_action_fails_the_walks_of_its_branch_only():
    class Config(SerialAction):
        OPTIONS = ["ok", "broken"]

        def run(self, param, state):
            if param == "broken":
                raise RuntimeError("config rejected")

    results = run_walks([MyActionA, Config, MyActionB], state=MyStateClass())
    assert results.error_count == 9 and all("broken" in w for w in results.failed)
    assert set(results.errors.values()) == {"RuntimeError: config rejected"}


# ------------------------------------------------------------ trace, replay


class Recorder(Action):
    OPTIONS = list(range(5))
    calls: list = []

    def run(self, param, state):
        Recorder.calls.append(param)
        state.append(param)


class Second(Action):
    OPTIONS = ["x", "y"]

    def run(self, param, state):
        state.append(param)
        if state == [3, "y"]:
            raise AssertionError("walk 7 fails")


def test_replay_by_id_runs_that_walk_only(tmp_path):
    """py-combtest's load_from_trace shadowed the id: replaying walk k replayed every walk."""
    results = run_walks([Recorder, Second], state=[], log_dir=str(tmp_path))
    assert results.failed == ["Recorder:3-Second:y"] and len(results.logs) == 1
    trace = results.trace
    lines = [json.loads(line) for line in open(trace)]
    assert lines[0]["trace"] == "stepkernel.walks" and len(lines) == 11
    assert lines[8]["outcome"] == "failed" and lines[8]["error"] == "AssertionError: walk 7 fails"
    assert "Traceback" in lines[8]["traceback"]
    Recorder.calls.clear()
    assert replay(trace, "Recorder:2-Second:x") == [2, "x"]
    assert Recorder.calls == [2], "one walk, not every walk of the trace"
    Recorder.calls.clear()
    assert replay(trace, 4) == [2, "x"] and Recorder.calls == [2], "by index"
    with pytest.raises(AssertionError, match="walk 7 fails"):
        replay(trace, "Recorder:3-Second:y")
    assert replay(trace, "Recorder:0-Second:y", state=[]) == [0, "y"]


def test_an_unknown_walk_id_names_the_closest(tmp_path):
    trace = run_walks([Recorder, Second], state=[], log_dir=str(tmp_path)).trace
    with pytest.raises(WalkNotFound) as info:
        replay(trace, "Recorder:9-Second:y")
    assert "no walk 'Recorder:9-Second:y'" in str(info.value) and "Recorder:" in str(info.value)
    assert info.value.closest and all(c in Trace(trace).walk_ids for c in info.value.closest)
    with pytest.raises(WalkNotFound, match=r"no walk 99 .*the closest: 9 \(Recorder:4-Second:y\)"):
        replay(trace, 99)


def test_a_line_cut_by_a_crash_is_skipped_with_a_warning(tmp_path):
    trace = run_walks([Recorder, Second], state=[], log_dir=str(tmp_path)).trace
    text = open(trace).read().splitlines(True)
    # A crash while writing the fourth walk's line: half a line, then the run went on.
    with open(trace, "w") as fh:
        fh.writelines(text[:4] + [text[4][: len(text[4]) // 2]] + text[5:])
    with pytest.warns(UserWarning, match=r":5: skipped a line that is not a whole JSON record"):
        loaded = Trace(trace)
    assert len(loaded.walk_ids) == 9 and "Recorder:1-Second:y" not in loaded.walk_ids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert replay(trace, "Recorder:4-Second:y") == [4, "y"]
        assert replay(trace, "Recorder:2-Second:x") == [2, "x"], "the line after the cut one"
    # Cut as the last line (nothing written after the crash).
    with open(trace, "w") as fh:
        fh.writelines(text[:-1] + [text[-1][:20]])
    with pytest.warns(UserWarning, match=r":11: skipped"):
        assert len(Trace(trace).walk_ids) == 9


def test_bad_traces_are_named(tmp_path):
    with pytest.raises(WalkError, match="cannot read the trace"):
        Trace(str(tmp_path / "missing.jsonl"))
    other = tmp_path / "other.jsonl"
    other.write_text('{"hello": 1}\n')
    with pytest.raises(WalkError, match="holds no walks"):
        Trace(str(other))

    trace = run_walks([Touch], state=Opaque(), log_dir=str(tmp_path / "a")).trace
    with pytest.raises(WalkError, match="does not hold the initial state.*pass state="):
        replay(trace, 0)

    class Local(Action):
        OPTIONS = [1]

        def run(self, param, state):
            pass

    trace = run_walks([Local], state=[], log_dir=str(tmp_path / "b")).trace
    with pytest.raises(WalkError, match="Local.*is defined inside a function"):
        replay(trace, 0)


def test_a_walk_of_a_scripts_main_is_named_as_not_replayable(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"walk": "Fill:1", "index": 0, "segment": 0, "serial": None,
                                 "actions": [{"action": "__main__:Fill", "param": 1}], "outcome": "failed"}) + "\n")
    with pytest.raises(WalkError, match="Fill was defined in a script run as __main__"):
        replay(str(trace), "Fill:1", state=[])


class Opaque:
    pass


class Touch(Action):
    OPTIONS = [1]

    def run(self, param, state):
        pass


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def to_json(self):
        return (self.x, self.y)

    @classmethod
    def from_json(cls, obj):
        return cls(obj[0], obj[1])


class Move(Action):
    OPTIONS = [Point(0, 1), Point(2, 3)]

    @classmethod
    def option_id(cls, param):
        return f"{param.x}.{param.y}"

    def run(self, param, state):
        state["at"] = (param.x, param.y)


@pytest.mark.parametrize("parallel", [1, 2])
def test_gather_states_writes_each_segments_state_into_the_trace(tmp_path, parallel):
    class Config(SerialAction):
        OPTIONS = ["on"]

        def run(self, param, state):
            return {"config": param}

    results = run_walks([MyActionA, Config, MyActionB], state=MyStateClass(), log_dir=str(tmp_path),
                        gather_states=True, parallel=parallel)
    lines = [json.loads(line) for line in open(results.trace)][1:]
    first = [r for r in lines if r["walk"] == "MyActionA:2-Config:on-MyActionB:3"]
    assert [r["segment"] for r in first] == [0, 1]
    assert first[0]["state"] == {"value": {"A": 2}} and first[1]["state"] == {"value": {"A": 2, "config": "on", "B": 3}}
    assert first[1]["serial"] == {"action": "test_walks_library:" + Config.__qualname__, "param": "on"}


def test_to_json_from_json_round_trips_actions_and_states(tmp_path):
    trace = run_walks([Move], state={"origin": Point(5, 5)}, log_dir=str(tmp_path)).trace
    state = replay(trace, "Move:2.3")
    assert state["at"] == (2, 3) and isinstance(state["origin"], Point) and state["origin"].x == 5
