"""Build one growth batch from label shards: read, validate, pick the newest word per frame, pack.

Label shards are what ``fleetloop label sync`` writes (its contract, restated here because the
loop's steps do not import each other)::

    labels/<campaign>/sync-NNNNNN.parquet   LABELS rows; schema metadata ``fleetloop_annotations``
                                            lists every annotation revision the shard delivers
                                            (status labeled | empty | unusable), with its frame

For each frame the batch keeps the newest delivery (by ``updated_at``, then revision, then
annotation id). It is left out when the dataset already holds a newer one for that frame (stale),
and an ``unusable`` delivery only matters for a frame the dataset holds (it becomes a tombstone).
An annotation with any row failing the labels suite is left out whole and reported: a frame with
one box dropped would teach the model a false negative.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleetloop.dataset.batches import FRAME_SCHEMA, LABEL_SCHEMA, frame_index
from fleetloop.dataset.manifest import Problem
from fleetloop.dataset.splits import split_of
from fleetloop.schema import LABELS
from fleetloop.store import keys
from fleetloop.store.logs import LogNotFoundError, get_log
from fleetloop.store.objects import ObjectNotFound, StorageError, Store

__all__ = [
    "ANNOTATIONS_META",
    "LABELS_PREFIX",
    "BuiltBatch",
    "Delivery",
    "LabelValidator",
    "build_batch",
    "list_label_shards",
    "read_deliveries",
    "write_batch",
]

LABELS_PREFIX = keys.LABELS
ANNOTATIONS_META = b"fleetloop_annotations"
_SHARD_KEY = re.compile(r"^labels/([^/]+)/sync-(\d{6})\.parquet$")
_PNG = b"\x89PNG\r\n\x1a\n"
_IMAGE_THREADS = 8

#: validates a LABELS table, returning either per-log reports (``log_id -> report`` whose
#: ``critical``/``warnings`` failures carry ``rows``, positions among the log's rows,
#: ``unexpected_count`` and ``description``: ``fleetloop.ingest.validation.validate_labels``) or a
#: list of messages, empty when valid (``label_failures``; the failing annotations are then found
#: by bisection, a few more calls and only when something fails)
LabelValidator = Callable[[pa.Table], Mapping[str, Any] | Sequence[str]]


@dataclass(frozen=True)
class Delivery:
    """One annotation revision delivered by a label shard."""

    shard: str
    campaign: str
    annotation_id: int
    revision: int
    task_id: int
    updated_at: datetime
    status: str  # labeled | empty | unusable
    log_id: str
    frame: int
    annotator: str | None

    @property
    def key(self) -> tuple[str, int]:
        return (self.log_id, self.frame)

    @property
    def ident(self) -> tuple[str, int, int]:
        """Annotation ids are unique within a campaign (a Label Studio project, or an import)."""
        return (self.campaign, self.annotation_id, self.revision)

    @property
    def order(self) -> tuple[datetime, int, int]:
        return (self.updated_at, self.revision, self.annotation_id)


@dataclass
class BuiltBatch:
    frames: pa.Table  # FRAME_SCHEMA, sorted by (log_id, frame)
    labels: pa.Table  # LABEL_SCHEMA, sorted by (log_id, frame, annotation_id)
    index: pa.Table  # batches.INDEX_SCHEMA rows of this batch
    shard_deliveries: dict[str, int]  # shard key -> deliveries read
    campaigns: list[str]
    deliveries: int = 0
    negatives: int = 0
    removed: int = 0
    superseded: int = 0
    problems: list[Problem] = field(default_factory=list)


def list_label_shards(store: Store) -> list[str]:
    """Every label shard key in the store, sorted."""
    return [k for k in store.list(LABELS_PREFIX) if _SHARD_KEY.match(k)]


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        t = value
    else:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def read_deliveries(store: Store, keys: list[str]) -> tuple[list[Delivery], pa.Table, list[Problem]]:
    """The deliveries and LABELS rows of the shards (rows carry a ``_shard`` position). A shard
    that cannot be read or does not hold LABELS rows is reported and skipped."""
    deliveries: list[Delivery] = []
    tables: list[pa.Table] = []
    problems: list[Problem] = []
    for i, key in enumerate(keys):
        campaign = _SHARD_KEY.match(key).group(1)  # type: ignore[union-attr]
        try:
            data = store.get_bytes(key)
            table = pq.read_table(pa.BufferReader(data))
            meta = (table.schema.metadata or {}).get(ANNOTATIONS_META)
            rows = table.replace_schema_metadata(None).select(LABELS.names).cast(LABELS)
        except (ObjectNotFound, pa.ArrowException, KeyError, ValueError) as exc:
            problems.append(Problem(kind="unreadable_shard", shard=key, campaign=campaign,
                                    message=f"label shard {key} cannot be read as LABELS rows: {exc}"))
            continue
        entries: list[dict[str, Any]]
        if meta is not None:
            entries = json.loads(meta)
        else:  # no delivery list: one delivery per (annotation, revision) of its rows
            entries = []
            seen: set[tuple[int, int]] = set()
            for r in rows.select(["log_id", "frame", "task_id", "annotation_id", "revision", "updated_at",
                                  "annotator"]).to_pylist():
                if (r["annotation_id"], r["revision"]) not in seen:
                    seen.add((r["annotation_id"], r["revision"]))
                    entries.append({**r, "status": "labeled"})
        for e in entries:
            deliveries.append(Delivery(
                shard=key, campaign=campaign, annotation_id=int(e["annotation_id"]), revision=int(e["revision"]),
                task_id=int(e.get("task_id", 0)), updated_at=_parse_time(e["updated_at"]),
                status=str(e.get("status", "labeled")), log_id=str(e["log_id"]), frame=int(e["frame"]),
                annotator=e.get("annotator"),
            ))
        tables.append(rows.append_column("_shard", pa.array(np.full(rows.num_rows, i, np.int32))))
    rows_all = pa.concat_tables(tables) if tables else LABELS.empty_table().append_column(
        "_shard", pa.array([], pa.int32()))
    return deliveries, rows_all, problems


def _invalid_rows(rows: pa.Table, reports: Mapping[str, Any]) -> tuple[np.ndarray, dict[int, list[str]]]:
    """Rows (global positions) that failed the labels suite, with the failed expectations."""
    n = rows.num_rows
    bad = np.zeros(n, bool)
    why: dict[int, list[str]] = {}
    if not reports:
        return bad, why
    log_ids = np.asarray(rows["log_id"].to_pylist(), dtype=object)
    for log_id, report in reports.items():
        positions = np.flatnonzero(log_ids == log_id)
        if not positions.size:  # a table-level failure not tied to a known log: everything
            positions = np.arange(n)
        failures = [*getattr(report, "critical", []), *getattr(report, "warnings", [])]
        for f in failures:
            local = np.asarray(getattr(f, "rows", []) or [], np.int64)
            if not local.size or getattr(f, "unexpected_count", 0) > local.size:
                hit = positions  # table-level, or more failing rows than the report lists
            else:
                hit = positions[local[local < positions.size]]
            bad[hit] = True
            desc = str(getattr(f, "description", "") or getattr(f, "expectation", "invalid"))
            for p in hit.tolist():
                why.setdefault(p, []).append(desc)
    return bad, why


def _validate(rows: pa.Table, validate: LabelValidator) -> tuple[np.ndarray, dict[int, list[str]]]:
    """Rows failing the labels suite, with the reasons; ``rows`` carries ``_shard``."""
    table = rows.drop_columns(["_shard"])
    out = validate(table)
    if isinstance(out, Mapping):
        return _invalid_rows(table, out)
    bad = np.zeros(rows.num_rows, bool)
    why: dict[int, list[str]] = {}
    if not out:
        return bad, why
    # Messages only: bisect over the deliveries (annotation revisions) to find the failing ones.
    idents = list(zip(rows["campaign"].to_pylist(), rows["annotation_id"].to_pylist(), rows["revision"].to_pylist(),
                      strict=True))
    groups: dict[tuple[str, int, int], list[int]] = {}
    for i, ident in enumerate(idents):
        groups.setdefault(ident, []).append(i)
    members = list(groups.values())

    def search(part: list[list[int]], messages: Sequence[str]) -> None:
        if len(part) == 1:
            bad[part[0]] = True
            for i in part[0]:
                why[i] = [str(m) for m in messages]
            return
        for half in (part[: len(part) // 2], part[len(part) // 2:]):
            pos = [i for g in half for i in g]
            found = validate(table.take(pa.array(pos, pa.int64())))
            if found:
                search(half, list(found) if not isinstance(found, Mapping) else [str(k) for k in found])

    search(members, list(out))
    return bad, why


def _read_image(uri: str | None, store: Store) -> tuple[bytes | None, str | None]:
    """The image bytes an ``image_uri`` names (an absolute path, ``file://``, ``s3://`` through
    the store's client, or a key in the store), or ``(None, why not)``."""
    if not uri:
        return None, "the frame has no image_uri"
    parsed = urlparse(uri)
    try:
        if parsed.scheme == "file" or (not parsed.scheme and uri.startswith("/")):
            path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)
            return path.read_bytes(), None
        if parsed.scheme == "s3":
            client = getattr(store, "client", None)
            if client is None:
                return None, f"image {uri} is on S3 but the store is {store.location}, not S3"
            body = client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
            return body, None
        if parsed.scheme:
            return None, f"image {uri}: scheme {parsed.scheme!r} is not read by grow"
        return store.get_bytes(uri), None
    except (OSError, StorageError) as exc:
        return None, f"image {uri} cannot be read: {exc}"
    except Exception as exc:  # botocore errors from the S3 client
        return None, f"image {uri} cannot be read: {exc}"


