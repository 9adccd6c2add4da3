"""``weekly-cycle``: the whole loop, once a week, as a runbook over the steps.

drift → sync open campaigns → grow the dataset → retrain → promote → calibrate the miner on
the dataset's labels → mine (steered by drift) → push this week's campaign. Each step is a subflow (its own run and artifacts in the UI), runs
or says why it skipped, and a failing step is recorded without hiding the steps before it.

Scheduled runs have been seen to fire twice after redeploys, so the cycle is keyed on the ISO
week and its inputs (the logs' content hashes and the loop's params, :func:`fleetloop.cycle.plan_cycle`):
a second run with the same key is a no-op. Values computed in the run pass in memory (the drift
step's slice boosts go straight to mining); the store keeps what the next run needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from fleetloop.cycle import CycleRecord, StepRecord, campaign_name, iso_week, load_record, plan_cycle, save_record
from fleetloop.dataset.config import dataset_config
from fleetloop.flows.common import params, settings, store
from fleetloop.flows.dataset import grow_dataset
from fleetloop.flows.drift import publish_drift
from fleetloop.flows.label import label_push, label_sync
from fleetloop.flows.mine import mine
from fleetloop.flows.param_types import IsoWeek
from fleetloop.flows.train import retrain_flow
from fleetloop.recalibrate import Recalibration, recalibrate
from fleetloop.store.logs import read_logs


def labeling_configured() -> bool:
    ls = settings().label_studio
    return bool(ls.url and ls.token)


class _Steps:
    """Runs the cycle's steps in order, timing each and recording ran / skipped / failed."""

    def __init__(self, record: CycleRecord) -> None:
        self.record = record
        self.logger = get_run_logger()

    def skip(self, name: str, reason: str) -> None:
        self.logger.info("%s: skipped (%s)", name, reason)
        self.record.steps[name] = StepRecord(status="skipped", reason=reason)

    def run(self, name: str, fn: Callable[[], tuple[str, dict[str, Any]]]) -> bool:
        t0 = time.perf_counter()
        try:
            summary, details = fn()
        except Exception as exc:  # recorded; the cycle reports it and is not marked done
            self.logger.exception("%s failed", name)
            self.record.steps[name] = StepRecord(status="failed", reason=f"{type(exc).__name__}: {exc}",
                                                 seconds=round(time.perf_counter() - t0, 2))
            return False
        self.record.steps[name] = StepRecord(status="ran", reason=summary, details=details,
                                             seconds=round(time.perf_counter() - t0, 2))
        return True


