"""The main job (``fleetloop demo``) end to end on a reduced world: real local Prefect server and
Label Studio started by ``fleetloop services``, week 0 (seed set, dataset-v1, first model trained
with dvc repro, registered, promoted), then two weekly cycles: the fleet drives with the
production model through ONNX, logs are ingested, the weekly cycle runs drift → sync → grow →
retrain → gate → mine → push, a simulated team labels through Label Studio's API, and the week's
labels are synced, grown into a new dataset version, trained on and judged. A rerun continues with
the next week."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from fleetloop.settings import get_settings
from tests.fixtures_ls import REPO, free_port

pytestmark = [pytest.mark.services, pytest.mark.timeout(2400)]


@pytest.fixture
def demo_home(tmp_path, monkeypatch):
    from fleetloop.local import label_studio as server
    from fleetloop.local import services

    home = tmp_path / "home"
    # reuse the Label Studio venv the other tests install (a symlink, not a second install)
    shared = Path(os.environ.get("FLEETLOOP_TEST_LS_VENV") or server.default_venv(REPO / ".fleetloop"))
    server.install(REPO / ".fleetloop", venv=shared)
    server.default_venv(home).parent.mkdir(parents=True)
    server.default_venv(home).symlink_to(shared, target_is_directory=True)
    for k in ("PREFECT_API_URL", "FLEETLOOP_PREFECT__API_URL", "FLEETLOOP_LABEL_STUDIO__URL", "FLEETLOOP_PARAMS"):
        monkeypatch.setenv(k, "")  # recorded, so teardown restores the original (run_demo sets some)
        monkeypatch.delenv(k)
    monkeypatch.setenv("FLEETLOOP_HOME", str(home))
    monkeypatch.setenv("FLEETLOOP_PREFECT__PORT", str(free_port()))
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__PORT", str(free_port()))
    get_settings.cache_clear()
    yield home
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30)  # send the run's last events while its server is still up
    services.down(get_settings())
    get_settings.cache_clear()


def test_demo_closes_the_loop_and_continues_on_rerun(demo_home):
    from prefect.settings import temporary_settings

    from fleetloop.demo import DemoConfig, run_demo
    from fleetloop.registry.api import Registry
    from fleetloop.store.objects import get_store

    config = DemoConfig(logs_per_week=6, frames_per_log=16, seed_logs=10, budget=24, eval_frames=48, epochs=4,
                        floor=0.0)
    settings = get_settings()
    with temporary_settings():  # run_demo points Prefect at the local server it starts
        first = run_demo(settings, config, weeks=2, say=lambda *_: None)
        rows = first.rows
        assert [r.week for r in rows] == [0, 1, 2]
        w0, w1, w2 = rows
        assert w0.dataset_version == 1 and w0.production == 1 and w0.promoted
        assert w0.map_overall is not None and w0.map_rain is not None and w0.map_green is not None
        # week 1: mined, pushed, labeled by the team; its labels synced, grown into dataset-v2, a candidate
        # trained and judged by the gate within the week
        assert w1.mined == 24 and w1.labeled >= 20
        assert w1.dataset_version == 2 and w1.model_version == 2 and w1.why
        assert {"sync", "grow", "retrain"} <= set(w1.seconds)
        # week 2: the weekly cycle's own sync finds nothing new (week 1's labels are in), week 2's labels -> v3
        assert w2.dataset_version == 3 and w2.model_version == 3 and w2.why
        assert w2.labels_spent == w0.labels_spent + w1.labeled + w2.labeled
        reg = Registry(get_store(get_settings()))
        assert reg.get(2).lineage.dataset_version == 2 and reg.decisions(2)
        assert reg.get(3).lineage.dataset_version == 3 and reg.decisions(3)
        assert first.plot and Path(first.plot).stat().st_size > 10_000
        assert first.prefect_ui.startswith("http://127.0.0.1:") and first.label_studio.startswith("http://127.0.0.1:")
        state = json.loads(Path(first.state).read_text())
        assert len(state["rows"]) == 3
        # what a person reads in the Prefect UI: the dataset version, the gate's decision and its per-slice table
        api = first.prefect_ui + "/api"
        keys = {"dataset-version", "promotion-decision", "candidate-vs-production", "weekly-cycle-summary",
                "mining-summary", "label-push-summary", "label-sync-summary", "demo-progress"}
        found = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": sorted(keys)}}}).json()
        assert keys <= {a["key"] for a in found}
        table = next(a for a in found if a["key"] == "candidate-vs-production")
        assert "weather=rain" in json.dumps(table["data"])
        decision = next(a for a in found if a["key"] == "promotion-decision" and "v3" in a["data"])
        assert "dataset-v3" in decision["data"]

        again = run_demo(settings, config, weeks=1, say=lambda *_: None)  # continues with week 3
    assert [r.week for r in again.rows] == [0, 1, 2, 3]
    assert again.rows[3].dataset_version == 4  # week 3's labels became dataset-v4
