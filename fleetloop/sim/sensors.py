"""Simulated sensors: a lidar detector from 3D truth, and a camera detector run on the images.

The lidar sees by range, not by light: its recall falls with range (a logistic fall-off around
a per-class half-recall range), with occlusion, and in rain (shorter range, a little lower
recall, spray false alarms). Night does not affect it, so at night and in rain the lidar still
sees what the camera misses: that disagreement is what mining looks for. Detections carry
position/size/yaw noise, a score in [0, 1] that drops with range and occlusion, rare class
confusions (pedestrian <-> cyclist, cone -> pedestrian) and a few low-score false alarms.

The camera detector is any callable with the production model's signature (:data:`Detector`):
a batch of (N, H, W, 3) uint8 images -> one (k, 6) float32 array per image of
``[x1, y1, x2, y2, score, class_index]`` with class_index into ``fleetloop.schema.CLASSES``.
Detections below a score threshold are dropped before logging.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from fleetloop.schema import CAMERA_DETECTIONS, CLASSES, LIDAR_DETECTIONS
from fleetloop.sim.world import CAR, CONE, CYCLIST, PEDESTRIAN, SIZES, Snapshot

Detector = Callable[[np.ndarray], list[np.ndarray]]
"""(N, H, W, 3) uint8 images -> per image a (k, 6) float32 array [x1, y1, x2, y2, score, class_index]."""

_CLASS_NAMES = np.array(CLASSES, dtype=object)
_CONFUSED_AS = np.zeros(len(CLASSES), np.int64)  # the wrong class each class is confused with
_CONFUSED_AS[[CAR, PEDESTRIAN, CYCLIST, CONE]] = [CAR, CYCLIST, PEDESTRIAN, PEDESTRIAN]


class LidarConfig(BaseModel):
    """How the simulated lidar detector errs."""

    model_config = ConfigDict(frozen=True)

    max_range: float = Field(75.0, gt=0, description="metres; nothing is reported beyond")
    min_x: float = Field(0.5, description="only objects ahead of this x are reported (front half)")
    recall: tuple[float, float, float, float] = Field((0.985, 0.95, 0.95, 0.9), description="near-range recall per class")
    half_range: tuple[float, float, float, float] = Field((62.0, 40.0, 44.0, 30.0), description="metres where recall halves, per class")
    range_softness: float = Field(5.0, gt=0, description="metres: width of the recall fall-off")
    occlusion_drop: float = Field(0.85, ge=0, le=1, description="recall x (1 - drop * occlusion^2)")
    rain_range: float = Field(0.8, gt=0, le=1, description="half-recall ranges shrink by this in rain")
    rain_recall: float = Field(0.95, gt=0, le=1)
    confusion: float = Field(0.01, ge=0, le=1, description="chance a pedestrian/cyclist/cone gets a wrong class")
    false_alarms: float = Field(0.03, ge=0, description="expected false alarms per frame in clear weather")
    rain_false_alarms: float = Field(0.2, ge=0, description="expected false alarms per frame in rain (spray)")
    position_noise: float = Field(0.05, ge=0, description="metres, plus 0.4 % of the range")
    size_noise: float = Field(0.04, ge=0, description="relative")
    yaw_noise: float = Field(0.04, ge=0, description="radians")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def lidar_recall(cls: np.ndarray, rng_m: np.ndarray, occlusion: np.ndarray, rain: bool, cfg: LidarConfig) -> np.ndarray:
    """Probability that the lidar detects each object (vectorised)."""
    recall = np.asarray(cfg.recall)[cls] * (cfg.rain_recall if rain else 1.0)
    half = np.asarray(cfg.half_range)[cls] * (cfg.rain_range if rain else 1.0)
    p = recall * _sigmoid((half - rng_m) / cfg.range_softness) * (1.0 - cfg.occlusion_drop * np.asarray(occlusion) ** 2)
    return np.where(rng_m <= cfg.max_range, p, 0.0)


def simulate_lidar(
    log_id: str,
    truth: Snapshot,
    occlusion: np.ndarray,
    n_frames: int,
    *,
    rain: bool,
    rng: np.random.Generator,
    ground_z: float = -1.8,
    cfg: LidarConfig | None = None,
) -> pa.Table:
    """LIDAR_DETECTIONS rows of one log from its 3D truth (all frames at once).

    ``occlusion`` (one per truth row) is the share of the object hidden from the sensors' point
    of view (the renderer's, 0 outside the camera's view)."""
    cfg = cfg or LidarConfig()
    box = truth.box
    rng_m = np.hypot(box[:, 0], box[:, 1])
    cls = truth.cls.astype(np.int64)
    p = lidar_recall(cls, rng_m, occlusion, rain, cfg)
    hit = (rng.random(len(truth)) < p) & (box[:, 0] > cfg.min_x)
    frame, cls, box, rng_m, occ = truth.frame[hit], cls[hit], box[hit].copy(), rng_m[hit], np.asarray(occlusion)[hit]
    n = frame.size
    flip = (rng.random(n) < cfg.confusion) & (cls != CAR)
    cls = np.where(flip, _CONFUSED_AS[cls], cls)
    box[:, :2] += rng.normal(0, 1, (n, 2)) * (cfg.position_noise + 0.004 * rng_m)[:, None]
    box[:, 3:6] *= np.exp(rng.normal(0, cfg.size_noise, (n, 3)))
    box[:, 2] += rng.normal(0, cfg.position_noise, n)
    box[:, 6] += rng.normal(0, cfg.yaw_noise, n)
    half = np.asarray(cfg.half_range)[cls]
    score = _sigmoid(2.6 + 1.5 * (1 - rng_m / half) - 2.5 * occ - (0.4 if rain else 0.0) + rng.normal(0, 0.6, n))
    fa_frame, fa_cls, fa_box, fa_score = _false_alarms(n_frames, rain, ground_z, rng, cfg)
    return lidar_table(log_id, np.r_[frame, fa_frame], np.r_[cls, fa_cls], np.r_[score, fa_score],
                       np.vstack([box, fa_box]))


def _false_alarms(n_frames: int, rain: bool, ground_z: float, rng: np.random.Generator,
                  cfg: LidarConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Low-score phantom objects standing on the ground: random clutter, in rain near-range spray."""
    k = rng.poisson(cfg.rain_false_alarms if rain else cfg.false_alarms, n_frames)
    frame = np.repeat(np.arange(n_frames), k).astype(np.int32)
    n = frame.size
    cls = rng.choice([CAR, PEDESTRIAN, CONE], n, p=[0.4, 0.4, 0.2])
    size = SIZES[cls] * rng.uniform(0.8, 1.2, (n, 1))
    box = np.column_stack([rng.uniform(4.0, 25.0 if rain else 50.0, n), rng.uniform(-9.0, 9.0, n),
                           ground_z + size[:, 2] / 2, size, rng.uniform(-np.pi, np.pi, n)])
    return frame, cls, box, rng.uniform(0.2, 0.6, n)


