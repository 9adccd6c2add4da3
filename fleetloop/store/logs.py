"""The log registry: drive logs kept in a :class:`~fleetloop.store.objects.Store`.

Layout::

    logs/<log_id>/<sha256>/<stream>.parquet     one table per stream of :data:`fleetloop.schema.STREAMS`,
                                                under the log's content hash
    index/arrivals/<arrived_at>_<log_id>.json   arrival index entry (a copy of the manifest)
    logs/<log_id>/manifest.json                 written LAST, create-only: the commit point

Logs are immutable, and every state change is one conditional write, never a check followed by
a write, so any number of writers (processes, machines sharing an S3 bucket) may store the same
log ids at once:

- streams go under the content hash, so a writer of other content never touches the files a
  manifest refers to (a writer of the same content rewrites the same logical tables);
- the manifest is created with ``put_if_absent``: exactly one writer per log id wins. A loser
  with the same content gets the winner's manifest; a loser with other content gets
  :class:`LogConflictError` and removes its own stream files. ``replace=True`` swaps the
  manifest with ``put_if_match`` (compare-and-swap);
- the arrival index entry is written before the manifest, and an entry counts only when the
  manifest names the same arrival, so a kill at any point leaves a log either fully visible
  (listed and readable) or not stored at all; never stored but unlisted.

:func:`get_log` verifies the content hash of what it reads against the manifest and raises
:class:`LogIntegrityError` naming the log on a mismatch. "Logs that arrived since T" is one
listing of ``index/arrivals/`` starting after T's key (keys sort chronologically).
Manifests of layout version 1 (streams directly under ``logs/<log_id>/``) are still read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from fleetloop.schema import STREAMS, DriveLogs
from fleetloop.store import keys
from fleetloop.store.ids import InvalidLogIdError, check_log_id
from fleetloop.store.objects import ObjectNotFound, StorageError, Store

__all__ = [
    "ARRIVALS_PREFIX",
    "LOGS_PREFIX",
    "LogConflictError",
    "LogIntegrityError",
    "LogManifest",
    "LogNotFoundError",
    "PutLogResult",
    "commit_log",
    "content_sha256",
    "get_log",
    "get_manifest",
    "list_logs",
    "log_prefix",
    "put_log",
]

LOGS_PREFIX = keys.LOGS
ARRIVALS_PREFIX = keys.ARRIVALS
LAYOUT_VERSION = 2
_TIME_KEY = "%Y%m%dT%H%M%S.%fZ"  # fixed width: lexicographic order is chronological
_TIME_KEY_LEN = len("20240101T000000.000000Z")
_CAS_ATTEMPTS = 20


class LogNotFoundError(KeyError):
    """No (complete) log with that id in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LogConflictError(ValueError):
    """A log with that id already exists with different content."""


class LogIntegrityError(RuntimeError):
    """A stored log's streams do not match its manifest (corrupted or tampered storage)."""


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


@dataclass(frozen=True)
class PutLogResult:
    """What :func:`commit_log` did: the stored manifest, and whether this call created it."""

    manifest: LogManifest
    created: bool


def log_prefix(log_id: str) -> str:
    """``logs/<log_id>/``: where a log's objects live. :class:`InvalidLogIdError` (a
    ``ValueError``) for an id that breaks the rule of :mod:`fleetloop.store.ids`."""
    return f"{LOGS_PREFIX}{check_log_id(log_id)}/"


def _manifest_key(log_id: str) -> str:
    return log_prefix(log_id) + "manifest.json"


def _content_prefix(log_id: str, sha: str) -> str:
    return f"{log_prefix(log_id)}{sha}/"


def _stream_key(m: LogManifest, stream: str) -> str:
    if m.layout_version < 2:  # version 1: streams directly under the log's prefix
        return log_prefix(m.log_id) + f"{stream}.parquet"
    return _content_prefix(m.log_id, m.sha256) + f"{stream}.parquet"


def _arrival_key(m: LogManifest) -> str:
    return f"{ARRIVALS_PREFIX}{m.arrived_at.strftime(_TIME_KEY)}_{m.log_id}.json"


