"""lidar <-> camera: do the two sensors see the same objects?

Every lidar box is projected into the image with the log's calibration and associated with the
camera boxes of its frame (IoU, optimal assignment, one kernel call for the whole batch). The
camera side is the camera detector when the log has one, else the camera tracker's boxes.

Flags (a one-sided object at the operating point means exactly one of the sensors is wrong):
  lidar_only      confident lidar object inside the camera's field of view and range, no camera box
  camera_only     camera box inside the lidar's range, no lidar detection at all
  lidar_weak      camera box whose lidar partner scores below the lidar operating point
  class_mismatch  associated objects of different classes (both sensors report both classes)
  geometry        associated, but the boxes overlap less than ``geometry_iou``
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetloop.perception.batch import Batch, Stream
from fleetloop.mine.flags import KEY_CAMERA, KEY_LIDAR, KEY_TRACK, REF_CAMERA, REF_LIDAR, REF_TRACK, Flags, object_key
from fleetloop.perception.geometry import MODE_IOU, associate_slots, project_columns
from fleetloop.mine.params import MiningParams
from fleetloop.schema import CLASSES


@dataclass
class Side:
    """A subset of a stream's rows (still ordered by frame) with its own CSR offsets."""

    start: np.ndarray  # (F + 1,)
    idx: np.ndarray  # rows of the parent stream
    ref_kind: int
    ref_id: np.ndarray  # det_id / track_id of each row
    key_space: int


