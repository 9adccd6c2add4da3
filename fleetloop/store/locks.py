"""A file lock under ``<home>/locks`` so two pushes (or two syncs) of a campaign never race."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path


class LockTimeout(RuntimeError):
    """Another process holds the lock for longer than we were willing to wait."""


@contextmanager
def file_lock(path: Path, timeout: float = 600.0, poll: float = 0.2) -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` (created if missing); released on exit or process death."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{path} is held by another process (waited {timeout:.0f}s)") from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@contextmanager
def held_or(path: Path, timeout: float, busy: Callable[[str], Exception]) -> Iterator[None]:
    """:func:`file_lock`, but when another process holds ``path`` past ``timeout`` raise
    ``busy(pid)`` (the holder's pid, which it wrote into the file; "?" when unreadable) instead
    of :class:`LockTimeout`. Errors inside the block pass through untouched."""
    with ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path, timeout=timeout))
        except LockTimeout:
            try:
                pid = path.read_text().strip() or "?"
            except OSError:
                pid = "?"
            raise busy(pid) from None
        yield


def lock_path(home: Path, kind: str, campaign: str) -> Path:
    return Path(home).resolve() / "locks" / f"label-{kind}-{campaign}.lock"