def _as_png(data: bytes) -> tuple[bytes, int, int]:
    """PNG bytes and size (PNGs as they are, read from their header; other formats re-encoded)."""
    if data[:8] == _PNG and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return data, width, height
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        out = io.BytesIO()
        img.save(out, format="PNG")
        return out.getvalue(), img.size[0], img.size[1]


def build_batch(
    store: Store,
    shard_keys: list[str],
    index: pa.Table,
    *,
    batch: int,
    ratios: Mapping[str, float],
    with_images: bool,
    validate: LabelValidator,
) -> BuiltBatch:
    """The batch the new shards make, given the dataset's current per-frame ``index``."""
    deliveries, rows, problems = read_deliveries(store, shard_keys)
    shard_counts = {k: 0 for k in shard_keys}
    for d in deliveries:
        shard_counts[d.shard] += 1

    # 1. validate the rows; an annotation revision with any bad row is left out whole
    invalid: set[tuple[str, int, int]] = set()
    if rows.num_rows:
        bad, why = _validate(rows, validate)
        if bad.any():
            camps = rows["campaign"].to_pylist()
            ids = rows["annotation_id"].to_pylist()
            revs = rows["revision"].to_pylist()
            reasons: dict[tuple[str, int, int], set[str]] = {}
            for p in np.flatnonzero(bad).tolist():
                reasons.setdefault((camps[p], ids[p], revs[p]), set()).update(why.get(p, []))
            invalid = set(reasons)
            for d in deliveries:
                if d.ident in reasons:
                    problems.append(Problem(
                        kind="invalid_labels", log_id=d.log_id, frame=d.frame, campaign=d.campaign,
                        annotation_id=d.annotation_id, revision=d.revision, shard=d.shard,
                        message="labels suite: " + "; ".join(sorted(reasons[d.ident])),
                    ))

    # 2. the newest valid delivery per frame (one delivery per annotation revision)
    winners: dict[tuple[str, int], Delivery] = {}
    seen: set[tuple[str, int, int]] = set()
    for d in deliveries:
        if d.ident in invalid or d.ident in seen:
            continue
        seen.add(d.ident)
        cur = winners.get(d.key)
        if cur is None or d.order > cur.order:
            winners[d.key] = d

    # 3. against the dataset: stale deliveries and unusable marks of frames it does not hold
    existing: dict[tuple[str, int], tuple[datetime, int, str]] = {}
    if index.num_rows and winners:
        logs = pa.array(sorted({k[0] for k in winners}), pa.string())
        sub = index.filter(pc.is_in(index["log_id"], value_set=logs))
        for r in sub.select(["log_id", "frame", "updated_at", "revision", "status"]).to_pylist():
            existing[(r["log_id"], r["frame"])] = (_parse_time(r["updated_at"]), r["revision"], r["status"])
    kept: list[Delivery] = []
    superseded = 0
    for key in sorted(winners):
        d = winners[key]
        old = existing.get(key)
        if old is not None and (old[0], old[1]) >= (d.updated_at, d.revision):
            problems.append(Problem(
                kind="stale", log_id=d.log_id, frame=d.frame, campaign=d.campaign, annotation_id=d.annotation_id,
                revision=d.revision, shard=d.shard,
                message=f"the dataset already holds a label of this frame updated at {old[0].isoformat()} "
                        f"(this one: {d.updated_at.isoformat()})",
            ))
            continue
        held = old is not None and old[2] != "unusable"
        if d.status == "unusable" and not held:
            continue  # nothing to remove
        superseded += held
        kept.append(d)

    # 4. frame rows: the log's frame tags, the image, the split
    frames = _frame_rows(store, kept, ratios, with_images, problems)

    # 5. label rows of the kept deliveries
    # (a delivery's rows come from the shard it was first read from: a repeated shard adds nothing)
    shard_pos = {k: i for i, k in enumerate(shard_keys)}
    first_shard = {d.ident: shard_pos[d.shard] for d in kept if d.status == "labeled"}
    if rows.num_rows and first_shard:
        camps = rows["campaign"].to_pylist()
        ids = rows["annotation_id"].to_pylist()
        revs = rows["revision"].to_pylist()
        shards = rows["_shard"].to_pylist()
        mask = np.fromiter(
            (first_shard.get((c, a, r)) == s for c, a, r, s in zip(camps, ids, revs, shards, strict=True)),
            bool, count=rows.num_rows,
        )
        lab = rows.filter(pa.array(mask)).drop_columns(["_shard"])
    else:
        lab = LABELS.empty_table()
    split_col = pa.array([split_of(v, ratios) for v in lab["log_id"].to_pylist()], pa.string())
    lab = lab.append_column("split", split_col).cast(LABEL_SCHEMA)
    if lab.num_rows:
        lab = lab.take(pc.sort_indices(lab, sort_keys=[("log_id", "ascending"), ("frame", "ascending"),
                                                       ("annotation_id", "ascending")]))
    # frames' object counts
    counts: dict[tuple[str, int], int] = {}
    for k in zip(lab["log_id"].to_pylist(), lab["frame"].to_pylist(), strict=True):
        counts[k] = counts.get(k, 0) + 1
    frames = frames.set_column(
        frames.schema.get_field_index("objects"), FRAME_SCHEMA.field("objects"),
        pa.array([counts.get(k, 0) for k in zip(frames["log_id"].to_pylist(), frames["frame"].to_pylist(),
                                                     strict=True)], pa.int32()),
    )
    with_batch = frames.drop_columns(["image_png"]).append_column(
        pa.field("batch", pa.int32(), nullable=False), pa.array(np.full(frames.num_rows, batch, np.int32)))
    lab_batch = lab.append_column(pa.field("batch", pa.int32(), nullable=False),
                                  pa.array(np.full(lab.num_rows, batch, np.int32)))
    statuses = frames["status"].to_pylist()
    return BuiltBatch(
        frames=frames, labels=lab, index=frame_index(with_batch, lab_batch), shard_deliveries=shard_counts,
        campaigns=sorted({_SHARD_KEY.match(k).group(1) for k in shard_keys}),  # type: ignore[union-attr]
        deliveries=len(deliveries), negatives=statuses.count("empty"), removed=statuses.count("unusable"),
        superseded=superseded, problems=problems,
    )


