"""``fleetloop retrain`` seen from the command line during and before the minutes of training.

The trainer is a trivial script (the reference model is not what is tested); the dataset is the
small simulated seed set of :mod:`tests.production.world`.

- progress: ``dvc repro`` runs with its output captured, so before, a retrain showed one line
  ("training on dataset-vN ...", none with ``--json``) and then nothing at all until the end,
  whatever the trainer printed (the reference trainer prints a line per epoch); now the trainer's
  lines reach stderr as they come (stdout stays the one JSON document);
- ``train.warm_start`` with the production model's files gone from the store (deleted, a store
  restored without the registry's blobs): before, ``error: local store ...: no object
  'registry/camera/blobs/sha256/...'`` (which model, and what to do?); now the line names
  production vN and the ways out, before anything trains;
- an edited pipeline (dvc.yaml's stages): before, the model of the old pipeline was reused as if
  nothing had changed; now it trains again, and ``--force`` trains an unchanged one again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.test_retrain_misuse import _dvc_env  # noqa: F401 (autouse fixture)
from tests.integration.test_retrain_misuse import _world as misuse_world

ROOT = Path(__file__).resolve().parents[2]
FLEETLOOP = [sys.executable, "-m", "fleetloop"]

TRAIN = """\
import pathlib, sys
out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1]); out.mkdir(parents=True, exist_ok=True)
print("epoch 1/1 loss 0.4242 (a trainer's progress line)", flush=True)
(out / "weights.txt").write_text("w")
"""


def _world(base: Path, **train: object) -> dict[str, str]:
    """test_retrain_misuse's world with this module's trainer (it prints a progress line)."""
    return misuse_world(base, TRAIN, **train)


def _retrain(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLEETLOOP, "retrain", "--json"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_the_trainers_progress_lines_are_shown_while_it_trains(tmp_path: Path) -> None:
    env = _world(tmp_path / "w")
    done = _retrain(env)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)  # stdout is still one JSON document
    assert doc["ok"] and doc["model_version"] == 1 and not doc["reused"]
    assert "epoch 1/1 loss 0.4242 (a trainer's progress line)" in done.stderr, done.stderr[-2000:]

    plain = subprocess.run([*FLEETLOOP, "retrain", "--dataset", "1"], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=600)  # reused: nothing trains, nothing to show
    assert plain.returncode == 0 and "epoch" not in plain.stderr, plain.stderr


def test_an_edited_pipeline_trains_again_and_force_trains_an_unchanged_one(tmp_path: Path) -> None:
    """Before, "already trained" was the dataset version and the train params only: after an edit to
    dvc.yaml's stages a retrain reported the model of the old pipeline as done, and only a new
    dataset version trained again; a new ``train.timeout_s`` alone registered the same model again
    as a new version. Now the pipeline (its stages as parsed, not its comments or layout) is part
    of it, ``timeout_s`` is not, and ``--force`` trains again after a change no digest sees (the
    trainer's own code)."""
    from fleetloop.dataset.config import dataset_config
    from fleetloop.params import load_params
    from fleetloop.registry import Registry
    from fleetloop.retrain import RetrainOutcome, pipeline_digest, retrain
    from fleetloop.store.objects import get_store
    from tests.production.world import settings_from

    env = _world(tmp_path / "w")
    settings = settings_from(env)
    pipeline = tmp_path / "team" / "dvc.yaml"
    pipeline.parent.mkdir()
    pipeline.write_bytes((ROOT / "dvc.yaml").read_bytes())
    params_file = Path(env["FLEETLOOP_PARAMS"])
    store, cfg, loop = get_store(settings), dataset_config(settings), load_params(params_file)
    registry = Registry(store)
    lines: list[str] = []

    def run(**kw: object) -> RetrainOutcome:
        lines.clear()
        return retrain(store, cfg, loop, 1, workspace=Path(settings.home) / "train", pipeline=pipeline,
                       params_file=params_file, who="test", progress=lines.append, **kw)  # type: ignore[arg-type]

    def trained() -> bool:
        return any("epoch 1/1 loss 0.4242" in line for line in lines)

    first = run()
    assert first.model_version == 1 and not first.reused and trained()
    assert registry.get(1).lineage.pipeline == pipeline_digest(pipeline)

    pipeline.write_text("# the team's note\n" + yaml.safe_dump(yaml.safe_load(pipeline.read_text()), sort_keys=True))
    same = run()  # comments, layout and key order are not the pipeline
    assert same.reused and same.model_version == 1 and not trained()

    data = yaml.safe_load(pipeline.read_text())
    data["stages"]["train"]["cmd"] = data["stages"]["train"]["cmd"].replace("exec python", "exec env EDITED=1 python")
    pipeline.write_text(yaml.safe_dump(data, sort_keys=False))
    edited = run()
    assert not edited.reused and edited.model_version == 2 and trained(), edited
    assert registry.get(2).lineage.pipeline == pipeline_digest(pipeline) != registry.get(1).lineage.pipeline
    again = run()
    assert again.reused and again.model_version == 2 and not trained()
    data = yaml.safe_load(params_file.read_text())
    data["train"]["timeout_s"] = 1234  # how the training runs, not what it makes
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))
    loop = load_params(params_file)
    longer = run()
    assert longer.reused and longer.model_version == 2 and not trained(), longer

    forced = run(force=True)
    assert not forced.reused and forced.model_version == 3 and trained(), forced

    cli = subprocess.run([*FLEETLOOP, "retrain", "--force", "--json"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert cli.returncode in (0, 1), cli.stderr[-2000:]
    doc = json.loads(cli.stdout)
    assert not doc["reused"] and doc["model_version"] == 4, doc
    assert "epoch 1/1 loss 0.4242" in cli.stderr, cli.stderr[-2000:]


def test_a_warm_start_from_production_files_gone_names_the_model_and_the_ways_out(tmp_path: Path) -> None:
    env = _world(tmp_path / "w", warm_start=True)
    first = _retrain(env)
    assert first.returncode == 0 and json.loads(first.stdout)["production_after"] == 1, first.stderr[-2000:]
    blobs = Path(env["FLEETLOOP_HOME"]) / "store" / "registry" / "camera" / "blobs"
    for blob in blobs.rglob("*"):
        if blob.is_file():
            blob.unlink()
    params = Path(env["FLEETLOOP_PARAMS"])
    data = yaml.safe_load(params.read_text())
    data["train"]["seed"] = 5  # new train params: a new candidate, warm-started from production v1
    params.write_text(yaml.safe_dump(data, sort_keys=False))

    done = _retrain(env)
    assert done.returncode == 2, (done.stdout, done.stderr[-2000:])
    error = json.loads(done.stdout)["error"]
    assert error.startswith("cannot warm-start from production v1 (train.warm_start): its files cannot be fetched: ")
    assert error.endswith("restore them, roll production back (fleetloop registry rollback) or set "
                          "train.warm_start: false"), error
    assert "epoch" not in done.stderr  # before any training
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_retrain_flow_logs_the_trainers_lines_in_its_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             prefect_api: str) -> None:
    """In the Prefect UI, a retrain run's log showed nothing between its start and its end (minutes
    of training): now each line the trainer prints, as it comes."""
    import time
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from fleetloop.flows.train import retrain_flow
    from fleetloop.settings import get_settings

    env = _world(tmp_path / "w")
    for name in [k for k in os.environ if k.startswith("FLEETLOOP_")]:
        monkeypatch.delenv(name)
    for name in ("FLEETLOOP_HOME", "FLEETLOOP_STORAGE__BACKEND", "FLEETLOOP_PARAMS"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.chdir(ROOT)
    get_settings.cache_clear()
    try:
        state = retrain_flow(return_state=True)
    finally:
        get_settings.cache_clear()
    assert state.is_completed(), state.message
    run_id = state.state_details.flow_run_id
    assert isinstance(run_id, uuid.UUID)
    deadline, messages = time.monotonic() + 30, []
    while time.monotonic() < deadline:  # the run's logs reach the API in batches
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        messages = [log.message for log in logs]
        if any("epoch 1/1 loss 0.4242" in m for m in messages):
            break
        time.sleep(1)
    assert "trainer: epoch 1/1 loss 0.4242 (a trainer's progress line)" in messages, messages
