"""Failed writes: one line naming the path, the reason and the free space; no temporary files left behind.

A full disk surfaces from torch as `RuntimeError: ... iostream error` or `unexpected pos`, from
safetensors as `SafetensorError`, from Python as `OSError` without a file name. `writing(path)`
turns each into a `WriteError` that names `path`, and removes the temporary file or folder the
write was filling, so the next run (or `--resume`) does not meet half of it.
"""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .errors import Error

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


class WriteError(Error, OSError):
    """A file could not be written; str() is the one line to show."""

    def __init__(self, code: int, line: str) -> None:
        super().__init__(code, line)
        self.line = line

    def __str__(self) -> str:
        return self.line


def free_space(path: str) -> str:
    """Free space on the disk holding `path` (its nearest existing parent), e.g. '1.2 GiB', or '?'."""
    for folder in [Path(path).absolute(), *Path(path).absolute().parents]:
        if folder.exists():
            return f"{shutil.disk_usage(folder).free / 2**30:.1f} GiB"
    return "?"


def describe(err: OSError, path: Optional[Path] = None) -> str:
    """One line for a failed write: the path, what went wrong, and what to do."""
    where = str(path or err.filename or "a file")
    reason = err.strerror or str(err)
    if err.errno in DENIED:
        return f"cannot write {where}: {reason}; choose a folder you can write (run.output_dir, --output, --out) or fix its permissions"
    if err.errno in FULL:
        return (f"cannot write {where}: {reason} ({free_space(where)} free there); free some space or choose another "
                "folder, then run the command again (a training run continues with --resume RUN)")
    return f"cannot write {where}: {reason}"


def remove(path: Path) -> None:
    """Delete a file or folder if it is there."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def writing(path: Path, temporary: Optional[Path] = None) -> Iterator[None]:
    """Run a write of `path`; on any failure remove `temporary`, and raise a WriteError naming `path`.

    Errors that are not about writing (a KeyboardInterrupt, a bug) pass through unchanged after the
    clean-up; torch's and safetensors' stream errors count as write failures.
    """
    try:
        yield
    except BaseException as err:
        if temporary is not None:
            remove(temporary)
        if isinstance(err, WriteError):
            raise
        if isinstance(err, OSError) and not isinstance(err, (FileNotFoundError, FileExistsError)):
            raise WriteError(err.errno, describe(err, path if err.filename is None else Path(err.filename))) from None
        if isinstance(err, RuntimeError) or type(err).__name__ == "SafetensorError":
            code = errno.ENOSPC if "No space" in str(err) else errno.EFBIG if "too large" in str(err) else errno.EIO
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            line = describe(OSError(code, first), path)
            if code == errno.EIO:
                line += f" ({free_space(path)} free there; a full disk shows up like this)"
            raise WriteError(code, line) from None
        raise
