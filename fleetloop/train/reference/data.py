"""Reading prepared split files into arrays, and the CenterNet training targets (numpy only).

A split file is a parquet table in ``fleetloop.train.metrics.PREPARED_SCHEMA``. Images are
decoded once into a uint8 (N, H, W, 3) array; frames of other sizes are padded bottom/right to
the largest (boxes keep their pixel coordinates). Boxes are clipped to their frame; boxes of
classes outside the model's classes, with a null or non-finite coordinate, or with no area inside
the frame (zero or negative size, entirely outside) are skipped and counted.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fleetloop.train.reference.runner import OUTPUT_STRIDE, PAD_VALUE, STRIDE_MULTIPLE

#: Columns a split file must have to be trained on (predicting needs only the first three).
REQUIRED_COLUMNS = ("log_id", "frame", "image_png", "boxes")
#: Most objects per image that get regression targets.
MAX_OBJECTS = 64


class TrainingError(ValueError):
    """Bad input to training or prediction; the message is one line, fit for the CLI."""


@dataclass
class Split:
    """A decoded split: images and boxes (pixels) with class indices."""

    table: pa.Table
    images: np.ndarray  # uint8 (N, H, W, 3)
    boxes: list[np.ndarray]  # per image float32 (k, 4) x1, y1, x2, y2
    labels: list[np.ndarray]  # per image int64 (k,) index into classes
    skipped_boxes: int

    @property
    def n_objects(self) -> int:
        return int(sum(len(b) for b in self.boxes))


def read_split(path: str | Path, *, need_boxes: bool = True) -> pa.Table:
    """The table of a split file; raises TrainingError when it is absent or lacks columns."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"split file not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TrainingError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
    needed = REQUIRED_COLUMNS if need_boxes else REQUIRED_COLUMNS[:3]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise TrainingError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


def read_optional_split(path: str | Path, *, need_boxes: bool = True) -> pa.Table | None:
    """Like :func:`read_split`, but ``None`` when the file is absent."""
    return read_split(path, need_boxes=need_boxes) if Path(path).is_file() else None


