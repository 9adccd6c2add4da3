"""Uncertainty: detections whose confidence sits inside a configurable band.

The band brackets the operating point, where a small change of score flips a detection in or
out of what the stack uses. Severity peaks at the operating point and falls off towards the
band's edges (a triangle), so a detection far inside the band counts for little. Lidar
detections below their class's operating point are not flagged (``mining.run_checks``): the
stack does not use them, so they cannot be false alarms, and whether one is a miss is for the
corroborating checks (``lidar_weak``, ``weak_persistent``) to say.
"""

from __future__ import annotations

import numpy as np

from fleetloop.mine.flags import Flags


def band_severity(score: np.ndarray, band: tuple[float, float], peak: float, center: np.ndarray | float) -> np.ndarray:
    """``peak`` at ``center`` (per detection: the operating point of its class), falling
    linearly to peak/2 at the band's edges, 0 outside."""
    lo, hi = band
    s = np.asarray(score, np.float64)
    center = np.clip(np.asarray(center, np.float64), lo, hi)
    inside = (s >= lo) & (s <= hi)
    half = np.where(s < center, np.maximum(center - lo, 1e-9), np.maximum(hi - center, 1e-9))
    closeness = 1.0 - np.clip(np.abs(s - center) / half, 0.0, 1.0)
    return np.where(inside, peak * (0.5 + 0.5 * closeness), 0.0)


def check_uncertainty(g: np.ndarray, score: np.ndarray, band: tuple[float, float], center, factor,
                      flags: Flags, key: np.ndarray, ref: tuple[int, np.ndarray], cls: np.ndarray | int = -1) -> int:
    """Flag detections with ``score`` inside ``band``; returns how many were flagged."""
    sev = band_severity(score, band, 1.0, center) * factor  # factor: scalar or per detection
    i = np.flatnonzero(sev > 0)
    flags.add("uncertain", g[i], sev[i], key[i], (ref[0], ref[1][i]), cls=np.broadcast_to(cls, g.shape)[i])
    return int(i.size)
