"""Drift monitoring: per-frame features of production traffic compared week over week (or
against the training data) with Evidently, feeding drifted slices back into mining.

- :mod:`~fleetloop.drift.features`: ``compute_features(logs) -> DataFrame`` (one row per frame)
- :mod:`~fleetloop.drift.report`: ``compute_drift(reference, current) -> DriftResult`` (the only
  module that imports Evidently)
- :mod:`~fleetloop.drift.slices`: ``drifted_slices(summary, current_features) -> slice_boost``
- :func:`monitor_drift`: all of it for two sets of logs, written to a directory
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fleetloop.drift.features import FeatureParams, compute_features
from fleetloop.drift.report import DriftInputError, DriftResult, compute_drift
from fleetloop.drift.slices import drifted_slices
from fleetloop.drift.summary import DriftSummary
from fleetloop.schema import DriveLogs

__all__ = [
    "DriftInputError", "DriftResult", "DriftSummary", "FeatureParams", "compute_drift", "compute_features",
    "drifted_slices", "monitor_drift",
]


def _features(x: DriveLogs | pd.DataFrame, name: str, params: FeatureParams | None, image_root) -> pd.DataFrame:
    if isinstance(x, pd.DataFrame):
        return x
    if isinstance(x, DriveLogs):
        if x.num_frames == 0:
            raise DriftInputError(f"{name} window is empty (0 frames): nothing to compare; check its logs / time range")
        return compute_features(x, params, image_root=image_root)
    raise DriftInputError(f"{name} window must be DriveLogs or a features DataFrame, got {type(x).__name__}")


def monitor_drift(
    reference_logs: DriveLogs | pd.DataFrame,
    current_logs: DriveLogs | pd.DataFrame,
    out_dir: Path | str,
    *,
    params: FeatureParams | None = None,
    image_root: Path | str | None = None,
    **drift_options,
) -> DriftResult:
    """Features of both windows (logs, or precomputed features such as the training data's),
    drift, the drifted slices (``summary.slice_boost``); writes ``drift_report.html`` and
    ``summary.json`` into ``out_dir``. ``drift_options`` go to :func:`compute_drift`."""
    ref = _features(reference_logs, "reference", params, image_root)
    cur = _features(current_logs, "current", params, image_root)
    result = compute_drift(ref, cur, **drift_options)
    result.summary.slice_boost = drifted_slices(result.summary, cur)
    result.write(out_dir)
    return result
