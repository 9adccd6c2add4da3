"""``ingest-logs`` and ``mine``: logs in, ranked frames out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from fleetloop.drift.steer import latest_slice_boost
from fleetloop.flows.common import SettingsDaskTaskRunner, store
from fleetloop.flows.common import params as loop_params
from fleetloop.flows.param_types import DriveSince, DriveUntil, LogId, Since, Tag, Until, Vehicle
from fleetloop.ingest.ingest import IngestReport, ingest
from fleetloop.mine import run as mining
from fleetloop.mine.params import MiningParams


@flow(name="ingest-logs", log_prints=True)
def ingest_logs(
    source: str, format: str = "kitti-tracking", log_ids: list[LogId] | None = None, arrived_at: datetime | None = None
) -> IngestReport:
    """Bring logs from ``source`` into the store: validate, register, quarantine the bad ones.

    Args:
        source: Directory of logs on the machine that runs the flow.
        format: kitti-tracking or parquet.
        log_ids: Only these logs of the source.
        arrived_at: Backdate the arrival of a backfill; empty: now.
    """
    report = ingest(store(), source, format, log_ids, arrived_at=arrived_at)
    lines = [
        f"# Ingest from `{report.source}` ({report.format})",
        f"- new logs: **{len(report.registered)}** {', '.join(report.registered)}",
        f"- unchanged logs: {len(report.unchanged)}",
        f"- frames: {report.frames:,}",
        f"- quarantined: **{len(report.quarantined)}**",
    ]
    lines += [f"  - `{log_id}`: {report.reasons.get(log_id, '')} (report at `{key}`)" for log_id, key in report.quarantined.items()]
    for title, named in (("not stored, another log's content under its id", report.conflicts),
                         ("not stored, the store refused it", report.failed)):
        if named:
            lines += [f"- {title}: **{len(named)}**", *(f"  - `{log_id}`: {why}" for log_id, why in named.items())]
    create_markdown_artifact(key="ingest-summary", markdown="\n".join(lines), description="What came in")
    return report


@task(retries=2, retry_delay_seconds=[2, 5], task_run_name="mine-shard-{index}")
def mine_shard_task(run_key: str, index: int, log_ids: list[str], params: MiningParams) -> mining.ShardOutput:
    # Safe to retry: a shard's output is written atomically under the run key.
    return mining.mine_shard(store(), run_key, index, log_ids, params)


# prefect_dask's DaskTaskRunner subclasses the bare (invariant) TaskRunner, so its stub type is
# TaskRunner[PrefectConcurrentFuture], not the TaskRunner[PrefectFuture[Any]] @flow is annotated with
@flow(name="mine", log_prints=True, task_runner=SettingsDaskTaskRunner())  # type: ignore[arg-type]
def mine(
    budget: Annotated[int, Field(ge=1)] | None = 200,
    since: Since | None = None,
    log_ids: list[LogId] | None = None,
    params: MiningParams | None = None,
    frames_per_shard: Annotated[int, Field(ge=1)] = 50_000,
    until: Until | None = None,  # after `since`: declared after it (param_types)
    drive_since: DriveSince | None = None,
    drive_until: DriveUntil | None = None,
    vehicle: Vehicle | None = None,
    tags: list[Tag] | None = None,
) -> mining.MiningSummary:
    """Run the sanity checks over stored logs by shard, rank frames, select under ``budget``.

    Which logs: a query (arrival window ``since``/``until``, drive-time window
    ``drive_since``/``drive_until``, ``vehicle``, ``tags`` such as ``weather=rain``, ``log_ids``),
    validated before any work (``fleetloop.store.query.LogQuery``) and echoed in the run's
    artifact. The run is keyed on its inputs: a rerun with the same logs and parameters reuses
    the finished outputs; a crashed run resumes from the shards it already wrote.

    Args:
        budget: Frames to select; empty: rank every frame.
        since: Only logs that arrived at or after this time (UTC).
        log_ids: Only these stored logs.
        params: Mining params; empty: params.yaml's mine section with the latest drift steering.
        frames_per_shard: Frames per parallel shard.
        until: Only logs that arrived before this time (UTC); after since.
        drive_since: Only logs driven at or after this time (UTC).
        drive_until: Only logs driven before this time (UTC); after drive_since.
        vehicle: Only logs of this vehicle, e.g. veh-07.
        tags: Only logs with a frame of each tag, name=value with a name in weather, time_of_day,
            place, vehicle (e.g. weather=rain).
    """
    from fleetloop.store.logs import list_logs
    from fleetloop.store.query import LogQuery, select_logs

    query = LogQuery(since=since, until=until, drive_since=drive_since, drive_until=drive_until, vehicle=vehicle,
                     tags=tags or [], log_ids=log_ids)
    logger = get_run_logger()
    params = params or pipeline_params()
    st = store()
    plain = not (query.until or query.needs_content)
    unlisted: dict[str, str] = {}  # manifests the query's listing could not read: named, left out
    ids = log_ids if plain else select_logs(list_logs(st, since=None, problems=unlisted), query, st)
    run = mining.plan_mining(st, params, budget, since=since if plain else None, log_ids=ids,
                             frames_per_shard=frames_per_shard, unlisted=unlisted)
    logger.info("mining run %s (%s): %d logs in %d shards", run.key, query.describe(), len(run.log_ids), len(run.shards))
    futures = [mine_shard_task.submit(run.key, i, logs, params) for i, logs in enumerate(run.shards)]
    shards = [f.result() for f in futures]
    summary = mining.finish_mining(st, run, shards, params)
    for log_id, why in summary.unreadable.items():
        logger.warning("left out %s (a rerun retries it): %s", log_id, why)
    publish_mining_artifacts(summary, query.describe())
    return summary


def pipeline_params() -> MiningParams:
    """The ``mine:`` params of params.yaml, with the drift monitor's latest slice boosts (a
    standalone run; the weekly cycle passes the boosts of its own drift step in memory)."""
    boost = latest_slice_boost(store())
    mp = loop_params().mine
    return mp.model_copy(update={"slice_boost": boost}) if boost else mp


def publish_mining_artifacts(summary: mining.MiningSummary, query: str = "all logs") -> None:
    reasons = "\n".join(f"| {r} | {n:,} |" for r, n in list(summary.reasons.items())[:15]) or "| (none) | 0 |"
    skipped = "\n".join(f"- {s}" for s in summary.skipped) or "- none"
    boosts = ", ".join(f"{k} ×{v:g}" for k, v in summary.slice_boost.items()) or "none"
    left_out = ("**Left out (unreadable; a rerun retries them):** "
                + "; ".join(f"`{k}`: {v}" for k, v in summary.unreadable.items()) + "\n") if summary.unreadable else ""
    md = f"""# Mining run `{summary.run_key}`{' (reused: same inputs as an earlier run)' if summary.reused else ''}

**Query:** {query}
**In:** {summary.logs} logs, {summary.frames:,} frames.
**Flagged:** {summary.flags:,} flags on {summary.flagged_frames:,} frames.
**Selected:** {summary.selected:,} frames (budget {summary.budget if summary.budget else 'none: every frame ranked'}).
**Drift boosts:** {boosts}
**Judged camera stream:** {', '.join(summary.judged_camera) or 'none (no camera stream)'} (every other camera stream is evidence)
{left_out}
| reason | frames |
|---|---|
{reasons}

Checks skipped:
{skipped}

Outputs: `{summary.selected_key}`, `{summary.ranked_key}`
"""
    create_markdown_artifact(key="mining-summary", markdown=md, description="What was flagged and selected")
    create_table_artifact(key="top-mined-frames", table=summary.top or [{"log_id": "", "frame": "", "score": 0, "reasons": ""}],
                          description="Top selected frames with their reasons")
