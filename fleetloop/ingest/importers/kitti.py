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

Parsing is vectorised (pyarrow's CSV reader, whole-column checks). Several logs load in one
pass per kind of file (every PointRCNN file of the batch parsed in one call, then each tracker's,
with the layout's column types declared, and every conversion on whole columns); whenever that
pass is in doubt the logs load one by one, and when a file's fast path or a check fails the file
is re-read line by line, to raise :class:`LogFormatError` naming the first bad line and field. Frame indices are 64-bit while parsed and bounded by :data:`MAX_FRAMES`.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

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
    sep: str  # "," or " " (whitespace: the slow path accepts any run of blanks)
    min_cols: int
    numeric: frozenset[str] = frozenset()
    integer: frozenset[str] = frozenset()  # non-negative integers (frame indices, ...)
    whole: frozenset[str] = frozenset()  # integers, any sign (track ids: ground truth uses -1)
    allowed: dict[str, frozenset] = field(default_factory=dict)
    bounded: frozenset[str] = frozenset({"frame"})  # integers that must stay below MAX_FRAMES


#: A log holds at most this many frames (frame indices 0 .. MAX_FRAMES - 1): 27.8 hours at 10 Hz.
#: Frame indices are parsed as 64-bit integers and checked against it before anything is
#: allocated per frame, so a stray huge index is a format error naming its line, never a silent
#: wrap-around to 32 bits or gigabytes of empty frames. ``KittiTrackingImporter(max_frames=...)``
#: changes it (at most 2**31 - 1: the schema's ``frame`` is int32).
MAX_FRAMES = 1_000_000
_I32_MAX = 2**31 - 1


def _read_table(path: Path, layout: _Layout, max_frames: int = MAX_FRAMES) -> dict[str, np.ndarray]:
    """Parse a delimited text file: pyarrow's multithreaded CSV reader and whole-column checks.
    Whenever the fast path fails or a check does not hold, the file is re-read line by line
    (:func:`_read_slow`), which names the first bad line and field, or parses what the fast
    path could not (runs of several blanks between fields). Returns column name -> array
    (``type``: object array of strings; numbers: float64, except integer columns: int64)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise LogFormatError(path, "file is missing") from None
    except OSError as exc:
        raise LogFormatError(path, f"cannot read: {exc.strerror or exc}") from None
    if path.is_dir():
        raise LogFormatError(path, "is a directory, not a file")
    if size == 0:
        return _empty(layout)
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(autogenerate_column_names=True, block_size=1 << 22, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=layout.sep, quote_char=False, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(null_values=[""], strings_can_be_null=False),
        )
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return _empty(layout)
        return _read_slow(path, layout, max_frames)
    except OSError as exc:
        raise LogFormatError(path, f"cannot read: {exc.strerror or exc}") from None
    out = _fast_columns(table, layout, max_frames)
    return out if out is not None else _read_slow(path, layout, max_frames)


def _read_batch(paths: list[Path], layout: _Layout, max_frames: int = MAX_FRAMES
                ) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """The fast path of :func:`_read_table` over several files at once: their bytes, read into
    one buffer, are parsed in one pyarrow call. Returns (columns, rows of each file), or None
    when anything is in doubt (a file that cannot be read or changes size while read, blank
    lines or carriage returns, which would blur where one file's rows end, a parse error, a
    failed check): the caller then reads file by file."""
    try:
        sizes = [path.stat().st_size for path in paths]
    except OSError:
        return None
    buf = np.empty(sum(sizes) + len(paths), np.uint8)  # room for a missing final newline per file
    ends = np.zeros(len(paths) + 1, np.int64)
    pos = 0
    for k, (path, size) in enumerate(zip(paths, sizes, strict=True)):
        try:
            with open(path, "rb", buffering=0) as fh:
                got = fh.readinto(buf.data[pos : pos + size]) if size else 0
        except OSError:
            return None
        if got != size:
            return None
        pos += size
        if size and buf[pos - 1] != 10:
            buf[pos] = 10
            pos += 1
        ends[k + 1] = pos
    data = buf[:pos]
    newlines = np.flatnonzero(data == 10)
    if not newlines.size:
        return _empty(layout), np.zeros(len(paths), np.int64)
    # a blank line (two newlines in a row, or a file starting with one) or a carriage return
    starts = ends[:-1][np.asarray(sizes) > 0]
    if (np.diff(newlines) == 1).any() or (data[starts] == 10).any() or (data == 13).any():
        return None
    counts = np.diff(np.searchsorted(newlines, ends, side="left"))
    # the layout's types, declared (inference costs a third of the parse): integer columns int64
    # (a value like "1.0" fails here and is read file by file), other numbers float64, the rest strings
    ints = layout.integer | layout.whole
    types = {f"f{i}": (pa.int64() if name in ints else pa.float64() if name in layout.numeric else pa.string())
             for i, name in enumerate(layout.columns)}
    try:
        table = pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(autogenerate_column_names=True, block_size=1 << 24, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=layout.sep, quote_char=False, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, OSError):
        return None
    if table.num_rows != counts.sum():
        return None
    out = _fast_columns(table.combine_chunks(), layout, max_frames)
    return (out, counts) if out is not None else None


def _empty(layout: _Layout) -> dict[str, np.ndarray]:
    return {c: (pa.array([], pa.string()) if c not in layout.numeric else
                np.zeros(0, np.int64 if c in layout.integer | layout.whole else np.float64)) for c in layout.columns}


def _fast_columns(table: pa.Table, layout: _Layout, max_frames: int) -> dict[str, np.ndarray] | None:
    """The columns of a file pyarrow parsed, or None when any check fails (the slow path then
    names the line). Whitespace layouts: a trailing blank on every line is an empty last column."""
    n_cols = table.num_columns
    if layout.sep == " " and n_cols > layout.min_cols and pa.types.is_null(table.schema.field(n_cols - 1).type):
        n_cols -= 1  # "... 1 \n": a trailing blank on every line
    if n_cols < layout.min_cols:
        return None
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(layout.columns[:n_cols]):
        col = table.column(i)
        if col.null_count:
            return None
        typ = col.type
        if name in layout.numeric:
            if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
                return None
            if name in layout.integer or name in layout.whole:
                if pa.types.is_floating(typ):
                    f = col.to_numpy()
                    if not (np.isfinite(f).all() and (f == np.floor(f)).all() and (np.abs(f) < 2**62).all()):
                        return None
                    values = f.astype(np.int64)
                else:
                    values = col.to_numpy().astype(np.int64, copy=False)
                    if values.size and (values.min() <= -(2**62) or values.max() >= 2**62):
                        return None  # out of range, as the diagnostic path says
                if name in layout.integer and values.size and values.min() < 0:
                    return None
                if name in layout.bounded and values.size and values.max() >= max_frames:
                    return None
            else:
                values = col.to_numpy().astype(np.float64, copy=False)
                if not np.isfinite(values).all():
                    return None
            if name in layout.allowed and not np.isin(values, np.array(sorted(layout.allowed[name]), np.float64)).all():
                return None
            out[name] = values
        else:
            if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
                return None  # bytes that are not UTF-8: the slow path names the line
            if not pa.types.is_string(typ) and not pa.types.is_large_string(typ):
                col = col.cast(pa.string())
            if name in layout.allowed and not pc.all(pc.is_in(col, value_set=pa.array(sorted(layout.allowed[name])))).as_py():
                return None
            out[name] = col
    return out


def _read_slow(path: Path, layout: _Layout, max_frames: int) -> dict[str, np.ndarray]:
    """Line by line: raises LogFormatError for the first bad line/field, else the columns."""
    columns = layout.columns
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            rows = [
                (lineno, [p.strip() for p in (line.strip().split(",") if layout.sep == "," else line.split())])
                for lineno, line in enumerate(fh, 1)
                if line.strip()
            ]
    except OSError as exc:
        raise LogFormatError(path, f"cannot read: {exc.strerror or exc}") from None
    counts = Counter(len(parts) for _, parts in rows)
    width = max(counts, key=lambda k: (counts[k], -k)) if counts else 0  # the usual field count
    parsed: dict[str, list] = {c: [] for c in columns[: min(width, len(columns))]}
    for lineno, parts in rows:
        if len(parts) < layout.min_cols:
            missing = columns[len(parts)] if len(parts) < len(columns) else None
            raise LogFormatError(
                path, f"expected at least {layout.min_cols} {'comma-separated' if layout.sep == ',' else 'space-separated'} "
                      f"fields, found {len(parts)}", line=lineno, field=missing
            )
        if len(parts) != width:  # a short line names its first missing field
            missing = columns[len(parts)] if len(parts) < min(width, len(columns)) else None
            raise LogFormatError(
                path, f"expected {width} fields (as on most lines), found {len(parts)}", line=lineno, field=missing
            )
        for name, value in zip(columns, parts, strict=False):
            if name in layout.numeric:
                try:
                    number = float(value)
                except ValueError:
                    raise LogFormatError(path, f"not a number: {value!r}", line=lineno, field=name) from None
                if not np.isfinite(number):
                    raise LogFormatError(path, f"not a finite number: {value!r}", line=lineno, field=name)
                if name in layout.integer or name in layout.whole:
                    if not number.is_integer():
                        raise LogFormatError(path, f"not an integer: {value!r}", line=lineno, field=name)
                    try:
                        number = int(value)
                    except ValueError:
                        number = int(number)
                    if name in layout.integer and number < 0:
                        raise LogFormatError(path, f"must not be negative: {value!r}", line=lineno, field=name)
                    if name in layout.bounded and number >= max_frames:
                        raise LogFormatError(
                            path, f"frame index {value} is beyond the bound of {max_frames:,} frames per log "
                            f"(largest index {max_frames - 1:,})", line=lineno, field=name,
                        )
                    if abs(number) >= 2**62:
                        raise LogFormatError(path, f"integer out of range: {value!r}", line=lineno, field=name)
                if name in layout.allowed and number not in layout.allowed[name]:
                    raise LogFormatError(
                        path, f"unknown code {value!r}; expected one of {sorted(layout.allowed[name])}",
                        line=lineno, field=name,
                    )
                parsed[name].append(number)
            else:
                if name in layout.allowed and value not in layout.allowed[name]:
                    raise LogFormatError(
                        path, f"unknown value {value!r}; expected one of {sorted(layout.allowed[name])}",
                        line=lineno, field=name,
                    )
                parsed[name].append(value)
    out: dict[str, np.ndarray] = {}
    for name, values in parsed.items():
        if name in layout.integer or name in layout.whole:
            out[name] = np.array(values, np.int64)
        elif name in layout.numeric:
            out[name] = np.array(values, np.float64)
        else:
            out[name] = pa.array(values, pa.string())
    return out if rows else _empty(layout)


#: Calibration key aliases: the raw KITTI tracking files use ``R_rect`` / ``Tr_velo_cam``
#: (and no colon after them); the object benchmark (and this project's slice) ``R0_rect`` /
#: ``Tr_velo_to_cam``.
CALIB_ALIASES = {"R_rect": "R0_rect", "Tr_velo_cam": "Tr_velo_to_cam"}


#: A calibration entry's name (``P2``, ``R0_rect``, ``Tr_imu_to_velo``, ...).
_CALIB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_calibration(path: Path) -> dict[str, np.ndarray]:
    """The entries of a KITTI calibration file fleetloop needs (``CALIB_KEYS``), validated: each
    present once, with the right count of finite numbers, and an invertible lidar -> camera map.
    Every other non-blank line must be an entry too (``<name>[:] <numbers>``; KITTI's files hold
    ``P0``, ``P1``, ``P3``, ``Tr_imu_to_velo``, which are read and not used), given once: a line
    that is not one (garbage, bytes that are not UTF-8, a value that is not a number) is an error
    naming it, never skipped."""
    if not path.exists():
        raise LogFormatError(path, "calibration file is missing")
    if path.is_dir():
        raise LogFormatError(path, "is a directory, not a calibration file")
    values: dict[str, np.ndarray] = {}
    seen_at: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")  # a byte-order mark is not part of a name
    except OSError as exc:
        raise LogFormatError(path, f"cannot read: {exc.strerror or exc}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        head, *rest = line.split()
        key = head.rstrip(":")
        if ":" in head[:-1]:  # "P2:1.0 ..." without a space
            key, _, first = head.partition(":")
            rest = [first, *rest]
        if not _CALIB_NAME.fullmatch(key):
            shown = line.strip()
            raise LogFormatError(path, "not a calibration entry (expected '<name>: <numbers>'): "
                                 f"{shown[:40] + ('...' if len(shown) > 40 else '')!r}", line=lineno)
        key = CALIB_ALIASES.get(key, key)
        if key in seen_at:
            raise LogFormatError(path, f"duplicate calibration entry (first on line {seen_at[key]})", line=lineno, field=key)
        seen_at[key] = lineno
        try:
            arr = np.array([float(v) for v in rest], dtype=np.float64)
        except ValueError as exc:
            raise LogFormatError(path, f"not a number ({exc})", line=lineno, field=key) from None
        if key not in CALIB_KEYS:  # an entry fleetloop does not use: numbers, but any count
            if not arr.size:
                raise LogFormatError(path, "calibration entry without values", line=lineno, field=key)
            continue
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
    if _image_size_or_none(values["P2"]) is None:
        P = values["P2"]
        raise LogFormatError(path, f"P2's focal length {P[0]:g} matches no KITTI camera, and its principal point "
                             f"({P[2]:g}, {P[6]:g}) gives no image size (twice it must be at most {_I32_MAX:,} px)",
                             line=seen_at["P2"], field="P2")
    M = np.eye(4)
    M[:3] = lidar_to_cam_matrix(values)
    if not np.isfinite(np.linalg.cond(M)) or np.linalg.cond(M) > 1e12:
        raise LogFormatError(path, "R0_rect @ Tr_velo_to_cam is singular (not a rigid transform)",
                             line=seen_at["Tr_velo_to_cam"], field="Tr_velo_to_cam")
    return values


POINTRCNN_LAYOUT = _Layout(
    POINTRCNN_COLUMNS, sep=",", min_cols=15, numeric=frozenset(POINTRCNN_COLUMNS), integer=frozenset({"frame"}),
    allowed={"type": frozenset(float(k) for k in POINTRCNN_CLASSES)},
)
#: Tracker/detector outputs in the KITTI tracking format: 10 fields at least (up to the 2D box);
#: the 18th is the score when present; extra trailing fields are ignored.
TRACKING_LAYOUT = _Layout(
    TRACKING_COLUMNS, sep=" ", min_cols=10, numeric=frozenset(c for c in TRACKING_COLUMNS if c != "type"),
    integer=frozenset({"frame"}), whole=frozenset({"track_id"}),
    allowed={"type": frozenset(KITTI_CLASSES) | frozenset(KITTI_OTHER_TYPES)},
)
LABEL_LAYOUT = _Layout(
    TRACKING_COLUMNS[:17], sep=" ", min_cols=17, numeric=frozenset(c for c in TRACKING_COLUMNS[:17] if c != "type"),
    integer=frozenset({"frame"}), whole=frozenset({"track_id", "occluded"}),
    allowed={"type": frozenset(KITTI_CLASSES) | frozenset(KITTI_OTHER_TYPES)},
)


def image_size_for(P: np.ndarray) -> tuple[int, int]:
    """(width, height) of the camera image. Not in KITTI's calibration files: it follows from the
    recording setup, which P2's focal length identifies. For an unknown setup, twice the
    principal point (the principal point of a rectified KITTI camera is near the image centre)."""
    size = _image_size_or_none(P)
    if size is None:
        raise ValueError(f"no image size for P2 = {list(P)}")  # read_calibration refuses such a file first
    return size


def _image_size_or_none(P: np.ndarray) -> tuple[int, int] | None:
    """:func:`image_size_for`, or None when the principal point gives no size an image can have
    (twice it not finite or beyond the int32 columns of the calibration table)."""
    focal = float(P[0])
    best = min(IMAGE_SIZES, key=lambda f: abs(f - focal))
    if abs(best - focal) < 0.5:
        return IMAGE_SIZES[best]
    with np.errstate(over="ignore"):
        wh = 2 * np.asarray([P[2], P[6]], np.float64)
    if not (np.isfinite(wh).all() and (wh < _I32_MAX).all()):
        return None
    return max(1, round(float(wh[0]))), max(1, round(float(wh[1])))


def lidar_to_cam_matrix(calib: dict[str, np.ndarray]) -> np.ndarray:
    """3x4 matrix mapping lidar points to the rectified camera frame (R0_rect @ Tr_velo_to_cam)."""
    R0 = np.eye(4)
    R0[:3, :3] = calib["R0_rect"].reshape(3, 3)
    Tr = np.eye(4)
    Tr[:3, :4] = calib["Tr_velo_to_cam"].reshape(3, 4)
    return (R0 @ Tr)[:3]


def cam_boxes_to_lidar(cols: dict[str, np.ndarray], lidar_to_cam: np.ndarray) -> dict[str, np.ndarray]:
    """KITTI camera-frame boxes (bottom centre, ``ry`` about the camera's +y, which points down)
    to lidar-frame boxes (centre, ``yaw`` about +z, normalised to [-pi, pi))."""
    M = np.eye(4)
    M[:3] = lidar_to_cam
    inv = np.linalg.inv(M)
    h = np.asarray(cols["h"], np.float64)
    x, y, z = (np.asarray(cols[c], np.float64) for c in ("x", "y", "z"))
    y = y - h / 2
    lid = [inv[i, 0] * x + inv[i, 1] * y + inv[i, 2] * z + inv[i, 3] for i in range(3)]
    yaw = -np.asarray(cols["ry"], np.float64) - np.pi / 2
    yaw = (yaw + np.pi) % (2 * np.pi) - np.pi
    return {"x": lid[0], "y": lid[1], "z": lid[2], "yaw": yaw}


def pointrcnn_score(logit: np.ndarray) -> np.ndarray:
    """PointRCNN's unbounded logit-like score -> [0, 1] (sigmoid). Its inverse is
    :func:`fleetloop.mine.params.logit`, so raw thresholds (e.g. AB3DMOT's per-class operating
    points) can be written as ``sigmoid(raw)`` in MiningParams."""
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


def _const(value: str, n: int) -> pa.Array:
    """A string column holding one value n times (no Python list of n strings)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value], pa.string())).cast(pa.string())


