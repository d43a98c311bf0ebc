#!/usr/bin/env python3
"""stepkernel's Jupyter kernel against ipykernel, same client, same run.

Usage: bench_kernel.py (--stepkernel BIN | --kernelspec NAME) [--python PY] [--launches N] [--executes N]
                       [--workdir DIR]

--stepkernel BIN starts `BIN kernel -f CONN --python PY`; --kernelspec NAME starts
stepkernel as Jupyter does, from the installed kernelspec (the wheel's runs
`python -m stepkernel kernel -f CONN`, with a bare `python` replaced by PY as
jupyter_client replaces it by the interpreter Jupyter runs on).

Measures, alternating between the two kernels:
  start   time from process launch to the first kernel_info_reply (median of N launches)
  rtt     execute_request 'pass' -> execute_reply, and -> status idle (median, p99)
  rss     resident memory of the kernel and all its child processes, after start and
          after the executes (psutil)

Both kernels are driven by the same jupyter_client Session over raw pyzmq
sockets (no channel threads, no execute_interactive), so the client's own
overhead is small and identical for both. Prints a readable report on stderr
and one JSON line per figure on stdout, prefixed with `BENCH `.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import psutil
import zmq
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

OURS, PEER = "stepkernel", "ipykernel"


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def percentile(values, q):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Kernel:
    """One launched kernel process and raw sockets to it."""

    def __init__(self, name, argv_for, workdir, context):
        self.name = name
        fd, self.conn = tempfile.mkstemp(prefix=f"{name}-", suffix=".json", dir=workdir)
        os.close(fd)
        write_connection_file(self.conn, ip="127.0.0.1", key=secrets.token_hex(16).encode())
        self.client = BlockingKernelClient(context=context)
        self.client.load_connection_file(self.conn)
        self.session = self.client.session
        self.log_path = self.conn[:-5] + ".log"
        self.argv = argv_for(self.conn)
        self.shell = self.iopub = self.control = None
        self.proc = None

    def launch(self, workdir):
        """Starts the process and connects; returns the launch time (perf_counter)."""
        # Sockets first: the request below waits in zmq's queue until the kernel binds.
        self.shell = self.client.connect_shell()
        self.iopub = self.client.connect_iopub()
        self.control = self.client.connect_control()
        with open(self.log_path, "ab") as out:
            started = time.perf_counter()
            self.proc = subprocess.Popen(
                self.argv, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        return started

    def request(self, socket, msg_type, content=None):
        msg = self.session.msg(msg_type, content or {})
        self.session.send(socket, msg)
        return msg["header"]["msg_id"]

    def recv(self, socket, timeout):
        if not socket.poll(int(timeout * 1000)):
            return None
        _, msg = self.session.recv(socket, mode=0)
        return msg

    def wait_reply(self, msg_id, timeout):
        deadline = time.perf_counter() + timeout
        while (left := deadline - time.perf_counter()) > 0:
            msg = self.recv(self.shell, left)
            if msg and msg["parent_header"].get("msg_id") == msg_id:
                return time.perf_counter(), msg
        self.fail(f"no reply to {msg_id} within {timeout}s")

    def wait_ready(self, timeout=60):
        """kernel_info until iopub carries something (so the SUB socket is subscribed)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            msg_id = self.request(self.shell, "kernel_info_request")
            self.wait_reply(msg_id, timeout)
            if self.iopub.poll(200):
                self.drain_iopub()
                return
        self.fail("iopub never answered")

    def drain_iopub(self):
        while self.iopub.poll(50):
            self.session.recv(self.iopub, mode=0)

    def execute(self, code, timeout=30):
        """Sends one execute; returns (seconds to execute_reply, seconds to status idle)."""
        poller = zmq.Poller()
        poller.register(self.shell, zmq.POLLIN)
        poller.register(self.iopub, zmq.POLLIN)
        msg = self.session.msg("execute_request", {
            "code": code, "silent": False, "store_history": True,
            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True,
        })
        msg_id = msg["header"]["msg_id"]
        start = time.perf_counter()
        self.session.send(self.shell, msg)
        reply_at = idle_at = None
        deadline = start + timeout
        while reply_at is None or idle_at is None:
            left = deadline - time.perf_counter()
            if left <= 0:
                self.fail(f"execute {msg_id} timed out")
            for socket, _ in poller.poll(int(left * 1000) + 1):
                _, got = self.session.recv(socket, mode=0)
                now = time.perf_counter()
                if got["parent_header"].get("msg_id") != msg_id:
                    continue
                if socket is self.shell and got["msg_type"] == "execute_reply":
                    if got["content"].get("status") != "ok":
                        self.fail(f"execute failed: {got['content']}")
                    reply_at = now
                elif (socket is self.iopub and got["msg_type"] == "status"
                      and got["content"].get("execution_state") == "idle"):
                    idle_at = now
        return reply_at - start, idle_at - start

    def rss(self):
        """Resident bytes of the kernel process and all its descendants, and each one's share."""
        proc = psutil.Process(self.proc.pid)
        parts = []
        for p in [proc] + proc.children(recursive=True):
            try:
                parts.append((p.name(), p.memory_info().rss))
            except psutil.NoSuchProcess:
                pass
        return sum(rss for _, rss in parts), parts

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                self.request(self.control, "shutdown_request", {"restart": False})
                self.proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, zmq.ZMQError):
                pass
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        for sock in (self.shell, self.iopub, self.control):
            if sock is not None:
                sock.close(linger=0)
        self.shell = self.iopub = self.control = None

    def fail(self, why):
        tail = ""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                tail = f.read()[-2000:]
        except OSError:
            pass
        self.stop()
        raise SystemExit(f"{self.name}: {why}\n--- kernel log ---\n{tail}")


