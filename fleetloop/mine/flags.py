"""Flags as columns: every check appends whole arrays; strings are built once, at the end.

A flag is (frame, check, reason, severity, objects). ``obj`` is the key of the object
*hypothesis* the flag is about (a lidar detection and the camera boxes associated with it share
one key), so several flags on one object combine by noisy-OR instead of adding up.

Checks add a severity *factor* (1 = the reason's full severity; less for objects too small or
too far to be labelled, or an uncertainty band's edge) and the class of the object; the
severity is the reason's severity for that class (``MiningParams.severity_table``: defaults,
per-class overrides, calibration) times the factor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: check name -> the reasons it emits (reason names are unique across checks).
CHECKS: dict[str, tuple[str, ...]] = {
    "lidar_camera": ("lidar_only", "camera_only", "lidar_weak", "class_mismatch", "geometry"),
    "streams": ("camera_miss", "lidar_miss", "stream_only", "evidence_only"),
    "temporal": ("flicker", "isolated", "short_track", "track_gap", "id_switch", "implausible_motion", "weak_persistent"),
    "crowd": ("crowd",),
    "tracker_detector": ("track_unsupported", "detection_unexplained"),
    "uncertainty": ("uncertain",),
    "integrity": ("invalid_box",),
}
REASONS: tuple[str, ...] = tuple(r for rs in CHECKS.values() for r in rs)

#: Which judged sensor a flag says is wrong about its object. A frame's expected errors sum over
#: objects *and* sensors: an object both the lidar and the judged camera missed is two errors.
#: Flags of one kind on one object combine by noisy-OR. ``KIND_BOTH`` flags (an object only an
#: evidence stream sees) are a hypothesis for each sensor.
KIND_LIDAR, KIND_CAMERA, KIND_BOTH = 1, 2, 3
REASON_KIND: dict[str, int] = {
    "lidar_only": KIND_LIDAR, "camera_miss": KIND_CAMERA, "camera_only": KIND_CAMERA, "lidar_miss": KIND_LIDAR,
    "lidar_weak": KIND_LIDAR, "class_mismatch": KIND_LIDAR, "geometry": KIND_CAMERA, "stream_only": KIND_BOTH,
    "evidence_only": KIND_LIDAR,
    "flicker": KIND_LIDAR, "isolated": KIND_LIDAR, "weak_persistent": KIND_LIDAR, "crowd": KIND_LIDAR,
    "short_track": KIND_CAMERA, "track_gap": KIND_CAMERA, "id_switch": KIND_CAMERA, "implausible_motion": KIND_CAMERA,
    "track_unsupported": KIND_CAMERA, "detection_unexplained": KIND_CAMERA, "uncertain": KIND_LIDAR,
    "invalid_box": KIND_LIDAR,
}
_KIND_SHIFT = 46
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


def split_kinds(g: np.ndarray, obj: np.ndarray, severity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expand KIND_BOTH flags into one lidar and one camera hypothesis (see REASON_KIND)."""
    both = (obj >> _KIND_SHIFT) == KIND_BOTH
    if not both.any():
        return g, obj, severity
    base = obj[both] & ~(np.int64(3) << _KIND_SHIFT)
    return (np.r_[g[~both], g[both], g[both]],
            np.r_[obj[~both], base | (np.int64(KIND_LIDAR) << _KIND_SHIFT), base | (np.int64(KIND_CAMERA) << _KIND_SHIFT)],
            np.r_[severity[~both], severity[both], severity[both]])


def object_key(space: int, index: np.ndarray) -> np.ndarray:
    return (np.int64(space) << _KEY_SHIFT) | np.asarray(index, np.int64)


@dataclass
class Flags:
    """Column buffers of flags; ``add`` appends arrays of equal length."""

    parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, reason: str, g: np.ndarray, factor: np.ndarray | float, obj: np.ndarray,
            ref1: tuple[int | np.ndarray, np.ndarray], ref2: tuple[int | np.ndarray, np.ndarray] | None = None,
            cls: np.ndarray | int = -1, kind: int | None = None) -> None:
        g = np.asarray(g, np.int64)
        n = g.shape[0]
        if n == 0:
            return
        kind = REASON_KIND[reason] if kind is None else kind
        obj = np.asarray(obj, np.int64) | (np.int64(kind) << _KIND_SHIFT)
        sev = np.broadcast_to(np.asarray(factor, np.float32), (n,))
        k1, id1 = ref1
        k2: np.ndarray
        id2: np.ndarray
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
            "cls": np.broadcast_to(np.asarray(cls, np.int16), (n,)).astype(np.int16),
        })

    def columns(self, severity: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The flags as arrays. ``severity`` (n_reasons, n_classes + 1): the severity of each
        reason per class code (last column: unknown class); the stored factors are multiplied
        by it (without it, ``severity`` holds the factors)."""
        keys = ("g", "reason", "severity", "obj", "k1", "id1", "k2", "id2", "cls")
        if not self.parts:
            dt = {"g": np.int64, "reason": np.int16, "severity": np.float32, "obj": np.int64, "k1": np.int8,
                  "id1": np.int64, "k2": np.int8, "id2": np.int64, "cls": np.int16}
            return {k: np.zeros(0, dt[k]) for k in keys}
        out = {k: np.concatenate([p[k] for p in self.parts]) for k in keys}
        order = np.lexsort((out["id1"], out["reason"], out["g"]))  # deterministic order
        out = {k: v[order] for k, v in out.items()}
        if severity is not None:
            c = np.where(out["cls"] < 0, severity.shape[1] - 1, np.minimum(out["cls"], severity.shape[1] - 1))
            out["severity"] = (severity[out["reason"], c] * out["severity"]).astype(np.float32)
        return out


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
