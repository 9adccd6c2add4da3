"""The manifest of a dataset version (``manifest.json``, tracked by git) and its lineage files.

``manifest.json`` describes the version a commit holds: its number and tag, when it was made, the
split ratios, counts (frames, objects, per split, per class, per slice: ``weather=…``,
``time_of_day=…``, ``class=…``, ``rare``), every batch it holds with that batch's lineage
(the label shards it consumed, their campaigns, mining runs when known, its counts) and the
history of versions up to it. ``lineage/bNNNNN.json`` keeps the full detail of one batch (what was
left out and why). Counts are computed from the per-frame index (no images read), so growing
costs in proportion to the batch, not the dataset.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from fleetloop.dataset.splits import SPLITS
from fleetloop.schema import CLASSES

__all__ = [
    "SPLIT_RULE",
    "BatchInfo",
    "Count",
    "Lineage",
    "Manifest",
    "SplitCount",
    "VersionInfo",
    "compute_counts",
    "tag_of",
]

MANIFEST_FILE = "manifest.json"
LINEAGE_DIR = "lineage"
TAG_PREFIX = "dataset-v"
SPLIT_RULE = "sha256(log_id)[:8] / 2**64 in cumulative [train, val, test] ratios"


def tag_of(version: int) -> str:
    return f"{TAG_PREFIX}{version}"


class Count(BaseModel):
    frames: int = 0
    objects: int = 0


class SplitCount(Count):
    logs: int = 0


class BatchInfo(BaseModel):
    """One growth batch, as the manifest lists it."""

    batch: int
    path: str  # data/batches/bNNNNN
    version: int  # the version that added it
    created_at: datetime
    label_shards: list[str]  # store keys of the label shards it consumed
    campaigns: list[str]
    mining_runs: list[str] = Field(default_factory=list)  # [] when unknown (tasks carry no run key today)
    frames: int = 0  # frame rows in the batch: labeled + empty + unusable
    objects: int = 0  # label rows in the batch
    negatives: int = 0  # frames verified to hold no object
    removed: int = 0  # frames marked unusable, removing their earlier labels
    superseded: int = 0  # frames whose earlier labels this batch replaces
    files: list[str] = Field(default_factory=list)  # the Parquet shards in the folder


class VersionInfo(BaseModel):
    """One line of ``dataset history``."""

    version: int
    tag: str
    frames: int
    objects: int
    batches: int  # batches the version holds
    campaigns: list[str]  # campaigns whose labels this version added
    created_at: datetime


class Manifest(BaseModel):
    """``manifest.json`` of one dataset version."""

    format: int = 1
    version: int
    tag: str
    created_at: datetime
    split_ratios: dict[str, float]
    split_rule: str = SPLIT_RULE
    frames: int = 0
    objects: int = 0
    logs: int = 0
    splits: dict[str, SplitCount] = Field(default_factory=dict)
    classes: dict[str, Count] = Field(default_factory=dict)
    slices: dict[str, Count] = Field(default_factory=dict)
    rare_classes: list[str] = Field(default_factory=list)
    rare_share: float = 0.05
    batches: list[BatchInfo] = Field(default_factory=list)
    history: list[VersionInfo] = Field(default_factory=list)

    def consumed_shards(self) -> set[str]:
        return {key for b in self.batches for key in b.label_shards}

    def info(self) -> VersionInfo:
        return VersionInfo(
            version=self.version, tag=self.tag, frames=self.frames, objects=self.objects,
            batches=len(self.batches), campaigns=self.batches[-1].campaigns if self.batches else [],
            created_at=self.created_at,
        )


class Problem(BaseModel):
    """Something a grow left out or could not fill in (one annotation or frame)."""

    kind: str  # invalid_labels | stale | unusable_unknown | missing_image | unknown_frame | unreadable_shard
    message: str
    log_id: str | None = None
    frame: int | None = None
    campaign: str | None = None
    annotation_id: int | None = None
    revision: int | None = None
    shard: str | None = None


class Lineage(BaseModel):
    """``lineage/bNNNNN.json``: where one batch came from and what was left out."""

    batch: int
    version: int
    created_at: datetime
    label_shards: dict[str, int]  # shard key -> deliveries (annotation revisions) it holds
    campaigns: list[str]
    mining_runs: list[str] = Field(default_factory=list)
    deliveries: int = 0  # annotation revisions read from the shards
    frames: int = 0
    objects: int = 0
    negatives: int = 0
    removed: int = 0
    superseded: int = 0
    split_ratios: dict[str, float]
    with_images: bool = True
    problems: list[Problem] = Field(default_factory=list)
    problems_total: dict[str, int] = Field(default_factory=dict)  # kind -> count (problems may be capped)


def _np(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return col.to_numpy(zero_copy_only=False) if isinstance(col, pa.Array) else col.combine_chunks().to_numpy(
        zero_copy_only=False)


def compute_counts(index: pa.Table, rare_share: float) -> dict:
    """Counts of a version from its folded per-frame index (``batches.INDEX_SCHEMA``):
    ``frames, objects, logs, splits, classes, slices, rare_classes`` (unusable frames excluded).
    A class is *rare* when it holds less than ``rare_share`` of the version's objects."""
    if index.num_rows:
        index = index.filter(pc.not_equal(index["status"], "unusable"))
    n = index.num_rows
    per_class = {c: _np(index[f"n_{c}"]).astype(np.int64) if n else np.zeros(0, np.int64) for c in CLASSES}
    objects = sum(per_class.values(), np.zeros(n, np.int64))
    log_ids = index["log_id"].combine_chunks() if n else pa.array([], pa.string())
    split = _np(index["split"]).astype(object) if n else np.zeros(0, object)
    splits = {}
    for s in SPLITS:
        m = split == s
        logs = len(pc.unique(log_ids.filter(pa.array(m)))) if n else 0
        splits[s] = SplitCount(frames=int(m.sum()), objects=int(objects[m].sum()), logs=logs)
    classes = {c: Count(frames=int((v > 0).sum()), objects=int(v.sum())) for c, v in per_class.items()}
    total = int(objects.sum())
    rare = sorted(c for c, k in classes.items() if k.objects and k.objects < rare_share * total)
    slices: dict[str, Count] = {}
    for attr in ("weather", "time_of_day"):
        values = np.array(["unknown" if v is None else v for v in index[attr].to_pylist()], object) if n \
            else np.zeros(0, object)
        for v in sorted(set(values.tolist())):
            m = values == v
            slices[f"{attr}={v}"] = Count(frames=int(m.sum()), objects=int(objects[m].sum()))
    for c, k in classes.items():
        slices[f"class={c}"] = k
    rare_objects = sum((per_class[c] for c in rare), np.zeros(n, np.int64))
    slices["rare"] = Count(frames=int((rare_objects > 0).sum()), objects=int(rare_objects.sum()))
    return {
        "frames": n,
        "objects": total,
        "logs": len(pc.unique(log_ids)) if n else 0,
        "splits": splits,
        "classes": classes,
        "slices": slices,
        "rare_classes": rare,
    }
