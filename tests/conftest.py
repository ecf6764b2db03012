"""What every test shares.

Under pytest-xdist (`-n auto`, the default in pyproject.toml) a test marked `exclusive` runs with no other
worker's test beside it. Such tests assert wall-clock bounds (a grading check killed within its time limit plus
slack); on a 2-core machine a training test in the other worker would eat the slack. Every test holds a shared
lock on one file of the run while it runs (setup, call and teardown, so module fixtures count too); an exclusive
one holds it alone. Without xdist nothing is locked.

Tests of our Triton kernels through Triton's CPU interpreter (`@pytest.mark.triton_interpreter`) take the
`interpreted` fixture, which runs a script under TRITON_INTERPRET=1 and skips the test with the reason where the
interpreter cannot run: triton not installed, a GPU machine (the compiled kernels run there for real: the
rollout and learning benchmarks), or an interpreter that fails a small probe kernel here. Triton 3.6's
interpreter fails under numpy 2.4 ("only 0-dimensional arrays can be converted to Python scalars": numpy 2.4
refuses int() of a one-element array, which the interpreter does for loop bounds); with numpy 2.3, or with
Triton 3.9, the same tests pass. The README's environment has no Triton (CPU torch does not bring it); CI adds it
in `.ci/kernels`, where a skip fails instead.
"""

import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

try:
    import fcntl
except ImportError:  # not on Windows: tests then run side by side regardless
    fcntl = None


def _lock_file() -> str:
    """The lock of this test run (xdist gives its workers one id a run), or '' outside xdist."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return os.path.join(tempfile.gettempdir(), f"mathgrpo-tests-{run}.lock") if run and fcntl else ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    path = _lock_file()
    if not path:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if item.get_closest_marker("exclusive") else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


SRC = str(Path(__file__).resolve().parents[1] / "src")

PROBE = """
import torch
import triton
import triton.language as tl


@triton.jit
def _probe(X, n, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(0, n, BLOCK):
        acc += tl.load(X + i + tl.arange(0, BLOCK), mask=i + tl.arange(0, BLOCK) < n, other=0.0)
    tl.store(X + tl.arange(0, BLOCK), acc)


x = torch.ones(64)
_probe[(1,)](x, 64, BLOCK=16)
assert x[0].item() == 4.0, x
print("ok")
"""


def run_interpreted(script: str) -> subprocess.CompletedProcess:
    """`script` in a fresh Python with Triton's CPU interpreter on and this checkout's src first on the path."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)


@functools.lru_cache(maxsize=None)
def interpreter_problem() -> str:
    """Why Triton's CPU interpreter cannot run our kernel tests here ("" when it can)."""
    import torch

    versions = subprocess.run([sys.executable, "-c", "import numpy, triton; print(triton.__version__, numpy.__version__)"],
                              capture_output=True, text=True)
    if versions.returncode != 0:
        return "triton not installed"
    if torch.cuda.is_available():
        return "the Triton interpreter tests are for machines without a GPU (there the compiled kernels run for real)"
    triton_version, numpy_version = versions.stdout.split()
    probe = run_interpreted(PROBE)
    if probe.returncode == 0 and "ok" in probe.stdout:
        return ""
    error = (probe.stderr.strip().splitlines() or ["no output"])[-1][:300]
    hint = "; Triton 3.6's interpreter needs numpy < 2.4" if "0-dimensional arrays" in error else ""
    return f"Triton {triton_version}'s CPU interpreter fails a probe kernel with numpy {numpy_version} ({error}){hint}"


@pytest.fixture
def interpreted():
    """Run a script under Triton's interpreter; it passes when it exits 0 and prints "ok". The test is skipped
    with the reason where the interpreter cannot run (asked once a worker, by the first test that needs it); it
    fails instead where MATHGRPO_REQUIRE_TRITON_INTERPRETER is set (CI's kernel step, `.ci/kernels`)."""
    problem = interpreter_problem()
    if problem and os.environ.get("MATHGRPO_REQUIRE_TRITON_INTERPRETER"):
        pytest.fail(f"the Triton interpreter tests must run here: {problem}")
    if problem:
        pytest.skip(problem)

    def run(script: str) -> str:
        result = run_interpreted(script)
        assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
        return result.stdout

    return run
