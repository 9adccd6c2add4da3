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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from fleetloop.cycle import (
    CyclePlan,
    CycleRecord,
    StepRecord,
    campaign_name,
    check_due,
    iso_week,
    load_record,
    plan_cycle,
    save_record,
)
from fleetloop.dataset.config import dataset_config
from fleetloop.flows.common import params, settings, store
from fleetloop.flows.dataset import grow_dataset
from fleetloop.flows.drift import publish_drift
from fleetloop.flows.label import label_push, label_sync
from fleetloop.flows.mine import mine
from fleetloop.flows.param_types import IsoWeek
from fleetloop.flows.train import retrain_flow
from fleetloop.label.api import SyncIncomplete
from fleetloop.params import LoopParams
from fleetloop.recalibrate import Recalibration, recalibrate
from fleetloop.retrain import current_pipeline_digest, trained_before
from fleetloop.settings import redact
from fleetloop.store.locks import held_or
from fleetloop.store.logs import read_logs
from fleetloop.store.objects import Store

#: how long a cycle waits for another run of the same week (it then finds the week done, or
#: retries what that run left failed); a cycle takes minutes, its retrain at most train.timeout_s
CYCLE_LOCK_TIMEOUT_S = 3 * 3600.0
#: a step's reason in the record and the artifact: one line, at most this long
REASON_CHARS = 400

#: what an engineer does about each step when it failed (the rerun is always safe: the steps that
#: ran are not done again, their outputs are reused)
NEXT: dict[str, str] = {
    "drift": "check the logs it names (fleetloop logs list); drift steers mining only, the rest ran",
    "sync": "check Label Studio is up and the token valid (fleetloop label status); labels stay in Label Studio "
            "and are delivered once by the rerun",
    "grow": "check the dataset repository and its lock (fleetloop dataset status); retrain waited for it",
    "retrain": "check train.command and the training log (fleetloop retrain runs it alone); production is unchanged",
    "calibrate": "mining went on with the params as they are; check the dataset version it names",
    "mine": "check the logs it names; nothing was pushed this cycle",
    "push": "check Label Studio is up and the token valid (fleetloop label status); the selection is kept and the "
            "rerun pushes each frame once",
}


class StepIncomplete(RuntimeError):
    """A step did part of its work: the rest is recorded in the message, the step as failed."""


def _secrets() -> list[str]:
    """Secret values of the settings, never to appear in a reason, a log line or an artifact."""
    s = settings()
    found = [s.label_studio.token, s.storage.s3.secret_access_key, s.storage.s3.access_key_id]
    return [x.get_secret_value() for x in found if x is not None and len(x.get_secret_value()) >= 4]


def one_line(text: str, secrets: list[str] | None = None, limit: int = REASON_CHARS) -> str:
    """``text`` as one line a person reads: secrets masked, whitespace runs folded, cut at ``limit``."""
    text = redact(text)
    for secret in secrets or []:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def labeling_configured() -> bool:
    ls = settings().label_studio
    return bool(ls.url and ls.token)


