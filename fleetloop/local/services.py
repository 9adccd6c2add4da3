"""Local services for the embedded default: start, stop and find them.

``fleetloop services up`` starts each registered :class:`Service` (a Prefect server with its UI;
Label Studio registers itself the same way) as a background process on 127.0.0.1, with its
state and log under ``<home>/services/<name>/``, and records url + pid in
``<home>/services/state.json``. ``up`` is idempotent: a service that is already running is left
alone. Every fleetloop command finds the running services through that state file
(:func:`prefect_api_url`, :func:`ensure_prefect_env`), so no extra environment variables are
needed. A service the settings point at a deployed server (e.g. ``FLEETLOOP_PREFECT__API_URL``)
is not started locally; ``status`` reports that server's health.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

from pydantic import BaseModel

from fleetloop.settings import Settings, get_settings

__all__ = [
    "PREFECT",
    "SERVICES",
    "LaunchSpec",
    "ProcessService",
    "Service",
    "ServiceError",
    "ServiceStatus",
    "down",
    "ensure_prefect_env",
    "get_service",
    "local_service_url",
    "prefect_api_url",
    "register",
    "services_dir",
    "status",
    "up",
]


class ServiceError(RuntimeError):
    """A local service could not be started or stopped (the message says which and why)."""


@dataclass(frozen=True)
class LaunchSpec:
    """How to start a service process: argv, extra environment (may hold secrets: it is passed
    to the process only, never written to the state file), working directory."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


class ServiceStatus(BaseModel):
    name: str
    url: str
    healthy: bool
    running: bool  # our local process is alive (False for external servers)
    mode: Literal["local", "external"]
    pid: int | None = None
    log: str | None = None
    detail: str = ""


class _Record(BaseModel):
    """One service's entry in state.json."""

    name: str
    url: str
    pid: int
    create_time: float  # the process's start time: guards against a reused pid
    log: str
    started_at: datetime


@runtime_checkable
class Service(Protocol):
    """A server ``fleetloop services`` manages. :class:`ProcessService` implements it for any
    command that serves HTTP on loopback; a service with its own start logic (install,
    provisioning) implements these methods itself and is added with :func:`register`."""

    name: str

    def url(self, settings: Settings) -> str: ...

    def health(self, url: str, timeout: float = 2.0) -> bool: ...

    def start(self, settings: Settings) -> ServiceStatus:
        """Start it unless it runs (idempotent); return once healthy, else raise ServiceError."""
        ...

    def stop(self, settings: Settings) -> bool:
        """Stop it; True when it was running."""
        ...

    def status(self, settings: Settings) -> ServiceStatus: ...


