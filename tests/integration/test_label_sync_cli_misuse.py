"""``fleetloop label sync`` / ``label status`` as a person types them: a campaign name that is a
path, a campaign name in the wrong case, a complete campaign cleaned up in Label Studio."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fleetloop.cli import app
from fleetloop.label import api, index
from fleetloop.label.convert import box_to_result
from fleetloop.store.objects import get_store
from tests.integration.test_labeling_misuse import GOOD, H, W, _annotate, _push, kitti_log_0012  # noqa: F401 (fixture logs)

pytest_plugins = ["tests.fixtures_ls"]


def test_a_campaign_name_that_is_a_path_creates_no_file_outside_the_locks(tmp_path, monkeypatch):
    """The name is refused before anything is written: ``-c ../../../outside`` once made the lock
    file ``<home>/outside.lock`` (and directories ``locks/label-sync-..``); with more ``../`` it
    lands outside fleetloop's home (no server needed: the name is refused first)."""
    from fleetloop.settings import get_settings

    home = tmp_path / "a" / "home"
    monkeypatch.setenv("FLEETLOOP_HOME", str(home))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__TOKEN", "unused")
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(app, ["label", "sync", "-c", "../../../outside"])
    finally:
        get_settings.cache_clear()
    assert res.exit_code == 2, res.output
    assert "invalid campaign name '../../../outside'" in res.output
    assert [p for p in tmp_path.rglob("*.lock") if home / "locks" not in p.parents] == []


@pytest.mark.services
@pytest.mark.kitti
@pytest.mark.timeout(600)
def test_a_campaign_name_in_the_wrong_case_names_the_campaign_meant(ls_settings, tmp_path, logs, client):
    """``-c Cli-Case`` for the campaign ``cli-case``: the error said "push to the campaign first",
    and pushing to that spelling would make a second project with every frame to label again."""
    (task,) = _push(ls_settings, tmp_path, logs, "cli-case", [48])
    _annotate(client, task["id"], [GOOD])
    runner = CliRunner()
    for command in ("sync", "status"):
        res = runner.invoke(app, ["label", command, "-c", "CLI-Case"])
        assert res.exit_code == 2, res.output
        assert "did you mean 'cli-case'" in res.output and "push to the campaign first" not in res.output
    assert runner.invoke(app, ["label", "sync", "-c", "cli-case"]).exit_code == 0


@pytest.mark.services
@pytest.mark.kitti
@pytest.mark.timeout(600)
def test_a_complete_campaign_whose_tasks_are_deleted_stays_complete(ls_settings, tmp_path, logs, client):
    """Deleting the tasks of a labeled campaign is cleanup (docs: "A task deleted after its
    annotation was delivered"); the campaign reopened (0 tasks, 0 synced) and was polled forever."""
    tasks = _push(ls_settings, tmp_path, logs, "cli-cleaned", [52, 56])
    for t in tasks:
        _annotate(client, t["id"], [GOOD])
    runner = CliRunner()
    assert runner.invoke(app, ["label", "sync", "-c", "cli-cleaned"]).exit_code == 0
    store = get_store(ls_settings)
    done = index.get(store, "cli-cleaned")
    assert done.state == "complete" and done.completed_at
    for t in tasks:
        client.request("DELETE", f"/api/tasks/{t['id']}/")
    res = runner.invoke(app, ["label", "sync", "-c", "cli-cleaned", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["tasks_deleted"] == 2
    rows = json.loads(runner.invoke(app, ["label", "status", "--json"]).stdout)
    row = next(r for r in rows if r["campaign"] == "cli-cleaned")
    assert (row["state"], row["completed_at"]) == ("complete", done.completed_at)
    assert "cli-cleaned" not in api.sync_open_campaigns(ls_settings).campaigns


@pytest.mark.services
@pytest.mark.kitti
@pytest.mark.timeout(600)
def test_status_counts_an_annotation_updated_after_its_campaign_completed(ls_settings, tmp_path, logs, client):
    """A labeler corrects a delivered box after the campaign is complete: the default sync no longer
    visits the campaign, and `label status` said "1 synced" as if the dataset had the correction."""
    (task,) = _push(ls_settings, tmp_path, logs, "cli-updated", [64])
    aid = _annotate(client, task["id"], [GOOD])
    runner = CliRunner()
    assert runner.invoke(app, ["label", "sync", "-c", "cli-updated"]).exit_code == 0
    client.request("PATCH", f"/api/annotations/{aid}/",
                   json={"result": [box_to_result("pedestrian", 100, 100, 150, 250, W, H)]})
    assert "cli-updated" not in api.sync_open_campaigns(ls_settings).campaigns  # complete: not polled
    st = json.loads(runner.invoke(app, ["label", "status", "-c", "cli-updated", "--json"]).stdout)
    assert (st["synced"], st["annotations_delivered"], st["annotations_undelivered"]) == (1, 1, 1)
    text = runner.invoke(app, ["label", "status", "-c", "cli-updated"])
    assert "1 annotations not delivered as they are now" in " ".join(text.stdout.split())
    res = runner.invoke(app, ["label", "sync", "-c", "cli-updated", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["revisions"] == 1
    st = json.loads(runner.invoke(app, ["label", "status", "-c", "cli-updated", "--json"]).stdout)
    assert st["annotations_undelivered"] == 0
