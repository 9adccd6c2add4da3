"""The labeling bridge against a real Label Studio server (its own venv, loopback, fresh data dir).

Session fixture (tests/fixtures_ls.py): installs Label Studio into ``<repo>/.fleetloop/services/label-studio/venv``
unless it is there already (~50 s once; ``FLEETLOOP_TEST_LS_VENV`` picks another venv), then
starts it on a free port with a temporary data dir (~25 s first start).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from fleetloop.label.campaigns import find_campaign
from fleetloop.label.client import LabelStudioClient
from fleetloop.label.convert import box_to_result, result_to_box
from fleetloop.label.push import existing_keys, push, read_selection
from fleetloop.label.sync import campaign_status, delivered_manifest, read_labels, sync
from fleetloop.local import label_studio as server
from fleetloop.sim.labeling_team import TeamConfig, relabel, simulate
from fleetloop.store.objects import LocalStore

pytestmark = [pytest.mark.services, pytest.mark.kitti, pytest.mark.timeout(900)]
pytest_plugins = ["tests.fixtures_s3", "tests.fixtures_ls"]

REPO = Path(__file__).resolve().parents[2]
W, H = 1242, 375



@pytest.fixture(scope="session")
def kitti_logs(kitti_root):
    from fleetloop.ingest.importers import load_logs

    return load_logs(kitti_root, format="kitti-tracking")


@pytest.fixture(scope="session")
def truth(kitti_root):
    from fleetloop.ingest.importers.kitti import read_kitti_truth

    return read_kitti_truth(kitti_root)


def _selection(tmp_path: Path, logs, n: int, offset: int = 0) -> Path:
    """A selection CSV like `fleetloop mine --budget` writes: frames with lidar/camera count
    disagreements first, reasons in the mining vocabulary."""
    import pandas as pd

    lid = logs.lidar_detections.to_pandas().groupby(["log_id", "frame"]).size().rename("n_lidar")
    trk = logs.tracks.to_pandas().groupby(["log_id", "frame"]).size().rename("n_track")
    df = pd.concat([lid, trk], axis=1).fillna(0).reset_index()
    df["score"] = (df["n_lidar"] - df["n_track"]).abs() / (1 + df["n_lidar"])
    df["reasons"] = np.where(df["n_lidar"] > df["n_track"], "lidar_only:car;uncertain", "camera_only:car")
    df = df.sort_values(["score", "log_id", "frame"], ascending=[False, True, True]).iloc[offset : offset + n]
    path = tmp_path / f"selected-{offset}-{n}.csv"
    df[["log_id", "frame", "score", "reasons"]].to_csv(path, index=False)
    return path


def _all_tasks(client, project_id):
    return [t for page in client.iter_tasks(project_id, page_size=20) for t in page]


def _same_boxes(got, want, atol: float = 1e-3) -> bool:
    """Same classes and pixel boxes (float32 storage: equal to within a thousandth of a pixel)."""
    got = sorted((r[0], *map(float, r[1:])) for r in got)
    want = sorted((r[0], *map(float, r[1:])) for r in want)
    return len(got) == len(want) and all(
        g[0] == w[0] and np.allclose(g[1:], w[1:], rtol=0, atol=atol) for g, w in zip(got, want, strict=True)
    )


# ------------------------------------------------------------------ server


def test_local_server_is_provisioned_without_prompts(ls_server, ls_home, client):
    assert client.kind == "legacy"
    assert client.whoami()["email"] == server.DEFAULT_USER  # the stray USERNAME did not leak in
    environ = Path(f"/proc/{ls_server.pid}/environ").read_bytes().split(b"\0")
    assert not any(e.startswith(b"USERNAME=") for e in environ)
    assert (server.service_dir(ls_home) / "state.json").stat().st_mode & 0o777 == 0o600
    again = server.start(ls_home, port=ls_server.port)  # idempotent: the running server
    assert again.pid == ls_server.pid and again.token == ls_server.token


def test_services_status_tells_the_login_people_need(ls_server, ls_home, monkeypatch):
    from typer.testing import CliRunner

    from fleetloop.cli import app
    from fleetloop.settings import get_settings

    monkeypatch.setenv("FLEETLOOP_HOME", str(ls_home))
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__PORT", str(ls_server.port))
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(app, ["services", "status", "-s", "label-studio", "--json"])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert doc["ok"] is True and doc["label-studio"]["login"] == f"{ls_server.username} / {ls_server.password}"
        res = CliRunner().invoke(app, ["services", "status", "-s", "label-studio"])
        assert f"Label Studio login: {ls_server.username} / {ls_server.password}" in res.stdout
        assert ls_server.url in res.stdout  # never cut short (the CliRunner's console is 80 columns)
    finally:
        get_settings.cache_clear()


def test_personal_access_token_uses_bearer(ls_server, client):
    pat = client.request("POST", "/api/token/")["token"]
    with LabelStudioClient(ls_server.url, pat) as c:
        assert c.kind == "personal"
        assert c.auth_header()["Authorization"].startswith("Bearer ")
        assert c.whoami()["email"] == server.DEFAULT_USER
        assert c.sdk.projects.list() is not None  # the SDK, with the same key, works too
    r = httpx.get(f"{ls_server.url}/api/projects", headers={"Authorization": f"Token {pat}"})
    assert r.status_code == 401  # the trap the explicit handling avoids


# ------------------------------------------------------------------ push, simulate, sync: the main path


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, client, ls_home, kitti_logs):
    tmp = tmp_path_factory.mktemp("push")
    sel = _selection(tmp, kitti_logs, 50)
    report = push(read_selection(sel), kitti_logs, "kitti-50", client=client, home=ls_home, document_root=ls_home, batch_size=20)
    return sel, report


def test_push_creates_pre_annotated_tasks(pushed, client, kitti_logs, ls_server):
    sel, report = pushed
    assert (report.selected, report.created, report.already_present, report.problems) == (50, 50, 0, [])
    assert report.requests == 3  # batched imports: 20 + 20 + 10, not one request per task
    project = client.request("GET", f"/api/projects/{report.project_id}")
    assert project["model_version"] == "fleetloop-mined" and project["task_number"] == 50
    tasks = _all_tasks(client, report.project_id)
    assert len(tasks) == 50
    rows = {(r["log_id"], r["frame"]): r for r in read_selection(sel)}
    tracks = kitti_logs.tracks.to_pandas()
    n_pred_boxes = 0
    for t in tasks:
        d = t["data"]
        row = rows[(d["log_id"], d["frame"])]
        assert d["fleetloop_key"] == f"kitti-50/{d['log_id']}/{d['frame']}" and d["reasons"] == row["reasons"]
        assert d["rendered"] is True and d["banner"].startswith("RENDERED") and "Why this frame" in d["why"]
        assert d["image"].startswith("/data/local-files/?d=labeling/images/kitti-50/")
        (pred,) = t["predictions"]
        assert pred["model_version"] == "fleetloop-mined"
        # the predictions are the judged camera stream's boxes of that frame (by default the first
        # tracker by name, CIWT here); the other stream is evidence, never a pre-annotation
        got = sorted(
            tuple(round(v, 2) for v in (b.x1, b.y1, b.x2, b.y2))
            for b in (result_to_box(r, W, H) for r in pred["result"])
        )
        f = tracks[(tracks.log_id == d["log_id"]) & (tracks.frame == d["frame"]) & (tracks.sensor == "camera:ciwt")]
        clipped = [(max(r.x1, 0), max(r.y1, 0), min(r.x2, W), min(r.y2, H)) for r in f.itertuples()]
        want = sorted(tuple(round(float(v), 2) for v in b) for b in clipped if b[2] - b[0] >= 1 and b[3] - b[1] >= 1)
        assert got == want
        if pred["result"]:
            assert pred["score"] is not None and all("score" in r for r in pred["result"])
        n_pred_boxes += len(got)
    assert n_pred_boxes > 30


def test_task_images_are_served_to_a_logged_in_browser(pushed, client, ls_server):
    from PIL import Image

    task = _all_tasks(client, pushed[1].project_id)[0]
    browser = httpx.Client(base_url=ls_server.url, follow_redirects=True)
    assert browser.get(task["data"]["image"]).status_code in (401, 403, 404)  # not without a session
    browser.get("/user/login/")
    r = browser.post(
        "/user/login/",
        data={
            "email": ls_server.username,
            "password": ls_server.password,
            "csrfmiddlewaretoken": browser.cookies["csrftoken"],
        },
        headers={"Referer": f"{ls_server.url}/user/login/"},
    )
    assert r.status_code == 200
    img = browser.get(task["data"]["image"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    import io

    assert Image.open(io.BytesIO(img.content)).size == (W, H)
    assert browser.get("/data/local-files/", params={"d": "services/label-studio/state.json"}).status_code == 404


def test_push_again_creates_no_duplicates(pushed, client, ls_home, ls_server, kitti_root):
    sel, first = pushed
    env = {
        **os.environ,
        "FLEETLOOP_HOME": str(ls_home),
        "FLEETLOOP_LABEL_STUDIO__URL": ls_server.url,
        "FLEETLOOP_LABEL_STUDIO__TOKEN": ls_server.token,
    }
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "fleetloop"),
            "label",
            "push",
            str(sel),
            "--source",
            str(kitti_root),
            "--format",
            "kitti-tracking",
            "--campaign",
            "kitti-50",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["created"], report["already_present"], report["requests"]) == (0, 50, 0)
    assert len(_all_tasks(client, first.project_id)) == 50


def test_concurrent_pushes_do_not_race(tmp_path, client, ls_home, ls_server, kitti_logs):
    rows = read_selection(_selection(tmp_path, kitti_logs, 30, offset=200))
    reports = []
    threads = [
        threading.Thread(
            target=lambda: reports.append(
                push(
                    rows,
                    kitti_logs,
                    "kitti-race",
                    client=LabelStudioClient(ls_server.url, ls_server.token),
                    home=ls_home, document_root=ls_home,
                )
            )
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.created for r in reports) == [0, 30]
    campaign = find_campaign(client, "kitti-race")
    assert len(existing_keys(client, campaign.project_id)) == 30 == len(_all_tasks(client, campaign.project_id))


@pytest.fixture(scope="module")
def annotated(pushed, client, truth):
    return simulate("kitti-50", truth, client=client, team=TeamConfig(noise_px=1.5, skip_rate=0.1, seed=11))


@pytest.fixture(scope="module")
def label_store(tmp_path_factory):
    return LocalStore(tmp_path_factory.mktemp("store"))


def test_simulated_team_answers_through_the_api(annotated, client, pushed):
    assert annotated.answered + annotated.unusable + annotated.left_open == 50
    assert annotated.answered >= 35 and annotated.boxes > 50
    project = client.request("GET", f"/api/projects/{pushed[1].project_id}")
    assert project["num_tasks_with_annotations"] == annotated.answered + annotated.unusable


def test_sync_returns_exactly_the_submitted_boxes(annotated, client, ls_home, label_store):
    report = sync("kitti-50", client=client, store=label_store, home=ls_home, page_size=7, shard_size=20)
    assert report.problems == []
    assert report.delivered == annotated.answered + annotated.unusable
    assert report.unusable == annotated.unusable and report.labels == annotated.boxes
    assert len(report.shards) == -(-report.delivered // 20)
    labels = read_labels(label_store, "kitti-50").to_pandas()
    for sub in annotated.submissions:
        got = labels[labels.annotation_id == sub.annotation_id] if sub.annotation_id else labels.iloc[:0]
        assert _same_boxes(got[["cls", "x1", "y1", "x2", "y2"]].itertuples(index=False), sub.boxes), sub
        if sub.annotation_id:
            assert set(got.task_id) <= {sub.task_id} and set(got.log_id) <= {sub.log_id}
    assert set(labels.campaign) == {"kitti-50"} and set(labels.revision) == {1}
    assert set(labels.annotator) == {server.DEFAULT_USER}
    manifest = delivered_manifest(label_store, "kitti-50")
    assert Counter(e["status"] for e in manifest)["unusable"] == annotated.unusable
    assert len({e["annotation_id"] for e in manifest}) == len(manifest)


def test_sync_again_delivers_nothing_twice(annotated, client, ls_home, label_store, ls_server):
    before = read_labels(label_store, "kitti-50", latest=False).num_rows
    report = sync("kitti-50", client=client, store=label_store, home=ls_home)
    assert (report.delivered, report.already_delivered, report.shards) == (
        0,
        annotated.answered + annotated.unusable,
        [],
    )
    assert read_labels(label_store, "kitti-50", latest=False).num_rows == before
    status = campaign_status("kitti-50", client=client, store=label_store)
    n = annotated.answered + annotated.unusable
    assert (status["tasks"], status["annotated"], status["synced"]) == (50, n, n)


def test_status_cli_json(annotated, ls_home, ls_server, label_store):
    env = {
        **os.environ,
        "FLEETLOOP_HOME": str(ls_home),
        "FLEETLOOP_STORAGE__LOCAL_ROOT": str(label_store.root),
        "FLEETLOOP_LABEL_STUDIO__URL": ls_server.url,
        "FLEETLOOP_LABEL_STUDIO__TOKEN": ls_server.token,
    }
    out = subprocess.run(
        [str(Path(sys.executable).parent / "fleetloop"), "label", "status", "--campaign", "kitti-50", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    n = annotated.answered + annotated.unusable
    assert (st["tasks"], st["annotated"], st["synced"]) == (50, n, n)


# ------------------------------------------------------------------ revisions, crashes, bad input, webhooks


def test_updated_annotation_is_delivered_again_as_a_revision(tmp_path, client, ls_home, kitti_logs, truth):
    push(
        read_selection(_selection(tmp_path, kitti_logs, 4, offset=100)),
        kitti_logs,
        "kitti-rev",
        client=client,
        home=ls_home, document_root=ls_home,
    )
    sim = simulate("kitti-rev", truth, client=client)
    store = LocalStore(tmp_path / "store")
    assert sync("kitti-rev", client=client, store=store, home=ls_home).delivered == 4
    target = next(s for s in sim.submissions if s.boxes)
    relabel(client, target.annotation_id, [box_to_result("cyclist", 10, 20, 110, 220, W, H)])
    report = sync("kitti-rev", client=client, store=store, home=ls_home)
    assert (report.delivered, report.revisions, report.already_delivered) == (1, 1, 3)
    latest = read_labels(store, "kitti-rev").to_pandas()
    mine = latest[latest.annotation_id == target.annotation_id]
    assert mine[["cls", "x1", "y1", "x2", "y2", "revision"]].values.tolist() == [
        ["cyclist", 10.0, 20.0, 110.0, 220.0, 2]
    ]
    everything = read_labels(store, "kitti-rev", latest=False)
    assert everything.num_rows == len(latest) + len(target.boxes)  # revision 1 rows are kept in their shard
    assert sync("kitti-rev", client=client, store=store, home=ls_home).delivered == 0


_CRASHING_SYNC = """
import os, signal, sys
from pathlib import Path
from fleetloop.label.client import LabelStudioClient
from fleetloop.label.sync import sync
from fleetloop.store.objects import LocalStore
url, token, store, home, kill_at = sys.argv[1:6]
written = []
def crash(key):
    written.append(key)
    if len(written) == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)  # dies after the shard, before its watermark
