"""math-verify behind a hard time limit, in a worker process that never runs the caller's code.

The worker is a separate program, `python -m mathgrpo.grading_worker`, started with
`subprocess` and spoken to over its own stdin/stdout, one JSON line per request and per reply.
It imports math-verify and sympy once, then runs each check on an executor, a child forked from
it: an idle one if there is one, else a new one (a fork of the warm worker, ~20 ms). The worker
kills an executor at its check's deadline and forks afresh later. So
  - the caller's `__main__` is never imported (a script on stdin, `python -c`, an unguarded
    file, a notebook, a torchrun rank: all the same to the worker);
  - a check stuck in sympy holds no other check up: new checks start beside it on other
    executors, and after SLOW_S it only gets the CPU they leave (reniced); the deadline is
    absolute (CLOCK_MONOTONIC is shared by the processes of one machine), so the limit bounds
    the whole call, the time in the worker's queue included;
  - the worker dies with its caller: it exits when its stdin closes (the caller's end of the
    pipe closes when the caller dies, even by SIGKILL) or when it is re-parented, and each
    executor dies with the worker (PR_SET_PDEATHSIG on Linux).
When the worker cannot start or dies, the caller gets a `GradingError`, never a verdict.

Nothing here normalises or decides fast paths: `grading.py` does that and only sends what is left.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import sys
import threading
import time
from functools import lru_cache
from typing import Optional

# The one-off start (import math-verify and sympy) may take this long; it is not part of a check.
STARTUP_TIMEOUT_S = 120.0
# How long past a check's deadline the caller waits for the worker's answer (the worker kills
# the executor at the deadline and answers then; this covers the pipe and a loaded machine).
GRACE_S = 1.0
# Address space an executor may add to what it inherited, so a runaway sympy integer cannot take the
# host's memory.
CHILD_EXTRA_MEMORY_BYTES = 2 * 1024**3
# Checks start at once while fewer than PARALLEL younger than YOUNG_S run (most checks take 1-50 ms
# on a warm executor: reusing one beats forking many); an older one may be stuck in sympy, so it
# does not hold the others up. The rest wait in the worker's queue, their deadline running. A
# check running longer than SLOW_S has its executor reniced to SLOW_NICE, so it gets only the CPU
# that newer checks leave. At most MAX_CHILDREN executors run at once; KEEP_IDLE idle ones are kept.
PARALLEL = max(2, os.cpu_count() or 1)
YOUNG_S = 0.1
SLOW_S = 0.5
SLOW_NICE = 19
MAX_CHILDREN = 64
KEEP_IDLE = PARALLEL
_PR_SET_PDEATHSIG = 1
_protocol_fd = 1  # in the worker: the caller's pipe for replies (a copy of stdout made at start)
# Checks the worker runs once at start, one per kind of answer, so that the parts of sympy and
# math-verify loaded on first use are loaded before executors fork (an executor started cold
# spends 0.2-0.8 s loading them on its first check).
WARM_UP_PAIRS = [
    ("1", "1"), ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"), ("(x+1)^2", "x^2+2x+1"), ("x+y=1", "y=1-x"),
    ("\\{1,2\\}", "(1,2)"), ("[0,1)", "(0,1]"), ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1&2\\end{pmatrix}"),
    ("\\sin x", "\\cos x"), ("10\\%", "0.1"), ("x<2", "2>x"), ("\\pi", "3.14159"), ("e^{i\\pi}", "-1"),
    ("\\text{A}", "A"), ("1,2", "2,1"), ("\\log_2 8", "3"), ("\\infty", "-\\infty"), ("x \\in (0,1)", "(0,1)"),
]


class GradingError(RuntimeError):
    """The math-verify path cannot run (the worker did not start, died, or stopped answering)."""


# --- inside an executor: one check -------------------------------------------------------------------


def _extraction_config() -> list:
    """The one math-verify extraction setting for our cleaned answers: LaTeX (boxed first), then plain."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def _describe(parsed: list) -> str:
    """A short printable form of a math-verify parse (its first item is the sympy object)."""
    return str(parsed[0])[:200] if parsed else "<nothing parsed>"


def _read(cleaned: str, raw: str) -> tuple:
    """math-verify's reading of one side: the cleaned form as inline math, or, when nothing can be
    read from it, the raw string as plain math-verify reads it (default settings); and which it was."""
    from math_verify import parse

    parsed = parse(f"${cleaned}$", _extraction_config(), parsing_timeout=None)
    if parsed or raw == cleaned:
        return parsed, "cleaned"
    return _read_plain(raw), "raw"


def _read_plain(raw: str) -> list:
    """The raw string as plain math-verify reads it: parse(raw) with default settings."""
    from math_verify import parse

    return parse(raw, parsing_timeout=None)


_read_gold = lru_cache(maxsize=4096)(_read)  # a problem's gold is checked G times a step
_DELIMITED = re.compile(r"(?<!\\)\$|\\[(\[]|\\boxed|\\fbox")


def delimited(text: str) -> bool:
    """True for text with math delimiters (`$`, `\\(`, `\\[`) or a box: a sentence or a solution
    rather than a bare answer, which plain math-verify is built to read."""
    return bool(_DELIMITED.search(text))


