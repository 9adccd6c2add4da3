"""Crowds: pedestrians and cyclists among others, where most real lidar misses hide.

In a group of people the lidar's points of one person merge with or are shadowed by another's,
so detectors miss people in crowds far more often than alone; a labeler who fixes a crowd frame
finds the missed ones. Every pedestrian or cyclist detection (at or above the noise floor) with
at least ``crowd_min`` others within ``crowd_radius_m`` in bird's-eye view is flagged ``crowd``
(a small severity per member: the expected number of hidden misses grows with the crowd).
"""

from __future__ import annotations

import numpy as np

from fleetloop.mine.flags import KEY_LIDAR, REF_LIDAR, Flags, object_key
from fleetloop.mine.lidar_camera import size_factor
from fleetloop.mine.params import MiningParams
from fleetloop.perception.batch import Batch
from fleetloop.perception.geometry import neighbour_slots
from fleetloop.schema import CLASSES

PEOPLE = ("pedestrian", "cyclist")


def check_crowds(batch: Batch, params: MiningParams, flags: Flags, box_height: np.ndarray) -> int:
    """Flag the members of crowds; returns how many detections were flagged."""
    L = batch.lidar
    if len(L) == 0:
        return 0
    people = np.isin(L.cls, [CLASSES.index(c) for c in PEOPLE]) & (L.score >= params.lidar_min_score)
    if not people.any():
        return 0
    x, y = L.cols["x"].astype(np.float64), L.cols["y"].astype(np.float64)
    counts = np.zeros(len(L), np.int64)
    neighbour_slots(L.start[:-1], L.start[1:], x, y, people, params.crowd_radius_m, counts)
    i = np.flatnonzero(people & (counts >= params.crowd_min))
    factor = size_factor(box_height[i], params, np.hypot(x[i], y[i]))
    flags.add("crowd", L.g[i], factor, object_key(KEY_LIDAR, i), (REF_LIDAR, L.cols["det_id"][i]), cls=L.cls[i])
    return int(i.size)
