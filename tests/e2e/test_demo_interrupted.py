"""``fleetloop demo`` stopped in the middle and run again, as a person does it: the real command
line in a subprocess on a reduced world, real local Prefect server and Label Studio.

* SIGTERM while a week's own labels are being trained on: the command says which week a rerun
  redoes, prints ``{"ok": false, ...}`` with ``--json``, exits 128 + 15, and leaves nothing it
  started running but the services (no training process writing into the workspace);
* the rerun redoes that week: its labels (already answered in Label Studio, already grown into
  the next dataset version) are counted and trained on, not skipped as "nothing new";
* a state file that is not the demo's stops it with one line before anything starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.fixtures_ls import REPO, free_port

SMALL = ["--logs-per-week", "6", "--frames-per-log", "16", "--seed-logs", "6", "--budget", "24",
         "--eval-frames", "48", "--epochs", "2"]


def _env(home: Path, params: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETLOOP_", "PREFECT_"))}
    env |= {"FLEETLOOP_HOME": str(home), "FLEETLOOP_STORAGE__BACKEND": "local", "COLUMNS": "200"}
    if params is not None:
        env["FLEETLOOP_PARAMS"] = str(params)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fleetloop.cli import app; app()", *args]


def test_an_unreadable_state_file_stops_the_demo_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    state = home / "demo" / "state.json"
    state.parent.mkdir(parents=True)
    for text, expect in (('{"config": {}, "base_week": "2025-W01", "rows": [{"week": 0, "iso_week"', "Invalid JSON"),
                         ('{"config": {"budget": "lots"}, "base_week": "2025-W01"}', "config.budget"),
                         ('{"config": {}, "base_week": "2025-W01", "rows": [{"week": 1, "iso_week": "2025-W02", '
                          '"labels_spent": 1, "dataset_version": 1}]}', "weeks [1]")):
        state.write_text(text)
        r = subprocess.run(_cli("demo", "--json"), env=_env(home), capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stderr
        doc = json.loads(r.stdout)
        assert list(doc) == ["ok", "error"] and doc["ok"] is False
        assert str(state) in doc["error"] and expect in doc["error"] and "--reset" in doc["error"]
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (home / "services").exists()  # nothing was started


@pytest.fixture
def demo_home(tmp_path: Path):
    """A home whose Label Studio venv is the shared one (a symlink), params with the floor at 0
    (a model trained for seconds is promoted), free ports; the services are stopped afterwards."""
    from fleetloop.local import label_studio as server

    home = tmp_path / "home"
    shared = Path(os.environ.get("FLEETLOOP_TEST_LS_VENV") or server.default_venv(REPO / ".fleetloop"))
    server.install(REPO / ".fleetloop", venv=shared)
    server.default_venv(home).parent.mkdir(parents=True)
    server.default_venv(home).symlink_to(shared, target_is_directory=True)
    params = tmp_path / "params" / "params.yaml"
    params.parent.mkdir()
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["promote"]["floor"] = 0.0
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    (params.parent / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    env = _env(home, params) | {"FLEETLOOP_PREFECT__PORT": str(free_port()),
                                "FLEETLOOP_LABEL_STUDIO__PORT": str(free_port())}
    yield home, env
    subprocess.run(_cli("services", "down"), env=env, capture_output=True, timeout=120)


def _training(proc: psutil.Process) -> list[psutil.Process]:
    found = []
    for p in proc.children(recursive=True):
        try:
            if "fleetloop.train" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.mark.services
@pytest.mark.timeout(900)
def test_sigterm_mid_week_then_rerun_redoes_the_week_with_its_labels(demo_home) -> None:
    home, env = demo_home
    err = home.parent / "first.err"
    with open(err, "w") as stderr:
        first = subprocess.Popen(_cli("demo", "--weeks", "1", "--json", *SMALL), env=env, stdout=subprocess.PIPE,
                                 stderr=stderr, text=True)
    try:
        me = psutil.Process(first.pid)
        deadline = time.monotonic() + 600
        training: list[psutil.Process] = []
        while not training:  # week 1's labels synced and grown into dataset-v2, its model training
            assert first.poll() is None and time.monotonic() < deadline, err.read_text()
            if "week 1: 24 annotations" in err.read_text():
                training = _training(me)
            time.sleep(0.2)
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 128 + signal.SIGTERM, err.read_text()
    doc = json.loads(out)
    assert doc["ok"] is False
    assert "SIGTERM during week 1" in doc["error"] and "redoes week 1" in doc["error"], doc
    assert "Traceback" not in err.read_text()
    gone = psutil.wait_procs(training, timeout=10)[1]
    assert not gone, f"training left running after the demo stopped: {[p.cmdline() for p in gone]}"
    state = json.loads((home / "demo" / "state.json").read_text())
    assert [r["week"] for r in state["rows"]] == [0] and state["rows"][0]["dataset_version"] == 1
    st = subprocess.run(_cli("services", "status", "--json"), env=env, capture_output=True, text=True, timeout=60)
    assert st.returncode == 0 and json.loads(st.stdout)["ok"] is True  # the services stay up for the rerun

    again = subprocess.run(_cli("demo", "--weeks", "1", "--json", *SMALL), env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = json.loads(again.stdout)["rows"]
    assert [r["week"] for r in rows] == [0, 1]
    w0, w1 = rows
    # the week's 24 labels (answered and grown before the interruption) count and are trained on
    assert w1["labeled"] == 24 and w1["labels_spent"] == w0["labels_spent"] + 24
    assert w1["dataset_version"] == 2 and w1["model_version"] == 2 and w1["why"]

    # the store deleted by hand, then --reset (here its first step, in this process): the campaign
    # index is gone with the store, yet week 1's project goes too, else the next week 1 would find it
    from fleetloop.demo import reset
    from fleetloop.label.api import client_for
    from fleetloop.local.connect import resolve_settings
    from fleetloop.settings import Settings

    shutil.rmtree(home / "store")
    ports = {k: env[k] for k in ("FLEETLOOP_PREFECT__PORT", "FLEETLOOP_LABEL_STUDIO__PORT")}
    settings = resolve_settings(Settings(home=home, label_studio={"port": int(ports["FLEETLOOP_LABEL_STUDIO__PORT"])},
                                         storage={"backend": "local"}))
    said: list[str] = []
    reset(settings, said.append)
    with client_for(settings) as client:
        titles = [p["title"] for p in client.request("GET", "/api/projects", params={"page_size": 100})["results"]]
    assert not [t for t in titles if t.startswith("fleetloop-")], titles
    assert "1 Label Studio projects" in said[-1], said
