"""`stepkernel install`: the kernelspec Jupyter finds and lists."""

from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys

from conftest import PYTHON, install_kernelspec, stepkernel_bin

JUPYTER = str(pathlib.Path(sys.executable).parent / "jupyter")


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "JUPYTER_PATH")}
    env.update(extra)
    return env


def png_size(path: pathlib.Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def check_spec_dir(spec_dir: pathlib.Path, python: str | None):
    """Checks kernel.json and the logos; `python` is the recorded --python (None: none recorded)."""
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["display_name"] == "Python (stepkernel)"
    assert spec["language"] == "python"
    assert spec["interrupt_mode"] == "message"
    # JupyterLab offers its debugger for kernels whose spec says so (stepkernel answers it natively).
    assert spec["metadata"] == {"debugger": True}
    argv = spec["argv"]
    assert os.path.realpath(argv[0]) == os.path.realpath(stepkernel_bin())
    assert argv[1:4] == ["kernel", "-f", "{connection_file}"]
    if python is None:
        assert "--python" not in argv
    else:
        assert argv[4:] == ["--python", python]
    assert png_size(spec_dir / "logo-32x32.png") == (32, 32)
    assert png_size(spec_dir / "logo-64x64.png") == (64, 64)
    return spec


def test_install_prefix_is_listed_by_jupyter(tmp_path):
    prefix = tmp_path / "prefix"
    done = install_kernelspec(prefix, "--python", PYTHON, env=clean_env())
    assert done.returncode == 0, done.stderr
    spec_dir = prefix / "share" / "jupyter" / "kernels" / "stepkernel"
    assert str(spec_dir) in done.stdout
    check_spec_dir(spec_dir, PYTHON)

    env = clean_env(JUPYTER_PATH=str(prefix / "share" / "jupyter"))
    listed = subprocess.run([JUPYTER, "kernelspec", "list", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert listed.returncode == 0, listed.stderr
    specs = json.loads(listed.stdout)["kernelspecs"]
    assert "stepkernel" in specs
    entry = specs["stepkernel"]
    assert os.path.realpath(entry["resource_dir"]) == os.path.realpath(spec_dir)
    assert entry["spec"]["interrupt_mode"] == "message"
    assert entry["spec"]["display_name"] == "Python (stepkernel)"
    plain = subprocess.run([JUPYTER, "kernelspec", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert any(line.split()[:1] == ["stepkernel"] for line in plain.stdout.splitlines()), plain.stdout
    # Without JUPYTER_PATH pointing there, it is not found (the test is not fooled by another install).
    unlisted = subprocess.run(
        [JUPYTER, "kernelspec", "list", "--json"], capture_output=True, text=True, env=clean_env(), timeout=60
    )
    other = json.loads(unlisted.stdout)["kernelspecs"].get("stepkernel")
    assert other is None or os.path.realpath(other["resource_dir"]) != os.path.realpath(spec_dir)


def test_reinstall_overwrites(tmp_path):
    prefix = tmp_path / "prefix"
    assert install_kernelspec(prefix, "--python", PYTHON, env=clean_env()).returncode == 0
    done = install_kernelspec(prefix, "--python", "auto", env=clean_env())
    assert done.returncode == 0, done.stderr
    assert "chooses its interpreter when it starts" in done.stdout
    check_spec_dir(prefix / "share" / "jupyter" / "kernels" / "stepkernel", None)


def real_executable(python: str) -> str:
    """What `python` reports as sys.executable (a shim reports the interpreter it runs)."""
    out = subprocess.run([python, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_install_records_the_interpreter_chosen_now(tmp_path):
    # No virtualenv active and none in the project: python3 on PATH, a shim resolved.
    real = real_executable(PYTHON)
    shims = tmp_path / "manager" / "shims"
    shims.mkdir(parents=True)
    (shims / "python3").write_text(f'#!/bin/sh\nexec "{real}" "$@"\n')
    (shims / "python3").chmod(0o755)
    project = tmp_path / "project"
    project.mkdir()
    env = clean_env(PATH=f"{shims}:/usr/bin:/bin", XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("STEPKERNEL_PYTHON", None)
    prefix = tmp_path / "prefix"
    done = subprocess.run([stepkernel_bin(), "install", "--prefix", str(prefix)], cwd=project,
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    check_spec_dir(prefix / "share" / "jupyter" / "kernels" / "stepkernel", real)
    assert f"The kernel runs {real}" in done.stdout

    # A project .venv comes before python3 on PATH.
    subprocess.run([real, "-m", "venv", "--without-pip", str(project / ".venv")], check=True, timeout=120)
    done = subprocess.run([stepkernel_bin(), "install", "--prefix", str(prefix)], cwd=project,
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    check_spec_dir(prefix / "share" / "jupyter" / "kernels" / "stepkernel", str(project / ".venv" / "bin" / "python"))


def test_install_with_a_missing_interpreter_fails_and_writes_nothing(tmp_path):
    prefix = tmp_path / "prefix"
    done = install_kernelspec(prefix, "--python", str(tmp_path / "no-such-python"), env=clean_env())
    assert done.returncode == 2
    assert "--python names" in done.stderr and "no-such-python" in done.stderr, done.stderr
    assert not prefix.exists()


def test_install_user_and_name(tmp_path):
    data = tmp_path / "data"
    done = subprocess.run(
        [stepkernel_bin(), "install", "--user", "--name", "stepkernel-dev", "--python", "auto"],
        capture_output=True, text=True, env=clean_env(JUPYTER_DATA_DIR=str(data)), timeout=60,
    )
    assert done.returncode == 0, done.stderr
    check_spec_dir(data / "kernels" / "stepkernel-dev", None)


def test_install_sys_prefix(tmp_path):
    venv = tmp_path / "venv"
    done = subprocess.run(
        [stepkernel_bin(), "install", "--sys-prefix", "--python", "auto"],
        capture_output=True, text=True, env=clean_env(VIRTUAL_ENV=str(venv)), timeout=60,
    )
    assert done.returncode == 0, done.stderr
    check_spec_dir(venv / "share" / "jupyter" / "kernels" / "stepkernel", None)
    # Without an environment to install into, it says what to do instead.
    failed = subprocess.run(
        [stepkernel_bin(), "install", "--sys-prefix"], capture_output=True, text=True, env=clean_env(), timeout=60
    )
    assert failed.returncode != 0
    assert "--prefix" in failed.stderr
    assert not (tmp_path / "share").exists()
