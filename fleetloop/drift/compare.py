"""The drift step as one plain function: this window's production traffic against a reference
(the window before it, or the training data's features), with the report kept in the store and
a typed outcome (a :class:`~fleetloop.verdict.Verdict` plus the slices to steer mining toward).
The flow publishes it; the weekly cycle passes ``slice_boost`` to mining in memory."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import BaseModel, Field

from fleetloop.drift.params import DriftParams
from fleetloop.drift.summary import DriftSummary
from fleetloop.schema import DriveLogs
from fleetloop.store.keys import DRIFT
from fleetloop.store.objects import Store
from fleetloop.verdict import Verdict


class DriftOutcome(BaseModel):
    status: str  # "compared" | "skipped"
    reason: str = ""
    verdict: Verdict | None = None  # passed = no drift alert
    reference_logs: list[str] = Field(default_factory=list)
    current_logs: list[str] = Field(default_factory=list)
    share_drifted: float = 0.0
    dataset_drift: bool = False
    drifted_features: list[str] = Field(default_factory=list)
    slice_boost: dict[str, float] = Field(default_factory=dict)  # empty unless the alert fired
    report_key: str | None = None
    summary_key: str | None = None
    summary: DriftSummary | None = None
    unreadable_logs: dict[str, str] = Field(default_factory=dict)  # log id -> why it was left out (gone, damaged)

    def headline(self) -> str:
        """One line for a person: whether the traffic drifted, why, and where mining is steered
        (a drift alert is news, not a failure of the cycle)."""
        left_out = (f"; {len(self.unreadable_logs)} unreadable logs left out ({', '.join(sorted(self.unreadable_logs))})"
                    if self.unreadable_logs else "")
        if self.verdict is None:
            return self.reason + left_out
        why = "; ".join(self.verdict.reasons)
        if self.verdict.passed:
            return (f"no drift alert ({why})" if why else "no drift alert") + left_out
        steer = describe_steering(self.slice_boost)
        return f"drift alert: {why}" + (f"; mining steered toward {steer}" if steer else "") + left_out


def describe_steering(boost: dict[str, float]) -> str:
    """``boost`` for a person, e.g. ``time_of_day=night x3.0, weather=rain x2.5`` ("" for none)."""
    return ", ".join(f"{k} x{v:.1f}" for k, v in sorted(boost.items()))


def steering(summary: DriftSummary, params: DriftParams) -> dict[str, float]:
    """The slices mining is steered toward: the drifted ones (capped at ``boost_max``), only when
    the drift alert fired."""
    return {k: min(v, params.boost_max) for k, v in summary.slice_boost.items()} if summary.dataset_drift else {}


def compare(
    store: Store,
    reference: DriveLogs,
    current: DriveLogs,
    params: DriftParams,
    *,
    stamp: str,
) -> DriftOutcome:
    """Compare two windows of logs; the HTML report and summary go to ``drift/reports/<stamp>/``."""
    from fleetloop.drift import DriftInputError, monitor_drift

    ref_ids, cur_ids = sorted(reference.log_ids), sorted(current.log_ids)
    if not ref_ids or not cur_ids:
        why = f"nothing to compare: {len(ref_ids)} reference logs, {len(cur_ids)} current logs"
        return DriftOutcome(status="skipped", reason=why, reference_logs=ref_ids, current_logs=cur_ids)
    prefix = f"{DRIFT}reports/{stamp}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = monitor_drift(reference, current, tmp, threshold=params.threshold, drift_share=params.alert_share,
                                   significance=params.significance)
        except DriftInputError as exc:  # e.g. every feature constant in both windows: news, not a crash
            return DriftOutcome(status="skipped", reason=f"nothing to compare: {exc}", reference_logs=ref_ids,
                                current_logs=cur_ids)
        for name in ("drift_report.html", "summary.json"):
            store.put_file(f"{prefix}/{name}", Path(tmp) / name)
    s = result.summary
    boost = steering(s, params)
    failures = ([f"{s.n_drifted} of {s.n_features} features drifted ({100 * s.share_drifted:.0f}% ≥ "
                 f"{100 * params.alert_share:.0f}%): {', '.join(s.drifted_features[:8])}"] if s.dataset_drift else [])
    verdict = Verdict.of("drift", failures,
                         passes=[f"{s.n_drifted} of {s.n_features} features drifted, under the alert share"],
                         share_drifted=s.share_drifted, drifted_features=s.drifted_features, slice_boost=boost)
    return DriftOutcome(
        status="compared", verdict=verdict, reference_logs=ref_ids, current_logs=cur_ids,
        share_drifted=s.share_drifted, dataset_drift=s.dataset_drift, drifted_features=s.drifted_features,
        slice_boost=boost, report_key=f"{prefix}/drift_report.html", summary_key=f"{prefix}/summary.json", summary=s,
    )
