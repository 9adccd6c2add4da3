"""Flags as columns: every check appends whole arrays; strings are built once, at the end.

A flag is (frame, check, reason, severity, objects). ``obj`` is the key of the object
*hypothesis* the flag is about (a lidar detection and the camera box associated with it share
one key), so several flags on one object combine by noisy-OR instead of adding up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: check name -> the reasons it emits (reason names are unique across checks).
CHECKS: dict[str, tuple[str, ...]] = {
    "lidar_camera": ("lidar_only", "camera_only", "lidar_weak", "class_mismatch", "geometry"),
    "temporal": ("flicker", "isolated", "short_track", "track_gap", "id_switch", "implausible_motion"),
    "tracker_detector": ("track_unsupported", "detection_unexplained"),
    "uncertainty": ("uncertain",),
    "integrity": ("invalid_box",),
}
REASONS: tuple[str, ...] = tuple(r for rs in CHECKS.values() for r in rs)
REASON_CHECK: dict[str, str] = {r: c for c, rs in CHECKS.items() for r in rs}
REASON_CODE: dict[str, int] = {r: i for i, r in enumerate(REASONS)}
CHECK_NAMES: tuple[str, ...] = tuple(CHECKS)

# object reference kinds (the prefix of the strings in the ``objects`` column)
#: "lidar_prev:5" is lidar detection 5 of the previous frame (for an object missing in this one).
REF_KINDS: tuple[str, ...] = ("lidar", "camera", "track", "lidar_prev")
REF_LIDAR, REF_CAMERA, REF_TRACK, REF_LIDAR_PREV = 0, 1, 2, 3

# object-key namespaces (high bits of ``obj``)
KEY_LIDAR, KEY_CAMERA, KEY_TRACK, KEY_VIRTUAL = 1, 2, 3, 4
_KEY_SHIFT = 40


def object_key(space: int, index: np.ndarray) -> np.ndarray:
    return (np.int64(space) << _KEY_SHIFT) | np.asarray(index, np.int64)


@dataclass
class Flags:
    """Column buffers of flags; ``add`` appends arrays of equal length."""

    parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, reason: str, g: np.ndarray, severity: np.ndarray | float, obj: np.ndarray,
            ref1: tuple[int, np.ndarray], ref2: tuple[int, np.ndarray] | None = None) -> None:
        g = np.asarray(g, np.int64)
        n = g.shape[0]
        if n == 0:
            return
        sev = np.broadcast_to(np.asarray(severity, np.float32), (n,))
        k1, id1 = ref1
        if ref2 is None:
            k2, id2 = np.full(n, -1, np.int8), np.full(n, -1, np.int64)
        else:
            k2 = np.broadcast_to(np.asarray(ref2[0], np.int8), (n,))
            id2 = np.asarray(ref2[1], np.int64)
            k2 = np.where(id2 >= 0, k2, -1).astype(np.int8)
        self.parts.append({
            "g": g, "reason": np.full(n, REASON_CODE[reason], np.int16), "severity": sev.astype(np.float32),
            "obj": np.asarray(obj, np.int64), "k1": np.broadcast_to(np.asarray(k1, np.int8), (n,)).astype(np.int8),
            "id1": np.asarray(id1, np.int64), "k2": k2, "id2": id2,
        })

    def columns(self) -> dict[str, np.ndarray]:
        keys = ("g", "reason", "severity", "obj", "k1", "id1", "k2", "id2")
        if not self.parts:
            dt = {"g": np.int64, "reason": np.int16, "severity": np.float32, "obj": np.int64, "k1": np.int8,
                  "id1": np.int64, "k2": np.int8, "id2": np.int64}
            return {k: np.zeros(0, dt[k]) for k in keys}
        out = {k: np.concatenate([p[k] for p in self.parts]) for k in keys}
        order = np.lexsort((out["id1"], out["reason"], out["g"]))  # deterministic order
        return {k: v[order] for k, v in out.items()}


def _refs(kind: np.ndarray, ids: np.ndarray) -> pa.Array:
    """'lidar:3' style strings, built by pyarrow compute (no Python loop)."""
    prefix = pa.DictionaryArray.from_arrays(pa.array(np.maximum(kind, 0).astype(np.int32)),
                                           pa.array([k + ":" for k in REF_KINDS])).cast(pa.string())
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(ids), pa.string()), "")


def objects_column(cols: dict[str, np.ndarray]) -> pa.Array:
    """list<string> of the one or two objects of each flag."""
    n = cols["g"].shape[0]
    first = _refs(cols["k1"], cols["id1"])
    has2 = cols["k2"] >= 0
    if not has2.any():
        return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), first)
    second = _refs(cols["k2"][has2], cols["id2"][has2])
    counts = 1 + has2.astype(np.int32)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    # interleave: position of each flag's first ref is offsets[i], second (if any) offsets[i] + 1
    pos1 = offsets[:-1]
    pos2 = offsets[:-1][has2] + 1
    take = np.empty(offsets[-1], np.int64)
    take[pos1] = np.arange(n)
    take[pos2] = n + np.arange(int(has2.sum()))
    values = pa.concat_arrays([first, second]).take(pa.array(take))
    return pa.ListArray.from_arrays(pa.array(offsets), values)
