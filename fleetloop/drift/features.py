"""Per-frame scalar features of production traffic, the input of drift monitoring.

One row per frame of :class:`fleetloop.schema.DriveLogs` (same order as ``logs.frames``):

- ``META_COLUMNS`` identify the frame (``log_id``, ``frame``, ``timestamp_ns``, ``day``); they are
  never compared for drift.
- ``COUNT_FEATURES``: detections per class and sensor (``n_lidar_car``, ``n_camera_pedestrian``,
  ``n_track_cyclist``, ...) and per sensor in total (``n_lidar``, ``n_camera``, ``n_track``).
- score statistics (``*_score_mean`` / ``*_score_min``), object range of lidar boxes
  (``lidar_range_mean`` / ``lidar_range_max``, metres, from x and y in the lidar frame),
- ``lidar_camera_agreement``: share of the confident lidar boxes inside the camera's field of
  view that a camera box (camera detections when the log has them, else camera tracks) confirms
  by 2D IoU after projection with the log's calibration (optimal one-to-one assignment),
- ``tracker_detector_agreement``: share of confirmed tracks that a detection of their own sensor
  supports by 2D IoU (only for logs that carry that sensor's detections),
- ``image_brightness`` / ``image_contrast`` (mean / standard deviation of the grey image, 0..1)
  where ``image_uri`` is set,
- ``TAG_FEATURES`` (``weather``, ``time_of_day``, ``place``) as categories (null -> "unknown").

A feature that cannot be computed for a frame (no lidar box, no image, ...) is NaN. Everything is
computed on whole columns: grouping is ``np.bincount`` / ``ufunc.at`` over a frame index, and the
per-frame association runs in :mod:`fleetloop.perception.geometry`'s numba kernels, so the cost grows
linearly with the number of objects; the only Python loop is over images actually present.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from fleetloop.schema import CLASSES, DriveLogs

log = logging.getLogger(__name__)

META_COLUMNS: tuple[str, ...] = ("log_id", "frame", "timestamp_ns", "day")
SENSORS: tuple[str, ...] = ("lidar", "camera", "track")
COUNT_FEATURES: tuple[str, ...] = tuple(
    [f"n_{s}_{c}" for s in SENSORS for c in CLASSES] + [f"n_{s}" for s in SENSORS]
)
SCORE_FEATURES: tuple[str, ...] = (
    "lidar_score_mean", "lidar_score_min", "camera_score_mean", "camera_score_min", "track_score_mean",
)
RANGE_FEATURES: tuple[str, ...] = ("lidar_range_mean", "lidar_range_max")
AGREEMENT_FEATURES: tuple[str, ...] = ("lidar_camera_agreement", "tracker_detector_agreement")
IMAGE_FEATURES: tuple[str, ...] = ("image_brightness", "image_contrast")
NUMERICAL_FEATURES: tuple[str, ...] = COUNT_FEATURES + SCORE_FEATURES + RANGE_FEATURES + AGREEMENT_FEATURES + IMAGE_FEATURES
TAG_FEATURES: tuple[str, ...] = ("weather", "time_of_day", "place")

_DAY_NS = 86_400 * 1_000_000_000


class FeatureParams(BaseModel):
    """How the agreement features are defined (keep them fixed across windows you compare)."""

    model_config = ConfigDict(frozen=True)

    iou_threshold: float = Field(0.5, gt=0, le=1, description="2D IoU for a pair of boxes to agree")
    min_lidar_score: float = Field(0.5, ge=0, le=1, description="lidar boxes below this are not asked to agree")
    max_range_m: float = Field(80.0, gt=0, description="lidar boxes farther than this are outside the shared range")
    min_visible: float = Field(0.5, gt=0, le=1, description="share of the projected box inside the image to be in view")
    image_workers: int = Field(4, ge=1)


class FeatureError(ValueError):
    """The logs cannot be turned into features (says which table / log)."""


def compute_features(
    logs: DriveLogs, params: FeatureParams | None = None, *, image_root: Path | str | None = None
) -> pd.DataFrame:
    """Per-frame features of ``logs`` (one row per row of ``logs.frames``, same order)."""
    params = params or FeatureParams()
    frames = logs.frames
    n = frames.num_rows
    log_ids = pc.unique(frames["log_id"]) if n else pa.array([], pa.string())
    frame_keys = _keys(frames, log_ids)
    order = np.argsort(frame_keys, kind="stable")
    sorted_keys = frame_keys[order]
    if n and np.any(sorted_keys[1:] == sorted_keys[:-1]):
        dup = int(np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])[0])
        raise FeatureError(f"frames table has duplicate (log_id, frame) keys, e.g. row {int(order[dup + 1])}")

    def frame_index(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Row -> frame row (or -1 when the frame is not in ``frames``), and the log index."""
        keys = _keys(t, log_ids)
        pos = np.searchsorted(sorted_keys, keys).clip(0, max(n - 1, 0))
        ok = (sorted_keys[pos] == keys) if n else np.zeros(len(keys), bool)
        return np.where(ok, order[pos], -1), (keys >> 32).astype(np.int64)

    ts = frames["timestamp_ns"].to_numpy().astype(np.int64)
    out: dict[str, np.ndarray] = {
        "log_id": frames["log_id"].to_numpy(zero_copy_only=False),
        "frame": frames["frame"].to_numpy().astype(np.int32),
        "timestamp_ns": ts,
        "day": _day_strings(ts),
    }

    lid, cam, trk = logs.lidar_detections, logs.camera_detections, logs.tracks
    lid_fi, lid_log = frame_index(lid)
    cam_fi, _ = frame_index(cam)
    trk_fi, _ = frame_index(trk)
    for name, t, fi in (("lidar", lid, lid_fi), ("camera", cam, cam_fi), ("track", trk, trk_fi)):
        cls = _class_codes(t["cls"])
        keep = fi >= 0
        out.update(_class_counts(name, fi[keep], cls[keep], n))

    lid_score = lid["score"].to_numpy().astype(np.float64)
    out["lidar_score_mean"], out["lidar_score_min"] = _mean_min(lid_fi, lid_score, n)
    out["camera_score_mean"], out["camera_score_min"] = _mean_min(cam_fi, cam["score"].to_numpy().astype(np.float64), n)
    trk_score = trk["score"].to_numpy(zero_copy_only=False).astype(np.float64)  # null -> NaN
    has = ~np.isnan(trk_score)
    out["track_score_mean"], _ = _mean_min(np.where(has, trk_fi, -1), np.nan_to_num(trk_score), n)

    x, y = lid["x"].to_numpy().astype(np.float64), lid["y"].to_numpy().astype(np.float64)
    rng = np.hypot(x, y)
    out["lidar_range_mean"], _ = _mean_min(lid_fi, rng, n)
    out["lidar_range_max"] = _group_max(lid_fi, rng, n)

    proj = _project_lidar(logs, lid, lid_log, log_ids)
    out["lidar_camera_agreement"] = _lidar_camera_agreement(logs, params, n, lid_fi, lid_score, rng, proj, cam_fi, trk_fi)
    out["tracker_detector_agreement"] = _tracker_detector_agreement(logs, params, n, lid_fi, proj, cam_fi, trk_fi)

    out["image_brightness"], out["image_contrast"] = _image_stats(frames, params, image_root)
    for tag in TAG_FEATURES:
        out[tag] = pc.fill_null(frames[tag], "unknown").to_numpy(zero_copy_only=False)

    df = pd.DataFrame(out)
    for c in (*SCORE_FEATURES, *RANGE_FEATURES, *AGREEMENT_FEATURES, *IMAGE_FEATURES):
        df[c] = df[c].astype(np.float32)
    for c in TAG_FEATURES:
        df[c] = df[c].astype("category")
    return df


