"""Sync back: finished annotations become fleetloop label rows, each delivered exactly once.

A sync pages the campaign's annotated tasks by id (``total_annotations > 0``; never one big
export), converts each annotation's rectangles from percent to pixels in the
:data:`fleetloop.schema.LABELS` schema with lineage (campaign, task, annotation, annotator,
time, revision), validates them, and writes them as Parquet shards to the store::

    labels/<campaign>/sync-000001.parquet   LABELS rows; the schema metadata key
                                            ``fleetloop_annotations`` lists every annotation
                                            the shard delivers (also those with no boxes)
    labels/<campaign>/watermark.json        annotation id -> (updated_at, revision, task) delivered

Exactly once, across crashes: a shard is written atomically *before* the watermark that covers
it. A crash between the two leaves a shard the watermark does not know; the next sync first
folds such shards into the watermark (from their metadata), so nothing is delivered twice, and
anything not in a shard is delivered by the rerun, so nothing is lost. An annotation whose
``updated_at`` changed after delivery is delivered again as the next ``revision``.

A bad annotation (unknown class, box outside the image, rotated box...) is reported with the
reason for each bad region and not delivered (nor watermarked): once the labeler fixes it, the
next sync delivers it. The rest of the batch proceeds.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from fleetloop.label import campaigns as camp
from fleetloop.label.client import LabelStudioClient
from fleetloop.label.convert import BOX_CONTROL, BadRegion, is_unusable, result_to_box
from fleetloop.schema import LABELS
from fleetloop.store.locks import file_lock, lock_path

MANIFEST_KEY = b"fleetloop_annotations"
_SHARD = re.compile(r"sync-(\d{6})\.parquet$")


class SyncError(RuntimeError):
    """The sync cannot run (no such campaign, unreadable state)."""


class AnnotationProblem(BaseModel):
    task_id: int
    annotation_id: int | None = None
    log_id: str | None = None
    frame: int | None = None
    region: str | None = None  # region id or index within the annotation
    message: str


class Delivered(BaseModel):
    updated_at: str  # Label Studio's updated_at string, compared exactly
    revision: int
    task_id: int


class Watermark(BaseModel):
    campaign: str
    last_shard: int = 0
    delivered: dict[int, Delivered] = Field(default_factory=dict)


class SyncReport(BaseModel):
    campaign: str
    project_id: int
    tasks_seen: int = 0
    annotations_seen: int = 0
    delivered: int = 0  # annotations delivered by this sync (new ones and new revisions)
    revisions: int = 0  # of which re-deliveries of updated annotations
    labels: int = 0  # label rows written
    unusable: int = 0  # delivered annotations marking the frame unusable (no rows)
    empty: int = 0  # delivered annotations with no boxes (a verified empty frame)
    cancelled: int = 0  # skipped by the labeler in Label Studio (nothing to deliver)
    already_delivered: int = 0
    recovered_shards: list[str] = Field(default_factory=list)  # written by a crashed sync, folded in
    shards: list[str] = Field(default_factory=list)
    problems: list[AnnotationProblem] = Field(default_factory=list)
    seconds: float = 0.0


def labels_prefix(campaign: str) -> str:
    return f"labels/{camp.check_name(campaign)}/"


def _shard_key(campaign: str, n: int) -> str:
    return f"{labels_prefix(campaign)}sync-{n:06d}.parquet"


def _watermark_key(campaign: str) -> str:
    return f"{labels_prefix(campaign)}watermark.json"


def shard_manifest(data: bytes) -> list[dict[str, Any]]:
    meta = pq.read_schema(pa.BufferReader(data)).metadata or {}
    return json.loads(meta.get(MANIFEST_KEY, b"[]"))


def load_watermark(store, campaign: str) -> tuple[Watermark, list[str]]:
    """The watermark, with any shard written after it (a crash between shard and watermark)
    folded in. Returns it and the keys of the shards folded in."""
    from fleetloop.store.objects import ObjectNotFound

    try:
        wm = Watermark.model_validate_json(store.get_bytes(_watermark_key(campaign)))
    except ObjectNotFound:
        wm = Watermark(campaign=campaign)
    recovered: list[str] = []
    for key in store.list(f"{labels_prefix(campaign)}sync-"):
        m = _SHARD.search(key)
        if not m or int(m.group(1)) <= wm.last_shard:
            continue
        for entry in shard_manifest(store.get_bytes(key)):
            wm.delivered[int(entry["annotation_id"])] = Delivered(
                updated_at=entry["updated_at"], revision=entry["revision"], task_id=entry["task_id"]
            )
        wm.last_shard = max(wm.last_shard, int(m.group(1)))
        recovered.append(key)
    return wm, recovered


def _parse_time(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def convert_annotation(
    task: dict[str, Any], ann: dict[str, Any], campaign: str, revision: int, annotator: str | None
) -> tuple[str, list[dict[str, Any]], list[AnnotationProblem]]:
    """One annotation -> (status, LABELS rows, problems). Status: labeled | empty | unusable.
    Any problem means the annotation must not be delivered."""
    data = task.get("data") or {}
    tid, aid = int(task["id"]), int(ann["id"])
    log_id, frame = data.get("log_id"), data.get("frame")
    if log_id is None or frame is None:
        return (
            "invalid",
            [],
            [
                AnnotationProblem(
                    task_id=tid,
                    annotation_id=aid,
                    message=("task carries no fleetloop log_id/frame (not created by `fleetloop label push`)"),
                )
            ],
        )
    result = ann.get("result") or []
    if is_unusable(result):
        return "unusable", [], []
    width, height = data.get("image_width"), data.get("image_height")
    rows, problems = [], []
    updated = _parse_time(ann["updated_at"])
    for i, region in enumerate(result):
        if region.get("from_name") != BOX_CONTROL:
            continue
        try:
            box = result_to_box(region, width, height)
        except BadRegion as exc:
            problems.append(
                AnnotationProblem(
                    task_id=tid,
                    annotation_id=aid,
                    log_id=log_id,
                    frame=int(frame),
                    region=str(region.get("id", i)),
                    message=str(exc),
                )
            )
            continue
        rows.append(
            {
                "log_id": str(log_id),
                "frame": int(frame),
                "cls": box.cls,
                "x1": box.x1,
                "y1": box.y1,
                "x2": box.x2,
                "y2": box.y2,
                "campaign": campaign,
                "task_id": tid,
                "annotation_id": aid,
                "annotator": annotator,
                "updated_at": updated,
                "revision": revision,
            }
        )
    return ("labeled" if rows else "empty"), rows, problems


def _shard_bytes(rows: list[dict[str, Any]], manifest: list[dict[str, Any]]) -> bytes:
    table = pa.Table.from_pylist(rows, schema=LABELS) if rows else LABELS.empty_table()
    table = table.replace_schema_metadata({**(LABELS.metadata or {}), MANIFEST_KEY: json.dumps(manifest).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def sync(
    campaign: str,
    *,
    client: LabelStudioClient,
    store,
    home: Path,
    page_size: int = 100,
    shard_size: int = 5000,
    lock_timeout: float = 600.0,
    on_shard_written: Callable[[str], None] | None = None,
    validate: LabelValidator | None = None,
) -> SyncReport:
    """Deliver the campaign's new and updated annotations (see the module doc).

    ``shard_size``: annotations per shard (a crash loses at most the unwritten shard's work,
    which the rerun redoes). ``on_shard_written`` is called with each shard's key after the
    shard is durable and before the watermark covering it is written. ``validate`` (the labels
    suite, given by the caller) checks the converted rows before delivery: an annotation with an
    invalid row is reported and not delivered (nor watermarked), the others are delivered.
    """
    t0 = time.perf_counter()
    with file_lock(lock_path(home, "sync", campaign), timeout=lock_timeout):
        c = camp.find_campaign(client, campaign)
        if c is None:
            raise SyncError(f"no campaign {campaign!r} in Label Studio {client.url} (push to it first)")
        wm, recovered = load_watermark(store, campaign)
        if recovered:  # make the recovery durable before anything else
            store.put_bytes(_watermark_key(campaign), wm.model_dump_json().encode())
        report = SyncReport(campaign=campaign, project_id=c.project_id, recovered_shards=recovered)
        rows: list[dict[str, Any]] = []
        manifest: list[dict[str, Any]] = []

        def flush() -> None:
            if not manifest:
                return
            n = wm.last_shard + 1
            key = _shard_key(campaign, n)
            store.put_bytes(key, _shard_bytes(rows, manifest))  # atomic
            if on_shard_written is not None:
                on_shard_written(key)
            for e in manifest:
                wm.delivered[e["annotation_id"]] = Delivered(
                    updated_at=e["updated_at"], revision=e["revision"], task_id=e["task_id"]
                )
            wm.last_shard = n
            store.put_bytes(_watermark_key(campaign), wm.model_dump_json().encode())  # atomic, after the shard
            report.shards.append(key)
            report.labels += len(rows)
            rows.clear()
            manifest.clear()

        for page in client.iter_tasks(c.project_id, annotated_only=True, page_size=page_size):
            pending: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
            for task in page:
                report.tasks_seen += 1
                for ann in task.get("annotations") or []:
                    report.annotations_seen += 1
                    if ann.get("was_cancelled"):
                        report.cancelled += 1
                        continue
                    aid, updated = int(ann["id"]), ann["updated_at"]
                    prev = wm.delivered.get(aid)
                    if prev is not None and prev.updated_at == updated:
                        report.already_delivered += 1
                        continue
                    revision = prev.revision + 1 if prev else 1
                    annotator = client.user_email(ann.get("completed_by"))
                    status, new_rows, problems = convert_annotation(task, ann, campaign, revision, annotator)
                    if problems:
                        report.problems.extend(problems)
                        continue
                    entry = {
                        "annotation_id": aid,
                        "task_id": int(task["id"]),
                        "updated_at": updated,
                        "revision": revision,
                        "status": status,
                        "boxes": len(new_rows),
                        "annotator": annotator,
                        "log_id": str(task["data"]["log_id"]),
                        "frame": int(task["data"]["frame"]),
                    }
                    pending.append((entry, new_rows))
            for entry, new_rows in _validated(pending, validate, report):
                rows.extend(new_rows)
                manifest.append(entry)
                report.delivered += 1
                report.revisions += entry["revision"] > 1
                report.unusable += entry["status"] == "unusable"
                report.empty += entry["status"] == "empty"
                if len(manifest) >= shard_size:
                    flush()
        flush()
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def import_labels(
    store,
    campaign: str,
    boxes: pa.Table,
    frames: list[tuple[str, int]],
    *,
    home: Path,
    annotator: str,
    validate: LabelValidator | None = None,
) -> SyncReport:
    """Deliver labels made outside Label Studio (a seed set, a vendor's delivery) exactly as a
    sync would: one shard under ``labels/<campaign>/`` with every frame listed (frames without
    boxes are verified-empty frames), then the watermark. ``boxes``: ``log_id, frame, cls, x1,
    y1, x2, y2`` in image pixels. Importing the same campaign again delivers nothing."""
    t0 = time.perf_counter()
    report = SyncReport(campaign=camp.check_name(campaign), project_id=0)
    with file_lock(lock_path(home, "sync", campaign)):
        wm, _ = load_watermark(store, campaign)
        if wm.delivered:
            report.already_delivered = len(wm.delivered)
            return report
        now = datetime.now(UTC)
        by_frame: dict[tuple[str, int], list[dict[str, Any]]] = {}
        cols = boxes.select(["log_id", "frame", "cls", "x1", "y1", "x2", "y2"]).to_pylist()
        for r in cols:
            by_frame.setdefault((str(r["log_id"]), int(r["frame"])), []).append(r)
        pending = []
        for i, (log_id, frame) in enumerate(sorted(set(frames))):
            rows = [{**r, "log_id": log_id, "frame": frame, "campaign": campaign, "task_id": i + 1,
                     "annotation_id": i + 1, "annotator": annotator, "updated_at": now, "revision": 1}
                    for r in by_frame.get((log_id, frame), [])]
            entry = {"annotation_id": i + 1, "task_id": i + 1, "updated_at": now.isoformat(), "revision": 1,
                     "status": "labeled" if rows else "empty", "boxes": len(rows), "annotator": annotator,
                     "log_id": log_id, "frame": frame}
            pending.append((entry, rows))
        good = _validated(pending, validate, report)
        if good:
            key = _shard_key(campaign, 1)
            store.put_bytes(key, _shard_bytes([r for _, rows in good for r in rows], [e for e, _ in good]))
            for e, rows in good:
                wm.delivered[e["annotation_id"]] = Delivered(updated_at=e["updated_at"], revision=1,
                                                             task_id=e["task_id"])
                report.labels += len(rows)
                report.empty += not rows
            wm.last_shard = 1
            store.put_bytes(_watermark_key(campaign), wm.model_dump_json().encode())
            report.shards.append(key)
        report.delivered = len(good)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


#: checks LABELS rows; returns one message per failure (empty: valid)
LabelValidator = Callable[[pa.Table], list[str]]


def _validated(
    pending: list[tuple[dict[str, Any], list[dict[str, Any]]]], validate: LabelValidator | None, report: SyncReport
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The pending annotations whose rows pass ``validate``: the page is checked at once, and
    only when it fails is each annotation checked alone, to find which to hold back."""
    if validate is None or not any(r for _, r in pending):
        return pending
    if not validate(pa.Table.from_pylist([r for _, rows in pending for r in rows], schema=LABELS)):
        return pending
    good = []
    for entry, rows in pending:
        failures = validate(pa.Table.from_pylist(rows, schema=LABELS)) if rows else []
        if failures:
            report.problems.append(AnnotationProblem(
                task_id=entry["task_id"], annotation_id=entry["annotation_id"], log_id=entry["log_id"],
                frame=entry["frame"], message="labels suite: " + "; ".join(failures)))
        else:
            good.append((entry, rows))
    return good


def read_labels(store, campaign: str, *, latest: bool = True) -> pa.Table:
    """All delivered label rows of a campaign; with ``latest``, only each annotation's newest
    revision (an annotation whose newest revision has no boxes contributes no rows)."""
    tables: list[pa.Table] = []
    newest: dict[int, int] = {}  # annotation id -> its newest revision
    for key in store.list(f"{labels_prefix(campaign)}sync-"):
        if not _SHARD.search(key):
            continue
        data = store.get_bytes(key)
        for e in shard_manifest(data):
            newest[e["annotation_id"]] = max(newest.get(e["annotation_id"], 0), e["revision"])
        tables.append(pq.read_table(pa.BufferReader(data)).replace_schema_metadata(None))
    if not tables:
        return LABELS.empty_table()
    out = pa.concat_tables([t.cast(LABELS) for t in tables])
    if latest and out.num_rows:
        ids, revs = out["annotation_id"].to_pylist(), out["revision"].to_pylist()
        out = out.filter(pa.array([newest.get(a) == r for a, r in zip(ids, revs, strict=True)]))
    return out


def delivered_manifest(store, campaign: str) -> list[dict[str, Any]]:
    """Every delivery (annotation revision) of a campaign, in shard order."""
    entries: list[dict[str, Any]] = []
    for key in store.list(f"{labels_prefix(campaign)}sync-"):
        if _SHARD.search(key):
            entries.extend({**e, "shard": key} for e in shard_manifest(store.get_bytes(key)))
    return entries


def campaign_status(campaign: str, *, client: LabelStudioClient, store) -> dict[str, Any]:
    """Counts for ``fleetloop label status``: ``tasks``, ``annotated`` (tasks with at least one
    annotation), ``synced`` (tasks with a delivered annotation), and a few more."""
    c = camp.find_campaign(client, campaign)
    if c is None:
        raise SyncError(f"no campaign {campaign!r} in Label Studio {client.url}")
    p = client.request("GET", f"/api/projects/{c.project_id}")
    wm, _ = load_watermark(store, campaign)
    return {
        "campaign": campaign,
        "project_id": c.project_id,
        "url": f"{client.url}/projects/{c.project_id}/data",
        "tasks": int(p.get("task_number") or 0),
        "annotated": int(p.get("num_tasks_with_annotations") or 0),
        "synced": len({d.task_id for d in wm.delivered.values()}),
        "annotations": int(p.get("total_annotations_number") or 0),
        "annotations_delivered": len(wm.delivered),
        "skipped": int(p.get("skipped_annotations_number") or 0),
        "shards": wm.last_shard,
        "model_version": p.get("model_version"),
    }
