"""``fleetloop retrain`` misused: a training workspace damaged by hand or by a killed run, Ctrl-C
and SIGTERM during the training, a workspace path that is a file, a flow parameter that is no
integer. The rule: one clear line (``--json``: one JSON document), nothing lost, a rerun that works.

The trainer is a trivial script (the reference model is not what is tested); the dataset is the
small simulated seed set of :mod:`tests.production.world`, on a path with a space.

- the training workspace's ``dvc.lock`` edited into something DVC cannot read, git's
  ``index.lock`` left by a run killed while committing, ``data/dataset.dvc`` removed (or an
  interrupted first import), or naming a dataset repository that is gone: before, every rerun
  failed the same way (the index lock only after the whole training); now the workspace is
  repaired and trains, importing from the configured dataset repository;
- Ctrl-C: before, exit 130 with nothing at all on stderr or stdout (``--json``); now one line;
- SIGTERM to ``fleetloop retrain`` alone (a supervisor, a cancelled flow run): before, the stage
  process and the trainer went on running unseen, writing into the workspace the next retrain uses;
  now they end with it;
- ``$FLEETLOOP_HOME/train`` a file: before ``[Errno 17] File exists``; now the workspace is named;
- the retrain flow's ``dataset_version=true``: before, trained on dataset-v1; now refused.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fleetloop.dataset.config import dataset_config
from fleetloop.train.workspace import TrainingFailed
from fleetloop.train.workspace import retrain as train_on
from tests.production.world import build, pipeline_params, settings_from

ROOT = Path(__file__).resolve().parents[2]
FLEETLOOP = [sys.executable, "-m", "fleetloop"]

TRAIN = """\
import os, pathlib, sys, time
out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1]); out.mkdir(parents=True, exist_ok=True)
pid_file = os.environ.get("TRAINER_PID_FILE")
if pid_file:
    pathlib.Path(pid_file).write_text(str(os.getpid()))
time.sleep(float(os.environ.get("TRAINER_SLEEP", "0")))
(out / "weights.txt").write_text("w")
"""
PREDICT = """\
import pathlib, sys
import pyarrow.parquet as pq
from fleetloop.train.metrics import PREDICTIONS_SCHEMA
pq.write_table(PREDICTIONS_SCHEMA.empty_table(), pathlib.Path(sys.argv[sys.argv.index("--out") + 1]))
"""


@pytest.fixture(autouse=True)
def _dvc_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


def _world(base: Path, trainer: str = TRAIN, **train: object) -> dict[str, str]:
    """dataset-v1 in ``base/home`` and a params file with a trivial trainer (``trainer``, the
    script's text; ``train``: params on top); the env of a ``fleetloop`` process pointed at them."""
    params = pipeline_params(base / "pipeline")
    data = yaml.safe_load(params.read_text())
    for name, text in (("train", trainer), ("predict", PREDICT)):
        (base / f"{name}.py").write_text(text)
    script = {n: shlex.quote(str(base / f"{n}.py")) for n in ("train", "predict")}
    data["train"]["command"] = f"python {script['train']} --data {{data}} --out {{model}}"
    data["train"]["predict"] = f"python {script['predict']} --model {{model}} --data {{data}} --out {{out}}"
    data["train"].update(train)
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FLEETLOOP_")},
           "FLEETLOOP_HOME": str(base / "home"), "FLEETLOOP_STORAGE__BACKEND": "local",
           "FLEETLOOP_PARAMS": str(params)}
    build(env, base / "world")
    return env


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _world(tmp_path_factory.mktemp("misuse") / "a world")


def _break_lock_yaml(ws: Path) -> None:
    (ws / "dvc.lock").write_text("schema: '2.0'\nstages: [unclosed\n")


def _break_lock_shape(ws: Path) -> None:
    (ws / "dvc.lock").write_text("schema: '2.0'\nstages: 5\n")


def _stale_index_lock(ws: Path) -> None:
    (ws / ".git" / "index.lock").write_text("")


def _no_dataset_dvc(ws: Path) -> None:
    (ws / "data" / "dataset.dvc").unlink()


def _dataset_dvc_elsewhere(ws: Path) -> None:
    dvcfile = ws / "data" / "dataset.dvc"
    data = yaml.safe_load(dvcfile.read_text())
    data["deps"][0]["repo"]["url"] = str(ws.parent / "a repository that is gone")
    dvcfile.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize("damage", [_break_lock_yaml, _break_lock_shape, _stale_index_lock, _no_dataset_dvc,
                                    _dataset_dvc_elsewhere])
