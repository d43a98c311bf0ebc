"""The wheel, as a user gets it: `maturin build`, a fresh virtualenv, `pip install`.

Then: the `stepkernel` binary and `python -m stepkernel` run; Jupyter lists the
kernelspec and starts it; `pytest --stepkernel` hands the run to stepkernel
(same outcomes as plain pytest; pauses for a client); plain `pytest` is untouched.

The wheel is built once per test session (`STEPKERNEL_WHEEL_PROFILE`: `release`,
the default and what users get, or `dev` to reuse the debug build), offline from
cargo's cache (`scripts/setup.sh` fetches every crate the lockfile names).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest
from jupyter_client import BlockingKernelClient

from conftest import ROOT, SHARED, execute, stream_text, wait_for

REQUIREMENTS = ROOT / "tests" / "requirements.txt"
PROFILE = os.environ.get("STEPKERNEL_WHEEL_PROFILE", "release")
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)

# The first test builds the release wheel (several minutes on 2 cores, more
# while other builds share them): pytest.ini's 300 s per test is for tests.
pytestmark = pytest.mark.timeout(3600)

FAILING = """
    def test_passes():
        x = 1
        assert x == 1


    def test_fails():
        total = 2 + 2
        assert total == 5
"""


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> pathlib.Path:
    maturin = shutil.which("maturin", path=str(pathlib.Path(sys.executable).parent))
    if maturin is None:
        pytest.fail("maturin is not installed in the test virtualenv: run scripts/setup.sh")
    out = tmp_path_factory.mktemp("wheel")
    profile = ["--release"] if PROFILE == "release" else ["--profile", PROFILE]
    started = time.monotonic()
    done = subprocess.run([maturin, "build", *profile, "--offline", "--locked", "-o", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout + done.stderr
    wheels = list(out.glob("stepkernel-*.whl"))
    assert len(wheels) == 1, wheels
    print(f"\nwheel {wheels[0].name}: {wheels[0].stat().st_size / 1e6:.1f} MB, "
          f"built in {time.monotonic() - started:.0f} s ({PROFILE})")
    return wheels[0]


@pytest.fixture(scope="session")
def venv(wheel, tmp_path_factory) -> pathlib.Path:
    """A fresh virtualenv with the wheel, pytest, pytest-xdist and jupyter_client (pinned as the tests' own)."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    done = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-c", str(REQUIREMENTS), str(wheel), "pytest", "jupyter_client", "pytest-xdist"],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return env_dir


@pytest.fixture
def user_env(venv, tmp_path) -> dict:
    """A shell in which only the fresh venv's tools are on PATH (not activated)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "JUPYTER_PATH", "STEPKERNEL_PYTHON", "PYTEST_ADDOPTS")}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    # Nothing from this machine's user-level Jupyter dirs (a `stepkernel install --user`) can answer.
    env["JUPYTER_DATA_DIR"] = str(tmp_path / "jupyter-data")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "jupyter-runtime")
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path / "jupyter-config")
    return env


def run(argv, env, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def write(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def test_one_wheel_for_every_python_holding_binary_kernelspec_and_plugin(wheel):
    assert re.fullmatch(rf"stepkernel-{re.escape(VERSION)}-py3-none-(manylinux|linux)_\S+\.whl", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        data = f"stepkernel-{VERSION}.data"
        for name in (f"{data}/scripts/stepkernel",
                     f"{data}/data/share/jupyter/kernels/stepkernel/kernel.json",
                     f"{data}/data/share/jupyter/kernels/stepkernel/logo-32x32.png",
                     f"{data}/data/share/jupyter/kernels/stepkernel/logo-64x64.png",
                     f"{data}/purelib/_stepkernel_pytest.py",
                     "stepkernel/__init__.py", "stepkernel/__main__.py", "stepkernel/client.py",
                     "stepkernel/walks/__init__.py", "stepkernel/walks/__main__.py"):
            assert name in names, sorted(names)
        spec = json.loads(zf.read(f"{data}/data/share/jupyter/kernels/stepkernel/kernel.json"))
        entry_points = zf.read(f"stepkernel-{VERSION}.dist-info/entry_points.txt").decode()
    # Bare `python`: jupyter_client runs the interpreter Jupyter itself runs on.
    assert spec["argv"] == ["python", "-m", "stepkernel", "kernel", "-f", "{connection_file}"]
    assert spec["interrupt_mode"] == "message" and spec["display_name"] == "Python (stepkernel)"
    # Everything but argv is the template `stepkernel install` writes.
    template = json.loads((ROOT / "kernelspec" / "kernel.json").read_text())
    assert {k: v for k, v in spec.items() if k != "argv"} == {k: v for k, v in template.items() if k != "argv"}
    assert "[pytest11]" in entry_points and "stepkernel = _stepkernel_pytest" in entry_points.replace("=", " = ")


def test_the_binary_and_python_m_stepkernel_run(venv, user_env, tmp_path):
    done = run(["stepkernel", "--version"], user_env, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"stepkernel {VERSION}", done
    assert shutil.which("stepkernel", path=user_env["PATH"]) == str(venv / "bin" / "stepkernel")
    done = run([venv / "bin" / "python", "-m", "stepkernel", "--version"], user_env, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"stepkernel {VERSION}", done
    # Arguments and the exit status pass through.
    done = run([venv / "bin" / "python", "-m", "stepkernel", "steps", "no_such_file.py"], user_env, cwd=tmp_path)
    assert done.returncode == 2 and "no_such_file.py" in done.stderr, done


def test_the_binary_finds_its_own_virtualenv_before_a_shim_on_path(venv, user_env, tmp_path):
    # Not activated, no .venv in the project, a pyenv-like shim first on PATH:
    # `stepkernel run` uses the python of the virtualenv it was installed into.
    log = tmp_path / "shim.log"
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "python3").write_text(f"#!/bin/sh\necho ran >> {log}\nexec /usr/bin/false\n")
    (shims / "python3").chmod(0o755)
    project = write(tmp_path / "project", {"test_where.py": """
        import sys

        def test_where():
            print("EXECUTABLE=" + sys.executable)
    """})
    env = {**user_env, "PATH": f"{shims}:{user_env['PATH']}"}
    done = run([venv / "bin" / "stepkernel", "run", "--on-error", "fail", "test_where.py", "--", "-s"],
               env, cwd=project)
    assert done.returncode == 0, done
    assert f"EXECUTABLE={venv / 'bin' / 'python'}" in done.stdout, done.stdout
    assert not log.exists(), "the shim on PATH was not needed"


KERNEL_SCRIPT = """
import json, sys
from jupyter_client.manager import KernelManager

km = KernelManager(kernel_name="stepkernel")
cmd = km.format_kernel_cmd()
km.start_kernel(cwd=sys.argv[1])
kc = km.client()
kc.start_channels()
try:
    kc.wait_for_ready(timeout=60)
    info = kc.kernel_info(reply=True, timeout=60)["content"]
    out = []
    reply = kc.execute_interactive(
        "import sys; print(sys.executable)", timeout=60,
        output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
    print(json.dumps({"cmd": cmd, "info": info, "status": reply["content"]["status"],
                      "executable": "".join(out).strip(), "resource_dir": km.kernel_spec.resource_dir}))
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=False)
"""


def test_jupyter_lists_the_kernelspec_and_starts_it(venv, user_env, tmp_path):
    listed = run([venv / "bin" / "jupyter", "kernelspec", "list", "--json"], user_env)
    assert listed.returncode == 0, listed.stderr
    specs = json.loads(listed.stdout)["kernelspecs"]
    spec_dir = venv / "share" / "jupyter" / "kernels" / "stepkernel"
    assert os.path.realpath(specs["stepkernel"]["resource_dir"]) == os.path.realpath(spec_dir)
    plain = run([venv / "bin" / "jupyter", "kernelspec", "list"], user_env)
    assert any(line.split()[:1] == ["stepkernel"] for line in plain.stdout.splitlines()), plain.stdout

    script = tmp_path / "start_kernel.py"
    script.write_text(KERNEL_SCRIPT)
    work = tmp_path / "notebooks"
    work.mkdir()
    done = run([venv / "bin" / "python", script, work], user_env, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    python = str(venv / "bin" / "python")
    assert result["cmd"][:3] == [python, "-m", "stepkernel"], result["cmd"]
    assert result["info"]["implementation"] == "stepkernel"
    assert result["info"]["language_info"]["name"] == "python"
    assert result["status"] == "ok"
    # The code runs in the interpreter Jupyter runs on.
    assert result["executable"] == python


def test_pytest_help_lists_the_flags_and_plain_pytest_is_untouched(venv, user_env, tmp_path):
    helped = run([venv / "bin" / "pytest", "--help"], user_env, cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    for flag in ("--stepkernel ", "--stepkernel-on-error", "--stepkernel-session-dir", "--stepkernel-quiet"):
        assert flag in helped.stdout, flag
    project = write(tmp_path / "project", {"test_x.py": FAILING})
    helped = run([venv / "bin" / "pytest", "--stepkernel", "--help"], user_env, cwd=project)
    assert helped.returncode == 0 and "--stepkernel-on-error" in helped.stdout, helped
    assert not (project / ".stepkernel").exists()
    plain = run([venv / "bin" / "pytest", "-q", "-p", "no:cacheprovider"], user_env, cwd=project)
    assert plain.returncode == 1, plain.stdout
    assert "1 failed, 1 passed" in plain.stdout
    assert "stepkernel" not in plain.stdout + plain.stderr
    assert not (project / ".stepkernel").exists()
    # The plugin is registered by its entry point, and can be turned off as any other.
    traced = run([venv / "bin" / "pytest", "--trace-config", "--co", "-q"], user_env, cwd=project)
    assert "_stepkernel_pytest" in traced.stdout, traced.stdout
    off = run([venv / "bin" / "pytest", "-p", "no:stepkernel", "--stepkernel"], user_env, cwd=project)
    assert off.returncode == 4 and "unrecognized arguments: --stepkernel" in off.stderr, off


WALKS = {
    "test_walks.py": """
        from stepkernel.walks import Action, walks


        class Put(Action):
            OPTIONS = [1, 2]

            def run(self, param, state):
                state.append(param)


        class Check(Action):
            OPTIONS = ["sum"]

            def run(self, param, state):
                assert sum(state) < 2


        test_put = walks([Put, Check], state=[], log_dir="traces")
    """,
}


def test_walks_import_from_the_wheel_under_plain_pytest_and_stepkernel(venv, user_env, tmp_path):
    """stepkernel.walks is in the wheel: no PYTHONPATH, under plain pytest, `stepkernel run` and `replay`."""
    project = write(tmp_path / "walks", WALKS)
    env = {k: v for k, v in user_env.items() if k != "PYTHONPATH"}
    plain = run([venv / "bin" / "pytest", "-q", "-p", "no:cacheprovider"], env, cwd=project)
    assert plain.returncode == 1 and "1 failed, 1 passed" in plain.stdout, plain.stdout + plain.stderr
    assert "test_put[Put:2-Check:sum]" in plain.stdout
    stepped = run([venv / "bin" / "stepkernel", "run", "--on-error", "fail"], env, cwd=project)
    assert stepped.returncode == 1 and "1 failed, 1 passed" in stepped.stdout, stepped.stdout + stepped.stderr
    replayed = run([venv / "bin" / "stepkernel", "replay", "--on-error", "fail", "traces/test_walks.test_put.jsonl",
                    "Put:2-Check:sum"], env, cwd=project)
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert "replaying walk Put:2-Check:sum (it failed in the trace): test_walks.py::test_put[Put:2-Check:sum]" \
        in replayed.stderr


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_pytest_stepkernel_agrees_with_plain_pytest_on_the_fidelity_cases(venv, user_env, tmp_path, workers):
    cases = tmp_path / "cases"
    shutil.copytree(SHARED / "fidelity" / "cases", cases)
    pytest_bin = venv / "bin" / "pytest"
    plain = run([pytest_bin, "-p", "no:cacheprovider", *workers, f"--junitxml={tmp_path / 'plain.xml'}"], user_env,
                cwd=cases)
    stepped = run([pytest_bin, "--stepkernel", "--stepkernel-on-error", "fail", "-p", "no:cacheprovider", *workers,
                   "--junitxml", str(tmp_path / "stepped.xml")], user_env, cwd=cases)
    assert stepped.returncode == plain.returncode, (plain.stdout, stepped.stdout + stepped.stderr)
    # It went through stepkernel (a session), not plain pytest.
    assert "stepkernel: session" in stepped.stdout + stepped.stderr, stepped.stdout + stepped.stderr
    (session,) = (cases / ".stepkernel" / "sessions").iterdir()
    if workers:
        # Both xdist workers were stepped, each with a kernel of its own.
        events = [json.loads(line) for line in (session / "events.jsonl").read_text().splitlines()]
        assert {e.get("worker") for e in events if e["event"] == "test_finish"} == {"gw0", "gw1"}
        assert sorted(p.name for p in (session / "workers").iterdir()) == ["gw0", "gw1"]
    compared = subprocess.run([sys.executable, str(SHARED / "fidelity" / "compare_junit.py"),
                               str(tmp_path / "plain.xml"), str(tmp_path / "stepped.xml")],
                              capture_output=True, text=True, timeout=60)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert re.search(r"[1-9]\d* passed, 0 failed", compared.stdout), compared.stdout


def test_pytest_stepkernel_pauses_on_failure_and_a_client_attaches(venv, user_env, tmp_path):
    project = write(tmp_path / "project", {"test_x.py": FAILING})
    out_path = tmp_path / "pytest.out"
    proc = subprocess.Popen([str(venv / "bin" / "pytest"), "--stepkernel", "-p", "no:cacheprovider", "test_x.py"],
                            cwd=project, env=user_env, stdout=open(out_path, "wb"), stderr=subprocess.STDOUT)
    client = None
    try:
        def attach_line():
            if proc.poll() is not None:
                raise AssertionError(f"pytest --stepkernel exited {proc.returncode}:\n{out_path.read_text()}")
            text = out_path.read_text(errors="replace")
            if "PAUSED" not in text:
                return None
            found = re.search(r"jupyter console --existing (\S+)", text)
            return found.group(1) if found else None

        connection_file = wait_for(attach_line, timeout=120, what="the pause and the attach command")
        assert "test_x.py::test_fails" in out_path.read_text()
        client = BlockingKernelClient(connection_file=connection_file)
        client.load_connection_file()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        reply, messages = execute(client, "print(total, __import__('sys').executable)")
        assert reply["status"] == "ok", reply
        assert stream_text(messages).split() == ["4", str(venv / "bin" / "python")]
        reply, _ = execute(client, "%fail")
        assert reply["status"] == "ok", reply
        # The finished run stays up while a client is attached: end it from the client.
        execute(client, "%end")
        # pytest's status is stepkernel run's: one test failed.
        assert proc.wait(timeout=120) == 1, out_path.read_text()
    finally:
        if client is not None:
            client.stop_channels()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_pytest_stepkernel_refuses_pdb(venv, user_env, tmp_path):
    project = write(tmp_path / "project", {"test_x.py": FAILING})
    for flag in ("--pdb", "--trace"):
        done = run([venv / "bin" / "pytest", "--stepkernel", flag], user_env, cwd=project)
        assert done.returncode == 4, done
        assert f"{flag} cannot be used with --stepkernel" in done.stderr, done.stderr
    assert not (project / ".stepkernel").exists()


def test_stepkernel_in_addopts_does_not_recurse_into_the_worker(venv, user_env, tmp_path):
    # The worker runs pytest itself and reads the same ini file: the plugin must stay inert there.
    project = write(tmp_path / "project", {
        "pytest.ini": """
            [pytest]
            addopts = --stepkernel --stepkernel-on-error=fail -p no:cacheprovider
        """,
        "test_x.py": FAILING,
    })
    done = run([venv / "bin" / "pytest", "-q"], user_env, cwd=project, timeout=180)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed" in done.stdout
    sessions = list((project / ".stepkernel" / "sessions").iterdir())
    assert len(sessions) == 1, sessions
    report = json.loads((sessions[0] / "report.json").read_text())
    assert report, "the stepkernel session wrote its report"


def test_python_m_stepkernel_passes_its_interpreter_before_virtual_env(venv, user_env, tmp_path):
    # $VIRTUAL_ENV names another environment (this test suite's); `python -m stepkernel`
    # runs the tests on the interpreter that launched it, the bare binary on $VIRTUAL_ENV's.
    other = pathlib.Path(sys.prefix)
    project = write(tmp_path / "project", {"test_where.py": """
        import os
        import sys

        def test_where():
            print("EXECUTABLE=" + sys.executable)
            # What the tests start chooses its own interpreter.
            assert "STEPKERNEL_PYTHON" not in os.environ
    """})
    env = {**user_env, "VIRTUAL_ENV": str(other)}
    argv = ["run", "--on-error", "fail", "test_where.py", "--", "-s"]
    launched = run([venv / "bin" / "python", "-m", "stepkernel", *argv], env, cwd=project)
    assert launched.returncode == 0, launched
    assert f"EXECUTABLE={venv / 'bin' / 'python'}\n" in launched.stdout, launched.stdout
    direct = run([venv / "bin" / "stepkernel", *argv], env, cwd=project)
    assert direct.returncode == 0, direct
    assert f"EXECUTABLE={other / 'bin' / 'python'}\n" in direct.stdout, direct.stdout


def plugin_module():
    import importlib.util

    path = ROOT / "python" / "stepkernel.data" / "purelib" / "_stepkernel_pytest.py"
    spec = importlib.util.spec_from_file_location("_stepkernel_pytest_source", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plugin_passes_pytest_its_own_arguments_only():
    strip = plugin_module()._pytest_args
    assert strip(["--stepkernel", "-q", "--stepkernel-on-error", "fail", "tests/", "-k", "cart"]) == \
        ["-q", "tests/", "-k", "cart"]
    assert strip(["--stepkernel-on-error=fail", "--stepkernel-quiet", "--junitxml", "out.xml", "--stepkernel"]) == \
        ["--junitxml", "out.xml"]
    assert strip(["--stepkernel-ports", "9000-9004", "-x", "--stepkernel-allow-client-shutdown"]) == ["-x"]
    # After `--` everything is pytest's, even a name that looks like an option of ours.
    assert strip(["--stepkernel", "--", "--stepkernel-quiet"]) == ["--", "--stepkernel-quiet"]


def test_the_sdist_holds_what_a_rust_toolchain_needs_to_build_the_wheel(tmp_path):
    maturin = shutil.which("maturin", path=str(pathlib.Path(sys.executable).parent))
    done = subprocess.run([maturin, "sdist", "-o", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (sdist,) = tmp_path.glob(f"stepkernel-{VERSION}.tar.gz")
    import tarfile

    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ("pyproject.toml", "Cargo.toml", "Cargo.lock", "src/main.rs", "interpreter/src/lib.rs",
                   "kernel/build.rs", "worker/stepkernel_worker/worker.py", "kernelspec/kernel.json",
                   "python/stepkernel/__main__.py", "python/stepkernel.data/purelib/_stepkernel_pytest.py",
                   "python/stepkernel.data/data/share/jupyter/kernels/stepkernel/kernel.json"):
        assert needed in names, needed
    assert not any(name.startswith(("target/", ".venv/", "bench/.venv/", "bench/.work/")) for name in names)


def test_python_m_stepkernel_without_its_binary_says_where_it_looked(tmp_path):
    # The package without the wheel's binary (a broken install): a clear error, not a traceback.
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "STEPKERNEL_PYTHON")}
    env.update(PYTHONPATH=str(ROOT / "python"), HOME=str(tmp_path / "home"), PATH="/usr/bin:/bin")
    done = run([bare / "bin" / "python", "-m", "stepkernel", "--version"], env, cwd=tmp_path)
    assert done.returncode == 2, done
    assert "could not find the stepkernel binary" in done.stderr, done.stderr
    assert f"  - {bare / 'bin'}\n" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
