"""Reading the dataset: ``status``, ``history``, and ``checkout`` of a version from the remotes.

``checkout`` needs nothing but the remotes: it clones the git remote (or the working repository
when there is none), checks out the tag ``dataset-vN`` and pulls the data from the DVC remote.
:func:`fleetloop.dataset.batches.materialize` then folds the checked-out batches into one
``(frames, labels)`` view (what the training pipeline's prepare stage reads).
"""

from __future__ import annotations

import contextlib
import os
import re
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from fleetloop.dataset.batches import BATCHES_DIR
from fleetloop.dataset.config import DatasetConfig, DatasetError, check_dir_path
from fleetloop.dataset.dvc import Repo
from fleetloop.dataset.growth import misplaced_tag, read_manifest
from fleetloop.dataset.manifest import TAG_PREFIX, Manifest, SplitCount, VersionInfo, tag_of

__all__ = ["CheckoutResult", "DatasetStatus", "checkout", "history", "latest_manifest", "status"]

_TAG = re.compile(rf"^{TAG_PREFIX}(\d+)$")


class DatasetStatus(BaseModel):
    version: int  # 0: no version yet
    tag: str | None
    frames: int = 0
    objects: int = 0
    splits: dict[str, SplitCount] = Field(default_factory=dict)
    created_at: datetime | None = None
    repo: str
    remote: str  # the DVC remote
    git_remote: str | None = None
    pending: bool = False  # a killed grow left a commit the next grow will tag


class CheckoutResult(BaseModel):
    version: int
    tag: str
    path: str
    frames: int
    objects: int
    batches: int


def _versions(repo: Repo) -> list[int]:
    return sorted(int(m.group(1)) for t in repo.tags(TAG_PREFIX) if (m := _TAG.match(t)))


def published(config: DatasetConfig) -> list[int] | None:
    """The numbers of the published versions, oldest first; None when ``config.repo_dir`` is not
    a dataset repository (git + DVC) at all."""
    repo = Repo(config.repo_dir, config)
    return _versions(repo) if repo.exists() else None


def compact(versions: list[int]) -> str:
    """``[1, 3, 4, 5, 9]`` -> ``"1, 3..5, 9"``."""
    runs: list[list[int]] = []
    for v in sorted(set(versions)):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}, {b}" if b == a + 1 else f"{a}..{b}" for a, b in runs)


def latest_manifest(config: DatasetConfig) -> Manifest | None:
    """The manifest of the newest tagged version in the working repository (None when none)."""
    check_dir_path(Path(config.repo_dir), "the dataset repository")
    repo = Repo(config.repo_dir, config)
    if not repo.exists():
        return None
    versions = _versions(repo)
    if not versions:
        return None
    m = read_manifest(repo, tag_of(versions[-1]))
    if m is None or m.version != versions[-1]:
        raise misplaced_tag(repo.root, tag_of(versions[-1]), m.version if m else None)
    return m


def status(config: DatasetConfig) -> DatasetStatus:
    """The newest published version (``version`` 0 when the dataset is empty)."""
    repo = Repo(config.repo_dir, config)
    m = latest_manifest(config)
    pending = False
    if m is not None or repo.exists():
        head = read_manifest(repo) if repo.exists() else None
        pending = head is not None and head.version > (m.version if m else 0)
    base = DatasetStatus(version=0, tag=None, repo=str(config.repo_dir), remote=config.resolved_remote_url(),
                         git_remote=config.git_remote, pending=pending)
    if m is None:
        return base
    return base.model_copy(update=dict(version=m.version, tag=m.tag, frames=m.frames, objects=m.objects,
                                       splits=m.splits, created_at=m.created_at))


def history(config: DatasetConfig) -> list[VersionInfo]:
    """Every version, oldest first."""
    m = latest_manifest(config)
    return list(m.history) if m else []


