"""Small, valid drive logs built in code (no KITTI needed), for importer and validation tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from fleetloop.schema import CALIBRATION, CAMERA_DETECTIONS, FRAMES, LIDAR_DETECTIONS, TRACKS, DriveLogs

# KITTI sequence 0001's camera (P2) and its lidar->rectified-camera transform (R0_rect @ Tr_velo_to_cam)
P2 = [721.5377, 0.0, 609.5593, 44.85728, 0.0, 721.5377, 172.854, 0.2163791, 0.0, 0.0, 1.0, 0.002745884]
_R0 = np.array([0.9999239, 0.00983776, -0.007445048, -0.009869795, 0.9999421, -0.004278459,
                0.007402527, 0.004351614, 0.9999631]).reshape(3, 3)
_TR = np.array([0.007533745, -0.9999714, -0.000616602, -0.004069766, 0.01480249, 0.0007280733,
                -0.9998902, -0.07631618, 0.9998621, 0.00752379, 0.01480755, -0.2717806]).reshape(3, 4)
LIDAR_TO_CAM = (_R0 @ _TR).ravel().tolist()


def _table(cols: dict, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pydict({f.name: cols[f.name] for f in schema}, schema=schema)


def make_log(log_id: str, n_frames: int = 20, seed: int = 0) -> DriveLogs:
    """One valid log: 2 lidar and 2 camera detections and 2 camera tracks per frame."""
    rng = np.random.default_rng(seed)
    frame = np.arange(n_frames, dtype=np.int32)
    per = np.repeat(frame, 2)
    k = len(per)
    det_id = np.tile(np.arange(2, dtype=np.int32), n_frames)
    x1 = rng.uniform(100, 900, k).astype(np.float32)
    y1 = rng.uniform(150, 200, k).astype(np.float32)
    w = rng.uniform(20, 200, k).astype(np.float32)
    h = rng.uniform(20, 120, k).astype(np.float32)
    cls = np.tile(np.array(["car", "pedestrian"], dtype=object), n_frames)
    frames = _table(
        {
            "log_id": [log_id] * n_frames, "frame": frame,
            "timestamp_ns": 1_700_000_000_000_000_000 + frame.astype(np.int64) * 100_000_000,
            "image_uri": [f"s3://fleet/{log_id}/{i:06d}.png" for i in frame], "vehicle": ["veh-1"] * n_frames,
            "weather": ["rain"] * n_frames, "time_of_day": ["night"] * n_frames, "place": ["test-track"] * n_frames,
        },
        FRAMES,
    )
    lidar = _table(
        {
            "log_id": [log_id] * k, "frame": per, "det_id": det_id, "cls": cls,
            "score": rng.uniform(0.05, 0.99, k).astype(np.float32),
            "x": rng.uniform(5, 60, k).astype(np.float32), "y": rng.uniform(-10, 10, k).astype(np.float32),
            "z": rng.uniform(-1.5, -0.5, k).astype(np.float32),
            "l": np.where(cls == "car", 4.2, 0.8).astype(np.float32), "w": np.where(cls == "car", 1.7, 0.6).astype(np.float32),
            "h": np.where(cls == "car", 1.5, 1.8).astype(np.float32), "yaw": rng.uniform(-np.pi, np.pi, k).astype(np.float32),
        },
        LIDAR_DETECTIONS,
    )
    camera = _table(
        {
            "log_id": [log_id] * k, "frame": per, "det_id": det_id, "cls": cls,
            "score": rng.uniform(0.05, 0.99, k).astype(np.float32),
            "x1": x1, "y1": y1, "x2": x1 + w, "y2": y1 + h,
        },
        CAMERA_DETECTIONS,
    )
    tracks = _table(
        {
            "log_id": [log_id] * k, "frame": per, "track_id": det_id.astype(np.int64), "sensor": ["camera"] * k,
            "cls": cls, "score": rng.uniform(0.1, 0.9, k).astype(np.float32), "state": ["confirmed"] * k,
            "x1": x1, "y1": y1, "x2": x1 + w, "y2": y1 + h,
        },
        TRACKS,
    )
    calibration = _table(
        {"log_id": [log_id], "P": [P2], "lidar_to_cam": [LIDAR_TO_CAM], "image_width": [1242], "image_height": [375]},
        CALIBRATION,
    )
    return DriveLogs(frames=frames, lidar_detections=lidar, camera_detections=camera, tracks=tracks, calibration=calibration)


def make_logs(log_ids: list[str], n_frames: int = 20) -> DriveLogs:
    return DriveLogs.concat([make_log(log_id, n_frames, seed=i) for i, log_id in enumerate(log_ids)])


def replace_values(logs: DriveLogs, table: str, column: str, log_id: str, rows: list[int], value) -> DriveLogs:
    """A copy of ``logs`` where ``column`` of the given rows (positions within ``log_id``'s rows of
    ``table``) holds ``value``."""
    t = getattr(logs, table)
    positions = np.flatnonzero(np.asarray(t["log_id"].to_pylist(), dtype=object) == log_id)[rows]
    values = t[column].to_pylist()
    for p in positions:
        values[p] = value
    i = t.schema.get_field_index(column)
    t = t.set_column(i, t.schema.field(i), pa.array(values, t.schema.field(i).type))
    return DriveLogs(**{**logs.tables(), table: t})
