"""Sync back: finished annotations become fleetloop label rows, each delivered exactly once.

A sync pages the campaign's annotated tasks by id (``total_annotations > 0``; never one big
export), converts each annotation's rectangles from percent to pixels in the
:data:`fleetloop.schema.LABELS` schema with lineage (campaign, task, annotation, annotator,
time, revision), validates them, and writes them as Parquet shards to the store::

    labels/<campaign>/sync-000001.parquet   LABELS rows; the schema metadata key
                                            ``fleetloop_annotations`` lists every annotation
                                            the shard delivers (also those with no boxes)
    labels/<campaign>/watermark.json        annotation id -> (updated_at, revision, task) delivered
                                            (and whether retracted); tasks found deleted

Exactly once, across crashes: a shard is written atomically *before* the watermark that covers
it. A crash between the two leaves a shard the watermark does not know; the next sync first
folds such shards into the watermark (from their metadata), so nothing is delivered twice, and
anything not in a shard is delivered by the rerun, so nothing is lost. An annotation whose
``updated_at`` changed after delivery is delivered again as the next ``revision``.

Retraction: a delivered annotation no longer on its task (deleted, or cancelled, in Label Studio)
while the task exists gets a tombstone (its next revision, status ``unusable``, no rows,
``retracted: true``, ordered at its last delivery's ``updated_at``), and the task's newest
remaining finished annotation, if any, is delivered again after it as the frame's word (see
:func:`_retract`). Both are deliveries like any other (shard, then watermark), so a rerun or a
recovered crash retracts nothing twice. A task deleted as a whole is not retracted: it is counted
once (``tasks_deleted``) and remembered in the watermark.

A bad annotation (unknown class, box outside the image, rotated box, a region from a control
that is not fleetloop's, a malformed value, a task whose data no longer matches the
``fleetloop_key`` push gave it...) is reported with the reason for each bad region and not
delivered (nor watermarked): once the labeler fixes it, the next sync delivers it. The rest of the
batch proceeds: no task or annotation can make the sync fail. A project whose labeling config
lost fleetloop's controls or classes fails the campaign's sync before anything is delivered.
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
from fleetloop.label.campaigns import BOX_CONTROL, STATUS_CONTROL, UNUSABLE
from fleetloop.label.client import LabelStudioClient, LabelStudioError
from fleetloop.label.convert import BadRegion, is_unusable, positive_size, result_to_box
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
    # the ``updated_at`` the delivery was ordered by in its shard, when not Label Studio's (a word
    # delivered at a retraction is ordered after everything its task delivered before)
    order_at: str | None = None
    retracted: bool = False  # deleted (or cancelled) in Label Studio, and a tombstone delivered

    @property
    def order(self) -> tuple[datetime, int]:
        return _parse_time(self.order_at or self.updated_at), self.revision


class Watermark(BaseModel):
    campaign: str
    last_shard: int = 0
    delivered: dict[int, Delivered] = Field(default_factory=dict)
    # tasks that held a delivered annotation and were deleted in Label Studio (not retracted:
    # deleting tasks is cleanup); remembered so that each is looked up and reported once
    deleted_tasks: list[int] = Field(default_factory=list)


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
    retracted: int = 0  # delivered annotations deleted (or cancelled) in Label Studio: a tombstone each
    tasks_deleted: int = 0  # tasks holding delivered annotations found deleted in Label Studio (not retracted)
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
            wm.delivered[int(entry["annotation_id"])] = _delivered(entry)
        wm.last_shard = max(wm.last_shard, int(m.group(1)))
        recovered.append(key)
    return wm, recovered


def _delivered(entry: dict[str, Any]) -> Delivered:
    """The watermark's record of a manifest entry (a delivery)."""
    source = entry.get("source_updated_at")
    return Delivered(
        updated_at=source or entry["updated_at"], revision=entry["revision"], task_id=entry["task_id"],
        order_at=entry["updated_at"] if source else None, retracted=bool(entry.get("retracted")),
    )


def _parse_time(s: str) -> datetime:
    t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


