"""Processes of the embedded default: start them, recognise them, stop them and all they started.

The mechanism under :mod:`fleetloop.local.server` (background servers) and ``fleetloop worker``
(a supervised foreground child). Linux first; elsewhere the Linux-only parts (parent-death
signal, child subreaper) are skipped.

* :func:`clean_env` builds a whitelisted environment: a server sees only what it is given.
* :func:`spawn` starts a process in its own session (so it is its own process group) with its
  output appended to a log file.
* :func:`is_running` recognises a recorded process by pid *and* start time (a reused pid is not
  ours) and, optionally, by a word of its command line.
* :func:`stop_tree` stops a process, its process group and every descendant it can find (also
  those that left the group, as Prefect's flow-run processes do): SIGTERM, wait, SIGINT, wait,
  SIGKILL.
* :func:`supervise` runs a child in the foreground until it exits, forwarding SIGTERM, SIGINT
  and SIGHUP as that stop sequence, and leaves no descendant behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from fleetloop.procs import die_with_parent as _pdeathsig

__all__ = [
    "BASE_ENV",
    "SERVER_STOP",
    "WORKER_STOP",
    "Launch",
    "StopStep",
    "become_subreaper",
    "clean_env",
    "descendants",
    "is_running",
    "reaping_descendants",
    "spawn",
    "start_time",
    "stop_tree",
    "subreaper",
    "supervise",
]

#: Variables every process may inherit from its caller (locale, home, certificates, PATH).
BASE_ENV: tuple[str, ...] = (
    "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR",
)

StopStep = tuple[signal.Signals, float]  # send this signal, then wait up to this many seconds

#: A server: a long grace period for a clean shutdown (databases), then SIGINT, then SIGKILL.
SERVER_STOP: tuple[StopStep, ...] = ((signal.SIGTERM, 10.0), (signal.SIGINT, 5.0), (signal.SIGKILL, 5.0))
#: A Prefect process worker ignores a single SIGTERM and kills itself on the second signal;
#: its flow-run processes must be stopped too. Well under 10 s in all.
WORKER_STOP: tuple[StopStep, ...] = ((signal.SIGTERM, 3.0), (signal.SIGINT, 3.0), (signal.SIGKILL, 2.0))

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


@dataclass(frozen=True)
class Launch:
    """How to start a process: argv, its *whole* environment (see :func:`clean_env`), cwd."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


def clean_env(
    extra: Mapping[str, str] | None = None,
    *,
    inherit: Iterable[str] = BASE_ENV,
    inherit_prefixes: Iterable[str] = (),
) -> dict[str, str]:
    """A whitelisted environment: the caller's ``inherit`` variables and those starting with one
    of ``inherit_prefixes``, then ``extra`` on top. Nothing else of the caller's leaks through."""
    names = set(inherit)
    prefixes = tuple(inherit_prefixes)
    env = {k: v for k, v in os.environ.items() if k in names or (prefixes and k.startswith(prefixes))}
    env.update(extra or {})
    return env


def spawn(launch: Launch, log: Path, *, die_with_parent: bool = False) -> subprocess.Popen[bytes]:
    """Start ``launch`` in a new session (its own process group), stdin closed, stdout and
    stderr appended to ``log`` after a header line. ``die_with_parent``: the kernel sends it
    SIGKILL when this process dies (Linux). Raises OSError when the program cannot run."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n--- {datetime.now(UTC).isoformat()} start: {' '.join(launch.argv)}\n".encode())
        out.flush()
        return subprocess.Popen(
            launch.argv,
            env=launch.env,
            cwd=launch.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_pdeathsig(signal.SIGKILL) if die_with_parent else None,
        )


def start_time(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), None when there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_running(pid: int | None, create_time: float | None = None, command_word: str | None = None) -> bool:
    """``pid`` is a live process (not a zombie) that started at ``create_time`` (when given: a
    reused pid is another process) and whose command line contains ``command_word`` (when given)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return False
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return command_word is None or command_word in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def descendants(proc: psutil.Process) -> list[psutil.Process]:
    """Every live descendant of ``proc`` (children, grandchildren, ...); [] when it is gone."""
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def stop_tree(
    pid: int,
    *,
    create_time: float | None = None,
    steps: Sequence[StopStep] = SERVER_STOP,
    also: Iterable[psutil.Process] = (),
) -> bool:
    """Stop ``pid``, its process group (when it leads one) and every descendant, plus ``also``.

    Each step signals every member still alive and waits for all of them to be gone; members
    are collected again before each step, and one seen once stays tracked even after it is
    re-parented (a worker's flow run whose worker already died). True when ``pid`` was running;
    a ``create_time`` that does not match means the pid was reused: nothing is signalled.
    Raises RuntimeError when something survives SIGKILL (a process in uninterruptible sleep)."""
    try:
        root = psutil.Process(pid)
        if create_time is not None and abs(root.create_time() - create_time) > 1.0:
            return False
        group = pid if os.getpgid(pid) == pid else None
    except (psutil.Error, ProcessLookupError):
        return False
    tracked: dict[int, psutil.Process] = {p.pid: p for p in also}
    tracked[root.pid] = root
    for sig, wait in steps:
        members = _collect(tracked, group)
        if not members:
            return True
        in_group = [p for p in members if _pgid(p) == group]
        if group is not None and in_group:  # one signal each: the group at once (it exists, so its id is ours), then the rest
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
        for p in members:
            if p not in in_group:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(sig)
        _wait_gone(tracked, group, wait)
    left = _collect(tracked, group)
    if left:
        raise RuntimeError(f"process(es) {sorted(p.pid for p in left)} did not stop after SIGKILL")
    return True


