"""``label-push`` and ``label-sync``. Labeling is never a suspended flow: push ends its run;
sync is a separate run, started by a schedule (polling) or by the webhook receiver
(``fleetloop label listen --trigger deployment``), and it decides completion by counting tasks.
With no campaign, sync delivers every *open* campaign of the index, so labels finished on last
week's campaign after the week turned over are still delivered, and a poll before this week's
campaign exists has nothing to fail on."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from fleetloop.cycle import campaign_name, iso_week
from fleetloop.flows.common import params, settings, store
from fleetloop.ingest.validation import label_failures
from fleetloop.label import api
from fleetloop.store import keys


@flow(name="label-push", log_prints=True)
def label_push(campaign: str | None = None, run_key: str | None = None, batch_size: int = 200) -> api.PushReport:
    """Send the frames a mining run selected to Label Studio as pre-annotated tasks. Idempotent.

    Args:
        campaign: The campaign (Label Studio project title); empty: this ISO week's.
        run_key: The mining run whose selection is sent; empty: the latest run.
        batch_size: Tasks per import request.
    """
    campaign = campaign or campaign_name(iso_week(datetime.now(UTC)))
    if run_key is None:
        st = store()
        if not st.exists(keys.MINING_LATEST):
            raise LookupError("no mining run yet: run the mine flow first")
        run_key = json.loads(st.get_bytes(keys.MINING_LATEST))["run_key"]
    report = api.push_selection(f"{keys.MINING}{run_key}/selected.csv", campaign, settings(), batch_size=batch_size,
                                camera_stream=params().mine.camera_stream)
    publish_push(campaign, run_key, report)
    return report


def publish_push(campaign: str, run_key: str, report: api.PushReport) -> None:
    problems = "\n".join(f"- log {p.log_id} frame {p.frame}: {p.message}" for p in report.problems[:50]) or "- none"
    create_markdown_artifact(key="label-push-summary", markdown=f"""# Label push: campaign `{campaign}`

From mining run `{run_key}`: **{report.selected}** frames selected, **{report.created}** tasks created,
{report.already_present} already in the campaign, **{len(report.problems)}** problems.

Problems:
{problems}
""")
    get_run_logger().info("campaign %s: %d tasks created", campaign, report.created)


@flow(name="label-sync", log_prints=True)
def label_sync(campaign: str | None = None) -> api.OpenSync:
    """Deliver finished annotations (new and updated) as label shards, exactly once, validated
    with the labels suite. The run fails when an open campaign could not be synced (the others are
    delivered; the artifact and the error say which and why; the next run retries it).

    Args:
        campaign: Only this campaign; empty: every open campaign.
    """
    s = settings()
    if campaign is None:
        out = api.sync_open_campaigns(s, validate=label_failures)
    else:
        out = api.OpenSync(campaigns=[campaign], reports=[api.sync_campaign(campaign, s, validate=label_failures)])
    publish_sync(out)
    if out.failed:  # the run fails (the UI shows it); the delivered campaigns stay delivered
        failed = api.SyncIncomplete.of(out)
        get_run_logger().error("%s", failed)
        # a Failed state rather than a raise: one line in the run's log, not Prefect's traceback; a
        # caller (the weekly cycle) still gets the exception raised, with what was delivered
        return Failed(message=str(failed), data=failed)  # type: ignore[return-value]
    return out


def publish_sync(out: api.OpenSync) -> None:
    lines = []
    for r in out.reports:
        lines.append(f"| `{r.campaign}` | {r.delivered} | {r.revisions} | {r.labels} | {r.retracted} | "
                     f"{r.already_delivered} | {len(r.problems)} |")
    problems = "\n".join(f"- `{r.campaign}` task {p.task_id} annotation {p.annotation_id}: {p.message}"
                         for r in out.reports for p in r.problems[:20]) or "- none"
    failed = "\n".join(f"- `{name}`: {why}" for name, why in out.failed.items()) or "- none"
    table = "\n".join(lines) or "| (no open campaign) | | | | | | |"
    create_markdown_artifact(key="label-sync-summary", markdown=f"""# Label sync

**{out.delivered}** annotations delivered from {len(out.reports)} campaign(s);
complete now: {', '.join(out.completed) or 'none'}.

| campaign | delivered | revisions | boxes | retracted (deleted in Label Studio) | already delivered | rejected |
|---|---|---|---|---|---|---|
{table}

Rejected annotations:
{problems}

Campaigns that failed to sync:
{failed}
""")