def check(request: dict) -> dict:
    """The verdict on one request (runs in an executor): the cleaned readings; when they differ and
    a side is delimited text, also the raw strings as plain math-verify reads them (equal if either says so)."""
    from math_verify import verify

    if request.get("plain_only"):
        g, p = _read_plain(request["raw_gold"]), _read_plain(request["raw_pred"])
        equal = bool(verify(g, p, timeout_seconds=None))
        return {"status": "ok", "equal": equal, "pred_form": _describe(p), "gold_form": _describe(g), "how": "raw"}
    g, g_how = _read_gold(request["gold"], request["raw_gold"])
    p, p_how = _read(request["pred"], request["raw_pred"])
    equal = bool(verify(g, p, timeout_seconds=None))
    how = "cleaned" if g_how == p_how == "cleaned" else "raw"
    if not equal and (delimited(request["raw_gold"]) or delimited(request["raw_pred"])):
        g2, p2 = _read_plain(request["raw_gold"]), _read_plain(request["raw_pred"])
        if verify(g2, p2, timeout_seconds=None):
            equal, g, p, how = True, g2, p2, "raw"
    return {"status": "ok", "equal": equal, "pred_form": _describe(p), "gold_form": _describe(g), "how": how}


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (nothing elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _limit_memory() -> None:
    """Cap this process's address space (what it has now plus a margin) where the platform allows it."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = current + CHILD_EXTRA_MEMORY_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass


def _executor_main(requests_fd: int, replies_fd: int, worker_pid: int) -> None:
    """An executor (a forked child of the worker): answer request lines until its pipe closes; never returns."""
    try:
        _die_with_parent()
        if os.getppid() != worker_pid:
            os._exit(1)
        _limit_memory()
        os.close(_protocol_fd)  # fd 1 is the worker's stderr already: nothing printed reaches the replies
        for line in os.fdopen(requests_fd, "rb"):
            try:
                reply = check(json.loads(line))
            except BaseException as exc:  # MemoryError, RecursionError, sympy's own errors: math-verify failed on it
                reply = {"status": "error", "message": f"{type(exc).__name__}: {str(exc)[:200]}"}
            os.write(replies_fd, (json.dumps(reply) + "\n").encode())
    finally:
        os._exit(0)


# --- the worker: requests in, one busy executor per check, replies out ---------------------------


class _Executor:
    """One executor process as the worker sees it: its pipes and the check it is running, if any."""

    def __init__(self) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        worker_pid = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(req_w)
            os.close(rep_r)
            _executor_main(req_r, rep_w, worker_pid)
        os.close(req_r)
        os.close(rep_w)
        self.to_fd, self.from_fd = req_w, rep_r
        self.request: Optional[dict] = None
        self.started = 0.0
        self.demoted = False
        self.buf = b""

    def send(self, request: dict) -> None:
        """Start one check."""
        self.request, self.started, self.demoted = request, time.monotonic(), False
        os.write(self.to_fd, (json.dumps(request) + "\n").encode())

    def stop(self) -> None:
        """Kill the process (it may be stuck in sympy), close its pipes and reap it."""
        self.kill()
        self.reap()

    def kill(self) -> None:
        """SIGKILL the process and close its pipes, without waiting for it."""
        os.close(self.to_fd)
        os.close(self.from_fd)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        """Wait for the killed process to end."""
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


class _Worker:
    """The worker's loop: read requests from stdin, run each on an idle executor (forking one more
    when all are busy), kill an executor at its check's deadline, answer on stdout."""

    def __init__(self) -> None:
        self.parent = os.getppid()
        self.queue: list = []
        self.idle: list = []
        self.busy: dict = {}  # reply fd -> _Executor
        self.dead: list = []  # killed, not yet reaped
        self.inbuf = b""

    def reply(self, request: dict, body: dict) -> None:
        """Write one reply line; a caller that is gone ends the worker quietly."""
        try:
            os.write(_protocol_fd, (json.dumps({"id": request["id"], **body}) + "\n").encode())
        except OSError:
            self.shutdown()

    def shutdown(self) -> None:
        """Kill every executor and leave (the caller has gone)."""
        for ex in [*self.idle, *self.busy.values()]:
            ex.kill()
        os._exit(0)

    def dispatch(self) -> None:
        """Hand queued checks to executors while there is room; a check past its deadline is answered as such."""
        while self.queue and self.room():
            request = self.queue.pop(0)
            if time.monotonic() >= request["deadline"]:
                self.reply(request, {"status": "timeout"})
                continue
            ex = self.idle.pop() if self.idle else _Executor()
            ex.send(request)
            self.busy[ex.from_fd] = ex

    def room(self) -> bool:
        """Whether another check may start: fewer than PARALLEL checks younger than YOUNG_S run, and
        fewer than MAX_CHILDREN in all."""
        now = time.monotonic()
        young = sum(1 for ex in self.busy.values() if now - ex.started < YOUNG_S)
        return young < PARALLEL and len(self.busy) < MAX_CHILDREN

    def read_requests(self) -> None:
        """Take the complete request lines waiting on stdin; EOF means the caller is gone."""
        data = os.read(0, 1 << 16)
        if not data:
            self.shutdown()
        self.inbuf += data
        *lines, self.inbuf = self.inbuf.split(b"\n")
        self.queue.extend(json.loads(line) for line in lines if line.strip())

    def collect(self, fd: int) -> None:
        """Read an executor's reply (it may come in pieces); answer, and keep the executor for the next check."""
        ex = self.busy[fd]
        data = os.read(fd, 1 << 16)
        if not data:  # it died mid-check (memory limit, a crash)
            del self.busy[fd]
            ex.stop()
            self.reply(ex.request, {"status": "error", "message": "the check's process ended without a reply"})
            return
        ex.buf += data
        if ex.buf.endswith(b"\n"):
            del self.busy[fd]
            self.reply(ex.request, json.loads(ex.buf))
            ex.buf, ex.request = b"", None
            if ex.demoted:  # a reniced process cannot be raised again: no more checks for it
                ex.stop()
            else:
                self.idle.append(ex)
            while len(self.idle) > KEEP_IDLE:
                self.idle.pop(0).stop()

    def expire(self) -> None:
        """Kill the executors whose check is past its deadline, answer those checks as timeouts, then
        reap them (a reniced process may take a while to end)."""
        now = time.monotonic()
        expired = [fd for fd, ex in self.busy.items() if now >= ex.request["deadline"]]
        for ex in [self.busy.pop(fd) for fd in expired]:
            ex.kill()
            self.reply(ex.request, {"status": "timeout"})
            self.dead.append(ex)
        while self.dead:
            self.dead.pop().reap()

    def demote_slow(self) -> None:
        """Lower the CPU priority of executors running longer than SLOW_S (likely stuck in sympy
        until their deadline), so that new checks get the cores first."""
        now = time.monotonic()
        for ex in self.busy.values():
            if not ex.demoted and now - ex.started >= SLOW_S:
                ex.demoted = True
                try:
                    os.setpriority(os.PRIO_PROCESS, ex.pid, SLOW_NICE)
                except OSError:
                    pass

    def wait_time(self) -> float:
        """Seconds until the next deadline, until a running check stops being young while others
        queue, or until one turns slow (at most 0.2 s, so a re-parenting is noticed soon)."""
        times = [ex.request["deadline"] for ex in self.busy.values()]
        times += [ex.started + SLOW_S for ex in self.busy.values() if not ex.demoted]
        if self.queue:
            times += [ex.started + YOUNG_S for ex in self.busy.values()]
        return max(0.0, min([0.2] + [t - time.monotonic() for t in times]))

    def loop(self) -> None:
        """Serve until the caller goes."""
        while True:
            if os.getppid() != self.parent:
                self.shutdown()
            self.dispatch()
            readable, _, _ = select.select([0, *self.busy], [], [], self.wait_time())
            for fd in readable:
                if fd == 0:
                    self.read_requests()
                elif fd in self.busy:
                    self.collect(fd)
            self.expire()
            self.demote_slow()


