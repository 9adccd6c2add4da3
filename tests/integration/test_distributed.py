"""The mine flow on a real Dask cluster (issue 12): a ``dask scheduler`` and two ``dask worker``
processes on loopback, the store on the S3-compatible server, ``FLEETLOOP_PREFECT__DASK_ADDRESS``
set, the flow run against a real Prefect API (the test harness).

Proof that the shards ran in the worker processes, not in the flow's process: the scheduler's
own task stream records every shard task with the worker that ran it, and those workers are
the two processes this test started (their pids, asked of the workers themselves). A local run
(a LocalCluster inside the flow's process) never reaches this scheduler, so the check fails
there. The result equals a local run's byte for byte (ranked.parquet and selected.csv).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetloop.settings import get_settings
from fleetloop.sim.sample import generate_sample
from fleetloop.store.logs import put_log
from fleetloop.store.objects import S3Store

pytest_plugins = ["tests.fixtures_s3"]
pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]
DASK = str(ROOT / ".venv" / "bin" / "dask")
N_LOGS, N_FRAMES, FRAMES_PER_SHARD, BUDGET = 6, 60, 60, 40  # 6 shards of one log each


def _bucket(s3_server, name: str) -> dict[str, str]:
    """A fresh bucket holding the same generated logs; the env that points fleetloop at it."""
    from fleetloop.settings import S3Settings

    s3_server.client().create_bucket(Bucket=name)
    store = S3Store.from_settings(S3Settings(bucket=name, endpoint_url=s3_server.endpoint_url))
    logs, _ = generate_sample(n_logs=N_LOGS, n_frames=N_FRAMES, seed=3)
    for log_id in logs.log_ids:
        put_log(store, logs.select([log_id]), source="generated")
    return {"FLEETLOOP_STORAGE__BACKEND": "s3", "FLEETLOOP_STORAGE__S3__BUCKET": name,
            "FLEETLOOP_STORAGE__S3__ENDPOINT_URL": s3_server.endpoint_url}


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop each process group we started (SIGTERM, then SIGKILL), and reap them."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


class Cluster:
    """A scheduler and two single-threaded workers, each its own process group."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.procs: list[subprocess.Popen] = []
        self.address = ""
        self.worker_pids: dict[str, int] = {}  # worker name -> pid of the process we started

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed when the process is reaped
        proc = subprocess.Popen([DASK, *args], env=self.env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        scheduler_file = self.tmp / "scheduler.json"
        self._spawn("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(scheduler_file)])
        self.address = self._wait_for_file(scheduler_file)
        for name in ("w1", "w2"):
            proc = self._spawn(name, ["worker", self.address, "--name", name, "--nthreads", "1", "--no-nanny",
                                      "--no-dashboard", "--host", "127.0.0.1"])
            self.worker_pids[name] = proc.pid

    def _wait_for_file(self, path: Path, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                try:
                    return json.loads(path.read_text())["address"]
                except (ValueError, KeyError):
                    pass
            if self.procs[0].poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"dask scheduler did not start: {(self.tmp / 'scheduler.log').read_text()[-2000:]}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.tmp.glob("*.log")))


@pytest.fixture
def cluster(tmp_path: Path, s3_server, prefect_api) -> Iterator[tuple[Cluster, dict[str, str]]]:
    env_a = _bucket(s3_server, f"dist-{os.getpid()}-{time.monotonic_ns() % 10**9}")
    env = {**os.environ, **env_a, "FLEETLOOP_HOME": str(tmp_path / "home"), "PREFECT_API_URL": prefect_api,
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    c = Cluster(tmp_path, env)
    try:
        c.start()
        yield c, env_a
    finally:
        _stop(c.procs)
        assert all(p.poll() is not None for p in c.procs), "a dask process outlived the test"


def _run_mine(monkeypatch, tmp_path: Path, env: dict[str, str], dask_address: str | None):
    """One mine flow run in this process, configured by ``env`` (settings are read at run time)."""
    from fleetloop.flows.mine import mine
    from fleetloop.store.objects import get_store

    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if dask_address:
        monkeypatch.setenv("FLEETLOOP_PREFECT__DASK_ADDRESS", dask_address)
    else:
        monkeypatch.delenv("FLEETLOOP_PREFECT__DASK_ADDRESS", raising=False)
    get_settings.cache_clear()
    try:
        summary = mine(budget=BUDGET, frames_per_shard=FRAMES_PER_SHARD)
        store = get_store(get_settings())
        return summary, store.get_bytes(summary.ranked_key), store.get_bytes(summary.selected_key)
    finally:
        get_settings.cache_clear()


def _client(address: str):
    """A short-lived client of our scheduler. Never open while a flow runs: prefect-dask would
    pick a live client up (``distributed.get_client()``) instead of the configured address."""
    from distributed import Client

    return Client(address, timeout=30, set_as_default=False)


def test_mine_flow_shards_run_on_dask_workers_and_match_a_local_run(cluster, s3_server, tmp_path, monkeypatch):
    c, env_a = cluster
    with _client(c.address) as client:
        client.wait_for_workers(2, timeout=60)
        pids = client.run(os.getpid)  # worker address -> pid, as the workers see themselves
        names = {info["name"]: addr for addr, info in client.scheduler_info()["workers"].items()}
        assert {n: pids[names[n]] for n in ("w1", "w2")} == c.worker_pids  # the processes this test started
        client.get_task_stream()  # installs the scheduler's task-stream plugin: it records from now on
    t0 = time.time()

    distributed, ranked_d, selected_d = _run_mine(monkeypatch, tmp_path, env_a, c.address)

    with _client(c.address) as client:
        stream = client.get_task_stream(start=t0)
    shard_tasks = [t for t in stream if "mine_shard" in str(t["key"]) or "mine-shard" in str(t["key"])]
    assert len(shard_tasks) == N_LOGS * N_FRAMES // FRAMES_PER_SHARD, ([t["key"] for t in stream], c.logs())
    ran_on = {t["worker"] for t in shard_tasks}
    assert ran_on <= set(names.values()), ran_on  # every shard ran in one of our two worker processes
    assert len(ran_on) == 2, f"all shards ran on one worker: {ran_on}"

    env_b = _bucket(s3_server, f"local-{os.getpid()}-{time.monotonic_ns() % 10**9}")
    local, ranked_l, selected_l = _run_mine(monkeypatch, tmp_path, env_b, None)

    assert distributed.run_key == local.run_key
    assert (distributed.frames, distributed.selected) == (local.frames, local.selected) == (N_LOGS * N_FRAMES, BUDGET)
    assert ranked_d == ranked_l  # byte for byte
    assert selected_d == selected_l
