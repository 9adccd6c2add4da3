"""Where fleetloop runs: the one settings object.

Read from the environment (prefix ``FLEETLOOP_``, nested sections with ``__``, e.g.
``FLEETLOOP_STORAGE__BACKEND=s3``) and an optional ``.env`` file. Secrets are ``SecretStr``:
they never appear in ``repr``, logs or artifacts. A URL setting may embed credentials
(``https://user:pass@host/...``): whatever shows one to a person goes through :func:`redact`.
What the model *is* (thresholds, weights) lives in params, not here.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s'\"<>]+@")


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it masked: ``https://user:pass@host/x`` ->
    ``https://***@host/x`` (for messages, JSON output and anything a person or a file sees)."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


class S3Settings(BaseModel):
    bucket: str = "fleetloop"
    prefix: str = ""
    endpoint_url: str | None = Field(None, pattern=r"^https?://[^\s/]+")  # any S3-compatible endpoint (MinIO, moto, ...)
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None  # None: boto3's default credential chain
    secret_access_key: SecretStr | None = None
    # Fail fast on a dead endpoint: seconds, not botocore's minutes of retries.
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    max_attempts: int = 3  # total attempts per request, first one included


class StorageSettings(BaseModel):
    backend: Literal["local", "s3"] = "local"
    local_root: Path | None = None  # default: <home>/store
    s3: S3Settings = Field(default_factory=S3Settings)


class PrefectSettings(BaseModel):
    api_url: str | None = None  # default: the local server started by `fleetloop services up`
    port: int = 4200
    dask_address: str | None = None  # an existing Dask scheduler; None: a LocalCluster
    dask_workers: int = 2
    weekly_cron: str = "0 3 * * 1"  # Monday 03:00
    drift_cron: str = "0 4 * * *"  # daily 04:00
    label_sync_cron: str = "*/15 * * * *"  # poll Label Studio every 15 minutes
    timezone: str = "UTC"
    work_pool: str = "fleetloop"


class LabelStudioSettings(BaseModel):
    url: str | None = None  # default: the local server started by `fleetloop services up`
    token: SecretStr | None = None  # legacy token (Token) or personal access token (JWT)
    port: int = 8080
    model_version: str = "fleetloop-mined"
    # Label Studio's LOCAL_FILES_DOCUMENT_ROOT when it serves task images from this machine's
    # disk (the local server); None: images go to the object store and tasks get presigned URLs.
    document_root: Path | None = None


class DatasetSettings(BaseModel):
    """Where the labeled dataset lives (fleetloop/dataset/config.py derives the defaults)."""

    repo_dir: Path | None = None  # default: <home>/dataset
    dvc_remote_url: str | None = None  # default: <home>/dvc-remote, or s3://<bucket>/<prefix>/dvc on S3 (s3://<bucket>/dvc without a prefix)
    git_remote: str | None = None  # a URL or path the versions are pushed to; None: the local repo only


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLEETLOOP_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    home: Path = Path(".fleetloop")  # project-local state: services, store, caches
    storage: StorageSettings = Field(default_factory=StorageSettings)
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    label_studio: LabelStudioSettings = Field(default_factory=LabelStudioSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)

    @property
    def store_root(self) -> Path:
        return (self.storage.local_root or self.home / "store").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