def _frame_rows(store: Store, kept: list[Delivery], ratios: Mapping[str, float], with_images: bool,
                problems: list[Problem]) -> pa.Table:
    by_log: dict[str, list[Delivery]] = {}
    for d in kept:
        by_log.setdefault(d.log_id, []).append(d)
    rows: list[dict[str, Any]] = []
    fetch: list[tuple[int, str | None]] = []
    for log_id in sorted(by_log):
        info: dict[int, dict[str, Any]] = {}
        size: tuple[int | None, int | None] = (None, None)
        try:
            log = get_log(store, log_id)
            for r in log.frames.select(["frame", "timestamp_ns", "image_uri", "vehicle", "weather", "time_of_day",
                                        "place"]).to_pylist():
                info[r["frame"]] = r
            if log.calibration.num_rows:
                cal = log.calibration.slice(0, 1).to_pylist()[0]
                size = (cal["image_width"], cal["image_height"])
        except LogNotFoundError:
            problems.append(Problem(kind="unknown_frame", log_id=log_id,
                                    message=f"log {log_id} is not in the store: its frames keep no tags or image"))
        split = split_of(log_id, ratios)
        for d in sorted(by_log[log_id], key=lambda x: x.frame):
            meta = info.get(d.frame)
            if meta is None and info:
                problems.append(Problem(kind="unknown_frame", log_id=log_id, frame=d.frame, campaign=d.campaign,
                                        annotation_id=d.annotation_id,
                                        message=f"log {log_id} has no frame {d.frame}: kept without tags or image"))
            meta = meta or {}
            rows.append({
                "log_id": log_id, "frame": d.frame, "split": split, "status": d.status, "objects": 0,
                "weather": meta.get("weather"), "time_of_day": meta.get("time_of_day"),
                "vehicle": meta.get("vehicle"), "place": meta.get("place"), "timestamp_ns": meta.get("timestamp_ns"),
                "image_uri": meta.get("image_uri"), "width": size[0], "height": size[1],
                "campaign": d.campaign, "task_id": d.task_id, "annotation_id": d.annotation_id,
                "revision": d.revision, "updated_at": d.updated_at, "annotator": d.annotator, "image_png": None,
            })
            if with_images and d.status != "unusable" and (meta or not info):
                fetch.append((len(rows) - 1, meta.get("image_uri")))
    if fetch:
        with ThreadPoolExecutor(max_workers=_IMAGE_THREADS) as pool:
            results = list(pool.map(lambda item: _read_image(item[1], store), fetch))
        for (i, uri), (data, why) in zip(fetch, results, strict=True):
            row = rows[i]
            if data is not None:
                try:
                    row["image_png"], row["width"], row["height"] = _as_png(data)
                    continue
                except Exception as exc:  # PIL: not an image
                    why = f"image {uri} is not a readable image: {exc}"
            problems.append(Problem(kind="missing_image", log_id=row["log_id"], frame=row["frame"],
                                    campaign=row["campaign"], annotation_id=row["annotation_id"],
                                    message=why or "no image"))
    return pa.Table.from_pylist(rows, schema=FRAME_SCHEMA) if rows else FRAME_SCHEMA.empty_table()


def write_batch(folder: Path, built: BuiltBatch, shard_rows: int) -> list[str]:
    """Write the batch's Parquet shards (``shard_rows`` frames each) into ``folder`` (created);
    returns the file names."""
    folder.mkdir(parents=True, exist_ok=False)
    frames, labels = built.frames, built.labels
    names: list[str] = []
    lab_keys = list(zip(labels["log_id"].to_pylist(), labels["frame"].to_pylist(), strict=True))
    lab_key_arr = np.array([f"{a}\x00{b}" for a, b in lab_keys], dtype=object)
    for s, start in enumerate(range(0, max(frames.num_rows, 1), shard_rows)):
        part = frames.slice(start, shard_rows)
        keys = {f"{a}\x00{b}" for a, b in zip(part["log_id"].to_pylist(), part["frame"].to_pylist(), strict=True)}
        mask = np.fromiter((k in keys for k in lab_key_arr), bool, count=len(lab_key_arr))
        for kind, table in (("labels", labels.filter(pa.array(mask))), ("frames", part)):
            name = f"{kind}-{s:05d}.parquet"
            pq.write_table(table, folder / name, compression="zstd")
            names.append(name)
    return sorted(names)