def checkout(version: int, to_dir: Path, config: DatasetConfig) -> CheckoutResult:
    """Materialise version ``version`` into the empty (or missing) directory ``to_dir`` from the
    git remote (else the working repository) and the DVC remote."""
    to_dir = Path(to_dir).expanduser().resolve()
    check_dir_path(to_dir, "the checkout directory")
    repo_root = Path(config.repo_dir).expanduser().resolve()
    if to_dir == repo_root or repo_root in to_dir.parents:
        raise DatasetError(f"{to_dir} is inside the dataset repository {repo_root}: check out outside it (grow "
                           "resets that work tree and removes batch folders it did not commit)")
    if to_dir.exists() and any(to_dir.iterdir()):
        raise DatasetError(f"{to_dir} is not an empty directory: check out into a new or empty one")
    source = config.git_remote or str(Path(config.repo_dir).resolve())
    if not config.git_remote:
        check_dir_path(Path(config.repo_dir), "the dataset repository")
        if not Repo(config.repo_dir, config).exists():
            raise DatasetError(f"no dataset repository at {config.repo_dir} and no git remote configured")
    tag = tag_of(version)
    try:
        to_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create {to_dir.parent} for the checkout: {exc.strerror or exc}") from None
    probe = Repo(to_dir.parent, config)
    refs = probe.git("ls-remote", "--tags", source, cwd=to_dir.parent).stdout
    known = sorted(int(hit.group(1)) for line in refs.splitlines()
                   if (hit := re.search(rf"refs/tags/{TAG_PREFIX}(\d+)$", line)))
    if version not in known:
        have = f"versions {compact(known)}" if known else "no versions"
        raise DatasetError(f"no dataset version {version} ({tag}) in {source}: it has {have}")
    # built beside to_dir and renamed into place at the end: a killed checkout leaves no to_dir that
    # looks complete, only a hidden .<name>.checkout-<pid> the next checkout into to_dir removes
    _discard_stale(to_dir)
    tmp = to_dir.parent / f".{to_dir.name}.checkout-{os.getpid()}"
    if tmp.exists():
        Repo.discard(tmp)
    try:
        repo = Repo.clone(source, tmp, config, rev=f"refs/tags/{tag}")
        m = read_manifest(repo)
        if m is None or m.version != version:  # checked before pulling the data
            raise misplaced_tag(source, tag, m.version if m else None)
        repo.configure_dvc_remote(local=True)
        try:
            repo.pull()
        except DatasetError as exc:
            cause = str(exc).replace(f" in {tmp}", "").replace(f"{tmp.name}/", "")
            raise DatasetError(_unpullable(repo, tag, cause)) from None
        try:
            os.rename(tmp, to_dir)  # onto a missing or empty directory
        except OSError as exc:
            raise DatasetError(f"cannot move the checkout into {to_dir}: {exc.strerror or exc}") from None
    except BaseException:
        if tmp.exists():
            Repo.discard(tmp)
        raise
    return CheckoutResult(version=version, tag=tag, path=str(to_dir), frames=m.frames, objects=m.objects,
                          batches=len(m.batches))


_MISSING_DATA = ("Missing cache files", "failed to transfer", "do not exist")
_DIR_HASH = re.compile(r"md5: ([0-9a-f]{32})\.dir")


def _unpullable(repo: Repo, tag: str, cause: str) -> str:
    """Why ``tag``'s data could not be pulled, naming the batches whose data the DVC remote lacks
    and how to push them again (a failed pull of them all says neither)."""
    remote = repo.config.resolved_remote_url()
    targets = sorted(f"{BATCHES_DIR}/{p.name}" for p in (repo.root / BATCHES_DIR).glob("*.dvc"))
    try:
        bad = repo.unpullable(targets)
    except DatasetError:
        bad = targets
    if not bad or not any(m in cause for m in _MISSING_DATA):
        return f"{tag}'s data could not be pulled from the DVC remote {remote}: {cause}"
    names = [Path(t).name.removesuffix(".dvc") for t in bad]
    listings = []
    for t in bad:
        found = _DIR_HASH.search((repo.root / t).read_text(errors="replace"))
        if found:
            listings.append(f"files/md5/{found.group(1)[:2]}/{found.group(1)[2:]}.dir")
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    listing = (f"delete {', '.join(listings[:5])} from the remote if there (DVC takes a batch whose listing it "
               "finds as complete), then " if listings else "")
    return (f"{tag}'s data is missing from the DVC remote {remote}: batch{'es' if len(names) > 1 else ''} {shown} "
            f"({len(names)} of {len(targets)}; {cause}). To repair, push it again from a repository whose DVC cache "
            f"still holds it (the working repository {Path(repo.config.repo_dir).resolve()}): {listing}"
            f"`dvc push {' '.join(bad[:5])}` there")


def _discard_stale(to_dir: Path) -> None:
    """Remove what a killed checkout into ``to_dir`` left (its process is gone)."""
    for leftover in to_dir.parent.glob(f".{to_dir.name}.checkout-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        with contextlib.suppress(OSError):
            Repo.discard(leftover)