@flow(name="weekly-cycle", log_prints=True)
def weekly_cycle(
    week: IsoWeek | None = None,
    budget: Annotated[int, Field(ge=1)] = 200,
    label: bool = True,
    retrain_unchanged: bool = False,
) -> CycleRecord:
    """One cycle of the loop for ISO ``week``, over the logs that arrived in the week before it.

    Args:
        week: ISO week YYYY-Www, e.g. 2026-W49; empty: the week of the run's scheduled time.
        budget: Frames to mine and send to Label Studio.
        label: Push the mined frames to Label Studio.
        retrain_unchanged: Retrain even when the dataset did not grow (after a change of the
            training params).
    """
    from prefect.runtime import flow_run

    if budget < 1:
        raise ValueError(f"budget must be at least 1 frame, got {budget}")
    logger = get_run_logger()
    scheduled = flow_run.scheduled_start_time or datetime.now(UTC)
    week = week or iso_week(scheduled)
    st, loop = store(), params()
    plan = plan_cycle(st, week, loop, extra=f"budget={budget};label={label}")
    done = load_record(st, plan)
    if done is not None:
        logger.info("cycle %s already ran with these inputs (%s): nothing to do", week, plan.record_key)
        create_markdown_artifact(key="weekly-cycle-summary", markdown=(
            f"# Weekly cycle {week}: already done\n\nThe same inputs ran at {done.finished_at}; "
            "this run (a duplicate schedule fire or a manual rerun) did nothing."))
        return done.model_copy(update={"noop": True})

    record = CycleRecord(week=week, key=plan.key, logs=plan.log_ids, started_at=datetime.now(UTC))
    steps = _Steps(record)
    boost: dict[str, float] = {}
    labeling = label and labeling_configured()

    # 1. drift: this window against the one before (logs read once, passed in memory)
    if not plan.logs or not plan.reference_logs:
        steps.skip("drift", f"{len(plan.reference_logs)} reference and {len(plan.logs)} current logs: nothing to compare")
    else:
        def drift_step() -> tuple[str, dict[str, Any]]:
            from fleetloop.drift.compare import compare

            outcome = compare(st, read_logs(st, [m.log_id for m in plan.reference_logs]), read_logs(st, plan.log_ids),
                              loop.drift, stamp=f"{week}-{plan.key}")
            publish_drift(st, outcome)
            boost.update(outcome.slice_boost)
            return (outcome.headline(),
                    {"share_drifted": outcome.share_drifted, "slice_boost": outcome.slice_boost,
                     "report": outcome.report_key})
        steps.run("drift", drift_step)

    # 2. sync every open campaign (last week's labels, whenever they were finished)
    if not labeling:
        steps.skip("sync", "no Label Studio configured (fleetloop services up, or settings)" if label else "label=False")
    else:
        def sync_step() -> tuple[str, dict[str, Any]]:
            out = label_sync()
            return (f"{out.delivered} annotations delivered from {len(out.reports)} open campaign(s)",
                    {"campaigns": out.campaigns, "completed": out.completed, "delivered": out.delivered,
                     "failed": out.failed})
        steps.run("sync", sync_step)

    # 3. grow the dataset with every label delivered since the last version
    grown = None

    def grow_step() -> tuple[str, dict[str, Any]]:
        nonlocal grown
        grown = grow_dataset()
        if grown.nothing_new:
            return (f"nothing new: dataset-v{grown.version} stays", {"version": grown.version, "created": False})
        return (f"{grown.tag}: +{grown.frames_added} frames ({grown.frames} in all)",
                {"version": grown.version, "tag": grown.tag, "created": True, "frames": grown.frames,
                 "frames_added": grown.frames_added, "campaigns": grown.campaigns})
    steps.run("grow", grow_step)

    # 4. retrain on the new version, register, gate, promote or reject
    if grown is None or grown.version < 1:
        steps.skip("retrain", "no dataset version to train on")
    elif grown.nothing_new and not retrain_unchanged:
        steps.skip("retrain", f"dataset-v{grown.version} is unchanged since the last cycle")
    else:
        version = grown.version

        def retrain_step() -> tuple[str, dict[str, Any]]:
            out = retrain_flow(dataset_version=version, why=f"weekly cycle {week}")
            verdict = "promoted" if out.promoted else f"{out.action}: {'; '.join(out.reasons[:3])}"
            return (f"model v{out.model_version} on dataset-v{version}: {verdict}",
                    {"model_version": out.model_version, "promoted": out.promoted, "action": out.action,
                     "reasons": out.reasons, "metrics": out.metrics, "dataset_version": version,
                     "production_after": out.production_after})
        steps.run("retrain", retrain_step)

    # 5. learn from the labels: refit the miner's severities per class on the newest dataset version
    mine_params = loop.mine
    if not plan.logs:
        steps.skip("calibrate", "nothing to mine this week")
    elif not loop.mine.recalibrate:
        steps.skip("calibrate", "mine.recalibrate is off")
    else:
        def calibrate_step() -> tuple[str, dict[str, Any]]:
            nonlocal mine_params
            out = recalibrate(st, dataset_config(settings()), loop.mine)
            mine_params = out.params
            publish_calibration(week, out)
            return out.reason, {"fitted": out.fitted, "dataset_version": out.dataset_version,
                                "labelled_frames": out.labelled_frames, "logs": out.logs,
                                "missing_logs": out.missing_logs, "errors": out.errors,
                                "severities": out.params.class_severities}
        steps.run("calibrate", calibrate_step)  # failed: mining goes on with the params as they are

    # 6. mine this window, steered toward the slices that drifted
    summary = None
    if not plan.logs:
        steps.skip("mine", f"no logs arrived between {plan.window.start:%Y-%m-%d} and {plan.window.end:%Y-%m-%d}")
    else:
        def mine_step() -> tuple[str, dict[str, Any]]:
            nonlocal summary
            mp = mine_params.model_copy(update={"slice_boost": boost}) if boost else mine_params
            summary = mine(budget=budget, log_ids=plan.log_ids, params=mp)
            return (f"{summary.selected} of {summary.frames} frames selected",
                    {"run_key": summary.run_key, "frames": summary.frames, "selected": summary.selected,
                     "slice_boost": boost})
        steps.run("mine", mine_step)

    # 7. push the selection to this week's campaign
    if summary is None:
        steps.skip("push", "no mining run in this cycle")
    elif not labeling:
        steps.skip("push", "no Label Studio configured" if label else "label=False")
    else:
        campaign = campaign_name(week)

        def push_step() -> tuple[str, dict[str, Any]]:
            pushed = label_push(campaign=campaign, run_key=summary.run_key)
            return (f"{pushed.created} tasks created in {campaign}",
                    {"campaign": campaign, "created": pushed.created, "problems": len(pushed.problems)})
        steps.run("push", push_step)

    record.finished_at = datetime.now(UTC)
    if not record.failed:
        save_record(st, plan, record)
    publish_cycle(plan.week, len(plan.logs), record)
    if record.failed:
        raise RuntimeError(f"weekly cycle {week}: steps failed: {', '.join(record.failed)} (see the run's artifacts)")
    return record


def publish_calibration(week: str, out: Recalibration) -> None:
    rows = "\n".join(f"| {r['reason']} | {r['class']} | {r['flagged']} | {r['errors']} | {r['precision']:.2f} | "
                     f"{r['prior']:.2f} | {r['severity']:.3f}{'' if r['fitted'] else ' (too few)'} |" for r in out.table)
    errors = ", ".join(f"{k} {v}" for k, v in out.errors.items()) or "none"
    missing = f"\n\nLogs no longer in the store (left out): {', '.join(out.missing_logs)}" if out.missing_logs else ""
    create_markdown_artifact(key="mining-calibration", markdown=f"""# Mining calibration for {week}

{out.reason}. Errors the labels show on those frames: {errors}.{missing}

| flag | class | flagged | right | precision | default | severity |
|---|---|---|---|---|---|---|
{rows}
""")


def publish_cycle(week: str, n_logs: int, record: CycleRecord) -> None:
    rows = "\n".join(f"| {name} | {s.status} | {s.reason} | {s.seconds:.1f} |" for name, s in record.steps.items())
    create_markdown_artifact(key="weekly-cycle-summary", markdown=f"""# Weekly cycle {week}

{n_logs} logs arrived in the week before {week}.

| step | status | what happened | seconds |
|---|---|---|---|
{rows}
""")
