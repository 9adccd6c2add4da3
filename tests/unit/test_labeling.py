"""Unit tests of the labeling bridge's pure parts: conversions, validation, rendering,
selection parsing, the watermark's crash recovery, the simulated team's determinism, the
webhook receiver and the server's environment. The real-server tests are in
test_labeling_integration.py."""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import numpy as np
import pyarrow as pa
import pytest

from fleetloop.label import campaigns
from fleetloop.label.client import LabelStudioAuthError, token_kind
from fleetloop.label.convert import BadRegion, box_to_result, is_unusable, result_to_box, unusable_result
from fleetloop.label.push import SelectionError, read_selection, task_key
from fleetloop.label.render import RENDER_BANNER, project_lidar_boxes, render_frame
from fleetloop.label.sync import (
    Delivered,
    Watermark,
    _shard_bytes,
    _shard_key,
    _watermark_key,
    convert_annotation,
    load_watermark,
    read_labels,
)
from fleetloop.label.webhook import SECRET_HEADER, WebhookReceiver
from fleetloop.local import label_studio as server
from fleetloop.schema import CLASSES, LABELS
from fleetloop.sim.labeling_team import TeamConfig, answer_task
from fleetloop.store.objects import LocalStore

W, H = 1242, 375


# ------------------------------------------------------------------ conversions


@pytest.mark.parametrize("box", [(0, 0, W, H), (10.5, 20.25, 400.75, 300.125), (1200, 100, 1241.9, 374.5)])
def test_box_roundtrip_is_exact(box):
    item = box_to_result("car", *box, W, H, score=0.7, region_id="r1")
    assert item["original_width"] == W and item["value"]["rectanglelabels"] == ["car"] and item["score"] == 0.7
    back = result_to_box(item, W, H)
    assert back.cls == "car"
    assert np.allclose((back.x1, back.y1, back.x2, back.y2), box, atol=1e-9)


def test_box_to_result_clips_to_the_image():
    item = box_to_result("pedestrian", -5, -3, W + 10, H + 1, W, H)
    v = item["value"]
    assert (v["x"], v["y"]) == (0.0, 0.0)
    assert v["x"] + v["width"] == pytest.approx(100.0) and v["y"] + v["height"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda v: v.update(rectanglelabels=["truck"]), "unknown class 'truck'"),
        (lambda v: v.update(rectanglelabels=["car", "cyclist"]), "exactly one class"),
        (lambda v: v.update(x=95.0, width=20.0), "outside the image"),
        (lambda v: v.update(y=-3.0), "outside the image"),
        (lambda v: v.update(rotation=15), "rotated box"),
        (lambda v: v.update(width=0.0), "no area"),
        (lambda v: v.pop("height"), "lacks numeric"),
        (lambda v: v.update(rotation="none"), "rotation 'none' is not a number"),
        (lambda v: v.update(x="left"), "lacks numeric"),
        (lambda v: v.update(x=float("nan")), "non-finite"),
    ],
)
def test_result_to_box_rejects_bad_regions(mutate, message):
    item = box_to_result("car", 100, 100, 200, 200, W, H)
    mutate(item["value"])
    with pytest.raises(BadRegion, match=message):
        result_to_box(item, W, H)


def test_result_to_box_tolerates_a_hair_over_the_border_and_checks_image_size():
    item = box_to_result("car", 1000, 100, W, H, W, H)
    item["value"]["width"] += 0.01  # a drag that ends a hair outside
    box = result_to_box(item, W, H)
    assert box.x2 == W
    with pytest.raises(BadRegion, match="task image is 1224x370"):
        result_to_box(item, 1224, 370)


def test_unusable_choice_is_recognised():
    assert is_unusable(unusable_result())
    assert not is_unusable([box_to_result("car", 1, 1, 50, 50, W, H)])


