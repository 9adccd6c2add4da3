"""``label-push`` and ``label-sync``. Labeling is never a suspended flow: push ends its run;
sync is a separate run, started by a schedule (polling) or by the webhook receiver
(``fleetloop label listen --trigger deployment``), and it decides completion by counting tasks."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from fleetloop.flows.common import store
from fleetloop.label import api


def default_campaign() -> str:
    year, week, _ = datetime.now(timezone.utc).isocalendar()
    return f"fleetloop-{year}-w{week:02d}"


@flow(name="label-push", log_prints=True)
def label_push(campaign: str | None = None, run_key: str | None = None, batch_size: int = 200) -> api.PushReport:
    """Send the frames a mining run selected (default: the latest run) to Label Studio as
    pre-annotated tasks. Idempotent: frames already in the campaign are not pushed again."""
    campaign = campaign or default_campaign()
    if run_key is None:
        st = store()
        if not st.exists("mining/latest.json"):
            raise LookupError("no mining run yet: run the mine flow first")
        run_key = json.loads(st.get_bytes("mining/latest.json"))["run_key"]
    report = api.push_selection(f"mining/{run_key}/selected.csv", campaign, batch_size=batch_size)
    problems = "\n".join(f"- log {p.log_id} frame {p.frame}: {p.message}" for p in report.problems[:50]) or "- none"
    create_markdown_artifact(key="label-push-summary", markdown=f"""# Label push: campaign `{campaign}`

From mining run `{run_key}`: **{report.selected}** frames selected, **{report.created}** tasks created,
{report.already_present} already in the campaign, **{len(report.problems)}** problems.

Problems:
{problems}
""")
    get_run_logger().info("campaign %s: %d tasks created", campaign, report.created)
    return report


@flow(name="label-sync", log_prints=True)
def label_sync(campaign: str | None = None) -> api.SyncReport:
    """Deliver finished annotations (new and updated) as label shards, exactly once."""
    campaign = campaign or default_campaign()
    report = api.sync_campaign(campaign)
    status = api.status(campaign)
    problems = "\n".join(f"- task {p.task_id} annotation {p.annotation_id}: {p.message}"
                         for p in report.problems[:50]) or "- none"
    complete = status["tasks"] > 0 and status["synced"] >= status["tasks"]
    create_markdown_artifact(key="label-sync-summary", markdown=f"""# Label sync: campaign `{campaign}`

**{report.delivered}** annotations delivered ({report.revisions} revisions, {report.labels} boxes),
{report.already_delivered} already delivered, **{len(report.problems)}** rejected.

Campaign: {status['tasks']} tasks, {status['annotated']} annotated, {status['synced']} synced
({'complete' if complete else 'in progress'}). [Open in Label Studio]({status['url']})

Rejected annotations:
{problems}
""")
    return report
