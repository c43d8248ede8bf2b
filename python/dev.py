#!/usr/bin/env python3
"""The Python client's tasks, from a machine with only the Rust toolchain and python3:

    python3 python/dev.py test       # the Python client's tests (pytest, real Rust main processes)
    python3 python/dev.py example    # the documented example with a Python child (Ctrl-C stops it)
    python3 python/dev.py bench      # the benchmark (BENCHMARKS.md, "Python client")
    python3 python/dev.py redis      # the Redis endpoint's tests with redis-py (python/tests_redis)

Each first makes (or refreshes) a virtual environment in target/py-venv with this
package and pytest installed (`pip install ./python pytest`; the `redis` task also
installs redis-py). Arguments after the task
go to pytest, the example or the benchmark."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "target" / "py-venv"
PY = VENV / "bin" / "python"


def run(cmd, **kw):
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], **kw).returncode


def ensure_venv(extra=()):
    if not PY.exists():
        if run([sys.executable, "-m", "venv", VENV]) != 0:
            sys.exit(
                "cannot make a virtual environment with `python3 -m venv` "
                "(on Debian and Ubuntu: apt-get install python3-venv)"
            )
    code = run([PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                ROOT / "python", "pytest", *extra])
    if code != 0:
        sys.exit("pip could not install the package, pytest " + " ".join(extra))


def main():
    task = sys.argv[1] if len(sys.argv) > 1 else "test"
    rest = sys.argv[2:]
    ensure_venv(("redis",) if task == "redis" else ())
    env = dict(os.environ, YUKICOMM_PYTHON=str(PY))
    if task == "test":
        code = run([PY, "-m", "pytest", "-q", "tests", *rest], cwd=ROOT / "python", env=env)
    elif task == "redis":
        code = run([PY, "-m", "pytest", "-q", "tests_redis", *rest], cwd=ROOT / "python", env=env)
    elif task == "example":
        code = run(["cargo", "run", "--example", "python_plugin", "--", *rest], cwd=ROOT, env=env)
    elif task == "bench":
        code = run(["cargo", "build", "--release", "--example", "python_bench"], cwd=ROOT)
        if code == 0:
            code = run([ROOT / "target" / "release" / "examples" / "python_bench", *rest],
                       cwd=ROOT, env=env)
    else:
        sys.exit(f"unknown task '{task}': test, redis, example or bench")
    sys.exit(code)


if __name__ == "__main__":
    main()
