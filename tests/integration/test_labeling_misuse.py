"""What people do to a campaign in Label Studio that fleetloop did not plan for, against a real
server: a changed labeling config, edited or hand-added tasks, malformed values, deleted tasks, a
renamed project. Nothing may be delivered wrong, nothing may be lost silently, and one bad task
never stops the others."""

from __future__ import annotations

import csv
import json

import pytest

from fleetloop.label import api, index
from fleetloop.label.campaigns import find_campaign, label_config
from fleetloop.label.convert import box_to_result
from fleetloop.label.sync import SyncError, read_labels, sync
from fleetloop.sim.labeling_team import relabel
from fleetloop.store.objects import get_store

pytestmark = [pytest.mark.services, pytest.mark.kitti, pytest.mark.timeout(600)]
pytest_plugins = ["tests.fixtures_ls"]

W, H = 1242, 375
GOOD = box_to_result("car", 100, 100, 200, 200, W, H)


@pytest.fixture(scope="module", name="logs")
def kitti_log_0012(kitti_root):
    """KITTI's log 0012 (fixture ``logs``)."""
    from fleetloop.ingest.importers import load_logs

    return load_logs(kitti_root, format="kitti-tracking", log_ids=["0012"])


def _push(ls_settings, tmp_path, logs, campaign: str, frames) -> list[dict]:
    """Push the frames of log 0012 through the API (so the campaign is in the index); its tasks."""
    sel = tmp_path / f"{campaign}.csv"
    with sel.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["log_id", "frame", "score", "reasons"])
        w.writerows(["0012", fr, 0.5, "lidar_only:car"] for fr in frames)
    report = api.push_selection(sel, campaign, ls_settings, logs=logs)
    assert report.created == len(frames) and not report.problems
    with api.client_for(ls_settings) as client:
        return sorted((t for page in client.iter_tasks(report.project_id) for t in page), key=lambda t: t["id"])


def _annotate(client, task_id: int, result: list[dict]) -> int:
    return client.request("POST", f"/api/tasks/{task_id}/annotations/", json={"result": result})["id"]


def _edit_data(client, task: dict, **changes) -> None:
    client.request("PATCH", f"/api/tasks/{task['id']}", json={"data": {**task["data"], **changes}})


def test_a_region_from_an_added_control_is_rejected_not_dropped(ls_settings, tmp_path, logs, client):
    """A control added to the project's config (here a polygon tool): its regions cannot become
    labels, and delivering the annotation without them would turn those objects into background."""
    tasks = _push(ls_settings, tmp_path, logs, "misuse-poly", [0, 4])
    project = find_campaign(client, "misuse-poly")
    assert project is not None
    poly_config = label_config().replace(
        "</View>", '<PolygonLabels name="poly" toName="image"><Label value="car"/></PolygonLabels></View>')
    client.request("PATCH", f"/api/projects/{project.project_id}", json={"label_config": poly_config})
    polygon = {"from_name": "poly", "to_name": "image", "type": "polygonlabels", "original_width": W,
               "original_height": H, "value": {"points": [[10, 10], [30, 10], [30, 40]], "polygonlabels": ["car"]}}
    bad = _annotate(client, tasks[0]["id"], [GOOD, polygon])
    _annotate(client, tasks[1]["id"], [GOOD])
    store = get_store(ls_settings)
    report = sync("misuse-poly", client=client, store=store, home=ls_settings.home)
    assert report.delivered == 1 and [p.annotation_id for p in report.problems] == [bad]
    assert "from control 'poly' is not fleetloop's box control 'box'" in report.problems[0].message
    assert bad not in read_labels(store, "misuse-poly")["annotation_id"].to_pylist()
    relabel(client, bad, [GOOD])  # the labeler redraws it as a box: delivered
    again = sync("misuse-poly", client=client, store=store, home=ls_settings.home)
    assert again.delivered == 1 and again.problems == []


def test_a_renamed_box_control_fails_the_campaigns_sync_with_what_to_do(ls_settings, tmp_path, logs, client):
    _push(ls_settings, tmp_path, logs, "misuse-config", [8])
    project = find_campaign(client, "misuse-config")
    assert project is not None
    client.request("PATCH", f"/api/projects/{project.project_id}",
                   json={"label_config": label_config().replace('name="box"', 'name="bbox"')})
    with pytest.raises(SyncError, match="no RectangleLabels control named 'box'"):
        api.sync_campaign("misuse-config", ls_settings)


