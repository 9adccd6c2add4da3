"""``monitor-drift``: this week's production traffic against the week before, with Evidently.
A thin runbook over :func:`fleetloop.drift.compare.compare`; it publishes the outcome."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from fleetloop.cycle import iso_week, window_manifests
from fleetloop.drift.compare import DriftOutcome, compare
from fleetloop.drift.steer import save_slice_boost
from fleetloop.flows.common import params, store
from fleetloop.flows.param_types import IsoWeek, LogId
from fleetloop.schema import DriveLogs
from fleetloop.store.logs import LogNotFoundError, get_manifest, read_logs
from fleetloop.store.objects import Store


def drift_inputs(st: Store, week: str | None, current_logs: list[str] | None,
                 reference_logs: list[str] | None) -> tuple[DriveLogs, DriveLogs, dict[str, str]]:
    """The reference and current logs of the drift step: the given ids, or the logs that arrived
    in ``week``'s window and the week before it; and the logs left out (log id -> reason).

    A given id that is not in the store is an error (a typo is not "nothing to compare"); a log
    of a window that is gone or damaged when read (deleted by hand, a stream missing, a corrupt
    object) is left out and named, and the rest is compared."""
    given = [i for ids in (current_logs, reference_logs) if ids is not None for i in ids]
    missing = sorted({i for i in given if get_manifest(st, i) is None})
    if missing:
        raise LogNotFoundError(f"logs not in the store {st.location}: {', '.join(missing)}")
    unreadable: dict[str, str] = {}
    if current_logs is None or reference_logs is None:
        in_week, in_reference = window_manifests(st, week or iso_week(datetime.now(UTC)), problems=unreadable)
        current_logs = current_logs if current_logs is not None else [m.log_id for m in in_week]
        reference_logs = reference_logs if reference_logs is not None else [m.log_id for m in in_reference]
    return read_logs(st, reference_logs, unreadable), read_logs(st, current_logs, unreadable), unreadable


@flow(name="monitor-drift", log_prints=True)
def monitor_drift(
    week: IsoWeek | None = None,
    current_logs: list[LogId] | None = None,
    reference_logs: list[LogId] | None = None,
) -> DriftOutcome:
    """Compare the logs that arrived in the week before ``week`` with those of the week before
    that, or the given log ids. Drift over the alert share emits ``fleetloop.drift.detected``
    and steers the next mining run toward the drifted slices.

    Args:
        week: ISO week YYYY-Www; empty: the current week.
        current_logs: Compare these logs; empty: those that arrived in the week before week.
        reference_logs: With these logs; empty: those that arrived in the week before that.
    """
    st = store()
    reference, current, unreadable = drift_inputs(st, week, current_logs, reference_logs)
    outcome = compare(st, reference, current, params().drift, stamp=datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))
    if unreadable:
        outcome = outcome.model_copy(update={"unreadable_logs": unreadable})
    save_slice_boost(st, outcome.slice_boost, source=outcome.summary_key or "skipped")
    publish_drift(st, outcome)
    return outcome


def publish_drift(st: Store, outcome: DriftOutcome) -> None:
    """The drift artifact, and the event when the alert fired."""
    from prefect.events import emit_event

    logger = get_run_logger()
    left_out = "".join(f"\n- `{k}`: {v}" for k, v in outcome.unreadable_logs.items())
    if left_out:
        left_out = f"\n\n**Left out, not readable ({len(outcome.unreadable_logs)} logs):**{left_out}"
    for log_id, why in outcome.unreadable_logs.items():
        logger.warning("drift: log %s left out: %s", log_id, why)
    if outcome.status == "skipped" or outcome.summary is None:
        logger.warning(outcome.reason)
        create_markdown_artifact(key="drift-summary",
                                 markdown=f"# Drift monitoring skipped\n\n{outcome.reason}.{left_out}")
        return
    s = outcome.summary
    if s.dataset_drift:
        emit_event(
            event="fleetloop.drift.detected",
            resource={"prefect.resource.id": f"fleetloop.drift.{outcome.summary_key}",
                      "prefect.resource.name": "fleetloop drift"},
            payload={"share_drifted": s.share_drifted, "drifted_features": s.drifted_features,
                     "slice_boost": outcome.slice_boost, "report": outcome.report_key},
        )
        logger.warning("drift: %.0f%% of features drifted (%s)", 100 * s.share_drifted, ", ".join(s.drifted_features))
    report_url: str | None
    try:
        report_url = st.url_for(outcome.report_key or "", expires=7 * 24 * 3600)
    except Exception:  # a store that cannot make URLs still has the key
        report_url = outcome.report_key
    top = sorted(s.features.values(), key=lambda f: (not f.drifted, f.name))[:15]
    rows = "\n".join(f"| {f.name} | {f.method} | {'' if f.score is None else f'{f.score:.3g}'} | "
                     f"{'' if f.p_value is None else f'{f.p_value:.3f}'} | {'**drifted**' if f.drifted else 'ok'} |"
                     for f in top)
    boosts = ", ".join(f"{k} ×{v:g}" for k, v in outcome.slice_boost.items()) or "none"
    md = f"""# Drift: {len(outcome.current_logs)} current logs vs {len(outcome.reference_logs)} reference logs

**{'ALERT: ' if s.dataset_drift else ''}{s.n_drifted} of {s.n_features} features drifted ({100 * s.share_drifted:.0f}%)**,
alert share {100 * s.drift_share:.0f}%. Tests: {s.tests_passed} passed, {s.tests_failed} failed.

Slices steered into mining: {boosts}

| feature | method | score | p (logs re-dealt) | verdict |
|---|---|---|---|---|
{rows}

A feature drifts when its score is at or over {s.threshold:g} and, where checked, p is at most
{s.significance if s.significance is not None else 1:g}: {s.chance_check}.

Report: [{outcome.report_key}]({report_url}) · summary: `{outcome.summary_key}`{left_out}
"""
    create_markdown_artifact(key="drift-summary", markdown=md, description="Drift of production traffic")
