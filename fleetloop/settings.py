"""Where fleetloop runs: the one settings object.

Read from the environment (prefix ``FLEETLOOP_``, nested sections with ``__``, e.g.
``FLEETLOOP_STORAGE__BACKEND=s3``) and an optional ``.env`` file. Secrets are ``SecretStr``:
they never appear in ``repr``, logs or artifacts. A URL setting may embed credentials
(``https://user:pass@host/...``): whatever shows one to a person goes through :func:`redact`.
What the model *is* (thresholds, weights) lives in params, not here.

The environment wins over ``.env`` (read from the working directory). A path setting has ``~``
expanded and is made absolute against the working directory when it is read. A ``FLEETLOOP_*``
name that is no setting is named on stderr (:func:`unknown_names`), and so is a key of a section
given as JSON (:func:`unknown_keys`); a ``.env`` line of a
``FLEETLOOP_*`` name that python-dotenv cannot read is an error, not a setting left out.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

#: ``scheme://userinfo@``: userinfo without ``/ ? #`` (``user:p@ss@``), or ``user:password@`` whose
#: password holds them (generated passwords often hold ``/``; a ``host:8080/path@x`` is no password)
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^/?#\s'\"<>]+|[^/?#\s'\"<>@:]*:(?!\d+/)[^\s'\"<>@]*)@")


def _not_empty(value: object) -> object:
    if isinstance(value, str) and not value.strip():  # Path("") is the working directory
        raise ValueError("is empty: unset it for the default, or give a directory")
    return value


#: a path setting: not empty, ``~`` expanded, absolute (a relative one against the working directory)
SettingPath = Annotated[Path, BeforeValidator(_not_empty), AfterValidator(lambda p: p.expanduser().resolve())]
Port = Annotated[int, Field(ge=1, le=65535)]


PREFIX = "FLEETLOOP_"
ENV_FILE = ".env"  # in the working directory; the environment wins over it
#: ``FLEETLOOP_*`` variables that are no settings: read elsewhere (the params file, who acts, debug and
#: test hooks) or by infra/docker-compose.yaml; ``FLEETLOOP_TEST_*`` are the tests' own
NOT_SETTINGS = frozenset({"FLEETLOOP_PARAMS", "FLEETLOOP_ACTOR", "FLEETLOOP_DEBUG", "FLEETLOOP_NO_FAST_EXIT",
                          "FLEETLOOP_DATASET_CRASH_AT", "FLEETLOOP_KITTI_ROOT", "FLEETLOOP_S3_PUBLIC_ENDPOINT",
                          "FLEETLOOP_BUCKET", "FLEETLOOP_WORK_POOL", "FLEETLOOP_TRAIN_PROGRESS"})


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it masked: ``https://user:pass@host/x`` ->
    ``https://***@host/x`` (for messages, JSON output and anything a person or a file sees)."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


class S3Settings(BaseModel):
    bucket: str = "fleetloop"
    prefix: str = ""
    endpoint_url: str | None = None  # any S3-compatible endpoint (MinIO, moto, ...)
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None  # None: boto3's default credential chain
    secret_access_key: SecretStr | None = None
    # Fail fast on a dead endpoint: seconds, not botocore's minutes of retries.
    connect_timeout_s: float = Field(3.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1)  # total attempts per request, first one included

    @field_validator("endpoint_url")
    @classmethod
    def _an_http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):  # the value may hold credentials: not shown
            raise ValueError("must be an http:// or https:// URL, e.g. http://minio:9000")
        return value


class StorageSettings(BaseModel):
    backend: Literal["local", "s3"] = "local"
    local_root: SettingPath | None = None  # default: <home>/store
    s3: S3Settings = Field(default_factory=S3Settings)


class PrefectSettings(BaseModel):
    api_url: str | None = None  # default: the local server started by `fleetloop services up`
    port: Port = 4200
    dask_address: str | None = None  # an existing Dask scheduler; None: a LocalCluster
    dask_workers: int = Field(2, ge=1)
    weekly_cron: str = "0 3 * * 1"  # Monday 03:00
    drift_cron: str = "0 4 * * *"  # daily 04:00
    label_sync_cron: str = "*/15 * * * *"  # poll Label Studio every 15 minutes
    timezone: str = "UTC"
    work_pool: str = "fleetloop"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if value == "UTC":  # the default: never a lookup (a machine may lack a time zone database)
            return value
        try:
            ZoneInfo(value)  # a schedule's time zone must be one (Prefect's rule)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name, e.g. UTC or Europe/Berlin)") from None
        return value


class LabelStudioSettings(BaseModel):
    url: str | None = None  # default: the local server started by `fleetloop services up`
    token: SecretStr | None = None  # legacy token (Token) or personal access token (JWT)
    port: Port = 8080
    model_version: str = "fleetloop-mined"
    # Label Studio's LOCAL_FILES_DOCUMENT_ROOT when it serves task images from this machine's
    # disk (the local server); None: images go to the object store and tasks get presigned URLs.
    document_root: SettingPath | None = None


class DatasetSettings(BaseModel):
    """Where the labeled dataset lives (fleetloop/dataset/config.py derives the defaults)."""

    repo_dir: SettingPath | None = None  # default: <home>/dataset
    dvc_remote_url: str | None = None  # default: <home>/dvc-remote, or s3://<bucket>/<prefix>/dvc on S3 (s3://<bucket>/dvc without a prefix)
    git_remote: str | None = None  # a URL or path the versions are pushed to; None: the local repo only


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLEETLOOP_",
        env_nested_delimiter="__",
        env_file=ENV_FILE,
        extra="ignore",
    )

    home: SettingPath = Field(Path(".fleetloop"), validate_default=True)  # project-local state: services, store, caches
    storage: StorageSettings = Field(default_factory=StorageSettings)
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    label_studio: LabelStudioSettings = Field(default_factory=LabelStudioSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)

    @property
    def store_root(self) -> Path:
        return (self.storage.local_root or self.home / "store").resolve()


def _section_model(annotation: object) -> type[BaseModel] | None:
    """The model of a settings section (a field whose type is a model, set as JSON), else None."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def setting_names(model: type[BaseModel] | None = None, prefix: str = PREFIX) -> set[str]:
    """Every ``FLEETLOOP_*`` name the settings read: each field and each section (JSON)."""
    names: set[str] = set()
    for name, field in (model or Settings).model_fields.items():
        names.add(f"{prefix}{name}".upper())
        if (section := _section_model(field.annotation)) is not None:
            names |= setting_names(section, f"{prefix}{name}__")
    return names


