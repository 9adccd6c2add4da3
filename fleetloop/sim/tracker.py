"""A simple IoU tracker: camera detections -> TRACKS rows (sensor "camera").

Per log, frame by frame: live tracks predict their box with a constant-velocity step, are
matched to the frame's detections by optimal assignment on IoU (``scipy``'s
``linear_sum_assignment``, pairs below ``iou_threshold`` rejected), matched tracks take the
detection's box, class and score, unmatched detections start new tracks, and a track with no
detection for more than ``max_age`` frames ends (a later detection on the same spot gets a new
id). A track is ``tentative`` until it has ``min_hits`` detections, then ``confirmed``. Only
tracks matched in a frame are written for that frame (no coasting rows), so a detector miss
shows as a gap in a confirmed track.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import linear_sum_assignment

from fleetloop.schema import TRACKS


class TrackerConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    iou_threshold: float = Field(0.3, gt=0, le=1, description="minimum IoU of a track-detection pair")
    min_hits: int = Field(2, ge=1, description="detections before a track is confirmed")
    max_age: int = Field(3, ge=0, description="frames a track survives without a detection")


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) boxes (x1, y1, x2, y2) -> (N, M) intersection over union."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass
class _Tracks:
    """Live tracks as parallel arrays."""

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    box: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    vel: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # box change per frame
    last: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # frame of the last detection
    hits: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def keep(self, sel: np.ndarray) -> None:
        self.ids, self.box, self.vel, self.last, self.hits = (a[sel] for a in (self.ids, self.box, self.vel, self.last, self.hits))


@dataclass
class IouTracker:
    """Stateful tracker for one log; feed frames in increasing order with :meth:`step`."""

    config: TrackerConfig = field(default_factory=TrackerConfig)
    next_id: int = 1
    tracks: _Tracks = field(default_factory=_Tracks)

    def step(self, frame: int, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Assign the frame's detection boxes (k, 4) to tracks: (track id, confirmed) per detection."""
        cfg, t = self.config, self.tracks
        t.keep(frame - t.last <= cfg.max_age + 1)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        det_track = np.full(len(boxes), -1, np.int64)
        if len(t.ids) and len(boxes):
            gap = (frame - t.last)[:, None]
            overlap = iou(t.box + t.vel * gap, boxes)
            rows, cols = linear_sum_assignment(-overlap)
            ok = overlap[rows, cols] >= cfg.iou_threshold
            rows, cols = rows[ok], cols[ok]
            det_track[cols] = rows
            step = np.maximum(frame - t.last[rows], 1)[:, None]
            t.vel[rows] = 0.5 * t.vel[rows] + 0.5 * (boxes[cols] - t.box[rows]) / step
            t.box[rows] = boxes[cols]
            t.last[rows] = frame
            t.hits[rows] += 1
        new = np.flatnonzero(det_track < 0)
        if new.size:
            first = len(t.ids)
            t.ids = np.r_[t.ids, self.next_id + np.arange(new.size)]
            self.next_id += new.size
            t.box = np.vstack([t.box, boxes[new]])
            t.vel = np.vstack([t.vel, np.zeros((new.size, 4))])
            t.last = np.r_[t.last, np.full(new.size, frame)]
            t.hits = np.r_[t.hits, np.ones(new.size, np.int64)]
            det_track[new] = first + np.arange(new.size)
        return t.ids[det_track], t.hits[det_track] >= cfg.min_hits


def track_camera(camera: pa.Table, config: TrackerConfig | None = None) -> pa.Table:
    """TRACKS rows (sensor "camera") for the CAMERA_DETECTIONS of one or more logs.

    Track ids are unique within a log (1, 2, ...). A detection's track keeps its box, class and
    score; ``state`` is confirmed once the track has had ``min_hits`` detections."""
    config = config or TrackerConfig()
    parts = []
    for log_id in pc.unique(camera["log_id"]).to_pylist():
        t = camera.filter(pc.equal(camera["log_id"], log_id))
        t = t.take(pc.sort_indices(t, [("frame", "ascending"), ("det_id", "ascending")]))
        parts.append(_track_log(t, IouTracker(config)))
    if not parts:
        return TRACKS.empty_table()
    return pa.concat_tables(parts)


def _track_log(t: pa.Table, tracker: IouTracker) -> pa.Table:
    frame = t["frame"].to_numpy()
    boxes = np.column_stack([t[k].to_numpy() for k in ("x1", "y1", "x2", "y2")])
    track_id = np.zeros(len(frame), np.int64)
    confirmed = np.zeros(len(frame), bool)
    bounds = np.flatnonzero(np.diff(frame)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(frame)], strict=True):
        if hi > lo:
            track_id[lo:hi], confirmed[lo:hi] = tracker.step(int(frame[lo]), boxes[lo:hi])
    order = np.lexsort((track_id, frame))
    return pa.Table.from_pydict({
        "log_id": t["log_id"].take(order),
        "frame": t["frame"].take(order),
        "track_id": track_id[order],
        "sensor": pa.array(["camera"] * len(frame), pa.string()),
        "cls": t["cls"].take(order),
        "score": t["score"].take(order),
        "state": pa.array(np.where(confirmed, "confirmed", "tentative")[order].tolist(), pa.string()),
        **{k: t[k].take(order) for k in ("x1", "y1", "x2", "y2")},
    }, schema=TRACKS)