def test_convert_annotation_lineage_and_problems():
    task = {"id": 7, "data": {"log_id": "0001", "frame": 12, "image_width": W, "image_height": H,
                              "fleetloop_key": "camp/0001/12"}}
    good = box_to_result("car", 10, 20, 110, 120, W, H)
    bad = box_to_result("car", 10, 20, 110, 120, W, H)
    bad["value"]["rectanglelabels"] = ["Van"]
    ann = {"id": 3, "updated_at": "2026-01-02T03:04:05.123456Z", "result": [good]}
    status, rows, problems = convert_annotation(task, ann, "camp", 2, "a@b.c")
    assert status == "labeled" and not problems
    table = pa.Table.from_pylist(rows, schema=LABELS)  # the rows fit the LABELS schema exactly
    row = table.to_pylist()[0]
    assert (row["log_id"], row["frame"], row["cls"], row["task_id"], row["annotation_id"], row["revision"]) == (
        "0001",
        12,
        "car",
        7,
        3,
        2,
    )
    assert row["annotator"] == "a@b.c" and row["campaign"] == "camp"
    assert row["updated_at"].isoformat() == "2026-01-02T03:04:05.123456+00:00"
    status, rows, problems = convert_annotation(task, {**ann, "result": [good, bad]}, "camp", 1, None)
    assert len(problems) == 1 and "unknown class 'Van'" in problems[0].message and problems[0].task_id == 7
    assert convert_annotation(task, {**ann, "result": []}, "camp", 1, None)[0] == "empty"
    assert convert_annotation(task, {**ann, "result": unusable_result()}, "camp", 1, None)[0] == "unusable"
    status, _, problems = convert_annotation({"id": 8, "data": {"image": "x"}}, ann, "camp", 1, None)
    assert status == "invalid" and "not created by" in problems[0].message


_TASK = {"id": 7, "data": {"log_id": "0001", "frame": 12, "image_width": W, "image_height": H,
                           "fleetloop_key": "camp/0001/12"}}
_ANN = {"id": 3, "updated_at": "2026-01-02T03:04:05Z"}


def _convert(result, task=_TASK, **ann):
    return convert_annotation(task, {**_ANN, "result": result, **ann}, "camp", 1, None)


def test_a_region_from_another_control_rejects_the_annotation():
    """A region fleetloop cannot read (its control renamed in the project's config, or another
    control's polygon) must not vanish: the annotation would be delivered without those objects."""
    good = box_to_result("car", 10, 20, 110, 120, W, H)
    renamed = {**box_to_result("pedestrian", 200, 20, 260, 200, W, H), "from_name": "bbox"}
    polygon = {"from_name": "poly", "to_name": "image", "type": "polygonlabels",
               "value": {"points": [[1, 1], [5, 1], [5, 5]], "polygonlabels": ["car"]}}
    status, rows, problems = _convert([good, renamed])
    assert (status, rows) == ("invalid", [])
    assert len(problems) == 1 and problems[0].annotation_id == 3
    assert "control 'bbox' is not fleetloop's box control 'box'" in problems[0].message
    assert "labeling config was changed" in problems[0].message
    assert "'polygonlabels' from control 'poly'" in _convert([good, polygon])[2][0].message
    polygon_in_box = {**polygon, "from_name": "box"}
    assert "draws rectanglelabels" in _convert([good, polygon_in_box])[2][0].message
    other_choice = {**unusable_result()[0], "value": {"choices": ["blurry"]}}
    assert "offers only" in _convert([good, other_choice])[2][0].message
    relation = {"type": "relation", "from_id": "a", "to_id": "b", "direction": "right"}
    assert _convert([good, relation])[0] == "labeled"  # links between regions change no box


@pytest.mark.parametrize("data, message", [
    ({"frame": "abc"}, "frame='abc' is not a whole number"),
    ({"frame": 1.5}, "frame=1.5 is not a whole number"),
    ({"image_width": "wide"}, "image_width='wide' is not a positive whole number"),
    ({"image_height": -3}, "image_height=-3"),
    ({"fleetloop_key": None}, "no fleetloop_key"),
    ({"log_id": "0002"}, "do not match its fleetloop_key 'camp/0001/12'"),
    ({"frame": 13}, "do not match its fleetloop_key"),
    ({"fleetloop_key": "other/0001/12"}, "do not match its fleetloop_key 'other/0001/12'"),
])
def test_malformed_or_edited_task_data_is_a_problem_not_a_crash(data, message):
    task = {"id": 7, "data": {**_TASK["data"], **data}}
    status, rows, problems = _convert([box_to_result("car", 10, 20, 110, 120, W, H)], task=task)
    assert (status, rows) == ("invalid", []) and len(problems) == 1
    assert message in problems[0].message and problems[0].task_id == 7 and problems[0].annotation_id == 3


