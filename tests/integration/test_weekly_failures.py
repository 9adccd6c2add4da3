"""The weekly cycle when what it depends on fails or is misused, against a real Prefect API, on the
real KITTI slice (0001 arrived two weeks ago, 0010 and 0012 last week):

- Label Studio configured but unreachable, with an open campaign: the sync step fails (before, it
  was recorded as ran with the campaign's failure hidden in its details, and a week without logs
  was marked done, so its rerun did nothing); one line each, the token never shown;
- the dataset step fails: retrain says why it waited, the rest runs, the rerun finishes the week
  and reuses the mining run;
- retrain fails (a bad ``train.command``; on the KITTI slice, which has no camera images, ``dvc
  repro`` already stops at prepare): the rerun retrains (before, it skipped retrain because
  the dataset had not grown since, and marked the week done with no model trained);
- the train params change while the dataset does not: the cycle trains again (before, any model
  on the dataset version made it skip); after an edit to dvc.yaml alone, a rerun of a done week
  trains again (before, it was a no-op);
- a damaged log in the window: left out and named by every step, the others go through, the cycle
  is not marked done until it is repaired (before, drift failed on it and a damaged manifest
  stopped the cycle before any step);
- a week that has not begun is refused (before, it ran and was recorded as done);
- two cycles of one week at once: one does the work, the other finds the week done.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fleetloop.cycle import iso_week, week_start
from fleetloop.ingest.ingest import ingest
from fleetloop.settings import get_settings

pytestmark = pytest.mark.services

SECRET = "s3cr3t-label-token-0123456789"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def week_logs(tmp_path, monkeypatch, kitti_root):
    from fleetloop.store.objects import get_store

    for name in [k for k in __import__("os").environ if k.startswith("FLEETLOOP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    get_settings.cache_clear()
    store = get_store(get_settings())
    monday = week_start(iso_week(datetime.now(UTC)))
    ingest(store, kitti_root, "kitti-tracking", ["0001"], arrived_at=monday - timedelta(days=10))
    ingest(store, kitti_root, "kitti-tracking", ["0010", "0012"], arrived_at=monday - timedelta(days=3))
    yield store
    get_settings.cache_clear()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summary(api: str) -> str:
    r = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["weekly-cycle-summary"]}},
                                                     "sort": "CREATED_DESC", "limit": 1})
    r.raise_for_status()
    return r.json()[0]["data"]


def _row(md: str, step: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {step} |"))


def _cycle(**kw):
    """The cycle's final state and, when it ran to the end, its record (returned or in the store)."""
    from fleetloop.flows.weekly import weekly_cycle

    return weekly_cycle(return_state=True, **kw)


def _records(store) -> list[str]:
    return [k for k in store.list("cycles/") if k.endswith(".json")]


def test_label_studio_down_fails_sync_and_push_in_one_line_and_the_week_is_not_done(prefect_api, week_logs,
                                                                                    monkeypatch):
    from fleetloop.label import index

    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__TOKEN", SECRET)
    get_settings.cache_clear()
    index.register(week_logs, "fleetloop-2020-w01")  # last week's campaign, still open

    state = _cycle(budget=10)
    assert state.is_failed() and SECRET not in state.message
    assert "\n" not in state.message and "sync" in state.message and "push" in state.message
    md = _summary(prefect_api)
    assert SECRET not in md
    for step in ("drift", "grow", "calibrate", "mine"):
        assert "| ran |" in _row(md, step), _row(md, step)
    sync = _row(md, "sync")
    assert "failed" in sync and "fleetloop-2020-w01" in sync and "Connection refused" in sync, sync
    assert "failed" in _row(md, "push") and "Connection refused" in _row(md, "push")
    assert "Not done" in md and "What to do" in md and "Label Studio is up" in md
    assert _records(week_logs) == []

    # a week with no logs: nothing to mine or push, but the open campaign's labels are still owed
    again = _cycle(week="2020-W10")
    assert again.is_failed() and "sync" in again.message
    assert _records(week_logs) == [], "a cycle whose sync failed is not marked done: its rerun syncs"


