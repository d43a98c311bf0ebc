"""Fixtures for end-to-end tests: a real stepkernel binary, real Jupyter clients."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
PYTHON = sys.executable

#: The git identity of every commit the tests make (and of the patches stepkernel writes).
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada Tester",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Tester",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
}


def stepkernel_bin() -> str:
    """The binary under test (built by scripts/setup.sh)."""
    path = os.environ.get("STEPKERNEL_BIN") or str(ROOT / "target" / "debug" / "stepkernel")
    if not os.path.exists(path):
        pytest.fail(f"stepkernel binary not found at {path}: run scripts/setup.sh")
    return path


def other_python(version: str, tmp_path_factory) -> str:
    """A virtualenv with pytest (and pytest-asyncio) on a pyenv Python `version`, made once per session
    (skipped when there is none)."""
    import glob

    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")))
    if not found:
        pytest.skip(f"no Python {version} here (pyenv)")
    venv = tmp_path_factory.getbasetemp() / f"venv-{version}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([found[-1], "-m", "venv", str(venv)], check=True)
        pins = [line.strip() for line in open(pathlib.Path(__file__).with_name("requirements.txt"))
                if line.split("==")[0] in ("pytest", "pluggy", "iniconfig", "packaging", "pytest-asyncio")]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    return str(python)


@pytest.fixture(scope="session")
def binary() -> str:
    return stepkernel_bin()


class KernelProcess:
    """A `stepkernel kernel` process and a connected BlockingKernelClient."""

    def __init__(self, tmp: pathlib.Path, transport: str = "tcp", key: bytes | None = None):
        self.tmp = tmp
        self.key = key if key is not None else uuid.uuid4().hex.encode()
        ip = "127.0.0.1" if transport == "tcp" else str(tmp / "kernel-ipc")
        self.connection_file, self.info = write_connection_file(
            str(tmp / "connection.json"), key=self.key, ip=ip, transport=transport
        )
        self.stderr_path = tmp / "kernel.stderr"
        self.proc = subprocess.Popen(
            [stepkernel_bin(), "kernel", "-f", self.connection_file, "--python", PYTHON],
            stdout=subprocess.DEVNULL,
            stderr=open(self.stderr_path, "wb"),
            cwd=tmp,
        )
        self.client = self.new_client()

    def new_client(self) -> BlockingKernelClient:
        client = BlockingKernelClient(connection_file=self.connection_file)
        client.load_connection_file()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        return client

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def close(self):
        try:
            self.client.stop_channels()
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(autouse=True)
def _private_jupyter_runtime(tmp_path_factory, monkeypatch):
    """Each test gets a Jupyter runtime directory of its own: sessions another
    test (or the developer's own Jupyter) left there are not in its listings,
    and nothing is written to the real one."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path_factory.mktemp("jupyter-runtime")))


@pytest.fixture
def kernel(tmp_path):
    kp = KernelProcess(tmp_path)
    yield kp
    kp.close()


def execute(client: BlockingKernelClient, code: str, timeout: float = 30, **kwargs):
    """Run code; return (reply content, list of (msg_type, content) iopub messages for it)."""
    messages = []
    reply = client.execute_interactive(
        code, output_hook=lambda m: messages.append((m["msg_type"], m["content"])), timeout=timeout, **kwargs
    )
    return reply["content"], messages


def stream_text(messages, name="stdout") -> str:
    return "".join(c["text"] for t, c in messages if t == "stream" and c["name"] == name)


def wait_for(predicate, timeout=20.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------
# Helpers for the kernel end-to-end tests (tests/test_kernel*.py and friends).


def python_version_of(python: str) -> str:
    """The X.Y.Z version of an interpreter, asked from the interpreter itself."""
    out = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def channel_of(client: BlockingKernelClient, name: str):
    return {"shell": client.shell_channel, "control": client.control_channel}[name]


def send_request(client: BlockingKernelClient, msg_type: str, content=None, channel: str = "shell") -> str:
    """Send a request on shell or control; return its msg_id."""
    msg = client.session.msg(msg_type, content or {})
    channel_of(client, channel).send(msg)
    return msg["header"]["msg_id"]


def get_reply(client: BlockingKernelClient, msg_id: str, channel: str = "shell", timeout: float = 30):
    """The reply to msg_id on shell or control (other replies are skipped)."""
    deadline = time.monotonic() + timeout
    get = client.get_shell_msg if channel == "shell" else client.get_control_msg
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {channel} reply to {msg_id}")
        msg = get(timeout=remaining)
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def iopub_until_idle(client: BlockingKernelClient, msg_id: str, timeout: float = 30):
    """All iopub messages whose parent is msg_id, up to and including its idle status."""
    deadline = time.monotonic() + timeout
    found = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no idle status for {msg_id}; saw {[m['msg_type'] for m in found]}")
        msg = client.get_iopub_msg(timeout=remaining)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        found.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return found


def request(client: BlockingKernelClient, msg_type: str, content=None, channel: str = "shell", timeout: float = 30):
    """Send a request; return (reply message, its iopub messages up to idle)."""
    msg_id = send_request(client, msg_type, content, channel)
    reply = get_reply(client, msg_id, channel, timeout)
    return reply, iopub_until_idle(client, msg_id, timeout)


def endpoint(info: dict, channel: str) -> str:
    """The ZeroMQ address of a channel ('shell', 'control', 'iopub', 'stdin', 'hb')."""
    port = info[f"{channel}_port"]
    if info["transport"] == "ipc":
        return f"ipc://{info['ip']}-{port}"
    return f"tcp://{info['ip']}:{port}"


@pytest.fixture
def zmq_context():
    import zmq

    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture(scope="module")
def shared_kernel(tmp_path_factory):
    """One kernel for a module's tests that only add state (faster than one per test)."""
    kp = KernelProcess(tmp_path_factory.mktemp("kernel"))
    yield kp
    kp.close()


class RunSession:
    """A `stepkernel run` process on a project directory, and clients attached to it."""

    def __init__(self, project: pathlib.Path, *args: str, env: dict | None = None, python: str = PYTHON):
        self.project = project
        self.session_dir = project / ".stepkernel" / "session"
        self.out_path = project / "run.out"
        full_env = dict(os.environ)
        full_env["JUPYTER_RUNTIME_DIR"] = str(project / ".jupyter-runtime")
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            [stepkernel_bin(), "run", "--python", python, "--session-dir", str(self.session_dir), *args],
            cwd=project,
            stdout=open(self.out_path, "wb"),
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self.clients: list[BlockingKernelClient] = []

    @property
    def connection_file(self) -> str:
        return str(self.session_dir / "connection.json")

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def meta(self) -> dict:
        try:
            return json.loads((self.session_dir / "session.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_paused(self, timeout: float = 60) -> dict:
        def paused():
            if self.proc.poll() is not None:
                raise AssertionError(f"run exited {self.proc.returncode} before pausing:\n{self.output()}")
            meta = self.meta()
            return meta if meta.get("state") == "paused" else None

        return wait_for(paused, timeout=timeout, what="the run to pause")

    def client(self) -> BlockingKernelClient:
        wait_for(lambda: os.path.exists(self.connection_file), what="connection file")
        client = BlockingKernelClient(connection_file=self.connection_file)
        client.load_connection_file()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        self.clients.append(client)
        return client

    def events(self) -> list[dict]:
        path = self.session_dir / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_exit(self, timeout: float = 60, end: bool = True) -> int:
        """The run's exit code. A finished run stays up while a client is
        attached: with ``end``, one of this session's clients sends ``%end``
        once session.json says it lingers, as a user ends it."""
        deadline = time.monotonic() + timeout
        live = [c for c in self.clients if c.channels_running]
        if end and live:
            def over():
                return self.proc.poll() is not None or self.meta().get("lingering")

            wait_for(over, timeout=timeout, what="the run to finish")
            if self.proc.poll() is None:
                reply = live[0].execute_interactive("%end", timeout=30)
                assert reply["content"]["status"] == "ok", reply["content"]
        try:
            return self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"run did not end:\n{self.output()}")

    def close(self):
        for client in self.clients:
            try:
                client.stop_channels()
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def run_session():
    sessions = []

    def start(project, *args, **kwargs):
        session = RunSession(project, *args, **kwargs)
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.close()


def write_project(root: pathlib.Path, files: dict[str, str], git: bool = False) -> pathlib.Path:
    """Writes a small project; with git=True, commits it."""
    import textwrap

    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    if git:
        env = {**os.environ, **GIT_ENV}
        for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "initial"]):
            subprocess.run(cmd, cwd=root, check=True, env=env)
        (root / ".gitignore").write_text(".stepkernel/\n.jupyter-runtime/\nrun.out\n__pycache__/\n")
    return root


def install_kernelspec(prefix: pathlib.Path, *extra: str, env=None) -> subprocess.CompletedProcess:
    """Run `stepkernel install --prefix PREFIX [extra...]`."""
    return subprocess.run(
        [stepkernel_bin(), "install", "--prefix", str(prefix), *extra],
        capture_output=True, text=True, env=env, timeout=60,
    )
