"""The caller's side of the worker: a worker that cannot start or dies raises GradingError (never a
verdict) and the next check starts a fresh one; a forked caller gets a worker of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

from mathgrpo.grading import client as grading_client
from mathgrpo.grading import judge

from test_worker import CALLER, HARD_PAIRS, SRC, _env, _expect_verdicts


def test_a_worker_that_cannot_start_raises(tmp_path):
    """A broken math-verify install: the first hard check raises GradingError naming the cause, never False."""
    broken = tmp_path / "broken" / "math_verify"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('math_verify is broken here')\n")
    script = "from mathgrpo import grading\nprint(grading.is_equivalent('1', '1'))\ngrading.is_equivalent('\\\\sqrt{3}', '\\\\sqrt{2}')\n"
    env = {**_env(tmp_path), "PYTHONPATH": f"{SRC}{os.pathsep}{broken.parent}"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout == "True\n"  # the cheap path needs no worker
    assert done.returncode == 1
    assert "GradingError: the math-verify worker" in done.stderr and "math_verify is broken here" in done.stderr

def test_a_worker_killed_mid_check_raises_then_restarts():
    """The worker killed under a running check: that check raises GradingError; the next one starts a fresh worker."""
    judge.warm_up()
    client = grading_client.get_client()
    out = {}

    def run() -> None:
        try:
            out["equal"] = judge.is_equivalent("\\sum_{k=1}^{10^{4}} k^{k}", "3", timeout=20)
        except judge.GradingError as exc:
            out["error"] = str(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)
    client.proc.kill()
    thread.join(timeout=10)
    assert "died during a check" in out["error"]
    assert judge.is_equivalent("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}")

def test_a_forked_caller_gets_a_worker_of_its_own(tmp_path):
    """A caller that forks after grading (a data-loader worker, say): the child's checks start their
    own worker and get real verdicts; the parent's still work."""
    script = CALLER + textwrap.dedent(
        f"""
        pid = os.fork()
        if pid == 0:
            print("child", judge.decide(*{HARD_PAIRS[0][:2]!r}).path, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("parent", judge.decide(*{HARD_PAIRS[1][:2]!r}).path)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    _expect_verdicts(done, tmp_path)
    assert done.stdout.split("\n")[len(HARD_PAIRS):] == ["child math-verify", "parent math-verify", ""]
