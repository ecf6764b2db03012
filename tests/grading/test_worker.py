"""The math-verify worker from every kind of caller: a script on stdin, `python -c`, an unguarded
file (its top level runs once), a stray module in the caller's folder, threads with pathological
checks among them, two torchrun ranks; it dies with a SIGKILLed caller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mathgrpo.grading import judge

SRC = Path(__file__).resolve().parents[2] / "src"
SLACK_S = 1.0  # the worker's answer after a kill, on a loaded 2-core machine
# Pairs only math-verify can decide (no cheap path does): the caller scripts print one verdict each.
HARD_PAIRS = [
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True),
    ("(x+1)^2", "x^2+2x+1", True),
    ("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{3}{4}", True),
    ("x^2+2x+2", "(x+1)^2", False),
    ("\\sqrt{3}", "\\sqrt{2}", False),
]
CALLER = textwrap.dedent(
    f"""
    import os, sys
    with open(os.environ["TOP_LEVEL_LOG"], "a") as f:
        f.write("top level ran\\n")
    from mathgrpo.grading import judge
    for pred, gold, _ in {HARD_PAIRS!r}:
        d = judge.decide(pred, gold)
        print(d.path, d.equal)
    """
)


def _env(tmp_path: Path) -> dict:
    """This checkout first on the path, and a log the caller's top level appends to."""
    return {**os.environ, "PYTHONPATH": str(SRC), "TOP_LEVEL_LOG": str(tmp_path / "top.log"), "OMP_NUM_THREADS": "1"}


def _expect_verdicts(done: subprocess.CompletedProcess, tmp_path: Path) -> None:
    """Every hard pair decided by math-verify with its label; the caller's top level ran exactly once."""
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[: len(HARD_PAIRS)] == [f"math-verify {label}" for _, _, label in HARD_PAIRS]
    assert (tmp_path / "top.log").read_text() == "top level ran\n"
    assert "Traceback" not in done.stderr


def test_script_on_stdin(tmp_path):
    """`python - < script`: real math-verify verdicts (the old multiprocessing workers answered False)."""
    done = subprocess.run([sys.executable, "-"], input=CALLER, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    _expect_verdicts(done, tmp_path)


def test_python_dash_c(tmp_path):
    """`python -c script`: the same verdicts."""
    done = subprocess.run([sys.executable, "-c", CALLER], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    _expect_verdicts(done, tmp_path)


def test_unguarded_script_runs_its_top_level_once(tmp_path):
    """A script file without `if __name__ == "__main__":`: its top level runs once, not once per worker."""
    script = tmp_path / "train_like.py"
    script.write_text(CALLER)
    done = subprocess.run([sys.executable, str(script)], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    _expect_verdicts(done, tmp_path)


def test_a_stray_module_in_the_callers_folder_does_not_reach_the_worker(tmp_path):
    """A `sympy.py` beside a script on stdin (its folder is on the caller's path): the worker,
    started with `-P`, imports the real sympy and answers."""
    (tmp_path / "sympy.py").write_text("raise SystemExit('stray sympy imported')\n")
    done = subprocess.run([sys.executable, "-"], input=CALLER, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    _expect_verdicts(done, tmp_path)


def test_two_torchrun_ranks(tmp_path):
    """Two gloo ranks under torchrun each start their own worker and get the same verdicts."""
    script = tmp_path / "ranks.py"
    script.write_text(
        "import torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n" + CALLER + "dist.barrier()\ndist.destroy_process_group()\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--tee", "1", str(script)]
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for label in ("True", "False"):
        count = sum(1 for _, _, lab in HARD_PAIRS if str(lab) == label)
        assert done.stdout.count(f"math-verify {label}") == 2 * count
    assert (tmp_path / "top.log").read_text() == "top level ran\n" * 2


@pytest.mark.exclusive
@pytest.mark.parametrize("slow,trivial", [(1, 32), (20, 1)])
def test_threads_with_pathological_checks(slow, trivial):
    """32 threads grade hard pairs while one grades a sum sympy would work on for minutes (and the
    issue's case: 20 such sums and one trivial check), all under a 3 s limit: every trivial check
    gets its real verdict within the limit; each pathological one ends within the limit plus slack,
    as a timeout."""
    judge.warm_up()
    limit, times, verdicts = 3.0, {}, {}

    def run(i: int) -> None:
        pred, gold, _ = ("\\sum_{k=1}^{10^{4}} k^{k}", "3", False) if i < slow else HARD_PAIRS[i % len(HARD_PAIRS)]
        t0 = time.monotonic()
        verdicts[i] = judge.decide(pred, gold, timeout=limit)
        times[i] = time.monotonic() - t0

    threads = [threading.Thread(target=run, args=(i,)) for i in range(slow + trivial)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    easy = range(slow, slow + trivial)
    print(f"\n{trivial} trivial + {slow} pathological: trivial checks max {max(times[i] for i in easy):.3f} s, "
          f"pathological max {max(times[i] for i in range(slow)):.3f} s")
    assert all(verdicts[i].path == "timeout" and times[i] <= limit + SLACK_S for i in range(slow))
    assert [(verdicts[i].path, verdicts[i].equal) for i in easy] == [("math-verify", HARD_PAIRS[i % len(HARD_PAIRS)][2]) for i in easy]
    assert max(times[i] for i in easy) < limit


KILLED_CALLER = textwrap.dedent(
    """
    import threading, time
    from mathgrpo.grading import judge, client
    judge.warm_up()
    threading.Thread(target=judge.is_equivalent, args=("\\\\sum_{k=1}^{10^{4}} k^{k}", "3", 60.0), daemon=True).start()
    time.sleep(1.0)
    print(client.get_client().proc.pid, flush=True)
    time.sleep(60)
    """
)


def _children(pid: int) -> list:
    """Pids of the processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.exclusive
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the worker's children")
def test_worker_and_its_checks_die_with_a_killed_caller(tmp_path):
    """SIGKILL the caller while a check runs: the worker and the check's process are gone within
    2 s, and nothing (no BrokenPipeError traceback) is printed."""
    caller = subprocess.Popen([sys.executable, "-c", KILLED_CALLER], env=_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    worker = int(caller.stdout.readline())
    checks = _children(worker)
    assert _alive(worker) and checks
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5 and any(_alive(p) for p in [worker, *checks]):
        time.sleep(0.05)
    gone_after = time.monotonic() - t0
    print(f"\nworker gone {gone_after:.2f} s after the caller's SIGKILL")
    assert not any(_alive(p) for p in [worker, *checks]) and gone_after < 2.0
    assert caller.stderr.read() == ""
