"""``monitor-drift``: this week's production traffic against a reference, with Evidently."""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from fleetloop.drift.steer import save_slice_boost
from fleetloop.flows.common import store


class DriftRun(BaseModel):
    status: str  # "compared" | "skipped"
    reason: str = ""
    reference_logs: list[str] = []
    current_logs: list[str] = []
    share_drifted: float = 0.0
    dataset_drift: bool = False
    drifted_features: list[str] = []
    slice_boost: dict[str, float] = {}
    report_key: str | None = None
    summary_key: str | None = None


def windows(manifests, now: datetime, days: int = 7) -> tuple[list[str], list[str]]:
    """(reference, current) log ids by arrival: the last ``days`` and the ``days`` before."""
    cut = now - timedelta(days=days)
    start = cut - timedelta(days=days)
    current = [m.log_id for m in manifests if m.arrived_at >= cut]
    reference = [m.log_id for m in manifests if start <= m.arrived_at < cut]
    return reference, current


@flow(name="monitor-drift", log_prints=True)
def monitor_drift(
    current_logs: list[str] | None = None,
    reference_logs: list[str] | None = None,
    window_days: int = 7,
    threshold: float = 0.1,
    alert_share: float = 0.3,
) -> DriftRun:
    """Compare the current window (default: logs of the last ``window_days``) with a reference
    (default: the window before it; or given logs, e.g. the production model's training data).
    Drift over ``alert_share`` of the features emits ``fleetloop.drift.detected`` and steers the
    next mining run toward the drifted slices."""
    from prefect.events import emit_event

    from fleetloop.drift import monitor_drift as run_drift
    from fleetloop.store.logs import get_log, list_logs

    logger = get_run_logger()
    st = store()
    if current_logs is None or reference_logs is None:
        ref_default, cur_default = windows(list_logs(st), datetime.now(timezone.utc), window_days)
        current_logs = current_logs if current_logs is not None else cur_default
        reference_logs = reference_logs if reference_logs is not None else ref_default
    if not current_logs or not reference_logs:
        why = f"nothing to compare: {len(reference_logs)} reference logs, {len(current_logs)} current logs"
        logger.warning(why)
        create_markdown_artifact(key="drift-summary", markdown=f"# Drift monitoring skipped\n\n{why}.")
        return DriftRun(status="skipped", reason=why, reference_logs=reference_logs, current_logs=current_logs)

    from fleetloop.schema import DriveLogs

    ref = DriveLogs.concat([get_log(st, i) for i in sorted(reference_logs)])
    cur = DriveLogs.concat([get_log(st, i) for i in sorted(current_logs)])
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    prefix = f"drift/reports/{stamp}"
    with tempfile.TemporaryDirectory() as tmp:
        result = run_drift(ref, cur, tmp, threshold=threshold, drift_share=alert_share)
        for name in ("drift_report.html", "summary.json"):
            st.put_file(f"{prefix}/{name}", Path(tmp) / name)
    s = result.summary
    run = DriftRun(
        status="compared", reference_logs=sorted(reference_logs), current_logs=sorted(current_logs),
        share_drifted=s.share_drifted, dataset_drift=s.dataset_drift, drifted_features=s.drifted_features,
        slice_boost=s.slice_boost, report_key=f"{prefix}/drift_report.html", summary_key=f"{prefix}/summary.json",
    )
    save_slice_boost(st, s.slice_boost if s.dataset_drift else {}, source=run.summary_key)
    if s.dataset_drift:
        emit_event(
            event="fleetloop.drift.detected",
            resource={"prefect.resource.id": f"fleetloop.drift.{stamp}", "prefect.resource.name": "fleetloop drift"},
            payload={"share_drifted": s.share_drifted, "drifted_features": s.drifted_features,
                     "slice_boost": s.slice_boost, "report": run.report_key},
        )
        logger.warning("drift: %.0f%% of features drifted (%s)", 100 * s.share_drifted, ", ".join(s.drifted_features))
    try:
        report_url = st.url_for(run.report_key, expires=7 * 24 * 3600)
    except Exception:  # a store that cannot make URLs still has the key
        report_url = run.report_key
    top = sorted(s.features.values(), key=lambda f: (not f.drifted, f.name))[:15]
    rows = "\n".join(f"| {f.name} | {f.method} | {'' if f.score is None else f'{f.score:.3g}'} | "
                     f"{'**drifted**' if f.drifted else 'ok'} |" for f in top)
    md = f"""# Drift: {len(current_logs)} current logs vs {len(reference_logs)} reference logs

**{'ALERT: ' if s.dataset_drift else ''}{s.n_drifted} of {s.n_features} features drifted ({100 * s.share_drifted:.0f}%)**,
alert threshold {100 * alert_share:.0f}%. Tests: {s.tests_passed} passed, {s.tests_failed} failed.

Slices steered into the next mining run: {', '.join(f'{k} ×{v:g}' for k, v in run.slice_boost.items()) if s.dataset_drift and run.slice_boost else 'none'}

| feature | method | score | verdict |
|---|---|---|---|
{rows}

Report: [{run.report_key}]({report_url}) · summary: `{run.summary_key}`
"""
    create_markdown_artifact(key="drift-summary", markdown=md, description="Drift of production traffic")
    return run
