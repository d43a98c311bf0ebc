"""Remote pytest-xdist workers (``--tx socket=HOST:PORT``, ``--tx ssh=HOST``) stepped like local ones.

The controller opens a gateway of its own to the remote interpreter (the
user's spec, id ``<gw>-stepkernel``), asks it for its ``sys.executable``,
working directory and ``stepkernel`` binary, and turns xdist's worker into
``popen//via=<that gateway>`` started through ``stepkernel xdist-worker
--relay``: on the remote host, the worker's interpreter runs under a kernel
of its own exactly as a local worker's does (execnet's stdin/stdout channel
handed through untouched), bound to the remote host's loopback.

The session's relay is a local UNIX socket, so a remote kernel connects back
to a TCP relay this controller binds (on the address the remote reaches it
by) and presents a random token first (set in the environment of the remote
interpreter that starts the kernel, never on a command line); each connection is then piped to
``<session>/workers.sock`` as a local worker's would be. Nothing of
stepkernel's goes over xdist's channel: the gateway above only asks where
things are before the worker starts. The remote kernel's own files (its
connection file, journal) are on its host under
``<cwd>/.stepkernel/remote/<session-id>/workers/<gw>/``; over the relay it
sends the session its connection info and its edits. What the session needs
to know of it first (its host, and which of its directories are copies of
which of this machine's) goes in ``<session>/workers/<gw>/remote.json``.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import shlex
import socket
import sys
import threading
from typing import Any

#: Names the remote's binary when it is not ``stepkernel`` on the remote PATH.
BIN_ENV = "STEPKERNEL_REMOTE_BIN"
#: The remote kernel reads the relay token from this variable (see relay_stream.rs).
TOKEN_ENV = "STEPKERNEL_RELAY_TOKEN"

_QUERY = """
import os, shutil, sys
channel.send({"python": sys.executable, "cwd": os.getcwd(), "stepkernel": shutil.which("stepkernel"),
              "ssh_connection": os.environ.get("SSH_CONNECTION"), "bin_env": os.environ.get(%r)})
""" % BIN_ENV


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    for end in (sink, source):
        try:
            end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class TcpRelay:
    """A TCP listener that pipes each authenticated connection to the session's UNIX relay."""

    def __init__(self, ip: str, unix_path: str) -> None:
        self.token = secrets.token_hex(16)
        # Behind a symlink when the session directory is deep (AF_UNIX paths are short).
        self.unix_path = os.path.realpath(unix_path)
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self.server = socket.create_server((ip, 0), family=family)
        self.address = f"[{ip}]:{self.server.getsockname()[1]}" if family == socket.AF_INET6 else \
            f"{ip}:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, name="stepkernel-tcp-relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            line = b""
            while not line.endswith(b"\n") and len(line) < 128:
                chunk = conn.recv(1)
                if not chunk:
                    break
                line += chunk
            if not hmac.compare_digest(line.strip(), self.token.encode()):
                conn.close()
                return
            conn.settimeout(None)
            session = socket.socket(socket.AF_UNIX)
            session.connect(self.unix_path)
        except OSError:
            conn.close()
            return
        threading.Thread(target=_pump, args=(session, conn), daemon=True).start()
        _pump(conn, session)

    def close(self) -> None:
        self.server.close()


def _write_private(path: str, data: dict) -> None:
    """`data` as JSON at `path` (0600), its directory and the one above it made private (0700)."""
    parent = os.path.dirname(path)
    for directory in (os.path.dirname(parent), parent):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)


def path_map(roots: list, users_roots: bool, remote_cwd: str, local_cwd: str) -> list[list[str]]:
    """[remote directory, local directory] pairs: each rsync root is copied to
    ``<remote cwd>/<its name>`` (xdist's layout; it always sends pytest's own
    packages too); when the user named no rsync directory, the remote
    directory is taken for a checkout of the one the run started in."""
    pairs = [[os.path.join(remote_cwd, os.path.basename(str(root))), str(root)] for root in roots]
    if not users_roots:
        pairs.append([remote_cwd, local_cwd])
    return pairs


