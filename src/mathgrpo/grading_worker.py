"""math-verify behind a hard time limit: persistent worker processes that are killed when they overrun.

math-verify's own timeout is `signal.alarm`, which only works on the main thread of the main
process; a rollout or evaluation thread would get no limit at all. So every math-verify call runs
in a worker process: the caller waits on a pipe for at most the limit, then kills the worker and
the next check forks a fresh one. Workers fork from a forkserver that has already imported
math-verify and sympy, so a restart costs tens of milliseconds, not the seconds of a cold import.

Like anything built on multiprocessing, a script that grades must keep its top level behind
`if __name__ == "__main__":` (the forkserver imports the main script).

Nothing here normalises or decides fast paths: `grading.py` does that and only sends what is left.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from functools import lru_cache
from typing import Optional

# A worker gets this long to import math-verify and say it is ready; this is the one-off start,
# never part of a check's limit.
STARTUP_TIMEOUT_S = 120.0
# Address space a worker may add to what it inherited, so a runaway sympy integer cannot take the
# host's memory.
WORKER_EXTRA_MEMORY_BYTES = 2 * 1024**3


def _context() -> mp.context.BaseContext:
    """The forkserver context with math-verify preloaded where the platform has one, else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["mathgrpo.grading_worker", "math_verify", "sympy"])
        return ctx
    return mp.get_context("spawn")


# --- the worker side -------------------------------------------------------------------------


def _extraction_config() -> list:
    """The one math-verify extraction setting: LaTeX (boxed first) then plain expressions."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def _parse(answer: str) -> list:
    """math-verify's reading of one bare answer (wrapped as inline math), without its signal timeout."""
    from math_verify import parse

    return parse(f"${answer}$", _extraction_config(), parsing_timeout=None)


@lru_cache(maxsize=8192)
def _parse_gold(gold: str) -> list:
    """The gold side, parsed once per distinct gold string (a problem is graded G times a step)."""
    return _parse(gold)


def _verify(pred: str, gold: str) -> tuple:
    """(equal, pred parsed, gold parsed) for one pair; runs inside the worker."""
    from math_verify import verify

    gold_parsed = _parse_gold(gold)
    pred_parsed = _parse(pred)
    equal = bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    return equal, _describe(pred_parsed), _describe(gold_parsed)


def _describe(parsed: list) -> str:
    """A short printable form of a math-verify parse (its first item is the sympy object)."""
    return str(parsed[0])[:200] if parsed else "<nothing parsed>"


def _limit_memory() -> None:
    """Cap this worker's address space (what it has now plus a margin) where the platform allows it."""
    try:
        import os
        import resource

        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = current + WORKER_EXTRA_MEMORY_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass


def _quiet_math_verify() -> None:
    """Silence math-verify's warning that its own timeout is off (ours is the process kill)."""
    import logging

    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "math_verify.utils"):
        logging.getLogger(name).setLevel(logging.ERROR)


def worker_main(conn) -> None:
    """Worker loop: answer ("verify", pred, gold) requests until the pipe closes."""
    _limit_memory()
    _quiet_math_verify()
    import math_verify  # noqa: F401  (already loaded under forkserver; imported here under spawn)

    conn.send(("ready",))
    while True:
        try:
            _, pred, gold = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok",) + _verify(pred, gold))
        except BaseException as exc:  # MemoryError, RecursionError, sympy's own errors: all mean "no"
            conn.send(("error", f"{type(exc).__name__}: {str(exc)[:200]}"))


# --- the caller side -------------------------------------------------------------------------


class _Worker:
    """One worker process and its pipe; restarted on demand after a kill."""

    def __init__(self) -> None:
        self.proc = None
        self.conn = None

    def ensure_started(self) -> None:
        """Start the process if none is running and wait until it has loaded math-verify."""
        if self.proc is not None and self.proc.is_alive():
            return
        ctx = _context()
        parent, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=worker_main, args=(child,), daemon=True, name="mathgrpo-grader")
        self.proc.start()
        child.close()
        self.conn = parent
        if not parent.poll(STARTUP_TIMEOUT_S) or parent.recv() != ("ready",):
            self.kill()
            raise RuntimeError("the math-verify worker did not start")

    def kill(self) -> None:
        """Kill the process (it may be stuck in sympy) and drop the pipe."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(timeout=5)
        if self.conn is not None:
            self.conn.close()
        self.proc, self.conn = None, None

    def verify(self, pred: str, gold: str, timeout: float) -> Optional[tuple]:
        """The worker's reply, or None when it overran `timeout` (the worker is then killed)."""
        self.ensure_started()
        self.conn.send(("verify", pred, gold))
        if self.conn.poll(timeout):
            return self.conn.recv()
        self.kill()
        return None


class WorkerPool:
    """A fixed set of workers shared by all threads; each check borrows one for its duration."""

    def __init__(self, size: int = 1) -> None:
        self.size = max(1, int(size))
        self._idle: queue.Queue = queue.Queue()
        for _ in range(self.size):
            self._idle.put(_Worker())

    def warm_up(self) -> None:
        """Start every worker now, so the first checks do not pay the start-up."""
        workers = [self._idle.get() for _ in range(self.size)]
        try:
            for w in workers:
                w.ensure_started()
        finally:
            for w in workers:
                self._idle.put(w)

    def verify(self, pred: str, gold: str, timeout: float) -> tuple:
        """("ok", equal, pred_parsed, gold_parsed), ("error", message) or ("timeout",).

        `timeout` bounds the time spent in math-verify; waiting for a busy worker is not part of it.
        """
        worker = self._idle.get()
        try:
            reply = worker.verify(pred, gold, timeout)
        except (OSError, EOFError, RuntimeError) as exc:  # the worker died under us: start afresh
            worker.kill()
            return ("error", f"{type(exc).__name__}: {exc}")
        finally:
            self._idle.put(worker)
        return reply if reply is not None else ("timeout",)

    def close(self) -> None:
        """Kill every worker."""
        for _ in range(self.size):
            self._idle.get().kill()
        for _ in range(self.size):
            self._idle.put(_Worker())


_pool: Optional[WorkerPool] = None
_pool_lock = threading.Lock()


def get_pool() -> WorkerPool:
    """The process-wide pool (one worker unless `set_workers` said otherwise)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = WorkerPool(1)
        return _pool


def set_workers(n: int) -> WorkerPool:
    """Replace the process-wide pool with one of `n` workers (evaluation can use one per core)."""
    global _pool
    with _pool_lock:
        if _pool is not None and _pool.size == n:
            return _pool
        if _pool is not None:
            _pool.close()
        _pool = WorkerPool(n)
        return _pool
