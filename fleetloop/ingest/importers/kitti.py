"""The KITTI tracking layout.

```
<root>/seqmap.txt                       optional: "<seq> empty 000000 <n_frames>" per sequence
<root>/calib/<seq>.txt                  P2, R0_rect, Tr_velo_to_cam (raw tracking names R_rect, Tr_velo_cam too)
<root>/lidar_det/<detector>/<seq>.txt   comma-separated 3D detections (PointRCNN layout)
<root>/camera_trk/<tracker>/<seq>.txt   KITTI tracking result format (2D tracks)
<root>/camera_det/<detector>/<seq>.txt  optional: KITTI tracking format, track id ignored (2D detections)
<root>/label_02/<seq>.txt               ground truth (read by read_kitti_truth, never by load)
```

Frame indices are 0-based; 10 Hz, so ``timestamp_ns = frame * 100 ms``. Lidar boxes are
converted from rectified-camera coordinates (bottom centre, KITTI ``ry``) to the lidar frame
(centre, yaw about +z); scores are mapped to [0, 1] (see ``docs/schema.md``).

Parsing is vectorised (pandas' C reader, whole-column checks); only when a check fails is the
file re-read line by line, to raise :class:`LogFormatError` naming the first bad line and field.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from fleetloop.ingest.importers import LogFormatError
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
#: KITTI types that are labelled but are not classes of ours (dropped from tracker outputs).
KITTI_OTHER_TYPES = ("DontCare", "Misc", "Tram")
TRACKING_COLUMNS = [
    "frame", "track_id", "type", "truncated", "occluded", "alpha", "x1", "y1", "x2", "y2",
    "h", "w", "l", "x", "y", "z", "ry", "score",
]

#: Image size by the camera's focal length (recording setup); see the data README.
IMAGE_SIZES = {721.5377: (1242, 375), 707.0493: (1224, 370), 718.3351: (1238, 374), 718.856: (1241, 376)}
CALIB_KEYS = {"P2": 12, "R0_rect": 9, "Tr_velo_to_cam": 12}


@dataclass(frozen=True)
class _Layout:
    """What a delimited text file must hold: column names, which are numbers (finite), which
    are non-negative integers, and which take values from a fixed set."""

    columns: list[str]
    sep: str
    min_cols: int
    numeric: frozenset[str] = frozenset()
    integer: frozenset[str] = frozenset()  # non-negative integers (frame indices, ...)
    whole: frozenset[str] = frozenset()  # integers, any sign (track ids: ground truth uses -1)
    allowed: dict[str, frozenset] = field(default_factory=dict)


def _read_table(path: Path, layout: _Layout) -> pd.DataFrame:
    """Parse a delimited text file fast (pandas C parser, vectorised checks); on any problem,
    re-read it line by line to name the first bad line and field (slow path, failures only)."""
    columns = layout.columns
    empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    try:
        if path.stat().st_size == 0:
            return empty
        df = pd.read_csv(path, sep=layout.sep, header=None, engine="c", skipinitialspace=True, dtype=None)
    except FileNotFoundError:
        raise LogFormatError(path, "file is missing") from None
    except pd.errors.EmptyDataError:  # only blank lines
        return empty
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        _diagnose(path, layout)
        raise LogFormatError(path, f"cannot parse: {exc}") from None
    if df.shape[1] < layout.min_cols or not _content_ok(df, layout):
        _diagnose(path, layout)
        raise LogFormatError(path, "unexpected content")  # not reached: _diagnose names the line
    df = df.iloc[:, : len(columns)]
    df.columns = columns[: df.shape[1]]
    return df


def _content_ok(df: pd.DataFrame, layout: _Layout) -> bool:
    """Vectorised: every numeric field a finite number, integers integral, sets respected.
    A short line shows up here as NaN in its missing fields, a long first line as a trailing
    column that is NaN on the other lines."""
    for i in range(len(layout.columns), df.shape[1]):  # extra fields: on every line or on none
        if df[i].isna().any() and not df[i].isna().all():
            return False
    for i, name in enumerate(layout.columns[: df.shape[1]]):
        col = df[i]
        if name in layout.numeric:
            if not pd.api.types.is_numeric_dtype(col):
                return False
            values = col.to_numpy(np.float64)
            if not np.isfinite(values).all():
                return False
            if (name in layout.integer or name in layout.whole) and not (values == np.floor(values)).all():
                return False
            if name in layout.integer and (values < 0).any():
                return False
            if name in layout.allowed and not np.isin(values, list(layout.allowed[name])).all():
                return False
        elif name in layout.allowed:
            if col.isna().any() or not col.astype(str).isin(layout.allowed[name]).all():
                return False
    return True


def _diagnose(path: Path, layout: _Layout) -> None:
    """Raise LogFormatError for the first bad line/field."""
    columns = layout.columns
    with open(path, encoding="utf-8", errors="replace") as fh:
        rows = [
            (lineno, [p.strip() for p in (line.strip().split(",") if layout.sep == "," else line.split())])
            for lineno, line in enumerate(fh, 1)
            if line.strip()
        ]
    counts = Counter(len(parts) for _, parts in rows)
    width = max(counts, key=lambda k: (counts[k], -k)) if counts else 0  # the usual field count
    for lineno, parts in rows:
        if len(parts) < layout.min_cols:
            missing = columns[len(parts)] if len(parts) < len(columns) else None
            raise LogFormatError(
                path, f"expected at least {layout.min_cols} fields, found {len(parts)}", line=lineno, field=missing
            )
        if len(parts) != width:  # a short line names its first missing field
            missing = columns[len(parts)] if len(parts) < min(width, len(columns)) else None
            raise LogFormatError(
                path, f"expected {width} fields (as on most lines), found {len(parts)}", line=lineno, field=missing
            )
        for name, value in zip(columns, parts):
            if name in layout.numeric:
                try:
                    number = float(value)
                except ValueError:
                    raise LogFormatError(path, f"not a number: {value!r}", line=lineno, field=name) from None
                if not np.isfinite(number):
                    raise LogFormatError(path, f"not a finite number: {value!r}", line=lineno, field=name)
                if (name in layout.integer or name in layout.whole) and not number.is_integer():
                    raise LogFormatError(path, f"not an integer: {value!r}", line=lineno, field=name)
                if name in layout.integer and number < 0:
                    raise LogFormatError(path, f"must not be negative: {value!r}", line=lineno, field=name)
                if name in layout.allowed and number not in layout.allowed[name]:
                    raise LogFormatError(
                        path, f"unknown code {value!r}; expected one of {sorted(layout.allowed[name])}",
                        line=lineno, field=name,
                    )
            elif name in layout.allowed and value not in layout.allowed[name]:
                raise LogFormatError(
                    path, f"unknown value {value!r}; expected one of {sorted(layout.allowed[name])}",
                    line=lineno, field=name,
                )




#: Calibration key aliases: the raw KITTI tracking files use ``R_rect`` / ``Tr_velo_cam``
#: (and no colon after them); the object benchmark (and this project's slice) ``R0_rect`` /
#: ``Tr_velo_to_cam``.
CALIB_ALIASES = {"R_rect": "R0_rect", "Tr_velo_cam": "Tr_velo_to_cam"}


def read_calibration(path: Path) -> dict[str, np.ndarray]:
    """The entries of a KITTI calibration file fleetloop needs (``CALIB_KEYS``), validated."""
    if not path.exists():
        raise LogFormatError(path, "calibration file is missing")
    values: dict[str, np.ndarray] = {}
    text = path.read_text(encoding="utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        head, *rest = line.split()
        key = head.rstrip(":")
        if ":" in head[:-1]:  # "P2:1.0 ..." without a space
            key, _, first = head.partition(":")
            rest = [first, *rest]
        key = CALIB_ALIASES.get(key, key)
        if key not in CALIB_KEYS:
            continue
        try:
            arr = np.array([float(v) for v in rest], dtype=np.float64)
        except ValueError as exc:
            raise LogFormatError(path, f"not a number ({exc})", line=lineno, field=key) from None
        if arr.size != CALIB_KEYS[key]:
            raise LogFormatError(
                path, f"expected {CALIB_KEYS[key]} numbers, found {arr.size}", line=lineno, field=key
            )
        if not np.isfinite(arr).all():
            raise LogFormatError(path, "values must be finite numbers", line=lineno, field=key)
        values[key] = arr
    for key in CALIB_KEYS:
        if key not in values:
            raise LogFormatError(path, "missing calibration entry", field=key)
    return values


POINTRCNN_LAYOUT = _Layout(
    POINTRCNN_COLUMNS, sep=",", min_cols=15, numeric=frozenset(POINTRCNN_COLUMNS), integer=frozenset({"frame"}),
    allowed={"type": frozenset(float(k) for k in POINTRCNN_CLASSES)},
)
#: Tracker/detector outputs in the KITTI tracking format: 10 fields at least (up to the 2D box);
#: the 18th is the score when present; extra trailing fields are ignored.
TRACKING_LAYOUT = _Layout(
    TRACKING_COLUMNS, sep=r"\s+", min_cols=10, numeric=frozenset(c for c in TRACKING_COLUMNS if c != "type"),
    integer=frozenset({"frame"}), whole=frozenset({"track_id"}),
    allowed={"type": frozenset(KITTI_CLASSES) | frozenset(KITTI_OTHER_TYPES)},
)
LABEL_LAYOUT = _Layout(
    TRACKING_COLUMNS[:17], sep=r"\s+", min_cols=17, numeric=frozenset(c for c in TRACKING_COLUMNS[:17] if c != "type"),
    integer=frozenset({"frame"}), whole=frozenset({"track_id", "occluded"}),
    allowed={"type": frozenset(KITTI_CLASSES) | frozenset(KITTI_OTHER_TYPES)},
)


def image_size_for(P: np.ndarray) -> tuple[int, int]:
    """(width, height) of the camera image. Not in KITTI's calibration files: it follows from the
    recording setup, which P2's focal length identifies. For an unknown setup, twice the
    principal point (the principal point of a rectified KITTI camera is near the image centre)."""
    focal = float(P[0])
    best = min(IMAGE_SIZES, key=lambda f: abs(f - focal))
    if abs(best - focal) < 0.5:
        return IMAGE_SIZES[best]
    return int(round(2 * float(P[2]))), int(round(2 * float(P[6])))


def lidar_to_cam_matrix(calib: dict[str, np.ndarray]) -> np.ndarray:
    """3x4 matrix mapping lidar points to the rectified camera frame (R0_rect @ Tr_velo_to_cam)."""
    R0 = np.eye(4)
    R0[:3, :3] = calib["R0_rect"].reshape(3, 3)
    Tr = np.eye(4)
    Tr[:3, :4] = calib["Tr_velo_to_cam"].reshape(3, 4)
    return (R0 @ Tr)[:3]


def cam_boxes_to_lidar(df: pd.DataFrame, lidar_to_cam: np.ndarray) -> dict[str, np.ndarray]:
    """KITTI camera-frame boxes (bottom centre, ``ry`` about the camera's +y, which points down)
    to lidar-frame boxes (centre, ``yaw`` about +z, normalised to [-pi, pi))."""
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


def pointrcnn_score(logit: np.ndarray) -> np.ndarray:
    """PointRCNN's unbounded logit-like score -> [0, 1] (sigmoid)."""
    return (1.0 / (1.0 + np.exp(-np.asarray(logit, np.float64)))).astype(np.float32)


def tracker_score(score: np.ndarray) -> np.ndarray | None:
    """A KITTI-format tracker confidence -> [0, 1] as c / (c + 1) (CIWT scores are about 0 .. 38;
    negative values are clipped to 0). ``None`` when the tracker gives no confidence: the column
    is absent or holds only KITTI's -1 placeholder (YOLOX-SORT)."""
    score = np.asarray(score, np.float64)
    if score.size == 0 or np.all(score == -1.0):
        return None
    c = np.clip(score, 0.0, None)
    return (c / (c + 1.0)).astype(np.float32)


def _table(columns: dict, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pydict({f.name: columns[f.name] for f in schema}, schema=schema)


def _det_ids(frame: np.ndarray) -> np.ndarray:
    """Index of each row within its frame (``frame`` sorted)."""
    return (np.arange(len(frame)) - np.searchsorted(frame, frame, side="left")).astype(np.int32)


class KittiTrackingImporter:
    """Reads the KITTI tracking layout. ``lidar_detector`` / ``camera_tracker`` /
    ``camera_detector`` pick a source directory when several are present (default: the only
    one; for camera trackers ``ciwt`` first, as it carries confidences, else the first by name)."""

    name = "kitti-tracking"

    def __init__(self, lidar_detector: str | None = None, camera_tracker: str | None = None, camera_detector: str | None = None):
        self.lidar_detector, self.camera_tracker, self.camera_detector = lidar_detector, camera_tracker, camera_detector

    def list_logs(self, root: Path) -> list[str]:
        root = Path(root)
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
            for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
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
        log_ids = available if log_ids is None else list(dict.fromkeys(log_ids))
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
            df = _read_table(lidar_dir / f"{seq}.txt", POINTRCNN_LAYOUT)
            df = df.sort_values("frame", kind="stable").reset_index(drop=True)
            frame = df["frame"].to_numpy(np.int32)
            box = cam_boxes_to_lidar(df, l2c)
            max_frame = max(max_frame, int(frame.max(initial=-1)))
            lidar = _table(
                {
                    "log_id": [seq] * len(df), "frame": frame, "det_id": _det_ids(frame),
                    "cls": df["type"].astype(int).map(POINTRCNN_CLASSES).to_numpy(object),
                    "score": pointrcnn_score(df["score"].to_numpy(np.float64)),
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
            score = tracker_score(df["score"].to_numpy(np.float64))
            tracks = _table(
                {
                    "log_id": [seq] * len(df), "frame": df["frame"].to_numpy(np.int32),
                    "track_id": df["track_id"].to_numpy(np.int64), "sensor": ["camera"] * len(df),
                    "cls": df["cls"].to_numpy(object),
                    "score": pa.nulls(len(df), pa.float32()) if score is None else score,
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
            score = tracker_score(df["score"].to_numpy(np.float64))
            camera = _table(
                {
                    "log_id": [seq] * len(df), "frame": frame, "det_id": _det_ids(frame),
                    "cls": df["cls"].to_numpy(object),
                    # a detector without confidences: every detection counts as certain
                    "score": np.ones(len(df), np.float32) if score is None else score,
                    **{c: df[c].to_numpy(np.float32) for c in ("x1", "y1", "x2", "y2")},
                },
                CAMERA_DETECTIONS,
            )

        n = n_frames if n_frames is not None else max_frame + 1
        if max_frame >= n:
            raise LogFormatError(root / "seqmap.txt", f"log {seq} has outputs at frame {max_frame} but only {n} frames")
        if n == 0:
            raise LogFormatError(root / "seqmap.txt", f"log {seq} has no frames (no seqmap entry and no outputs)")
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
    """A KITTI tracking-format output file, classes mapped, other types dropped, sorted by frame."""
    df = _read_table(path, TRACKING_LAYOUT)
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
    for seq in seqs:
        path = label_dir / f"{seq}.txt"
        if not path.exists():
            raise LogFormatError(path, "ground-truth file is missing")
        df = _read_table(path, LABEL_LAYOUT)
        frames.append(
            pd.DataFrame(
                {
                    "log_id": pd.Series([seq] * len(df), dtype=object),
                    "frame": df["frame"].astype(np.int32), "track_id": df["track_id"].astype(np.int64),
                    "kitti_type": df["type"].astype(str), "cls": df["type"].map(KITTI_CLASSES),
                    "truncated": df["truncated"].astype(np.float32), "occluded": df["occluded"].astype(np.int32),
                    **{c: df[c].astype(np.float32) for c in ("x1", "y1", "x2", "y2")},
                }
            )
        )
    return pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
