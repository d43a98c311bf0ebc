"""Walk segments in N worker processes (``run_walks(parallel=N)``), standard library only.

Each worker is forked once with the walks, and owns the states of the walks
given to it (walk i goes to worker i % N, for the whole run). The
coordinator sends a segment level with the serial updates for its walks and
waits for every worker's answers: that wait is the barrier before the next
serial action. Forking (not spawning) lets actions defined in test modules
run unchanged; a worker never pauses (there is no client to attach to it):
replay a failed walk from the trace to step through it.
"""

from __future__ import annotations

import multiprocessing
import pickle
import traceback
from typing import Any

from .actions import Walk, copy_state

__tracebackhide__ = True


def _worker(conn: Any, walks: list[Walk], state: Any, mine: list[int], with_states: bool) -> None:
    from .running import run_segment

    states: list[Any] = [None] * len(walks)
    try:
        for i in mine:
            states[i] = copy_state(state)
        while True:
            message = conn.recv()
            kind = message[0]
            if kind == "segment":
                _, level, offset, alive, updates = message
                conn.send(("ok", {i: run_segment(walks[i], states, i, level, offset, updates.get(i), None,
                                                 with_states) for i in alive}))
            elif kind == "states":
                out = {}
                for i in mine:
                    try:
                        pickle.dumps(states[i])
                        out[i] = states[i]
                    except Exception:  # noqa: BLE001 - a state pickle cannot carry is shown as its repr
                        out[i] = repr(states[i])
                conn.send(("ok", out))
            else:
                break
    except EOFError:
        pass
    except BaseException:  # noqa: BLE001 - reported to the coordinator
        try:
            conn.send(("crash", traceback.format_exc()))
        except Exception:  # noqa: BLE001
            pass
    finally:
        conn.close()


class Processes:
    """The worker processes of one ``run_walks``."""

    def __init__(self, walks: list[Walk], state: Any, count: int, with_states: bool = False) -> None:
        self.walks = walks
        context = multiprocessing.get_context("fork")
        self.assign = [[i for i in range(len(walks)) if i % count == k] for k in range(count)]
        self.workers = []
        for k in range(count):
            parent, child = context.Pipe()
            proc = context.Process(target=_worker, args=(child, walks, state, self.assign[k], with_states),
                                   name=f"stepkernel-walks-{k}", daemon=True)
            proc.start()
            child.close()
            self.workers.append((proc, parent))

    def _ask(self, k: int, message: tuple) -> tuple[bool, Any]:
        proc, conn = self.workers[k]
        try:
            conn.send(message)
            kind, payload = conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            proc.join(1)
            return False, f"walk worker process {k} died (exit code {proc.exitcode})"
        if kind != "ok":
            return False, f"walk worker process {k} failed:\n{payload}"
        return True, payload

    def run_segment(self, level: int, offset: int, alive: list[int], updates: dict[int, tuple]) -> dict[int, tuple]:
        alive_set = set(alive)
        sent = []
        for k, (proc, conn) in enumerate(self.workers):
            mine = [i for i in self.assign[k] if i in alive_set]
            if not mine:
                continue
            try:
                conn.send(("segment", level, offset, mine, {i: updates[i] for i in mine if i in updates}))
                sent.append((k, mine))
            except (OSError, BrokenPipeError):
                sent.append((k, mine))
        out: dict[int, tuple] = {}
        # Every worker's answer before the next serial action: the barrier.
        for k, mine in sent:
            proc, conn = self.workers[k]
            try:
                kind, payload = conn.recv()
                ok = kind == "ok"
                if not ok:
                    payload = f"walk worker process {k} failed:\n{payload}"
            except (EOFError, OSError):
                proc.join(1)
                ok, payload = False, f"walk worker process {k} died (exit code {proc.exitcode})"
            if ok:
                out.update(payload)
            else:
                out.update({i: ("failed", payload.splitlines()[0], payload) for i in mine})
        return out

    def final_states(self) -> list[Any]:
        states: list[Any] = [None] * len(self.walks)
        for k in range(len(self.workers)):
            ok, payload = self._ask(k, ("states",))
            if ok:
                for i, value in payload.items():
                    states[i] = value
        return states

    def close(self) -> None:
        for proc, conn in self.workers:
            try:
                conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
            conn.close()
        for proc, _ in self.workers:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
