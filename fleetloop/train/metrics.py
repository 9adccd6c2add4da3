"""Detection metrics of the camera model: mAP at IoU 0.5 (COCO-style), overall, per class, per slice.

The prepared split tables (``PREPARED_SCHEMA``: one row per frame with its PNG and its ground-truth
boxes) are what the trainer reads and what :func:`evaluate` scores predictions against;
``PREDICTIONS_SCHEMA`` is one row per predicted box. Both sides import the schemas from here.

Matching rules (pycocotools' ``COCOeval`` with ``iouThrs = [0.5]``, one area range covering all
sizes, at most ``MAX_DETS`` detections per frame and class, highest scores first):

* A frame is keyed by ``(log_id, frame)``. Predictions for frames not in the table and predictions
  of classes outside :data:`fleetloop.schema.CLASSES` are dropped; so are ground-truth boxes of
  other classes and ground-truth boxes with a null or non-finite coordinate or no area
  (``x2 <= x1`` or ``y2 <= y1``). A prediction with a null field or a missing column is an error
  (``ValueError`` naming the column).
* Per class, detections are taken in descending score; each matches the unmatched ground-truth
  box of its class with the highest IoU, if that IoU is >= 0.5 (greedy, COCO). A match is a true
  positive, anything else a false positive; unmatched ground truth are misses.
* AP of a class = COCO's 101-point interpolated area under its precision/recall curve. A class
  with no ground truth in the evaluated frames has no AP (it is not 0) and is left out of means;
  a class with ground truth but no detections has AP 0.
* ``map50`` = the mean AP over the classes that have ground truth in the evaluated frames, or
  ``None`` (JSON null) when there is none; ``support`` = the number of ground-truth objects counted.
* Slices: ``weather=<v>`` and ``time_of_day=<v>`` restrict the frames (every distinct non-null
  value); ``class=<c>`` restricts the class (its ``frames`` = frames with at least one box of it);
  ``attr=<a>`` (every distinct non-null box ``attr``) evaluates only the classes that carry the
  attribute, on all frames: their boxes WITH the attribute are the ground truth, their boxes
  WITHOUT it are "ignore" regions (COCO crowd boxes: a detection overlapping one by at least 0.5
  of the detection's own area, and matching no real box, counts neither as hit nor as false
  positive). Its ``support`` is the number of boxes with the attribute, its ``frames`` the frames
  holding one.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from fleetloop.schema import CLASSES

#: Most detections per frame (and class) that count, as COCO's largest ``maxDets``.
MAX_DETS = 100

BOX_TYPE = pa.struct(
    [
        pa.field("cls", pa.string()),
        pa.field("x1", pa.float32()),
        pa.field("y1", pa.float32()),
        pa.field("x2", pa.float32()),
        pa.field("y2", pa.float32()),
        pa.field("attr", pa.string()),  # nullable, e.g. "green"
    ]
)

#: One row per frame of a prepared split (``train.parquet``, ``val.parquet``, ``test.parquet``).
#: Boxes are camera image pixels, (x1, y1) top-left, (x2, y2) bottom-right, origin top-left.
PREPARED_SCHEMA = pa.schema(
    [
        pa.field("log_id", pa.string()),
        pa.field("frame", pa.int64()),
        pa.field("image_png", pa.binary()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("weather", pa.string()),
        pa.field("time_of_day", pa.string()),
        pa.field("boxes", pa.list_(BOX_TYPE)),
    ]
)

#: One row per predicted box (image pixels as above).
PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("log_id", pa.string()),
        pa.field("frame", pa.int64()),
        pa.field("cls", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("x1", pa.float32()),
        pa.field("y1", pa.float32()),
        pa.field("x2", pa.float32()),
        pa.field("y2", pa.float32()),
    ]
)


class Score(BaseModel):
    """AP at IoU 0.5 of one class and its number of ground-truth objects."""

    map50: float | None
    support: int


class SliceScore(BaseModel):
    """mAP at IoU 0.5 over a subset, its ground-truth objects and frames."""

    map50: float | None
    support: int
    frames: int


class Metrics(BaseModel):
    """The metrics file: ``model_dump()`` is the JSON layout documented in the module docstring."""

    primary: Literal["map50"] = "map50"
    overall: SliceScore
    per_class: dict[str, Score]
    slices: dict[str, SliceScore]


# --------------------------------------------------------------------------------------------
# building the COCO inputs


@dataclass(frozen=True)
class _Gt:
    """Flattened ground truth: one entry per box of a known class."""

    image: np.ndarray  # int64 image id (1-based row of the frames table)
    cat: np.ndarray  # int64 category id (1-based index into CLASSES)
    xywh: np.ndarray  # float64 (n, 4)
    attr: list[str | None]


_CAT_ID = {c: i + 1 for i, c in enumerate(CLASSES)}


def _frame_keys(frames: pa.Table) -> dict[tuple[str, int], int]:
    logs = frames.column("log_id").to_pylist()
    nums = frames.column("frame").to_pylist()
    return {(str(log), int(n)): i + 1 for i, (log, n) in enumerate(zip(logs, nums, strict=True))}


def _flatten_gt(frames: pa.Table) -> _Gt:
    image: list[int] = []
    cat: list[int] = []
    xywh: list[tuple[float, float, float, float]] = []
    attr: list[str | None] = []
    for row, boxes in enumerate(frames.column("boxes").to_pylist()):
        for b in boxes or []:
            cid = _CAT_ID.get(b["cls"])
            if cid is None or not _has_area(b):
                continue
            image.append(row + 1)
            cat.append(cid)
            xywh.append((b["x1"], b["y1"], b["x2"] - b["x1"], b["y2"] - b["y1"]))
            attr.append(b.get("attr"))
    return _Gt(
        image=np.asarray(image, np.int64),
        cat=np.asarray(cat, np.int64),
        xywh=np.asarray(xywh, np.float64).reshape(-1, 4),
        attr=attr,
    )


def _has_area(box: dict[str, Any]) -> bool:
    coords = [box.get(k) for k in ("x1", "y1", "x2", "y2")]
    if any(v is None or not np.isfinite(v) for v in coords):
        return False
    x1, y1, x2, y2 = (float(v) for v in coords)  # type: ignore[arg-type]
    return x2 > x1 and y2 > y1


def _detections(frames: pa.Table, predictions: pa.Table) -> list[dict[str, Any]]:
    """Predictions as COCO result dicts, dropping unknown frames and classes."""
    keys = _frame_keys(frames)
    names = PREDICTIONS_SCHEMA.names
    missing = [n for n in names if n not in predictions.column_names]
    if missing:
        raise ValueError(f"predictions: missing column(s) {', '.join(missing)} (expected {', '.join(names)})")
    nulls = {n: predictions.column(n).null_count for n in names if predictions.column(n).null_count}
    if nulls:
        raise ValueError("predictions: null values in " + ", ".join(f"{n} ({k} rows)" for n, k in nulls.items()))
    cols = [predictions.column(name).to_pylist() for name in names]
    out: list[dict[str, Any]] = []
    for log, num, cls, score, x1, y1, x2, y2 in zip(*cols, strict=True):
        img = keys.get((str(log), int(num)))
        cid = _CAT_ID.get(cls)
        if img is not None and cid is not None:
            out.append({"image_id": img, "category_id": cid, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return out


def _coco_gt(n_images: int, gt: _Gt, crowd: np.ndarray | None = None) -> Any:
    from pycocotools.coco import COCO

    crowd = np.zeros(len(gt.cat), bool) if crowd is None else crowd
    anns = [
        {"id": j + 1, "image_id": int(gt.image[j]), "category_id": int(gt.cat[j]),
         "bbox": [float(v) for v in gt.xywh[j]], "area": float(gt.xywh[j, 2] * gt.xywh[j, 3]),
         "iscrowd": int(crowd[j])}
        for j in range(len(gt.cat))
    ]
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i} for i in range(1, n_images + 1)],
        "categories": [{"id": cid, "name": c} for c, cid in _CAT_ID.items()],
        "annotations": anns,
    }
    coco.createIndex()
    return coco


def _coco_dt(coco_gt: Any, dets: list[dict[str, Any]]) -> Any:
    from pycocotools.coco import COCO

    if dets:
        return coco_gt.loadRes([dict(d) for d in dets])  # loadRes adds keys to each dict, not to bbox
    empty = COCO()  # loadRes cannot take an empty list
    empty.dataset = {"images": list(coco_gt.dataset["images"]),
                     "categories": list(coco_gt.dataset["categories"]), "annotations": []}
    empty.createIndex()
    return empty


def _run_eval(coco_gt: Any, coco_dt: Any, cat_ids: Sequence[int]) -> Any:
    """Per-image evaluation at IoU 0.5 of ``cat_ids`` over all images (not yet accumulated)."""
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
    ev.params.iouThrs = np.array([0.5])
    ev.params.areaRng = [[0.0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.params.maxDets = [MAX_DETS]
    ev.params.catIds = sorted(cat_ids)
    ev.evaluate()
    return ev


def _ap_per_class(ev: Any, img_ids: Iterable[int], cat_ids: Sequence[int]) -> dict[int, float | None]:
    """AP of each of ``cat_ids`` over ``img_ids``, reusing the evaluated images of ``ev``.

    ``COCOeval.accumulate(p)`` indexes a restricted parameter set incorrectly, so the subset is
    made by copying the per-image results into a fresh evaluator whose parameters are the subset.
    """
    pe = ev._paramsEval
    img_index = {img: n for n, img in enumerate(pe.imgIds)}
    cat_index = {cat: n for n, cat in enumerate(pe.catIds)}
    imgs = sorted(set(img_ids))
    cats = sorted(cat_ids)
    n_img = len(pe.imgIds)
    sub = copy.copy(ev)
    sub.params = copy.deepcopy(pe)
    sub.params.imgIds = imgs
    sub.params.catIds = cats
    sub._paramsEval = copy.deepcopy(sub.params)
    sub.evalImgs = [ev.evalImgs[cat_index[c] * n_img + img_index[i]] for c in cats for i in imgs]
    sub.accumulate()
    precision = sub.eval["precision"]  # (T=1, R=101, K, A=1, M=1)
    out: dict[int, float | None] = {}
    for k, cat in enumerate(cats):
        p = precision[0, :, k, 0, -1]
        out[cat] = float(np.mean(p)) if (p > -1).any() else None
    return out


def _mean(aps: Iterable[float | None]) -> float | None:
    vals = [a for a in aps if a is not None]
    return float(np.mean(vals)) if vals else None


# --------------------------------------------------------------------------------------------
# evaluation


def _distinct(values: Iterable[Any]) -> list[str]:
    return sorted({str(v) for v in values if v is not None})


def _frame_slices(frames: pa.Table, gt: _Gt, ev: Any, all_cats: list[int]) -> dict[str, SliceScore]:
    out: dict[str, SliceScore] = {}
    for column in ("weather", "time_of_day"):
        if column not in frames.column_names:
            continue
        values = frames.column(column).to_pylist()
        for value in _distinct(values):
            imgs = [i + 1 for i, v in enumerate(values) if v is not None and str(v) == value]
            support = int(np.isin(gt.image, imgs).sum())
            aps = _ap_per_class(ev, imgs, all_cats) if imgs else {}
            out[f"{column}={value}"] = SliceScore(map50=_mean(aps.values()), support=support,
                                                  frames=len(imgs))
    return out


def _attr_slices(n_images: int, gt: _Gt, dets: list[dict[str, Any]]) -> dict[str, SliceScore]:
    out: dict[str, SliceScore] = {}
    attrs = np.asarray([a if a is not None else "" for a in gt.attr], dtype=object)
    for value in _distinct(gt.attr):
        has = attrs == value
        cats = sorted({int(c) for c in gt.cat[has]})
        crowd = np.isin(gt.cat, cats) & ~has
        coco_gt = _coco_gt(n_images, gt, crowd)
        ev = _run_eval(coco_gt, _coco_dt(coco_gt, [d for d in dets if d["category_id"] in cats]), cats)
        aps = _ap_per_class(ev, range(1, n_images + 1), cats)
        out[f"attr={value}"] = SliceScore(map50=_mean(aps.values()), support=int(has.sum()),
                                          frames=len(set(gt.image[has].tolist())))
    return out


@contextlib.contextmanager
def _quiet() -> Any:
    """pycocotools prints progress on stdout: swallow it."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _empty_metrics(n_frames: int) -> Metrics:
    per_class = {c: Score(map50=None, support=0) for c in CLASSES}
    slices = {f"class={c}": SliceScore(map50=None, support=0, frames=0) for c in CLASSES}
    return Metrics(overall=SliceScore(map50=None, support=0, frames=n_frames), per_class=per_class,
                   slices=slices)


