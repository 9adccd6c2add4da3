"""``weekly-cycle``: the whole loop, once a week, as subflows.

Scheduled runs have been seen to fire twice after redeploys, so the cycle is keyed on the ISO
week and its input revisions (the logs' content hashes and the mining parameters): a second
run with the same key is a no-op. Steps that fleetloop does not have yet are absent.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, time, timedelta, timezone

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from fleetloop.flows.common import settings, store
from fleetloop.flows.drift import monitor_drift
from fleetloop.flows.label import label_push, label_sync
from fleetloop.flows.mine import mine, pipeline_params


def iso_week(t: datetime) -> str:
    year, week, _ = t.isocalendar()
    return f"{year}-W{week:02d}"


def week_start(week: str) -> datetime:
    year, w = week.split("-W")
    return datetime.combine(date.fromisocalendar(int(year), int(w), 1), time(), tzinfo=timezone.utc)


def labeling_configured() -> bool:
    from fleetloop.local import label_studio as server

    s = settings()
    return bool(s.label_studio.url and s.label_studio.token) or server.read_state(s.home) is not None


@flow(name="weekly-cycle", log_prints=True)
def weekly_cycle(week: str | None = None, budget: int = 200, campaign: str | None = None, label: bool = True) -> dict:
    """Drift → mine (steered by drift) → push to labeling → sync what is labeled.

    ``week`` (``YYYY-Www``) defaults to the ISO week of the run's scheduled time; the logs are
    those that arrived since the start of the previous week."""
    from prefect.runtime import flow_run

    from fleetloop.store.logs import list_logs

    logger = get_run_logger()
    scheduled = flow_run.scheduled_start_time or datetime.now(timezone.utc)
    week = week or iso_week(scheduled)
    since = week_start(week) - timedelta(days=7)
    st = store()
    manifests = sorted(list_logs(st, since=since), key=lambda m: m.log_id)
    h = hashlib.sha256(week.encode())
    for m in manifests:
        h.update(f"{m.log_id}:{m.sha256}".encode())
    h.update(f"budget={budget};campaign={campaign};label={label}".encode())
    key = f"cycles/{week}/{h.hexdigest()[:16]}.json"
    if st.exists(key):
        done = json.loads(st.get_bytes(key))
        logger.info("cycle %s already ran with these inputs (%s): nothing to do", week, key)
        create_markdown_artifact(key="weekly-cycle-summary", markdown=(
            f"# Weekly cycle {week}: already done\n\nThe same inputs ran at {done['finished_at']}; "
            "this run (a duplicate schedule fire or a manual rerun) did nothing."))
        return {**done, "noop": True}
    if not manifests:
        logger.warning("no logs arrived since %s", since.date())

    record: dict = {"week": week, "logs": [m.log_id for m in manifests], "steps": {}}
    drift = monitor_drift()
    record["steps"]["monitor-drift"] = {"status": drift.status, "share_drifted": drift.share_drifted,
                                        "slice_boost": drift.slice_boost}
    summary = mine(budget=budget, since=since, params=pipeline_params()) if manifests else None
    if summary is not None:
        record["steps"]["mine"] = {"run_key": summary.run_key, "frames": summary.frames, "selected": summary.selected}
        if label and labeling_configured():
            campaign = campaign or f"fleetloop-{week.lower()}"
            pushed = label_push(campaign=campaign, run_key=summary.run_key)
            synced = label_sync(campaign=campaign)
            record["steps"]["label"] = {"campaign": campaign, "tasks_created": pushed.created,
                                        "delivered": synced.delivered}
        elif label:
            record["steps"]["label"] = {"skipped": "no Label Studio configured (fleetloop services up, or settings)"}
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    st.put_bytes(key, json.dumps(record, indent=2).encode())
    steps = "\n".join(f"- **{name}**: {json.dumps(v)}" for name, v in record["steps"].items())
    create_markdown_artifact(key="weekly-cycle-summary", markdown=f"# Weekly cycle {week}\n\n"
                             f"{len(manifests)} logs since {since.date()}.\n\n{steps}\n")
    return record