def substream(stream: Stream, mask: np.ndarray, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR offsets and parent rows of the rows of ``stream`` where ``mask``."""
    idx = np.flatnonzero(mask)
    start = np.zeros(n_frames + 1, np.int64)
    if idx.size:
        np.cumsum(np.bincount(stream.g[idx], minlength=n_frames), out=start[1:])
    return start, idx


def camera_side(batch: Batch, params: MiningParams) -> tuple[Side | None, np.ndarray, np.ndarray]:
    """The camera boxes to compare with lidar: camera detections if any, else camera tracks.

    Returns (side, boxes (n, 4) float64, classes)."""
    F = batch.n_frames
    if len(batch.camera):
        s = batch.camera
        mask = ~(s.score < params.camera_score_threshold)  # NaN scores count as present
        start, idx = substream(s, mask, F)
        side = Side(start, idx, REF_CAMERA, s.cols["det_id"][idx], KEY_CAMERA)
    elif len(batch.tracks) and (batch.tracks.cols["sensor"] == 0).any():
        s = batch.tracks
        start, idx = substream(s, s.cols["sensor"] == 0, F)
        side = Side(start, idx, REF_TRACK, s.cols["track_id"][idx], KEY_TRACK)
    else:
        return None, np.zeros((0, 4)), np.zeros(0, np.int64)
    boxes = np.stack([s.cols[c][idx] for c in ("x1", "y1", "x2", "y2")], axis=1).astype(np.float64)
    return side, boxes, s.cls[idx]


def size_factor(box_height: np.ndarray, params: MiningParams) -> np.ndarray:
    """Severity factor for a possible miss: objects too small to be labelled count less
    (NaN height, e.g. a log without calibration: size unknown, no discount)."""
    h = np.asarray(box_height, np.float64)
    return np.where(np.isnan(h) | (h >= params.label_min_height_px), 1.0, params.small_object_factor)


@dataclass
class LidarGeometry:
    box: np.ndarray  # (N, 4) float64 projected, clipped image box of every lidar detection
    depth: np.ndarray  # (N,) metres along the optical axis
    visible: np.ndarray  # (N,) share of the projected box inside the image
    range_m: np.ndarray  # (N,) bird's-eye-view distance from the sensor


def lidar_geometry(batch: Batch) -> LidarGeometry:
    L = batch.lidar
    c = L.cols
    log = batch.frame_log[L.g]
    box, depth, visible = project_columns(c["x"], c["y"], c["z"], c["l"], c["w"], c["h"], c["yaw"], log,
                                          np.nan_to_num(batch.M), np.nan_to_num(batch.width),
                                          np.nan_to_num(batch.height))
    calibrated = batch.has_calib[log]
    visible = np.where(calibrated, visible, 0.0)
    box = np.where(calibrated[:, None], box, np.nan).astype(np.float64)
    rng = np.hypot(c["x"], c["y"])
    return LidarGeometry(box, depth.astype(np.float64), visible.astype(np.float64), rng)


@dataclass
class Association:
    lidar_match: np.ndarray  # (N_lidar,) index into the camera side, -1 none
    lidar_iou: np.ndarray
    cam_match: np.ndarray  # (N_cam,) index into batch.lidar, -1 none


def coverage(batch: Batch, params: MiningParams) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks over class codes: which classes the camera / the lidar report."""
    n = len(CLASSES) + 1

    def mask(names: list[str] | None, seen: np.ndarray) -> np.ndarray:
        m = np.zeros(n, bool)
        if names is not None:
            m[[CLASSES.index(c) for c in names]] = True
        else:
            m[np.unique(seen)] = True
            m[-1] = False
        return m

    cam_seen = batch.camera.cls if len(batch.camera) else batch.tracks.cls[batch.tracks.cols["sensor"] == 0]
    return mask(params.camera_classes, cam_seen), mask(params.lidar_classes, batch.lidar.cls)


def check_lidar_camera(batch: Batch, geo: LidarGeometry, params: MiningParams, flags: Flags,
                       skipped: list[str]) -> Association | None:
    L = batch.lidar
    F = batch.n_frames
    side, cam_box, cam_cls = camera_side(batch, params)
    if side is None:
        skipped.append("lidar<->camera: no camera detections or camera tracks")
        return None
    if len(L) == 0:
        skipped.append("lidar<->camera: no lidar detections")
        return None
    if not batch.has_calib.any():
        skipped.append("lidar<->camera: no calibration")
        return None
    missing = [batch.log_ids[k] for k in np.flatnonzero(~batch.has_calib)]
    if missing:
        skipped.append(f"lidar<->camera: no usable calibration for logs {missing[:5]}{'...' if len(missing) > 5 else ''}")

    sev = params.severities
    lid_ok = (L.score >= params.lidar_min_score) & (geo.visible > 0)
    l_start, l_idx = substream(L, lid_ok, F)
    n_cam = cam_box.shape[0]
    a_match = np.full(l_idx.size, -1, np.int64)
    a_iou = np.full(l_idx.size, np.nan)
    b_match = np.full(n_cam, -1, np.int64)
    associate_slots(l_start[:-1], l_start[1:], side.start[:-1], side.start[1:],
                    np.ascontiguousarray(geo.box[l_idx]), cam_box, L.cls[l_idx], cam_cls,
                    MODE_IOU, params.association_iou, 0.05, a_match, b_match, a_iou)
    lidar_match = np.full(len(L), -1, np.int64)
    lidar_iou = np.full(len(L), np.nan)
    lidar_match[l_idx] = a_match
    lidar_iou[l_idx] = a_iou
    cam_match = np.where(b_match >= 0, l_idx[np.maximum(b_match, 0)], -1)

    cam_cov, lid_cov = coverage(batch, params)
    lid_key = object_key(KEY_LIDAR, np.arange(len(L)))
    lid_ref = (REF_LIDAR, L.cols["det_id"])
    confident = L.score >= params.lidar_score_threshold
    box_h = geo.box[:, 3] - geo.box[:, 1]
    log_of = batch.frame_log

    # lidar_only: a confident lidar object the camera should have seen
    m = (confident & (lidar_match < 0) & cam_cov[L.cls] & (geo.visible >= params.min_visible)
         & (geo.depth <= params.camera_range_m) & (box_h >= params.min_box_height_px))
    i = np.flatnonzero(m)
    flags.add("lidar_only", L.g[i], sev.lidar_only, lid_key[i], (REF_LIDAR, lid_ref[1][i]))

    # camera side
    cam_g = batch.camera.g[side.idx] if side.ref_kind == REF_CAMERA else batch.tracks.g[side.idx]
    cam_key = object_key(side.key_space, side.idx)
    cam_h = cam_box[:, 3] - cam_box[:, 1]
    heights = np.array([params.class_heights_m.get(c, 1.6) for c in CLASSES] + [1.6])
    cam_range = batch.focal[log_of[cam_g]] * heights[cam_cls] / np.maximum(cam_h, 1.0)
    in_lidar = lid_cov[cam_cls] & (cam_range <= params.lidar_range_m) & (cam_h >= params.min_box_height_px)
    in_lidar &= batch.has_calib[log_of[cam_g]]
    matched = cam_match >= 0
    partner = np.maximum(cam_match, 0)
    small = size_factor(cam_h, params)
    j = np.flatnonzero(in_lidar & ~matched)
    flags.add("camera_only", cam_g[j], sev.camera_only * small[j], cam_key[j], (side.ref_kind, side.ref_id[j]))
    weak = matched & (L.score[partner] < params.lidar_score_threshold)
    j = np.flatnonzero(weak & lid_cov[cam_cls])
    flags.add("lidar_weak", cam_g[j], sev.lidar_weak * small[j], lid_key[partner[j]], (side.ref_kind, side.ref_id[j]),
              (REF_LIDAR, L.cols["det_id"][partner[j]]))

    # associated pairs: class and geometry
    pl = partner
    both_cover = cam_cov[L.cls[pl]] & lid_cov[cam_cls]
    j = np.flatnonzero(matched & both_cover & (L.cls[pl] != cam_cls) & confident[pl])
    flags.add("class_mismatch", cam_g[j], sev.class_mismatch, lid_key[pl[j]], (REF_LIDAR, L.cols["det_id"][pl[j]]),
              (side.ref_kind, side.ref_id[j]))
    j = np.flatnonzero(matched & confident[pl] & (lidar_iou[pl] < params.geometry_iou))
    flags.add("geometry", cam_g[j], sev.geometry, lid_key[pl[j]], (REF_LIDAR, L.cols["det_id"][pl[j]]),
              (side.ref_kind, side.ref_id[j]))
    return Association(lidar_match, lidar_iou, cam_match)