def emit(benchmark, ours, peer, goal, unit):
    ratio = ours / peer if peer else float("nan")
    print("BENCH " + json.dumps({
        "benchmark": benchmark, "stepkernel": ours, "peer": peer, "peer_name": PEER,
        "ratio": ratio, "goal": goal, "unit": unit,
    }), flush=True)
    return ratio


def kernelspec_argv(name, python):
    """A function of the connection file giving the argv Jupyter would run for kernelspec `name`."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(name)
    log(f"kernelspec {name} in {spec.resource_dir}: {spec.argv}")
    # jupyter_client's KernelManager.format_kernel_cmd: these names mean "the Python Jupyter runs on".
    pythons = ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}")

    def argv_for(conn):
        argv = [a.replace("{connection_file}", conn).replace("{resource_dir}", spec.resource_dir)
                for a in spec.argv]
        if argv and argv[0] in pythons:
            argv[0] = python
        return argv

    return argv_for


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ours = ap.add_mutually_exclusive_group(required=True)
    ours.add_argument("--stepkernel", help="the stepkernel binary")
    ours.add_argument("--kernelspec", metavar="NAME", help="start stepkernel through this installed kernelspec")
    ap.add_argument("--python", default=sys.executable, help="interpreter for both kernels")
    ap.add_argument("--launches", type=int, default=10)
    ap.add_argument("--executes", type=int, default=1000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    # The kernels run in a scratch directory: make the paths independent of it.
    if args.stepkernel:
        args.stepkernel = os.path.abspath(args.stepkernel)
    if os.sep in args.python:
        args.python = os.path.abspath(args.python)
    if args.workdir:
        args.workdir = os.path.abspath(args.workdir)
        os.makedirs(args.workdir, exist_ok=True)

    workdir = tempfile.mkdtemp(prefix="bench-kernel-", dir=args.workdir)
    # IPython's profile and history go to a fresh directory, on tmpfs when there is
    # one: ipykernel commits every input to a SQLite history, and on a disk busy with
    # other writers (parallel builds) that fsync alone made its round trip 5x slower.
    # The fast placement is the conservative one for our ratio. The untimed warm-up
    # launch below creates the profile.
    shm = "/dev/shm"
    ipython_dir = tempfile.mkdtemp(
        prefix="bench-ipython-", dir=shm if os.access(shm, os.W_OK) else workdir)
    os.environ["IPYTHONDIR"] = ipython_dir
    os.environ.pop("VIRTUAL_ENV", None)
    context = zmq.Context()
    # zmq retries a refused connect every 100 ms by default; that would round
    # both start times up to the next retry. 1 ms keeps the measurement honest.
    context.setsockopt(zmq.RECONNECT_IVL, 1)

    argv = {
        OURS: (kernelspec_argv(args.kernelspec, args.python) if args.kernelspec else
               lambda conn: [args.stepkernel, "kernel", "-f", conn, "--python", args.python]),
        PEER: lambda conn: [args.python, "-m", "ipykernel_launcher", "-f", conn],
    }

    def start_once(name, first_execute=None):
        kernel = Kernel(name, argv[name], workdir, context)
        launched = kernel.launch(workdir)
        msg_id = kernel.request(kernel.shell, "kernel_info_request")
        replied, _ = kernel.wait_reply(msg_id, 60)
        if first_execute is not None:
            # A kernel may answer kernel_info before it can run code (stepkernel
            # does when it knows the Python version): time the first cell too.
            msg_id = kernel.request(kernel.shell, "execute_request", {
                "code": "pass", "silent": False, "store_history": True,
                "user_expressions": {}, "allow_stdin": False, "stop_on_error": True,
            })
            executed, _ = kernel.wait_reply(msg_id, 60)
            first_execute.append(executed - launched)
        return kernel, replied - launched

    # (a) start: one untimed warm-up each (pyc files, IPython profile, worker unpack).
    for name in (OURS, PEER):
        kernel, _ = start_once(name)
        kernel.stop()
    starts = {OURS: [], PEER: []}
    firsts = {OURS: [], PEER: []}
    for i in range(args.launches):
        for name in ((OURS, PEER) if i % 2 == 0 else (PEER, OURS)):
            kernel, seconds = start_once(name, firsts[name])
            kernel.stop()
            starts[name].append(seconds)
    for name in (OURS, PEER):
        s, f = starts[name], firsts[name]
        log(f"start {name:11s} median {statistics.median(s) * 1e3:8.1f} ms  "
            f"min {min(s) * 1e3:8.1f}  max {max(s) * 1e3:8.1f}  (n={len(s)}); "
            f"to the first execute_reply median {statistics.median(f) * 1e3:8.1f} ms")

    # (b, c) both kernels up; executes alternate in blocks so noise hits both.
    kernels = {}
    for name in (OURS, PEER):
        kernel, _ = start_once(name)
        kernel.wait_ready()
        kernels[name] = kernel
    time.sleep(1.0)  # let start-up work settle before measuring memory
    rss_start, rss_parts = {}, {}
    for name, k in kernels.items():
        rss_start[name], rss_parts[name] = k.rss()
    for k in kernels.values():
        for _ in range(20):
            k.execute("pass")  # warm-up, not counted
    reply = {OURS: [], PEER: []}
    idle = {OURS: [], PEER: []}
    block = 50
    for i in range(0, args.executes, block):
        for name in ((OURS, PEER) if (i // block) % 2 == 0 else (PEER, OURS)):
            for _ in range(min(block, args.executes - i)):
                r, d = kernels[name].execute("pass")
                reply[name].append(r)
                idle[name].append(d)
    rss_end = {name: k.rss()[0] for name, k in kernels.items()}
    for k in kernels.values():
        k.stop()
    for name in (OURS, PEER):
        log(f"rtt   {name:11s} reply median {statistics.median(reply[name]) * 1e3:7.3f} ms "
            f"p99 {percentile(reply[name], 99) * 1e3:7.3f}  | idle median "
            f"{statistics.median(idle[name]) * 1e3:7.3f} p99 {percentile(idle[name], 99) * 1e3:7.3f}"
            f"  (n={len(reply[name])})")
        log(f"rss   {name:11s} after start {rss_start[name] / 2**20:7.1f} MiB, "
            f"after {args.executes} executes {rss_end[name] / 2**20:7.1f} MiB  (at start: "
            + " + ".join(f"{proc} {rss / 2**20:.1f}" for proc, rss in rss_parts[name]) + ")")

    ms = 1e3
    start_row = "kernel start to kernel_info_reply, median (ms)"
    if args.kernelspec:
        start_row = f"kernel start (kernelspec {args.kernelspec}) to kernel_info_reply, median (ms)"
    rows = [
        (start_row,
         statistics.median(starts[OURS]) * ms, statistics.median(starts[PEER]) * ms, "<= 0.10x"),
        (start_row.replace("kernel_info_reply", "the first execute_reply"),
         statistics.median(firsts[OURS]) * ms, statistics.median(firsts[PEER]) * ms, "-"),
        ("execute 'pass' to execute_reply, median (ms)",
         statistics.median(reply[OURS]) * ms, statistics.median(reply[PEER]) * ms, "<= 0.20x"),
        ("execute 'pass' to execute_reply, p99 (ms)",
         percentile(reply[OURS], 99) * ms, percentile(reply[PEER], 99) * ms, "<= 0.20x"),
        ("execute 'pass' to status idle, median (ms)",
         statistics.median(idle[OURS]) * ms, statistics.median(idle[PEER]) * ms, "<= 0.20x"),
        ("execute 'pass' to status idle, p99 (ms)",
         percentile(idle[OURS], 99) * ms, percentile(idle[PEER], 99) * ms, "<= 0.20x"),
        ("kernel RSS after start (MiB)", rss_start[OURS] / 2**20, rss_start[PEER] / 2**20, "-"),
        (f"kernel RSS after {args.executes} executes (MiB)",
         rss_end[OURS] / 2**20, rss_end[PEER] / 2**20, "-"),
    ]
    for benchmark, ours, peer, goal in rows:
        emit(benchmark, ours, peer, goal, "")
    context.term()
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(ipython_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
