"""Mining that learns from the labels the loop brings back: before the weekly cycle mines, refit
each flag's severity per class on the newest dataset version (:func:`fleetloop.mine.calibrate.calibrate`).

    out = recalibrate(store, dataset_config(settings), loop.mine)
    out.params        # the mining params to mine with: fitted class_severities (or the input, unchanged)
    out.table         # reason, class, flagged, errors, precision, prior, severity, fitted

The labelled frames are the dataset's (every split: calibration judges the *miner*, not the model,
so using the test split's labels here leaks nothing into the model's evaluation). Their perception
outputs are read back from the store (a log no longer in the store is left out and named). The
dataset's labels are image boxes, all "care": the lidar is judged by the 2D IoU of its projected
boxes (the matching rules of :mod:`fleetloop.mine.calibrate`). The input params' own
``class_severities`` are replaced by the fit; a pair flagged too rarely keeps its default. When
nothing is fitted (no labelled frame, no log in the store, no pair flagged often enough or stable),
``out.params`` is the input, unchanged (its own ``class_severities`` too), and ``out.reason`` says why.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from fleetloop.dataset.batches import batch_dirs, materialize
from fleetloop.dataset.config import DatasetConfig
from fleetloop.dataset.dvc import Repo
from fleetloop.dataset.growth import read_manifest
from fleetloop.dataset.versions import checkout, latest_manifest
from fleetloop.mine.calibrate import calibrate
from fleetloop.mine.params import MiningParams
from fleetloop.schema import DriveLogs
from fleetloop.store.logs import LogIntegrityError, LogNotFoundError, get_log
from fleetloop.store.objects import Store


class Recalibration(BaseModel):
    """What the weekly cycle mines with, and why."""

    params: MiningParams
    fitted: bool  # False: the input params, unchanged (``reason`` says why)
    reason: str
    dataset_version: int = 0
    labelled_frames: int = 0
    logs: int = 0
    missing_logs: list[str] = Field(default_factory=list)
    table: list[dict[str, object]] = Field(default_factory=list)  # one row per flagged (reason, class)
    errors: dict[str, int] = Field(default_factory=dict)  # error totals on the labelled frames


def _version_labels(config: DatasetConfig, version: int) -> tuple[pa.Table, pa.Table]:
    """``(frames, labels)`` of ``version``: from the working repository when its checkout is that
    version with its data present, else from a fresh checkout (git remote + DVC remote)."""
    repo = Repo(config.repo_dir, config)
    head = read_manifest(repo) if repo.exists() else None
    if head is not None and head.version == version and batch_dirs(Path(config.repo_dir)):
        return materialize(Path(config.repo_dir), images=False)
    with tempfile.TemporaryDirectory(prefix="fleetloop-calibrate-") as tmp:
        checkout(version, Path(tmp) / "data", config)
        return materialize(Path(tmp) / "data", images=False)


def recalibrate(store: Store, config: DatasetConfig, params: MiningParams) -> Recalibration:
    """Fit ``params``' class severities on the newest dataset version (see module doc)."""
    if not params.recalibrate:
        return Recalibration(params=params, fitted=False, reason="mine.recalibrate is off")
    manifest = latest_manifest(config)
    if manifest is None:
        return Recalibration(params=params, fitted=False, reason="no dataset version yet")
    frames, labels = _version_labels(config, manifest.version)  # labelled or empty; unusable ones left out
    if not frames.num_rows:
        return Recalibration(params=params, fitted=False, dataset_version=manifest.version,
                             reason=f"dataset-v{manifest.version} has no labelled frame; the params stay as they are")
    ids = sorted(set(frames.column("log_id").to_pylist()))
    parts, missing = [], []
    for log_id in ids:
        try:
            parts.append(get_log(store, log_id))
        except (LogNotFoundError, LogIntegrityError):  # gone or damaged: named, not fatal
            missing.append(log_id)
    base = Recalibration(params=params, fitted=False, reason="", dataset_version=manifest.version,
                         labelled_frames=frames.num_rows, logs=len(parts), missing_logs=missing)
    if not parts:
        return base.model_copy(update={"reason": f"dataset-v{manifest.version}: none of its {len(ids)} logs is in the store"})
    logs = DriveLogs.concat(parts)
    present = pc.is_in(frames["log_id"], value_set=pa.array(logs.log_ids))
    labelled = frames.filter(present).select(["log_id", "frame"])
    result = calibrate(logs, labels.select(["log_id", "frame", "cls", "x1", "y1", "x2", "y2"]), params,
                       source=f"dataset-v{manifest.version} ({labelled.num_rows} labelled frames of {len(parts)} logs)",
                       labelled_frames=labelled)
    pairs = sum(len(v) for v in result.params.class_severities.values())
    table = result.table.to_pylist()
    unstable = sum(1 for r in table if r["fitted"] and not r["stable"])
    used = result.params.calibration.labelled_frames if result.params.calibration else 0  # frames the logs have
    if pairs:
        reason = f"{pairs} reason/class severities fitted on {used} labelled frames of dataset-v{manifest.version}"
        reason += f" ({unstable} more left at their defaults: unstable across its logs)" if unstable else ""
    elif unstable:
        reason = (f"dataset-v{manifest.version}: no fitted severity was stable across its {len(parts)} logs "
                  f"({unstable} tried); the params stay as they are")
    else:
        reason = (f"dataset-v{manifest.version}: no flag raised often enough on its {used} labelled frames "
                  "to fit; the params stay as they are")
    if used < labelled.num_rows:
        reason += f"; {labelled.num_rows - used} labelled frames are not in their logs in the store (left out)"
    return base.model_copy(update={
        "params": result.params if pairs else params, "fitted": pairs > 0, "labelled_frames": used, "reason": reason,
        "table": table, "errors": dict(result.truth or {})})
