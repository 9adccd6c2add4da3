"""Campaign lifecycle against a real Label Studio and a real Prefect API: labels finished on last
week's campaign after the week turned over are delivered by the scheduled poll (``label-sync``
with no campaign syncs every open campaign), and the poll never fails on a campaign that does not
exist yet."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta

import pytest

from fleetloop.cycle import campaign_name, iso_week
from fleetloop.label import index
from fleetloop.sim.labeling_team import simulate
from fleetloop.store.objects import get_store

pytestmark = [pytest.mark.services, pytest.mark.kitti, pytest.mark.timeout(600)]
pytest_plugins = ["tests.fixtures_ls"]


def test_last_weeks_campaign_is_delivered_by_the_scheduled_poll(prefect_api, ls_settings, tmp_path, kitti_root, ls_server):
    from fleetloop.flows.label import label_sync
    from fleetloop.ingest.importers import load_logs
    from fleetloop.ingest.importers.kitti import read_kitti_truth
    from fleetloop.label import api
    from fleetloop.label.client import LabelStudioClient

    store = get_store(ls_settings)
    # the poll before anything was pushed (e.g. Monday 00:05, before the weekly run): nothing to do, no failure
    assert label_sync().delivered == 0

    last_week = iso_week(datetime.now(UTC) - timedelta(days=7))
    campaign = campaign_name(last_week)  # pushed by last week's cycle
    logs = load_logs(kitti_root, format="kitti-tracking", log_ids=["0012"])
    sel = tmp_path / "selected.csv"
    with sel.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["log_id", "frame", "score", "reasons"])
        w.writerows(["0012", fr, 1.0 - fr / 100, "lidar_only:car"] for fr in range(0, 40, 4))
    pushed = api.push_selection(sel, campaign, ls_settings, logs=logs)
    assert pushed.created == 10
    assert [r.name for r in index.campaigns(store, "open")] == [campaign]

    # the poll runs while nobody has labeled yet: the campaign stays open, nothing is delivered
    assert label_sync().delivered == 0
    assert index.get(store, campaign).state == "open"

    # the week turns over (this week's campaign does not exist yet); the team finishes last week's tasks
    assert iso_week(datetime.now(UTC)) != last_week
    with LabelStudioClient(ls_server.url, ls_server.token) as client:
        done = simulate(campaign, read_kitti_truth(kitti_root), client=client)
    assert done.answered == 10

    out = label_sync()  # the scheduled poll, with no campaign
    assert out.campaigns == [campaign] and out.delivered == 10 and out.completed == [campaign]
    assert index.get(store, campaign).state == "complete"
    assert len(store.list(f"labels/{campaign}/sync-")) == 1

    again = label_sync()  # complete campaigns are not polled any more
    assert again.campaigns == [] and again.delivered == 0


def test_label_status_without_a_campaign_lists_every_campaign(ls_settings, tmp_path, kitti_root, ls_server):
    """``fleetloop label status``: every campaign pushed so far, oldest first, with its state and
    counts; a campaign whose project was deleted in Label Studio keeps its row, with the error, and
    the command exits 3 (before, 0: a script could not tell)."""
    import json

    from typer.testing import CliRunner

    from fleetloop.cli import app
    from fleetloop.ingest.importers import load_logs
    from fleetloop.ingest.importers.kitti import read_kitti_truth
    from fleetloop.label import api
    from fleetloop.label.campaigns import find_campaign
    from fleetloop.label.client import LabelStudioClient

    runner = CliRunner()
    empty = runner.invoke(app, ["label", "status", "--json"])
    assert empty.exit_code == 0 and json.loads(empty.stdout) == []
    assert "no campaigns yet" in runner.invoke(app, ["label", "status"]).stdout

    logs = load_logs(kitti_root, format="kitti-tracking", log_ids=["0012"])
    names = ["status-a", "status-b", "status-c"]
    for k, name in enumerate(names):
        sel = tmp_path / f"{name}.csv"
        with sel.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["log_id", "frame", "score", "reasons"])
            w.writerows(["0012", fr, 1.0, "lidar_only:car"] for fr in range(k, 40, 10))
        assert api.push_selection(sel, name, ls_settings, logs=logs).created == 4
    with LabelStudioClient(ls_server.url, ls_server.token) as client:
        assert simulate("status-a", read_kitti_truth(kitti_root), client=client).answered == 4
        assert simulate("status-b", read_kitti_truth(kitti_root), client=client, limit=1).answered == 1
        gone = find_campaign(client, "status-c")
        assert gone is not None
        client.request("DELETE", f"/api/projects/{gone.project_id}")
    api.sync_campaign("status-a", ls_settings)

    res = runner.invoke(app, ["label", "status", "--json"])
    assert res.exit_code == 3, res.output  # done, with a row that could not be counted (before: 0)
    rows = json.loads(res.stdout)
    assert [r["campaign"] for r in rows] == names
    a, b, c = rows
    assert (a["state"], a["tasks"], a["annotated"], a["synced"]) == ("complete", 4, 4, 4) and a["completed_at"]
    assert (b["state"], b["tasks"], b["annotated"], b["synced"]) == ("open", 4, 1, 0) and b["completed_at"] is None
    assert c["state"] == "open" and "no project titled 'status-c'" in c["error"] and "tasks" not in c

    text = runner.invoke(app, ["label", "status"])
    assert text.exit_code == 3, text.output
    for name in names:
        assert name in text.stdout
    assert "no project titled 'status-c'" in text.stdout
    one = json.loads(runner.invoke(app, ["label", "status", "--campaign", "status-b", "--json"]).stdout)
    assert (one["tasks"], one["annotated"]) == (4, 1)
