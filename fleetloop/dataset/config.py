"""Where the dataset repository and its remotes are: :class:`DatasetConfig`.

Derived from the settings at the edges (CLI, flows) with :func:`dataset_config`; the dataset
functions take the config, never the settings. Credentials for an S3 DVC remote come from the
storage settings (or boto3's default chain) and reach DVC through its environment only: they are
never written to the repository's config.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, SecretStr

if TYPE_CHECKING:
    from fleetloop.settings import Settings

__all__ = ["DatasetConfig", "DatasetError", "check_dir_path", "dataset_config"]


class DatasetError(RuntimeError):
    """The dataset repository cannot be read or written (the message says which command failed)."""


def check_dir_path(path: Path, what: str) -> None:
    """:class:`DatasetError` when ``path`` cannot be a directory: it is a file, or a file stands
    where one of its parents should be (``what`` names the path in the message)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise DatasetError(f"{what} {path} is a file, not a directory")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise DatasetError(f"{what} {path} cannot be a directory: {parent} is a file")
            return


class DatasetConfig(BaseModel):
    """The dataset repository (git + DVC) and its remotes."""

    model_config = ConfigDict(frozen=True)

    repo_dir: Path = Field(description="the working dataset repository (git + DVC); created by the first grow")
    dvc_remote_url: str = Field(description="DVC remote: a local directory or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint of an s3:// DVC remote")
    git_remote: str | None = Field(
        None,
        description="git remote the versions are pushed to (a URL or a path; a missing local path becomes a "
        "bare repository). None: the versions live in repo_dir only",
    )
    s3_region: str | None = None
    s3_access_key_id: SecretStr | None = None  # None: boto3's default chain (environment, profile, role)
    s3_secret_access_key: SecretStr | None = None
    command_timeout_s: float = Field(3600.0, gt=0, description="longest a single git/dvc command may run")
    lock_timeout_s: float = Field(1800.0, gt=0, description="longest a grow waits for another writer")

    @property
    def lock_file(self) -> Path:
        """The lock that serialises every write to the repository (beside it, not inside it)."""
        repo = Path(self.repo_dir).resolve()
        return repo.parent / f".{repo.name}.lock"

    @property
    def remote_is_s3(self) -> bool:
        return self.dvc_remote_url.startswith("s3://")

    def resolved_remote_url(self) -> str:
        """The DVC remote URL, local directories made absolute."""
        if self.remote_is_s3 or "://" in self.dvc_remote_url:
            return self.dvc_remote_url
        return str(Path(self.dvc_remote_url).expanduser().resolve())


def dataset_config(settings: Settings) -> DatasetConfig:
    """The dataset config the settings imply.

    Defaults: the repository is ``<home>/dataset``; the DVC remote is ``<home>/dvc-remote`` on the
    local storage backend and ``s3://<bucket>/<prefix>/dvc`` (``s3://<bucket>/dvc`` without a prefix) on the S3 backend (same endpoint and
    credentials as the store); no git remote. A ``settings.dataset`` section, when the settings
    have one, overrides these (``repo_dir``, ``dvc_remote_url``, ``git_remote``).
    """
    home = Path(settings.home).expanduser().resolve()
    storage = settings.storage
    s3 = storage.s3
    endpoint: str | None = None
    if storage.backend == "s3":
        prefix = s3.prefix.strip("/")
        remote = f"s3://{s3.bucket}/{prefix + '/' if prefix else ''}dvc"
        endpoint = s3.endpoint_url
    else:
        remote = str(home / "dvc-remote")
    repo_dir: Path = home / "dataset"
    git_remote: str | None = None
    section = getattr(settings, "dataset", None)  # optional settings section (see docs/dataset.md)
    if section is not None:
        repo_dir = Path(getattr(section, "repo_dir", None) or repo_dir)
        remote = getattr(section, "dvc_remote_url", None) or remote
        git_remote = getattr(section, "git_remote", None) or None
    return DatasetConfig(
        repo_dir=repo_dir,
        dvc_remote_url=remote,
        s3_endpoint_url=endpoint if remote.startswith("s3://") else None,
        git_remote=str(git_remote) if git_remote else None,
        s3_region=s3.region if remote.startswith("s3://") else None,
        s3_access_key_id=s3.access_key_id if remote.startswith("s3://") else None,
        s3_secret_access_key=s3.secret_access_key if remote.startswith("s3://") else None,
    )
