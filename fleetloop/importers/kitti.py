"""The KITTI tracking layout.

```
<root>/seqmap.txt                       optional: "<seq> empty 000000 <n_frames>" per sequence
<root>/calib/<seq>.txt                  P2, R0_rect, Tr_velo_to_cam (object-benchmark key names)
<root>/lidar_det/<detector>/<seq>.txt   comma-separated 3D detections (PointRCNN layout)
<root>/camera_trk/<tracker>/<seq>.txt   KITTI tracking result format (2D tracks)
<root>/camera_det/<detector>/<seq>.txt  optional: KITTI tracking format, track id ignored (2D detections)
<root>/label_02/<seq>.txt               ground truth (read by read_kitti_truth, never by load)
```

Frame indices are 0-based; 10 Hz, so ``timestamp_ns = frame * 100 ms``. Lidar boxes are
converted from rectified-camera coordinates (bottom centre, KITTI ``ry``) to the lidar frame
(centre, yaw about +z); scores are mapped to [0, 1] (see ``docs/schema.md``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from fleetloop.importers import LogFormatError
from fleetloop.schema import (
    CALIBRATION,
    CAMERA_DETECTIONS,
    FRAMES,
    LIDAR_DETECTIONS,
    TRACKS,
    DriveLogs,
)

FRAME_PERIOD_NS = 100_000_000  # 10 Hz

#: PointRCNN type codes.
POINTRCNN_CLASSES = {1: "pedestrian", 2: "car", 3: "cyclist"}
POINTRCNN_COLUMNS = ["frame", "type", "x1", "y1", "x2", "y2", "score", "h", "w", "l", "x", "y", "z", "ry", "alpha"]

#: KITTI object types onto the taxonomy (None: not an object class of ours).
KITTI_CLASSES = {
    "Car": "car", "Van": "car", "Truck": "car",
    "Pedestrian": "pedestrian", "Person": "pedestrian", "Person_sitting": "pedestrian",
    "Cyclist": "cyclist",
}
TRACKING_COLUMNS = [
    "frame", "track_id", "type", "truncated", "occluded", "alpha", "x1", "y1", "x2", "y2",
    "h", "w", "l", "x", "y", "z", "ry", "score",
]

#: Image size by the camera's focal length (recording setup); see the data README.
IMAGE_SIZES = {721.5377: (1242, 375), 707.0493: (1224, 370), 718.3351: (1238, 374), 718.856: (1241, 376)}
CALIB_KEYS = {"P2": 12, "R0_rect": 9, "Tr_velo_to_cam": 12}


def _read_table(path: Path, columns: list[str], *, sep: str, numeric: list[str], min_cols: int) -> pd.DataFrame:
    """Parse a delimited text file fast; on any problem, find the exact line and field."""
    if path.stat().st_size == 0:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    try:
        df = pd.read_csv(path, sep=sep, header=None, engine="c", skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        _diagnose(path, columns, sep=sep, numeric=numeric, min_cols=min_cols)
        raise LogFormatError(path, f"cannot parse: {exc}") from exc
    df = df.dropna(axis=1, how="all")  # trailing separators
    ok = df.shape[1] >= min_cols and all(
        pd.api.types.is_numeric_dtype(df[i]) for i, c in enumerate(columns[: df.shape[1]]) if c in numeric
    )
    if not ok or df.iloc[:, : len(columns)].isna().to_numpy()[:, : min_cols].any():
        _diagnose(path, columns, sep=sep, numeric=numeric, min_cols=min_cols)
        raise LogFormatError(path, "unexpected content")
    df = df.iloc[:, : len(columns)]
    df.columns = columns[: df.shape[1]]
    return df


def _diagnose(path: Path, columns: list[str], *, sep: str, numeric: list[str], min_cols: int) -> None:
    """Raise LogFormatError for the first bad line/field (slow path, only after a failure)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.strip().split(",") if sep == "," else line.split()
            parts = [p.strip() for p in parts]
            if len(parts) < min_cols:
                missing = columns[len(parts)] if len(parts) < len(columns) else "?"
                raise LogFormatError(
                    path, f"expected at least {min_cols} fields, found {len(parts)}", line=lineno, field=missing
                )
            for name, value in zip(columns, parts):
                if name in numeric:
                    try:
                        float(value)
                    except ValueError:
                        raise LogFormatError(path, f"not a number: {value!r}", line=lineno, field=name) from None
                    if name in ("frame", "track_id", "type") and not float(value).is_integer():
                        raise LogFormatError(path, f"not an integer: {value!r}", line=lineno, field=name)