def test_edited_hand_added_and_malformed_tasks_are_rejected_and_the_rest_is_delivered(ls_settings, tmp_path, logs, client):
    from typer.testing import CliRunner

    from fleetloop.cli import app

    tasks = _push(ls_settings, tmp_path, logs, "misuse-data", [12, 16, 20, 24, 28, 32])
    edited, bad_frame, bad_width, rotated, good_task, _ = tasks
    _edit_data(client, edited, frame=edited["data"]["frame"] + 1)  # now points at another frame
    _edit_data(client, bad_frame, frame="abc")
    _edit_data(client, bad_width, image_width="wide")
    project = find_campaign(client, "misuse-data")
    assert project is not None
    by_hand = client.request("POST", "/api/tasks", json={"project": project.project_id,
                                                        "data": {**edited["data"], "fleetloop_key": None}})
    ann = {t["id"]: _annotate(client, t["id"], [GOOD]) for t in (edited, bad_frame, bad_width, good_task)}
    turned = {**GOOD, "value": {**GOOD["value"], "rotation": "none"}}
    ann[rotated["id"]] = _annotate(client, rotated["id"], [turned])
    ann[by_hand["id"]] = _annotate(client, by_hand["id"], [GOOD])

    res = CliRunner().invoke(app, ["label", "sync", "--campaign", "misuse-data", "--json"])
    assert res.exit_code == 3, res.output
    report = json.loads(res.stdout)
    assert report["delivered"] == 1
    msgs = {p["task_id"]: p["message"] for p in report["problems"]}
    assert set(msgs) == {edited["id"], bad_frame["id"], bad_width["id"], rotated["id"], by_hand["id"]}
    assert "do not match its fleetloop_key" in msgs[edited["id"]]
    assert "frame='abc'" in msgs[bad_frame["id"]]
    assert "image_width='wide'" in msgs[bad_width["id"]]
    assert "rotation 'none'" in msgs[rotated["id"]]
    assert "no fleetloop_key" in msgs[by_hand["id"]] and "delete it" in msgs[by_hand["id"]]
    labels = read_labels(get_store(ls_settings), "misuse-data")
    assert labels["annotation_id"].to_pylist() == [ann[good_task["id"]]]


def test_a_deleted_task_never_makes_the_campaign_complete(ls_settings, tmp_path, logs, client):
    """After a synced task is deleted in Label Studio, the remaining unlabelled task keeps the
    campaign open, so the default sync (open campaigns only) still fetches its annotation."""
    first, second = _push(ls_settings, tmp_path, logs, "misuse-deleted", [36, 40])
    _annotate(client, first["id"], [GOOD])
    assert api.sync_campaign("misuse-deleted", ls_settings).delivered == 1
    client.request("DELETE", f"/api/tasks/{first['id']}/")
    api.sync_campaign("misuse-deleted", ls_settings)
    store = get_store(ls_settings)
    assert index.get(store, "misuse-deleted").state == "open"
    assert api.status("misuse-deleted", ls_settings)["synced"] == 0
    later = _annotate(client, second["id"], [GOOD])
    out = api.sync_open_campaigns(ls_settings)
    assert out.delivered == 1 and out.completed == ["misuse-deleted"]
    assert later in read_labels(store, "misuse-deleted")["annotation_id"].to_pylist()


def test_a_renamed_project_is_reported_as_such(ls_settings, tmp_path, logs, client):
    _push(ls_settings, tmp_path, logs, "misuse-renamed", [44])
    project = find_campaign(client, "misuse-renamed")
    assert project is not None
    client.request("PATCH", f"/api/projects/{project.project_id}", json={"title": "misuse-renamed-by-someone"})
    with pytest.raises(SyncError, match=r"no project titled 'misuse-renamed' .*renamed or deleted"):
        api.sync_campaign("misuse-renamed", ls_settings)
    out = api.sync_open_campaigns(ls_settings)
    assert "Pushing again would create a new project" in out.failed["misuse-renamed"]
