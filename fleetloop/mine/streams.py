"""Perception streams: every camera detector or tracker a log carries, and how they associate.

A log may carry several camera streams: camera detections (``camera_detections``) and any
number of camera trackers (``tracks`` rows whose ``sensor`` is ``camera`` or ``camera:<name>``).
One of them is *judged* (``MiningParams.camera_stream``: the stream whose errors count, the one
the stack uses downstream); every other one is *evidence*: an independent opinion on what is in
the image. An object that one independent sensor sees and another misses is the strongest signal
there is, so every stream is associated with the lidar and with the judged camera stream.

Each stream becomes a :class:`Side`: its rows (ordered by frame, CSR offsets), image boxes,
classes, scores, the classes it reports (``cover``) and the key space of its object hypotheses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetloop.mine.flags import KEY_CAMERA, KEY_TRACK, REF_CAMERA, REF_TRACK
from fleetloop.mine.params import MiningParams
from fleetloop.perception.batch import Batch, Stream
from fleetloop.perception.geometry import MODE_IOU, associate_slots
from fleetloop.schema import CLASSES, camera_stream_matches

#: The ``name`` of the camera-detections stream.
DETECTIONS = "camera"


@dataclass
class Side:
    """A subset of a stream's rows (still ordered by frame) with its own CSR offsets."""

    start: np.ndarray  # (F + 1,)
    idx: np.ndarray  # rows of the parent stream
    ref_kind: int
    ref_id: np.ndarray  # det_id / track_id of each row
    key_space: int
    name: str  # DETECTIONS, or the tracker stream's name
    g: np.ndarray  # global frame of each row
    boxes: np.ndarray  # (n, 4) float64
    cls: np.ndarray  # (n,) class codes
    score: np.ndarray  # (n,) NaN when the stream gives no confidence
    cover: np.ndarray  # bool over class codes: the classes this stream reports

    def __len__(self) -> int:
        return int(self.idx.size)

    @property
    def has_scores(self) -> bool:
        return bool(np.isfinite(self.score).any())


def substream(stream: Stream, mask: np.ndarray, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR offsets and parent rows of the rows of ``stream`` where ``mask``."""
    idx = np.flatnonzero(mask)
    start = np.zeros(n_frames + 1, np.int64)
    if idx.size:
        np.cumsum(np.bincount(stream.g[idx], minlength=n_frames), out=start[1:])
    return start, idx


def _cover(names: list[str] | None, seen: np.ndarray) -> np.ndarray:
    m = np.zeros(len(CLASSES) + 1, bool)
    if names is not None:
        m[[CLASSES.index(c) for c in names]] = True
    else:
        m[np.unique(seen)] = True
        m[-1] = False
    return m


def _side(batch: Batch, stream: Stream, mask: np.ndarray, name: str, params: MiningParams) -> Side:
    start, idx = substream(stream, mask, batch.n_frames)
    if stream is batch.camera:
        ref_kind, ref_id, space = REF_CAMERA, stream.cols["det_id"][idx], KEY_CAMERA
    else:
        ref_kind, ref_id, space = REF_TRACK, stream.cols["track_id"][idx], KEY_TRACK
    boxes = np.stack([stream.cols[c][idx] for c in ("x1", "y1", "x2", "y2")], axis=1).astype(np.float64)
    cls = stream.cls[idx]
    return Side(start, idx, ref_kind, ref_id, space, name, stream.g[idx], boxes, cls,
                stream.score[idx].astype(np.float64), _cover(params.camera_classes, cls))


def camera_sides(batch: Batch, params: MiningParams, skipped: list[str] | None = None) -> list[Side]:
    """Every camera stream of the batch, the judged one first (see module doc); [] when none."""
    sides: list[Side] = []
    if len(batch.camera):
        mask = ~(batch.camera.score < params.camera_score_threshold)  # NaN scores count as present
        sides.append(_side(batch, batch.camera, mask, DETECTIONS, params))
    T = batch.tracks
    for code, name in enumerate(batch.track_streams):
        if name.startswith("camera"):
            sides.append(_side(batch, T, T.cols["stream"] == code, name, params))
    sides = [s for s in sides if len(s)]
    if not sides:
        return sides
    wanted = params.camera_stream
    if wanted:
        hit = [i for i, s in enumerate(sides) if camera_stream_matches(s.name, wanted)]
        if hit:
            sides.insert(0, sides.pop(hit[0]))
        elif skipped is not None:
            skipped.append(f"camera stream {wanted!r} not in the batch (streams: {[s.name for s in sides]}); "
                           f"judging {sides[0].name}")
    elif len(sides) > 1 and sides[0].name != DETECTIONS and skipped is not None:
        skipped.append(f"no judged camera stream named (mine.camera_stream, --camera-tracker): judging "
                       f"{sides[0].name}, the first of {[s.name for s in sides]} by name")
    return sides


@dataclass
class Association:
    """One-to-one association of two sets of rows (per frame)."""

    a_match: np.ndarray  # (n_a,) index into b, -1 none
    a_q: np.ndarray  # (n_a,) IoU of the pair, NaN none
    b_match: np.ndarray  # (n_b,) index into a, -1 none


def take_matched(values: np.ndarray, match: np.ndarray, fill) -> np.ndarray:
    """``values[match]`` where ``match >= 0``, else ``fill`` (a scalar, or an array shaped like
    ``match``). Safe when ``values`` is empty (every match is then -1): a batch with no lidar
    detection below the operating point, or none usable at all, has empty subsets."""
    src = values if values.size else np.zeros(1, values.dtype)
    return np.where(match >= 0, src[np.maximum(match, 0)], fill)


def associate_boxes(a_start: np.ndarray, a_box: np.ndarray, a_cls: np.ndarray, b_start: np.ndarray,
                    b_box: np.ndarray, b_cls: np.ndarray, gates: np.ndarray, class_bonus: float = 0.05) -> Association:
    """Optimal per-frame association of two sets of image boxes (IoU >= the gate of the ``a`` row's
    class, see :func:`fleetloop.perception.geometry.class_gates`)."""
    a_match = np.full(a_box.shape[0], -1, np.int64)
    a_q = np.full(a_box.shape[0], np.nan)
    b_match = np.full(b_box.shape[0], -1, np.int64)
    associate_slots(a_start[:-1], a_start[1:], b_start[:-1], b_start[1:], np.ascontiguousarray(a_box),
                    np.ascontiguousarray(b_box), a_cls, b_cls, MODE_IOU, gates, class_bonus, a_match, b_match, a_q)
    return Association(a_match, a_q, b_match)