def test_the_label_sync_flow_alone_fails_when_an_open_campaign_cannot_be_synced(prefect_api, week_logs, monkeypatch):
    """The scheduled poll (``label-sync`` with no campaign) ended Completed with the failure only in
    a log line and its artifact: a person watching the Prefect UI saw nothing wrong."""
    import pickle

    from fleetloop.flows.label import label_sync
    from fleetloop.label import index
    from fleetloop.label.api import SyncIncomplete

    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__URL", f"http://user:pa55@127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__TOKEN", SECRET)
    get_settings.cache_clear()
    index.register(week_logs, "fleetloop-2020-w01")

    state = label_sync(return_state=True)
    assert state.is_failed(), state
    msg = state.message
    assert "\n" not in msg and "fleetloop-2020-w01" in msg and "Connection refused" in msg, msg
    assert SECRET not in msg and "pa55" not in msg
    with pytest.raises(SyncIncomplete) as caught:
        label_sync()
    assert caught.value.out is not None and list(caught.value.out.failed) == ["fleetloop-2020-w01"]
    assert str(pickle.loads(pickle.dumps(caught.value))) == str(caught.value)  # results may be persisted
    r = httpx.post(f"{prefect_api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["label-sync-summary"]}},
                                                            "sort": "CREATED_DESC", "limit": 1})
    md = r.json()[0]["data"]
    assert "fleetloop-2020-w01" in md.split("Campaigns that failed to sync:")[1] and SECRET not in md


def test_a_failed_grow_is_named_by_retrain_and_the_rerun_finishes_the_week(prefect_api, week_logs, monkeypatch,
                                                                          tmp_path):
    repo_file = tmp_path / "dataset-is-a-file"
    repo_file.write_text("not a repository")
    monkeypatch.setenv("FLEETLOOP_DATASET__REPO_DIR", str(repo_file))
    get_settings.cache_clear()

    state = _cycle(budget=10, label=False)
    assert state.is_failed() and "grow" in state.message and "is a file" in state.message
    md = _summary(prefect_api)
    assert "failed" in _row(md, "grow") and "is a file, not a directory" in _row(md, "grow")
    retrain = _row(md, "retrain")
    assert "skipped" in retrain and "grow step failed" in retrain, retrain
    assert "| ran |" in _row(md, "drift") and "| ran |" in _row(md, "mine")
    assert "What to do" in md and "fleetloop dataset status" in md
    assert _records(week_logs) == []
    first_run = [k for k in week_logs.list("mining/") if k.endswith("summary.json")]

    monkeypatch.delenv("FLEETLOOP_DATASET__REPO_DIR")  # repaired: the default repository
    get_settings.cache_clear()
    record = _cycle(budget=10, label=False).result()
    assert not record.noop and record.steps["grow"].status == "ran"
    assert [k for k in week_logs.list("mining/") if k.endswith("summary.json")] == first_run  # reused
    assert len(_records(week_logs)) == 1
    assert _cycle(budget=10, label=False).result().noop


