"""Reading the dataset: ``status``, ``history``, and ``checkout`` of a version from the remotes.

``checkout`` needs nothing but the remotes: it clones the git remote (or the working repository
when there is none), checks out the tag ``dataset-vN`` and pulls the data from the DVC remote.
:func:`fleetloop.dataset.batches.materialize` then folds the checked-out batches into one
``(frames, labels)`` view (what the training pipeline's prepare stage reads).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from fleetloop.dataset.config import DatasetConfig, DatasetError
from fleetloop.dataset.dvc import Repo
from fleetloop.dataset.growth import read_manifest
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


def latest_manifest(config: DatasetConfig) -> Manifest | None:
    """The manifest of the newest tagged version in the working repository (None when none)."""
    repo = Repo(config.repo_dir, config)
    if not repo.exists():
        return None
    versions = _versions(repo)
    return read_manifest(repo, tag_of(versions[-1])) if versions else None


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
    if to_dir.exists() and (not to_dir.is_dir() or any(to_dir.iterdir())):
        raise DatasetError(f"{to_dir} is not an empty directory: check out into a new or empty one")
    source = config.git_remote or str(Path(config.repo_dir).resolve())
    if not config.git_remote and not Repo(config.repo_dir, config).exists():
        raise DatasetError(f"no dataset repository at {config.repo_dir} and no git remote configured")
    tag = tag_of(version)
    to_dir.parent.mkdir(parents=True, exist_ok=True)
    probe = Repo(to_dir.parent, config)
    refs = probe.git("ls-remote", "--tags", source, cwd=to_dir.parent).stdout
    known = sorted(int(hit.group(1)) for line in refs.splitlines()
                   if (hit := re.search(rf"refs/tags/{TAG_PREFIX}(\d+)$", line)))
    if version not in known:
        have = f"versions {known[0]}..{known[-1]}" if known else "no versions"
        raise DatasetError(f"no dataset version {version} ({tag}) in {source}: it has {have}")
    created = not to_dir.exists()
    try:
        repo = Repo.clone(source, to_dir, config, rev=f"refs/tags/{tag}")
        repo.configure_dvc_remote(local=True)
        repo.pull()
        m = read_manifest(repo)
    except BaseException:
        if created:
            Repo.discard(to_dir)
        else:
            for child in to_dir.iterdir():
                Repo.discard(child) if child.is_dir() else child.unlink()
        raise
    if m is None or m.version != version:
        raise DatasetError(f"{tag} in {source} holds no manifest for version {version}")
    return CheckoutResult(version=version, tag=tag, path=str(to_dir), frames=m.frames, objects=m.objects,
                          batches=len(m.batches))
