"""A small generated fleet sample with injected perception errors (no real data needed).

A few vehicles drive a straight road past parked and moving cars, pedestrians and cyclists.
Every stream is derived from one ground truth, so the sensors agree except where an error was
injected on purpose: lidar misses (flicker) and false alarms, camera misses and false alarms,
low-confidence detections and a tracker identity switch. ``generate_sample`` returns the logs
and the table of injected errors, so tests and the README's main job can check that mining puts
the erroneous frames first.

    logs, injected = generate_sample(n_logs=3, n_frames=150, seed=0)
    write_sample("out/sample")          # parquet layout + injected_errors.csv
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from fleetloop.perception.geometry import project_boxes, projection_matrix
from fleetloop.schema import CALIBRATION, CAMERA_DETECTIONS, FRAMES, LIDAR_DETECTIONS, TRACKS, DriveLogs

# KITTI sequence 0001's camera P2 and lidar -> rectified camera transform (R0_rect @ Tr_velo_to_cam).
P2 = np.array([721.5377, 0.0, 609.5593, 44.85728, 0.0, 721.5377, 172.854, 0.2163791, 0.0, 0.0, 1.0, 0.002745884])
_R0 = np.array([0.9999239, 0.00983776, -0.007445048, -0.009869795, 0.9999421, -0.004278459,
                0.007402527, 0.004351614, 0.9999631]).reshape(3, 3)
_TR = np.array([0.007533745, -0.9999714, -0.000616602, -0.004069766, 0.01480249, 0.0007280733,
                -0.9998902, -0.07631618, 0.9998621, 0.00752379, 0.01480755, -0.2717806]).reshape(3, 4)
LIDAR_TO_CAM = (_R0 @ _TR).ravel()
WIDTH, HEIGHT = 1242, 375
FRAME_NS = 100_000_000
SIZES = {"car": (4.2, 1.7, 1.5), "pedestrian": (0.8, 0.6, 1.75), "cyclist": (1.8, 0.6, 1.7)}
INJECTED = pa.schema([("log_id", pa.string()), ("frame", pa.int32()), ("kind", pa.string()), ("object", pa.int64())])


def _objects(rng: np.random.Generator, n_frames: int, speed: float,
             class_mix: tuple[float, float, float] = (0.7, 0.2, 0.1)) -> dict[str, np.ndarray]:
    """World objects along the road: position at frame 0 (metres), velocity, class."""
    length = speed * n_frames + 80
    n = max(8, int(length / 9))
    cls = rng.choice(np.array(["car", "pedestrian", "cyclist"]), size=n, p=list(class_mix))
    x0 = rng.uniform(8, length, n)
    side = rng.choice([-1.0, 1.0], n)
    y = np.where(cls == "car", side * rng.uniform(3.5, 7.5, n), side * rng.uniform(5.0, 9.0, n))
    vx = np.where(cls == "car", rng.choice([0.0, 0.0, 0.6, -0.8], n), np.where(cls == "cyclist", 0.4, 0.1))
    return {"cls": cls, "x0": x0, "y": y, "vx": vx}


def _one_log(log_id: str, n_frames: int, rng: np.random.Generator, tags: dict[str, str],
             class_mix: tuple[float, float, float] = (0.7, 0.2, 0.1)):
    speed = rng.uniform(0.6, 1.2)  # metres per frame (6-12 m/s)
    obj = _objects(rng, n_frames, speed, class_mix)
    t = np.arange(n_frames)
    # object states per frame, lidar frame: x forward of the ego vehicle, y left
    X = obj["x0"][None, :] + obj["vx"][None, :] * t[:, None] - speed * t[:, None]
    Y = np.broadcast_to(obj["y"], X.shape)
    fi, oi = np.nonzero((X > 4) & (X < 55) & (np.abs(Y) < 0.9 * X))
    cls = obj["cls"][oi]
    lwh = np.array([SIZES[c] for c in cls]).reshape(-1, 3)
    yaw = np.where(obj["vx"][oi] < 0, np.pi, 0.0)
    boxes = np.column_stack([X[fi, oi], Y[fi, oi], np.full(fi.size, -1.73) + lwh[:, 2] / 2, lwh, yaw])
    M = projection_matrix(P2, LIDAR_TO_CAM)
    box2d, _, visible = project_boxes(boxes, M[None], np.array([WIDTH], np.float64), np.array([HEIGHT], np.float64))
    keep = (visible > 0.6) & ((box2d[:, 3] - box2d[:, 1]) > 18)
    fi, oi, cls, boxes, box2d = fi[keep], oi[keep], cls[keep], boxes[keep], box2d[keep]
    n = fi.size
    injected: list[tuple[int, str, int]] = []

    # --- lidar: every object, confident, except injected misses (1-2 frame flicker) and weak scores
    lidar_ok = np.ones(n, bool)
    lidar_score = rng.uniform(0.992, 0.9999, n)
    for i in rng.choice(n, size=max(1, n // 60), replace=False):
        lidar_ok[(oi == oi[i]) & (fi >= fi[i]) & (fi < fi[i] + rng.integers(1, 3))] = False
    weak = rng.random(n) < 0.02
    lidar_score[weak] = rng.uniform(0.5, 0.9, int(weak.sum()))
    for i in np.flatnonzero(~lidar_ok | weak):
        injected.append((int(fi[i]), "lidar_miss", int(oi[i])))
    # --- camera: every object, except injected runs of misses; boxes with pixel noise
    cam_ok = np.ones(n, bool)
    for i in rng.choice(n, size=max(1, n // 50), replace=False):
        cam_ok[(oi == oi[i]) & (fi >= fi[i]) & (fi < fi[i] + rng.integers(2, 6))] = False
    for i in np.flatnonzero(~cam_ok):
        injected.append((int(fi[i]), "camera_miss", int(oi[i])))
    cam_box = box2d + rng.normal(0, 1.5, box2d.shape)
    cam_score = rng.uniform(0.7, 0.99, n)

    # --- false alarms: isolated confident lidar boxes and short-lived camera boxes
    n_fa = max(2, n_frames // 25)
    fa_f = rng.integers(1, n_frames - 1, n_fa)
    fa_lidar = np.column_stack([rng.uniform(10, 40, n_fa), rng.uniform(-6, 6, n_fa), np.full(n_fa, -0.98),
                                np.tile(SIZES["car"], (n_fa, 1)), np.zeros(n_fa)])
    for f in fa_f:
        injected.append((int(f), "lidar_fa", -1))
    cfa_f = rng.integers(1, n_frames - 3, n_fa)
    x1 = rng.uniform(50, WIDTH - 200, n_fa)
    y1 = rng.uniform(150, 220, n_fa)
    cfa_box = np.column_stack([x1, y1, x1 + rng.uniform(40, 120, n_fa), y1 + rng.uniform(30, 80, n_fa)])
    for f in cfa_f:
        injected.append((int(f), "camera_fa", -2))

    def rows(frame, det_cls, score, box, kind):
        order = np.argsort(frame, kind="stable")
        frame = frame[order]
        det_id = np.arange(frame.size) - np.searchsorted(frame, frame)
        return frame, det_id, det_cls[order], score[order], box[order]

    lf, lid, lcls, lsc, lbox = rows(np.r_[fi[lidar_ok], fa_f], np.r_[cls[lidar_ok], np.full(n_fa, "car")],
                                    np.r_[lidar_score[lidar_ok], np.full(n_fa, 0.97)],
                                    np.vstack([boxes[lidar_ok], fa_lidar]), "lidar")
    lidar = pa.Table.from_pydict({
        "log_id": [log_id] * lf.size, "frame": lf.astype(np.int32), "det_id": lid.astype(np.int32), "cls": lcls,
        "score": lsc.astype(np.float32), **{k: lbox[:, j].astype(np.float32) for j, k in enumerate(["x", "y", "z", "l", "w", "h", "yaw"])},
    }, schema=LIDAR_DETECTIONS)
    cf, cid, ccls, csc, cbox = rows(np.r_[fi[cam_ok], cfa_f], np.r_[cls[cam_ok], np.full(n_fa, "car")],
                                    np.r_[cam_score[cam_ok], np.full(n_fa, 0.4)],
                                    np.vstack([cam_box[cam_ok], cfa_box]), "camera")
    camera = pa.Table.from_pydict({
        "log_id": [log_id] * cf.size, "frame": cf.astype(np.int32), "det_id": cid.astype(np.int32), "cls": ccls,
        "score": csc.astype(np.float32), **{k: cbox[:, j].astype(np.float32) for j, k in enumerate(["x1", "y1", "x2", "y2"])},
    }, schema=CAMERA_DETECTIONS)

    # --- camera tracker: the camera boxes of real objects, track id = object id, one identity switch
    tf, to = fi[cam_ok], oi[cam_ok].astype(np.int64)
    tid = to.copy()
    if tf.size:
        victim = to[rng.integers(tf.size)]
        frames_v = np.sort(tf[to == victim])
        if frames_v.size >= 6:
            switch_at = frames_v[frames_v.size // 2]
            tid[(to == victim) & (tf >= switch_at)] = 10_000 + victim
            injected.append((int(switch_at), "id_switch", int(victim)))
    order = np.lexsort((tid, tf))
    tracks = pa.Table.from_pydict({
        "log_id": [log_id] * tf.size, "frame": tf[order].astype(np.int32), "track_id": tid[order],
        "sensor": ["camera"] * tf.size, "cls": cls[cam_ok][order], "score": cam_score[cam_ok][order].astype(np.float32),
        "state": ["confirmed"] * tf.size,
        **{k: cam_box[cam_ok][order][:, j].astype(np.float32) for j, k in enumerate(["x1", "y1", "x2", "y2"])},
    }, schema=TRACKS)
    frames = pa.Table.from_pydict({
        "log_id": [log_id] * n_frames, "frame": t.astype(np.int32),
        "timestamp_ns": 1_767_225_600_000_000_000 + t.astype(np.int64) * FRAME_NS,
        "image_uri": [None] * n_frames, **{k: [v] * n_frames for k, v in tags.items()},
    }, schema=FRAMES)
    calibration = pa.Table.from_pydict({
        "log_id": [log_id], "P": [P2.tolist()], "lidar_to_cam": [LIDAR_TO_CAM.tolist()],
        "image_width": [WIDTH], "image_height": [HEIGHT],
    }, schema=CALIBRATION)
    inj = pa.Table.from_pydict({
        "log_id": [log_id] * len(injected), "frame": [f for f, _, _ in injected],
        "kind": [k for _, k, _ in injected], "object": [o for _, _, o in injected],
    }, schema=INJECTED)
    truth = pa.Table.from_pydict({
        "log_id": [log_id] * n, "frame": fi.astype(np.int32), "track_id": oi.astype(np.int64), "cls": cls,
        **{k: np.clip(box2d[:, j], 0, (WIDTH, HEIGHT, WIDTH, HEIGHT)[j]).astype(np.float32)
           for j, k in enumerate(["x1", "y1", "x2", "y2"])},
    })
    return DriveLogs(frames=frames, lidar_detections=lidar, camera_detections=camera, tracks=tracks,
                     calibration=calibration), inj, truth


def generate_fleet(
    n_logs: int = 3,
    n_frames: int = 150,
    seed: int = 0,
    *,
    weathers: list[tuple[str, str]] | None = None,
    class_mix: tuple[float, float, float] = (0.7, 0.2, 0.1),
    prefix: str = "sample",
) -> tuple[DriveLogs, pa.Table, pa.Table]:
    """``n_logs`` logs of ``n_frames`` frames: (logs, injected errors, ground truth).

    ``weathers`` cycles (weather, time_of_day) over the logs; ``class_mix`` is the share of
    cars, pedestrians and cyclists. Ground truth has one 2D box (pixels) per visible object."""
    if n_logs < 1 or n_frames < 10:
        raise ValueError("a sample needs at least 1 log of at least 10 frames")
    if len(class_mix) != 3 or min(class_mix) < 0 or abs(sum(class_mix) - 1) > 1e-6:
        raise ValueError(f"class_mix must be three non-negative shares summing to 1, got {class_mix}")
    rng = np.random.default_rng(seed)
    weathers = weathers or [("clear", "day"), ("rain", "day"), ("clear", "night")]
    parts, inj, truth = [], [], []
    for k in range(n_logs):
        weather, tod = weathers[k % len(weathers)]
        tags = {"vehicle": f"sim-{k % 2 + 1}", "weather": weather, "time_of_day": tod, "place": "sample-road"}
        logs, injected, gt = _one_log(f"{prefix}-{k:03d}", n_frames, rng, tags, class_mix)
        parts.append(logs)
        inj.append(injected)
        truth.append(gt)
    return DriveLogs.concat(parts), pa.concat_tables(inj), pa.concat_tables(truth)


def generate_sample(n_logs: int = 3, n_frames: int = 150, seed: int = 0) -> tuple[DriveLogs, pa.Table]:
    """``n_logs`` logs of ``n_frames`` frames; returns (logs, injected errors)."""
    logs, injected, _ = generate_fleet(n_logs, n_frames, seed)
    return logs, injected


def write_sample(out: Path | str, n_logs: int = 3, n_frames: int = 150, seed: int = 0) -> list[Path]:
    """Write a generated sample in the parquet layout under ``out`` (plus injected_errors.csv)."""
    from fleetloop.ingest.importers.parquet import write_parquet_log

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    logs, injected = generate_sample(n_logs, n_frames, seed)
    dirs = write_parquet_log(logs, out)
    pacsv.write_csv(injected, out / "injected_errors.csv")
    return dirs