# -- grouping helpers -------------------------------------------------------------------------

def _keys(t: pa.Table, log_ids: pa.Array) -> np.ndarray:
    """(log index << 32) | frame for every row; rows of unknown logs get log index 2**31 - 1."""
    if t.num_rows == 0:
        return np.empty(0, np.int64)
    idx = pc.fill_null(pc.index_in(t["log_id"], value_set=log_ids), 2**31 - 1)
    return (idx.to_numpy().astype(np.int64) << 32) | t["frame"].to_numpy().astype(np.int64)


def _class_codes(cls: pa.ChunkedArray) -> np.ndarray:
    """Index into CLASSES, -1 for a class outside the taxonomy."""
    if len(cls) == 0:
        return np.empty(0, np.int64)
    return pc.fill_null(pc.index_in(cls, value_set=pa.array(CLASSES)), -1).to_numpy().astype(np.int64)


def _class_counts(sensor: str, fi: np.ndarray, cls: np.ndarray, n: int) -> dict[str, np.ndarray]:
    k = len(CLASSES)
    known = cls >= 0
    per = np.bincount(fi[known] * k + cls[known], minlength=n * k).reshape(n, k) if n else np.zeros((0, k), int)
    out = {f"n_{sensor}_{c}": per[:, i].astype(np.int32) for i, c in enumerate(CLASSES)}
    out[f"n_{sensor}"] = np.bincount(fi, minlength=n).astype(np.int32)
    return out