def test_malformed_annotation_values_are_problems_not_crashes():
    good = box_to_result("car", 10, 20, 110, 120, W, H)
    assert "updated_at=None" in _convert([good], updated_at=None)[2][0].message
    assert "not a list" in _convert({"x": 1})[2][0].message
    assert "not an object" in _convert([good, "box"])[2][0].message
    rotated = box_to_result("car", 10, 20, 110, 120, W, H)
    rotated["value"]["rotation"] = "none"
    status, _, problems = _convert([good, rotated])
    assert status == "invalid" and "rotation 'none'" in problems[0].message
    wide = {**good, "original_width": "wide"}
    assert "not a positive number" in _convert([wide])[2][0].message


def test_unusable_with_drawn_boxes_is_a_problem_but_untouched_pre_annotations_are_not():
    drawn = box_to_result("car", 10, 20, 110, 120, W, H)
    status, _, problems = _convert([*unusable_result(), drawn])
    assert status == "invalid" and "marks the frame unusable but also draws 1 boxes" in problems[0].message
    task = {**_TASK, "predictions": [{"result": [box_to_result("car", 10, 20, 110, 120, W, H, score=0.9)]}]}
    assert _convert([*unusable_result(), drawn], task=task)[0] == "unusable"


def test_sync_isolates_every_annotation(tmp_path):
    """One bad task or region (even one that makes conversion raise) never stops the sync: it is a
    problem, the rest is delivered."""
    from fleetloop.label.sync import sync

    key = lambda f: {"log_id": "0001", "frame": f, "image_width": W, "image_height": H,  # noqa: E731
                     "fleetloop_key": f"camp/0001/{f}"}
    good = [box_to_result("car", 10, 20, 110, 120, W, H)]
    tasks = [
        {"id": 1, "data": key(1), "total_annotations": 1, "annotations": [{"id": 11, "updated_at": _ANN["updated_at"],
                                                                          "result": good}]},
        {"id": 2, "data": {**key(2), "frame": "abc"}, "total_annotations": 1,
         "annotations": [{"id": 12, "updated_at": _ANN["updated_at"], "result": good}]},
        {"id": 3, "data": "not a dict", "total_annotations": 1,
         "annotations": [{"id": 13, "updated_at": _ANN["updated_at"], "result": good}]},
        {"id": 4, "data": key(4), "total_annotations": 1, "annotations": [{"id": 14, "updated_at": _ANN["updated_at"],
                                                                          "result": []}]},
    ]

    class FakeClient:
        url = "http://ls"

        def request(self, method, path, **kw):
            if path == "/api/projects":
                return {"results": [{"id": 5, "title": "camp", "description": "fleetloop campaign camp"}]}
            return {"label_config": campaigns.label_config()}

        def iter_tasks(self, project_id, **kw):
            yield tasks

        def user_email(self, user_id):
            return None

    store = LocalStore(tmp_path / "store")
    report = sync("camp", client=FakeClient(), store=store, home=tmp_path)  # type: ignore[arg-type]
    assert (report.delivered, report.labels, report.empty) == (2, 1, 1)
    assert sorted(p.task_id for p in report.problems) == [2, 3]
    assert "frame='abc'" in report.problems[0].message and report.problems[1].annotation_id == 13