def _deliver(store, campaign: str, log_id: str, frames: list[int]) -> None:
    """A label shard as `fleetloop label sync` writes it: one car box per frame."""
    from fleetloop.schema import LABELS

    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    rows, manifest = [], []
    for aid, frame in enumerate(frames, start=1):
        rows.append(dict(log_id=log_id, frame=frame, cls="car", x1=100.0, y1=150.0, x2=220.0, y2=240.0,
                         campaign=campaign, task_id=aid * 10, annotation_id=aid, annotator="lab@x", updated_at=t0,
                         revision=1))
        manifest.append(dict(annotation_id=aid, task_id=aid * 10, updated_at=t0.isoformat(), revision=1,
                             status="labeled", boxes=1, annotator="lab@x", log_id=log_id, frame=frame))
    table = pa.Table.from_pylist(rows, schema=LABELS).replace_schema_metadata(
        {b"fleetloop_annotations": json.dumps(manifest).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.put_bytes(f"labels/{campaign}/sync-000001.parquet", buf.getvalue())


def test_a_failed_retrain_is_retried_by_the_rerun(prefect_api, week_logs, monkeypatch, tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["grow"]["with_images"] = False  # the KITTI slice has no camera images
    params["train"]["command"] = "python -m fleetloop.no_such_trainer --data {data} --out {model}"
    params["train"]["timeout_s"] = 120
    custom = tmp_path / "params" / "params.yaml"
    custom.parent.mkdir()
    custom.write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", custom.parent / "dvc.yaml")
    monkeypatch.setenv("FLEETLOOP_PARAMS", str(custom))
    _deliver(week_logs, "fleetloop-2020-w01", "0001", list(range(0, 100, 2)))

    state = _cycle(budget=10, label=False)
    assert state.is_failed() and "retrain" in state.message and "\n" not in state.message
    md = _summary(prefect_api)
    assert "dataset-v1" in _row(md, "grow") and "failed" in _row(md, "retrain")
    for step in ("drift", "calibrate", "mine"):
        assert "| ran |" in _row(md, step), _row(md, step)
    assert "train.command" in md  # what to do

    # the same inputs again (a transient failure, or the fix not yet made): the dataset did not
    # grow since, but no model was ever trained on dataset-v1, so the rerun trains again
    again = _cycle(budget=10, label=False)
    md = _summary(prefect_api)
    assert again.is_failed() and "failed" in _row(md, "retrain"), _row(md, "retrain")
    assert _records(week_logs) == [], "a week whose dataset version was never trained is not done"


def test_an_unchanged_dataset_is_trained_again_once_its_train_params_change(prefect_api, week_logs, monkeypatch,
                                                                         tmp_path):
    """Before, the cycle skipped retrain whenever the dataset had not grown and any model had been
    trained on it, so an edit to the train params (or to dvc.yaml) reached production only with the
    next labels. Now only a model made with the current params and pipeline counts; a new timeout
    alone (how a training runs, not what it makes) still does not train again."""
    from fleetloop.params import load_params
    from fleetloop.registry import Registry
    from fleetloop.retrain import current_pipeline_digest, find_pipeline, pipeline_digest, trained_before
    from tests.integration.test_registry import metrics, model_dir

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["grow"]["with_images"] = False  # the KITTI slice has no camera images: a retrain fails at prepare
    params["train"]["timeout_s"] = 120
    custom = tmp_path / "params" / "params.yaml"
    custom.parent.mkdir()
    custom.write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("FLEETLOOP_PARAMS", str(custom))
    _deliver(week_logs, "fleetloop-2020-w01", "0001", list(range(0, 100, 2)))
    state = _cycle(budget=10, label=False)
    assert state.is_failed() and "failed" in _row(_summary(prefect_api), "retrain")

    # a model trained on dataset-v1 by this pipeline with these params (as a retrain on images registers it)
    pipeline = find_pipeline()
    assert pipeline is not None
    registry = Registry(week_logs)
    made = registry.register(model_dir(tmp_path / "m"), metrics(0.5), dataset_version=1,
                             params=load_params(custom).train.model_dump(mode="json"),
                             pipeline=pipeline_digest(pipeline, []))
    assert trained_before(week_logs, load_params(custom), 1, current_pipeline_digest(get_settings())) == made
    record = _cycle(budget=10, label=False).result()
    assert record.steps["retrain"].status == "skipped", record.steps["retrain"]
    assert f"model v{made.version} was trained on it" in record.steps["retrain"].reason

    params["train"]["timeout_s"] = 300  # a new cycle key, the same model
    custom.write_text(yaml.safe_dump(params, sort_keys=False))
    record = _cycle(budget=10, label=False).result()
    assert not record.noop and record.steps["retrain"].status == "skipped", record.steps["retrain"]

    params["train"]["epochs"] += 1  # another model: the cycle trains (here it fails at prepare)
    custom.write_text(yaml.safe_dump(params, sort_keys=False))
    assert trained_before(week_logs, load_params(custom), 1, current_pipeline_digest(get_settings())) is None
    state = _cycle(budget=10, label=False)
    assert state.is_failed() and "failed" in _row(_summary(prefect_api), "retrain")


def test_a_rerun_of_a_done_week_trains_again_after_an_edit_to_the_pipeline(prefect_api, week_logs, monkeypatch,
                                                                          tmp_path):
    """Before, the cycle's key held the logs and params.yaml but not the pipeline, so after an edit
    to dvc.yaml alone a rerun of a done week was a no-op and the edit waited for next week's cycle.
    Now the pipeline's digest is part of the key: the rerun runs, finds no model made by this
    pipeline and trains (here it fails at prepare: the KITTI slice has no camera images)."""
    from fleetloop.params import load_params
    from fleetloop.registry import Registry
    from fleetloop.retrain import find_pipeline, pipeline_digest
    from tests.integration.test_registry import metrics, model_dir

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["grow"]["with_images"] = False
    custom = tmp_path / "params" / "params.yaml"
    custom.parent.mkdir()
    custom.write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("FLEETLOOP_PARAMS", str(custom))
    repo = tmp_path / "repo"  # a checkout whose dvc.yaml the engineer edits
    (repo / "fleetloop").mkdir(parents=True)
    shutil.copyfile(REPO / "dvc.yaml", repo / "dvc.yaml")
    monkeypatch.chdir(repo)
    assert find_pipeline() == repo / "dvc.yaml"
    _deliver(week_logs, "fleetloop-2020-w01", "0001", list(range(0, 100, 2)))
    grown = _cycle(budget=10, label=False)
    assert grown.is_failed() and "failed" in _row(_summary(prefect_api), "retrain")
    made = Registry(week_logs).register(model_dir(tmp_path / "m"), metrics(0.5), dataset_version=1,
                                        params=load_params(custom).train.model_dump(mode="json"),
                                        pipeline=pipeline_digest(repo / "dvc.yaml", []))
    record = _cycle(budget=10, label=False).result()
    assert record.steps["retrain"].status == "skipped" and f"model v{made.version}" in record.steps["retrain"].reason
    assert _cycle(budget=10, label=False).result().noop, "the same inputs: nothing to do"

    pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
    pipeline["stages"]["evaluate"]["desc"] = "mAP per slice"  # what the pipeline is, not its layout
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    state = _cycle(budget=10, label=False)
    assert state.is_failed() and "failed" in _row(_summary(prefect_api), "retrain"), _row(_summary(prefect_api),
                                                                                          "retrain")


def test_a_damaged_log_is_left_out_and_named_and_the_week_finishes_after_the_repair(prefect_api, week_logs):
    root = Path(week_logs.root) / "logs" / "0010"
    data = next(p for p in root.iterdir() if p.is_dir()) / "lidar_detections.parquet"
    good = data.read_bytes()
    data.write_bytes(b"garbage")

    state = _cycle(budget=10, label=False)
    assert state.is_failed() and "0010" in state.message and "\n" not in state.message
    md = _summary(prefect_api)
    assert "| ran |" in _row(md, "drift") and "0010" in _row(md, "drift"), _row(md, "drift")
    assert "| ran |" in _row(md, "mine") and "0010" in _row(md, "mine")
    assert "log `0010` left out" in md and "What to do" in md
    assert _records(week_logs) == []

    manifest = root / "manifest.json"
    good_manifest = manifest.read_bytes()
    manifest.write_text("{damaged")  # a damaged manifest no longer stops the cycle before any step
    state = _cycle(budget=10, label=False)
    assert state.is_failed() and "0010" in state.message
    md = _summary(prefect_api)
    assert "| ran |" in _row(md, "drift") and "| ran |" in _row(md, "mine")
    assert "not a valid log manifest" in md
    assert _records(week_logs) == []

    manifest.write_bytes(good_manifest)  # repaired
    data.write_bytes(good)
    record = _cycle(budget=10, label=False).result()
    assert record.logs == ["0010", "0012"] and not record.left_out and not record.failed
    assert len(_records(week_logs)) == 1


def test_a_week_that_has_not_begun_is_refused(prefect_api, week_logs):
    next_week = iso_week(datetime.now(UTC) + timedelta(days=7))
    state = _cycle(week=next_week, label=False)
    assert state.is_failed() and "has not begun" in state.message and "\n" not in state.message
    assert _records(week_logs) == [] and week_logs.list("mining/") == []


def test_two_cycles_of_one_week_at_once_do_the_work_once(prefect_api, week_logs):
    from fleetloop.flows.weekly import weekly_cycle

    records = []

    def run() -> None:
        records.append(weekly_cycle(budget=10, label=False))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(records) == 2
    assert sorted(r.noop for r in records) == [False, True], "the second waits, then finds the week done"
    assert len([k for k in week_logs.list("drift/reports/") if k.endswith("summary.json")]) == 1
    assert len(_records(week_logs)) == 1
