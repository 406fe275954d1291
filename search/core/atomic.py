"""Atomic file writes (a temp file in the target directory, then ``os.replace``), fresh paths,
and the one exclusive file lock (``flock``) that run directories and export staging use."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched,
    so readers never see a half-written artifact.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp's 0600 would make artifacts private
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def unique_path(base: str | os.PathLike[str]) -> Path:
    """``base``, or ``base-2``, ``base-3``, ... : the first that does not exist yet."""
    path, n = Path(base), 1
    while path.exists():
        n += 1
        path = Path(base).with_name(f"{Path(base).name}-{n}")
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` and a newline durably (write, flush, fsync).

    If a killed writer left the file ending in a partial line, that fragment is closed
    with a newline first, so it cannot swallow this line; readers skip the fragment.
    """
    with open(path, "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        prefix = b""
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            prefix = b"" if handle.read(1) == b"\n" else b"\n"
        handle.write(prefix + line.encode("utf-8") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class LockHeld(Exception):
    """Another live process holds the lock; ``owner`` is the pid it wrote (``?`` if none)."""

    def __init__(self, path: Path, owner: str):
        super().__init__(f"{path} is locked by pid {owner}")
        self.owner = owner


def acquire_lock(path: str | os.PathLike[str]) -> IO[str]:
    """Open ``path`` and take an exclusive ``flock`` on it; close the handle to release it.

    The kernel drops the lock when its holder dies (``kill -9`` included), so a lock never
    outlives a crashed process. The holder writes its pid into the file. Where ``flock``
    does not exist (not POSIX) nothing is locked.

    Raises:
        LockHeld: another process holds the lock.
    """
    handle = open(path, "a+")  # noqa: SIM115 - the caller owns the handle (and the lock)
    try:
        import fcntl
    except ImportError:
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise LockHeld(Path(path), owner) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def is_locked(path: str | os.PathLike[str]) -> bool:
    """Whether a live process holds the lock at ``path`` (no file, or no ``flock``: not held)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        handle = open(path)  # noqa: SIM115
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False