def test_sync_refuses_a_project_whose_labeling_config_lost_fleetloops_controls(tmp_path):
    from fleetloop.label.sync import SyncError, sync

    renamed = campaigns.label_config().replace('name="box"', 'name="bbox"').replace(
        '<Label value="cyclist" background="#2ca02c"/>', "")
    assert campaigns.config_problems(campaigns.label_config()) == []
    problems = campaigns.config_problems(renamed)
    assert problems == ["no RectangleLabels control named 'box'"]
    assert campaigns.config_problems(campaigns.label_config().replace('<Label value="cyclist" background="#2ca02c"/>',
                                                                      "")) == ["control 'box' lacks the labels ['cyclist']"]

    class FakeClient:
        url = "http://ls"

        def request(self, method, path, **kw):
            if path == "/api/projects":
                return {"results": [{"id": 5, "title": "camp", "description": "fleetloop campaign camp"}]}
            return {"label_config": renamed}

    with pytest.raises(SyncError, match=r"no RectangleLabels control named 'box'.*restore"):
        sync("camp", client=FakeClient(), store=LocalStore(tmp_path / "s"), home=tmp_path)  # type: ignore[arg-type]


# ------------------------------------------------------------------ campaigns, tokens, selection


def test_label_config_matches_the_taxonomy():
    xml = campaigns.label_config()
    for cls in CLASSES:
        assert f'<Label value="{cls}"' in xml
    assert campaigns.UNUSABLE in xml


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 51, "a/b", "c", "c1", "week-23\n"])  # "\n": "$" let it in
def test_bad_campaign_names(name):
    with pytest.raises(campaigns.CampaignError):
        campaigns.check_name(name)


def _jwt(claims: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")  # noqa: E731
    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(claims)}.sig"


def test_token_kind():
    assert token_kind("0123456789abcdef0123456789abcdef01234567") == "legacy"
    assert token_kind(_jwt({"token_type": "refresh", "exp": 9999999999})) == "personal"
    with pytest.raises(LabelStudioAuthError, match="not a short-lived access token"):
        token_kind(_jwt({"token_type": "access", "exp": 9999999999}))


def test_read_selection_keeps_log_ids_as_strings(tmp_path):
    p = tmp_path / "sel.csv"
    p.write_text("log_id,frame,score,reasons,run\n0001,5,0.9,lidar_only:car;uncertain,r1\n0006,7,,,r1\n")
    rows = read_selection(p)
    assert rows[0]["log_id"] == "0001" and rows[0]["frame"] == 5 and rows[0]["score"] == 0.9
    assert rows[0]["reasons"] == "lidar_only:car;uncertain" and rows[0]["run"] == "r1"
    assert rows[1]["score"] is None and rows[1]["reasons"] == ""
    assert task_key("c", "0001", 5) == "c/0001/5"
    for text, message in [
        ("log_id,frame\n0001,five\n", "line 2: frame 'five' is not a whole number"),
        ("log_id,frame,score\n0001,3,0.5\n0001,4,high\n", "line 3: score 'high' is not a number"),
        ("log_id,frame\n0001,-2\n", "line 2: frame -2 is negative"),
        ("log_id,frame\n0001,2,9\n", "line 2: 2 columns in the header, another number of cells"),
        ("log_id,frame\n0001\n", "line 2: 2 columns in the header, another number of cells"),
    ]:
        p.write_text(text)
        with pytest.raises(SelectionError, match=f"sel.csv, {message}"):
            read_selection(p)
    with pytest.raises(SelectionError, match="does not exist"):
        read_selection(tmp_path / "nope.csv")


# ------------------------------------------------------------------ rendering and projection


@pytest.mark.kitti
def test_lidar_projection_matches_the_detectors_own_2d_boxes(kitti_root):
    """PointRCNN's files carry the P2 projection of each 3D box clipped to the image: our
    projection of the imported (lidar-frame) boxes must reproduce it."""
    import pandas as pd

    from fleetloop.ingest.importers import load_logs

    logs = load_logs(kitti_root, format="kitti-tracking", log_ids=["0001", "0006"])
    proj = project_lidar_boxes(logs).to_pandas()
    raw = []
    for seq in ("0001", "0006"):
        df = pd.read_csv(kitti_root / "lidar_det" / "pointrcnn" / f"{seq}.txt", header=None)
        df = df.sort_values(0, kind="stable").reset_index(drop=True)
        df["log_id"], df["frame"], df["det_id"] = seq, df[0], df.groupby(0).cumcount()
        raw.append(df)
    merged = proj.merge(pd.concat(raw), on=["log_id", "frame", "det_id"])
    assert len(merged) >= 0.98 * logs.lidar_detections.num_rows
    err = np.abs(merged[["x1", "y1", "x2", "y2"]].to_numpy() - merged[[2, 3, 4, 5]].to_numpy())
    assert np.median(err) < 0.5 and np.percentile(err, 95) < 2.0


