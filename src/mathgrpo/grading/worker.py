"""The math-verify worker: a separate program that checks answers under a hard time limit and never
runs the caller's code.

The worker is `python -m mathgrpo.grading.worker`, started with
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
`client` starts the worker and speaks to it; `judge.py` normalises and decides the
cheap paths and only sends what is left.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import time
from functools import lru_cache
from typing import Optional

# Address space an executor may add to what it inherited, so a runaway sympy integer cannot take the
# host's memory.
CHILD_EXTRA_MEMORY_BYTES = 2 * 1024**3
# Checks start at once while fewer than PARALLEL younger than YOUNG_S run (most checks take 1-50 ms
# on a warm executor: reusing one beats forking many); an older one may be stuck in sympy, so it
# does not hold the others up. The rest wait in the worker's queue, their deadline running. A
# check that has used more than SLOW_S of CPU has its executor reniced to SLOW_NICE, so it gets
# only the CPU that newer checks leave (CPU time, not wall time: a check waiting for a core under
# load is not demoted for it). At most MAX_CHILDREN executors run at once; KEEP_IDLE idle ones are kept.
PARALLEL = max(2, os.cpu_count() or 1)
YOUNG_S = 0.1
SLOW_S = 0.5
SLOW_NICE = 19
# Executors run this much nicer than the worker, so that the worker's loop (answering, killing
# at deadlines) gets the CPU when it needs it even with every core busy with checks.
EXECUTOR_NICE = 5
MAX_CHILDREN = 64
KEEP_IDLE = PARALLEL
_PR_SET_PDEATHSIG = 1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_protocol_fd = 1  # in the worker: the caller's pipe for replies (a copy of stdout made at start)
# Checks the worker runs once at start, one per kind of answer, so that the parts of sympy and
# math-verify loaded on first use are loaded before executors fork (an executor started cold
# spends 0.2-0.8 s loading them on its first check).
WARM_UP_PAIRS = [
    ("1", "1"), ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"), ("(x+1)^2", "x^2+2x+1"), ("x+y=1", "y=1-x"),
    ("\\{1,2\\}", "(1,2)"), ("[0,1)", "(0,1]"), ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1&2\\end{pmatrix}"),
    ("\\sin x", "\\cos x"), ("10\\%", "0.1"), ("x<2", "2>x"), ("\\pi", "3.14159"), ("e^{i\\pi}", "-1"),
    ("\\text{A}", "A"), ("1,2", "2,1"), ("\\log_2 8", "3"), ("\\infty", "-\\infty"), ("x \\in (0,1)", "(0,1)"),
    ("sqrt(x)/2", "\\frac{\\sqrt{x}}{2}"), ("|x-2||x+2|", "|x^2-4|"), ("x^2=4", "x=2 \\text{ or } x=-2"), ("x>1", "2<2x"),
    ("2x+1=0", "20x+10=0"), ("0.5774", "\\frac{1}{\\sqrt{3}}"), ("\\frac{GMm}{r^2}", "\\frac{G m M}{r^2}"),
    ("(1,2)", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"), ("x^2<4", "-2<x<2"),
]


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
    """The verdict on one request (runs in an executor): math-verify on the cleaned readings, then the
    rules of `rules.py` (our own readings of plain text and case, identities, equations, inequalities,
    approximations, vectors); when still not equal and a side is delimited text, also the raw strings
    as plain math-verify reads them (equal if any says so). The reply names the rule that decided."""
    from math_verify import verify

    if request.get("plain_only"):
        g, p = _read_plain(request["raw_gold"]), _read_plain(request["raw_pred"])
        equal = bool(verify(g, p, timeout_seconds=None))
        return {"status": "ok", "equal": equal, "rule": "math-verify", "pred_form": _describe(p), "gold_form": _describe(g), "how": "raw"}
    g, g_how = _read_gold(request["gold"], request["raw_gold"])
    p, p_how = _read(request["pred"], request["raw_pred"])
    how = "cleaned" if g_how == p_how == "cleaned" else "raw"
    reply = {"status": "ok", "how": how, "note": ""}
    ruled = _ruled(request, g, p, own=True) if _needs_own(request) else None
    if ruled is None:
        equal = bool(verify(g, p, timeout_seconds=None))
        reply.update(equal=equal, rule="math-verify", pred_form=_describe(p), gold_form=_describe(g))
        ruled = None if equal else _ruled(request, g, p, own=False)
    reply.update(ruled or {})
    if not reply["equal"] and (delimited(request["raw_gold"]) or delimited(request["raw_pred"])):
        g2, p2 = _read_plain(request["raw_gold"]), _read_plain(request["raw_pred"])
        if verify(g2, p2, timeout_seconds=None):
            reply.update(equal=True, rule="math-verify", gold_form=_describe(g2), pred_form=_describe(p2), how="raw", note="")
    return reply


def _needs_own(request: dict) -> bool:
    """`rules.needs_own`, False when that test itself fails."""
    from . import rules

    try:
        return rules.needs_own(request)
    except Exception:  # latex2sympy's normaliser refusing the text: math-verify reads it alone
        return False


def _ruled(request: dict, g: list, p: list, own: bool) -> Optional[dict]:
    """`rules.decide`, or None when the rules fail on this input (math-verify's verdict then stands,
    or is asked for)."""
    from . import rules

    try:
        return rules.decide(request, g, p, own)
    except Exception:  # sympy refusing one of our rules' operations: the rules have nothing to say
        return None


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
        os.nice(EXECUTOR_NICE)
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
        self.started = self.cpu_at_start = 0.0
        self.demoted = False
        self.buf = b""

    def send(self, request: dict) -> None:
        """Start one check."""
        self.request, self.started, self.demoted = request, time.monotonic(), False
        self.cpu_at_start = self.cpu_seconds()
        os.write(self.to_fd, (json.dumps(request) + "\n").encode())

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far (user + system; 0 where /proc cannot tell)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        except (OSError, ValueError, IndexError):
            return 0.0

    def kill(self) -> None:
        """SIGKILL the process and close its pipes, without waiting for it to end."""
        os.close(self.to_fd)
        os.close(self.from_fd)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reaped(self) -> bool:
        """Whether the killed process has ended (and is reaped now); never waits."""
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] != 0
        except ChildProcessError:
            return True


class _Worker:
    """The worker's loop: read requests from stdin, run each on an idle executor (forking one more
    when all are busy), kill an executor at its check's deadline, answer on stdout."""

    def __init__(self) -> None:
        self.parent = os.getppid()
        self.queue: list = []
        self.idle: list = []
        self.busy: dict = {}  # reply fd -> _Executor
        self.dead: list = []  # killed, not yet reaped (a reniced process may take a while to end)
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
            self.retire(ex)
            self.reply(ex.request, {"status": "error", "message": "the check's process ended without a reply"})
            return
        ex.buf += data
        if ex.buf.endswith(b"\n"):
            del self.busy[fd]
            self.reply(ex.request, json.loads(ex.buf))
            ex.buf, ex.request = b"", None
            if ex.demoted:  # a reniced process cannot be raised again: no more checks for it
                self.retire(ex)
            else:
                self.idle.append(ex)
            while len(self.idle) > KEEP_IDLE:
                self.retire(self.idle.pop(0))

    def retire(self, ex: _Executor) -> None:
        """Kill an executor; it is reaped once it has ended (`expire` looks)."""
        ex.kill()
        self.dead.append(ex)

    def expire(self) -> None:
        """Kill the executors whose check is past its deadline and answer those checks as timeouts;
        reap the killed ones that have ended."""
        now = time.monotonic()
        expired = [fd for fd, ex in self.busy.items() if now >= ex.request["deadline"]]
        for ex in [self.busy.pop(fd) for fd in expired]:
            self.retire(ex)
            self.reply(ex.request, {"status": "timeout"})
        self.dead = [ex for ex in self.dead if not ex.reaped()]

    def demote_slow(self) -> None:
        """Lower the CPU priority of executors whose check has used more than SLOW_S of CPU (likely
        stuck in sympy until its deadline), so that new checks get the cores first."""
        for ex in self.busy.values():
            if not ex.demoted and ex.cpu_seconds() - ex.cpu_at_start >= SLOW_S:
                ex.demoted = True
                try:
                    os.setpriority(os.PRIO_PROCESS, ex.pid, SLOW_NICE)
                except OSError:
                    pass

    def wait_time(self) -> float:
        """Seconds until the next deadline, until a running check stops being young while others
        queue, or until one turns slow (at most 0.2 s, so a re-parenting is noticed and the killed
        executors are reaped soon)."""
        times = [ex.request["deadline"] for ex in self.busy.values()]
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
    """Entry point of `python -m mathgrpo.grading.worker`: load math-verify, say ready, serve."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the caller; we leave when it does
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    global _protocol_fd
    _protocol_fd = os.dup(1)
    os.dup2(2, 1)  # stdout is for replies only: whatever math-verify or sympy print goes to stderr
    _quiet_math_verify()
    import math_verify  # noqa: F401
    import sympy  # noqa: F401

    for pred, gold in WARM_UP_PAIRS:  # sympy loads much lazily: load it once here, before executors fork
        check({"pred": pred, "gold": gold, "raw_pred": pred, "raw_gold": gold, "deadline": time.monotonic() + 60})
    os.write(_protocol_fd, b'{"ready": true}\n')
    _Worker().loop()


if __name__ == "__main__":
    worker_main()
