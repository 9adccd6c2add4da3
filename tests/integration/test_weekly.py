"""The weekly cycle and the drift flow against a real Prefect API, on the real KITTI slice: the
logs of two weeks ago (0001, 0006) as the reference, last week's (0008, 0010, 0012) as the
window the cycle of this week covers."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from fleetloop.cycle import iso_week, week_start
from fleetloop.drift.steer import latest_slice_boost
from fleetloop.ingest.ingest import ingest
from fleetloop.mine.run import MiningSummary
from fleetloop.settings import get_settings
from fleetloop.store.logs import list_logs

pytestmark = pytest.mark.services


@pytest.fixture
def two_weeks(tmp_path, monkeypatch, kitti_root):
    from fleetloop.store.objects import get_store

    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    get_settings.cache_clear()
    store = get_store(get_settings())
    monday = week_start(iso_week(datetime.now(UTC)))
    ingest(store, kitti_root, "kitti-tracking", ["0001", "0006"], arrived_at=monday - timedelta(days=10))
    ingest(store, kitti_root, "kitti-tracking", ["0008", "0010", "0012"], arrived_at=monday - timedelta(days=3))
    yield store
    get_settings.cache_clear()


def _post(api: str, path: str, body: dict) -> list[dict]:
    r = httpx.post(f"{api}{path}", json=body)
    r.raise_for_status()
    return r.json()


def test_weekly_cycle_runs_drift_then_steered_mining_and_is_idempotent(prefect_api, two_weeks):
    from fleetloop.flows.weekly import weekly_cycle

    record = weekly_cycle(budget=30, label=False)
    assert record.logs == ["0008", "0010", "0012"]
    assert record.steps["drift"].status == "ran"
    drift = record.steps["drift"].details
    assert drift["share_drifted"] > 0.3
    assert drift["slice_boost"], "the drifted slices steer the mining run of the same cycle (in memory)"
    assert record.steps["sync"].status == "skipped" and record.steps["push"].status == "skipped"
    calib = record.steps["calibrate"]  # runs before mining; with no dataset version the defaults stay
    assert calib.status == "ran" and calib.details["fitted"] is False and "no dataset version" in calib.reason
    mined = record.steps["mine"].details
    window_frames = sum(m.n_frames for m in list_logs(two_weeks) if m.log_id in {"0008", "0010", "0012"})
    assert mined["frames"] == window_frames and mined["selected"] == 30  # only the week's logs are mined
    summary = MiningSummary.model_validate_json(two_weeks.get_bytes(f"mining/{mined['run_key']}/summary.json"))
    assert summary.slice_boost == drift["slice_boost"]
    assert latest_slice_boost(two_weeks) == {}, "the cycle passes its boost in memory, not through the store"

    # the report and summary went to the store; the artifact says where
    reports = two_weeks.list("drift/reports/")
    assert any(k.endswith("drift_report.html") for k in reports) and any(k.endswith("summary.json") for k in reports)
    art = _post(prefect_api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["drift-summary"]}}})
    assert art and "features drifted" in art[0]["data"] and "drift_report.html" in art[0]["data"]

    deadline = time.monotonic() + 30  # the server persists events in batches
    while True:
        events = _post(prefect_api, "/events/filter", {"filter": {"event": {"name": ["fleetloop.drift.detected"]}}})
        if events["events"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert events["events"] and events["events"][0]["payload"]["slice_boost"] == drift["slice_boost"]

    # a second fire of the same week with the same inputs does nothing
    again = weekly_cycle(budget=30, label=False)
    assert again.noop and again.steps["mine"].details["run_key"] == mined["run_key"]
    assert len([k for k in two_weeks.list("cycles/") if k.endswith(".json")]) == 1


def test_drift_flow_skips_clearly_without_a_reference(prefect_api, tmp_path, monkeypatch, kitti_root):
    from fleetloop.flows.drift import monitor_drift
    from fleetloop.store.objects import get_store

    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home2"))
    get_settings.cache_clear()
    monday = week_start(iso_week(datetime.now(UTC)))
    ingest(get_store(get_settings()), kitti_root, "kitti-tracking", ["0012"], arrived_at=monday - timedelta(days=2))
    run = monitor_drift()
    assert run.status == "skipped" and "0 reference logs" in run.reason
    get_settings.cache_clear()