def test_render_frame_is_camera_sized_and_marked():
    boxes = {
        "lidar": [{"cls": "car", "score": 0.9, "x1": 100, "y1": 150, "x2": 300, "y2": 300}],
        "track": [{"cls": "car", "score": None, "x1": 110, "y1": 160, "x2": 310, "y2": 310}],
        "camera": [],
    }
    img = render_frame(boxes, W, H, caption="log x frame 1")
    assert img.size == (W, H)
    px = np.asarray(img)
    assert tuple(px[5, 600]) == (150, 0, 0)  # the red banner across the top
    assert (px[2:20, 6:440] == 255).all(axis=2).any()  # with white text in it
    assert "NOT A CAMERA IMAGE" in RENDER_BANNER
    assert (px[150:300, 100] == (0, 200, 255)).all(axis=1).any()  # the lidar box edge is drawn


# ------------------------------------------------------------------ watermark and shards


def _manifest(aid: int, updated: str, rev: int = 1) -> dict:
    return {
        "annotation_id": aid,
        "task_id": 100 + aid,
        "updated_at": updated,
        "revision": rev,
        "status": "labeled",
        "boxes": 1,
        "annotator": None,
        "log_id": "0001",
        "frame": aid,
    }


def _row(aid: int, rev: int = 1) -> dict:
    from datetime import UTC, datetime

    return {
        "log_id": "0001",
        "frame": aid,
        "cls": "car",
        "x1": 1.0,
        "y1": 2.0,
        "x2": 30.0,
        "y2": 40.0,
        "campaign": "c",
        "task_id": 100 + aid,
        "annotation_id": aid,
        "annotator": None,
        "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
        "revision": rev,
    }


def test_watermark_folds_in_a_shard_written_before_a_crash(tmp_path):
    store = LocalStore(tmp_path)
    wm = Watermark(campaign="cam", last_shard=1, delivered={1: Delivered(updated_at="t1", revision=1, task_id=101)})
    store.put_bytes(_shard_key("cam", 1), _shard_bytes([_row(1)], [_manifest(1, "t1")]))
    store.put_bytes(_watermark_key("cam"), wm.model_dump_json().encode())
    # the crash: shard 2 durable, its watermark never written
    store.put_bytes(_shard_key("cam", 2), _shard_bytes([_row(2)], [_manifest(2, "t2"), _manifest(3, "t3")]))
    loaded, recovered = load_watermark(store, "cam")
    assert recovered == [_shard_key("cam", 2)]
    assert loaded.last_shard == 2 and set(loaded.delivered) == {1, 2, 3}
    assert loaded.delivered[3].updated_at == "t3"
    # a later revision of annotation 1: read_labels keeps only the newest
    store.put_bytes(_shard_key("cam", 3), _shard_bytes([_row(1, rev=2)], [_manifest(1, "t1b", rev=2)]))
    latest = read_labels(store, "cam")
    assert sorted(zip(latest["annotation_id"].to_pylist(), latest["revision"].to_pylist(), strict=True)) == [(1, 2), (2, 1)]
    assert read_labels(store, "cam", latest=False).num_rows == 3
    assert latest.schema.equals(LABELS, check_metadata=False)


# ------------------------------------------------------------------ simulated team