def _strings(codes: np.ndarray, values: list[str]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(values, pa.string())).cast(pa.string())


def _table(columns: dict, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_arrays([pa.array(columns[f.name], f.type) if not isinstance(columns[f.name], pa.Array)
                                 else columns[f.name].cast(f.type) for f in schema], schema=schema)


def _lidar_table(log_id: pa.Array, d: dict, det_id: np.ndarray, box: dict) -> pa.Table:
    """LIDAR_DETECTIONS from parsed PointRCNN columns ``d`` and their boxes in the lidar frame."""
    codes = np.searchsorted(np.array(sorted(POINTRCNN_CLASSES)), d["type"].astype(np.int64))
    return _table(
        {
            "log_id": log_id, "frame": d["frame"].astype(np.int32), "det_id": det_id,
            "cls": _strings(codes, [POINTRCNN_CLASSES[k] for k in sorted(POINTRCNN_CLASSES)]),
            "score": pointrcnn_score(d["score"]),
            "x": box["x"].astype(np.float32), "y": box["y"].astype(np.float32), "z": box["z"].astype(np.float32),
            "l": d["l"].astype(np.float32), "w": d["w"].astype(np.float32), "h": d["h"].astype(np.float32),
            "yaw": box["yaw"].astype(np.float32),
        },
        LIDAR_DETECTIONS,
    )


def _frames_table(log_id: pa.Array, frames: np.ndarray) -> pa.Table:
    """FRAMES rows of KITTI logs: 10 Hz timestamps, no images, tags unknown."""
    n = int(frames.size)
    unknown = _const("unknown", n)
    return _table(
        {
            "log_id": log_id, "frame": frames, "timestamp_ns": frames.astype(np.int64) * FRAME_PERIOD_NS,
            "image_uri": pa.nulls(n, pa.string()), "vehicle": _const("kitti", n), "weather": unknown,
            "time_of_day": unknown, "place": unknown,
        },
        FRAMES,
    )


def _calibration_table(log_ids: list[str], P: list[np.ndarray], l2c: list[np.ndarray],
                       sizes: list[tuple[int, int]]) -> pa.Table:
    return pa.Table.from_pydict(
        {"log_id": log_ids, "P": [p.tolist() for p in P], "lidar_to_cam": [m.ravel().tolist() for m in l2c],
         "image_width": [w for w, _ in sizes], "image_height": [h for _, h in sizes]},
        schema=CALIBRATION,
    )


def _det_ids(frame: np.ndarray) -> np.ndarray:
    """Index of each row within its frame (``frame`` sorted)."""
    return (np.arange(len(frame)) - np.searchsorted(frame, frame, side="left")).astype(np.int32)


def _sort_by_frame(cols: dict, frame_key: str = "frame") -> dict:
    frame = cols[frame_key]
    if frame.size < 2 or np.all(frame[1:] >= frame[:-1]):
        return cols
    order = np.argsort(frame, kind="stable")
    take = pa.array(order)
    return {k: (v.take(take) if isinstance(v, pa.Array | pa.ChunkedArray) else v[order]) for k, v in cols.items()}


#: KITTI types in a fixed order (codes for the class mapping below).
_TYPES = sorted(KITTI_CLASSES) + list(KITTI_OTHER_TYPES)
_TYPE_CLASS = [KITTI_CLASSES.get(t) for t in _TYPES]


class KittiTrackingImporter:
    """Reads the KITTI tracking layout.

    Every camera tracker under ``camera_trk/`` becomes its own stream of the ``tracks`` table,
    named ``camera:<tracker>`` in its ``sensor`` column (e.g. ``camera:ciwt``,
    ``camera:yolox_sort``); ``camera_tracker=`` loads only that one. ``lidar_detector`` /
    ``camera_detector`` pick a source directory when several are present (default: the only
    one, else the first by name). ``max_frames`` bounds the frames of a log (:data:`MAX_FRAMES`)."""

    name = "kitti-tracking"

    def __init__(self, lidar_detector: str | None = None, camera_tracker: str | None = None,
                 camera_detector: str | None = None, max_frames: int = MAX_FRAMES):
        if not 1 <= max_frames <= _I32_MAX:
            raise ValueError(f"max_frames must be in 1 .. {_I32_MAX}, got {max_frames}")
        self.lidar_detector, self.camera_tracker, self.camera_detector = lidar_detector, camera_tracker, camera_detector
        self.max_frames = max_frames

    def list_logs(self, root: Path) -> list[str]:
        """Every sequence with a calibration file or an output file of any source, or declared
        by ``seqmap.txt``: a sequence whose outputs lack their calibration, or whose files are all
        missing, is listed (and fails to load, naming the missing file or the seqmap line), never
        silently left out. Dot entries (``.ipynb_checkpoints/``, ``._0001.txt``) are ignored."""
        root = Path(root)
        calib = root / "calib"
        if not calib.is_dir():
            raise LogFormatError(root, "not a KITTI tracking layout: no calib/ directory")
        return sorted(self._file_names(root) | set(self._seqmap_names(root)))

    def _file_names(self, root: Path) -> set[str]:
        """The sequences with a calibration file or an output file of any source."""
        names = {p.stem for p in (root / "calib").glob("*.txt") if not _hidden(p)}
        for kind in ("lidar_det", "camera_trk", "camera_det"):
            for src in self.source_names(root, kind):
                names.update(p.stem for p in (root / kind / src).glob("*.txt") if not _hidden(p))
        return names

    @staticmethod
    def _seqmap_names(root: Path) -> list[str]:
        """The sequences ``seqmap.txt`` declares on well-formed lines (a bad line is an error of
        the sequence it names when loading; an unreadable seqmap fails loading, not listing)."""
        try:
            text = (root / "seqmap.txt").read_text(encoding="utf-8-sig", errors="replace")  # a byte-order mark is not part of a name
        except OSError:
            return []
        return [parts[0] for parts in map(str.split, text.splitlines()) if len(parts) == 4 and parts[3].isdecimal()]

    def log_location(self, root: Path, log_id: str) -> Path:
        """The file that anchors a sequence: its calibration."""
        return Path(root) / "calib" / f"{log_id}.txt"

    @staticmethod
    def source_names(root: Path, kind: str) -> list[str]:
        """The sources of one kind in a layout, e.g. ``source_names(root, "camera_trk")`` = the
        camera trackers (``[]`` when the layout has no such directory)."""
        base = Path(root) / kind
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not _hidden(p)) if base.is_dir() else []

    @staticmethod
    def _sources(root: Path, kind: str, chosen: str | None, every: bool = False) -> list[Path]:
        base = root / kind
        if not base.is_dir():
            if chosen:
                raise LogFormatError(base, f"{kind} source {chosen!r} requested but {base} does not exist")
            return []
        names = KittiTrackingImporter.source_names(root, kind)
        if chosen:
            if chosen not in names:
                raise LogFormatError(base, f"no {kind} source {chosen!r}; available: {names}")
            return [base / chosen]
        if not names:
            return []
        return [base / n for n in names] if every else [base / names[0]]

    def _seqmap(self, root: Path, known: list[str] | None = None
                ) -> tuple[dict[str, int], dict[str, LogFormatError], LogFormatError | None]:
        """``seqmap.txt`` line by line: (frames per sequence, the error of each sequence whose
        line is bad, an error concerning every sequence). A bad line quarantines only the
        sequence it names (its first field); a line that names no sequence of this layout (or
        names none at all) cannot be attributed, and concerns every sequence (the error names
        the file and the line). Two lines for one sequence are an error of that sequence."""
        path = root / "seqmap.txt"
        out: dict[str, int] = {}
        bad: dict[str, LogFormatError] = {}
        everyone: LogFormatError | None = None
        if not os.path.lexists(path):
            return out, bad, None
        try:
            text = path.read_text(encoding="utf-8-sig", errors="replace")
        except OSError as exc:
            return out, bad, LogFormatError(path, f"cannot read: {exc.strerror or exc}")
        known_ids = set(self.list_logs(root) if known is None else known)
        first_line: dict[str, int] = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            seq = parts[0]
            err = None
            if len(parts) != 4:
                err = LogFormatError(path, f"expected '<seq> empty <start> <n_frames>', found {len(parts)} fields",
                                     line=lineno, field="n_frames" if len(parts) < 4 else None)
            elif not parts[3].isdecimal():  # not isdigit: "²" is a digit int() refuses
                err = LogFormatError(path, f"n_frames is not a whole number: {parts[3]!r}", line=lineno, field="n_frames")
            elif int(parts[3]) > self.max_frames:
                err = LogFormatError(path, f"{int(parts[3]):,} frames is beyond the bound of {self.max_frames:,} frames "
                                     "per log", line=lineno, field="n_frames")
            elif seq in first_line:
                err = LogFormatError(path, f"second line for sequence {seq!r} (first on line {first_line[seq]})",
                                     line=lineno, field="seq")
            if err is None:
                first_line[seq] = lineno
                out[seq] = int(parts[3])
            elif seq in known_ids:
                bad.setdefault(seq, err)
            elif everyone is None:
                everyone = LogFormatError(path, f"{err.reason} (the line names no sequence of this layout, so it "
                                          "concerns every sequence)", line=lineno, field=err.field)
        return out, bad, everyone

    def load(self, root: Path, log_ids: list[str] | None = None) -> DriveLogs:
        root = Path(root)
        available = self.list_logs(root)
        log_ids = available if log_ids is None else list(dict.fromkeys(log_ids))
        missing = sorted(set(log_ids) - set(available))
        if missing:
            raise LogFormatError(root / "calib", f"no files for logs {missing}")
        lidar_dir = next(iter(self._sources(root, "lidar_det", self.lidar_detector)), None)
        trk_dirs = self._sources(root, "camera_trk", self.camera_tracker, every=True)
        det_dir = next(iter(self._sources(root, "camera_det", self.camera_detector)), None)
        seqmap, bad_lines, everyone = self._seqmap(root, available)
        if everyone is not None:
            raise everyone
        for s in log_ids:
            if s in bad_lines:
                raise bad_lines[s]
        declared_only = sorted(set(log_ids) - self._file_names(root))
        if declared_only:  # named by the seqmap, but every file of it is gone: never dropped silently
            s = declared_only[0]
            raise LogFormatError(root / "seqmap.txt", f"sequence {s!r} is listed here but has no files "
                                 f"(calib/{s}.txt and every output of it are missing)",
                                 line=_seqmap_line(root, s), field="seq")
        if len(log_ids) > 1:  # every file of a kind in one parse; any doubt: log by log (which names the line)
            batch = self._load_batch(root, log_ids, seqmap, lidar_dir, trk_dirs, det_dir)
            if batch is not None:
                return batch
        parts = [self._load_one(root, s, seqmap.get(s), lidar_dir, trk_dirs, det_dir) for s in log_ids]
        return DriveLogs.concat(parts)

    def _load_batch(self, root, log_ids, seqmap, lidar_dir, trk_dirs, det_dir) -> DriveLogs | None:
        """:meth:`_load_one` for many logs at once, with the same result: the files of one kind
        (lidar, each tracker, camera detections) are parsed in one pyarrow call and every
        conversion runs on whole columns. Returns None whenever the fast path is in doubt (a file
        it cannot parse, a blank line, a failed check); the caller then loads log by log, which
        names the file, line and field of the problem."""
        K = len(log_ids)
        bound = self.max_frames
        calib = [read_calibration(root / "calib" / f"{seq}.txt") for seq in log_ids]
        P = [c["P2"] for c in calib]
        l2c = [lidar_to_cam_matrix(c) for c in calib]
        sizes = [image_size_for(p) for p in P]
        log_values = pa.array(log_ids, pa.string())
        max_frame = np.full(K, -1, np.int64)
        max_dropped = np.full(K, -1, np.int64)  # of tracker lines of types not ours (dropped)

        def log_column(idx: np.ndarray) -> pa.Array:
            return pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32)), log_values).cast(pa.string())

        def read(directory: Path | None, layout: _Layout) -> tuple[dict, np.ndarray] | None:
            if directory is None:
                return _empty(layout), np.zeros(0, np.int64)
            have = [k for k, seq in enumerate(log_ids) if _present(directory / f"{seq}.txt")]
            got = _read_batch([directory / f"{log_ids[k]}.txt" for k in have], layout, bound)
            if got is None:
                return None
            cols, counts = got
            return cols, np.repeat(np.asarray(have, np.int64), counts)

        # lidar
        got = read(lidar_dir, POINTRCNN_LAYOUT)
        if got is None:
            return None
        d, log_idx = got
        key = (log_idx << 32) | d["frame"]
        if key.size and (key[1:] < key[:-1]).any():  # by log, then frame; stable like _sort_by_frame
            order = np.argsort(key, kind="stable")
            d = {k: v[order] for k, v in d.items()}
            log_idx, key = log_idx[order], key[order]
        frame = d["frame"]
        np.maximum.at(max_frame, log_idx, frame)
        starts = np.searchsorted(log_idx, np.arange(K + 1))
        box = {k: np.empty(frame.size) for k in ("x", "y", "z", "yaw")}
        for k in range(K):
            lo, hi = starts[k], starts[k + 1]
            if hi > lo:
                part = cam_boxes_to_lidar({c: d[c][lo:hi] for c in ("h", "x", "y", "z", "ry")}, l2c[k])
                for c in box:
                    box[c][lo:hi] = part[c]
        det_id = (np.arange(frame.size) - np.searchsorted(key, key, side="left")).astype(np.int32)
        lidar = _lidar_table(log_column(log_idx), d, det_id, box) if frame.size else LIDAR_DETECTIONS.empty_table()

        def tracking(directory: Path) -> tuple[dict, np.ndarray, np.ndarray] | None:
            """Classes mapped, other types dropped, score per file (None: all -1 -> null)."""
            got = read(directory, TRACKING_LAYOUT)
            if got is None:
                return None
            d, log_idx = got
            n = log_idx.size
            raw = d["score"] if "score" in d else np.full(n, -1.0)
            code = pc.index_in(d["type"], value_set=pa.array(_TYPES)).to_numpy(zero_copy_only=False).astype(np.int64)
            keep = np.flatnonzero(np.array([c is not None for c in _TYPE_CLASS])[code])
            if keep.size < n:  # a dropped line (DontCare, ...) beyond the seqmap's count is an error too
                dropped = np.ones(n, bool)
                dropped[keep] = False
                np.maximum.at(max_dropped, log_idx[dropped], d["frame"][dropped])
            # tracker_score per file, on the rows kept: a file whose scores are all -1 has none
            none = np.bincount(log_idx[keep], weights=(raw[keep] != -1.0), minlength=K) == 0
            c = np.clip(raw, 0.0, None)
            score = np.where(none[log_idx], np.nan, (c / (c + 1.0)).astype(np.float32))
            names = sorted(set(CLASSES_OF_KITTI))
            cls_code = np.array([names.index(c) if c is not None else -1 for c in _TYPE_CLASS])[code][keep]
            cols = {c: d[c][keep] for c in ("frame", "track_id", "x1", "y1", "x2", "y2")}
            cols["score"] = score[keep]
            return cols, log_idx[keep], cls_code

        names = sorted(set(CLASSES_OF_KITTI))
        parts, tracker_of = [], []
        for t, trk_dir in enumerate(trk_dirs):
            tracked = tracking(trk_dir)
            if tracked is None:
                return None
            parts.append(tracked)
            tracker_of.append(np.full(tracked[1].size, t, np.int64))
        if parts and sum(p[1].size for p in parts):
            cols = {c: np.concatenate([p[0][c] for p in parts]) for c in parts[0][0]}
            t_log = np.concatenate([p[1] for p in parts])
            t_cls = np.concatenate([p[2] for p in parts])
            t_trk = np.concatenate(tracker_of)
            order = np.lexsort((cols["frame"], t_trk, t_log))
            cols = {c: v[order] for c, v in cols.items()}
            t_log, t_cls, t_trk = t_log[order], t_cls[order], t_trk[order]
            np.maximum.at(max_frame, t_log, cols["frame"])
            sensors = pa.array([f"camera:{d.name}" for d in trk_dirs], pa.string())
            n = t_log.size
            tracks = _table(
                {
                    "log_id": log_column(t_log), "frame": cols["frame"].astype(np.int32), "track_id": cols["track_id"],
                    "sensor": pa.DictionaryArray.from_arrays(pa.array(t_trk.astype(np.int32)), sensors).cast(pa.string()),
                    "cls": _strings(t_cls, names),
                    "score": pa.array(cols["score"].astype(np.float32), mask=np.isnan(cols["score"])),
                    "state": _const("confirmed", n), **{c: cols[c].astype(np.float32) for c in ("x1", "y1", "x2", "y2")},
                },
                TRACKS,
            )
        else:
            tracks = TRACKS.empty_table()

        camera = CAMERA_DETECTIONS.empty_table()
        if det_dir is not None:
            tracked = tracking(det_dir)
            if tracked is None:
                return None
            cols, c_log, c_cls = tracked
            if c_log.size:
                order = np.lexsort((cols["frame"], c_log))
                cols = {c: v[order] for c, v in cols.items()}
                c_log, c_cls = c_log[order], c_cls[order]
                np.maximum.at(max_frame, c_log, cols["frame"])
                key = (c_log << 32) | cols["frame"]
                det = (np.arange(c_log.size) - np.searchsorted(key, key, side="left")).astype(np.int32)
                camera = _table(
                    {
                        "log_id": log_column(c_log), "frame": cols["frame"].astype(np.int32), "det_id": det,
                        "cls": _strings(c_cls, names),
                        "score": np.where(np.isnan(cols["score"]), 1.0, cols["score"]).astype(np.float32),
                        **{c: cols[c].astype(np.float32) for c in ("x1", "y1", "x2", "y2")},
                    },
                    CAMERA_DETECTIONS,
                )

        n_frames = np.array([seqmap.get(seq, int(max_frame[k]) + 1) for k, seq in enumerate(log_ids)], np.int64)
        declared = np.array([seq in seqmap for seq in log_ids], bool)
        bad = np.flatnonzero((max_frame >= n_frames) | (n_frames == 0) | (declared & (max_dropped >= n_frames)))
        if bad.size:  # log by log names the problem
            return None
        f_log = np.repeat(np.arange(K), n_frames)
        f_start = np.repeat(np.cumsum(n_frames) - n_frames, n_frames)
        frames = (np.arange(f_log.size) - f_start).astype(np.int32)
        return DriveLogs(frames=_frames_table(log_column(f_log), frames), lidar_detections=lidar, camera_detections=camera,
                         tracks=tracks, calibration=_calibration_table(list(log_ids), P, l2c, sizes))

    def _load_one(self, root, seq, n_frames, lidar_dir, trk_dirs, det_dir) -> DriveLogs:
        calib = read_calibration(root / "calib" / f"{seq}.txt")
        P = calib["P2"]
        l2c = lidar_to_cam_matrix(calib)
        width, height = image_size_for(P)
        max_frame = -1
        bound = self.max_frames
        last: list[tuple[int, Path, _Layout]] = []  # each file's largest frame (any line), for the seqmap check

        lidar = LIDAR_DETECTIONS.empty_table()
        if lidar_dir is not None and _present(lidar_dir / f"{seq}.txt"):
            d = _sort_by_frame(_read_table(lidar_dir / f"{seq}.txt", POINTRCNN_LAYOUT, bound))
            frame = d["frame"]
            n = frame.size
            box = cam_boxes_to_lidar(d, l2c)
            max_frame = max(max_frame, int(frame.max(initial=-1)))
            last.append((int(frame.max(initial=-1)), lidar_dir / f"{seq}.txt", POINTRCNN_LAYOUT))
            lidar = _lidar_table(_const(seq, n), d, _det_ids(frame), box)

        track_parts = []
        for trk_dir in trk_dirs:
            if not _present(trk_dir / f"{seq}.txt"):
                continue
            d, any_last = _read_tracking(trk_dir / f"{seq}.txt", bound)
            last.append((any_last, trk_dir / f"{seq}.txt", TRACKING_LAYOUT))
            n = d["frame"].size
            max_frame = max(max_frame, int(d["frame"].max(initial=-1)))
            score = tracker_score(d["score"])
            track_parts.append(_table(
                {
                    "log_id": _const(seq, n), "frame": d["frame"].astype(np.int32),
                    "track_id": d["track_id"], "sensor": _const(f"camera:{trk_dir.name}", n),
                    "cls": d["cls"],
                    "score": pa.nulls(n, pa.float32()) if score is None else score,
                    "state": _const("confirmed", n),
                    **{c: d[c].astype(np.float32) for c in ("x1", "y1", "x2", "y2")},
                },
                TRACKS,
            ))
        tracks = pa.concat_tables(track_parts) if track_parts else TRACKS.empty_table()

        camera = CAMERA_DETECTIONS.empty_table()
        if det_dir is not None and _present(det_dir / f"{seq}.txt"):
            d, any_last = _read_tracking(det_dir / f"{seq}.txt", bound)
            last.append((any_last, det_dir / f"{seq}.txt", TRACKING_LAYOUT))
            frame = d["frame"]
            n = frame.size
            max_frame = max(max_frame, int(frame.max(initial=-1)))
            score = tracker_score(d["score"])
            camera = _table(
                {
                    "log_id": _const(seq, n), "frame": frame.astype(np.int32), "det_id": _det_ids(frame),
                    "cls": d["cls"],
                    # a detector without confidences: every detection counts as certain
                    "score": np.ones(n, np.float32) if score is None else score,
                    **{c: d[c].astype(np.float32) for c in ("x1", "y1", "x2", "y2")},
                },
                CAMERA_DETECTIONS,
            )

        n = n_frames if n_frames is not None else max_frame + 1
        # with a seqmap count only: without one, n follows from the outputs (of the types kept)
        beyond = [(path, layout) for file_last, path, layout in last if file_last >= n] if n_frames is not None else []
        if beyond:
            raise _beyond_seqmap(root, seq, n, *beyond[0])
        if n == 0:
            raise LogFormatError(root / "seqmap.txt", f"log {seq} has no frames (no seqmap entry and no outputs)")
        return DriveLogs(frames=_frames_table(_const(seq, n), np.arange(n, dtype=np.int32)), lidar_detections=lidar,
                         camera_detections=camera, tracks=tracks,
                         calibration=_calibration_table([seq], [P], [l2c], [(width, height)]))


