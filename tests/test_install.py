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
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["display_name"] == "Python (stepkernel)"
    assert spec["language"] == "python"
    assert spec["interrupt_mode"] == "message"
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
    assert install_kernelspec(prefix, env=clean_env()).returncode == 0
    check_spec_dir(prefix / "share" / "jupyter" / "kernels" / "stepkernel", None)


def test_install_user_and_name(tmp_path):
    data = tmp_path / "data"
    done = subprocess.run(
        [stepkernel_bin(), "install", "--user", "--name", "stepkernel-dev"],
        capture_output=True, text=True, env=clean_env(JUPYTER_DATA_DIR=str(data)), timeout=60,
    )
    assert done.returncode == 0, done.stderr
    check_spec_dir(data / "kernels" / "stepkernel-dev", None)


def test_install_sys_prefix(tmp_path):
    venv = tmp_path / "venv"
    done = subprocess.run(
        [stepkernel_bin(), "install", "--sys-prefix"],
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