def unknown_names(names: Iterable[str]) -> list[str]:
    """A line for each ``FLEETLOOP_*`` name in ``names`` that no setting reads (a typo leaves its
    setting at the default), with the nearest name that is one."""
    known = setting_names() | NOT_SETTINGS
    suffixes = sorted(k.removeprefix(PREFIX) for k in known)
    found: list[str] = []
    seen: set[str] = set()
    for name in names:
        upper = name.upper()  # the settings' names are not case-sensitive
        if not upper.startswith(PREFIX) or upper in known or upper.startswith("FLEETLOOP_TEST_") or upper in seen:
            continue
        seen.add(upper)
        near = difflib.get_close_matches(upper.removeprefix(PREFIX), suffixes, n=1)
        found.append(f"{name} is not a setting, ignored" + (f" (did you mean {PREFIX}{near[0]}?)" if near else ""))
    return found


def _sections(model: type[BaseModel] | None = None, prefix: str = PREFIX) -> dict[str, type[BaseModel]]:
    """Every ``FLEETLOOP_*`` name that takes a section as JSON, with the section's model."""
    out: dict[str, type[BaseModel]] = {}
    for name, field in (model or Settings).model_fields.items():
        if (section := _section_model(field.annotation)) is not None:
            out[f"{prefix}{name}".upper()] = section
            out |= _sections(section, f"{prefix}{name}__")
    return out


def unknown_keys(values: Mapping[str, str]) -> list[str]:
    """A line for each key of a section given as JSON (``FLEETLOOP_LABEL_STUDIO='{"urll": ..}'``)
    that no setting reads, with the nearest key that is one: the section's model ignores it, as it
    ignores a misspelt name, and the setting keeps its default. A value that is not a JSON object
    is left to the settings' own error."""
    sections = _sections()
    found: list[str] = []

    def walk(where: str, data: dict[str, Any], model: type[BaseModel]) -> None:
        fields = model.model_fields
        for key, value in data.items():
            field = fields.get(key.lower())  # the settings' keys are not case-sensitive, as their names
            if field is None:
                near = difflib.get_close_matches(key.lower(), list(fields), n=1)
                found.append(f"{where}: key {key!r} is not a setting, ignored"
                             + (f" (did you mean {near[0]!r}?)" if near else ""))
            elif isinstance(value, dict) and (section := _section_model(field.annotation)) is not None:
                walk(f"{where}.{key}", value, section)

    for name, value in values.items():
        model = sections.get(name.upper())
        if model is None or not isinstance(value, str):
            continue
        try:
            data = json.loads(value)
        except ValueError:
            continue
        if isinstance(data, dict):
            walk(name, data, model)
    return found


def env_file_entries(path: Path) -> dict[str, str | None]:
    """The names a ``.env`` file sets, with their values (``None``: a name without ``=``). A
    ``FLEETLOOP_*`` line python-dotenv cannot read (no ``=``, a quote left open) is a
    :class:`SettingsError`: python-dotenv would leave it out and go on."""
    from dotenv.parser import parse_stream

    if not path.is_file():
        return {}
    try:
        with path.open(encoding="utf-8") as stream:
            bindings = list(parse_stream(stream))
    except UnicodeDecodeError:
        raise SettingsError(f"{path.resolve()} is not UTF-8 text") from None
    entries: dict[str, str | None] = {}
    for b in bindings:
        word = re.match(r"\s*(?:export\s+)?(\w*)", b.original.string)
        if b.error and word and word[1].upper().startswith(PREFIX):
            raise SettingsError(f"{path.resolve()} line {b.original.line}: {word[1]} is not read (NAME=value "
                                "expected; a quote left open?)")
        if b.key:
            entries[b.key] = b.value
    return entries


@lru_cache
def get_settings() -> Settings:
    """The settings of this process. A ``FLEETLOOP_*`` name no setting reads is named on stderr."""
    dotenv = env_file_entries(Path(ENV_FILE))
    for line in unknown_names([*dotenv, *os.environ]):
        print(f"fleetloop: warning: {line}", file=sys.stderr)
    settings = Settings()  # an unreadable section is its error, before any key of it is judged
    for line in unknown_keys({**{k: v for k, v in dotenv.items() if v is not None}, **os.environ}):
        print(f"fleetloop: warning: {line}", file=sys.stderr)
    return settings
