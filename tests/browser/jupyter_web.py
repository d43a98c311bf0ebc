"""A Jupyter server process for tests, its REST API and the kernel websocket.

Shared by tests/test_attach.py and tests/test_browser.py. The websocket speaks
jupyter_server's JSON protocol (no subprotocol: one JSON object per message,
with a `channel` key).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid

import requests
import websocket

from conftest import stepkernel_bin, wait_for

JUPYTER = str(pathlib.Path(sys.executable).parent / "jupyter")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_env(tmp: pathlib.Path, **extra: str) -> dict:
    """The environment with Jupyter's config and runtime dirs inside tmp (no user config leaks in)."""
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),
        JUPYTER_RUNTIME_DIR=str(tmp / "jupyter-server-runtime"),
        IPYTHONDIR=str(tmp / "ipython"),
    )
    env.update(extra)
    return env


class JupyterServer:
    """A running Jupyter server (ours or one `stepkernel lab` started) reached with its token."""

    def __init__(self, base_url: str, token: str, proc: subprocess.Popen | None = None, log: pathlib.Path | None = None):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.proc = proc
        self.log_path = log
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"

    @classmethod
    def start(cls, tmp: pathlib.Path, external_dir: pathlib.Path, root_dir: pathlib.Path, app: str = "server"):
        """`jupyter server|lab` with external kernels from external_dir, a token, on 127.0.0.1."""
        token = secrets.token_hex(32)
        port = free_port()
        log = tmp / f"jupyter-{app}.log"
        args = [
            JUPYTER, app, "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.token={token}",
            "--ServerApp.allow_external_kernels=True",
            f"--ServerApp.external_connection_dir={external_dir}",
            f"--ServerApp.root_dir={root_dir}",
        ]
        if os.geteuid() == 0:
            args.append("--allow-root")
        proc = subprocess.Popen(args, env=isolated_env(tmp), cwd=root_dir, stdout=subprocess.DEVNULL,
                                stderr=open(log, "wb"))
        server = cls(f"http://127.0.0.1:{port}", token, proc, log)
        server.wait_ready()
        return server

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_ready(self, timeout: float = 90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"jupyter exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.http.get(self.base_url + "/api/status", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"jupyter did not answer:\n{self.log()}")

    def get(self, path: str):
        response = self.http.get(self.base_url + path, timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict):
        return self.http.post(self.base_url + path, json=body, timeout=30)

    def kernels(self) -> list[dict]:
        return self.get("/api/kernels")

    def stepkernel_kernel(self, timeout: float = 30) -> dict:
        """The (single) external stepkernel kernel the server lists."""
        deadline = time.monotonic() + timeout
        while True:
            found = [k for k in self.kernels() if k["name"].startswith("stepkernel")]
            if len(found) == 1:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no single stepkernel kernel listed: {self.kernels()}")
            time.sleep(0.2)

    def create_session(self, kernel_id: str, path: str) -> dict:
        """A notebook session bound to an existing (external) kernel."""
        response = self.post(
            "/api/sessions",
            {"path": path, "name": path, "type": "notebook", "kernel": {"id": kernel_id}},
        )
        assert response.status_code == 201, response.text
        return response.json()

    def channels(self, kernel_id: str, session_id: str | None = None) -> KernelSocket:
        ws_url = self.base_url.replace("http://", "ws://", 1)
        url = f"{ws_url}/api/kernels/{kernel_id}/channels?session_id={session_id or uuid.uuid4().hex}"
        sock = websocket.create_connection(url, header=[f"Authorization: token {self.token}"], timeout=30)
        return KernelSocket(sock)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_stepkernel_lab(project: pathlib.Path, tmp: pathlib.Path, *args: str):
    """`stepkernel lab ARGS` in project; returns (process, JupyterServer from the printed URL, stdout so far)."""
    env = isolated_env(tmp, JUPYTER_RUNTIME_DIR=str(project / ".jupyter-runtime"))
    out_path, err_path = tmp / "lab.out", tmp / "lab.err"
    proc = subprocess.Popen([stepkernel_bin(), "lab", *args], cwd=project, env=env,
                            stdout=open(out_path, "wb"), stderr=open(err_path, "wb"))

    def url():
        if proc.poll() is not None:
            raise AssertionError(f"stepkernel lab exited {proc.returncode}:\n{err_path.read_text()}")
        return re.search(r"http://\S+/lab\?token=\S+", out_path.read_text())

    found = wait_for(url, timeout=120, what="stepkernel lab's URL").group(0)
    base, token = found.split("/lab?token=")
    return proc, JupyterServer(base, token, proc, err_path), out_path.read_text()


class KernelSocket:
    """Jupyter messages over a kernel's websocket."""

    def __init__(self, sock: websocket.WebSocket):
        self.sock = sock
        self.session = uuid.uuid4().hex
        self.seen: list[dict] = []

    def send(self, channel: str, msg_type: str, content: dict) -> str:
        msg_id = uuid.uuid4().hex
        message = {
            "header": {
                "msg_id": msg_id, "msg_type": msg_type, "session": self.session, "username": "test",
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "version": "5.3",
            },
            "parent_header": {}, "metadata": {}, "content": content, "channel": channel, "buffers": [],
        }
        self.sock.send(json.dumps(message))
        return msg_id

    def next_for(self, msg_id: str, timeout: float) -> dict:
        """The next message whose parent is msg_id."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no message for {msg_id}; saw {[m['msg_type'] for m in self.seen[-20:]]}")
            self.sock.settimeout(remaining)
            raw = self.sock.recv()
            if isinstance(raw, bytes):
                continue  # binary frames carry buffers; none expected here
            message = json.loads(raw)
            self.seen.append(message)
            if message.get("parent_header", {}).get("msg_id") == msg_id:
                return message

    def collect(self, msg_id: str, timeout: float = 60) -> tuple[dict, list[dict]]:
        """The shell reply to msg_id and its iopub messages up to idle."""
        reply, iopub, idle = None, [], False
        while reply is None or not idle:
            message = self.next_for(msg_id, timeout)
            if message["channel"] == "shell":
                reply = message
            elif message["channel"] == "iopub":
                iopub.append(message)
                if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                    idle = True
        return reply, iopub

    def execute(self, code: str, timeout: float = 60) -> tuple[dict, str]:
        """Runs code; returns (reply content, stdout text + text/plain results)."""
        msg_id = self.send("shell", "execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True,
        })
        reply, iopub = self.collect(msg_id, timeout)
        return reply["content"], output_text(iopub)

    def close(self):
        self.sock.close()


def output_text(iopub: list[dict]) -> str:
    parts = []
    for message in iopub:
        content = message["content"]
        if message["msg_type"] == "stream":
            parts.append(content["text"])
        elif message["msg_type"] in ("execute_result", "display_data"):
            parts.append(content["data"].get("text/plain", ""))
    return "".join(parts)
