"""The log registry: drive logs kept in a :class:`~fleetloop.store.objects.Store`.

Layout::

    logs/<log_id>/<stream>.parquet      one table per stream of :data:`fleetloop.schema.STREAMS`
    logs/<log_id>/manifest.json         written LAST: a log without a manifest does not exist
    index/arrivals/<arrived_at>_<log_id>.json   append-only arrival index (a copy of the manifest)

Logs are immutable. :func:`put_log` of the same content again is a no-op that returns the
existing manifest; different content under an existing ``log_id`` is a :class:`LogConflictError`
unless ``replace=True``. "Logs that arrived since T" is one listing of ``index/arrivals/`` starting
after T's key (keys sort chronologically), reading only the entries after T.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, field_validator

from fleetloop.schema import STREAMS, DriveLogs
from fleetloop.store.objects import ObjectNotFound, Store

__all__ = [
    "ARRIVALS_PREFIX",
    "LOGS_PREFIX",
    "LogConflictError",
    "LogManifest",
    "LogNotFoundError",
    "content_sha256",
    "get_log",
    "get_manifest",
    "list_logs",
    "log_prefix",
    "put_log",
]

LOGS_PREFIX = "logs/"
ARRIVALS_PREFIX = "index/arrivals/"
LAYOUT_VERSION = 1
_LOG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_TIME_KEY = "%Y%m%dT%H%M%S.%fZ"  # fixed width: lexicographic order is chronological


class LogNotFoundError(KeyError):
    """No (complete) log with that id in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LogConflictError(ValueError):
    """A log with that id already exists with different content."""


class LogManifest(BaseModel):
    """What a stored log holds; its presence makes the log exist."""

    model_config = ConfigDict(frozen=True)

    log_id: str
    n_frames: int
    streams: dict[str, int]  # stream name -> number of rows
    arrived_at: datetime  # UTC
    source: str  # where it came from (a path, URI or importer name)
    sha256: str  # of the log's content (see content_sha256)
    layout_version: int = LAYOUT_VERSION

    @field_validator("arrived_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return _as_utc(v)


def log_prefix(log_id: str) -> str:
    """``logs/<log_id>/``: where a log's objects live."""
    if not _LOG_ID.match(log_id):
        raise ValueError(f"invalid log_id {log_id!r}: letters, digits, '.', '_' and '-' only")
    return f"{LOGS_PREFIX}{log_id}/"


def _manifest_key(log_id: str) -> str:
    return log_prefix(log_id) + "manifest.json"


def _stream_key(log_id: str, stream: str) -> str:
    return log_prefix(log_id) + f"{stream}.parquet"


def _arrival_key(m: LogManifest) -> str:
    return f"{ARRIVALS_PREFIX}{m.arrived_at.strftime(_TIME_KEY)}_{m.log_id}.json"


def _as_utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _normalized(logs: DriveLogs) -> dict[str, pa.Table]:
    """Each stream with exactly its schema's columns and types, in one chunk."""
    tables = logs.tables()
    out = {}
    for name, schema in STREAMS.items():
        t = tables[name]
        try:
            out[name] = t.select(schema.names).cast(schema).combine_chunks()
        except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"stream {name!r} does not match fleetloop.schema: {exc}") from exc
    return out


def content_sha256(logs: DriveLogs) -> str:
    """A hash of the logical content (independent of chunking and parquet writer version)."""
    h = hashlib.sha256()
    for name, table in _normalized(logs).items():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.to_batches():
                if batch.num_rows:
                    writer.write_batch(batch)
        h.update(name.encode() + b"\0")
        h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()


def _single_log_id(logs: DriveLogs) -> str:
    ids = logs.log_ids
    if len(ids) != 1:
        raise ValueError(f"put_log takes exactly one log, got {len(ids)} log ids in frames: {ids[:5]}")
    log_id = ids[0]
    for name, table in logs.tables().items():
        others = [i for i in pc.unique(table["log_id"]).to_pylist() if i != log_id]
        if others:
            raise ValueError(f"stream {name!r} has rows of other logs than {log_id!r}: {others[:5]}")
    return log_id


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def get_manifest(store: Store, log_id: str) -> LogManifest | None:
    """The log's manifest, or None when the log does not exist (or is half-written)."""
    try:
        data = store.get_bytes(_manifest_key(log_id))
    except ObjectNotFound:
        return None
    return LogManifest.model_validate_json(data)


