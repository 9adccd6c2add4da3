"""Flat array view of a :class:`~fleetloop.schema.DriveLogs` batch for the check kernels.

Every frame of the batch gets a global index ``g`` (frames ordered by log, then frame index);
every stream's rows are ordered by ``g`` and addressed through CSR offsets, so "the objects of
frame g" is the slice ``start[g]:start[g + 1]``. Building it is a handful of vectorised pyarrow /
numpy calls (no per-frame Python).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetloop.perception.geometry import projection_matrix
from fleetloop.schema import CLASSES, DriveLogs

#: Class code for a class outside the taxonomy.
OTHER_CLASS = len(CLASSES)


class MiningInputError(ValueError):
    """The logs handed to the miner are inconsistent (says which table and what), or none is
    left to mine (``quarantined``: log id -> why, when every log was quarantined)."""

    def __init__(self, message: str, *, quarantined: dict[str, str] | None = None):
        super().__init__(message)
        self.quarantined = dict(quarantined or {})


@dataclass
class Stream:
    """One stream's rows, ordered by global frame, with CSR offsets (length n_frames + 1)."""

    name: str
    start: np.ndarray  # int64 (F + 1,)
    g: np.ndarray  # int64 (N,) global frame of each row
    row: np.ndarray  # int64 (N,) the row's index in the source table
    cls: np.ndarray  # int64 (N,) class code (index into CLASSES, OTHER_CLASS otherwise)
    score: np.ndarray  # float32 (N,), NaN when the source has no confidence
    cols: dict[str, np.ndarray]  # float32 columns (boxes), plus ids

    def __len__(self) -> int:
        return int(self.g.shape[0])

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.start)


@dataclass
class Batch:
    log_ids: list[str]  # log code -> log id
    frame_log: np.ndarray  # int64 (F,) log code of each frame
    frame_no: np.ndarray  # int32 (F,) frame index within its log
    log_start: np.ndarray  # int64 (K + 1,) first global frame of each log
    M: np.ndarray  # float64 (K, 3, 4) lidar -> pixel projection (NaN when calibration is missing)
    width: np.ndarray  # float64 (K,)
    height: np.ndarray  # float64 (K,)
    focal: np.ndarray  # float64 (K,) focal length in pixels (P[0, 0])
    has_calib: np.ndarray  # bool (K,)
    lidar: Stream
    camera: Stream  # camera detections
    tracks: Stream  # tracks (all sensors); ``cols['track_id']``, ``cols['sensor']`` (0 camera, 1 lidar),
    # ``cols['stream']`` (index into ``track_streams``)
    track_streams: list[str] = field(default_factory=list)  # distinct ``sensor`` values of the tracks table, sorted (e.g. camera:ciwt)

    @property
    def n_frames(self) -> int:
        return int(self.frame_log.shape[0])

    def next_frame(self) -> np.ndarray:
        """Global index of the following frame of the same log (consecutive index), else -1."""
        nxt = np.arange(1, self.n_frames + 1, dtype=np.int64)
        ok = np.zeros(self.n_frames, bool)
        if self.n_frames > 1:
            ok[:-1] = (self.frame_log[1:] == self.frame_log[:-1]) & (self.frame_no[1:] == self.frame_no[:-1] + 1)
        return np.where(ok, nxt, -1)


