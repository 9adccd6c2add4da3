"""A background server of the embedded default: its directory, state file, lock and life cycle.

Every server lives in ``<home>/services/<name>/``: ``state.json`` (mode 0600, written
atomically: it may hold a token), ``server.log`` and ``.lock``. :class:`ServerProcess` is that
directory plus the process it records; :class:`LocalServer` is a complete :class:`Service` for a
plain HTTP server on loopback (the Prefect server is one). Both stop a server with
:func:`fleetloop.local.process.stop_tree`: its whole process group, SIGTERM → SIGINT → SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import psutil
from pydantic import BaseModel, field_validator

from fleetloop.local import process
from fleetloop.settings import Settings, redact
from fleetloop.store.atomic import write_atomic
from fleetloop.store.locks import LockTimeout, file_lock

__all__ = [
    "LocalServer",
    "ServerProcess",
    "Service",
    "ServiceError",
    "ServiceStatus",
    "http_ok",
    "port_in_use_error",
    "services_home",
    "tail",
]


class ServiceError(RuntimeError):
    """A local service could not be started or stopped (the message says which and why)."""


class ServiceStatus(BaseModel):
    """What ``fleetloop services status`` shows for one service."""

    name: str
    url: str
    healthy: bool
    running: bool  # our local process is alive (False for external servers)
    mode: Literal["local", "external"]
    pid: int | None = None
    log: str | None = None
    detail: str = ""

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, url: str) -> str:
        """Shown and printed as JSON: a configured server URL's ``user:pass@`` is masked."""
        return redact(url)


@runtime_checkable
class Service(Protocol):
    """A server ``fleetloop services`` manages."""

    @property
    def name(self) -> str: ...

    def url(self, settings: Settings) -> str: ...

    def health(self, url: str, timeout: float = 2.0) -> bool: ...

    def start(self, settings: Settings) -> ServiceStatus:
        """Start it unless it runs (idempotent); return once healthy, else raise ServiceError."""
        ...

    def stop(self, settings: Settings) -> bool:
        """Stop it; True when it was running."""
        ...

    def status(self, settings: Settings) -> ServiceStatus: ...


def services_home(home: Path | str) -> Path:
    """``<home>/services``: one directory per server."""
    return Path(home).resolve() / "services"