def _beyond_seqmap(root: Path, seq: str, n: int, path: Path, layout: _Layout) -> LogFormatError:
    """The error for an output file holding a frame the seqmap says the log does not have: it
    names the file's first such line, and the seqmap's line (found by reading both again; this
    runs only when the check failed)."""
    lineno, frame = None, None
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for k, line in enumerate(fh, 1):
                parts = line.split(",") if layout.sep == "," else line.split()
                if parts and parts[0].strip() and int(float(parts[0])) >= n:
                    lineno, frame = k, int(float(parts[0]))
                    break
    except (OSError, ValueError):  # changed since it was parsed: the file is still the one to name
        pass
    declared = _seqmap_line(root, seq)
    at = f"seqmap.txt, line {declared}" if declared is not None else "seqmap.txt"
    return LogFormatError(path, f"log {seq} has outputs at frame {frame if frame is not None else '>= ' + str(n)} "
                          f"but only {n} frames ({at})", line=lineno, field="frame")


def _seqmap_line(root: Path, seq: str) -> int | None:
    """The 1-based line of ``seqmap.txt`` declaring ``seq`` (None: none, or no readable seqmap);
    read again only to name it in an error."""
    try:
        text = (root / "seqmap.txt").read_text(encoding="utf-8-sig", errors="replace")
    except OSError:
        return None
    return next((k for k, line in enumerate(text.splitlines(), 1) if line.split()[:1] == [seq]), None)


