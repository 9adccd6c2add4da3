"""The production profile without Docker: the services of ``infra/docker-compose.yaml`` on loopback.

One PostgreSQL server holds both compose databases (``prefect`` and ``labelstudio``, each with its
own role and password, created as the postgres image creates them); the Prefect server (a real
``prefect server start`` process) and Label Studio run on it; a moto S3 server stands in for MinIO
(object store, DVC remote, model registry); ``fleetloop worker`` is the process worker. Every
service's environment comes from the compose file (:mod:`tests.production.compose`): the test
only supplies the secrets of ``infra/.env`` and the loopback addresses of the compose network.

Everything started here is stopped here, by pid (``pg_ctl stop`` for PostgreSQL).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fleetloop.local import label_studio as ls_server
from fleetloop.local.label_studio import health as ls_health
from fleetloop.local.process import WORKER_STOP, Launch, clean_env, spawn, stop_tree
from fleetloop.local.server import ServerProcess, http_ok
from tests.fixtures_ls import REPO, free_port
from tests.production import compose
from tests.production.compose import Address
from tests.production.postgres import Postgres, PostgresUnavailable, find_bindir

if TYPE_CHECKING:  # imported by the test module as a plugin (pytest_plugins): no import here
    from tests.fixtures_s3 import S3Server

LOOPBACK = "127.0.0.1"


@dataclass
class Profile:
    """The running profile: addresses, the compose variables (the secrets of ``infra/.env``),
    the environment a `fleetloop` process of the deployment gets, and the servers."""

    home: Path
    variables: dict[str, str]
    addresses: dict[tuple[str, int], Address]
    worker_env: dict[str, str]
    prefect: ServerProcess
    prefect_launch: Launch
    label_studio: ServerProcess
    postgres: Postgres
    s3: S3Server
    worker_logs: list[Path] = field(default_factory=list)

    @property
    def prefect_url(self) -> str:
        a = self.addresses[("prefect-server", 4200)]
        return f"http://{a.host}:{a.port}"

    @property
    def api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def label_studio_url(self) -> str:
        a = self.addresses[("label-studio", 8080)]
        return f"http://{a.host}:{a.port}"

    def prefect_healthy(self) -> bool:
        return http_ok(f"{self.api_url}/health")

    def start_prefect(self, timeout: float = 180) -> None:
        with self.prefect.lock():
            self.prefect.start(self.prefect_launch, {"url": self.prefect_url}, self.prefect_healthy, timeout)

    def stop_prefect(self) -> None:
        with self.prefect.lock():
            self.prefect.stop()


def _variables(s3_endpoint: str, prefect_url: str, ls_url: str) -> dict[str, str]:
    """What ``infra/.env`` holds in a deployment (infra/README.md, "Secrets"), for this run."""
    return {
        "PREFECT_DB_PASSWORD": secrets.token_hex(12),
        "MINIO_ROOT_USER": "fleetloop",
        "MINIO_ROOT_PASSWORD": secrets.token_hex(12),
        "LABEL_STUDIO_DB_PASSWORD": secrets.token_hex(12),
        "LABEL_STUDIO_SECRET_KEY": secrets.token_hex(25),
        "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(12),
        "LABEL_STUDIO_TOKEN": secrets.token_hex(20),
        "PREFECT_PUBLIC_URL": prefect_url,
        "LABEL_STUDIO_PUBLIC_URL": ls_url,
        "FLEETLOOP_S3_PUBLIC_ENDPOINT": s3_endpoint,
        "FLEETLOOP_BUCKET": f"fleetloop-{secrets.token_hex(4)}",  # the S3 server is shared with other tiers
    }


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    try:
        find_bindir()
        server = Postgres(free_port())
    except PostgresUnavailable as exc:
        pytest.skip(f"production profile: {exc}")
    try:
        server.start()
        yield server
    finally:
        server.remove()


def _label_studio_launch(venv: Path, port: int, data: Path, env: dict[str, str]) -> Launch:
    # the image runs `label-studio` with its data under /label-studio/data; here: a data dir under the test's home
    argv = [str(venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host", LOOPBACK,
            "--port", str(port), "--data-dir", str(data)]
    base = {"PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "VIRTUAL_ENV": str(venv), "PYTHONUNBUFFERED": "1"}
    return Launch(argv=argv, env=clean_env(base | env, inherit=("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")),
                  cwd=data.parent)


@pytest.fixture(scope="module")
def profile(postgres: Postgres, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Profile]:
    """PostgreSQL with both databases, the Prefect server and Label Studio on it (started side by
    side), the S3 bucket; the worker's environment. No worker yet (see ``worker``)."""
    home = tmp_path_factory.mktemp("production")
    addresses = {
        ("prefect-db", 5432): Address(LOOPBACK, postgres.port),
        ("label-studio-db", 5432): Address(LOOPBACK, postgres.port),
        ("prefect-server", 4200): Address(LOOPBACK, free_port()),
        ("label-studio", 8080): Address(LOOPBACK, free_port()),
        ("minio", 9000): Address(LOOPBACK, s3_server.port),
    }
    ps, lsa = addresses[("prefect-server", 4200)], addresses[("label-studio", 8080)]
    variables = _variables(s3_server.endpoint_url, f"http://{ps.host}:{ps.port}", f"http://{lsa.host}:{lsa.port}")
    spec = compose.load()
    for db in ("prefect-db", "label-studio-db"):  # what the postgres image does on its first start
        e = compose.service_env(db, variables, addresses, spec)
        postgres.create_database(e["POSTGRES_USER"], e["POSTGRES_PASSWORD"], e["POSTGRES_DB"])
    bucket = compose.service_env("minio-init", variables, addresses, spec)["BUCKET"]
    s3_server.client().create_bucket(Bucket=bucket)  # what minio-init does

    prefect_dir = home / "prefect"
    prefect_dir.mkdir()
    prefect_env = compose.service_env("prefect-server", variables, addresses, spec)
    prefect_launch = Launch(
        argv=[sys.executable, "-m", "prefect", *compose.prefect_server_argv(ps.host, ps.port, spec)],
        env=clean_env(prefect_env | {"PREFECT_HOME": str(prefect_dir)}), cwd=prefect_dir)

    venv = Path(os.environ.get("FLEETLOOP_TEST_LS_VENV") or ls_server.default_venv(REPO / ".fleetloop"))
    ls_server.install(REPO / ".fleetloop", venv=venv)
    ls_env = compose.service_env("label-studio", variables, addresses, spec)
    ls_launch = _label_studio_launch(venv, lsa.port, home / "label-studio" / "data", ls_env)
    (home / "label-studio" / "data").mkdir(parents=True)

    worker_env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETLOOP_", "PREFECT_", "AWS_"))}
    worker_env |= compose.service_env("worker", variables, addresses, spec) | {
        "FLEETLOOP_HOME": str(home / "fleetloop"),
        # only the compose file's credentials (absent files: /dev/null breaks DVC's S3 config loading)
        "AWS_CONFIG_FILE": str(home / "no-aws" / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws" / "credentials"),
    }
    p = Profile(home=home, variables=variables, addresses=addresses, worker_env=worker_env,
                prefect=ServerProcess("prefect", prefect_dir, command_word="prefect"), prefect_launch=prefect_launch,
                label_studio=ServerProcess("label-studio", home / "label-studio", command_word="label-studio"),
                postgres=postgres, s3=s3_server)
    token = variables["LABEL_STUDIO_TOKEN"]
    errors: list[BaseException] = []

    def start_label_studio() -> None:  # its first start on an empty database migrates for a minute
        try:
            with p.label_studio.lock():
                p.label_studio.start(ls_launch, {"url": p.label_studio_url}, lambda: ls_health(p.label_studio_url),
                                     timeout=300)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=start_label_studio)
    t.start()
    try:
        try:
            p.start_prefect()
        finally:
            t.join()
        if errors:
            raise errors[0]
        assert ls_health(p.label_studio_url, token), "Label Studio rejects the compose file's LABEL_STUDIO_TOKEN"
        yield p
    finally:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=30)  # events of this process go out while their server is up
        for server in (p.label_studio, p.prefect):
            with server.lock():
                server.stop()


@dataclass
class Worker:
    """`fleetloop worker` (the compose file's worker command) as a subprocess; stopped by pid."""

    profile: Profile
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.profile.home / f"worker-{len(self.profile.worker_logs)}.log"
        self.profile.worker_logs.append(log)
        cwd = self.profile.home / "worker"
        cwd.mkdir(exist_ok=True)
        self.proc = spawn(Launch(argv=[sys.executable, "-m", "fleetloop", "worker"], env=self.profile.worker_env,
                                 cwd=cwd), log)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_tree(self.proc.pid, steps=WORKER_STOP)
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="module")
def worker(profile: Profile) -> Iterator[Worker]:
    w = Worker(profile)
    try:
        yield w
    finally:
        w.stop()


def fleetloop_cli(profile: Profile, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run a `fleetloop` command with the deployment's environment (as `docker compose exec worker`),
    plus ``env``."""
    cwd = profile.home / "worker"
    cwd.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "fleetloop", *args], env=profile.worker_env | (env or {}), cwd=cwd,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"fleetloop {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


