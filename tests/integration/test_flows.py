"""Orchestration against a real Prefect API (Prefect's test harness: a real server process on
loopback) and a real S3-compatible server (moto over HTTP), on the real KITTI slice."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
import typer

from fleetloop.ingest.ingest import ingest
from fleetloop.mine import run as mining
from fleetloop.settings import get_settings
from fleetloop.store.objects import table_from_bytes

pytest_plugins = ["tests.fixtures_s3"]
pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]
FLEETLOOP = [sys.executable, "-m", "fleetloop"]


@pytest.fixture
def s3_env(tmp_path, s3_server, s3_bucket, monkeypatch):
    """Point fleetloop (this process and its children) at the S3 bucket."""
    env = {
        "FLEETLOOP_HOME": str(tmp_path / "home"),
        "FLEETLOOP_STORAGE__BACKEND": "s3",
        "FLEETLOOP_STORAGE__S3__BUCKET": s3_bucket,
        "FLEETLOOP_STORAGE__S3__ENDPOINT_URL": s3_server.endpoint_url,
        "FLEETLOOP_STORAGE__S3__MAX_ATTEMPTS": "2",
        "FLEETLOOP_STORAGE__S3__CONNECT_TIMEOUT_S": "2",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


@pytest.fixture
def kitti_in_s3(s3_env, kitti_root):
    from fleetloop.store.objects import get_store

    store = get_store(get_settings())
    report = ingest(store, kitti_root, "kitti-tracking")
    assert sorted(report.registered) == ["0001", "0006", "0008", "0010", "0012"]
    return store


def _artifacts(key: str) -> list[dict]:
    import httpx
    from prefect.settings import PREFECT_API_URL

    r = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter",
                   json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"})
    r.raise_for_status()
    return r.json()


def _wait_for_deployments(names: list[str], timeout: float = 90) -> dict:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    found: dict = {}
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            for name in names:
                if name not in found:
                    with contextlib.suppress(Exception):  # not registered yet
                        found[name] = client.read_deployment_by_name(name)
            if len(found) == len(names):
                return found
            time.sleep(1)
    raise AssertionError(f"deployments not registered in time: {sorted(set(names) - set(found))}")


def test_deploy_serve_and_run_mine_on_demand(prefect_api, kitti_in_s3, s3_env, tmp_path):
    env = {**os.environ, **s3_env, "PREFECT_API_URL": prefect_api}
    # the README offers `fleetloop deploy` (a work pool) or `deploy --serve`: switching from the
    # first to the second replaces the pool's deployments (served over, their runs crashed)
    dep = subprocess.run([*FLEETLOOP, "deploy"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert dep.returncode == 0, dep.stdout + dep.stderr
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen([*FLEETLOOP, "deploy", "--serve"], env={**env, "PYTHONUNBUFFERED": "1"}, stdout=log,
                                  stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 90
            while "Replacing 8 deployments registered in a work pool" not in (tmp_path / "serve.log").read_text():
                assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.5)
            deps = _wait_for_deployments(["weekly-cycle/weekly", "mine/on-demand", "ingest-logs/on-demand",
                                          "monitor-drift/daily", "label-push/on-demand", "label-sync/poll"])
            assert deps["mine/on-demand"].work_pool_name is None  # the served one
            weekly = deps["weekly-cycle/weekly"]
            crons = [(s.schedule.cron, s.schedule.timezone) for s in weekly.schedules]
            assert crons == [("0 3 * * 1", "UTC")]

            # on demand, with validated parameters, waiting for the result
            run = subprocess.run([*FLEETLOOP, "run", "mine", "--param", "budget=40", "--wait", "--timeout", "240"],
                                 env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
            assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "serve.log").read_text()[-3000:]
            assert "/runs/flow-run/" in run.stdout

            summary = _artifacts("mining-summary")[0]
            assert "1,479 frames" in summary["data"] and "40 frames" in summary["data"]
            assert "**Judged camera stream:** camera:yolox_sort" in summary["data"]  # params.yaml's
            table = _artifacts("top-mined-frames")[0]
            rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
            assert len(rows) == 20 and {r["log_id"] for r in rows} <= {"0001", "0006", "0008", "0010", "0012"}
            assert all(r["reasons"] for r in rows)
            scores = [r["score"] for r in rows]
            assert scores == sorted(scores, reverse=True)

            latest = json.loads(kitti_in_s3.get_bytes("mining/latest.json"))
            selected = kitti_in_s3.get_bytes(f"mining/{latest['run_key']}/selected.csv").decode().splitlines()
            assert selected[0].startswith("log_id,frame,score,reasons") and len(selected) == 41

            # a parameter of the wrong type is refused before anything runs
            bad = subprocess.run([*FLEETLOOP, "run", "mine", "--param", "budget=lots"], env=env,
                                 capture_output=True, text=True, cwd=ROOT, timeout=120)
            assert bad.returncode == 2, bad.stdout + bad.stderr
            # a run that fails makes `run --wait` exit non-zero; with --json stdout says so as JSON
            failing = subprocess.run([*FLEETLOOP, "run", "mine", "--param", 'log_ids=["9999"]', "--wait", "--timeout", "240",
                                      "--json"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
            assert failing.returncode == 1, failing.stdout + failing.stderr
            doc = json.loads(failing.stdout)
            assert doc["ok"] is False and doc["state"] == "Failed" and "/runs/flow-run/" in doc["url"], doc
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.send_signal(2)
                server.wait(10)


def test_the_weekly_deployment_runs_one_cycle_at_a_time(prefect_api, tmp_path, monkeypatch, capsys):
    """The weekly cycle's deployment holds a concurrency limit of 1 that enqueues: while one run
    is going, the server refuses a second run's start (AwaitingConcurrencySlot) and lets it start
    once the first is done (where it finds the week done and does nothing)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy
    from prefect.states import Completed, Pending, Running

    from fleetloop.cli.orchestration import _wait_for_run
    from fleetloop.flows.deployments import deploy_to_pool

    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_PREFECT__WORK_POOL", "one-at-a-time")  # no worker polls this pool
    get_settings.cache_clear()
    deploy_to_pool(get_settings())
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("weekly-cycle/weekly")
        assert dep.global_concurrency_limit is not None and dep.global_concurrency_limit.limit == 1
        assert dep.concurrency_options is not None
        assert dep.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
        first, second = (client.create_flow_run_from_deployment(dep.id, parameters={"week": "2026-W01"}) for _ in "ab")
        try:
            assert client.set_flow_run_state(first.id, Pending()).state.name == "Pending"
            refused = client.set_flow_run_state(second.id, Pending())
            assert refused.status.value == "REJECT" and client.read_flow_run(second.id).state.name == "AwaitingConcurrencySlot"
            with pytest.raises(typer.Exit) as waited:  # `fleetloop run weekly-cycle --wait` says why it waits
                _wait_for_run(client.read_flow_run(second.id), timeout=1.5, hint_after=3600)
            assert waited.value.exit_code == 3
            said = capsys.readouterr().err
            assert "Another run of this deployment is going" in said and "AwaitingConcurrencySlot after" in said
            client.set_flow_run_state(first.id, Running())
            assert client.set_flow_run_state(second.id, Pending()).status.value == "REJECT"
            client.set_flow_run_state(first.id, Completed())
            assert client.set_flow_run_state(second.id, Pending()).state.name == "Pending"
        finally:
            for run in (first, second):
                client.delete_flow_run(run.id)
    mine_dep = _wait_for_deployments(["mine/on-demand"], timeout=10)["mine/on-demand"]
    assert mine_dep.global_concurrency_limit is None  # on-demand steps are not limited
    get_settings.cache_clear()