def _hidden(path: Path) -> bool:
    """A dot entry (``.ipynb_checkpoints/``, macOS ``._0001.txt``, an editor's backup): never
    a source or a sequence."""
    return path.name.startswith(".")


def _present(path: Path) -> bool:
    """A directory entry exists (a broken or looping link too: reading it then fails and names
    the file, instead of the stream being skipped as if the log had none)."""
    return os.path.lexists(path)


def _read_tracking(path: Path, max_frames: int = MAX_FRAMES) -> tuple[dict, int]:
    """A KITTI tracking-format output file, classes mapped, other types dropped, sorted by frame;
    and the largest frame of any of its lines (the dropped types' too: a line beyond the seqmap's
    frame count is an error whatever its type)."""
    d = _read_table(path, TRACKING_LAYOUT, max_frames)
    last = int(d["frame"].max(initial=-1))
    if "score" not in d:
        d["score"] = np.full(d["frame"].size, -1.0)
    types = d["type"]
    code = pc.index_in(types, value_set=pa.array(_TYPES)).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = np.array([c is not None for c in _TYPE_CLASS])[code]
    names = sorted(set(CLASSES_OF_KITTI))
    cls_code = np.array([names.index(c) if c is not None else -1 for c in _TYPE_CLASS])[code]
    idx = np.flatnonzero(keep)
    out = {k: (v.take(pa.array(idx)) if isinstance(v, pa.Array | pa.ChunkedArray) else v[idx]) for k, v in d.items()}
    out["cls"] = _strings(cls_code[idx], names)
    return _sort_by_frame(out), last