def evaluate(frames: pa.Table, predictions: pa.Table) -> Metrics:
    """Score ``predictions`` (``PREDICTIONS_SCHEMA``) against ``frames`` (``PREPARED_SCHEMA``).

    Only the columns ``log_id``, ``frame``, ``boxes`` (and ``weather``/``time_of_day`` for those
    slices) of ``frames`` are read. See the module docstring for the matching rules.
    """
    with _quiet():
        return _evaluate(frames, predictions)


def _evaluate(frames: pa.Table, predictions: pa.Table) -> Metrics:
    n_images = frames.num_rows
    gt = _flatten_gt(frames)
    if n_images == 0:
        return _empty_metrics(0)
    dets = _detections(frames, predictions)
    all_cats = list(_CAT_ID.values())
    coco_gt = _coco_gt(n_images, gt)
    ev = _run_eval(coco_gt, _coco_dt(coco_gt, dets), all_cats)
    aps = _ap_per_class(ev, range(1, n_images + 1), all_cats)
    per_class: dict[str, Score] = {}
    slices: dict[str, SliceScore] = _frame_slices(frames, gt, ev, all_cats)
    for c, cid in _CAT_ID.items():
        support = int((gt.cat == cid).sum())
        per_class[c] = Score(map50=aps[cid], support=support)
        slices[f"class={c}"] = SliceScore(map50=aps[cid], support=support,
                                          frames=len(set(gt.image[gt.cat == cid].tolist())))
    slices.update(_attr_slices(n_images, gt, dets))
    overall = SliceScore(map50=_mean(aps.values()), support=len(gt.cat), frames=n_images)
    return Metrics(overall=overall, per_class=per_class, slices=slices)


def write_metrics(metrics: Metrics, path: str | Path) -> Path:
    """Write ``metrics`` as indented JSON (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics.model_dump(), indent=2) + "\n")
    return path


def read_metrics(path: str | Path) -> Metrics:
    """Read a metrics file written by :func:`write_metrics`."""
    return Metrics.model_validate_json(Path(path).read_text())