def test_simulated_answers_are_deterministic_and_noisy():
    task = {"id": 1, "data": {"fleetloop_key": "c/0001/3", "image_width": W, "image_height": H}}
    truth = [("car", 100.0, 100.0, 200.0, 180.0), ("pedestrian", 1230.0, 50.0, 1250.0, 90.0)]
    team = TeamConfig(noise_px=2.0, seed=7)
    a1, a2 = answer_task(task, truth, team), answer_task(task, truth, team)
    assert a1 == a2 and a1[0] == "labeled" and len(a1[1]) == 2
    assert a1[1][1][3] == W  # clipped to the image
    assert any(abs(a - b) > 0.01 for a, b in zip(a1[1][0][1:], truth[0][1:], strict=True))
    assert answer_task(task, truth, TeamConfig(seed=7))[1][0] == truth[0]  # no noise: exact truth
    skipped = [
        answer_task(
            {"id": i, "data": {"fleetloop_key": f"c/x/{i}", "image_width": W, "image_height": H}},
            truth,
            TeamConfig(skip_rate=0.3, seed=1),
        )[0]
        for i in range(400)
    ]
    assert 0.2 < (skipped.count("unusable") + skipped.count("left")) / 400 < 0.4
    assert skipped.count("unusable") > 0 and skipped.count("left") > 0


# ------------------------------------------------------------------ webhook receiver


def test_webhook_receiver_checks_the_secret_and_coalesces():
    calls: list[str] = []
    gate = threading.Event()

    def action(campaign: str) -> None:
        calls.append(campaign)
        gate.wait(5)

    rx = WebhookReceiver(action, secret="s", campaigns={"camp"}).start()
    try:
        post = lambda body, secret="s": httpx.post(rx.url, json=body, headers={SECRET_HEADER: secret})  # noqa: E731
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 1, "title": "camp"}}
        assert post(event, secret="wrong").status_code == 403
        assert post({"action": "PROJECT_UPDATED", "project": {"title": "camp"}}).status_code == 200
        assert post({**event, "project": {"title": "other"}}).json()["status"].startswith("ignored")
        assert post(event).status_code == 202
        for _ in range(3):  # arrive while the first sync runs: one more run, not three
            assert post({**event, "action": "ANNOTATION_UPDATED"}).status_code == 202
        gate.set()
        deadline = time.monotonic() + 5
        while not rx.coalescer.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calls == ["camp", "camp"]
    finally:
        rx.stop()


# ------------------------------------------------------------------ server environment


def test_server_env_is_a_whitelist(monkeypatch, tmp_path):
    monkeypatch.setenv("USERNAME", "stray-user")
    monkeypatch.setenv("PASSWORD", "stray")
    monkeypatch.setenv("HOST", "example.com")
    state = server.ServerState(
        url="http://127.0.0.1:1",
        port=1,
        token="t" * 40,
        username="u@x",
        password="p",
        data_dir=str(tmp_path),
        document_root=str(tmp_path),
    )
    env = server.server_env(tmp_path / "venv", state)
    assert not {"USERNAME", "PASSWORD", "HOST", "PYTHONPATH"} & set(env)
    assert env["LABEL_STUDIO_USER_TOKEN"] == "t" * 40 and env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path)
    assert env["COLLECT_ANALYTICS"] == "false" and env["SENTRY_DSN"] == "" and env["LATEST_VERSION_CHECK"] == "false"


def test_stop_never_signals_a_process_it_did_not_start(tmp_path):
    import os

    state = server.ServerState(
        url="http://127.0.0.1:1",
        port=1,
        token="t",
        username="u",
        password="p",
        data_dir=str(tmp_path),
        document_root=str(tmp_path),
        pid=os.getpid(),
    )
    server._write_state(tmp_path, state)
    assert (server.service_dir(tmp_path) / "state.json").stat().st_mode & 0o777 == 0o600
    assert server.stop(tmp_path) is False  # our own pid is not a label-studio session leader
    assert server.read_state(tmp_path).pid is None


def test_project_lidar_boxes_of_logs_without_lidar_is_empty():
    from fleetloop.schema import DriveLogs

    assert project_lidar_boxes(DriveLogs.empty()).num_rows == 0


