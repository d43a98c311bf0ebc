"""`stepkernel run --ip 0.0.0.0 --ports A-B` across a real network boundary.

Two network namespaces joined by a veth pair stand in for a container and a
developer's machine: the session runs in one, jupyter_client in the other,
with the connection file copied over and its address rewritten (as after
`docker cp`). Needs root and `ip netns`; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap

import pytest

from conftest import PYTHON, stepkernel_bin, wait_for, write_project

PAUSING = {
    "test_remote_target.py": '''
        def test_remote_target():
            secret = "from-" + "the-container"
            values = {"a": 1}
            assert values["a"] == 2
        ''',
}

CLIENT = textwrap.dedent('''
    import json, sys
    from jupyter_client import BlockingKernelClient

    client = BlockingKernelClient(connection_file=sys.argv[1])
    client.load_connection_file()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    results = {}
    for name, code in [("secret", "secret"), ("where", "%where"), ("add", "values['b'] = 2; sorted(values)")]:
        texts = []
        def hook(msg):
            if msg["msg_type"] in ("execute_result", "display_data"):
                texts.append(msg["content"]["data"].get("text/plain", ""))
            elif msg["msg_type"] == "stream":
                texts.append(msg["content"]["text"])
        reply = client.execute_interactive(code, output_hook=hook, timeout=60)
        results[name] = {"status": reply["content"]["status"], "text": "".join(texts)}
    client.stop_channels()
    print(json.dumps(results))
''')

FIRST_PORT = 9000


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=60)


class Network:
    """Two namespaces joined by a veth pair: `server` at .1, `client` at .2 of a /24."""

    def __init__(self):
        tag = os.getpid() % 100000
        self.server, self.client = f"sk{tag}srv", f"sk{tag}cli"
        self.veth = (f"skv{tag}a", f"skv{tag}b")
        subnet = 1 + os.getpid() % 250
        self.server_ip, self.client_ip = f"10.200.{subnet}.1", f"10.200.{subnet}.2"
        self.created: list[str] = []

    def up(self):
        for ns in (self.server, self.client):
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
        a, b = self.veth
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        for ns, dev, ip in ((self.server, a, self.server_ip), (self.client, b, self.client_ip)):
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def down(self):
        for ns in self.created:
            # Deleting a namespace also deletes the veth end inside it (and so its peer).
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def network():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    net = Network()
    try:
        try:
            net.up()
        except subprocess.CalledProcessError as err:
            pytest.skip(f"cannot create network namespaces here: {' '.join(err.cmd)}: {err.stderr.strip()}")
        yield net
    finally:
        net.down()


def test_client_in_another_network_namespace_attaches_over_tcp(tmp_path, network):
    project = write_project(tmp_path / "project", PAUSING)
    session_dir = project / ".stepkernel" / "remote"
    out_path = tmp_path / "run.out"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    proc = subprocess.Popen(
        ["ip", "netns", "exec", network.server, stepkernel_bin(), "run", "--python", PYTHON,
         "--session-dir", str(session_dir), "--ip", "0.0.0.0", "--ports", f"{FIRST_PORT}-{FIRST_PORT + 4}",
         "test_remote_target.py"],
        cwd=project, env=env, stdout=open(out_path, "wb"), stderr=subprocess.STDOUT,
    )
    try:
        def paused():
            if proc.poll() is not None:
                raise AssertionError(f"run exited {proc.returncode}:\n{out_path.read_text()}")
            try:
                meta = json.loads((session_dir / "session.json").read_text())
            except (OSError, ValueError):
                return None
            return meta if meta.get("state") == "paused" else None

        wait_for(paused, timeout=90, what="the run to pause")
        output = out_path.read_text()
        assert "WARNING" in output and "NOT encrypted" in output and "SSH tunnel" in output, output
        # jupyter_client runs its tunnels under pexpect, whose hang-up kills an `ssh -f` unless ignored.
        assert "env --ignore-signal=HUP jupyter console --existing ./connection.json --ssh USER@HOST" in output, output
        info = json.loads((session_dir / "connection.json").read_text())
        assert info["ip"] == "0.0.0.0"
        ports = [info[f"{c}_port"] for c in ("shell", "iopub", "stdin", "control", "hb")]
        assert sorted(ports) == list(range(FIRST_PORT, FIRST_PORT + 5))
        # What a user does after `docker cp`: point the file at the container's address.
        remote = tmp_path / "remote-connection.json"
        remote.write_text(json.dumps({**info, "ip": network.server_ip}))
        remote.chmod(0o600)
        script = tmp_path / "client.py"
        script.write_text(CLIENT)
        result = subprocess.run(
            ["ip", "netns", "exec", network.client, PYTHON, str(script), str(remote)],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        answers = json.loads(result.stdout.strip().splitlines()[-1])
        assert answers["secret"] == {"status": "ok", "text": "'from-the-container'"}
        assert "test_remote_target.py::test_remote_target" in answers["where"]["text"]
        assert answers["add"]["text"] == "['a', 'b']"
        # The same ports are not reachable from the client namespace's own loopback:
        # the traffic really crossed the veth pair.
        local = subprocess.run(
            ["ip", "netns", "exec", network.client, PYTHON, "-c",
             f"import socket; socket.create_connection(('127.0.0.1', {FIRST_PORT}), timeout=5)"],
            capture_output=True, text=True, timeout=60,
        )
        assert local.returncode != 0 and "Connection refused" in local.stderr
        assert proc.poll() is None, "the session outlives its remote client"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
