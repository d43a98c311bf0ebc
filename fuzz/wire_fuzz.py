#!/usr/bin/env python3
"""Socket-level fuzzer for `stepkernel kernel`: malformed ZMTP byte streams and
malformed (signed and unsigned) Jupyter messages on every channel.

A bounded benchmark-style job, not a CI test:

    nice -n 10 .venv/bin/python fuzz/wire_fuzz.py --seconds 180 [--binary target/debug/stepkernel] [--session]

With ``--session`` the target is a paused ``stepkernel run`` instead of a bare
kernel: it must stay paused (its worker alive) through all of it.

Every few hundred inputs the kernel must answer a fresh, well-signed
kernel_info_request; a kernel that died is counted, its exit status kept, and
restarted. At the end it prints inputs tried, kernel deaths, unresponsive
checks and panics found in the kernel's stderr, and exits non-zero if any.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid

import zmq
from jupyter_client.connect import write_connection_file
from jupyter_client.session import Session

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHANNELS = ["shell", "control", "stdin", "iopub", "hb"]
SOCKET_TYPE = {"shell": b"DEALER", "control": b"DEALER", "stdin": b"DEALER", "iopub": b"SUB", "hb": b"REQ"}
GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
REQUESTS = [
    "execute_request", "complete_request", "inspect_request", "is_complete_request", "history_request",
    "kernel_info_request", "comm_info_request", "shutdown_request", "interrupt_request", "input_reply",
    "debug_request", "bogus_request", "",
]
FIELDS = ["code", "cursor_pos", "detail_level", "user_expressions", "silent", "store_history", "allow_stdin",
          "stop_on_error", "hist_access_type", "n", "start", "stop", "session", "pattern", "restart", "value",
          "target_name", "raw", "output", "unique"]
# Code that is safe to run many times (never blocking, exiting or killing anything).
SAFE_CODE = ["1", "x = 2", "print('hi')", "", "%where", "%steps", "%help", "%bogus", "def f(:", "'a' * 10", "%%edit\nx"]


def random_value(rng: random.Random, depth: int = 0):
    choice = rng.randrange(12 if depth < 2 else 8)
    return [
        lambda: None, lambda: rng.choice([True, False]), lambda: rng.randint(-(2**70), 2**70),
        lambda: rng.random() * 10**rng.randint(0, 40), lambda: rng.choice(SAFE_CODE),
        lambda: "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(20))),
        lambda: rng.choice(["range", "tail", "search", "x"]), lambda: rng.randrange(-3, 50),
        lambda: [random_value(rng, depth + 1) for _ in range(rng.randrange(4))],
        lambda: {rng.choice(FIELDS): random_value(rng, depth + 1) for _ in range(rng.randrange(4))},
        lambda: {"a": rng.choice(SAFE_CODE)}, lambda: 10**30,
    ][choice]()


def random_content(rng: random.Random, msg_type: str) -> dict:
    content = {}
    for name in rng.sample(FIELDS, rng.randrange(len(FIELDS) // 2)):
        content[name] = random_value(rng)
    if rng.random() < 0.7:
        content["code"] = rng.choice(SAFE_CODE) if rng.random() < 0.8 else random_value(rng)
    if msg_type == "shutdown_request":
        # A valid one ends a bare kernel by design: only malformed ones here.
        content["restart"] = rng.choice(["yes", 1, None, [], {}])
    return content


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        if op == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1:
            data[rng.randrange(len(data) + 1):0] = os.urandom(rng.randrange(1, 8))
        elif op == 2 and data:
            del data[rng.randrange(len(data))]
        else:
            data = data[: rng.randrange(len(data) + 1)]
    return bytes(data)


def ready(socket_type: bytes) -> bytes:
    prop = b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    body = b"\x05READY" + prop
    return bytes([0x04, len(body)]) + body


def random_frame(rng: random.Random) -> bytes:
    flags = rng.choice([0x00, 0x01, 0x02, 0x03, 0x04, 0x06, rng.randrange(256)])
    body = os.urandom(rng.randrange(0, 64))
    if flags & 0x02:
        length = rng.choice([len(body), 2**rng.randrange(8, 64), rng.randrange(2**64)])
        return bytes([flags]) + struct.pack(">Q", length) + body
    return bytes([flags, rng.choice([len(body), rng.randrange(256)])]) + body


PAUSING_TEST = "def test_paused():\n    x = 1\n    assert x == 2\n"


class Kernel:
    def __init__(self, binary: str, tmp: pathlib.Path, paused_session: bool = False):
        self.binary, self.tmp, self.paused_session = binary, tmp, paused_session
        self.deaths: list[int] = []
        self.log_paths: list[pathlib.Path] = []
        self.start()

    def start(self):
        n = len(self.log_paths)
        log = self.tmp / f"kernel{n}.log"
        self.log_paths.append(log)
        if self.paused_session:
            project = self.tmp / f"project{n}"
            project.mkdir()
            (project / "test_paused.py").write_text(PAUSING_TEST)
            self.session_dir = project / ".stepkernel" / "session"
            self.proc = subprocess.Popen(
                [self.binary, "run", "--python", sys.executable, "--session-dir", str(self.session_dir),
                 "test_paused.py"],
                stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=project,
                env={**os.environ, "JUPYTER_RUNTIME_DIR": str(self.tmp / "runtime")},
            )
            deadline = time.monotonic() + 60
            while not self.is_paused():
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"the session did not pause; see {log}")
                time.sleep(0.05)
            self.info = json.loads((self.session_dir / "connection.json").read_text())
            self.key = self.info["key"].encode()
        else:
            self.key = uuid.uuid4().hex.encode()
            cf, self.info = write_connection_file(str(self.tmp / f"k{n}.json"), key=self.key)
            self.proc = subprocess.Popen(
                [self.binary, "kernel", "-f", cf, "--python", sys.executable],
                stdout=subprocess.DEVNULL, stderr=open(log, "wb"), cwd=self.tmp,
            )
        self.session = Session(key=self.key)

    def is_paused(self) -> bool:
        try:
            return json.loads((self.session_dir / "session.json").read_text()).get("state") == "paused"
        except (OSError, ValueError):
            return False

    def port(self, channel: str) -> int:
        return self.info[f"{channel}_port"]

    def healthy(self, ctx: zmq.Context, timeout_ms: int = 30_000) -> bool:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(f"tcp://127.0.0.1:{self.port('shell')}")
        try:
            msg = self.session.msg("kernel_info_request", {})
            self.session.send(sock, msg)
            deadline = time.monotonic() + timeout_ms / 1000
            while time.monotonic() < deadline:
                if not sock.poll(int((deadline - time.monotonic()) * 1000) + 1):
                    return False
                _, parts = self.session.feed_identities(sock.recv_multipart())
                reply = self.session.deserialize(parts)
                if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                    return True
            return False
        finally:
            sock.close()

    def panics(self) -> int:
        return sum(p.read_text(errors="replace").count("panicked") for p in self.log_paths if p.exists())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def zmtp_case(rng: random.Random, kernel: Kernel) -> int:
    channel = rng.choice(CHANNELS)
    stream = GREETING if rng.random() < 0.8 else mutate(rng, GREETING)
    if rng.random() < 0.7:
        r = ready(SOCKET_TYPE[channel])
        stream += r if rng.random() < 0.8 else mutate(rng, r)
    frames = rng.randrange(1, 8)
    stream += b"".join(random_frame(rng) for _ in range(frames))
    try:
        with socket.create_connection(("127.0.0.1", kernel.port(channel)), timeout=2) as sock:
            sock.sendall(stream)
            sock.settimeout(0.05)
            try:
                sock.recv(4096)
            except OSError:
                pass
    except OSError:
        pass
    return frames


def jupyter_case(rng: random.Random, kernel: Kernel, sockets: dict) -> int:
    channel = rng.choice(["shell", "control", "stdin"])
    sock = sockets[channel]
    session = kernel.session
    msg_type = rng.choice(REQUESTS)
    msg = session.msg(msg_type, random_content(rng, msg_type))
    frames = session.serialize(msg)
    kind = rng.randrange(6)
    if kind == 5 and msg_type == "shutdown_request":
        kind = 0  # random content could be a valid shutdown, which ends a bare kernel by design
    if kind == 1:  # tampered after signing
        i = rng.randrange(2, len(frames))
        frames[i] = mutate(rng, frames[i])
    elif kind == 2:  # no delimiter / too few frames
        frames = frames[rng.randrange(len(frames)):]
    elif kind == 3:  # upper-case or missing signature
        frames[1] = frames[1].upper() if rng.random() < 0.5 else b""
    elif kind == 4:  # extra identities and buffers
        frames = [os.urandom(rng.randrange(1, 10))] + frames + [os.urandom(rng.randrange(100))]
    elif kind == 5:  # valid JSON, but not what the spec says, signed
        header = json.loads(frames[2])
        header[rng.choice(["msg_type", "msg_id", "session", "version"])] = random_value(rng)
        body = [json.dumps(header).encode(), frames[3], frames[4], json.dumps(random_value(rng)).encode()]
        import hashlib, hmac

        mac = hmac.new(kernel.key, digestmod=hashlib.sha256)
        for part in body:
            mac.update(part)
        frames = [frames[0], mac.hexdigest().encode(), *body]
    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK)
    except zmq.Again:
        pass
    while sock.poll(0):
        sock.recv_multipart()
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--binary", default=os.environ.get("STEPKERNEL_BIN", str(ROOT / "target" / "debug" / "stepkernel")))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--check-every", type=int, default=200)
    parser.add_argument("--session", action="store_true", help="fuzz a paused `stepkernel run` session")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="stepkernel-fuzz-"))
    ctx = zmq.Context()
    kernel = Kernel(args.binary, tmp, paused_session=args.session)
    if not kernel.healthy(ctx, 60_000):
        print("the kernel did not start", file=sys.stderr)
        return 2
    counts = {"zmtp_connections": 0, "zmtp_frames": 0, "jupyter_messages": 0, "deaths": 0, "unresponsive": 0}
    death_codes = []

    def open_sockets():
        out = {}
        for channel in ("shell", "control", "stdin"):
            s = ctx.socket(zmq.DEALER)
            s.linger = 0
            s.sndhwm = 1000
            s.connect(f"tcp://127.0.0.1:{kernel.port(channel)}")
            out[channel] = s
        return out

    sockets = open_sockets()
    deadline = time.monotonic() + args.seconds
    i = 0
    while time.monotonic() < deadline:
        i += 1
        if rng.random() < 0.35:
            counts["zmtp_frames"] += zmtp_case(rng, kernel)
            counts["zmtp_connections"] += 1
        else:
            counts["jupyter_messages"] += jupyter_case(rng, kernel, sockets)
        if i % args.check_every == 0 or kernel.proc.poll() is not None:
            alive = kernel.proc.poll() is None and kernel.healthy(ctx)
            if alive and args.session and not kernel.is_paused():
                counts["session_lost_pause"] = counts.get("session_lost_pause", 0) + 1
                alive = False
            if not alive:
                if kernel.proc.poll() is None:
                    counts["unresponsive"] += 1
                    kernel.proc.kill()
                    kernel.proc.wait()
                counts["deaths"] += 1
                death_codes.append(kernel.proc.returncode)
                for s in sockets.values():
                    s.close()
                kernel.start()
                kernel.healthy(ctx, 60_000)
                sockets = open_sockets()
    alive_at_end = kernel.proc.poll() is None and kernel.healthy(ctx)
    if args.session:
        alive_at_end = alive_at_end and kernel.is_paused()
    kernel.stop()
    panics = kernel.panics()
    result = {
        "target": "paused stepkernel run" if args.session else "stepkernel kernel",
        "seed": seed, "seconds": args.seconds, **counts, "inputs": counts["zmtp_connections"] + counts["jupyter_messages"],
        "death_exit_codes": death_codes, "panics": panics, "alive_at_end": alive_at_end, "logs": str(tmp),
    }
    print(json.dumps(result, indent=2))
    return 0 if counts["deaths"] == 0 and panics == 0 and alive_at_end else 1


if __name__ == "__main__":
    sys.exit(main())
