"""The one module that runs git and DVC: git's command line, DVC's Python API and DVC's command line.

git runs as a subprocess (``GIT_TERMINAL_PROMPT=0``, quiet). DVC has no public Python write API
(treeverse/dvc #7071); its internal ``dvc.repo.Repo`` (the pinned 3.67) is used in-process here and
nowhere else, for the dataset's hot path (:meth:`Repo.api`: add, push, pull, config), because
starting ``dvc`` as a command costs ~1 s of imports per call, which would dominate a growth step.
On first use the adapter removes the stdout handlers DVC installs on import (nothing reaches the
CLI's JSON output) and sets ``DVC_NO_ANALYTICS=1``; DVC's warnings during a call are collected
and quoted when it fails. :meth:`Repo.dvc` runs the ``dvc`` command line of this interpreter
(``python -m dvc … --quiet``) for long or pipeline commands (``repro``, ``import``, ``update``).
Repositories are created with ``core.analytics`` and ``core.check_update`` off. Any failure raises
:class:`~fleetloop.dataset.config.DatasetError` naming the command, the directory and the tail of
its output. DVC's repository lock (held by another DVC process, DVC #10465) is retried with
backoff on both paths; callers also serialise every write with :func:`repo_lock` (a ``flock``
beside the repository).

Names: the DVC remote is ``storage`` (the repository's default remote), the git remote ``origin``,
the branch ``main``. S3 credentials reach DVC as per-call config overrides (API) or environment
variables (command line), never written to a file; an endpoint URL's embedded credentials
(``user:pass@``) are not written to ``.dvc/config`` either (they would be committed and pushed), and
credentials in URLs are masked in every error message (a git remote's included).
"""

from __future__ import annotations

import configparser
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fleetloop.dataset.config import DatasetConfig, DatasetError
from fleetloop.procs import die_with_parent
from fleetloop.settings import redact
from fleetloop.store.locks import file_lock

__all__ = ["BRANCH", "DVC_REMOTE", "GIT_REMOTE", "Repo", "repo_lock"]

DVC_REMOTE = "storage"
GIT_REMOTE = "origin"
BRANCH = "main"
IDENTITY = {"user.name": "fleetloop", "user.email": "fleetloop@localhost"}

_LOCK_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")
T = TypeVar("T")
_LOCK_MESSAGES = ("Unable to acquire lock", "is busy, it is being blocked by")


@contextlib.contextmanager
def repo_lock(config: DatasetConfig) -> Iterator[None]:
    """Hold the dataset's write lock (every write to the repository runs under it)."""
    from fleetloop.store.locks import LockTimeout

    try:
        with file_lock(config.lock_file, timeout=config.lock_timeout_s):
            yield
    except LockTimeout as exc:
        raise DatasetError(f"another process is writing the dataset repository {config.repo_dir}: {exc}") from exc


_DVC_LOGGERS = ("dvc", "dvc_data", "dvc_objects")
_dvc_lock = threading.Lock()
_dvc_imported = False


def _dvc_api() -> tuple[Any, type[Exception], type[Exception]]:
    """DVC's Repo, DvcException and LockError; on first use, DVC's console handlers are removed."""
    global _dvc_imported
    with _dvc_lock:
        os.environ.setdefault("DVC_NO_ANALYTICS", "1")
        from dvc.exceptions import DvcException
        from dvc.lock import LockError
        from dvc.repo import Repo as DvcRepo

        if not _dvc_imported:
            for name in _DVC_LOGGERS:
                logger = logging.getLogger(name)
                for handler in list(logger.handlers):
                    logger.removeHandler(handler)
                logger.setLevel(logging.WARNING)
            _dvc_imported = True
    return DvcRepo, DvcException, LockError


