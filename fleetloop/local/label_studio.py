"""The local Label Studio server of the embedded default and of CI.

Label Studio lives in its own virtual environment (``<home>/services/label-studio/venv``): it
wants pandas 3, Django 5 and its own pyarrow/boto3, none of which may leak into fleetloop's.
Everything here is idempotent:

* :func:`install` creates the venv and pip-installs Label Studio once (a marker file records it);
* :func:`start` provisions a user and a *legacy* API token non-interactively on the data dir's
  first start (the legacy-token switch is stored on the organisation when it is created, so it
  must be on from the very first start), then returns the running server when called again;
* :func:`stop` ends the process group it started, by pid.

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
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

LABEL_STUDIO_SPEC = "label-studio>=1.23,<1.24"
DEFAULT_USER = "admin@fleetloop.local"
_MARKER = ".fleetloop-installed.json"
_PASSTHROUGH_ENV = ("HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")


class LabelStudioServerError(RuntimeError):
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


def service_dir(home: Path | str) -> Path:
    return Path(home).resolve() / "services" / "label-studio"


def default_venv(home: Path | str) -> Path:
    return service_dir(home) / "venv"


def _executable(venv: Path) -> Path:
    return venv / "bin" / "label-studio"


def install(home: Path | str, *, venv: Path | None = None, spec: str = LABEL_STUDIO_SPEC) -> Path:
    """Create the venv and install Label Studio into it, unless already done. Returns the venv."""
    venv = Path(venv or default_venv(home)).resolve()
    marker = venv / _MARKER
    if marker.exists() and _executable(venv).exists():
        if json.loads(marker.read_text()).get("spec") == spec:
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


def read_state(home: Path | str) -> ServerState | None:
    path = service_dir(home) / "state.json"
    if not path.exists():
        return None
    return ServerState(**json.loads(path.read_text()))


def _write_state(home: Path | str, state: ServerState) -> None:
    path = service_dir(home) / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(state), f, indent=2)
    os.replace(tmp, path)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


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


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def server_env(venv: Path, state: ServerState) -> dict[str, str]:
    """The whole environment of the Label Studio process (nothing else leaks in)."""
    env = {k: os.environ[k] for k in _PASSTHROUGH_ENV if k in os.environ}
    env.update(
        PATH=f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        VIRTUAL_ENV=str(venv),
        LABEL_STUDIO_USERNAME=state.username,
        LABEL_STUDIO_PASSWORD=state.password,
        LABEL_STUDIO_USER_TOKEN=state.token,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_BASE_DATA_DIR=state.data_dir,
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=state.document_root,
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        # calls home off (STACK.md)
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        # loopback development server: our webhook receiver is on 127.0.0.1 too
        SSRF_PROTECTION_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    return env


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
    from fleetloop.store.locks import file_lock

    home = Path(home).resolve()
    sdir = service_dir(home)
    sdir.mkdir(parents=True, exist_ok=True)
    with file_lock(sdir / ".start.lock", timeout=timeout + 120):  # two starts at once: one server
        return _start_locked(home, sdir, port, venv, data_dir, timeout, install_if_missing)


def _start_locked(
    home: Path,
    sdir: Path,
    port: int,
    venv: Path | None,
    data_dir: Path | None,
    timeout: float,
    install_if_missing: bool,
) -> ServerState:
    previous = read_state(home)
    if previous and _pid_alive(previous.pid) and health(previous.url, previous.token):
        return previous
    venv = install(home, venv=venv) if install_if_missing else Path(venv or default_venv(home)).resolve()
    if not _executable(venv).exists():
        raise LabelStudioServerError(f"Label Studio is not installed in {venv}; run install() first")
    data = Path(data_dir or sdir / "data").resolve()
    first_start = not (data / "label_studio.sqlite3").exists()
    if previous and not first_start and Path(previous.data_dir) == data:
        token, password, username = previous.token, previous.password, previous.username
    elif first_start:
        token, password, username = secrets.token_hex(20), secrets.token_urlsafe(18), DEFAULT_USER
    else:
        raise LabelStudioServerError(
            f"{data} holds a Label Studio database fleetloop did not create (no matching {sdir / 'state.json'}):"
            " its token is unknown; point settings.label_studio.url/token at it, or use a fresh data dir"
        )
    if not _port_free(port):
        raise LabelStudioServerError(f"port {port} on 127.0.0.1 is in use; set FLEETLOOP_LABEL_STUDIO__PORT")
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
    log = open(sdir / "server.log", "ab")
    cmd = [
        str(_executable(venv)),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data),
        "--enable-legacy-api-token",
    ]
    proc = subprocess.Popen(
        cmd,
        env=server_env(venv, state),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=sdir,
    )
    log.close()
    state = ServerState(**{**asdict(state), "pid": proc.pid})
    _write_state(home, state)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabelStudioServerError(
                f"Label Studio exited with code {proc.returncode} during start; see {sdir / 'server.log'}"
            )
        if health(state.url):
            break
        time.sleep(0.5)
    else:
        stop(home)
        raise LabelStudioServerError(f"Label Studio not healthy after {timeout:.0f}s; see {sdir / 'server.log'}")
    _check_token(state)
    return state


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
    """Stop the server started by :func:`start` (its process group, by pid). True if one was running."""
    state = read_state(home)
    if not state or not _pid_alive(state.pid):
        return False
    assert state.pid is not None
    if not _is_our_server(state.pid):  # a stale pid reused by another process: never signal it
        _write_state(home, ServerState(**{**asdict(state), "pid": None}))
        return False
    os.killpg(state.pid, signal.SIGTERM)  # started with start_new_session: pgid == pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(state.pid):
        _reap(state.pid)
        time.sleep(0.2)
    if _pid_alive(state.pid):
        os.killpg(state.pid, signal.SIGKILL)
        time.sleep(0.2)
        _reap(state.pid)
    _write_state(home, ServerState(**{**asdict(state), "pid": None}))
    return True


def _is_our_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        return b"label-studio" in cmdline and os.getpgid(pid) == pid
    except (OSError, ProcessLookupError):
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


class LabelStudioService:
    """The :class:`fleetloop.local.services.Service` for ``fleetloop services up|down|status``.

    With ``settings.label_studio.url`` set, the server is external (production): nothing is
    started and status reports its health."""

    name = "label-studio"

    def url(self, settings) -> str:
        return (settings.label_studio.url or f"http://127.0.0.1:{settings.label_studio.port}").rstrip("/")

    def health(self, url: str, timeout: float = 2.0) -> bool:
        return health(url, timeout=timeout)

    def start(self, settings):
        if settings.label_studio.url:
            return self.status(settings)
        from fleetloop.local.services import ServiceError

        try:
            start(settings.home, port=settings.label_studio.port)
        except LabelStudioServerError as exc:
            raise ServiceError(f"label-studio: {exc}") from exc
        return self.status(settings)

    def stop(self, settings) -> bool:
        return False if settings.label_studio.url else stop(settings.home)

    def status(self, settings):
        from fleetloop.local.services import ServiceStatus

        url = self.url(settings)
        if settings.label_studio.url:
            return ServiceStatus(
                name=self.name,
                url=url,
                healthy=self.health(url),
                running=False,
                mode="external",
                detail="configured in settings; not managed by fleetloop",
            )
        state = read_state(settings.home)
        log = str(service_dir(settings.home) / "server.log")
        if state is None or not _pid_alive(state.pid):
            installed = _executable(default_venv(settings.home)).exists()
            return ServiceStatus(
                name=self.name,
                url=url,
                healthy=False,
                running=False,
                mode="local",
                log=log,
                detail="not running: start it with `fleetloop services up`"
                + ("" if installed else " (first start installs Label Studio, ~1 min)"),
            )
        healthy = health(state.url, state.token)
        return ServiceStatus(
            name=self.name,
            url=state.url,
            healthy=healthy,
            running=True,
            mode="local",
            pid=state.pid,
            log=log,
            detail="" if healthy else "running but not healthy",
        )


LABEL_STUDIO = LabelStudioService()