def _quiet_math_verify() -> None:
    """Silence math-verify's warning that its own timeout is off (ours is the process kill)."""
    import logging

    logging.disable(logging.WARNING)


def worker_main() -> None:
    """Entry point of `python -m mathgrpo.grading_worker`: load math-verify, say ready, serve."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the caller; we leave when it does
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    global _protocol_fd
    _protocol_fd = os.dup(1)
    os.dup2(2, 1)  # stdout is for replies only: whatever math-verify or sympy print goes to stderr
    _quiet_math_verify()
    import math_verify  # noqa: F401
    import sympy  # noqa: F401

    for pred, gold in WARM_UP_PAIRS:  # sympy loads much lazily: load it once here, before executors fork
        check({"pred": pred, "gold": gold, "raw_pred": pred, "raw_gold": gold})
    os.write(_protocol_fd, b'{"ready": true}\n')
    _Worker().loop()


# --- the caller's side ------------------------------------------------------------------------------


def _package_root() -> str:
    """The folder holding this copy of `mathgrpo`, so the worker imports the same copy."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
            [sys.executable, *safe_path, "-m", "mathgrpo.grading_worker"],
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
        raise GradingError(f"the math-verify worker ({sys.executable} -m mathgrpo.grading_worker) did not start: {said or 'no output'}")

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

    def verify(self, pred: str, gold: str, raw_pred: str, raw_gold: str, deadline: float, plain_only: bool = False) -> dict:
        """The worker's reply for one check that must end by `deadline` (time.monotonic()).

        {"status": "ok", "equal", "pred_form", "gold_form", "how"}, {"status": "timeout"} or
        {"status": "error", "message"} (math-verify itself failed on this input). `plain_only`: read
        only the raw strings, as plain math-verify does (for answers too long to clean). Raises
        GradingError when the worker cannot be reached.
        """
        self.start()
        rid, slot = self._send({"pred": pred, "gold": gold, "raw_pred": raw_pred, "raw_gold": raw_gold,
                                "deadline": deadline, "plain_only": plain_only})
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


if __name__ == "__main__":
    worker_main()