def put_log(
    store: Store,
    logs: DriveLogs,
    source: str,
    *,
    replace: bool = False,
    arrived_at: datetime | None = None,
) -> LogManifest:
    """Store one log: its stream tables, then its manifest, then its arrival index entry.

    Idempotent: the same content again returns the existing manifest (and repairs a missing
    index entry). Different content under an existing id raises :class:`LogConflictError`, or
    replaces the log when ``replace`` is true. ``arrived_at`` defaults to now (UTC).
    Raises :class:`~fleetloop.store.objects.StorageError` when the store fails; a failure before the
    manifest is written leaves no visible log, and a rerun completes it.
    """
    log_id = _single_log_id(logs)
    tables = _normalized(logs)
    sha = content_sha256(logs)

    existing = get_manifest(store, log_id)
    if existing is not None:
        if existing.sha256 == sha:
            if not store.exists(_arrival_key(existing)):
                store.put_bytes(_arrival_key(existing), existing.model_dump_json().encode())
            return existing
        if not replace:
            raise LogConflictError(
                f"log {log_id!r} already exists in {store.location} with different content "
                f"(stored sha256 {existing.sha256[:12]}, new {sha[:12]}); logs are immutable: "
                "use a new log id or replace=True"
            )
        store.delete(_arrival_key(existing))
        store.delete(_manifest_key(log_id))  # invisible while it is rewritten

    for name, table in tables.items():
        store.put_bytes(_stream_key(log_id, name), _parquet_bytes(table))
    manifest = LogManifest(
        log_id=log_id,
        n_frames=tables["frames"].num_rows,
        streams={name: t.num_rows for name, t in tables.items()},
        arrived_at=arrived_at or datetime.now(UTC),
        source=source,
        sha256=sha,
    )
    body = manifest.model_dump_json(indent=1).encode()
    store.put_bytes(_manifest_key(log_id), body)  # the commit point
    store.put_bytes(_arrival_key(manifest), body)
    return manifest


def get_log(store: Store, log_id: str) -> DriveLogs:
    """The log's tables; :class:`LogNotFoundError` when it has no manifest."""
    manifest = get_manifest(store, log_id)
    if manifest is None:
        raise LogNotFoundError(f"no log {log_id!r} in {store.location}")
    tables = {}
    for name, schema in STREAMS.items():
        if name not in manifest.streams:  # a stream added to the schema after this log was stored
            tables[name] = schema.empty_table()
            continue
        data = store.get_bytes(_stream_key(log_id, name))
        tables[name] = pq.read_table(pa.BufferReader(data)).select(schema.names).cast(schema)
    return DriveLogs(**tables)


def list_logs(store: Store, since: datetime | None = None) -> list[LogManifest]:
    """Manifests of the logs that arrived strictly after ``since`` (all when None), oldest first.

    Reads only the arrival-index entries after ``since``. Naive datetimes are taken as UTC.
    """
    start_after = None
    if since is not None:
        # "~" sorts after every character a log id may contain: keys at exactly `since` are skipped.
        start_after = f"{ARRIVALS_PREFIX}{_as_utc(since).strftime(_TIME_KEY)}_~"
    latest: dict[str, LogManifest] = {}
    for key in store.list(ARRIVALS_PREFIX, start_after=start_after):
        try:
            m = LogManifest.model_validate_json(store.get_bytes(key))
        except ObjectNotFound:  # removed between list and get (a replace)
            continue
        if m.log_id not in latest or m.arrived_at > latest[m.log_id].arrived_at:
            latest[m.log_id] = m
    return sorted(latest.values(), key=lambda m: (m.arrived_at, m.log_id))
