"""A throwaway PostgreSQL server for the production profile: ``initdb`` in a temporary directory,
``pg_ctl start`` on a loopback port (its unix socket in that directory), password logins only.

PostgreSQL refuses to run as root: as root (CI) ``initdb``, ``pg_ctl`` and the server run as the
``postgres`` user the Debian package creates, in a directory owned by it; otherwise as the current
user. The binaries are looked up on PATH, then in ``/usr/lib/postgresql/<version>/bin`` (Debian,
Ubuntu) and ``/usr/pgsql-<version>/bin`` (RHEL); ``FLEETLOOP_TEST_PG_BIN`` names another
directory. ``.ci/run`` installs the package when none is found.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["Postgres", "PostgresUnavailable", "find_bindir"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here (the message says where they were looked for)."""


def _version_key(path: str) -> tuple[int, ...]:
    digits = [p for p in Path(path).parent.parent.name.replace("pgsql-", "").split(".") if p.isdigit()]
    return tuple(int(d) for d in digits)


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``psql`` (the newest version found)."""
    explicit = os.environ.get("FLEETLOOP_TEST_PG_BIN")
    candidates = [explicit] if explicit else []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for pattern in ("/usr/lib/postgresql/*/bin/initdb", "/usr/pgsql-*/bin/initdb"):
        candidates += [str(Path(p).parent) for p in sorted(glob.glob(pattern), key=_version_key, reverse=True)]
    for d in candidates:
        if all((Path(d) / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            return Path(d)
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl, psql) on PATH, in /usr/lib/postgresql/*/bin or "
        "/usr/pgsql-*/bin: install PostgreSQL (`apt-get install postgresql`; .ci/run does it) or set "
        "FLEETLOOP_TEST_PG_BIN")


def _session_mark() -> dict[str, str]:
    """The test session's marker (tests/process_guard.py): a server left running fails the session."""
    mark = os.environ.get("FLEETLOOP_TEST_SESSION")
    return {"FLEETLOOP_TEST_SESSION": mark} if mark else {}


class Postgres:
    """One server on ``127.0.0.1:<port>``; :meth:`create_database` adds a role and its database."""

    superuser = "postgres"

    def __init__(self, port: int, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.port = port
        self.password = secrets.token_hex(12)
        self.os_user: str | None = None  # run as this user (root can not run PostgreSQL)
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no `postgres` user to run PostgreSQL as "
                                          "(the postgresql package creates it)") from None
            self.os_user = "postgres"
        # not under pytest's tmp_path: that is private to root (mode 0700), the server's user must reach it
        self.root = Path(tempfile.mkdtemp(prefix="fleetloop-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if self.os_user:
            shutil.chown(self.root, self.os_user, self.os_user)

    def _run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
        proc = subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout, cwd=self.root,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", **_session_mark(), **(env or {})},
            user=self.os_user, group=self.os_user, extra_groups=[] if self.os_user else None,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
        return proc.stdout

    def start(self) -> None:
        """``initdb`` on the first call, then start the server and wait until it accepts logins."""
        if not self.data.exists():
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self.os_user:
                shutil.chown(pwfile, self.os_user, self.os_user)
            self._run("initdb", "-D", str(self.data), "-U", self.superuser, "--pwfile", str(pwfile),
                      "--auth", "scram-sha-256", "-E", "UTF8", "--no-instructions")
            pwfile.unlink()
        # fsync off: a test database, thrown away afterwards (the compose file sets no server options)
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options)

    def sql(self, statement: str, database: str = "postgres") -> str:
        return self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.superuser, "-d", database,
                         "-v", "ON_ERROR_STOP=1", "-tAc", statement, env={"PGPASSWORD": self.password})

    def create_database(self, user: str, password: str, database: str) -> None:
        """What the postgres image does with POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB."""
        self.sql(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'")
        self.sql(f'CREATE DATABASE "{database}" OWNER "{user}"')

    def pid(self) -> int | None:
        """The postmaster's pid (first line of postmaster.pid), None when it is not running."""
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; the postmaster killed by its recorded pid if that fails."""
        if self.data.exists() and self.pid() is not None:
            try:
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                pid = self.pid()
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGQUIT)  # immediate shutdown; the children follow the postmaster
                    time.sleep(2)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