def _stop(proc: subprocess.Popen) -> None:
    """A process worker ignores a single SIGTERM: SIGTERM, then SIGINT, then kill."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        proc.send_signal(sig)
        try:
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


def test_deploy_to_work_pool_and_run_through_a_process_worker(prefect_api, kitti_in_s3, s3_env, tmp_path):
    env = {**os.environ, **s3_env, "PREFECT_API_URL": prefect_api}
    dep = subprocess.run([*FLEETLOOP, "deploy"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert dep.returncode == 0 and "Registered 8 deployments in work pool fleetloop" in dep.stdout, dep.stdout + dep.stderr
    assert "mine/on-demand" in dep.stdout and "Looks like you're deploying" not in dep.stdout + dep.stderr
    assert dep.stdout.count("\n") <= 3, dep.stdout  # one summary, not Prefect's table per deployment
    deps = _wait_for_deployments(["weekly-cycle/weekly", "mine/on-demand"], timeout=10)
    assert deps["mine/on-demand"].work_pool_name == "fleetloop"
    with open(tmp_path / "worker.log", "w") as log:
        worker = subprocess.Popen([*FLEETLOOP, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                  start_new_session=True)
        try:
            # as a user runs it: the Prefect server comes from fleetloop's settings (or the local
            # services' state), not from PREFECT_API_URL
            user_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"} | {"FLEETLOOP_PREFECT__API_URL": prefect_api}
            run = subprocess.run([*FLEETLOOP, "run", "mine", "--param", "budget=7", "--wait", "--timeout", "240"],
                                 env=user_env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
            assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "worker.log").read_text()[-3000:]
            latest = json.loads(kitti_in_s3.get_bytes("mining/latest.json"))
            summary = json.loads(kitti_in_s3.get_bytes(f"mining/{latest['run_key']}/summary.json"))
            assert summary["selected"] == 7 and summary["frames"] == 1479
        finally:
            _stop(worker)


def _objects(store, prefix: str) -> list[str]:
    return sorted(store.list(prefix))


def test_rerun_of_mine_produces_one_set_of_outputs(prefect_api, kitti_in_s3):
    from fleetloop.flows.mine import mine

    first = mine(budget=30)
    outputs = _objects(kitti_in_s3, "mining/")
    second = mine(budget=30)
    assert second.run_key == first.run_key and second.reused and not first.reused
    assert _objects(kitti_in_s3, "mining/") == outputs
    assert sum(k.endswith("summary.json") for k in outputs) == 1


def test_s3_outage_mid_run_fails_clearly_and_next_run_completes(prefect_api, kitti_in_s3, s3_server, monkeypatch):
    from fleetloop.flows import mine as mine_flow_module

    real = mining.mine_shard
    calls = []

    def shard_then_outage(store, run_key, index, log_ids, params):
        out = real(store, run_key, index, log_ids, params)
        calls.append(index)
        if len(calls) == 1:
            s3_server.stop()  # the S3 server goes away after the first shard is written
        return out

    monkeypatch.setattr(mining, "mine_shard", shard_then_outage)
    state = mine_flow_module.mine(budget=25, frames_per_shard=300, return_state=True)
    assert state.is_failed()
    message = str(state.message) + repr(state.data) if state.data is not None else str(state.message)
    try:
        state.result()
    except Exception as exc:  # the flow's error names the unreachable endpoint
        message += str(exc)
    assert s3_server.endpoint_url.split("//")[1] in message or "127.0.0.1" in message, message

    s3_server.start()
    monkeypatch.setattr(mining, "mine_shard", real)
    summary = mine_flow_module.mine(budget=25, frames_per_shard=300)
    assert summary.frames == 1479 and summary.selected == 25
    assert summary.judged_camera == ["camera:yolox_sort"]  # every shard judged params.yaml's stream
    ranked = table_from_bytes(kitti_in_s3.get_bytes(summary.ranked_key))
    keys = pc.binary_join_element_wise(ranked["log_id"], pc.cast(ranked["frame"], "string"), ":")
    assert len(pc.unique(keys)) == ranked.num_rows == 1479
    shards = [k for k in kitti_in_s3.list(f"mining/{summary.run_key}/shards/") if k.endswith(".json")]
    assert len(shards) == len(set(shards)) == 3  # 0001 | 0006 0008 | 0010 0012 at 300 frames a shard