CLASSES_OF_KITTI = tuple(sorted(set(KITTI_CLASSES.values())))


def read_kitti_truth(root: Path | str, log_ids: list[str] | None = None) -> pa.Table:
    """Ground truth from ``label_02``: one row per labelled object, all KITTI types kept.

    Columns: log_id, frame, track_id, kitti_type, cls (taxonomy class, null for DontCare/Misc/
    Tram), truncated, occluded, x1, y1, x2, y2 (pixels), and the 3D box in KITTI's rectified
    camera frame: h, w, l (metres), x, y, z (bottom centre), ry."""
    root = Path(root)
    label_dir = root / "label_02"
    if not label_dir.is_dir():
        raise LogFormatError(root, "no label_02/ ground truth directory")
    seqs = log_ids or sorted(p.stem for p in label_dir.glob("*.txt"))
    parts = []
    for seq in seqs:
        path = label_dir / f"{seq}.txt"
        if not path.exists():
            raise LogFormatError(path, "ground-truth file is missing")
        d = _read_table(path, LABEL_LAYOUT)
        n = d["frame"].size
        types = d["type"] if isinstance(d["type"], pa.Array | pa.ChunkedArray) else pa.array(d["type"], pa.string())
        code = pc.index_in(types, value_set=pa.array(_TYPES)).to_numpy(zero_copy_only=False).astype(np.int64)
        cls = pa.array([_TYPE_CLASS[c] for c in range(len(_TYPES))], pa.string()).take(pa.array(code))
        parts.append(pa.table({
            "log_id": _const(seq, n), "frame": pa.array(d["frame"].astype(np.int32)),
            "track_id": pa.array(d["track_id"]), "kitti_type": pa.chunked_array([types]).combine_chunks()
            if isinstance(types, pa.ChunkedArray) else types, "cls": cls,
            "truncated": pa.array(d["truncated"].astype(np.float32)), "occluded": pa.array(d["occluded"].astype(np.int32)),
            **{c: pa.array(d[c].astype(np.float32)) for c in ("x1", "y1", "x2", "y2", "h", "w", "l", "x", "y", "z", "ry")},
        }))
    return pa.concat_tables(parts) if parts else pa.table({})