def _reachable_ip(master: Any, info: dict, host: str) -> str:
    """This machine's address as the remote host reaches it."""
    sock = getattr(getattr(master, "_io", None), "sock", None)
    if sock is not None:
        return sock.getsockname()[0]
    if info.get("ssh_connection"):
        return info["ssh_connection"].split()[0]
    # The interface a packet to the host would leave by (a UDP connect sends nothing).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 22))
        return probe.getsockname()[0]


class RemoteWorkers:
    """Turns the run's remote xdist specs into stepped workers (or says why not)."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.relays: dict[str, TcpRelay] = {}

    def _relay(self, ip: str) -> TcpRelay:
        if ip not in self.relays:
            self.relays[ip] = TcpRelay(ip, os.path.join(self.spec["session_dir"], "workers.sock"))
        return self.relays[ip]

    def setup(self, config: Any, spec: Any) -> str | None:
        """Rewrites `spec` to a stepped remote worker; None when done, else why it stays unstepped."""
        dsession = config.pluginmanager.getplugin("dsession")
        group = getattr(getattr(dsession, "nodemanager", None), "group", None)
        if group is None:
            return "xdist's gateway group is not there"
        host = spec.socket.rsplit(":", 1)[0] if spec.socket else spec.ssh
        parts = [f"socket={spec.socket}" if spec.socket else f"ssh={spec.ssh}", f"id={spec.id}-stepkernel"]
        # In the directory xdist would have the worker use (its `pyexecnetcache` default), so
        # the kernel's files and the rsynced tree are where they are under plain xdist.
        for key in ("python", "ssh_config", "chdir"):
            if getattr(spec, key):
                parts.append(f"{key}={getattr(spec, key)}")
        try:
            master = group.makegateway("//".join(parts))
            info = master.remote_exec(_QUERY).receive(60)
        except Exception as error:  # execnet raises several kinds; the worker itself will say more
            return f"cannot reach {host} ({error})"
        binary = os.environ.get(BIN_ENV) or info.get("bin_env") or info.get("stepkernel")
        if not binary:
            master.exit()
            return (f"stepkernel is not installed on {host} (install its wheel there, or set {BIN_ENV} "
                    "to its binary on that host)")
        relay = self._relay(_reachable_ip(master, info, host))
        roots = list(getattr(dsession.nodemanager, "roots", None) or [])
        _write_private(os.path.join(self.spec["session_dir"], "workers", spec.id, "remote.json"), {
            "host": host, "ssh": bool(spec.ssh),
            "paths": path_map(roots, bool(getattr(config.option, "rsyncdir", None) or config.getini("rsyncdirs")), info["cwd"],
                              str(config.invocation_params.dir)),
        })
        # The worker's kernel is started by this interpreter: it inherits the token.
        master.remote_exec(f"import os; os.environ[{TOKEN_ENV!r}] = {relay.token!r}").waitclose(60)
        command = [
            binary, "xdist-worker",
            "--relay", relay.address,
            "--session-id", self.spec.get("session_id") or os.path.basename(self.spec["session_dir"].rstrip("/")),
            "--worker", spec.id,
            "--python", info["python"],
            "--ip", "127.0.0.1",
            "--remote-host", host,
        ]
        if spec.ssh:
            command.append("--ssh")
        for flag, key in (("--step-marker", "step_marker"), ("--plan-id", "plan_id")):
            if self.spec.get(key):
                command += [flag, self.spec[key]]
        command.append("--")
        # The worker starts in the master's directory: already there (a relative chdir would nest).
        spec.chdir = info["cwd"]
        spec.socket = spec.ssh = spec.ssh_config = None
        spec.popen = True
        spec.via = master.id
        spec.python = shlex.join(command)
        print(f"stepkernel: xdist worker {spec.id} on {host} is stepped there (kernel on its loopback; "
              f"events back over {relay.address})", file=sys.stderr, flush=True)
        return None

    def close(self) -> None:
        for relay in self.relays.values():
            relay.close()