class _Capture(logging.Handler):
    """DVC's warnings and errors during one call (quoted when the call fails)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(f"{record.levelname}: {record.getMessage()}")


def _remote_section(config: DatasetConfig) -> dict[str, str]:
    section = {"url": config.resolved_remote_url()}
    if config.s3_endpoint_url:
        # committed in .dvc/config: without an embedded user:pass@ (S3 signs with the keys, never
        # with the URL's userinfo; the keys reach DVC per call, see _dvc_overrides)
        section["endpointurl"] = _CREDENTIALS.sub(r"\1", config.s3_endpoint_url)
    return section


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CAUSE = re.compile(r"^(ERROR|error|fatal):")
_PIECE = 400


def _clip(line: str) -> str:
    return line if len(line) <= _PIECE else line[:_PIECE] + "…"


def _tail(text: str) -> str:
    """A command's output in one line: the cause (DVC's first ``ERROR:`` line, git's first
    ``fatal:``/``error:`` line, else the first line; a line ending in ``:`` keeps the next one),
    DVC's first ``WARNING:`` line when there is one (it often says which files are missing), and how
    many lines were left out. Credentials in URLs are masked."""
    text = _ANSI.sub("", redact(text.strip()))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    i = next((k for k, line in enumerate(lines) if _CAUSE.match(line)), 0)
    used = {i}
    cause = lines[i]
    if cause.endswith(":") and i + 1 < len(lines):
        cause += " " + lines[i + 1]
        used.add(i + 1)
    parts = [_clip(cause)]
    warning = next((k for k, line in enumerate(lines) if line.startswith("WARNING:") and k not in used), None)
    if warning is not None:
        parts.append(_clip(lines[warning]))
        used.add(warning)
    left = len(lines) - len(used)
    return "; ".join(parts) + (f" (+{left} more line{'s' if left != 1 else ''})" if left else "")


class Repo:
    """A dataset repository (git + DVC) at ``root``, with the remotes of ``config``."""

    def __init__(self, root: Path, config: DatasetConfig) -> None:
        self.root = Path(root)
        self.config = config

    # ------------------------------------------------------------------ running commands

    def _env(self) -> dict[str, str]:
        return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}

    def _run(self, argv: Sequence[str], what: str, cwd: Path | None = None, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cwd = cwd or self.root
        what = redact(what)  # a URL argument's user:pass@ (a git remote) masked
        try:
            proc = subprocess.run(
                list(argv), cwd=cwd, env=env or self._env(), capture_output=True, text=True,
                timeout=self.config.command_timeout_s, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(),
            )
        except subprocess.TimeoutExpired as exc:
            raise DatasetError(f"`{what}` in {cwd} did not finish in {self.config.command_timeout_s:.0f} s") from exc
        except OSError as exc:
            raise DatasetError(f"`{what}` in {cwd} could not start: {exc}") from exc
        if check and proc.returncode != 0:
            raise DatasetError(
                f"`{what}` failed in {cwd} (exit {proc.returncode}): {_tail(proc.stderr or proc.stdout) or 'no output'}"
            )
        return proc

    def git(self, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        argv = ["git", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-c", "advice.detachedHead=false",
                *args]
        return self._run(argv, "git " + " ".join(args), cwd=cwd, check=check)

    def _dvc_overrides(self) -> dict[str, Any]:
        c = self.config
        remote: dict[str, Any] = {}
        if c.remote_is_s3:
            if c.s3_access_key_id is not None and c.s3_secret_access_key is not None:
                remote["access_key_id"] = c.s3_access_key_id.get_secret_value()
                remote["secret_access_key"] = c.s3_secret_access_key.get_secret_value()
            if c.s3_region:
                remote["region"] = c.s3_region
        return {"remote": {DVC_REMOTE: remote}} if remote else {}

    def api(self, what: str, fn: Callable[[Any], T], *, overrides: bool = True) -> T:
        """Run ``fn(dvc_repo)`` on this repository through DVC's API, retrying while another DVC
        process holds the repository lock. ``what`` names the operation in errors."""
        DvcRepo, DvcException, LockError = _dvc_api()
        for delay in (*_LOCK_BACKOFF_S, None):
            capture = _Capture()
            for name in _DVC_LOGGERS:
                logging.getLogger(name).addHandler(capture)
            try:
                config = self._dvc_overrides() if overrides else None
                with DvcRepo(str(self.root), config=config) as repo:
                    return fn(repo)
            except LockError as exc:
                if delay is None:
                    raise DatasetError(f"`{what}` in {self.root}: the DVC lock stayed busy: {exc}") from exc
                time.sleep(delay)
            except (DvcException, OSError) as exc:
                detail = "\n".join([*capture.lines, f"ERROR: {exc}"])
                raise DatasetError(f"`{what}` failed in {self.root}: {_tail(detail)}") from exc
            finally:
                for name in _DVC_LOGGERS:
                    logging.getLogger(name).removeHandler(capture)
        raise AssertionError("unreachable")

    def dvc(self, *args: str) -> str:
        """Run the ``dvc`` command line of this interpreter (``python -m dvc <args>``) in the
        repository, retrying while another DVC process holds the repository lock; its stdout. For
        long or pipeline commands (``repro``, ``import``, ``update``) that belong in a subprocess.
        Its output is captured and quoted when it fails (not ``--quiet``: that hides DVC's error)."""
        argv = [sys.executable, "-m", "dvc", *args]
        what = redact("dvc " + " ".join(args))  # `dvc import <git remote>`
        env = {**self._env(), "DVC_NO_ANALYTICS": "1"}
        overrides = self._dvc_overrides().get("remote", {}).get(DVC_REMOTE, {})
        env.update({k: v for k, v in (("AWS_ACCESS_KEY_ID", overrides.get("access_key_id")),
                                      ("AWS_SECRET_ACCESS_KEY", overrides.get("secret_access_key"))) if v})
        if overrides.get("region"):
            env.setdefault("AWS_DEFAULT_REGION", overrides["region"])
        for delay in (*_LOCK_BACKOFF_S, None):
            proc = self._run(argv, what, check=False, env=env)
            if proc.returncode == 0:
                return proc.stdout
            out = proc.stderr or proc.stdout
            if delay is not None and any(m in out for m in _LOCK_MESSAGES):
                time.sleep(delay)
                continue
            raise DatasetError(f"`{what}` failed in {self.root} (exit {proc.returncode}): {_tail(out) or 'no output'}")
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ creating

    def exists(self) -> bool:
        return (self.root / ".git").is_dir() and (self.root / ".dvc").is_dir()

    def _ensure_identity(self) -> None:
        for key, value in IDENTITY.items():
            if self.git("config", "--get", key, check=False).returncode != 0:
                self.git("config", key, value)

    @classmethod
    def create(cls, root: Path, config: DatasetConfig, readme: str) -> Repo:
        """A new repository at ``root``: git + DVC, the remote configured, one initial commit.
        Built in a temporary directory beside ``root`` and renamed into place (a crash leaves no
        half-made repository)."""
        root = Path(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = root.parent / f".{root.name}.init-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        repo = cls(tmp, config)
        repo.git("init", "-q", "-b", BRANCH)
        repo._ensure_identity()
        DvcRepo, _, _ = _dvc_api()
        try:
            DvcRepo.init(str(tmp)).close()
        except Exception as exc:
            raise DatasetError(f"`dvc init` failed in {tmp}: {exc}") from exc

        def _configure(r: Any) -> None:
            with r.config.edit("repo") as conf:
                conf.setdefault("core", {}).update({"analytics": "false", "check_update": "false",
                                                    "remote": DVC_REMOTE})
                conf.setdefault("cache", {})["type"] = "reflink,hardlink,copy"
                conf.setdefault("remote", {})[DVC_REMOTE] = _remote_section(config)

        repo.api("dvc config", _configure, overrides=False)
        (tmp / "README.md").write_text(readme)
        (tmp / "data" / "batches").mkdir(parents=True)
        (tmp / "data" / "batches" / ".gitignore").write_text("")
        repo.git("add", "-A")
        repo.git("commit", "-q", "-m", "Dataset repository (fleetloop)")
        os.rename(tmp, root)
        return cls(root, config)

    @classmethod
    def clone(cls, source: str, dest: Path, config: DatasetConfig, *, rev: str | None = None) -> Repo:
        """``git clone`` ``source`` into ``dest`` (checked out at ``rev`` when given)."""
        runner = cls(Path(dest).parent, config)
        runner.git("clone", "-q", "--no-checkout", source, str(dest), cwd=Path(dest).parent)
        repo = cls(dest, config)
        repo.git("checkout", "-q", rev or BRANCH)
        return repo

    @staticmethod
    def discard(path: Path) -> None:
        """Remove a directory tree (a half-made repository or batch); git and DVC mark files read-only."""
        def _onerror(func, p, _exc):
            with contextlib.suppress(OSError):
                os.chmod(p, 0o700)
                func(p)

        shutil.rmtree(path, onerror=_onerror)

    # ------------------------------------------------------------------ configuration

    def committed_dvc_remote(self, local: bool = False) -> dict[str, str]:
        """The ``storage`` remote's options in ``.dvc/config`` (or ``config.local``)."""
        path = self.root / ".dvc" / ("config.local" if local else "config")
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(path.read_text())
        except (OSError, configparser.Error):
            return {}
        for section in parser.sections():
            if section.strip().strip("'") == f'remote "{DVC_REMOTE}"':
                return {k: v.strip().strip('"') for k, v in parser.items(section)}
        return {}

    def dvc_remote_url(self) -> str | None:
        """The URL the committed ``.dvc/config`` names for the ``storage`` remote (None: none)."""
        return self.committed_dvc_remote().get("url")

    def configure_dvc_remote(self, *, local: bool = False) -> bool:
        """Point the ``storage`` remote at the config's URL and endpoint (``local``: in this clone's
        ``.dvc/config.local`` only). Returns whether anything changed."""
        want = _remote_section(self.config)
        have = self.committed_dvc_remote()
        if local:
            have = {**have, **self.committed_dvc_remote(local=True)}
        if {k: have.get(k) for k in ("url", "endpointurl")} == {"url": want["url"], "endpointurl": want.get(
                "endpointurl")}:
            return False

        def _edit(r: Any) -> None:
            with r.config.edit("local" if local else "repo") as conf:
                section = conf.setdefault("remote", {}).setdefault(DVC_REMOTE, {})
                section.pop("endpointurl", None)
                section.update(want)
                if not local:
                    conf.setdefault("core", {})["remote"] = DVC_REMOTE

        self.api("dvc remote modify", _edit, overrides=False)
        return True

    def configure_git_remote(self, url: str) -> None:
        current = self.git("remote", "get-url", GIT_REMOTE, check=False)
        if current.returncode != 0:
            self.git("remote", "add", GIT_REMOTE, url)
        elif current.stdout.strip() != url:
            self.git("remote", "set-url", GIT_REMOTE, url)

    @staticmethod
    def ensure_bare(url: str, config: DatasetConfig) -> None:
        """A git remote given as a local path that does not exist yet becomes a bare repository."""
        if "://" in url or ":" in url.split("/")[0]:
            return
        path = Path(url).expanduser()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Repo(path.parent, config).git("init", "-q", "--bare", "-b", BRANCH, str(path), cwd=path.parent)

    # ------------------------------------------------------------------ reading

    def head(self) -> str | None:
        proc = self.git("rev-parse", "--verify", "-q", "HEAD", check=False)
        return proc.stdout.strip() or None if proc.returncode == 0 else None

    def show(self, rev: str, path: str) -> bytes | None:
        """The content of ``path`` at ``rev``, or None when it has no such file."""
        proc = subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=self.root, env=self._env(), capture_output=True,
            timeout=self.config.command_timeout_s, stdin=subprocess.DEVNULL,
        )
        return proc.stdout if proc.returncode == 0 else None

    def branch(self) -> str | None:
        """The branch HEAD is on (None: a detached HEAD)."""
        proc = self.git("symbolic-ref", "-q", "--short", "HEAD", check=False)
        return proc.stdout.strip() or None if proc.returncode == 0 else None

    def tags(self, prefix: str) -> dict[str, str]:
        """Tags named ``prefix*`` -> the commit each points to."""
        out = self.git("for-each-ref", "--format=%(refname:short) %(objectname) %(*objectname)",
                       f"refs/tags/{prefix}*").stdout
        tags = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                tags[parts[0]] = parts[2] if len(parts) > 2 else parts[1]  # annotated: the peeled commit
        return tags

    def remote_refs(self) -> dict[str, str]:
        """``git ls-remote origin``: ref -> commit (tags peeled)."""
        out = self.git("ls-remote", GIT_REMOTE).stdout
        refs: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            if ref.endswith("^{}"):
                refs[ref[:-3]] = sha
            else:
                refs.setdefault(ref, sha)
        return refs

    def has_commit(self, sha: str) -> bool:
        return self.git("cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode == 0

    def is_ancestor(self, a: str, b: str) -> bool:
        return self.git("merge-base", "--is-ancestor", a, b, check=False).returncode == 0

    def dirty(self) -> bool:
        return bool(self.git("status", "--porcelain", "--untracked-files=all").stdout.strip())

    def changes(self) -> tuple[list[str], list[str]]:
        """``(changed, untracked)``: tracked paths that differ from HEAD (in the index or the work
        tree), and untracked paths (ignored files excluded)."""
        out = self.git("status", "--porcelain", "-z", "--untracked-files=all").stdout
        changed, untracked = [], []
        entries = iter(out.split("\0"))
        for entry in entries:
            if len(entry) < 4:
                continue
            code, path = entry[:2], entry[3:]
            if code == "??":
                untracked.append(path)
            else:
                changed.append(path)
                if "R" in code or "C" in code:
                    next(entries, None)  # the rename's source path
        return changed, untracked

    # ------------------------------------------------------------------ writing (under repo_lock)

    def remove_stale_git_locks(self) -> list[str]:
        """Lock files a killed git left behind (safe only while holding :func:`repo_lock`)."""
        removed = []
        git_dir = self.root / ".git"
        for lock in [git_dir / "index.lock", git_dir / "HEAD.lock", *git_dir.glob("refs/**/*.lock")]:
            if lock.is_file():
                lock.unlink(missing_ok=True)
                removed.append(str(lock.relative_to(self.root)))
        return removed

    def reset_hard(self) -> None:
        self.git("reset", "-q", "--hard", "HEAD")

    def add(self, path: str) -> None:
        self.api(f"dvc add {path}", lambda r: r.add([self._abs(path)]))

    def push(self, targets: Sequence[str]) -> int:
        """Upload the targets' data the remote lacks; the number of files uploaded."""
        return self.api(f"dvc push {' '.join(targets)}", lambda r: r.push(targets=[self._abs(t) for t in targets],
                                                                         remote=DVC_REMOTE))

    def pull(self, targets: Sequence[str] = ()) -> None:
        self.api(f"dvc pull {' '.join(targets)}".strip(),
                 lambda r: r.pull(targets=[self._abs(t) for t in targets] or None, remote=DVC_REMOTE))

    def unpullable(self, targets: Sequence[str]) -> list[str]:
        """The targets whose data cannot be pulled from the DVC remote, each tried alone (to name
        what is missing after a pull of them all failed; what did arrive is in the cache)."""
        _, DvcException, _ = _dvc_api()

        def _each(r: Any) -> list[str]:
            bad = []
            for t in targets:
                try:
                    r.pull(targets=[self._abs(t)], remote=DVC_REMOTE)
                except (DvcException, OSError):
                    bad.append(t)
            return bad

        return self.api(f"dvc pull {' '.join(targets)}", _each)

    def _abs(self, path: str) -> str:
        """DVC's API resolves relative targets against the process's working directory."""
        return str((self.root / path).resolve())

    def stage(self, paths: Sequence[str]) -> None:
        self.git("add", "--", *paths)

    def commit(self, message: str) -> str:
        self.git("commit", "-q", "-m", message)
        head = self.head()
        assert head is not None
        return head

    def tag(self, name: str, message: str, rev: str = "HEAD") -> None:
        self.git("tag", "-a", name, "-m", message, rev)

    def fetch(self) -> None:
        self.git("fetch", "-q", "--tags", GIT_REMOTE, f"+refs/heads/{BRANCH}:refs/remotes/{GIT_REMOTE}/{BRANCH}")

    def fast_forward(self, rev: str) -> None:
        self.git("merge", "-q", "--ff-only", rev)

    def publish(self, refs: Sequence[str]) -> None:
        """Push ``refs`` (branch and tags) to ``origin`` in one atomic push."""
        self.git("push", "-q", "--atomic", GIT_REMOTE, *refs)