def _det_ids(frame: np.ndarray) -> np.ndarray:
    """Index of each row within its frame (rows must be sorted by frame)."""
    return (np.arange(frame.size) - np.searchsorted(frame, frame)).astype(np.int32)


def lidar_table(log_id: str, frame: np.ndarray, cls: np.ndarray, score: np.ndarray, box: np.ndarray) -> pa.Table:
    """LIDAR_DETECTIONS rows, sorted by frame, det_id numbered within each frame."""
    order = np.argsort(frame, kind="stable")
    frame = np.asarray(frame)[order].astype(np.int32)
    box = np.asarray(box, np.float64)[order]
    yaw = np.mod(box[:, 6] + np.pi, 2 * np.pi) - np.pi
    return pa.Table.from_pydict({
        "log_id": pa.array([log_id] * frame.size, pa.string()),
        "frame": frame,
        "det_id": _det_ids(frame),
        "cls": pa.array(_CLASS_NAMES[np.asarray(cls, np.int64)[order]].tolist(), pa.string()),
        "score": np.clip(np.asarray(score)[order], 0, 1).astype(np.float32),
        **{k: box[:, j].astype(np.float32) for j, k in enumerate("xyzlwh")},
        "yaw": yaw.astype(np.float32),
    }, schema=LIDAR_DETECTIONS)


def run_detector(detector: Detector, images: np.ndarray, *, batch_size: int = 64) -> list[np.ndarray]:
    """The detector's raw (k, 6) outputs for every image, called in batches."""
    out: list[np.ndarray] = []
    for lo in range(0, len(images), batch_size):
        batch = images[lo:lo + batch_size]
        res = detector(batch)
        if len(res) != len(batch):
            raise ValueError(f"detector returned {len(res)} results for {len(batch)} images")
        out.extend(np.asarray(r, np.float32).reshape(-1, 6) for r in res)
    return out


def camera_table(log_id: str, detections: list[np.ndarray], *, threshold: float = 0.3) -> pa.Table:
    """CAMERA_DETECTIONS rows from per-frame (k, 6) detector outputs (frame = list position).

    Drops detections scoring below ``threshold``, with an unknown class, non-finite values or an
    empty box; det_id numbers the rest by descending score within each frame."""
    counts = [len(d) for d in detections]
    det = np.concatenate(detections).reshape(-1, 6) if detections else np.zeros((0, 6), np.float32)
    frame = np.repeat(np.arange(len(detections)), counts).astype(np.int32)
    cls = np.rint(det[:, 5])
    ok = (np.isfinite(det).all(axis=1) & (det[:, 4] >= threshold) & (cls >= 0) & (cls < len(CLASSES))
          & (det[:, 2] > det[:, 0]) & (det[:, 3] > det[:, 1]))
    det, frame, cls = det[ok], frame[ok], cls[ok].astype(np.int64)
    order = np.lexsort((-det[:, 4], frame))
    det, frame, cls = det[order], frame[order], cls[order]
    return pa.Table.from_pydict({
        "log_id": pa.array([log_id] * frame.size, pa.string()),
        "frame": frame,
        "det_id": _det_ids(frame),
        "cls": pa.array(_CLASS_NAMES[cls].tolist(), pa.string()),
        "score": np.clip(det[:, 4], 0, 1).astype(np.float32),
        **{k: det[:, j].astype(np.float32) for j, k in enumerate(("x1", "y1", "x2", "y2"))},
    }, schema=CAMERA_DETECTIONS)