def _log_id_of_arrival(key: str) -> str | None:
    """The log id an arrival key names (None for a key that is not an arrival entry)."""
    name = key[len(ARRIVALS_PREFIX):]
    if len(name) <= _TIME_KEY_LEN + 1 or name[_TIME_KEY_LEN] != "_" or not name.endswith(".json"):
        return None
    return name[_TIME_KEY_LEN + 1 : -len(".json")]


def _as_utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _normalized_tables(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """Each stream with exactly its schema's columns and types, in one chunk."""
    out = {}
    for name, schema in STREAMS.items():
        t = tables[name]
        try:
            out[name] = t.select(schema.names).cast(schema).combine_chunks()
        except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"stream {name!r} does not match fleetloop.schema: {exc}") from exc
    return out


def _normalized(logs: DriveLogs) -> dict[str, pa.Table]:
    return _normalized_tables(logs.tables())


def _sha_of_tables(tables: dict[str, pa.Table]) -> str:
    h = hashlib.sha256()
    for name, table in _normalized_tables(tables).items():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.to_batches():
                if batch.num_rows:
                    writer.write_batch(batch)
        h.update(name.encode() + b"\0")
        h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()


def content_sha256(logs: DriveLogs) -> str:
    """A hash of the logical content (independent of chunking and parquet writer version)."""
    return _sha_of_tables(logs.tables())


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


def _parse_manifest(data: bytes, key: str, store: Store, log_id: str) -> LogManifest:
    try:
        m = LogManifest.model_validate_json(data)
    except ValidationError as exc:  # one line: pydantic's own text spans lines and links to its docs
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'content'}: {e['msg']}" for e in exc.errors()[:3])
        more = f"; and {exc.error_count() - 3} more" if exc.error_count() > 3 else ""
        raise LogIntegrityError(f"{store.location}: manifest {key} is not a valid log manifest "
                                f"({problems}{more})") from None
    if m.log_id != log_id:  # a manifest copied under another log's folder would serve that log's streams
        raise LogIntegrityError(f"{store.location}: manifest {key} names log {m.log_id!r}, not {log_id!r} "
                                "(copied or moved by hand?)")
    return m


def get_manifest(store: Store, log_id: str) -> LogManifest | None:
    """The log's manifest, or None when the log does not exist (or is half-written)."""
    key = _manifest_key(log_id)
    try:
        data = store.get_bytes(key)
    except ObjectNotFound:
        return None
    return _parse_manifest(data, key, store, log_id)


def _get_versioned_manifest(store: Store, log_id: str) -> tuple[LogManifest, str] | None:
    key = _manifest_key(log_id)
    try:
        data, etag = store.get_versioned(key)
    except ObjectNotFound:
        return None
    return _parse_manifest(data, key, store, log_id), etag


def _conflict(store: Store, existing: LogManifest, sha: str) -> LogConflictError:
    return LogConflictError(
        f"log {existing.log_id!r} already exists in {store.location} with different content "
        f"(stored sha256 {existing.sha256[:12]} from {existing.source}, new {sha[:12]}); logs are immutable: "
        "store the new content under a new log id (from Python, put_log(..., replace=True) overwrites)"
    )


def _ensure_arrival(store: Store, m: LogManifest) -> None:
    """Repair a missing index entry (a log stored by a writer of layout version 1 that died
    between its manifest and its entry)."""
    key = _arrival_key(m)
    if not store.exists(key):
        store.put_if_absent(key, m.model_dump_json(indent=1).encode())


def _remove_content(store: Store, m: LogManifest) -> None:
    """Delete the stream files of ``m`` (never those of another content hash)."""
    for name in STREAMS:
        store.delete(_stream_key(m, name))


