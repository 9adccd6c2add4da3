"""The main job (``fleetloop demo``) end to end: real local Prefect server and Label Studio
started by ``fleetloop services``, the weekly cycle with drift, steered mining, label push,
a simulated labeling team and sync; then a rerun that must change nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetloop.settings import get_settings
from tests.fixtures_ls import REPO, free_port

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]


@pytest.fixture
def demo_home(tmp_path, monkeypatch):
    from fleetloop.local import services
    from fleetloop.local import label_studio as server

    home = tmp_path / "home"
    # reuse the Label Studio venv the other tests install (a symlink, not a second install)
    shared = Path(os.environ.get("FLEETLOOP_TEST_LS_VENV") or server.default_venv(REPO / ".fleetloop"))
    server.install(REPO / ".fleetloop", venv=shared)
    server.default_venv(home).parent.mkdir(parents=True)
    server.default_venv(home).symlink_to(shared, target_is_directory=True)
    for k in ("PREFECT_API_URL", "FLEETLOOP_PREFECT__API_URL", "FLEETLOOP_LABEL_STUDIO__URL"):
        monkeypatch.setenv(k, "")  # recorded, so teardown restores the original (run_demo sets PREFECT_API_URL)
        monkeypatch.delenv(k)
    monkeypatch.setenv("FLEETLOOP_HOME", str(home))
    monkeypatch.setenv("FLEETLOOP_PREFECT__PORT", str(free_port()))
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__PORT", str(free_port()))
    get_settings.cache_clear()
    yield home
    services.down(get_settings())
    get_settings.cache_clear()


def test_demo_runs_the_loop_and_reruns_safely(demo_home):
    from prefect.settings import temporary_settings

    from fleetloop.demo import run_demo

    settings = get_settings()
    with temporary_settings():  # run_demo points Prefect at the local server it starts
        first = run_demo(settings, logs_per_week=3, frames=120, budget=25, say=lambda *_: None)
        assert first.frames == 720 and first.quarantined == 0 and not first.cycle_was_noop
        assert first.drift_share > 0 and "weather=rain" in first.slice_boost
        assert first.selected == 25 and first.tasks == 25
        assert first.annotated >= 20 and first.labels_delivered == first.annotated and first.label_boxes > 50
        assert first.prefect_ui.startswith("http://127.0.0.1:")

        again = run_demo(settings, logs_per_week=3, frames=120, budget=25, say=lambda *_: None)
    assert again.cycle_was_noop
    assert (again.tasks, again.annotated, again.labels_delivered, again.label_boxes) == (
        first.tasks, first.annotated, first.labels_delivered, first.label_boxes)