class _Rejected(ValueError):
    """The task or annotation as a whole cannot be delivered (the message says why)."""


def _task_frame(task: dict[str, Any], campaign: str) -> tuple[str, int, int | None, int | None]:
    """The task's ``log_id, frame, image_width, image_height``, checked against the
    ``fleetloop_key`` push gave it: task data can be edited in Label Studio (or a task added by
    hand), and a label must never land on a frame fleetloop did not send."""
    data = task.get("data") or {}
    key = data.get("fleetloop_key")
    log_id, frame = data.get("log_id"), data.get("frame")
    if not key:
        raise _Rejected(
            "task has no fleetloop_key: it was not created by `fleetloop label push` (added by hand or"
            " imported?); delete it in Label Studio, or push the frame with `fleetloop label push`"
        )
    if log_id is None or frame is None:
        raise _Rejected(f"task {key!r} carries no log_id/frame in its data (edited in Label Studio?)")
    try:
        if isinstance(frame, bool) or float(frame) != int(float(frame)):
            raise ValueError(frame)
        frame = int(float(frame))
    except (TypeError, ValueError, OverflowError):
        raise _Rejected(f"task data frame={frame!r} is not a whole number (edited in Label Studio?)") from None
    if key != camp.task_key(campaign, str(log_id), frame):
        raise _Rejected(
            f"task data log_id={log_id!r} frame={frame} do not match its fleetloop_key {key!r}"
            f" (expected {camp.task_key(campaign, str(log_id), frame)!r}): the task data was edited in Label"
            " Studio; restore it, or delete the task and push the frame again"
        )
    sizes = []
    for field in ("image_width", "image_height"):
        try:
            sizes.append(positive_size(data.get(field)))
        except (TypeError, ValueError, OverflowError):
            raise _Rejected(f"task data {field}={data.get(field)!r} is not a positive whole number") from None
    return str(log_id), frame, sizes[0], sizes[1]


def _is_prediction(region: dict[str, Any], predicted: list[dict[str, Any]]) -> bool:
    """The region is one of the task's pre-annotations, unchanged (the labeler did not draw it)."""
    v = region.get("value") or {}
    for p in predicted:
        pv = p.get("value") or {}
        if pv.get("rectanglelabels") != v.get("rectanglelabels"):
            continue
        try:
            if all(abs(float(pv[k]) - float(v[k])) < 1e-6 for k in ("x", "y", "width", "height")):
                return True
        except (KeyError, TypeError, ValueError):
            continue
    return False