class _Steps:
    """Runs the cycle's steps in order, timing each and recording ran / skipped / failed."""

    def __init__(self, record: CycleRecord) -> None:
        self.record = record
        self.logger = get_run_logger()
        self.secrets = _secrets()

    def skip(self, name: str, reason: str) -> None:
        self.logger.info("%s: skipped (%s)", name, reason)
        self.record.steps[name] = StepRecord(status="skipped", reason=reason)

    def run(self, name: str, fn: Callable[[], tuple[str, dict[str, Any]]]) -> bool:
        t0 = time.perf_counter()
        try:
            summary, details = fn()
        except Exception as exc:  # recorded; the cycle reports it and is not marked done
            what = str(exc) if isinstance(exc, StepIncomplete) else f"{type(exc).__name__}: {exc}"
            reason = one_line(what, self.secrets)
            self.logger.error("%s failed: %s", name, reason)  # one line; the traceback only at debug level
            self.logger.debug("%s failed", name, exc_info=True)
            self.record.steps[name] = StepRecord(status="failed", reason=reason,
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
        retrain_unchanged: Run the retrain step even when the dataset did not grow and a model
            was trained on it with these train params and this pipeline (after a change to
            either it runs without this; it reuses a model made the same way from the same
            starting model).
    """
    from prefect.runtime import flow_run

    if budget < 1:
        raise ValueError(f"budget must be at least 1 frame, got {budget}")
    logger = get_run_logger()
    now = datetime.now(UTC)
    scheduled = flow_run.scheduled_start_time or now
    week = week or iso_week(scheduled)
    check_due(week, max(now, scheduled))  # a week not begun: its window is still open
    # one cycle of a week at a time (two schedule fires, a fire and a manual run, two workers): the
    # second waits, then finds the week done, or retries what the first left failed
    with _week_lock(week):
        st, loop = store(), params()
        # the pipeline is an input too: after an edit to dvc.yaml a rerun of the week trains again
        pipeline = current_pipeline_digest(settings())
        plan = plan_cycle(st, week, loop, extra=f"budget={budget};label={label};pipeline={pipeline}")
        done = load_record(st, plan)
        if done is not None:
            logger.info("cycle %s already ran with these inputs (%s): nothing to do", week, plan.record_key)
            create_markdown_artifact(key="weekly-cycle-summary", markdown=(
                f"# Weekly cycle {week}: already done\n\nThe same inputs ran at {done.finished_at}; "
                "this run (a duplicate schedule fire or a manual rerun) did nothing."))
            return done.model_copy(update={"noop": True})
        record = _run_cycle(plan, loop, st, budget=budget, label=label, retrain_unchanged=retrain_unchanged,
                            pipeline=pipeline)
    if not record.complete:
        raise RuntimeError(_incomplete_message(record))
    return record


@contextmanager
def _week_lock(week: str) -> Iterator[None]:
    home = Path(settings().home).resolve()
    path = home / "locks" / f"weekly-cycle-{week}.lock"
    with held_or(path, CYCLE_LOCK_TIMEOUT_S, lambda pid: RuntimeError(
            f"another weekly cycle of {week} (pid {pid}) has run for {CYCLE_LOCK_TIMEOUT_S / 3600:.0f} h; "
            "run this one again when it has finished")):
        yield


def _incomplete_message(record: CycleRecord) -> str:
    parts = [f"{name}: {record.steps[name].reason}" for name in record.failed]
    if record.left_out:
        parts.append("logs left out (unreadable): " + ", ".join(sorted(record.left_out)))
    return one_line(f"weekly cycle {record.week} not done: " + "; ".join(parts)
                    + " (the other steps ran; a rerun redoes only what is missing; see the run's artifacts)",
                    limit=1000)


def _run_cycle(plan: CyclePlan, loop: LoopParams, st: Store, *, budget: int, label: bool,
               retrain_unchanged: bool, pipeline: str | None) -> CycleRecord:
    week = plan.week
    record = CycleRecord(week=week, key=plan.key, logs=plan.log_ids, started_at=datetime.now(UTC),
                         left_out=dict(plan.unreadable))
    steps = _Steps(record)
    boost: dict[str, float] = {}
    labeling = label and labeling_configured()
    if plan.unreadable:
        steps.logger.warning("logs left out, their manifest unreadable (a rerun after a repair takes them): %s",
                             one_line("; ".join(f"{k}: {v}" for k, v in plan.unreadable.items())))

    def left_out_note(unreadable: dict[str, str]) -> str:
        return f"; left out (unreadable): {', '.join(sorted(unreadable))}" if unreadable else ""

    # 1. drift: this window against the one before (logs read once, passed in memory)
    if not plan.logs or not plan.reference_logs:
        steps.skip("drift", f"{len(plan.reference_logs)} reference and {len(plan.logs)} current logs: nothing to compare")
    else:
        def drift_step() -> tuple[str, dict[str, Any]]:
            from fleetloop.drift.compare import compare

            ref_bad: dict[str, str] = {}
            cur_bad: dict[str, str] = {}  # one damaged log is left out, named; the others are compared
            reference = read_logs(st, [m.log_id for m in plan.reference_logs], ref_bad)
            current = read_logs(st, plan.log_ids, cur_bad)
            record.left_out.update(cur_bad)
            if not reference.num_frames or not current.num_frames:
                raise StepIncomplete(one_line(
                    "no readable logs to compare: " + "; ".join(f"{k}: {v}" for k, v in {**ref_bad, **cur_bad}.items())))
            outcome = compare(st, reference, current, loop.drift, stamp=f"{week}-{plan.key}")
            publish_drift(st, outcome)
            boost.update(outcome.slice_boost)
            return (outcome.headline() + left_out_note({**ref_bad, **cur_bad}),
                    {"share_drifted": outcome.share_drifted, "slice_boost": outcome.slice_boost,
                     "report": outcome.report_key, "left_out": {**ref_bad, **cur_bad}})
        steps.run("drift", drift_step)

    # 2. sync every open campaign (last week's labels, whenever they were finished)
    if not labeling:
        steps.skip("sync", "no Label Studio configured (fleetloop services up, or settings)" if label else "label=False")
    else:
        def sync_step() -> tuple[str, dict[str, Any]]:
            try:
                out = label_sync()
            except SyncIncomplete as exc:  # a campaign not synced: the step failed (the week is not done, a rerun syncs it)
                raise StepIncomplete(str(exc)) from None
            said = f"{out.delivered} annotations delivered from {len(out.reports)} open campaign(s)"
            return (said, {"campaigns": out.campaigns, "completed": out.completed, "delivered": out.delivered})
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
    if grown is None:
        steps.skip("retrain", "the grow step failed: the dataset version to train on is not known (a rerun retries both)")
    elif grown.version < 1:
        steps.skip("retrain", "no dataset version to train on")
    elif grown.nothing_new and not retrain_unchanged and (
            done := trained_before(st, loop, grown.version, pipeline)) is not None:
        steps.skip("retrain", f"dataset-v{grown.version} is unchanged and model v{done.version} was trained on it "
                              "with these train params and this pipeline")
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
            record.left_out.update(summary.unreadable)  # mined without them: a rerun retries them
            return (f"{summary.selected} of {summary.frames} frames selected" + left_out_note(summary.unreadable),
                    {"run_key": summary.run_key, "frames": summary.frames, "selected": summary.selected,
                     "slice_boost": boost, "left_out": summary.unreadable})
        steps.run("mine", mine_step)

    # 7. push the selection to this week's campaign
    if summary is None:
        steps.skip("push", "no mining run in this cycle" if "mine" not in record.failed
                   else "the mine step failed: nothing to push")
    elif not labeling:
        steps.skip("push", "no Label Studio configured" if label else "label=False")
    else:
        campaign = campaign_name(week)
        run_key = summary.run_key

        def push_step() -> tuple[str, dict[str, Any]]:
            pushed = label_push(campaign=campaign, run_key=run_key)
            return (f"{pushed.created} tasks created in {campaign}",
                    {"campaign": campaign, "created": pushed.created, "problems": len(pushed.problems)})
        steps.run("push", push_step)

    record.left_out = {k: one_line(v, steps.secrets) for k, v in sorted(record.left_out.items())}
    record.finished_at = datetime.now(UTC)
    if record.complete:
        save_record(st, plan, record)
    publish_cycle(plan.week, len(plan.logs), record)
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


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def publish_cycle(week: str, n_logs: int, record: CycleRecord) -> None:
    rows = "\n".join(f"| {name} | {'**failed**' if s.status == 'failed' else s.status} | {_cell(s.reason)} | "
                     f"{s.seconds:.1f} |" for name, s in record.steps.items())
    if record.complete:
        verdict = "**Done.** Every step ran or said why it skipped; a rerun with the same inputs does nothing."
        todo = ""
    else:
        bad = ", ".join(record.failed + (["logs left out"] if record.left_out else []))
        verdict = (f"**Not done** ({bad}): the steps that ran keep their results; the cycle is not marked done, "
                   f"so a rerun of `weekly-cycle` for {week} redoes only what is missing (mining and pushes are "
                   "keyed on their inputs, nothing is duplicated).")
        lines = [f"- **{name}**: {_cell(record.steps[name].reason)}. What to do: {NEXT.get(name, 'see its run')}; "
                 f"then rerun `fleetloop run weekly-cycle --param week={week}`." for name in record.failed]
        lines += [f"- log `{log_id}` left out: {_cell(why)}. What to do: re-ingest or repair it (or delete it), "
                  "then rerun the cycle." for log_id, why in record.left_out.items()]
        todo = "\n## What to do\n\n" + "\n".join(lines) + "\n"
    create_markdown_artifact(key="weekly-cycle-summary", markdown=f"""# Weekly cycle {week}

{n_logs} logs arrived in the week before {week}. {verdict}

| step | status | what happened | seconds |
|---|---|---|---|
{rows}
{todo}""")
