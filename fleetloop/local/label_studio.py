"""The local Label Studio server of the embedded default and of CI.

Label Studio lives in its own virtual environment (``<home>/services/label-studio/venv``): it
wants pandas 3, Django 5 and its own pyarrow/boto3, none of which may leak into fleetloop's.
Everything here is idempotent:

* :func:`install` creates the venv and pip-installs Label Studio once (a marker file records it);
* :func:`start` provisions a user and a *legacy* API token non-interactively on the data dir's
  first start (the legacy-token switch is stored on the organisation when it is created, so it
  must be on from the very first start), then returns the running server when called again;
* :func:`stop` ends the process group it started (and every descendant), by pid.

The process itself is run by :class:`fleetloop.local.server.ServerProcess`, as the Prefect
server is: own session, recorded pid and start time, SIGTERM → SIGINT → SIGKILL.

The process runs with a whitelisted environment: Label Studio reads ``LABEL_STUDIO_X``, then
``HEARTEX_X``, then plain ``X`` (a stray ``USERNAME``/``PASSWORD``/``HOST`` in the caller's shell
would be read), so nothing but the variables below reaches it. Calls home are switched off.
Rendered task images under ``<home>`` are served by Label Studio's local-files view.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import httpx

from fleetloop.local.process import SERVER_STOP, Launch, StopStep, clean_env
from fleetloop.local.server import ServerProcess, ServiceError, ServiceStatus, port_in_use_error, services_home
from fleetloop.settings import Settings

__all__ = [
    "DEFAULT_USER",
    "LABEL_STUDIO",
    "LABEL_STUDIO_SPEC",
    "LabelStudioServerError",
    "LabelStudioService",
    "ServerState",
    "default_venv",
    "health",
    "install",
    "read_state",
    "server_env",
    "service_dir",
    "start",
    "stop",
    "url",
]

LABEL_STUDIO_SPEC = "label-studio>=1.23,<1.24"
DEFAULT_USER = "admin@fleetloop.local"
_MARKER = ".fleetloop-installed.json"
_PASSTHROUGH_ENV = ("HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")


class LabelStudioServerError(ServiceError):
    """The local Label Studio server could not be installed, started or reached."""


@dataclass(frozen=True)
class ServerState:
    """What a started server left in ``<service dir>/state.json`` (file mode 0600)."""

    url: str
    port: int
    token: str  # legacy API token (``Authorization: Token <token>``), generated once
    username: str
    password: str
    data_dir: str
    document_root: str  # LOCAL_FILES_DOCUMENT_ROOT: files below it are served under /data/local-files/
    pid: int | None = None
    create_time: float | None = None  # the process's start time: a reused pid is not ours


_STATE_FIELDS = {f.name for f in fields(ServerState)}


def service_dir(home: Path | str) -> Path:
    return services_home(home) / "label-studio"


def _server(home: Path | str, steps: tuple[StopStep, ...] = SERVER_STOP) -> ServerProcess:
    return ServerProcess("label-studio", service_dir(home), command_word="label-studio", steps=steps)


def default_venv(home: Path | str) -> Path:
    return service_dir(home) / "venv"


def _executable(venv: Path) -> Path:
    return venv / "bin" / "label-studio"


def install(home: Path | str, *, venv: Path | None = None, spec: str = LABEL_STUDIO_SPEC) -> Path:
    """Create the venv and install Label Studio into it, unless already done. Returns the venv."""
    venv = Path(venv or default_venv(home)).resolve()
    marker = venv / _MARKER
    if marker.exists() and _executable(venv).exists() and json.loads(marker.read_text()).get("spec") == spec:
        return venv
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    if not (venv / "bin" / "python").exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "venv", str(venv)], env, "create the Label Studio venv")
    _run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", spec],
        env,
        f"pip install {spec!r} into {venv}",
    )
    if not _executable(venv).exists():
        raise LabelStudioServerError(f"{_executable(venv)} missing after installing {spec!r}")
    marker.write_text(json.dumps({"spec": spec, "installed_at": time.time()}))
    return venv


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise LabelStudioServerError(f"could not {what} (exit {proc.returncode}):\n" + "\n".join(tail))


def _from_record(record: dict[str, Any] | None) -> ServerState | None:
    return ServerState(**{k: v for k, v in record.items() if k in _STATE_FIELDS}) if record else None


def read_state(home: Path | str) -> ServerState | None:
    """The local server's url, token, document root, ... (None before its first start)."""
    return _from_record(_server(home).read_state())