sync("kitti-crash", client=LabelStudioClient(url, token), store=LocalStore(Path(store)), home=Path(home),
     page_size=4, shard_size=5, on_shard_written=crash)
"""


def test_sync_killed_midway_loses_nothing_and_repeats_nothing(tmp_path, client, ls_home, ls_server, kitti_logs, truth):
    push(
        read_selection(_selection(tmp_path, kitti_logs, 24, offset=300)),
        kitti_logs,
        "kitti-crash",
        client=client,
        home=ls_home, document_root=ls_home,
    )
    sim = simulate("kitti-crash", truth, client=client, team=TeamConfig(noise_px=1.0, seed=5))
    store_dir = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING_SYNC, ls_server.url, ls_server.token, str(store_dir), str(ls_home), "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = LocalStore(store_dir)
    assert len(delivered_manifest(store, "kitti-crash")) == 10  # two shards of 5 made it to disk
    report = sync("kitti-crash", client=client, store=store, home=ls_home, shard_size=5)
    assert report.recovered_shards == ["labels/kitti-crash/sync-000002.parquet"]
    assert report.already_delivered == 10 and report.delivered == 14
    manifest = delivered_manifest(store, "kitti-crash")
    assert sorted(e["annotation_id"] for e in manifest) == sorted(s.annotation_id for s in sim.submissions)
    labels = read_labels(store, "kitti-crash", latest=False).to_pandas()
    for sub in sim.submissions:
        got = labels[labels.annotation_id == sub.annotation_id]
        assert _same_boxes(got[["cls", "x1", "y1", "x2", "y2"]].itertuples(index=False), sub.boxes), sub


def test_bad_input_is_reported_and_the_rest_proceeds(tmp_path, client, ls_home, kitti_logs):
    import pyarrow as pa
    import pyarrow.compute as pc
    from PIL import Image

    from fleetloop.schema import DriveLogs

    sel = _selection(tmp_path, kitti_logs, 6, offset=400)
    rows = read_selection(sel)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    Image.new("RGB", (W, H), (90, 90, 90)).save(tmp_path / "camera.png")
    uris = {
        (rows[0]["log_id"], rows[0]["frame"]): str(tmp_path / "corrupt.png"),
        (rows[1]["log_id"], rows[1]["frame"]): str(tmp_path / "missing.png"),
        (rows[2]["log_id"], rows[2]["frame"]): (tmp_path / "camera.png").as_uri(),
    }
    frames = kitti_logs.frames
    new_uri = [uris.get((log_id, f)) for log_id, f in zip(frames["log_id"].to_pylist(), frames["frame"].to_pylist(), strict=True)]
    frames = frames.set_column(frames.schema.get_field_index("image_uri"), "image_uri", pa.array(new_uri, pa.string()))
    logs = DriveLogs(**{**kitti_logs.tables(), "frames": frames})
    rows.append({"log_id": "0001", "frame": 99999, "score": 0.1, "reasons": ""})
    report = push(rows, logs, "kitti-bad", client=client, home=ls_home, document_root=ls_home)
    problems = {(p.log_id, p.frame): p for p in report.problems}
    assert report.created == 4 and len(problems) == 3
    assert "cannot be loaded" in problems[(rows[0]["log_id"], rows[0]["frame"])].message
    assert "does not exist" in problems[(rows[1]["log_id"], rows[1]["frame"])].message
    assert problems[("0001", 99999)].stage == "selection"
    tasks = {(t["data"]["log_id"], t["data"]["frame"]): t for t in _all_tasks(client, report.project_id)}
    camera_task = tasks[(rows[2]["log_id"], rows[2]["frame"])]
    assert camera_task["data"]["rendered"] is False
    assert camera_task["data"]["image"].startswith("/data/local-files/?d=labeling/images/kitti-bad/")

    # annotations: an unknown class, a box outside the image, and good ones
    ids = sorted(t["id"] for t in tasks.values())
    unknown = box_to_result("car", 10, 10, 100, 100, W, H)
    unknown["value"]["rectanglelabels"] = ["truck"]
    outside = box_to_result("car", 1100, 10, 1200, 100, W, H)
    outside["value"]["width"] = 30.0
    good = box_to_result("pedestrian", 500, 150, 540, 260, W, H)
    a_unknown = client.request("POST", f"/api/tasks/{ids[0]}/annotations/", json={"result": [unknown, good]})["id"]
    a_outside = client.request("POST", f"/api/tasks/{ids[1]}/annotations/", json={"result": [outside]})["id"]
    for tid in ids[2:]:
        client.request("POST", f"/api/tasks/{tid}/annotations/", json={"result": [good]})
    store = LocalStore(tmp_path / "store")
    report = sync("kitti-bad", client=client, store=store, home=ls_home)
    msgs = {p.annotation_id: p.message for p in report.problems}
    assert set(msgs) == {a_unknown, a_outside} and report.delivered == 2
    assert "unknown class 'truck'" in msgs[a_unknown] and "outside the image" in msgs[a_outside]
    labels = read_labels(store, "kitti-bad")
    assert (
        labels.num_rows == 2 and not pc.any(pc.is_in(labels["annotation_id"], pa.array([a_unknown, a_outside]))).as_py()
    )
    # the labeler fixes one: the next sync delivers it; the other is reported again
    relabel(client, a_unknown, [good])
    report = sync("kitti-bad", client=client, store=store, home=ls_home)
    assert report.delivered == 1 and [p.annotation_id for p in report.problems] == [a_outside]


def test_webhook_triggers_the_sync(tmp_path, client, ls_home, ls_server, kitti_logs, truth):
    from fleetloop.label.webhook import WebhookReceiver, register_webhook

    push(
        read_selection(_selection(tmp_path, kitti_logs, 3, offset=500)),
        kitti_logs,
        "kitti-hook",
        client=client,
        home=ls_home, document_root=ls_home,
    )
    store = LocalStore(tmp_path / "store")
    rx = WebhookReceiver(
        lambda c: sync(c, client=LabelStudioClient(ls_server.url, ls_server.token), store=store, home=ls_home),
        secret="hook-secret",
        campaigns={"kitti-hook"},
    ).start()
    try:
        hook = register_webhook(client, "kitti-hook", rx.url, "hook-secret")
        assert register_webhook(client, "kitti-hook", rx.url, "hook-secret") == hook  # idempotent
        sim = simulate("kitti-hook", truth, client=client)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if rx.coalescer.idle() and len(delivered_manifest(store, "kitti-hook")) == 3:
                break
            time.sleep(0.2)
        assert sorted(e["annotation_id"] for e in delivered_manifest(store, "kitti-hook")) == sorted(
            s.annotation_id for s in sim.submissions
        )
        assert {e["action"] for e in rx.events} == {"ANNOTATION_CREATED"} and not rx.coalescer.errors
    finally:
        rx.stop()


def test_production_path_presigned_s3_images_and_label_shards_in_s3(
    tmp_path, client, ls_home, kitti_logs, truth, s3_settings
):
    """With a remote Label Studio, task images are uploaded to S3 and handed out presigned, camera
    images already in S3 are checked and presigned, and label shards go to the S3 store."""
    import io

    import pyarrow as pa
    from PIL import Image

    from fleetloop.label.images import StorePublisher
    from fleetloop.schema import DriveLogs
    from fleetloop.store.objects import S3Store, make_s3_client

    s3 = make_s3_client(s3_settings)
    store = S3Store(s3_settings.bucket, "fleet", s3)
    buf = io.BytesIO()
    Image.new("RGB", (W, H), (60, 60, 60)).save(buf, format="PNG")
    s3.put_object(Bucket=s3_settings.bucket, Key="cam/good.png", Body=buf.getvalue())
    s3.put_object(Bucket=s3_settings.bucket, Key="cam/bad.png", Body=b"not an image at all")
    rows = read_selection(_selection(tmp_path, kitti_logs, 4, offset=600))
    uris = {
        (rows[0]["log_id"], rows[0]["frame"]): f"s3://{s3_settings.bucket}/cam/good.png",
        (rows[1]["log_id"], rows[1]["frame"]): f"s3://{s3_settings.bucket}/cam/bad.png",
    }
    frames = kitti_logs.frames
    new_uri = [uris.get((log_id, f)) for log_id, f in zip(frames["log_id"].to_pylist(), frames["frame"].to_pylist(), strict=True)]
    frames = frames.set_column(frames.schema.get_field_index("image_uri"), "image_uri", pa.array(new_uri, pa.string()))
    logs = DriveLogs(**{**kitti_logs.tables(), "frames": frames})
    report = push(
        rows,
        logs,
        "kitti-s3",
        client=client,
        home=ls_home, document_root=ls_home,
        publisher=StorePublisher(store, "labeling/images"),
        image_dir=tmp_path / "renders",
        s3_client=s3,
    )
    assert report.created == 3 and [p.frame for p in report.problems] == [rows[1]["frame"]]
    assert "cannot be loaded" in report.problems[0].message
    for task in _all_tasks(client, report.project_id):
        url = task["data"]["image"]
        assert url.startswith(s3_settings.endpoint_url) and "Signature" in url
        img = httpx.get(url)  # what the labeler's browser does
        assert img.status_code == 200 and Image.open(io.BytesIO(img.content)).size == (W, H)
    sim = simulate("kitti-s3", truth, client=client)
    result = sync("kitti-s3", client=client, store=store, home=ls_home)
    assert result.delivered == 3 and result.shards == ["labels/kitti-s3/sync-000001.parquet"]
    assert store.exists("labels/kitti-s3/watermark.json")
    labels = read_labels(store, "kitti-s3").to_pandas()
    for sub in sim.submissions:
        got = labels[labels.annotation_id == sub.annotation_id]
        assert _same_boxes(got[["cls", "x1", "y1", "x2", "y2"]].itertuples(index=False), sub.boxes), sub