def _mean_min(fi: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    keep = fi >= 0
    fi, values = fi[keep], values[keep]
    cnt = np.bincount(fi, minlength=n)
    total = np.bincount(fi, weights=values, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, total / np.maximum(cnt, 1), np.nan)
    low = np.full(n, np.inf)
    np.minimum.at(low, fi, values)
    return mean, np.where(cnt > 0, low, np.nan)


def _group_max(fi: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    keep = fi >= 0
    high = np.full(n, -np.inf)
    np.maximum.at(high, fi[keep], values[keep])
    return np.where(np.isfinite(high), high, np.nan)


def _rate(fi: np.ndarray, hit: np.ndarray, n: int) -> np.ndarray:
    """Per frame: share of the rows (of frame ``fi``) with ``hit``; NaN where a frame has none."""
    den = np.bincount(fi, minlength=n)
    num = np.bincount(fi, weights=hit.astype(np.float64), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _day_strings(ts: np.ndarray) -> np.ndarray:
    if len(ts) == 0:
        return np.empty(0, object)
    days, inverse = np.unique(ts // _DAY_NS, return_inverse=True)
    labels = np.array([str(d) for d in days.astype("datetime64[D]")], dtype=object)
    return labels[inverse]


# -- agreement --------------------------------------------------------------------------------

def _project_lidar(logs: DriveLogs, lid: pa.Table, lid_log: np.ndarray, log_ids: pa.Array) -> dict[str, np.ndarray]:
    """Image boxes of the lidar boxes with their log's calibration (NaN rows: log has none)."""
    from fleetloop.perception.geometry import project_columns, projection_matrix

    n = lid.num_rows
    k = len(log_ids)
    M = np.zeros((max(k, 1), 3, 4))
    width = np.zeros(max(k, 1))
    height = np.zeros(max(k, 1))
    calibrated = np.zeros(max(k, 1), bool)
    cal = logs.calibration
    if cal.num_rows:
        idx = pc.fill_null(pc.index_in(cal["log_id"], value_set=log_ids), -1).to_numpy()
        P = np.asarray(cal["P"].to_pylist(), np.float64)
        T = np.asarray(cal["lidar_to_cam"].to_pylist(), np.float64)
        for row, li in enumerate(idx.tolist()):  # one iteration per log, not per frame
            if li < 0:
                continue
            M[li] = projection_matrix(P[row], T[row])
            width[li], height[li] = cal["image_width"][row].as_py(), cal["image_height"][row].as_py()
            calibrated[li] = True
    ok = (lid_log < k) & (lid_log >= 0)
    ok[ok] &= calibrated[lid_log[ok]]
    box = np.full((n, 4), np.nan, np.float32)
    depth = np.full(n, np.nan, np.float32)
    visible = np.zeros(n, np.float32)
    if ok.any():
        c = {col: np.ascontiguousarray(lid[col].to_numpy()[ok].astype(np.float32)) for col in ("x", "y", "z", "l", "w", "h", "yaw")}
        b, d, v = project_columns(c["x"], c["y"], c["z"], c["l"], c["w"], c["h"], c["yaw"], lid_log[ok], M, width, height)
        box[ok], depth[ok], visible[ok] = b, d, v
    return {"box": box, "depth": depth, "visible": visible}


def _associated(a_fi: np.ndarray, a_box: np.ndarray, b_fi: np.ndarray, b_box: np.ndarray, n: int, iou: float) -> np.ndarray:
    """For each ``a`` row: is it matched to a ``b`` box of the same frame (optimal one-to-one
    assignment by 2D IoU, pairs need IoU >= ``iou``)?"""
    from fleetloop.perception.geometry import MODE_IOU, associate_slots, class_gates

    matched = np.zeros(len(a_fi), bool)
    if len(a_fi) == 0 or len(b_fi) == 0:
        return matched
    ao = np.argsort(a_fi, kind="stable")
    bo = np.argsort(b_fi, kind="stable")
    a_sorted, b_sorted = a_fi[ao], b_fi[bo]
    slots = np.arange(n)
    a_start, a_end = np.searchsorted(a_sorted, slots), np.searchsorted(a_sorted, slots, side="right")
    b_start, b_end = np.searchsorted(b_sorted, slots), np.searchsorted(b_sorted, slots, side="right")
    a = np.ascontiguousarray(a_box[ao], np.float64)
    b = np.ascontiguousarray(b_box[bo], np.float64)
    zeros_a, zeros_b = np.zeros(len(a), np.int64), np.zeros(len(b), np.int64)
    a_match = np.empty(len(a), np.int64)
    b_match = np.empty(len(b), np.int64)
    a_q = np.empty(len(a), np.float64)
    associate_slots(a_start, a_end, b_start, b_end, a, b, zeros_a, zeros_b, MODE_IOU, class_gates(float(iou)), 0.0,
                    a_match, b_match, a_q)
    matched[ao] = a_match >= 0
    return matched


def _boxes(t: pa.Table) -> np.ndarray:
    return np.stack([t[c].to_numpy().astype(np.float32) for c in ("x1", "y1", "x2", "y2")], axis=1) if t.num_rows \
        else np.empty((0, 4), np.float32)


def _logs_with(t: pa.Table) -> pa.Array:
    return pc.unique(t["log_id"]) if t.num_rows else pa.array([], pa.string())


def _lidar_camera_agreement(logs, params, n, lid_fi, lid_score, rng, proj, cam_fi, trk_fi) -> np.ndarray:
    cam, trk = logs.camera_detections, logs.tracks
    in_view = (
        (lid_fi >= 0)
        & (lid_score >= params.min_lidar_score)
        & (rng <= params.max_range_m)
        & (proj["visible"] >= params.min_visible)
    )
    # the camera side: camera detections for logs that have them, camera tracks for the others
    det_logs = _logs_with(cam)
    use_trk = (trk_fi >= 0) & pc.starts_with(trk["sensor"], "camera").to_numpy(zero_copy_only=False) if trk.num_rows \
        else np.zeros(0, bool)
    if trk.num_rows and len(det_logs):
        use_trk &= ~pc.is_in(trk["log_id"], value_set=det_logs).to_numpy(zero_copy_only=False)
    b_fi = np.concatenate([cam_fi[cam_fi >= 0], trk_fi[use_trk]])
    b_box = np.concatenate([_boxes(cam)[cam_fi >= 0], _boxes(trk)[use_trk]])
    # frames with no camera output at all still count (their in-view lidar boxes are unconfirmed),
    # but logs without any camera stream are not asked to agree
    cam_logs = pa.concat_arrays([det_logs, _logs_with(trk.filter(pc.starts_with(trk["sensor"], "camera")))]) \
        if trk.num_rows else det_logs
    if logs.lidar_detections.num_rows:
        in_view &= pc.is_in(logs.lidar_detections["log_id"], value_set=cam_logs).to_numpy(zero_copy_only=False)
    a_idx = np.flatnonzero(in_view)
    hit = _associated(lid_fi[a_idx], proj["box"][a_idx], b_fi, b_box, n, params.iou_threshold)
    return _rate(lid_fi[a_idx], hit, n)


def _tracker_detector_agreement(logs, params, n, lid_fi, proj, cam_fi, trk_fi) -> np.ndarray:
    trk = logs.tracks
    if trk.num_rows == 0:
        return np.full(n, np.nan)
    sensor = trk["sensor"].to_numpy(zero_copy_only=False)
    confirmed = pc.equal(trk["state"], "confirmed").to_numpy(zero_copy_only=False) & (trk_fi >= 0)
    trk_box = _boxes(trk)
    fis, hits = [], []
    cam = logs.camera_detections
    sources = {  # (detections, their frame index, image boxes, usable)
        "camera": (cam, cam_fi, _boxes(cam), np.ones(cam.num_rows, bool)),
        "lidar": (logs.lidar_detections, lid_fi, proj["box"], proj["visible"] > 0),  # in the image at all
    }
    for name, (det, det_fi, det_box, usable) in sources.items():
        sel = confirmed & (sensor == name)
        det_logs = _logs_with(det)
        if not sel.any() or len(det_logs) == 0:
            continue
        sel &= pc.is_in(trk["log_id"], value_set=det_logs).to_numpy(zero_copy_only=False)
        keep = (det_fi >= 0) & usable & np.isfinite(det_box).all(axis=1)
        a_idx = np.flatnonzero(sel)
        fis.append(trk_fi[a_idx])
        hits.append(_associated(trk_fi[a_idx], trk_box[a_idx], det_fi[keep], det_box[keep], n, params.iou_threshold))
    if not fis:
        return np.full(n, np.nan)
    return _rate(np.concatenate(fis), np.concatenate(hits), n)


# -- images -----------------------------------------------------------------------------------

def _image_path(uri: str, root: Path | None) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # s3://, http://: not a local file
        return None
    p = Path(uri)
    return p if p.is_absolute() or root is None else root / p


def _grey_stats(path: Path) -> tuple[float, float]:
    from PIL import Image

    with Image.open(path) as im:
        im.draft("L", (max(im.width // 4, 1), max(im.height // 4, 1)))  # JPEG: decode at 1/4 scale
        a = np.asarray(im.convert("L"), np.float32) / 255.0
    return float(a.mean()), float(a.std())


def _image_stats(frames: pa.Table, params: FeatureParams, image_root: Path | str | None) -> tuple[np.ndarray, np.ndarray]:
    n = frames.num_rows
    bright, contrast = np.full(n, np.nan), np.full(n, np.nan)
    uris = frames["image_uri"]
    rows = np.flatnonzero(pc.is_valid(uris).to_numpy(zero_copy_only=False)) if n else np.empty(0, int)
    if len(rows) == 0:
        return bright, contrast
    root = Path(image_root) if image_root is not None else None
    values = uris.take(pa.array(rows)).to_pylist()
    paths = [_image_path(u, root) for u in values]
    failed: list[str] = []

    def one(i: int) -> tuple[float, float]:
        p = paths[i]
        if p is None:
            failed.append(values[i])
            return np.nan, np.nan
        try:
            return _grey_stats(p)
        except (OSError, ValueError) as exc:
            failed.append(f"{values[i]} ({exc})")
            return np.nan, np.nan

    with ThreadPoolExecutor(max_workers=params.image_workers) as pool:
        stats = list(pool.map(one, range(len(rows))))
    arr = np.asarray(stats, np.float64).reshape(-1, 2)
    bright[rows], contrast[rows] = arr[:, 0], arr[:, 1]
    if failed:
        log.warning("image statistics: %d of %d images not readable as local files, e.g. %s",
                    len(failed), len(rows), failed[0])
    return bright, contrast