def test_local_files_publisher_keeps_images_inside_the_served_directory(tmp_path):
    from fleetloop.label.images import ImageProblem, LocalFilesPublisher, resolve_image

    home = tmp_path / "home"
    pub = LocalFilesPublisher(home, home / "labeling" / "images")
    inside = home / "labeling" / "images" / "c" / "0001" / "000003.png"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"x")
    assert pub.publish(inside, "c/0001/000003.png") == "/data/local-files/?d=labeling/images/c/0001/000003.png"
    from PIL import Image

    Image.new("RGB", (64, 32)).save(tmp_path / "cam.png")
    url, w, h = resolve_image((tmp_path / "cam.png").as_uri(), pub, "c/0001/000004")
    assert url == "/data/local-files/?d=labeling/images/c/0001/000004.png" and (w, h) == (64, 32)
    assert (home / "labeling" / "images" / "c" / "0001" / "000004.png").read_bytes() == (
        tmp_path / "cam.png"
    ).read_bytes()
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageProblem, match="cannot be loaded"):
        resolve_image(str(tmp_path / "broken.jpg"), pub, "c/0001/000005")
    with pytest.raises(ImageProblem, match="unsupported scheme"):
        resolve_image("ftp://x/y.png", pub, "c/0001/000006")


# ------------------------------------------------------------------ CLI and API over an unreachable or fake server


@pytest.fixture(name="unreachable_ls")
def unreachable_label_studio(tmp_path, monkeypatch):
    """Settings with a local store and a Label Studio nobody listens on."""
    import socket

    from fleetloop.settings import get_settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__TOKEN", "0" * 40)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_sync_of_every_open_campaign_with_label_studio_unreachable_exits_2(unreachable_ls):
    from typer.testing import CliRunner

    from fleetloop.cli import app
    from fleetloop.label import index
    from fleetloop.store.objects import get_store

    store = get_store(unreachable_ls)
    for name in ("fleetloop-2026-w48", "fleetloop-2026-w49"):
        index.register(store, name)
    res = CliRunner().invoke(app, ["label", "sync"])
    assert res.exit_code == 2, res.output
    res = CliRunner().invoke(app, ["label", "sync", "--json"])
    assert res.exit_code == 2 and json.loads(res.stdout)["ok"] is False


def test_sync_of_every_open_campaign_lists_rejected_annotations(unreachable_ls, monkeypatch):
    from typer.testing import CliRunner

    from fleetloop.cli import app
    from fleetloop.label import api, index
    from fleetloop.label.sync import AnnotationProblem, SyncReport
    from fleetloop.store.objects import get_store

    index.register(get_store(unreachable_ls), "fleetloop-2026-w48")

    def fake_sync(campaign, settings, **kw):
        return SyncReport(campaign=campaign, project_id=8, delivered=2, problems=[AnnotationProblem(
            task_id=41, annotation_id=97, log_id="0012", frame=4, message="unknown class 'truck'")])

    monkeypatch.setattr(api, "sync_campaign", fake_sync)
    res = CliRunner().invoke(app, ["label", "sync"], terminal_width=200)
    assert res.exit_code == 3, res.output
    assert "task 41 annotation 97" in res.stdout and "unknown class 'truck'" in res.stdout


def test_a_push_that_fails_leaves_no_campaign_in_the_index(unreachable_ls, tmp_path):
    """A campaign is registered only once its project exists: else every later `label sync`
    would fail on a phantom campaign. A name Label Studio refuses is a usage error up front."""
    from typer.testing import CliRunner

    from fleetloop.cli import app
    from fleetloop.label import api, index
    from fleetloop.label.client import LabelStudioError
    from fleetloop.store.objects import get_store

    sel = tmp_path / "selected.csv"
    sel.write_text("log_id,frame,score,reasons\n0012,4,0.9,lidar_only:car\n")
    with pytest.raises(LabelStudioError, match="failed"):
        api.push_selection(sel, "week-23", unreachable_ls, logs=object())  # type: ignore[arg-type]
    assert index.campaigns(get_store(unreachable_ls)) == []
    with pytest.raises(campaigns.CampaignError, match="3-50 characters"):
        api.push_selection(sel, "c1", unreachable_ls, logs=object())  # type: ignore[arg-type]
    res = CliRunner().invoke(app, ["label", "push", str(sel), "--campaign", "c1"])
    assert res.exit_code == 2 and "3-50 characters" in res.output
    assert index.campaigns(get_store(unreachable_ls)) == []
