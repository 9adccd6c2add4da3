"""Agreement-rate trend: mean sensor agreement per day, current window vs reference.

Agreement between sensors (lidar vs camera, tracker vs detector) needs no ground truth, so its
level is a proxy of production perception quality; a drop week over week is worth an alert even
when no single feature distribution drifted.
"""

from __future__ import annotations

import pandas as pd

from fleetloop.drift.features import AGREEMENT_FEATURES
from fleetloop.drift.summary import AgreementTrend, DailyMean


def _mean(s: pd.Series) -> float | None:
    v = s.mean()  # skips NaN
    return None if pd.isna(v) else float(v)


def _by_day(df: pd.DataFrame, feature: str) -> list[DailyMean]:
    if "day" not in df.columns or len(df) == 0:
        return []
    g = df.groupby("day", observed=True, sort=True)[feature].agg(["mean", "size"])
    return [
        DailyMean(day=str(day), mean=None if pd.isna(m) else float(m), frames=int(n))
        for day, m, n in zip(g.index, g["mean"].to_numpy(), g["size"].to_numpy(), strict=True)
    ]


def agreement_trend(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    features: tuple[str, ...] = AGREEMENT_FEATURES,
    tolerance: float = 0.05,
) -> list[AgreementTrend]:
    """One :class:`AgreementTrend` per agreement feature present in both windows with data."""
    out = []
    for f in features:
        if f not in reference.columns or f not in current.columns:
            continue
        ref, cur = _mean(reference[f]), _mean(current[f])
        if ref is None and cur is None:
            continue
        delta = None if ref is None or cur is None else cur - ref
        out.append(
            AgreementTrend(
                feature=f,
                reference_mean=ref,
                current_mean=cur,
                delta=delta,
                tolerance=tolerance,
                degraded=bool(delta is not None and delta < -tolerance),
                reference_by_day=_by_day(reference, f),
                current_by_day=_by_day(current, f),
            )
        )
    return out


__all__ = ["agreement_trend"]
