"""Feedback from drift to mining: which slices drifted, as ``slice_boost`` multipliers.

Keys follow the mining params' ``slice_boost`` format: ``"<tag>=<value>"`` for a tag whose
distribution drifted (``"weather=rain"``, ``"time_of_day=night"``, ``"place=..."``) and
``"class=<name>"`` for a class whose detection-count feature drifted. Values are multipliers > 1
for the share of the labeling budget those frames get in the next mining run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from fleetloop.drift.features import TAG_FEATURES
from fleetloop.drift.summary import DriftSummary
from fleetloop.schema import CLASSES

MIN_BOOST = 1.25
MAX_BOOST = 3.0
#: Whose detection counts may steer mining toward a class: the lidar's. The camera's boxes (and the
#: tracks built from them) come from the camera model the loop retrains, so their counts drift
#: whenever a new model is promoted, whatever the traffic did.
COUNT_SENSORS: tuple[str, ...] = ("lidar",)
#: A tag value more than this share of the current window is not steered toward (see :func:`drifted_slices`).
MAJORITY = 0.5


def _clip(x: float, lo: float, hi: float) -> float:
    return round(float(min(max(x, lo), hi)), 3)


def drifted_slices(
    summary: DriftSummary | Mapping[str, Any],
    current_features: pd.DataFrame,
    *,
    min_boost: float = MIN_BOOST,
    max_boost: float = MAX_BOOST,
) -> dict[str, float]:
    """Slices to favour in the next mining run.

    - a drifted tag feature: every value (other than "unknown") whose share of frames grew from
      the reference to the current window, boosted by that growth ratio (a new value: ``max_boost``),
      unless it is most of the current window (clear weather coming back after a rainy week):
      steering is for conditions the budget would otherwise miss, and a majority gets its share;
    - a drifted count feature ``n_<sensor>_<class>`` of a sensor in ``COUNT_SENSORS``: the class,
      boosted by the ratio of mean counts (up or down: fewer detections of a class is as much a
      reason to look as more), the largest over those sensors.
    Boosts are clipped to ``[min_boost, max_boost]``. Only slices present in ``current_features``
    (tags) are returned."""
    if not 1.0 < min_boost <= max_boost:
        raise ValueError(f"need 1 < min_boost <= max_boost, got {min_boost}, {max_boost}")
    s = summary if isinstance(summary, DriftSummary) else DriftSummary.model_validate(dict(summary))
    out: dict[str, float] = {}
    for tag in TAG_FEATURES:
        fd = s.features.get(tag)
        if fd is None or not fd.drifted or tag not in current_features.columns:
            continue
        ref_shares = fd.reference_shares or {}
        cur_shares = current_features[tag].astype(str).where(current_features[tag].notna(), None) \
            .value_counts(normalize=True, dropna=True)
        for value, cur in cur_shares.items():
            if value == "unknown" or cur <= 0 or cur > MAJORITY:
                continue
            ref = ref_shares.get(str(value), 0.0)
            if cur <= ref:
                continue
            out[f"{tag}={value}"] = _clip(cur / ref if ref > 0 else max_boost, min_boost, max_boost)
    for cls in CLASSES:
        boosts = []
        for sensor in COUNT_SENSORS:
            fd = s.features.get(f"n_{sensor}_{cls}")
            if fd is None or not fd.drifted:
                continue
            ref, cur = fd.reference_mean or 0.0, fd.current_mean or 0.0
            if ref > 0 and cur > 0:
                ratio = max(cur / ref, ref / cur)
            else:
                ratio = max_boost  # appeared or vanished
            boosts.append(_clip(ratio, min_boost, max_boost))
        if boosts:
            out[f"class={cls}"] = max(boosts)
    return dict(sorted(out.items()))