def decode_png(data: bytes | None, where: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB pixels of PNG (or any PIL-readable) bytes."""
    if not data:
        raise TrainingError(f"{where}: empty image_png")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for corrupt data
        raise TrainingError(f"{where}: undecodable image_png ({type(exc).__name__})") from exc


def _decode_each(table: pa.Table, name: str) -> list[np.ndarray]:
    logs = table.column("log_id").to_pylist()
    nums = table.column("frame").to_pylist()
    pngs = table.column("image_png").to_pylist()
    return [decode_png(p, f"{name} frame {log}/{num}") for p, log, num in zip(pngs, logs, nums, strict=True)]


def decode_images(table: pa.Table, name: str = "split") -> np.ndarray:
    """All frames' images stacked into uint8 (N, H, W, 3), padded to the largest frame."""
    return _stack(_decode_each(table, name))


def _stack(images: list[np.ndarray]) -> np.ndarray:
    if not images:
        return np.zeros((0, STRIDE_MULTIPLE, STRIDE_MULTIPLE, 3), np.uint8)
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    out = np.full((len(images), h, w, 3), PAD_VALUE, np.uint8)
    for i, im in enumerate(images):
        out[i, : im.shape[0], : im.shape[1]] = im
    return out


def load_split(table: pa.Table, classes: tuple[str, ...], name: str = "split") -> Split:
    """Decode the images and boxes of a prepared split table."""
    index = {c: i for i, c in enumerate(classes)}
    decoded = _decode_each(table, name)
    boxes: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    skipped = 0
    for row, image in zip(table.column("boxes").to_pylist(), decoded, strict=True):
        kept = [(xyxy, index[b["cls"]]) for b in (row or []) if b["cls"] in index
                and (xyxy := clip_box(b, image.shape[1], image.shape[0])) is not None]
        skipped += len(row or []) - len(kept)
        boxes.append(np.array([xyxy for xyxy, _ in kept], np.float32).reshape(-1, 4))
        labels.append(np.array([c for _, c in kept], np.int64))
    return Split(table=table, images=_stack(decoded), boxes=boxes, labels=labels, skipped_boxes=skipped)


def clip_box(box: dict, width: int, height: int) -> tuple[float, float, float, float] | None:
    """``box``'s (x1, y1, x2, y2) clipped to a ``width`` x ``height`` frame, or ``None`` when a
    coordinate is null or not finite or nothing of the box is inside the frame."""
    coords = [box.get(k) for k in ("x1", "y1", "x2", "y2")]
    if any(v is None or not math.isfinite(v) for v in coords):
        return None
    x1, y1, x2, y2 = (float(v) for v in coords)  # type: ignore[arg-type]
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


@dataclass
class Targets:
    """Training targets of a batch at stride OUTPUT_STRIDE."""

    heat: np.ndarray  # float32 (B, C, h, w) gaussian peaks, exactly 1 at object centres
    index: np.ndarray  # int64 (B, K) flat cell index y * w + x of each object
    size: np.ndarray  # float32 (B, K, 2) log width, log height (pixels)
    offset: np.ndarray  # float32 (B, K, 2) centre / stride - cell
    mask: np.ndarray  # float32 (B, K) 1 for real objects


def _gaussian(heat: np.ndarray, cx: int, cy: int, sx: float, sy: float) -> None:
    h, w = heat.shape
    rx, ry = int(np.ceil(3 * sx)), int(np.ceil(3 * sy))
    x0, x1 = max(cx - rx, 0), min(cx + rx + 1, w)
    y0, y1 = max(cy - ry, 0), min(cy + ry + 1, h)
    gx = np.exp(-((np.arange(x0, x1) - cx) ** 2) / (2 * sx * sx))
    gy = np.exp(-((np.arange(y0, y1) - cy) ** 2) / (2 * sy * sy))
    np.maximum(heat[y0:y1, x0:x1], np.outer(gy, gx).astype(np.float32), out=heat[y0:y1, x0:x1])


def make_targets(boxes: list[np.ndarray], labels: list[np.ndarray], n_classes: int,
                 height: int, width: int) -> Targets:
    """Heatmap and regression targets for images of ``height`` x ``width`` (multiples of 16)."""
    b = len(boxes)
    h, w = height // OUTPUT_STRIDE, width // OUTPUT_STRIDE
    t = Targets(
        heat=np.zeros((b, n_classes, h, w), np.float32),
        index=np.zeros((b, MAX_OBJECTS), np.int64),
        size=np.zeros((b, MAX_OBJECTS, 2), np.float32),
        offset=np.zeros((b, MAX_OBJECTS, 2), np.float32),
        mask=np.zeros((b, MAX_OBJECTS), np.float32),
    )
    for i, (bx, lb) in enumerate(zip(boxes, labels, strict=True)):
        for k, ((x1, y1, x2, y2), c) in enumerate(zip(bx[:MAX_OBJECTS], lb[:MAX_OBJECTS], strict=True)):
            bw, bh = max(float(x2 - x1), 1.0), max(float(y2 - y1), 1.0)
            fx, fy = (x1 + x2) / 2 / OUTPUT_STRIDE, (y1 + y2) / 2 / OUTPUT_STRIDE
            cx, cy = min(int(fx), w - 1), min(int(fy), h - 1)
            sx = max(bw / OUTPUT_STRIDE / 6, 0.6)
            sy = max(bh / OUTPUT_STRIDE / 6, 0.6)
            _gaussian(t.heat[i, c], cx, cy, sx, sy)
            t.heat[i, c, cy, cx] = 1.0
            t.index[i, k] = cy * w + cx
            t.size[i, k] = (np.log(bw), np.log(bh))
            t.offset[i, k] = (fx - cx, fy - cy)
            t.mask[i, k] = 1.0
    return t


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Boxes of the horizontally mirrored image of ``width`` pixels."""
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out
