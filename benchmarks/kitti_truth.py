"""The true perception errors of each logged source, from KITTI ground truth (label_02).

Only the benchmark reads ground truth; the miner never does. Rules (also in benchmarks/README.md):

* Lidar (PointRCNN) at its operating point: a detection counts when its score (sigmoid of the
  raw PointRCNN score) is >= ``lidar_threshold`` (0.95, i.e. raw score >= ~2.94). Its 3D box is
  projected into the image with the log's calibration (clipped to the image).
* Camera (the 2D tracker): every logged box counts; cars only (``car`` tracks vs ``Car`` truth).
* Matching, per frame and per class: optimal one-to-one assignment
  (``scipy.optimize.linear_sum_assignment``) maximising IoU among pairs with 2D IoU >= 0.5
  (cars, pedestrians and cyclists alike) against label_02 boxes of the same class
  (Car, Pedestrian, Cyclist).
* Ignored (KITTI's own convention): ``Van`` is a neighbour of Car and ``Person_sitting`` of
  Pedestrian: a detection matching one (IoU >= 0.5) is neither a hit nor a false alarm, and an
  undetected one is no miss. A detection lying mostly inside a ``DontCare`` region
  (intersection over the detection's area >= 0.5) is ignored as well.
* Errors of a frame: lidar misses (unmatched truth objects of the three classes), lidar false
  alarms (unmatched, not ignored detections), camera misses and camera false alarms (cars).
  A class confusion counts as one false alarm plus one miss.
* Labelling cost of a frame: 1 + the number of labelled objects (every label_02 row that is not
  ``DontCare``).

``difficulty="hard"`` additionally applies KITTI's "hard" filter to the truth (objects lower than
25 px, occluded > 2 or truncated > 0.5 become ignore regions), as a robustness variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from fleetloop.perception.geometry import iou_matrix, project_boxes, projection_matrix
from fleetloop.schema import DriveLogs

CARE = {"Car": "car", "Pedestrian": "pedestrian", "Cyclist": "cyclist"}
#: KITTI difficulty filters: (min box height px, max occlusion level, max truncation).
DIFFICULTY = {"easy": (40, 0, 0.15), "moderate": (25, 1, 0.3), "hard": (25, 2, 0.5)}
NEIGHBOUR = {"car": ("Van",), "pedestrian": ("Person_sitting",), "cyclist": ()}


@dataclass
class Truth:
    frames: pd.DataFrame  # log_id, frame, lidar_miss, lidar_fa, camera_miss, camera_fa, errors, n_objects, cost
    lidar: pd.DataFrame  # per lidar detection: log_id, frame, det_id, cls, score, status (tp|fa|ignored|below)
    camera: pd.DataFrame  # per camera box: log_id, frame, row, cls, status (tp|fa|ignored|other_class)
    gt: pd.DataFrame  # per truth object: ..., lidar_hit, camera_hit (nan when not applicable)


def lidar_boxes_2d(logs: DriveLogs) -> np.ndarray:
    """Projected image boxes of every lidar detection (clipped to the image)."""
    cal = logs.calibration.to_pandas().set_index("log_id")
    det = logs.lidar_detections.to_pandas()
    out = np.zeros((len(det), 4))
    for log_id, idx in det.groupby("log_id").indices.items():
        row = cal.loc[log_id]
        M = projection_matrix(np.array(row["P"]), np.array(row["lidar_to_cam"]))
        boxes = det.iloc[idx][["x", "y", "z", "l", "w", "h", "yaw"]].to_numpy(np.float64)
        out[idx], _, _ = project_boxes(boxes, M[None], [row["image_width"]], [row["image_height"]])
    return out


def _ioa(det: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Intersection over the detection's own area, (N, M)."""
    if len(det) == 0 or len(region) == 0:
        return np.zeros((len(det), len(region)))
    iw = np.minimum(det[:, None, 2], region[None, :, 2]) - np.maximum(det[:, None, 0], region[None, :, 0])
    ih = np.minimum(det[:, None, 3], region[None, :, 3]) - np.maximum(det[:, None, 1], region[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = np.clip((det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1]), 1e-9, None)
    return inter / area[:, None]


def _match(det_boxes: np.ndarray, gt_boxes: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Boolean hit flags for detections and truth objects (optimal assignment, IoU >= thr)."""
    d_hit = np.zeros(len(det_boxes), bool)
    g_hit = np.zeros(len(gt_boxes), bool)
    if len(det_boxes) and len(gt_boxes):
        iou = iou_matrix(det_boxes, gt_boxes)
        r, c = linear_sum_assignment(np.where(iou >= thr, -iou, 0.0))
        ok = iou[r, c] >= thr
        d_hit[r[ok]] = True
        g_hit[c[ok]] = True
    return d_hit, g_hit


def _judge_frame(det_boxes, det_cls, gt, thr, classes):
    """Per-detection status and per-truth hit for one frame of one source."""
    status = np.full(len(det_boxes), "fa", dtype=object)
    gt_hit = np.full(len(gt), np.nan)
    gt_boxes = gt[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
    for cls in classes:
        d = np.flatnonzero(det_cls == cls)
        care = np.flatnonzero(gt["care_cls"].to_numpy() == cls)
        d_hit, g_hit = _match(det_boxes[d], gt_boxes[care], thr[cls])
        status[d[d_hit]] = "tp"
        gt_hit[care] = g_hit
        rest = d[~d_hit]
        ign = np.flatnonzero(gt["ignore_for"].map(lambda s, c=cls: c in s).to_numpy())
        if len(rest) and len(ign):
            # ignore regions: neighbour classes by IoU, DontCare (and filtered objects) by IoA
            iou = iou_matrix(det_boxes[rest], gt_boxes[ign])
            ioa = _ioa(det_boxes[rest], gt_boxes[ign])
            by_iou = gt["ignore_by_iou"].to_numpy()[ign]
            hit = np.where(by_iou[None, :], iou >= thr[cls], ioa >= 0.5).any(axis=1)
            status[rest[hit]] = "ignored"
    return status, gt_hit


def _prepare_gt(truth: pd.DataFrame, difficulty: str | None) -> pd.DataFrame:
    gt = truth.copy()
    gt["care_cls"] = gt["kitti_type"].map(CARE)
    gt["ignore_for"] = [""] * len(gt)
    gt["ignore_by_iou"] = True
    for cls, neigh in NEIGHBOUR.items():
        m = gt["kitti_type"].isin(neigh)
        gt.loc[m, "ignore_for"] = gt.loc[m, "ignore_for"] + cls + ","
    dc = gt["kitti_type"] == "DontCare"
    gt.loc[dc, "ignore_for"] = "car,pedestrian,cyclist"
    gt.loc[dc, "ignore_by_iou"] = False
    if difficulty is not None:
        min_h, max_occ, max_trunc = DIFFICULTY[difficulty] if isinstance(difficulty, str) else difficulty
        hard_out = gt["care_cls"].notna() & (
            ((gt["y2"] - gt["y1"]) < min_h) | (gt["occluded"] > max_occ) | (gt["truncated"] > max_trunc)
        )
        gt.loc[hard_out, "ignore_for"] = gt.loc[hard_out, "care_cls"] + ","
        gt.loc[hard_out, "care_cls"] = None
    return gt


def kitti_truth_errors(
    root: Path | str,
    logs: DriveLogs,
    *,
    lidar_threshold: float = 0.95,
    iou: dict[str, float] | None = None,
    difficulty: str | None = None,
) -> Truth:
    """The true errors of ``logs`` (as loaded from ``root``) against ``root``'s label_02."""
    from fleetloop.ingest.importers.kitti import read_kitti_truth

    thr = {"car": 0.5, "pedestrian": 0.5, "cyclist": 0.5, **(iou or {})}
    frames = logs.frames.select(["log_id", "frame"]).to_pandas()
    truth = _prepare_gt(read_kitti_truth(root, logs.log_ids).to_pandas(), difficulty)
    lidar = logs.lidar_detections.to_pandas()
    lidar_boxes = lidar_boxes_2d(logs)
    cam = logs.tracks.to_pandas() if logs.camera_detections.num_rows == 0 else logs.camera_detections.to_pandas()
    cam_boxes = cam[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)

    lidar_status = np.full(len(lidar), "below", dtype=object)
    cam_status = np.full(len(cam), "other_class", dtype=object)
    gt_lidar_hit = np.full(len(truth), np.nan)
    gt_cam_hit = np.full(len(truth), np.nan)
    gt_groups = truth.groupby(["log_id", "frame"]).indices
    lidar_groups = lidar.groupby(["log_id", "frame"]).indices
    cam_groups = cam.groupby(["log_id", "frame"]).indices
    empty = np.zeros(0, np.int64)
    for key in frames.itertuples(index=False):
        k = (key.log_id, key.frame)
        g = gt_groups.get(k, empty)
        gt = truth.iloc[g]
        li = lidar_groups.get(k, empty)
        op = li[lidar["score"].to_numpy()[li] >= lidar_threshold]
        st, hit = _judge_frame(lidar_boxes[op], lidar["cls"].to_numpy()[op], gt, thr, ("car", "pedestrian", "cyclist"))
        lidar_status[op] = st
        gt_lidar_hit[g] = hit
        ci = cam_groups.get(k, empty)
        cars = ci[cam["cls"].to_numpy()[ci] == "car"]
        st, hit = _judge_frame(cam_boxes[cars], cam["cls"].to_numpy()[cars], gt, thr, ("car",))
        cam_status[cars] = st
        gt_cam_hit[g] = hit

    truth["lidar_hit"] = gt_lidar_hit
    truth["camera_hit"] = gt_cam_hit
    lidar_out = lidar[["log_id", "frame", "det_id", "cls", "score"]].assign(status=lidar_status)
    cam_out = cam[["log_id", "frame", "cls"]].assign(row=np.arange(len(cam)), status=cam_status)

    def per_frame(mask: np.ndarray, df: pd.DataFrame) -> pd.Series:
        return df[mask].groupby(["log_id", "frame"]).size()

    out = frames.set_index(["log_id", "frame"])
    out["lidar_miss"] = per_frame(truth["lidar_hit"].to_numpy() == 0, truth)
    out["lidar_fa"] = per_frame(lidar_status == "fa", lidar_out)
    out["camera_miss"] = per_frame((truth["camera_hit"].to_numpy() == 0) & (truth["care_cls"] == "car").to_numpy(), truth)
    out["camera_fa"] = per_frame(cam_status == "fa", cam_out)
    out["n_objects"] = per_frame((truth["kitti_type"] != "DontCare").to_numpy(), truth)
    out = out.fillna(0).astype(np.int64)
    out["errors"] = out[["lidar_miss", "lidar_fa", "camera_miss", "camera_fa"]].sum(axis=1)
    out["cost"] = 1 + out["n_objects"]
    return Truth(frames=out.reset_index(), lidar=lidar_out, camera=cam_out, gt=truth)