def _collect(tracked: dict[int, psutil.Process], group: int | None) -> list[psutil.Process]:
    """Add the current descendants (and group members) of everything tracked; the live ones."""
    for p in list(tracked.values()):
        for child in descendants(p):
            tracked.setdefault(child.pid, child)
    live = [p for p in tracked.values() if not _gone(p)]
    if group is not None and any(_pgid(p) == group for p in live):  # while a member lives, the id is the group's
        for p in psutil.process_iter():
            if p.pid not in tracked and _pgid(p) == group:
                tracked[p.pid] = p
                live.append(p)
    return live


def _pgid(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except OSError:
        return None


def _gone(p: psutil.Process) -> bool:
    """Exited (a zombie counts as exited; one that is our own child is reaped here)."""
    try:
        if not p.is_running():
            return True
        if p.ppid() == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)
            if not p.is_running():
                return True
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _wait_gone(tracked: dict[int, psutil.Process], group: int | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _collect(tracked, group) and time.monotonic() < deadline:
        time.sleep(0.1)


# ---------------------------------------------------------------- Linux: prctl


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (``PR_SET_CHILD_SUBREAPER``):
    a grandchild whose parent dies is re-parented here, not to init, so it can still be found
    and stopped. False where unsupported."""
    libc = _libc()
    return libc is not None and libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Within the block this process is a child subreaper (see :func:`become_subreaper`); on
    leaving it, as it was before (a test runner or a caller stays as it was)."""
    libc = _libc()
    before = ctypes.c_int(0)
    known = libc is not None and libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(before), 0, 0, 0) == 0
    become_subreaper()
    try:
        yield
    finally:
        if libc is not None and known and not before.value:
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _own_children() -> list[psutil.Process]:
    try:
        return psutil.Process().children()
    except psutil.Error:
        return []


# ---------------------------------------------------------------- a supervised foreground child


def supervise(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    steps: Sequence[StopStep] = WORKER_STOP,
    on_stop: Callable[[signal.Signals], None] | None = None,
    poll: float = 0.2,
) -> int:
    """Run ``argv`` until it exits and return its exit code; leave no descendant behind.

    The child runs in its own session and gets SIGKILL from the kernel if this process dies
    unexpectedly. SIGTERM, SIGINT or SIGHUP to this process stops the child, its group and all
    its descendants with ``steps`` (``on_stop`` is told first); the return value is then
    128 + the signal number. When the child exits on its own, descendants it left behind (they
    are re-parented here: this process becomes a child subreaper) are stopped too."""
    become_subreaper()
    requested: list[signal.Signals] = []
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda signum, _frame: requested.append(signal.Signals(signum)))
                for sig in handled}
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = subprocess.Popen(
            argv, env=dict(env) if env is not None else None, cwd=cwd, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_pdeathsig(signal.SIGKILL),
        )
        seen: list[psutil.Process] = []
        while True:
            code = proc.poll()
            if code is not None:
                _stop_orphans(seen, steps)
                return code if code >= 0 else 128 - code
            if requested:
                if on_stop is not None:
                    on_stop(requested[0])
                stop_tree(proc.pid, steps=steps, also=seen + _own_children())
                proc.poll()
                _stop_orphans(seen, steps)
                return 128 + int(requested[0])
            seen = _remember(seen, proc)
            time.sleep(poll)
    finally:
        if proc is not None and proc.poll() is None:  # an exception above: never leave it running
            stop_tree(proc.pid, steps=steps)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _remember(seen: list[psutil.Process], proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The child's current descendants plus those seen before and still alive."""
    known = {p.pid: p for p in seen if not _gone(p)}
    with contextlib.suppress(psutil.Error):
        for p in descendants(psutil.Process(proc.pid)):
            known.setdefault(p.pid, p)
    return list(known.values())


def _stop_orphans(seen: Iterable[psutil.Process], steps: Sequence[StopStep]) -> None:
    """Stop what the child left: descendants seen earlier and processes re-parented to us."""
    for p in [*seen, *_own_children()]:
        if not _gone(p):
            with contextlib.suppress(psutil.Error):
                stop_tree(p.pid, create_time=p.create_time(), steps=steps)


@contextlib.contextmanager
def reaping_descendants(steps: Sequence[StopStep] = WORKER_STOP) -> Iterator[None]:
    """Within the block this process is a child subreaper; on leaving it (normally, by an
    exception or KeyboardInterrupt) every descendant still running is stopped."""
    become_subreaper()
    try:
        yield
    finally:
        me = psutil.Process()
        for p in descendants(me):
            if not _gone(p):
                with contextlib.suppress(psutil.Error, RuntimeError):
                    stop_tree(p.pid, create_time=p.create_time(), steps=steps)
