"""A run's local xdist workers compile each test module once (shared_code.py): real processes, real flock."""

from __future__ import annotations

import multiprocessing
import os
import time
import types

from stepkernel_worker.stepping import shared_code

SOURCE = b"def test_one():\n    assert 1 + 1 == 2\n"


def _compiled(source: bytes, path: str) -> types.CodeType:
    return compile(source, path, "exec", dont_inherit=True)


def _second_worker(directory: str, path: str, compiled_flag: str, started: str, done: str) -> None:
    """Another worker importing the module while the first still compiles it."""
    store = shared_code.SharedCode(directory, "tag")

    def compile_it():
        open(compiled_flag, "w").close()
        return _compiled(SOURCE, path)

    open(started, "w").close()
    code = store.code(path, SOURCE, compile_it)
    namespace: dict = {}
    exec(code, namespace)
    with open(done, "w") as fh:
        fh.write(namespace["test_one"].__code__.co_filename)


def test_the_first_worker_compiles_and_the_others_load_the_same_code(tmp_path):
    path = str(tmp_path / "test_mod.py")
    store = shared_code.SharedCode(str(tmp_path / "steps"), "tag")
    os.makedirs(store.directory)
    made = []

    def compile_it():
        made.append(1)
        return _compiled(SOURCE, path)

    first = store.code(path, SOURCE, compile_it)
    again = shared_code.SharedCode(store.directory, "tag").code(path, SOURCE, compile_it)
    assert len(made) == 1
    assert again.co_filename == path and again.co_consts == first.co_consts
    namespace: dict = {}
    exec(again, namespace)
    namespace["test_one"]()
    # A changed file, another tag (Python, pytest, transform): compiled again.
    changed = SOURCE.replace(b"2\n", b"2, 'why'\n")
    assert store.code(path, changed, lambda: _compiled(changed, path)).co_consts != first.co_consts
    assert shared_code.SharedCode(store.directory, "other tag").code(path, SOURCE, compile_it) is not None
    assert len(made) == 2
    # What could not be compiled from the bytes read is not stored.
    other = str(tmp_path / "test_other.py")
    assert store.code(other, SOURCE, lambda: None) is None
    assert store.code(other, SOURCE, lambda: _compiled(SOURCE, other)).co_filename == other


def test_a_worker_importing_the_module_while_another_compiles_it_waits_and_loads_it(tmp_path):
    directory = str(tmp_path / "steps")
    os.makedirs(directory)
    path = str(tmp_path / "test_mod.py")
    flag, started, done = (str(tmp_path / n) for n in ("second-compiled", "second-started", "second-done"))
    store = shared_code.SharedCode(directory, "tag")
    context = multiprocessing.get_context("spawn")
    second: list = []

    def compile_it():
        # The second worker asks while this one holds the module's lock (and still compiles it).
        second.append(context.Process(target=_second_worker, args=(directory, path, flag, started, done)))
        second[0].start()
        while not os.path.exists(started) and second[0].is_alive():
            time.sleep(0.01)
        time.sleep(0.3)
        return _compiled(SOURCE, path)

    store.code(path, SOURCE, compile_it)
    second[0].join(60)
    assert second[0].exitcode == 0
    assert open(done).read() == path
    assert not os.path.exists(flag), "the second worker compiled the module too"


def test_a_broken_entry_is_compiled_again(tmp_path):
    directory = str(tmp_path / "steps")
    os.makedirs(directory)
    path = str(tmp_path / "test_mod.py")
    store = shared_code.SharedCode(directory, "tag")
    store.code(path, SOURCE, lambda: _compiled(SOURCE, path))
    (entry,) = [os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".code")]
    with open(entry, "r+b") as fh:
        fh.truncate(os.path.getsize(entry) - 7)
    made = []
    code = store.code(path, SOURCE, lambda: made.append(1) or _compiled(SOURCE, path))
    assert made == [1] and code.co_filename == path
    assert shared_code.shared(None, "tag") is None
    assert shared_code.shared(str(tmp_path / "new"), "tag").directory == str(tmp_path / "new")
    assert os.stat(tmp_path / "new").st_mode & 0o777 == 0o700
