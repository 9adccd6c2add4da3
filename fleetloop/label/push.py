"""Push: mined frames become pre-annotated Label Studio tasks, idempotently.

Each task carries, in its data, a stable key ``fleetloop_key = <campaign>/<log_id>/<frame>``;
before importing, the campaign's existing tasks are paged (by id) and frames whose key is
already there are skipped, so pushing the same selection twice creates no duplicates (and a
push that crashed half way is finished by running it again). Pushes of one campaign are
serialised by a file lock. Tasks go in batched imports (many tasks per request).

Task content: the image (the frame's camera image, or a rendering of the sensors' boxes when the
log has none), the model's boxes as a prediction with a ``model_version`` and scores (the
project's model version is set to it, otherwise Label Studio hides predictions), and the flag
reasons, mining score and log/frame ids so the labeler sees why the frame was sent.
A frame whose image cannot be loaded, or that is not in the logs, is reported and skipped; the
rest of the batch proceeds.
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from fleetloop.label import campaigns as camp
from fleetloop.label.campaigns import task_key
from fleetloop.label.client import LabelStudioClient
from fleetloop.label.convert import box_to_result
from fleetloop.label.images import ImageProblem, LocalFilesPublisher, Publisher, resolve_image
from fleetloop.label.render import group_boxes, prediction_source, render_frame, save_png, sensor_boxes
from fleetloop.schema import CLASSES, DriveLogs
from fleetloop.store.ids import InvalidLogIdError, check_log_id
from fleetloop.store.keys import LABELING_IMAGES
from fleetloop.store.locks import file_lock, lock_path
from fleetloop.store.objects import Store

SELECTION_COLUMNS = ("log_id", "frame", "score", "reasons")


class SelectionError(ValueError):
    """The selection file is missing or malformed (the message names the file and line)."""


class FrameProblem(BaseModel):
    log_id: str
    frame: int
    stage: str  # selection | image | render | import
    message: str


class PushReport(BaseModel):
    campaign: str
    project_id: int
    model_version: str
    selected: int  # distinct frames in the selection
    created: int  # tasks created by this push
    already_present: int  # frames whose task existed already (idempotent rerun)
    problems: list[FrameProblem] = Field(default_factory=list)
    task_ids: list[int] = Field(default_factory=list)
    requests: int = 0  # import requests made
    build_seconds: float = 0.0  # making task images and predictions
    import_seconds: float = 0.0  # in import requests
    seconds: float = 0.0


def read_selection(path: Path | str) -> list[dict[str, Any]]:
    """The rows of a selection CSV (``fleetloop mine --budget`` output): ``log_id`` (kept as a
    string: ``0001`` stays ``0001``), ``frame``, ``score``, ``reasons`` and any other columns."""
    path = Path(path)
    if path.is_dir():
        raise SelectionError(f"selection {path} is a directory, not a CSV file")
    if not path.is_file():
        raise SelectionError(f"selection file {path} does not exist")
    return read_selection_text(decode_selection(path.read_bytes(), str(path)), str(path))


def decode_selection(data: bytes, where: str) -> str:
    """The text of a selection file: UTF-8, with or without the byte-order mark spreadsheets write."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SelectionError(f"{where}, line {line}: not UTF-8 text (byte {data[exc.start]:#04x}); "
                             "save it as CSV UTF-8") from None


_WHOLE = re.compile(r"-?[0-9]+")


def read_selection_text(text: str, where: str) -> list[dict[str, Any]]:
    """:func:`read_selection` of CSV text; ``where`` names it in errors. Rows whose cells are all
    empty (a spreadsheet's) and a repeat of the header line (two selections concatenated) are
    skipped; anything else that is not a frame is an error naming the line."""
    rows: list[dict[str, Any]] = []
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    fields = list(reader.fieldnames or [])
    if not fields:
        raise SelectionError(f"{where}: empty file (no header line)")
    twice = sorted({c for c in fields if fields.count(c) > 1})
    if twice:
        raise SelectionError(f"{where}: columns {twice} appear more than once in the header")
    missing = [c for c in ("log_id", "frame") if c not in fields]
    if missing:
        hint = " (KITTI's `sequence` column? name it log_id)" if "log_id" in missing and "sequence" in fields else ""
        raise SelectionError(f"{where}: missing columns {missing} (have {fields}){hint}")
    try:
        for row in reader:
            rows.extend(_selection_row(row, fields, where, reader.line_num))  # line_num: physical line
    except csv.Error as exc:
        raise SelectionError(f"{where}, line {reader.line_num}: not readable as CSV ({exc})") from None
    return rows


def _selection_row(row: dict[str, Any], fields: list[str], where: str, lineno: int) -> list[dict[str, Any]]:
    """The selection row of a CSV line as a list of none (an empty line or a repeated header) or one."""
    if None in row or row["frame"] is None:  # more cells than the header names, or fewer
        raise SelectionError(f"{where}, line {lineno}: {len(fields)} columns in the header, "
                             "another number of cells on this line")
    if not any((v or "").strip() for v in row.values()):
        return []  # an empty row of a spreadsheet
    if [row[c] for c in fields] == fields:
        return []  # the header again: two selections concatenated
    if {"log_id", "frame"} <= set(row.values()):  # a header of other columns
        raise SelectionError(f"{where}, line {lineno}: another header line, with other columns "
                             "(selections concatenated?): put each file's columns in the first file's order")
    try:
        row["log_id"] = check_log_id(row["log_id"].strip())
    except InvalidLogIdError as exc:
        raise SelectionError(f"{where}, line {lineno}: {exc}") from None
    if (row.get("sequence") or "").strip() not in ("", row["log_id"]):
        raise SelectionError(f"{where}, line {lineno}: log_id {row['log_id']!r} and sequence "
                             f"{row['sequence']!r} differ (KITTI's sequence is the log id): fix one")
    if not _WHOLE.fullmatch(row["frame"].strip()):
        raise SelectionError(f"{where}, line {lineno}: frame {row['frame']!r} is not a whole number")
    frame = int(row["frame"])
    if frame < 0:
        raise SelectionError(f"{where}, line {lineno}: frame {frame} is negative")
    row["frame"] = frame
    try:
        row["score"] = float(row["score"]) if (row.get("score") or "").strip() else None
    except ValueError:
        raise SelectionError(f"{where}, line {lineno}: score {row['score']!r} is not a number") from None
    if row["score"] is not None and not math.isfinite(row["score"]):
        raise SelectionError(f"{where}, line {lineno}: score {row['score']} is not a finite number")
    row["reasons"] = row.get("reasons") or ""
    return [row]


def _why(reasons: str, score: float | None) -> str:
    parts = [r for r in reasons.split(";") if r]
    text = "; ".join(parts) if parts else "no flag (random / diversity pick)"
    return f"Why this frame: {text}" + (f"  (priority {score:.3f})" if score is not None else "")


def build_tasks(
    rows: list[dict[str, Any]],
    logs: DriveLogs,
    campaign: str,
    *,
    publisher: Publisher,
    image_dir: Path,
    model_version: str,
    s3_client: Any = None,
    camera_stream: str | None = None,
) -> tuple[list[dict[str, Any]], list[FrameProblem]]:
    """Label Studio task dicts for ``rows`` (frames of ``logs``) and the frames that failed.
    Pre-annotations are the boxes of the judged camera stream only (``camera_stream``, as
    ``MiningParams.camera_stream``; see :func:`~fleetloop.label.render.prediction_source`)."""
    problems: list[FrameProblem] = []
    frames = {(r["log_id"], r["frame"]): r for r in logs.frames.to_pylist()} if rows else {}
    calib = {r["log_id"]: (r["image_width"], r["image_height"]) for r in logs.calibration.to_pylist()}
    keys = {(r["log_id"], r["frame"]) for r in rows}
    wanted_logs = sorted({k[0] for k in keys})
    sub = logs.select(wanted_logs)
    boxes = group_boxes(sensor_boxes(sub), keys)
    sources = {log_id: prediction_source(sub, log_id, camera_stream) for log_id in wanted_logs}
    pushed_at = datetime.now(UTC).isoformat(timespec="seconds")
    tasks: list[dict[str, Any]] = []
    for row in rows:
        log_id, frame = row["log_id"], row["frame"]
        info = frames.get((log_id, frame))
        if info is None:
            problems.append(
                FrameProblem(
                    log_id=log_id,
                    frame=frame,
                    stage="selection",
                    message=f"frame {frame} of log {log_id} is not in the logs given",
                )
            )
            continue
        width, height = calib.get(log_id, (0, 0))
        key = task_key(campaign, log_id, frame)
        by_sensor = boxes[(log_id, frame)]
        name = f"{campaign}/{log_id}/{frame:06d}"
        rendered = info.get("image_uri") is None
        try:
            if rendered:
                if not width or not height:
                    raise ImageProblem(f"log {log_id} has no calibration (image size) to render at")
                img = render_frame(by_sensor, width, height, caption=f"log {log_id} frame {frame}")
                path = save_png(img, image_dir / f"{name}.png")
                url = publisher.publish(path, f"{name}.png")
            else:
                url, w, h = resolve_image(info["image_uri"], publisher, name, s3_client=s3_client)
                width, height = (w, h) if w and h else (width, height)
                if not width or not height:
                    raise ImageProblem(f"image {info['image_uri']}: size unknown (no calibration for log {log_id})")
        except ImageProblem as exc:
            problems.append(FrameProblem(log_id=log_id, frame=frame, stage="image", message=str(exc)))
            continue
        except (OSError, ValueError) as exc:
            problems.append(
                FrameProblem(
                    log_id=log_id, frame=frame, stage="render", message=f"could not make the task image: {exc}"
                )
            )
            continue
        source = sources.get(log_id)
        regions, scores = [], []
        for i, b in enumerate(by_sensor.get(source, []) if source else []):
            if b["cls"] not in CLASSES:
                continue
            if min(b["x2"], width) - max(b["x1"], 0) < 1 or min(b["y2"], height) - max(b["y1"], 0) < 1:
                continue  # outside the image once clipped
            regions.append(
                box_to_result(
                    b["cls"],
                    b["x1"],
                    b["y1"],
                    b["x2"],
                    b["y2"],
                    width,
                    height,
                    score=b.get("score"),
                    region_id=f"{source}-{i}",
                )
            )
            if b.get("score") is not None:
                scores.append(float(b["score"]))
        banner = (
            f"RENDERED from sensor boxes (no camera image) - log {log_id}, frame {frame}"
            if rendered
            else f"log {log_id}, frame {frame}"
        )
        data = {
            "image": url,
            "fleetloop_key": key,
            "campaign": campaign,
            "log_id": log_id,
            "frame": frame,
            "mining_score": row.get("score"),
            "reasons": row["reasons"],
            "reason_list": [r for r in row["reasons"].split(";") if r],
            "why": _why(row["reasons"], row.get("score")),
            "banner": banner,
            "rendered": rendered,
            "image_width": int(width),
            "image_height": int(height),
            "prediction_source": source,
            "pushed_at": pushed_at,
            **{k: info.get(k) for k in ("vehicle", "weather", "time_of_day", "place")},
        }
        data.update({k: v for k, v in row.items() if k not in data and k not in SELECTION_COLUMNS})
        prediction = {
            "model_version": model_version,
            "result": regions,
            "score": (sum(scores) / len(scores)) if scores else None,
        }
        tasks.append({"data": data, "predictions": [prediction]})
    return tasks, problems


def existing_keys(client: LabelStudioClient, project_id: int, page_size: int = 500) -> dict[str, int]:
    """``fleetloop_key -> task id`` of the project's tasks, paged by id."""
    keys: dict[str, int] = {}
    for page in client.iter_tasks(project_id, page_size=page_size, fields="task_only"):
        for t in page:
            k = (t.get("data") or {}).get("fleetloop_key")
            if k:
                keys.setdefault(k, t["id"])
    return keys


def default_publisher(
    client: LabelStudioClient, home: Path, campaign: camp.Campaign, document_root: Path | None, store: Store | None
) -> tuple[Publisher, Path]:
    """Label Studio's local-files serving when it has a document root on this machine (the local
    server), else the object store with presigned URLs."""
    home = Path(home).resolve()
    image_dir = home / "labeling" / "images"
    if document_root is not None:  # served files must live under the document root
        image_dir = Path(document_root).resolve() / "labeling" / "images"
        camp.ensure_local_files_storage(client, campaign, image_dir / campaign.name)
        return LocalFilesPublisher(Path(document_root), image_dir), image_dir
    if store is None:
        raise ValueError("task images need Label Studio's local-files document root or an object store to publish to")
    from fleetloop.label.images import StorePublisher

    return StorePublisher(store, LABELING_IMAGES), image_dir


def push(
    rows: list[dict[str, Any]],
    logs: DriveLogs,
    campaign: str,
    *,
    client: LabelStudioClient,
    home: Path,
    document_root: Path | None = None,
    store: Store | None = None,
    model_version: str = "fleetloop-mined",
    batch_size: int = 200,
    publisher: Publisher | None = None,
    image_dir: Path | None = None,
    s3_client: Any = None,
    lock_timeout: float = 600.0,
    camera_stream: str | None = None,
    on_campaign: Callable[[camp.Campaign], object] | None = None,
) -> PushReport:
    """Create the tasks of the selected frames that the campaign does not have yet
    (pre-annotations: the judged camera stream's boxes, ``camera_stream`` as the miner's).
    ``on_campaign`` is called once the campaign's project exists (found or created), before any
    task is imported (the API records the campaign in the index there)."""
    t0 = time.perf_counter()
    camp.check_name(campaign)
    with file_lock(lock_path(home, "push", campaign), timeout=lock_timeout):
        c = camp.ensure_campaign(client, campaign)
        if on_campaign is not None:
            on_campaign(c)
        if publisher is None:
            publisher, image_dir = default_publisher(client, home, c, document_root, store)
        image_dir = Path(image_dir or Path(home).resolve() / "labeling" / "images")
        have = existing_keys(client, c.project_id)
        seen: set[str] = set()
        todo: list[dict[str, Any]] = []
        present = 0
        for r in rows:
            k = task_key(campaign, r["log_id"], r["frame"])
            if k in seen:
                continue
            seen.add(k)
            if k in have:
                present += 1
            else:
                todo.append(r)
        report = PushReport(
            campaign=campaign,
            project_id=c.project_id,
            model_version=model_version,
            selected=len(seen),
            created=0,
            already_present=present,
        )
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            t1 = time.perf_counter()
            tasks, problems = build_tasks(
                batch,
                logs,
                campaign,
                publisher=publisher,
                image_dir=image_dir,
                model_version=model_version,
                s3_client=s3_client,
                camera_stream=camera_stream,
            )
            report.build_seconds += time.perf_counter() - t1
            report.problems.extend(problems)
            if not tasks:
                continue
            t1 = time.perf_counter()
            body = client.request(
                "POST", f"/api/projects/{c.project_id}/import", params={"return_task_ids": "true"}, json=tasks
            )
            report.import_seconds += time.perf_counter() - t1
            report.requests += 1
            ids = list(body.get("task_ids") or [])
            report.task_ids.extend(ids)
            report.created += int(body.get("task_count", len(ids)))
        if report.created or have:
            camp.select_model_version(client, c, model_version)
    report.seconds = round(time.perf_counter() - t0, 3)
    report.build_seconds, report.import_seconds = round(report.build_seconds, 3), round(report.import_seconds, 3)
    return report


def load_logs_for(rows: list[dict[str, Any]], store: Store) -> DriveLogs:
    """The logs the selection names, from the store."""
    from fleetloop.store.logs import LogNotFoundError, get_log

    parts, missing = [], []
    for log_id in sorted({r["log_id"] for r in rows}):
        try:
            parts.append(get_log(store, log_id))
        except LogNotFoundError:
            missing.append(log_id)
    if missing:
        hint = (" (log ids are text: did a spreadsheet turn '0001' into '1'?)"
                if any(m.isdigit() and not m.startswith("0") for m in missing) else "")
        shown = ", ".join(map(repr, missing[:10])) + (f", ... ({len(missing)} logs)" if len(missing) > 10 else "")
        raise SelectionError(f"the selection names logs that are not in {store.location}: {shown}{hint}")
    return DriveLogs.concat(parts)


__all__ = [
    "FrameProblem",
    "PushReport",
    "SelectionError",
    "build_tasks",
    "decode_selection",
    "existing_keys",
    "load_logs_for",
    "push",
    "read_selection",
    "read_selection_text",
    "task_key",
]