def commit_log(
    store: Store,
    logs: DriveLogs,
    source: str,
    *,
    replace: bool = False,
    arrived_at: datetime | None = None,
) -> PutLogResult:
    """Store one log (see the module docstring for how concurrent writers are kept apart).

    The same content again returns the existing manifest with ``created=False``. Different
    content under an existing id raises :class:`LogConflictError`, or replaces the log when
    ``replace`` is true. ``arrived_at`` defaults to now (UTC). Raises
    :class:`~fleetloop.store.objects.StorageError` when the store fails; a failure before the
    manifest is written leaves no visible log, and a rerun completes it.
    """
    log_id = check_log_id(_single_log_id(logs))
    tables = _normalized(logs)
    sha = content_sha256(logs)
    current = _get_versioned_manifest(store, log_id)
    if current is not None:
        existing, _etag = current
        if existing.sha256 == sha:
            _ensure_arrival(store, existing)
            return PutLogResult(existing, created=False)
        if not replace:
            raise _conflict(store, existing, sha)

    manifest = LogManifest(
        log_id=log_id,
        n_frames=tables["frames"].num_rows,
        streams={name: t.num_rows for name, t in tables.items()},
        arrived_at=arrived_at or datetime.now(UTC),
        source=source,
        sha256=sha,
    )
    for name, table in tables.items():
        store.put_bytes(_stream_key(manifest, name), _parquet_bytes(table))
    body = manifest.model_dump_json(indent=1).encode()
    store.put_bytes(_arrival_key(manifest), body)  # before the manifest: the index never lags it
    if current is None and store.put_if_absent(_manifest_key(log_id), body):  # the commit point
        return PutLogResult(manifest, created=True)
    return _settle(store, manifest, body, replace)


def _settle(store: Store, manifest: LogManifest, body: bytes, replace: bool) -> PutLogResult:
    """Another manifest is (or was) there: give way, or compare-and-swap when replacing."""
    for _ in range(_CAS_ATTEMPTS):
        current = _get_versioned_manifest(store, manifest.log_id)
        if current is None:  # removed meanwhile: create it
            if store.put_if_absent(_manifest_key(manifest.log_id), body):
                return PutLogResult(manifest, created=True)
            continue
        existing, etag = current
        if existing.sha256 == manifest.sha256:  # another writer stored the same content first
            _drop_arrival(store, manifest, existing)
            _ensure_arrival(store, existing)
            return PutLogResult(existing, created=False)
        if not replace:
            _drop_arrival(store, manifest, existing)
            _remove_content(store, manifest)
            raise _conflict(store, existing, manifest.sha256)
        if store.put_if_match(_manifest_key(manifest.log_id), body, etag):
            _drop_arrival(store, existing, manifest)
            _remove_content(store, existing)
            return PutLogResult(manifest, created=True)
    raise LogConflictError(f"log {manifest.log_id!r} in {store.location}: the manifest kept changing under "
                           f"{_CAS_ATTEMPTS} compare-and-swap attempts; try again")


def _drop_arrival(store: Store, stale: LogManifest, kept: LogManifest) -> None:
    """Delete ``stale``'s index entry unless it is also ``kept``'s (same arrival time)."""
    if _arrival_key(stale) != _arrival_key(kept):
        store.delete(_arrival_key(stale))


def put_log(
    store: Store,
    logs: DriveLogs,
    source: str,
    *,
    replace: bool = False,
    arrived_at: datetime | None = None,
) -> LogManifest:
    """Store one log and return its manifest (see :func:`commit_log`)."""
    return commit_log(store, logs, source, replace=replace, arrived_at=arrived_at).manifest


def _read_streams(store: Store, m: LogManifest) -> dict[str, pa.Table]:
    tables = {}
    for name, schema in STREAMS.items():
        if name not in m.streams:  # a stream added to the schema after this log was stored
            tables[name] = schema.empty_table()
            continue
        key = _stream_key(m, name)
        data = store.get_bytes(key)
        try:
            tables[name] = pq.read_table(pa.BufferReader(data)).select(schema.names).cast(schema)
        except (pa.ArrowException, KeyError, ValueError) as exc:
            raise LogIntegrityError(f"log {m.log_id!r} in {store.location}: stream {key} is unreadable: {exc}") from None
    return tables