class ServerProcess:
    """One server's directory and the background process its state file records.

    ``command_word`` is part of the server's command line: a recorded pid is only ever
    signalled when it is that command, started at the recorded time, leading its own process
    group, running in this directory (:meth:`start` runs it there). Call :meth:`start` and
    :meth:`stop` inside :meth:`lock`.
    """

    def __init__(self, name: str, directory: Path, command_word: str,
                 steps: tuple[process.StopStep, ...] = process.SERVER_STOP) -> None:
        self.name = name
        self.directory = directory
        self.command_word = command_word
        self.steps = steps

    @property
    def state_path(self) -> Path:
        return self.directory / "state.json"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    @contextlib.contextmanager
    def lock(self, timeout: float = 600.0) -> Iterator[None]:
        """Serialise start/stop across processes: two ``up`` at once start one server."""
        try:
            with file_lock(self.directory / ".lock", timeout=timeout):
                yield
        except LockTimeout as exc:
            raise ServiceError(f"{self.name}: another fleetloop command is starting or stopping it ({exc})") from None

    def read_state(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ServiceError(f"{self.name}: unreadable state file {self.state_path} ({exc}); delete it") from None
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        """Replace the state file atomically; mode 0600 from the first byte."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.state_path, (json.dumps(state, indent=2) + "\n").encode(), mode=0o600)

    def running(self, state: dict[str, Any] | None) -> bool:
        """The process ``state`` records is alive and is ours (see the class docstring). A state
        fleetloop writes names this server's directory (the state file of a copied home names the
        original's, so it never claims or stops that home's server); a state without it (a
        hand-written pid, or one without a start time) counts only when the process runs in this
        directory, as every server started by :meth:`start` does. A state recorded by an earlier
        fleetloop (a start time, no directory: its server runs wherever it was started from) is
        still recognised, so services started before an upgrade can be stopped."""
        if not state or not process.is_running(state.get("pid"), state.get("create_time"), self.command_word):
            return False
        try:
            if os.getpgid(state["pid"]) != state["pid"]:
                return False
            if state.get("directory") is not None:
                return Path(state["directory"]).resolve() == self.directory.resolve()
            if state.get("create_time") is not None:
                return True  # recorded by an earlier fleetloop
            return Path(psutil.Process(state["pid"]).cwd()).resolve() == self.directory.resolve()
        except (OSError, psutil.Error):
            return False

    def start(self, launch: process.Launch, state: dict[str, Any], healthy: Callable[[], bool],
              timeout: float) -> dict[str, Any]:
        """Start ``launch``, record it (``state`` + pid, start time, log) and wait until
        ``healthy()``. A process that exits or stays unhealthy is stopped; ServiceError."""
        launch = replace(launch, cwd=self.directory)  # where :meth:`running` recognises it
        try:
            proc = process.spawn(launch, self.log_path)
        except OSError as exc:
            raise ServiceError(f"{self.name}: cannot run {launch.argv[0]}: {exc}") from None
        state = {
            **state,
            "pid": proc.pid,
            "create_time": process.start_time(proc.pid) or time.time(),
            "directory": str(self.directory.resolve()),
            "log": str(self.log_path),
            "started_at": datetime.now(UTC).isoformat(),
        }
        self.write_state(state)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if healthy():
                return state
            if proc.poll() is not None:
                self.write_state({**state, "pid": None})
                raise ServiceError(f"{self.name} exited with code {proc.returncode} during start; "
                                   f"last lines of {self.log_path}:\n{tail(self.log_path)}")
            time.sleep(0.5)
        self.stop(state)
        raise ServiceError(f"{self.name} not healthy after {timeout:.0f}s; see {self.log_path}:\n{tail(self.log_path)}")

    def stop(self, state: dict[str, Any] | None = None) -> bool:
        """Stop the recorded process and everything it started; True when it was running. The
        state file keeps everything but the pid (a server's token outlives a restart)."""
        state = state if state is not None else self.read_state()
        if not state:
            return False
        was_running = self.running(state)
        if was_running:
            try:
                process.stop_tree(state["pid"], create_time=state.get("create_time"), steps=self.steps)
            except RuntimeError as exc:
                raise ServiceError(f"{self.name}: {exc}") from None
        if state.get("pid") is not None:
            self.write_state({**state, "pid": None})
        return was_running


@dataclass(frozen=True)
class LocalServer:
    """A :class:`Service` for an HTTP server run as a background process on loopback.

    ``local_url(settings)`` is where it listens (``http://127.0.0.1:<port>``);
    ``launch(settings, directory)`` says how to start it; ``external_url(settings)`` is a
    deployed server the user configured instead (then nothing is started, only checked).
    ``health_path`` answers 2xx when the server is ready.
    """

    name: str
    local_url: Callable[[Settings], str]
    launch: Callable[[Settings, Path], process.Launch]
    external_url: Callable[[Settings], str | None] = lambda settings: None
    health_path: str = "/api/health"
    command_word: str = ""
    start_timeout_s: float = 120.0

    def process(self, settings: Settings) -> ServerProcess:
        return ServerProcess(self.name, services_home(settings.home) / self.name, self.command_word or self.name)

    def url(self, settings: Settings) -> str:
        return self.external_url(settings) or self.local_url(settings)

    def health(self, url: str, timeout: float = 2.0) -> bool:
        return http_ok(url.rstrip("/") + self.health_path, timeout)

    def running_url(self, settings: Settings) -> str | None:
        """The URL of our local process when it runs (no network call)."""
        server = self.process(settings)
        state = server.read_state()
        return state["url"] if server.running(state) and state else None

    def start(self, settings: Settings) -> ServiceStatus:
        """Start the local server unless it runs already; wait until it is healthy."""
        if self.external_url(settings):
            return self.status(settings)
        server = self.process(settings)
        with server.lock(timeout=self.start_timeout_s + 60):
            state = server.read_state()
            if server.running(state) and state:
                url = state["url"]
                _wait(lambda: self.health(url), self.start_timeout_s, f"{self.name} at {url}")
                return self.status(settings)
            url = self.local_url(settings)
            port_in_use_error(self.name, url)
            server.directory.mkdir(parents=True, exist_ok=True)
            server.start(self.launch(settings, server.directory), {"name": self.name, "url": url},
                         lambda: self.health(url), self.start_timeout_s)
        return self.status(settings)

    def stop(self, settings: Settings) -> bool:
        """Stop the local server and its process group; True when one was running."""
        if self.external_url(settings):
            return False
        server = self.process(settings)
        if not server.state_path.exists():
            return False
        with server.lock():
            return server.stop()

    def status(self, settings: Settings) -> ServiceStatus:
        external = self.external_url(settings)
        if external:
            return ServiceStatus(
                name=self.name, url=external, healthy=self.health(external), running=False, mode="external",
                detail="configured in settings; not managed by fleetloop",
            )
        server = self.process(settings)
        state = server.read_state()
        if not server.running(state) or not state:
            return ServiceStatus(
                name=self.name, url=self.local_url(settings), healthy=False, running=False, mode="local",
                detail="not running: start it with `fleetloop services up`",
            )
        healthy = self.health(state["url"])
        return ServiceStatus(
            name=self.name, url=state["url"], healthy=healthy, running=True, mode="local", pid=state["pid"],
            log=state.get("log"), detail="" if healthy else "running but not answering its health check",
        )


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """GET ``url`` answers 2xx."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout, follow_redirects=True).is_success
    except httpx.HTTPError:
        return False


def port_in_use_error(name: str, url: str) -> None:
    """Raise ServiceError naming the setting to change when ``url``'s port is taken."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    if port is None:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ServiceError(
                f"{name}: port {port} on {host} is in use by a process fleetloop did not start ({exc.strerror}); "
                f"stop it or choose another port (e.g. FLEETLOOP_{name.upper().replace('-', '_')}__PORT)"
            ) from None


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file (for error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} runs but is not healthy after {timeout:.0f}s")
        time.sleep(0.5)