def read_calibration(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise LogFormatError(path, "calibration file is missing")
    values: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        key, _, rest = line.partition(":")
        key = key.strip()
        if key not in CALIB_KEYS:
            continue
        try:
            arr = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError as exc:
            raise LogFormatError(path, f"not a number ({exc})", line=lineno, field=key) from None
        if arr.size != CALIB_KEYS[key] or not np.isfinite(arr).all():
            raise LogFormatError(
                path, f"expected {CALIB_KEYS[key]} finite numbers, found {arr.size}", line=lineno, field=key
            )
        values[key] = arr
    for key in CALIB_KEYS:
        if key not in values:
            raise LogFormatError(path, "missing calibration entry", field=key)
    return values


def image_size_for(P: np.ndarray) -> tuple[int, int]:
    focal = float(P[0])
    best = min(IMAGE_SIZES, key=lambda f: abs(f - focal))
    return IMAGE_SIZES[best]


def lidar_to_cam_matrix(calib: dict[str, np.ndarray]) -> np.ndarray:
    """3x4 matrix mapping lidar points to the rectified camera frame."""
    R0 = np.eye(4)
    R0[:3, :3] = calib["R0_rect"].reshape(3, 3)
    Tr = np.eye(4)
    Tr[:3, :4] = calib["Tr_velo_to_cam"].reshape(3, 4)
    return (R0 @ Tr)[:3]


def cam_boxes_to_lidar(df: pd.DataFrame, lidar_to_cam: np.ndarray) -> dict[str, np.ndarray]:
    """KITTI camera-frame boxes (bottom centre, ry) to lidar-frame boxes (centre, yaw)."""
    M = np.eye(4)
    M[:3] = lidar_to_cam
    inv = np.linalg.inv(M)
    h = df["h"].to_numpy(np.float64)
    pts = np.stack(
        [df["x"].to_numpy(np.float64), df["y"].to_numpy(np.float64) - h / 2, df["z"].to_numpy(np.float64), np.ones(len(df))]
    )
    lid = (inv @ pts)[:3]
    yaw = -df["ry"].to_numpy(np.float64) - np.pi / 2
    yaw = (yaw + np.pi) % (2 * np.pi) - np.pi
    return {"x": lid[0], "y": lid[1], "z": lid[2], "yaw": yaw}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _table(columns: dict, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pydict({f.name: columns[f.name] for f in schema}, schema=schema)


class KittiTrackingImporter:
    """Reads the KITTI tracking layout. ``lidar_detector`` / ``camera_tracker`` pick a source
    when several are present (default: the only one, or the first in name order that carries
    confidences: ``ciwt`` before ``yolox_sort``)."""

    name = "kitti-tracking"

    def __init__(self, lidar_detector: str | None = None, camera_tracker: str | None = None, camera_detector: str | None = None):
        self.lidar_detector, self.camera_tracker, self.camera_detector = lidar_detector, camera_tracker, camera_detector

    def list_logs(self, root: Path) -> list[str]:
        calib = root / "calib"
        if not calib.is_dir():
            raise LogFormatError(root, "not a KITTI tracking layout: no calib/ directory")
        return sorted(p.stem for p in calib.glob("*.txt"))

    @staticmethod
    def _source(root: Path, kind: str, chosen: str | None) -> Path | None:
        base = root / kind
        if not base.is_dir():
            if chosen:
                raise LogFormatError(base, f"{kind} source {chosen!r} requested but {base} does not exist")
            return None
        names = sorted(p.name for p in base.iterdir() if p.is_dir())
        if chosen:
            if chosen not in names:
                raise LogFormatError(base, f"no {kind} source {chosen!r}; available: {names}")
            return base / chosen
        if not names:
            return None
        preferred = [n for n in names if n == "ciwt"] or names
        return base / preferred[0]

    def _seqmap(self, root: Path) -> dict[str, int]:
        path = root / "seqmap.txt"
        out: dict[str, int] = {}
        if path.exists():
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 4 or not parts[3].isdigit():
                    raise LogFormatError(path, "expected '<seq> empty <start> <n_frames>'", line=lineno, field="n_frames")
                out[parts[0]] = int(parts[3])
        return out

    def load(self, root: Path, log_ids: list[str] | None = None) -> DriveLogs:
        root = Path(root)
        available = self.list_logs(root)
        if log_ids is None:
            log_ids = available
        missing = sorted(set(log_ids) - set(available))
        if missing:
            raise LogFormatError(root / "calib", f"no calibration for logs {missing}")
        lidar_dir = self._source(root, "lidar_det", self.lidar_detector)
        trk_dir = self._source(root, "camera_trk", self.camera_tracker)
        det_dir = self._source(root, "camera_det", self.camera_detector)
        seqmap = self._seqmap(root)
        parts = [self._load_one(root, s, seqmap.get(s), lidar_dir, trk_dir, det_dir) for s in log_ids]
        return DriveLogs.concat(parts)

    def _load_one(self, root, seq, n_frames, lidar_dir, trk_dir, det_dir) -> DriveLogs:
        calib = read_calibration(root / "calib" / f"{seq}.txt")
        P = calib["P2"]
        l2c = lidar_to_cam_matrix(calib)
        width, height = image_size_for(P)
        max_frame = -1

        lidar = LIDAR_DETECTIONS.empty_table()
        if lidar_dir is not None and (lidar_dir / f"{seq}.txt").exists():
            path = lidar_dir / f"{seq}.txt"
            df = _read_table(path, POINTRCNN_COLUMNS, sep=",", numeric=POINTRCNN_COLUMNS, min_cols=15)
            bad = ~df["type"].isin(list(POINTRCNN_CLASSES))
            if bad.any():
                line = int(np.flatnonzero(bad.to_numpy())[0]) + 1
                raise LogFormatError(path, f"unknown type code {df['type'][bad].iloc[0]!r}", line=line, field="type")
            df = df.sort_values("frame", kind="stable").reset_index(drop=True)
            frame = df["frame"].to_numpy(np.int32)
            det_id = (np.arange(len(df)) - np.searchsorted(frame, frame, side="left")).astype(np.int32)
            box = cam_boxes_to_lidar(df, l2c)
            max_frame = max(max_frame, int(frame.max(initial=-1)))
            lidar = _table(
                {
                    "log_id": [seq] * len(df), "frame": frame, "det_id": det_id,
                    "cls": df["type"].map(POINTRCNN_CLASSES).to_numpy(object),
                    "score": _sigmoid(df["score"].to_numpy(np.float64)).astype(np.float32),
                    "x": box["x"].astype(np.float32), "y": box["y"].astype(np.float32), "z": box["z"].astype(np.float32),
                    "l": df["l"].to_numpy(np.float32), "w": df["w"].to_numpy(np.float32), "h": df["h"].to_numpy(np.float32),
                    "yaw": box["yaw"].astype(np.float32),
                },
                LIDAR_DETECTIONS,
            )

        tracks = TRACKS.empty_table()
        if trk_dir is not None and (trk_dir / f"{seq}.txt").exists():
            df = _read_tracking(trk_dir / f"{seq}.txt")
            max_frame = max(max_frame, int(df["frame"].max()) if len(df) else -1)
            score = df["score"].to_numpy(np.float64) if "score" in df else np.full(len(df), -1.0)
            has_conf = bool(len(score)) and not np.all(score == score[0]) and not np.all(score < 0)
            tracks = _table(
                {
                    "log_id": [seq] * len(df), "frame": df["frame"].to_numpy(np.int32),
                    "track_id": df["track_id"].to_numpy(np.int64), "sensor": ["camera"] * len(df),
                    "cls": df["cls"].to_numpy(object),
                    "score": pa.array(score / (score + 1.0), pa.float32()) if has_conf else pa.nulls(len(df), pa.float32()),
                    "state": ["confirmed"] * len(df),
                    **{c: df[c].to_numpy(np.float32) for c in ("x1", "y1", "x2", "y2")},
                },
                TRACKS,
            )

        camera = CAMERA_DETECTIONS.empty_table()
        if det_dir is not None and (det_dir / f"{seq}.txt").exists():
            df = _read_tracking(det_dir / f"{seq}.txt")
            frame = df["frame"].to_numpy(np.int32)
            max_frame = max(max_frame, int(frame.max(initial=-1)))
            score = df["score"].to_numpy(np.float64) if "score" in df else np.zeros(len(df))
            camera = _table(
                {
                    "log_id": [seq] * len(df), "frame": frame,
                    "det_id": (np.arange(len(df)) - np.searchsorted(frame, frame, side="left")).astype(np.int32),
                    "cls": df["cls"].to_numpy(object),
                    "score": np.clip(score, 0, None) / (np.clip(score, 0, None) + 1.0),
                    **{c: df[c].to_numpy(np.float32) for c in ("x1", "y1", "x2", "y2")},
                },
                CAMERA_DETECTIONS,
            )

        n = n_frames if n_frames is not None else max_frame + 1
        if max_frame >= n:
            raise LogFormatError(root / "seqmap.txt", f"log {seq} has outputs at frame {max_frame} but only {n} frames")
        frames = np.arange(n, dtype=np.int32)
        unknown = ["unknown"] * n
        frames_t = _table(
            {
                "log_id": [seq] * n, "frame": frames, "timestamp_ns": frames.astype(np.int64) * FRAME_PERIOD_NS,
                "image_uri": [None] * n, "vehicle": ["kitti"] * n, "weather": unknown, "time_of_day": unknown,
                "place": unknown,
            },
            FRAMES,
        )
        calib_t = _table(
            {"log_id": [seq], "P": [P.tolist()], "lidar_to_cam": [l2c.ravel().tolist()],
             "image_width": [width], "image_height": [height]},
            CALIBRATION,
        )
        return DriveLogs(frames=frames_t, lidar_detections=lidar, camera_detections=camera, tracks=tracks, calibration=calib_t)


def _read_tracking(path: Path) -> pd.DataFrame:
    """A KITTI tracking-format file (tracker output or ground truth), classes mapped."""
    numeric = [c for c in TRACKING_COLUMNS if c != "type"]
    df = _read_table(path, TRACKING_COLUMNS, sep=r"\s+", numeric=numeric, min_cols=10)
    if "score" not in df:
        df["score"] = -1.0
    df["frame"] = df["frame"].astype(np.int64)
    df["track_id"] = df["track_id"].astype(np.int64)
    df["cls"] = df["type"].map(KITTI_CLASSES)
    df = df[df["cls"].notna()].sort_values("frame", kind="stable").reset_index(drop=True)
    return df


def read_kitti_truth(root: Path | str, log_ids: list[str] | None = None) -> pa.Table:
    """Ground truth from ``label_02``: one row per labelled object, all KITTI types kept.

    Columns: log_id, frame, track_id, kitti_type, cls (taxonomy class, null for DontCare/Misc/
    Tram), truncated, occluded, x1, y1, x2, y2 (pixels)."""
    root = Path(root)
    label_dir = root / "label_02"
    if not label_dir.is_dir():
        raise LogFormatError(root, "no label_02/ ground truth directory")
    seqs = log_ids or sorted(p.stem for p in label_dir.glob("*.txt"))
    frames = []
    numeric = [c for c in TRACKING_COLUMNS if c not in ("type", "score")]
    for seq in seqs:
        path = label_dir / f"{seq}.txt"
        if not path.exists():
            raise LogFormatError(path, "ground-truth file is missing")
        df = _read_table(path, TRACKING_COLUMNS[:17], sep=r"\s+", numeric=numeric, min_cols=17)
        frames.append(
            pd.DataFrame(
                {
                    "log_id": seq, "frame": df["frame"].astype(np.int32), "track_id": df["track_id"].astype(np.int64),
                    "kitti_type": df["type"].astype(str), "cls": df["type"].map(KITTI_CLASSES),
                    "truncated": df["truncated"].astype(np.float32), "occluded": df["occluded"].astype(np.int32),
                    **{c: df[c].astype(np.float32) for c in ("x1", "y1", "x2", "y2")},
                }
            )
        )
    return pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
