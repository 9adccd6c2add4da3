"""A simulated labeling team, for the embedded default and tests only.

It answers a campaign's open tasks through the Label Studio API, as a person would through the
UI, from ground truth (e.g. KITTI ``label_02`` via :func:`fleetloop.ingest.importers.kitti.read_kitti_truth`,
or any table with ``log_id, frame, cls, x1, y1, x2, y2``): per task it waits ``latency_s``, then
with probability ``skip_rate`` skips the frame (marks it "frame is unusable", or leaves the task
open), else submits the true boxes with Gaussian pixel jitter ``noise_px``. Every decision is
drawn from a generator seeded by (``seed``, task key), so a run is reproducible whatever the
task order. No production code path imports this module.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

from fleetloop.label import campaigns as camp
from fleetloop.label.client import LabelStudioClient
from fleetloop.label.convert import box_to_result, unusable_result
from fleetloop.schema import CLASSES


class TeamConfig(BaseModel):
    latency_s: float = Field(0.0, ge=0, description="seconds spent per task")
    noise_px: float = Field(0.0, ge=0, description="std-dev of the pixel jitter on each box edge")
    skip_rate: float = Field(0.0, ge=0, le=1, description="share of tasks skipped")
    unusable_share: float = Field(0.5, ge=0, le=1, description="of the skipped: share marked unusable (else left open)")
    seed: int = 0


class Submission(BaseModel):
    task_id: int
    annotation_id: int | None
    log_id: str
    frame: int
    action: str  # labeled | unusable | left
    boxes: list[tuple[str, float, float, float, float]] = Field(default_factory=list)  # pixels, as submitted


class SimulationReport(BaseModel):
    campaign: str
    answered: int = 0
    unusable: int = 0
    left_open: int = 0
    boxes: int = 0
    submissions: list[Submission] = Field(default_factory=list)
    seconds: float = 0.0


def load_truth(path: Path | str) -> pa.Table:
    """Ground truth boxes: a KITTI tracking root (``label_02/``) or a Parquet table."""
    path = Path(path)
    if (path / "label_02").is_dir():
        from fleetloop.ingest.importers.kitti import read_kitti_truth

        return read_kitti_truth(path)
    if path.suffix == ".parquet" and path.is_file():
        import pyarrow.parquet as pq

        return pq.read_table(path)
    raise FileNotFoundError(f"no ground truth at {path}: expected a KITTI root with label_02/ or a .parquet table")


def _truth_index(truth: pa.Table) -> dict[tuple[str, int], list[tuple[str, float, float, float, float]]]:
    idx: dict[tuple[str, int], list[tuple[str, float, float, float, float]]] = {}
    cols = {c: truth[c].to_pylist() for c in ("log_id", "frame", "cls", "x1", "y1", "x2", "y2")}
    for i in range(truth.num_rows):
        cls = cols["cls"][i]
        if cls not in CLASSES:  # DontCare, Misc, Tram... are not labels of the taxonomy
            continue
        idx.setdefault((str(cols["log_id"][i]), int(cols["frame"][i])), []).append(
            (cls, *(float(cols[k][i]) for k in ("x1", "y1", "x2", "y2")))
        )
    return idx


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def answer_task(
    task: dict[str, Any], truth: list[tuple[str, float, float, float, float]], team: TeamConfig
) -> tuple[str, list[tuple[str, float, float, float, float]], list[dict[str, Any]] | None]:
    """What the simulated labeler does with one task: (action, pixel boxes, LS result or None)."""
    data = task["data"]
    width, height = int(data["image_width"]), int(data["image_height"])
    rng = _rng(team.seed, str(data.get("fleetloop_key", task["id"])))
    if rng.random() < team.skip_rate:
        if rng.random() < team.unusable_share:
            return "unusable", [], unusable_result()
        return "left", [], None
    boxes, result = [], []
    for i, (cls, x1, y1, x2, y2) in enumerate(truth):
        jitter = rng.normal(0.0, team.noise_px, 4) if team.noise_px > 0 else np.zeros(4)
        x1, y1, x2, y2 = (float(v) for v in np.array([x1, y1, x2, y2]) + jitter)
        x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
        y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
        if x2 - x1 < 1.0 or y2 - y1 < 1.0:
            continue
        boxes.append((cls, x1, y1, x2, y2))
        result.append(box_to_result(cls, x1, y1, x2, y2, width, height, region_id=f"sim-{i}"))
    return "labeled", boxes, result


def simulate(
    campaign: str,
    truth: pa.Table,
    *,
    client: LabelStudioClient,
    team: TeamConfig | None = None,
    limit: int | None = None,
) -> SimulationReport:
    """Answer the campaign's tasks that have no annotation yet (at most ``limit``)."""
    team = team or TeamConfig()
    t0 = time.perf_counter()
    c = camp.find_campaign(client, campaign)
    if c is None:
        raise camp.CampaignError(f"no campaign {campaign!r} in Label Studio {client.url}")
    index = _truth_index(truth)
    report = SimulationReport(campaign=campaign)
    done = 0
    for page in client.iter_tasks(c.project_id, page_size=100, fields="all"):
        for task in page:
            if limit is not None and done >= limit:
                break
            if (task.get("total_annotations") or 0) > 0 or (task.get("cancelled_annotations") or 0) > 0:
                continue
            data = task.get("data") or {}
            if "log_id" not in data:
                continue
            log_id, frame = str(data["log_id"]), int(data["frame"])
            if team.latency_s:
                time.sleep(team.latency_s)
            action, boxes, result = answer_task(task, index.get((log_id, frame), []), team)
            done += 1
            ann_id = None
            if result is not None:
                body = client.request(
                    "POST",
                    f"/api/tasks/{task['id']}/annotations/",
                    json={"result": result, "lead_time": team.latency_s},
                )
                ann_id = int(body["id"])
            report.submissions.append(
                Submission(
                    task_id=task["id"], annotation_id=ann_id, log_id=log_id, frame=frame, action=action, boxes=boxes
                )
            )
            report.answered += action == "labeled"
            report.unusable += action == "unusable"
            report.left_open += action == "left"
            report.boxes += len(boxes)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def relabel(client: LabelStudioClient, annotation_id: int, result: list[dict[str, Any]]) -> dict[str, Any]:
    """Update an existing annotation (a labeler correcting their work)."""
    return client.request("PATCH", f"/api/annotations/{annotation_id}/", json={"result": result})