def _write_state(home: Path | str, state: ServerState) -> None:
    server = _server(home)
    server.write_state({**(server.read_state() or {}), **asdict(state)})


def health(url: str, token: str | None = None, timeout: float = 2.0) -> bool:
    """True when ``/health`` answers UP (and, with a token, the token is accepted)."""
    try:
        r = httpx.get(f"{url}/health", timeout=timeout)
        if r.status_code != 200:
            return False
        if token:
            r = httpx.get(
                f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=timeout
            )
            return r.status_code == 200
        return True
    except httpx.HTTPError:
        return False


def url(home: Path | str) -> str | None:
    state = read_state(home)
    return state.url if state else None


def server_env(venv: Path, state: ServerState) -> dict[str, str]:
    """The whole environment of the Label Studio process (nothing else leaks in)."""
    return clean_env(
        {
            "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "VIRTUAL_ENV": str(venv),
            "LABEL_STUDIO_USERNAME": state.username,
            "LABEL_STUDIO_PASSWORD": state.password,
            "LABEL_STUDIO_USER_TOKEN": state.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_BASE_DATA_DIR": state.data_dir,
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": state.document_root,
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            # calls home off (STACK.md)
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            # loopback development server: our webhook receiver is on 127.0.0.1 too
            "SSRF_PROTECTION_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        },
        inherit=_PASSTHROUGH_ENV,
    )


def start(
    home: Path | str,
    *,
    port: int = 8080,
    venv: Path | None = None,
    data_dir: Path | None = None,
    timeout: float = 180.0,
    install_if_missing: bool = True,
) -> ServerState:
    """Start the local server (idempotent) and wait until it is healthy with our token.

    ``venv`` defaults to ``<home>/services/label-studio/venv`` and ``data_dir`` to
    ``<home>/services/label-studio/data``. The token and the admin password are generated on
    the first call and kept in the state file; later starts reuse them.
    """
    home = Path(home).resolve()
    server = _server(home)
    server.directory.mkdir(parents=True, exist_ok=True)
    with server.lock(timeout=timeout + 600):  # two starts at once: one server (an install takes minutes)
        try:
            return _start_locked(home, server, port, venv, data_dir, timeout, install_if_missing)
        except LabelStudioServerError:
            raise
        except ServiceError as exc:
            raise LabelStudioServerError(str(exc)) from None


def _start_locked(
    home: Path,
    server: ServerProcess,
    port: int,
    venv: Path | None,
    data_dir: Path | None,
    timeout: float,
    install_if_missing: bool,
) -> ServerState:
    record = server.read_state()
    previous = _from_record(record)
    if previous and server.running(record):
        if health(previous.url, previous.token):
            return previous
        server.stop(record)  # ours but not answering: restart it
    venv = install(home, venv=venv) if install_if_missing else Path(venv or default_venv(home)).resolve()
    if not _executable(venv).exists():
        raise LabelStudioServerError(f"Label Studio is not installed in {venv}; run install() first")
    data = Path(data_dir or server.directory / "data").resolve()
    first_start = not (data / "label_studio.sqlite3").exists()
    if previous and not first_start and Path(previous.data_dir) == data:
        token, password, username = previous.token, previous.password, previous.username
    elif first_start:
        token, password, username = secrets.token_hex(20), secrets.token_urlsafe(18), DEFAULT_USER
    else:
        raise LabelStudioServerError(
            f"{data} holds a Label Studio database fleetloop did not create (no matching {server.state_path}):"
            " its token is unknown; point settings.label_studio.url/token at it, or use a fresh data dir"
        )
    port_in_use_error("label-studio", f"http://127.0.0.1:{port}")
    data.mkdir(parents=True, exist_ok=True)
    state = ServerState(
        url=f"http://127.0.0.1:{port}",
        port=port,
        token=token,
        username=username,
        password=password,
        data_dir=str(data),
        document_root=str(home),
    )
    argv = [
        str(_executable(venv)), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(data), "--enable-legacy-api-token",
    ]
    record = server.start(Launch(argv=argv, env=server_env(venv, state), cwd=server.directory), asdict(state),
                          healthy=lambda: health(state.url), timeout=timeout)
    started = _from_record(record)
    assert started is not None
    _check_token(started)
    return started


def _check_token(state: ServerState) -> None:
    r = httpx.get(f"{state.url}/api/current-user/whoami", headers={"Authorization": f"Token {state.token}"}, timeout=10)
    if r.status_code == 200:
        return
    hint = ""
    if "legacy" in r.text.lower():
        hint = (
            " Legacy tokens are disabled on this data dir's organisation (the switch only takes effect on"
            " a data dir's first start): start with a fresh data dir."
        )
    raise LabelStudioServerError(
        f"Label Studio rejects the provisioned token: HTTP {r.status_code} {r.text[:200]}.{hint}"
    )


def stop(home: Path | str, timeout: float = 20.0) -> bool:
    """Stop the server started by :func:`start` and everything it started; True if one was
    running. A recorded pid that is not our server (reused by another process) is never
    signalled, only forgotten."""
    server = _server(home, steps=((signal.SIGTERM, timeout), (signal.SIGINT, 5.0), (signal.SIGKILL, 5.0)))
    if not server.state_path.exists():
        return False
    with server.lock():
        return server.stop()


class LabelStudioService:
    """The :class:`fleetloop.local.server.Service` for ``fleetloop services up|down|status``.

    With ``settings.label_studio.url`` set, the server is external (production): nothing is
    started and status reports its health."""

    name = "label-studio"

    def url(self, settings: Settings) -> str:
        return (settings.label_studio.url or f"http://127.0.0.1:{settings.label_studio.port}").rstrip("/")

    def health(self, url: str, timeout: float = 2.0) -> bool:
        return health(url, timeout=timeout)

    def start(self, settings: Settings) -> ServiceStatus:
        if not settings.label_studio.url:
            start(settings.home, port=settings.label_studio.port)
        return self.status(settings)

    def stop(self, settings: Settings) -> bool:
        return False if settings.label_studio.url else stop(settings.home)

    def status(self, settings: Settings) -> ServiceStatus:
        url = self.url(settings)
        if settings.label_studio.url:
            return ServiceStatus(
                name=self.name, url=url, healthy=self.health(url), running=False, mode="external",
                detail="configured in settings; not managed by fleetloop",
            )
        server = _server(settings.home)
        record = server.read_state()
        state = _from_record(record)
        log = str(server.log_path)
        if state is None or not server.running(record):
            installed = _executable(default_venv(settings.home)).exists()
            return ServiceStatus(
                name=self.name, url=url, healthy=False, running=False, mode="local", log=log,
                detail="not running: start it with `fleetloop services up`"
                + ("" if installed else " (first start installs Label Studio, ~1 min)"),
            )
        healthy = health(state.url, state.token)
        return ServiceStatus(
            name=self.name, url=state.url, healthy=healthy, running=True, mode="local", pid=state.pid, log=log,
            detail="" if healthy else "running but not healthy",
        )


LABEL_STUDIO = LabelStudioService()
