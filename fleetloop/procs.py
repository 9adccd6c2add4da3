"""Child processes that do not outlive the process that started them (Linux
``prctl(PR_SET_PDEATHSIG)``; a no-op elsewhere): a killed grow, retrain or service manager leaves
no ``dvc``, ``git``, trainer or server running on as an orphan."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when the process that starts it dies;
    None where unsupported. libc is loaded here, before the fork."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: no locks, no allocation to speak of
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def tie_to_parent(sig: int = signal.SIGTERM) -> None:
    """This process gets ``sig`` when its parent dies (for a process started by a program that
    cannot pass a ``preexec_fn``, e.g. ``dvc repro``'s stages); exits at once when the parent is
    already gone."""
    prctl = _prctl()
    if prctl is None:
        return
    parent = os.getppid()
    prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:
        raise SystemExit(2)