def _class_codes(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    codes = pc.index_in(col, value_set=pa.array(CLASSES, pa.string()))
    return codes.fill_null(OTHER_CLASS).to_numpy(zero_copy_only=False).astype(np.int64)


def _f32(t: pa.Table, name: str, table: str = "", nullable: bool = False) -> np.ndarray:
    col = t.column(name)
    if col.null_count:
        if not nullable:
            i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise MiningInputError(f"{table}: column {name!r} is null at row {i}{_where(t, i)}")
        col = col.fill_null(np.nan)
    a = np.ascontiguousarray(col.to_numpy().astype(np.float32, copy=False))
    if not nullable:
        bad = ~np.isfinite(a)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise MiningInputError(f"{table}: column {name!r} is not a finite number ({a[i]}) at row {i}{_where(t, i)}"
                                   " (validate the logs first: such logs are quarantined)")
    return a


def _where(t: pa.Table, i: int) -> str:
    return f" (log {t.column('log_id')[i].as_py()!r}, frame {t.column('frame')[i].as_py()})"


def _global_frames(keys: np.ndarray, key: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Position of every ``key`` in the sorted ``keys`` (the caller checks the hits). When every
    log's frames are consecutive indices (the usual case) this is arithmetic; else a binary search."""
    log = keys >> 32
    n_logs = int(log[-1]) + 1 if keys.size else 0
    first = np.searchsorted(log, np.arange(n_logs + 1))
    first_frame = keys[np.minimum(first[:-1], keys.size - 1)] & 0xFFFFFFFF
    last_frame = keys[np.maximum(first[1:] - 1, 0)] & 0xFFFFFFFF
    if n_logs and np.array_equal(last_frame - first_frame + 1, np.diff(first)) and code.size and code.max() < n_logs:
        return first[code] + ((key & 0xFFFFFFFF) - first_frame[code])
    return np.searchsorted(keys, key)


def _stream(name: str, t: pa.Table, keys: np.ndarray, log_values: pa.Array, n_frames: int, cols: list[str],
            extra: dict[str, np.ndarray] | None = None) -> Stream:
    n = t.num_rows
    if n == 0:
        return Stream(name, np.zeros(n_frames + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                      np.zeros(0, np.int64), np.zeros(0, np.float32), {c: np.zeros(0, np.float32) for c in cols}
                      | {k: np.zeros(0, v.dtype) for k, v in (extra or {}).items()})
    idx = pc.index_in(t.column("log_id"), value_set=log_values)
    if idx.null_count:
        i = int(np.flatnonzero(idx.is_null().to_numpy(zero_copy_only=False))[0])
        raise MiningInputError(f"{name}: row {i} belongs to log {t.column('log_id')[i].as_py()!r}, "
                               "which has no rows in the frames table")
    code = idx.to_numpy(zero_copy_only=False).astype(np.int64)
    key = (code << 32) | t.column("frame").to_numpy().astype(np.int64)
    g = _global_frames(keys, key, code)
    bad = (g >= len(keys)) | (g < 0) | (keys[np.clip(g, 0, len(keys) - 1)] != key)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise MiningInputError(
            f"{name}: row {i} (log {t.column('log_id')[i].as_py()}, frame {t.column('frame')[i].as_py()}) "
            "refers to a frame that is not in the frames table"
        )
    row: np.ndarray = np.arange(n, dtype=np.int64)
    if np.any(g[1:] < g[:-1]):
        order = np.argsort(g, kind="stable")
        g, row = g[order], row[order]
    else:
        order = None

    def take(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[order]) if order is not None else a

    start = np.zeros(n_frames + 1, np.int64)
    np.cumsum(np.bincount(g, minlength=n_frames), out=start[1:])
    score = _f32(t, "score", name, nullable=name == "tracks")
    data = {c: take(_f32(t, c, name)) for c in cols}
    for k, v in (extra or {}).items():
        data[k] = take(v)
    return Stream(name, start, g, row, take(_class_codes(t.column("cls"))), take(score), data)


def build_batch(logs: DriveLogs) -> Batch:
    """Index a batch of logs for the kernels. Raises MiningInputError on inconsistent input."""
    frames = logs.frames.select(["log_id", "frame"])
    if frames.num_rows == 0:
        raise MiningInputError("frames: the batch has no frames")
    log_col = frames.column("log_id")
    log_values = pc.unique(log_col).sort()
    code = pc.index_in(log_col, value_set=log_values).to_numpy(zero_copy_only=False).astype(np.int64)
    fno = frames.column("frame").to_numpy().astype(np.int64)
    keys = (code << 32) | fno
    if np.any(keys[1:] <= keys[:-1]):
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        if np.any(keys[1:] == keys[:-1]):
            i = int(np.flatnonzero(keys[1:] == keys[:-1])[0])
            raise MiningInputError(f"frames: duplicate frame {int(keys[i] & 0xFFFFFFFF)} in log "
                                   f"{log_values[int(keys[i] >> 32)].as_py()}")
    frame_log = keys >> 32
    frame_no = (keys & 0xFFFFFFFF).astype(np.int32)
    K = len(log_values)
    log_start = np.searchsorted(frame_log, np.arange(K + 1))

    M = np.full((K, 3, 4), np.nan)
    width = np.full(K, np.nan)
    height = np.full(K, np.nan)
    focal = np.full(K, np.nan)
    has_calib = np.zeros(K, bool)
    cal = logs.calibration
    if cal.num_rows:
        ccode = pc.index_in(cal.column("log_id"), value_set=log_values).to_pylist()
        P = np.asarray(cal.column("P").combine_chunks().flatten().to_numpy(), np.float64).reshape(-1, 3, 4)
        L = np.asarray(cal.column("lidar_to_cam").combine_chunks().flatten().to_numpy(), np.float64).reshape(-1, 3, 4)
        W = cal.column("image_width").to_numpy()
        H = cal.column("image_height").to_numpy()
        for i in range(cal.num_rows):  # one row per log: small
            if ccode[i] is None:  # calibration of a log that is not in this batch
                continue
            k = int(ccode[i])
            if not (np.isfinite(P[i]).all() and np.isfinite(L[i]).all() and W[i] > 0 and H[i] > 0):
                continue
            M[k] = projection_matrix(P[i], L[i])
            width[k], height[k], focal[k] = float(W[i]), float(H[i]), float(P[i][0, 0])
            has_calib[k] = True

    F = len(keys)
    box2 = ["x1", "y1", "x2", "y2"]
    lidar = _stream("lidar_detections", logs.lidar_detections, keys, log_values, F,
                    ["x", "y", "z", "l", "w", "h", "yaw"],
                    {"det_id": logs.lidar_detections.column("det_id").to_numpy().astype(np.int64)}
                    if logs.lidar_detections.num_rows else {"det_id": np.zeros(0, np.int64)})
    camera = _stream("camera_detections", logs.camera_detections, keys, log_values, F, box2,
                     {"det_id": logs.camera_detections.column("det_id").to_numpy().astype(np.int64)}
                     if logs.camera_detections.num_rows else {"det_id": np.zeros(0, np.int64)})
    tr = logs.tracks
    streams: list[str] = []
    if tr.num_rows:
        streams = pc.unique(tr.column("sensor")).sort().to_pylist()
        stream = pc.index_in(tr.column("sensor"), value_set=pa.array(streams)).to_numpy(zero_copy_only=False)
        extra = {"track_id": tr.column("track_id").to_numpy().astype(np.int64),
                 "sensor": pc.starts_with(tr.column("sensor"), "lidar").to_numpy(zero_copy_only=False).astype(np.int64),
                 "stream": stream.astype(np.int64),
                 "confirmed": pc.equal(tr.column("state"), "confirmed").to_numpy(zero_copy_only=False).astype(np.int64)}
    else:
        extra = {"track_id": np.zeros(0, np.int64), "sensor": np.zeros(0, np.int64), "stream": np.zeros(0, np.int64),
                 "confirmed": np.zeros(0, np.int64)}
    tracks = _stream("tracks", tr, keys, log_values, F, box2, extra)
    return Batch(log_values.to_pylist(), frame_log, frame_no, log_start, M, width, height, focal, has_calib,
                 lidar, camera, tracks, streams)