def convert_annotation(
    task: dict[str, Any], ann: dict[str, Any], campaign: str, revision: int, annotator: str | None
) -> tuple[str, list[dict[str, Any]], list[AnnotationProblem]]:
    """One annotation -> (status, LABELS rows, problems). Status: labeled | empty | unusable
    (``invalid`` when the task or annotation as a whole is rejected). Any problem means the
    annotation must not be delivered; nothing in the task or annotation raises (whatever was
    edited in Label Studio becomes a problem naming the task, annotation and field)."""
    tid = int(task["id"])
    try:
        aid: int | None = int(ann["id"])
    except (KeyError, TypeError, ValueError):
        aid = None

    def problem(message: str, region: str | None = None, log_id: str | None = None,
                frame: int | None = None) -> AnnotationProblem:
        return AnnotationProblem(task_id=tid, annotation_id=aid, log_id=log_id, frame=frame, region=region,
                                 message=message)

    try:
        log_id, frame, width, height = _task_frame(task, campaign)
    except _Rejected as exc:
        raw = (task.get("data") or {}).get("log_id")
        return "invalid", [], [problem(str(exc), log_id=None if raw is None else str(raw))]
    if aid is None:
        return "invalid", [], [problem(f"annotation id {ann.get('id')!r} is not a number", log_id=log_id, frame=frame)]
    try:
        updated = _parse_time(ann["updated_at"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return "invalid", [], [problem(f"annotation updated_at={ann.get('updated_at')!r} is not a time",
                                       log_id=log_id, frame=frame)]
    result = ann.get("result") or []
    if not isinstance(result, list):
        return "invalid", [], [problem(f"annotation result is a {type(result).__name__}, not a list of regions",
                                       log_id=log_id, frame=frame)]
    rows: list[dict[str, Any]] = []
    problems: list[AnnotationProblem] = []
    boxes: list[dict[str, Any]] = []  # the box control's regions
    for i, region in enumerate(result):
        where = str(region.get("id", i)) if isinstance(region, dict) else str(i)
        if not isinstance(region, dict):
            problems.append(problem(f"region is a {type(region).__name__}, not an object", where, log_id, frame))
            continue
        control, kind = region.get("from_name"), str(region.get("type") or "")
        if kind == "relation":  # a link between two regions: changes no box
            continue
        if control == BOX_CONTROL and kind in ("rectanglelabels", "rectangle"):  # no class: rejected below
            boxes.append(region)
        elif control == STATUS_CONTROL and kind == "choices":
            choices = (region.get("value") or {}).get("choices") or []
            if any(c != UNUSABLE for c in choices):
                problems.append(problem(
                    f"choice {choices} of control {STATUS_CONTROL!r}: fleetloop's config offers only {UNUSABLE!r}"
                    " (the project's labeling config was changed?)", where, log_id, frame))
        elif control == BOX_CONTROL:
            problems.append(problem(
                f"region of type {kind!r} from control {BOX_CONTROL!r}: fleetloop's box control draws"
                " rectanglelabels (the project's labeling config was changed?)", where, log_id, frame))
        else:
            problems.append(problem(
                f"region of type {kind!r} from control {control!r} is not fleetloop's box control"
                f" {BOX_CONTROL!r}: the project's labeling config was changed? (its boxes would be lost)",
                where, log_id, frame))
    if is_unusable([r for r in result if isinstance(r, dict)]):
        drawn = [r for r in boxes if not _is_prediction(r, _predicted_boxes(task))]
        if drawn:
            problems.append(problem(
                f"marks the frame unusable but also draws {len(drawn)} boxes: delete the boxes (an unusable"
                f" frame has no labels) or untick {UNUSABLE!r}", None, log_id, frame))
        return ("invalid" if problems else "unusable"), [], problems
    for i, region in enumerate(boxes):
        try:
            box = result_to_box(region, width, height)
        except BadRegion as exc:
            problems.append(problem(str(exc), str(region.get("id", i)), log_id, frame))
            continue
        rows.append(
            {
                "log_id": log_id,
                "frame": frame,
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
    if problems:
        return "invalid", [], problems
    return ("labeled" if rows else "empty"), rows, problems


def _predicted_boxes(task: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for p in task.get("predictions") or [] if isinstance(p, dict)
            for r in p.get("result") or [] if isinstance(r, dict) and r.get("from_name") == BOX_CONTROL]


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _prepare(
    task: dict[str, Any], ann: dict[str, Any], campaign: str, wm: Watermark, client: LabelStudioClient,
    report: SyncReport,
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """One annotation of a page: None when there is nothing to deliver (cancelled, already
    delivered, or rejected: then its problems are in ``report``), else its manifest entry and rows."""
    if ann.get("was_cancelled"):
        report.cancelled += 1
        return None
    aid, updated = _int_or_none(ann.get("id")), ann.get("updated_at")
    prev = wm.delivered.get(aid) if aid is not None else None
    if prev is not None and prev.updated_at == updated and not prev.retracted:
        report.already_delivered += 1
        return None
    revision = prev.revision + 1 if prev else 1
    annotator = client.user_email(ann.get("completed_by"))
    status, new_rows, problems = convert_annotation(task, ann, campaign, revision, annotator)
    if problems:
        report.problems.extend(problems)
        return None
    log_id, frame, _, _ = _task_frame(task, campaign)
    entry = {
        "annotation_id": aid,
        "task_id": int(task["id"]),
        "updated_at": updated,
        "revision": revision,
        "status": status,
        "boxes": len(new_rows),
        "annotator": annotator,
        "log_id": log_id,
        "frame": frame,
    }
    return entry, new_rows


def _task_items(
    task: dict[str, Any], campaign: str, wm: Watermark, known: list[int], client: LabelStudioClient,
    report: SyncReport,
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Everything one task delivers: its new and updated annotations, and, when an annotation
    delivered before is no longer on the task, the retraction (see :func:`_retract`). ``known``:
    the annotation ids of the task in the watermark."""
    tid = int(task["id"])
    items: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    present: dict[int, dict[str, Any]] = {}  # the task's finished annotations
    for ann in task.get("annotations") or []:
        report.annotations_seen += 1
        aid = _int_or_none(ann.get("id")) if isinstance(ann, dict) else None
        if aid is not None and not ann.get("was_cancelled"):
            present[aid] = ann
        try:
            item = _prepare(task, ann, campaign, wm, client, report)
        except Exception as exc:  # never let one task or annotation stop the others
            report.problems.append(AnnotationProblem(
                task_id=tid, annotation_id=aid, message=f"cannot convert: {type(exc).__name__}: {exc}"))
            continue
        if item is not None:
            items.append(item)
    gone = [a for a in known if a not in present and not wm.delivered[a].retracted]
    if not gone and not (items and any(wm.delivered[a].retracted for a in known)):
        return items  # nothing retracted, nor a new word to order after earlier retractions
    try:
        return _retract(task, campaign, wm, known, gone, present, items, client, report)
    except Exception as exc:  # the task data no longer names its frame (reported), or worse
        report.problems.append(AnnotationProblem(
            task_id=tid, annotation_id=gone[0] if gone else None,
            message=f"cannot retract the deleted annotations {gone} of the task: {type(exc).__name__}: {exc}"
                    if gone else f"cannot order the task's delivery after its retractions: {exc}"))
        return [] if gone else items


def _retract(
    task: dict[str, Any], campaign: str, wm: Watermark, known: list[int], gone: list[int],
    present: dict[int, dict[str, Any]], items: list[tuple[dict[str, Any], list[dict[str, Any]]]],
    client: LabelStudioClient, report: SyncReport,
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """A task with annotations delivered and then deleted (``gone`` now, or retracted before).

    Each annotation in ``gone`` gets a tombstone: its next revision, status ``unusable``, no rows,
    ``retracted: true``, ordered at its last delivery's ``updated_at`` (so it beats that delivery
    in the dataset, and nothing newer from elsewhere). The newest remaining finished annotation
    (by Label Studio's ``updated_at``) then becomes the frame's word: delivered again as its next
    revision when it was delivered already, and ordered after every delivery the task made (a
    revision past the tombstones, at the newest ``updated_at``). Without one the tombstone is the
    frame's last word, and the frame leaves the dataset."""
    tid = int(task["id"])
    log_id, frame, _, _ = _task_frame(task, campaign)  # _Rejected: the task data was edited
    # every delivery the task made so far, and the tombstones: (order, its updated_at string)
    orders = [(wm.delivered[a].order, wm.delivered[a].order_at or wm.delivered[a].updated_at) for a in known]
    out: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for a in gone:
        d = wm.delivered[a]
        at = d.order_at or d.updated_at
        out.append(({"annotation_id": a, "task_id": tid, "updated_at": at, "source_updated_at": d.updated_at,
                     "revision": d.revision + 1, "status": "unusable", "boxes": 0, "annotator": None,
                     "log_id": log_id, "frame": frame, "retracted": True}, []))
        orders.append(((d.order[0], d.revision + 1), at))
    (floor_at, floor_rev), floor_str = max(orders, key=lambda o: o[0])
    pending = {e["annotation_id"]: (e, rows) for e, rows in items}

    def current(a: int) -> bool:  # delivered or being delivered, as it is now
        d = wm.delivered.get(a)
        return a in pending or (d is not None and not d.retracted and d.updated_at == present[a].get("updated_at"))

    words = [a for a in present if current(a)]
    if words:
        word = max(words, key=lambda a: (_parse_time(str(present[a].get("updated_at"))), a))
        entry: dict[str, Any] | None = None
        rows: list[dict[str, Any]] = []
        if word in pending:
            entry, rows = pending[word]
        elif gone:  # delivered already: delivered again, as the frame's word
            prev = wm.delivered[word]
            annotator = client.user_email(present[word].get("completed_by"))
            status, rows, problems = convert_annotation(task, present[word], campaign, prev.revision + 1, annotator)
            if problems:
                report.problems.extend(problems)
            else:
                entry = {"annotation_id": word, "task_id": tid, "updated_at": prev.order_at or prev.updated_at,
                         "source_updated_at": prev.updated_at, "revision": prev.revision + 1, "status": status,
                         "boxes": len(rows), "annotator": annotator, "log_id": log_id, "frame": frame}
                items.append((entry, rows))
        if entry is not None:
            if (_parse_time(entry["updated_at"]), entry["revision"]) <= (floor_at, floor_rev):
                entry.setdefault("source_updated_at", entry["updated_at"])
                entry["updated_at"] = floor_str
                entry["revision"] = max(entry["revision"], floor_rev + 1)
            if gone:
                entry["retracts"] = sorted(gone)
            when = _parse_time(entry["updated_at"])
            for r in rows:
                r["updated_at"], r["revision"] = when, entry["revision"]
    return out + items


def _project(client: LabelStudioClient, store, campaign: str) -> camp.Campaign:
    """The campaign's Label Studio project (found by title), or a :class:`SyncError` saying what
    to do: a campaign the index knows was pushed, so its project was renamed or deleted."""
    from fleetloop.label import index
    from fleetloop.store.objects import ObjectNotFound

    c = camp.find_campaign(client, campaign)
    if c is not None:
        return c
    try:
        index.get(store, campaign)
    except ObjectNotFound:
        similar = [r.name for r in index.campaigns(store) if r.name.lower() == campaign.lower()]
        if similar:  # titles are case-sensitive: pushing to this spelling would label every frame again
            raise SyncError(f"no campaign {campaign!r}: did you mean {similar[0]!r}? (campaign names are"
                            " case-sensitive)") from None
        raise SyncError(f"no project titled {campaign!r} in Label Studio {client.url}: push to the campaign first"
                        " (`fleetloop label push`)") from None
    raise SyncError(
        f"no project titled {campaign!r} in Label Studio {client.url}: renamed or deleted? Campaigns are found by"
        f" project title: if renamed, rename it back to {campaign!r}; if deleted on purpose, remove"
        f" {index.PREFIX}{campaign}.json from the store so it is no longer synced. Pushing again would create a"
        " new project with every frame to label again"
    )


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
    camp.check_name(campaign)  # before the lock file, whose path holds the name
    with file_lock(lock_path(home, "sync", campaign), timeout=lock_timeout):
        c = _project(client, store, campaign)
        bad_config = camp.config_problems(
            (client.request("GET", f"/api/projects/{c.project_id}") or {}).get("label_config") or "")
        if bad_config:
            raise SyncError(
                f"campaign {campaign!r}: the labeling config of Label Studio project {c.project_id} is no longer"
                f" fleetloop's: {'; '.join(bad_config)}. Labelers could not label every class, so nothing is"
                " delivered: restore fleetloop/label/label_config.xml in the project's settings (Labeling"
                " Interface), then sync again"
            )
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
                wm.delivered[e["annotation_id"]] = _delivered(e)
            wm.last_shard = n
            store.put_bytes(_watermark_key(campaign), wm.model_dump_json().encode())  # atomic, after the shard
            report.shards.append(key)
            report.labels += len(rows)
            rows.clear()
            manifest.clear()

        known: dict[int, list[int]] = {}  # task id -> its annotation ids in the watermark
        for aid, d in wm.delivered.items():
            known.setdefault(d.task_id, []).append(aid)
        seen: set[int] = set()

        def deliver(tasks: list[dict[str, Any]]) -> None:
            pending: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
            for task in tasks:
                seen.add(int(task["id"]))
                pending.extend(_task_items(task, campaign, wm, known.get(int(task["id"]), []), client, report))
            for entry, new_rows in _validated(pending, validate, report):
                # a task's deliveries (a retraction and the frame's new word) share a shard
                if len(manifest) >= shard_size and entry["task_id"] != manifest[-1]["task_id"]:
                    flush()
                rows.extend(new_rows)
                manifest.append(entry)
                if entry.get("retracted"):
                    report.retracted += 1
                    continue
                report.delivered += 1
                report.revisions += entry["revision"] > 1
                report.unusable += entry["status"] == "unusable"
                report.empty += entry["status"] == "empty"

        for page in client.iter_tasks(c.project_id, annotated_only=True, page_size=page_size):
            report.tasks_seen += len(page)
            deliver(page)
        # tasks holding a delivered annotation that the paging did not see: no finished annotation
        # is left on them (retract), or they were deleted (reported once, not retracted)
        gone_tasks = set(wm.deleted_tasks)
        missing = sorted(t for t, aids in known.items() if t not in seen and t not in gone_tasks
                         and any(not wm.delivered[a].retracted for a in aids))
        for start in range(0, len(missing), page_size):
            found = []
            for tid in missing[start:start + page_size]:
                try:
                    found.append(client.request("GET", f"/api/tasks/{tid}/"))
                except LabelStudioError as exc:
                    if exc.status != 404:
                        raise
                    wm.deleted_tasks.append(tid)
                    report.tasks_deleted += 1
            deliver([t for t in found if isinstance(t, dict)])
        flush()
        if report.tasks_deleted:
            store.put_bytes(_watermark_key(campaign), wm.model_dump_json().encode())  # remember them
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
    revision (an annotation whose newest revision has no boxes, e.g. a retracted one, contributes
    no rows)."""
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


def _live(wm: Watermark, aid: int | None) -> bool:
    d = wm.delivered.get(aid) if aid is not None else None
    return d is not None and not d.retracted


def _current(wm: Watermark, ann: dict[str, Any]) -> bool:
    """The annotation is delivered as it is now (not retracted, not updated since)."""
    aid = _int_or_none(ann.get("id"))
    d = wm.delivered.get(aid) if aid is not None else None
    return d is not None and not d.retracted and d.updated_at == ann.get("updated_at")


def campaign_status(campaign: str, *, client: LabelStudioClient, store) -> dict[str, Any]:
    """Counts for ``fleetloop label status``: ``tasks``, ``annotated`` (tasks with at least one
    annotation), ``synced`` (tasks of the project that hold a delivered annotation),
    ``annotations_undelivered`` (finished annotations not delivered as they are now: new, updated
    since their delivery, or rejected), and a few more."""
    c = _project(client, store, campaign)
    p = client.request("GET", f"/api/projects/{c.project_id}")
    wm, _ = load_watermark(store, campaign)
    # a task counts as synced while it exists and holds an annotation delivered (in any revision):
    # a task deleted in Label Studio, or whose delivered annotation was deleted, is not synced
    # (else the campaign could be marked complete with a task left to label, never fetched again)
    synced = undelivered = 0
    for page in client.iter_tasks(c.project_id, annotated_only=True, page_size=500):
        synced += sum(any(_live(wm, _int_or_none(a.get("id"))) for a in t.get("annotations") or []) for t in page)
        # finished annotations not delivered as they are now: new, updated since, or rejected
        undelivered += sum(not _current(wm, a) for t in page for a in t.get("annotations") or []
                           if isinstance(a, dict) and not a.get("was_cancelled"))
    return {
        "campaign": campaign,
        "project_id": c.project_id,
        "url": f"{client.url}/projects/{c.project_id}/data",
        "tasks": int(p.get("task_number") or 0),
        "annotated": int(p.get("num_tasks_with_annotations") or 0),
        "synced": synced,
        "annotations": int(p.get("total_annotations_number") or 0),
        "annotations_undelivered": undelivered,
        "annotations_delivered": sum(not d.retracted for d in wm.delivered.values()),
        "annotations_retracted": sum(d.retracted for d in wm.delivered.values()),
        "skipped": int(p.get("skipped_annotations_number") or 0),
        "shards": wm.last_shard,
        "model_version": p.get("model_version"),
    }