@dataclass(frozen=True)
class ProcessService:
    """A server run as a background process group, recorded in ``<home>/services/state.json``.

    ``local_url(settings)`` is where it listens on loopback (``http://127.0.0.1:<port>``);
    ``launch(settings, state_dir)`` says how to start it; ``external_url(settings)`` is a deployed
    server the user configured instead (then nothing is started). ``health_path`` answers 2xx
    when the server is ready.
    """

    name: str
    local_url: Callable[[Settings], str]
    launch: Callable[[Settings, Path], LaunchSpec]
    external_url: Callable[[Settings], str | None] = lambda settings: None
    health_path: str = "/api/health"
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 15.0

    def url(self, settings: Settings) -> str:
        return self.external_url(settings) or self.local_url(settings)

    def health(self, url: str, timeout: float = 2.0) -> bool:
        """GET ``url + health_path`` answers 2xx."""
        import httpx

        try:
            r = httpx.get(url.rstrip("/") + self.health_path, timeout=timeout, follow_redirects=True)
        except httpx.HTTPError:
            return False
        return r.is_success

    def start(self, settings: Settings) -> ServiceStatus:
        """Start the local server unless it runs already; wait until it is healthy."""
        external = self.external_url(settings)
        if external:
            return self.status(settings)
        with _state_lock(settings):
            state = _read_state(settings)
            rec = state.get(self.name)
            if rec is not None and _alive(rec):
                self._wait_healthy(rec)
                return self.status(settings)
            url = self.local_url(settings)
            _check_port_free(self.name, url)
            state_dir = services_dir(settings) / self.name
            state_dir.mkdir(parents=True, exist_ok=True)
            spec = self.launch(settings, state_dir)
            log_path = state_dir / "server.log"
            with open(log_path, "ab") as log:
                log.write(f"\n--- {datetime.now(UTC).isoformat()} fleetloop starts: {' '.join(spec.argv)}\n".encode())
                log.flush()
                try:
                    proc = subprocess.Popen(
                        spec.argv,
                        env={**os.environ, **spec.env},
                        cwd=spec.cwd or state_dir,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # own process group: outlives this command, stopped as a group
                    )
                except OSError as exc:
                    raise ServiceError(f"{self.name}: cannot run {spec.argv[0]}: {exc}") from exc
            rec = _Record(
                name=self.name,
                url=url,
                pid=proc.pid,
                create_time=_create_time(proc.pid) or time.time(),
                log=str(log_path),
                started_at=datetime.now(UTC),
            )
            state[self.name] = rec
            _write_state(settings, state)
            try:
                self._wait_healthy(rec)
            except ServiceError:
                _terminate(rec, self.stop_timeout_s)
                state.pop(self.name, None)
                _write_state(settings, state)
                raise
        return self.status(settings)

    def _wait_healthy(self, rec: _Record) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.health(rec.url):
                return
            if not _alive(rec):
                raise ServiceError(
                    f"{self.name} exited during startup; last lines of {rec.log}:\n{_tail(Path(rec.log))}"
                )
            time.sleep(0.5)
        raise ServiceError(
            f"{self.name} not healthy at {rec.url}{self.health_path} after {self.start_timeout_s:.0f}s; "
            f"see {rec.log}:\n{_tail(Path(rec.log))}"
        )

    def stop(self, settings: Settings) -> bool:
        """Stop the local server (SIGTERM, then SIGINT, then SIGKILL); True if one was running."""
        with _state_lock(settings):
            state = _read_state(settings)
            rec = state.pop(self.name, None)
            was_running = rec is not None and _alive(rec)
            if was_running:
                _terminate(rec, self.stop_timeout_s)
            _write_state(settings, state)
        return was_running

    def status(self, settings: Settings) -> ServiceStatus:
        external = self.external_url(settings)
        if external:
            return ServiceStatus(
                name=self.name, url=external, healthy=self.health(external), running=False, mode="external",
                detail="configured in settings; not managed by fleetloop",
            )
        rec = _read_state(settings).get(self.name)
        if rec is None or not _alive(rec):
            return ServiceStatus(
                name=self.name, url=self.local_url(settings), healthy=False, running=False, mode="local",
                detail="not running: start it with `fleetloop services up`",
            )
        healthy = self.health(rec.url)
        return ServiceStatus(
            name=self.name, url=rec.url, healthy=healthy, running=True, mode="local", pid=rec.pid,
            log=rec.log, detail="" if healthy else "running but not answering its health check",
        )


# ---------------------------------------------------------------- Prefect


def _prefect_local_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.prefect.port}"


def _prefect_external_url(settings: Settings) -> str | None:
    api = settings.prefect.api_url
    return api.rstrip("/").removesuffix("/api") if api else None


def _prefect_launch(settings: Settings, state_dir: Path) -> LaunchSpec:
    url = _prefect_local_url(settings)
    return LaunchSpec(
        argv=[
            sys.executable, "-m", "prefect", "server", "start",
            "--host", "127.0.0.1", "--port", str(settings.prefect.port), "--analytics-off",
        ],
        env={
            "PREFECT_HOME": str(state_dir),  # SQLite database, profiles, logs
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_URL": f"{url}/api",
        },
    )


PREFECT = ProcessService(
    name="prefect",
    local_url=_prefect_local_url,
    launch=_prefect_launch,
    external_url=_prefect_external_url,
    health_path="/api/health",
    start_timeout_s=120.0,
)

#: The services ``fleetloop services`` manages, started in this order and stopped in reverse.
SERVICES: list[Service] = [PREFECT]

from fleetloop.local.label_studio import LABEL_STUDIO  # noqa: E402  (Label Studio: own venv, token provisioning)

SERVICES.append(LABEL_STUDIO)


def register(service: Service) -> None:
    """Add (or replace, by name) a service in :data:`SERVICES`."""
    for i, s in enumerate(SERVICES):
        if s.name == service.name:
            SERVICES[i] = service
            return
    SERVICES.append(service)


