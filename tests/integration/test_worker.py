"""`fleetloop worker` leaves nothing behind, and `fleetloop run --wait` says when nothing polls.

Against a real Prefect API (Prefect's test harness: a server process on loopback). The worker
under test is the real command line in a subprocess; every process it starts inherits a marker
variable, so the test finds them all, wherever they were re-parented to.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.services

FLEETLOOP = [sys.executable, "-m", "fleetloop"]
MARK = "FLEETLOOP_TEST_WORKER_MARK"
POLLED, IDLE = "polled", "nobody-polls"

SLEEPY_FLOW = '''
import time

from prefect import flow


@flow(name="mine")
def sleepy(seconds: float = 600.0) -> None:
    time.sleep(seconds)
'''


@pytest.fixture(scope="module")
def deployments(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``mine/on-demand`` (a flow that sleeps) in pool ``polled``; ``monitor-drift/daily`` in
    pool ``nobody-polls``, which no worker ever polls; ``label-sync/poll`` with no pool (a
    served deployment nobody serves). Deployment ids by name."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    source = tmp_path_factory.mktemp("flows")
    (source / "sleepy.py").write_text(SLEEPY_FLOW)
    with get_client(sync_client=True) as client:
        for pool in (POLLED, IDLE):
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        idle = client.create_deployment(flow_id=client.create_flow_from_name("monitor-drift"), name="daily",
                                        work_pool_name=IDLE, entrypoint="drift.py:monitor_drift")
        served = client.create_deployment(flow_id=client.create_flow_from_name("label-sync"), name="poll",
                                          entrypoint="label.py:label_sync")
    polled = flow.from_source(source=str(source), entrypoint="sleepy.py:sleepy").deploy(
        name="on-demand", work_pool_name=POLLED, print_next_steps=False)
    return {"mine/on-demand": str(polled), "monitor-drift/daily": str(idle), "label-sync/poll": str(served)}


@pytest.fixture
def env(prefect_api: str, tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETLOOP_", "PREFECT_"))}
    return clean | {
        "PREFECT_API_URL": prefect_api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "FLEETLOOP_HOME": str(tmp_path / "home"),
        "FLEETLOOP_PREFECT__WORK_POOL": POLLED,
        MARK: uuid.uuid4().hex,
    }


def marked(env: dict[str, str]) -> list[psutil.Process]:
    """Live (non-zombie) processes that inherited this test's marker."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get(MARK) == env[MARK]:
                found.append(p)
        except psutil.Error:
            continue
    return found


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return "(gone)"


@pytest.fixture
def worker(deployments: dict[str, str], env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A running `fleetloop worker` whose `prefect worker` child polls pool ``polled``."""
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen([*FLEETLOOP, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            _wait_polling(proc, tmp_path / "worker.log")
            yield proc
        finally:
            for p in marked(env):  # whatever a failed test left (the worker itself included), by pid
                with contextlib.suppress(psutil.Error):
                    p.kill()
            proc.wait(10)


def _wait_polling(proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    """Until the `prefect worker` child runs and has sent a heartbeat to the pool."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"fleetloop worker exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            children = [c for c in psutil.Process(proc.pid).children() if "prefect worker start" in _cmd(c)]
            if children and any(w.last_heartbeat_time for w in client.read_workers_for_work_pool(POLLED)):
                return
            time.sleep(0.5)
    raise AssertionError(f"the Prefect worker did not start polling in {timeout}s:\n{log.read_text()[-3000:]}")


def _stopped_within(proc: subprocess.Popen[bytes], sig: signal.Signals, limit: float) -> float:
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(limit)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"fleetloop worker still running {limit:.0f}s after {sig.name}") from None
    return time.monotonic() - t0


def _assert_nothing_left(env: dict[str, str], grace: float = 2.0) -> None:
    deadline = time.monotonic() + grace
    while (left := marked(env)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, "left behind: " + "; ".join(f"{p.pid} {_cmd(p)}" for p in left)


def test_sigterm_stops_the_worker_and_its_running_flow_run(worker, env, deployments, tmp_path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from fleetloop.cli.orchestration import no_poller_hint

    with get_client(sync_client=True) as client:
        assert no_poller_hint(client, deployments["mine/on-demand"]) is None  # the worker polls
        run = run_deployment("mine/on-demand", timeout=0, as_subflow=False)
        deadline = time.monotonic() + 120
        while (state := client.read_flow_run(run.id).state) is None or not state.is_running():
            assert time.monotonic() < deadline, f"flow run not running: {state}\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
            time.sleep(0.5)
    tree = marked(env)
    prefect_procs = [p for p in tree if "prefect" in _cmd(p)]
    assert len(prefect_procs) >= 2, [_cmd(p) for p in tree]  # the Prefect worker and the flow run's process
    took = _stopped_within(worker, signal.SIGTERM, 10)
    assert worker.returncode == 128 + signal.SIGTERM
    _assert_nothing_left(env)
    print(f"SIGTERM with a flow run going: worker and {len(tree) - 1} descendant(s) gone in {took:.1f}s")


def test_sigint_stops_an_idle_worker(worker, env, deployments, tmp_path) -> None:
    took = _stopped_within(worker, signal.SIGINT, 10)
    assert worker.returncode == 128 + signal.SIGINT
    said = (tmp_path / "worker.log").read_text(errors="replace")
    # its own line, not the console script's generic one for a command that says nothing
    assert "SIGINT: stopping the Prefect worker" in said and "interrupted by SIGINT (Ctrl-C)" not in said, said[-2000:]
    _assert_nothing_left(env)
    print(f"SIGINT: gone in {took:.1f}s")


def test_worker_dies_with_its_parent(worker, env, deployments) -> None:
    """SIGKILL cannot be forwarded: the kernel kills the child (PR_SET_PDEATHSIG)."""
    worker.kill()
    worker.wait(5)
    _assert_nothing_left(env, grace=5.0)


def test_run_wait_says_no_worker_polls_the_pool(env, deployments) -> None:
    t0 = time.monotonic()
    r = subprocess.run([*FLEETLOOP, "run", "monitor-drift", "--wait", "--timeout", "6", "--no-worker-after", "1"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    err = " ".join(r.stderr.split())
    assert f"No worker is polling work pool '{IDLE}' (no worker has polled it yet)" in err, err
    assert "`fleetloop worker`" in err and "`fleetloop deploy --serve`" in err
    assert err.count("No worker is polling") == 1  # said once, then it keeps waiting
    assert re.search(r"Still (Scheduled|Late|Pending) after 6 s", err), err
    assert "/runs/flow-run/" in r.stdout
    print(f"run --wait with no worker: {time.monotonic() - t0:.1f}s")


def test_no_poller_hint_for_a_served_deployment_nobody_serves(deployments) -> None:
    from prefect.client.orchestration import get_client

    from fleetloop.cli.orchestration import no_poller_hint

    with get_client(sync_client=True) as client:
        hint = no_poller_hint(client, deployments["label-sync/poll"])
    assert hint is not None and "Nothing is serving deployment 'poll' (never polled)" in hint
    assert "`fleetloop deploy --serve`" in hint