def test_a_damaged_training_workspace_trains_again(world: dict[str, str], tmp_path: Path, damage) -> None:
    settings = settings_from(world)
    cfg = dataset_config(settings)
    workspace = tmp_path / "training work space"
    kw = {"pipeline": ROOT / "dvc.yaml", "params": Path(world["FLEETLOOP_PARAMS"]), "timeout_s": 600.0}
    first = train_on(workspace, cfg, 1, **kw)
    assert (first.model_dir / "weights.txt").is_file()
    commits = subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=workspace, capture_output=True, text=True,
                             check=True).stdout

    damage(workspace)
    again = train_on(workspace, cfg, 1, **kw)
    assert again.metrics == first.metrics and (again.model_dir / "weights.txt").is_file()
    dvcfile = yaml.safe_load((workspace / "data" / "dataset.dvc").read_text())
    assert dvcfile["deps"][0]["repo"]["url"] == str(Path(cfg.repo_dir).resolve())
    assert dvcfile["deps"][0]["repo"]["rev"] == "dataset-v1"
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "train", "evaluate"}
    assert not (workspace / ".git" / "index.lock").exists()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=workspace, capture_output=True, text=True, check=True)
    assert status.stdout == "", status.stdout  # what it ran with is committed
    after = subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=workspace, capture_output=True, text=True,
                           check=True).stdout
    assert int(after) >= int(commits)


def test_a_workspace_path_that_is_a_file_is_named(world: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "train").write_text("not a directory")
    with pytest.raises(TrainingFailed, match=r"the training workspace .*/train is a file, not a directory"):
        train_on(tmp_path / "train", dataset_config(settings_from(world)), 1, pipeline=ROOT / "dvc.yaml",
                 params=Path(world["FLEETLOOP_PARAMS"]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(") ", 1)[-1].startswith("Z"))


def _start_and_wait_for_trainer(env: dict[str, str], pid_file: Path) -> subprocess.Popen[str]:
    pid_file.unlink(missing_ok=True)
    # SIGINT at its default, as in a terminal, whatever this test process has (a process started
    # with SIGINT ignored keeps it ignored: Python installs its handler only when it is not; in one
    # full CI run the retrain ran to the end through the Ctrl-C, as if it had been)
    proc = subprocess.Popen([*FLEETLOOP, "retrain", "--json"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not pid_file.is_file() or not pid_file.read_text():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the trainer never started"
        time.sleep(0.2)
    return proc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_ctrl_c_and_sigterm_during_training_then_the_rerun_trains(tmp_path: Path) -> None:
    env = _world(tmp_path / "w")
    pid_file = tmp_path / "trainer.pid"
    # SHELL=/bin/sh as where no login shell is set: dvc runs each stage as `$SHELL -c cmd`, and
    # Debian's sh (dash) forks for it instead of exec'ing, so a stage's parent is the shell, not dvc
    # (CI failed here once the stage commands relied on their parent being dvc)
    slow = {**env, "TRAINER_PID_FILE": str(pid_file), "TRAINER_SLEEP": "120", "SHELL": "/bin/sh"}
    trainers: list[int] = []
    try:
        # Ctrl-C in a terminal: SIGINT to the whole foreground process group
        proc = _start_and_wait_for_trainer(slow, pid_file)
        trainers.append(int(pid_file.read_text()))
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (out, err)
        assert json.loads(out) == {"ok": False, "error": "retrain stopped: interrupted by SIGINT; run it again: it "
                                   "trains what was not finished and reuses a model already registered"}
        assert err.strip().startswith("retrain stopped: interrupted by SIGINT") and len(err.strip().splitlines()) == 1

        # SIGTERM to fleetloop alone: the stage and the trainer end with it
        proc = _start_and_wait_for_trainer(slow, pid_file)
        trainer = int(pid_file.read_text())
        trainers.append(trainer)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
        deadline = time.monotonic() + 20
        while _alive(trainer) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(trainer), "the trainer runs on after its retrain was terminated"

        done = subprocess.run([*FLEETLOOP, "retrain", "--json"], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        doc = json.loads(done.stdout)
        assert doc["ok"] and doc["model_version"] == 1 and doc["action"] == "promote" and not doc["reused"]
    finally:
        for pid in trainers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_retrain_flow_refuses_a_dataset_version_that_is_no_integer() -> None:
    from fleetloop.flows.train import retrain_flow

    for bad in (True, "2", 2.0):
        with pytest.raises(Exception, match="dataset_version: Input should be a valid integer"):
            retrain_flow.validate_parameters({"dataset_version": bad})
    assert retrain_flow.validate_parameters({"dataset_version": 2})["dataset_version"] == 2
    assert retrain_flow.validate_parameters({})["dataset_version"] is None
