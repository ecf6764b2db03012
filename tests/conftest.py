"""What every test shares: under pytest-xdist (`-n auto`, the default in pyproject.toml) a test marked
`exclusive` runs with no other worker's test beside it.

Such tests assert wall-clock bounds (a grading check killed within its time limit plus slack); on a 2-core
machine a training test in the other worker would eat the slack. Every test holds a shared lock on one file
of the run while it runs (setup, call and teardown, so module fixtures count too); an exclusive one holds it
alone. Without xdist nothing is locked.
"""

import os
import tempfile

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
