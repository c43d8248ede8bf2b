"""Shared by the tests: the Rust binaries they drive, built once per run with cargo.

A missing tool (cargo) is a failure, never a skip."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "target" / "debug" / "examples"


@pytest.fixture(scope="session")
def rust_bin():
    """Builds the Rust main processes of the tests; returns a function giving the path
    of one by name."""
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("cargo is not on PATH: the Python client's tests need the Rust toolchain")
    subprocess.run(
        [cargo, "build", "--example", "python_host", "--example", "python_plugin"],
        cwd=ROOT,
        check=True,
    )
    return lambda name: str(EXAMPLES / name)


def run_host(path, *args, timeout=120):
    """Runs a Rust main process with this interpreter for its Python children."""
    env = dict(os.environ, YUKICOMM_PYTHON=sys.executable)
    for var in ("YUKICOMM_NAME", "YUKICOMM_FD", "YUKICOMM_HUB", "YUKICOMM_TOKEN", "YUKICOMM_JOIN",
                "YUKICOMM_STATE_DIR"):
        env.pop(var, None)
    return subprocess.run(
        [path, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
