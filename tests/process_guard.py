"""The suite fails when a test leaves a process running (hooks, imported by ``conftest.py``).

At the start of the session the guard notes the service-like processes already running; at its
end, after every fixture's teardown, it looks for

* descendants of the pytest process (multiprocessing's own helpers excepted), and
* processes matching :data:`PATTERN` that did not run before and belong to this session: they
  inherited the session's marker variable (:data:`MARK`), or name the session's temporary
  directory in their command line or environment (servers run with a whitelisted environment,
  their state lives under ``tmp_path``). Other sessions running on the same machine are left
  alone.

Leftovers get a few seconds to exit; those still running are reported, stopped (by pid), and
the session's exit status becomes "tests failed".
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

if TYPE_CHECKING:
    from _pytest.terminal import TerminalReporter

PATTERN = re.compile(r"prefect[ .](worker|server|engine)|uvicorn|label-studio|moto_server|dask[ -](scheduler|worker)|postgres -D")
BENIGN = re.compile(r"multiprocessing\.(resource_tracker|forkserver|semaphore_tracker)")
MARK = "FLEETLOOP_TEST_SESSION"
GRACE_S = 10.0

_before = pytest.StashKey[set[tuple[int, float]]]()
_leaks = pytest.StashKey[list[str]]()


def _key(p: psutil.Process) -> tuple[int, float]:
    return p.pid, p.create_time()


def _cmd(p: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(p.cmdline())
    return ""


def _service_like() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.pid != os.getpid() and PATTERN.search(_cmd(p)):
                found.append(p)
    return found


def _ours(p: psutil.Process, marker: str, tmp_root: str | None) -> bool:
    try:
        env = p.environ()
    except psutil.Error:
        return False  # another user's process: not this session's
    if env.get(MARK) == marker:
        return True
    return bool(tmp_root) and any(tmp_root in s for s in (_cmd(p), *env.values()))


def _tmp_root(config: pytest.Config) -> str | None:
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        return str(Path(factory.getbasetemp()).resolve())
    return None


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ[MARK] = uuid.uuid4().hex  # inherited by every process the tests start
    before = set()
    for p in _service_like():
        with contextlib.suppress(psutil.Error):
            before.add(_key(p))
    session.config.stash[_before] = before


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _before not in config.stash:
        return
    marker, tmp_root = os.environ.get(MARK, ""), _tmp_root(config)
    suspects: dict[int, psutil.Process] = {}
    for p in psutil.Process().children(recursive=True):
        if not BENIGN.search(_cmd(p)):
            suspects[p.pid] = p
    for p in _service_like():
        with contextlib.suppress(psutil.Error):
            if _key(p) not in config.stash[_before] and _ours(p, marker, tmp_root):
                suspects.setdefault(p.pid, p)
    deadline = time.monotonic() + GRACE_S
    while (alive := [p for p in suspects.values() if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    leaks = [f"pid {p.pid} (parent {p.ppid() if _alive(p) else '?'}): {_cmd(p)[:300]}" for p in alive]
    config.stash[_leaks] = leaks
    if not leaks:
        return
    from fleetloop.local.process import stop_tree

    for p in alive:
        with contextlib.suppress(psutil.Error, RuntimeError):
            stop_tree(p.pid, create_time=p.create_time(), steps=((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)))
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    leaks = config.stash.get(_leaks, [])
    if not leaks:
        return
    terminalreporter.section("processes left running", sep="=", red=True, bold=True)
    for line in leaks:
        terminalreporter.write_line(line)
    terminalreporter.write_line(
        f"{len(leaks)} process(es) started during this session outlived it (stopped now): the session fails.",
        red=True,
    )
