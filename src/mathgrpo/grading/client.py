"""The caller's side of the math-verify worker: start `python -m mathgrpo.grading.worker`, send it
checks from any thread, wait for each reply until the check's deadline.

One worker per caller process, shared by all its threads; a forked child of the caller starts its
own. When the worker cannot start or dies during a check, `GradingError` is raised, never a verdict.
"""

from __future__ import annotations

import json
import os
import select
import sys
import threading
import time
from typing import Optional

from ..errors import Error

# The one-off start (import math-verify and sympy) may take this long; it is not part of a check.
STARTUP_TIMEOUT_S = 120.0
# How long past a check's deadline the caller waits for the worker's answer (the worker kills
# the executor at the deadline and answers then; this covers the pipe and a loaded machine).
GRACE_S = 1.0


class GradingError(Error, RuntimeError):
    """The math-verify path cannot run (the worker did not start or died during a check)."""


def _package_root() -> str:
    """The folder holding this copy of `mathgrpo`, so the worker imports the same copy."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _worker_env() -> dict:
    """The caller's environment with this package's folder first on PYTHONPATH."""
    env = dict(os.environ)
    paths = [_package_root()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class Client:
    """The caller's handle on one worker process, shared by all threads of the caller."""

    def __init__(self) -> None:
        self.proc = None
        self.stderr = None
        self.pending: dict = {}  # request id -> [threading.Event, reply]
        self.next_id = 0
        self.lock = threading.Lock()

    def _spawn(self) -> None:
        """Start the worker program and wait for its ready line (under `self.lock`)."""
        import subprocess
        import tempfile

        if not sys.executable:
            raise GradingError("cannot start the math-verify worker: sys.executable is empty")
        self.stderr = tempfile.TemporaryFile()
        safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # the caller's folder is not put on sys.path
        self.proc = subprocess.Popen(
            [sys.executable, *safe_path, "-m", "mathgrpo.grading.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=_worker_env(), bufsize=0,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], STARTUP_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else b""
        if not line.startswith(b'{"ready"'):
            self._fail_start(line)
        threading.Thread(target=self._read_replies, args=(self.proc,), daemon=True, name="mathgrpo-grader").start()

    def _fail_start(self, line: bytes) -> None:
        """Stop a worker that did not start and raise with what it printed."""
        self.proc.kill()
        self.proc.wait()
        self.stderr.seek(0)
        said = (line + self.stderr.read()).decode(errors="replace").strip()[-2000:]
        self.proc = None
        raise GradingError(f"the math-verify worker ({sys.executable} -m mathgrpo.grading.worker) did not start: {said or 'no output'}")

    def _read_replies(self, proc) -> None:
        """Hand each reply line to the thread waiting for it; at EOF fail every check still waiting."""
        for line in open(proc.stdout.fileno(), "rb", closefd=False):
            reply = json.loads(line)
            with self.lock:
                slot = self.pending.pop(reply["id"], None)
            if slot is not None:
                slot[1] = reply
                slot[0].set()
        with self.lock:
            if self.proc is proc:
                self.proc = None
            dead, self.pending = self.pending, {}
        for slot in dead.values():
            slot[1] = {"status": "dead"}
            slot[0].set()

    def start(self) -> None:
        """Start the worker if it is not running (the one-off start is not part of any check's limit)."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._spawn()

    def _send(self, request: dict) -> tuple:
        """Register and write one request; (its id, its slot, set when the reply comes)."""
        slot = [threading.Event(), None]
        with self.lock:
            self.next_id += 1
            rid = request["id"] = self.next_id
            self.pending[rid] = slot
            try:
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
            except (OSError, AttributeError) as exc:
                self.pending.pop(rid, None)
                raise GradingError(f"the math-verify worker is gone ({type(exc).__name__})") from exc
        return rid, slot

    def verify(self, pred: str, gold: str, raw_pred: str, raw_gold: str, deadline: float, plain_only: bool = False,
               rel_tol: float = 1e-4) -> dict:
        """The worker's reply for one check that must end by `deadline` (time.monotonic()).

        {"status": "ok", "equal", "rule", "pred_form", "gold_form", "how", "note"}, {"status": "timeout"}
        or {"status": "error", "message"} (math-verify or a rule failed on this input). `plain_only`:
        read only the raw strings, as plain math-verify does (for answers too long to clean).
        `rel_tol`: the tolerance for decimal approximations. Raises GradingError when the worker
        cannot be reached.
        """
        self.start()
        rid, slot = self._send({"pred": pred, "gold": gold, "raw_pred": raw_pred, "raw_gold": raw_gold,
                                "deadline": deadline, "plain_only": plain_only, "rel_tol": rel_tol})
        if not slot[0].wait(max(0.0, deadline - time.monotonic()) + GRACE_S):
            with self.lock:
                self.pending.pop(rid, None)
            return {"status": "timeout"}
        if slot[1]["status"] == "dead":
            raise GradingError(self.death_note())
        return slot[1]

    def death_note(self) -> str:
        """Why the worker is gone, with the end of what it printed."""
        said = ""
        if self.stderr is not None:
            self.stderr.seek(0)
            said = self.stderr.read().decode(errors="replace").strip()[-1000:]
        return f"the math-verify worker died during a check{': ' + said if said else ''}"


_client: Optional[Client] = None
_client_lock = threading.Lock()


def get_client() -> Client:
    """The process-wide client (one worker process per caller process)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = Client()
        return _client


def _forget_after_fork() -> None:
    """In a forked child of the caller: drop the parent's worker (its reply reader did not come
    along); the child's first hard check starts a worker of its own."""
    global _client, _client_lock
    if _client is not None and _client.proc is not None:
        _client.proc.stdin.close()  # the child's copy only: the parent's worker still sees its caller
    _client, _client_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
