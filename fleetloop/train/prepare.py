"""The ``prepare`` stage: a checked-out dataset version → prepared split files.

Input: the dataset as DVC imports it (``data/dataset/``: the version's growth batches), folded
so each (log, frame) appears once with its newest labels (:func:`fleetloop.dataset.batches.materialize`),
and optionally scenario sets (``scenarios/*.parquet``: frames already in the prepared layout, with
ground truth carrying attributes such as ``attr="green"``; the embedded default's fixed
evaluation scenarios). Output: ``<out>/train.parquet``, ``val.parquet``, ``test.parquet`` and,
when there are scenarios, ``scenarios.parquet``, each in :data:`fleetloop.train.metrics.PREPARED_SCHEMA`
(the trainer contract, docs/training.md). Frames without an image are left out and counted.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from fleetloop.dataset.batches import materialize
from fleetloop.train.metrics import PREPARED_SCHEMA

SPLITS = ("train", "val", "test")


class PrepareError(ValueError):
    """The dataset cannot be prepared (no batches, unreadable files)."""


class PrepareReport(BaseModel):
    frames: dict[str, int] = Field(default_factory=dict)  # per split (and "scenarios")
    objects: dict[str, int] = Field(default_factory=dict)
    without_image: int = 0
    without_image_by_split: dict[str, int] = Field(default_factory=dict)


def _check_trainable(with_image: pa.Table, report: PrepareReport) -> None:
    """:class:`PrepareError` before anything is written when the train split has frames but none
    with an image (e.g. logs ingested from KITTI labels without their camera images): the
    prepared splits are camera frames, a trainer could only fail on an empty train split."""
    dropped = report.without_image_by_split.get("train", 0)
    if dropped and not pc.any(pc.equal(with_image["split"], "train")).as_py():
        raise PrepareError(
            f"no frame of the train split has an image ({dropped} frames without an image, "
            f"{report.without_image} in all splits): the trainer needs camera images, and logs that carry "
            "none (e.g. imported from KITTI labels) cannot train it; grow the dataset with logs that have images"
        )


def _boxes_by_frame(labels: pa.Table) -> dict[tuple[str, int], list[dict]]:
    out: dict[tuple[str, int], list[dict]] = {}
    cols = labels.select(["log_id", "frame", "cls", "x1", "y1", "x2", "y2"]).to_pydict()
    for i in range(labels.num_rows):
        key = (cols["log_id"][i], int(cols["frame"][i]))
        out.setdefault(key, []).append({"cls": cols["cls"][i], "x1": cols["x1"][i], "y1": cols["y1"][i],
                                        "x2": cols["x2"][i], "y2": cols["y2"][i], "attr": None})
    return out


def prepare(dataset_dir: Path, out_dir: Path, scenarios_dir: Path | None = None) -> PrepareReport:
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if not dataset_dir.is_dir():
        raise PrepareError(f"no dataset at {dataset_dir} (dvc import the dataset first)")
    frames, labels = materialize(dataset_dir, images=True)
    if frames.num_rows == 0:
        raise PrepareError(f"the dataset at {dataset_dir} holds no labeled frames")
    report = PrepareReport()
    has_image = pc.is_valid(frames["image_png"])
    report.without_image = frames.num_rows - int(pc.sum(has_image).as_py() or 0)
    missing = frames.filter(pc.invert(has_image))["split"].to_pylist()
    report.without_image_by_split = {split: missing.count(split) for split in SPLITS if split in missing}
    frames = frames.filter(has_image)
    _check_trainable(frames, report)
    boxes = _boxes_by_frame(labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        part = frames.filter(pc.equal(frames["split"], split))
        keys = zip(part["log_id"].to_pylist(), part["frame"].to_pylist(), strict=True)
        split_boxes = [boxes.get((log_id, int(frame)), []) for log_id, frame in keys]
        table = pa.table({
            "log_id": part["log_id"], "frame": pc.cast(part["frame"], pa.int64()), "image_png": part["image_png"],
            "width": part["width"], "height": part["height"], "weather": part["weather"],
            "time_of_day": part["time_of_day"], "boxes": pa.array(split_boxes, PREPARED_SCHEMA.field("boxes").type),
        }, schema=PREPARED_SCHEMA)
        pq.write_table(table, out_dir / f"{split}.parquet")
        report.frames[split] = table.num_rows
        report.objects[split] = sum(len(b) for b in split_boxes)
    if scenarios_dir is not None and Path(scenarios_dir).is_dir():
        parts = [pq.read_table(p).select(PREPARED_SCHEMA.names).cast(PREPARED_SCHEMA)
                 for p in sorted(Path(scenarios_dir).glob("*.parquet"))]
        if parts:
            table = pa.concat_tables(parts)
            pq.write_table(table, out_dir / "scenarios.parquet")
            report.frames["scenarios"] = table.num_rows
            report.objects["scenarios"] = sum(len(b or []) for b in table["boxes"].to_pylist())
    return report