def get_service(name: str) -> Service:
    for s in SERVICES:
        if s.name == name:
            return s
    raise ServiceError(f"no service {name!r}; known: {', '.join(s.name for s in SERVICES)}")


def _select(names: list[str] | None) -> list[Service]:
    return [get_service(n) for n in names] if names else list(SERVICES)


def up(settings: Settings | None = None, names: list[str] | None = None) -> list[ServiceStatus]:
    """Start the services (all when ``names`` is None) unless running; their statuses."""
    settings = settings or get_settings()
    return [s.start(settings) for s in _select(names)]


def down(settings: Settings | None = None, names: list[str] | None = None) -> list[str]:
    """Stop the local services; the names of those that were running."""
    settings = settings or get_settings()
    return [s.name for s in reversed(_select(names)) if s.stop(settings)]


def status(settings: Settings | None = None, names: list[str] | None = None) -> list[ServiceStatus]:
    settings = settings or get_settings()
    return [s.status(settings) for s in _select(names)]


def local_service_url(settings: Settings, name: str) -> str | None:
    """The URL of a local service started by ``fleetloop services up``, if it is running."""
    rec = _read_state(settings).get(name)
    return rec.url if rec is not None and _alive(rec) else None


def prefect_api_url(settings: Settings | None = None) -> str | None:
    """``settings.prefect.api_url``, else the running local server's API URL, else None
    (Prefect then falls back to its ephemeral in-process API). No network call."""
    settings = settings or get_settings()
    if settings.prefect.api_url:
        return settings.prefect.api_url
    url = local_service_url(settings, PREFECT.name)
    return f"{url}/api" if url else None


def ensure_prefect_env(settings: Settings | None = None) -> str | None:
    """Point Prefect at fleetloop's server: set ``PREFECT_API_URL`` (unless the user set it) to
    :func:`prefect_api_url`, and turn off Prefect's analytics unless set. Call it before
    ``import prefect``: Prefect reads its settings at import. Returns the API URL in effect."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    url = prefect_api_url(settings)
    if url:
        os.environ["PREFECT_API_URL"] = url
    return url


# ---------------------------------------------------------------- state file and processes


def services_dir(settings: Settings) -> Path:
    return settings.home.resolve() / "services"


def _state_path(settings: Settings) -> Path:
    return services_dir(settings) / "state.json"


@contextlib.contextmanager
def _state_lock(settings: Settings) -> Iterator[None]:
    """Serialise up/down across processes (two `up` at once must not start two servers)."""
    path = services_dir(settings) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_state(settings: Settings) -> dict[str, _Record]:
    path = _state_path(settings)
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ServiceError(f"unreadable services state file {path}: {exc}; delete it and run `fleetloop services up`") from exc
    return {name: _Record.model_validate(rec) for name, rec in raw.get("services", {}).items()}


def _write_state(settings: Settings, state: dict[str, _Record]) -> None:
    path = _state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    body = {"services": {name: rec.model_dump(mode="json") for name, rec in state.items()}}
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, path)


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(rec: _Record) -> bool:
    """The recorded process still runs (same pid AND same start time; zombies count as dead)."""
    import psutil

    try:
        p = psutil.Process(rec.pid)
        if abs(p.create_time() - rec.create_time) > 1.0:
            return False  # the pid was reused by another process
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _terminate(rec: _Record, timeout: float) -> None:
    """SIGTERM the service's process group, then SIGINT, then SIGKILL, waiting between."""
    import psutil

    try:
        proc = psutil.Process(rec.pid)
    except psutil.Error:
        return
    try:
        group = os.getpgid(rec.pid) if os.getpgid(rec.pid) == rec.pid else None
    except OSError:
        group = None
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGINT, 5.0), (signal.SIGKILL, 5.0)):
        try:
            if group is not None:
                os.killpg(group, sig)
            else:
                proc.send_signal(sig)
        except (ProcessLookupError, psutil.NoSuchProcess):
            break
        try:
            proc.wait(timeout=wait)  # also reaps it when it is our child
            break
        except psutil.TimeoutExpired:
            continue
    else:
        raise ServiceError(f"{rec.name} (pid {rec.pid}) did not stop after SIGTERM, SIGINT and SIGKILL")
    # leftovers of the group (children that ignored the signal) get SIGKILL
    if group is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


def _check_port_free(name: str, url: str) -> None:
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


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