def get_log(store: Store, log_id: str, *, verify: bool = True) -> DriveLogs:
    """The log's tables; :class:`LogNotFoundError` when it has no manifest,
    :class:`LogIntegrityError` when what is stored does not hash to the manifest's sha256."""
    for attempt in range(3):
        manifest = get_manifest(store, log_id)
        if manifest is None:
            raise LogNotFoundError(f"no log {log_id!r} in {store.location}")
        try:
            tables = _read_streams(store, manifest)
        except ObjectNotFound as exc:
            if attempt < 2 and get_manifest(store, log_id) != manifest:  # replaced while we read
                continue
            raise LogIntegrityError(f"log {log_id!r} in {store.location}: a stream of its manifest is missing: {exc}") from None
        if verify:
            found = _sha_of_tables(tables)
            if found != manifest.sha256:
                raise LogIntegrityError(
                    f"log {log_id!r} in {store.location} is corrupt: its streams hash to sha256 {found[:12]}, "
                    f"its manifest says {manifest.sha256[:12]} (stored from {manifest.source} at {manifest.arrived_at})"
                )
        return DriveLogs(**tables)
    raise AssertionError("unreachable")  # pragma: no cover



def read_logs(store: Store, log_ids: list[str], unreadable: dict[str, str] | None = None) -> DriveLogs:
    """The logs, concatenated (in id order). With ``unreadable`` (a dict), a log that is gone or
    damaged when read (deleted by hand, a stream missing, a corrupt object) is recorded there
    (log id -> one-line reason) and left out; without it, it raises."""
    logs = []
    for log_id in sorted(log_ids):
        try:
            logs.append(get_log(store, log_id))
        except (LogNotFoundError, LogIntegrityError) as exc:
            if unreadable is None:
                raise
            unreadable[log_id] = str(exc)
    return DriveLogs.concat(logs)

def list_logs(store: Store, since: datetime | None = None, *, inclusive: bool = False,
              problems: dict[str, str] | None = None, until: datetime | None = None) -> list[LogManifest]:
    """Manifests of the logs that arrived strictly after ``since`` (all when None), oldest first;
    at or after ``since`` when ``inclusive`` (a window's start, a user's ``--since``); only those
    that arrived before ``until`` when given (a window's end: the index is not read beyond it).

    Reads the arrival-index entries after ``since`` and the manifest of each log they name; an
    entry counts only when the manifest names the same arrival (entries of writers that lost a
    race, died before their manifest or were replaced are skipped). Naive datetimes are UTC.

    A manifest that is not a valid log manifest (a foreign or damaged object) raises
    :class:`LogIntegrityError` naming its key, one the store cannot read (permissions, I/O) its
    :class:`StorageError`; with ``problems`` (a dict) either is recorded there instead (log id ->
    one-line reason) and the other logs are listed.
    """
    start_after = None
    if since is not None:
        since = _as_utc(since)
        if inclusive:  # arrival keys have microsecond precision: strictly after the microsecond before
            since = since - timedelta(microseconds=1) if since > datetime.min.replace(tzinfo=UTC) else None
    if since is not None:
        # "~" sorts after every character a log id may contain: keys at exactly `since` are skipped.
        start_after = f"{ARRIVALS_PREFIX}{since.strftime(_TIME_KEY)}_~"
    manifests: dict[str, LogManifest | None] = {}
    found: dict[str, LogManifest] = {}
    stop = f"{ARRIVALS_PREFIX}{_as_utc(until).strftime(_TIME_KEY)}" if until is not None else None
    for key in store.list(ARRIVALS_PREFIX, start_after=start_after):
        if stop is not None and key >= stop:  # keys sort by arrival time: the rest arrived at or after `until`
            break
        log_id = _log_id_of_arrival(key)
        if log_id is None:
            continue
        if log_id not in manifests:
            try:
                manifests[log_id] = get_manifest(store, log_id)
            except InvalidLogIdError:  # not an entry this code wrote
                manifests[log_id] = None
            except (LogIntegrityError, StorageError) as exc:  # damaged, foreign or unreadable (permissions, I/O)
                if problems is None:
                    raise
                problems[log_id] = str(exc)
                manifests[log_id] = None
        m = manifests[log_id]
        if m is not None and _arrival_key(m) == key:
            found[log_id] = m
    return sorted(found.values(), key=lambda m: (m.arrived_at, m.log_id))
