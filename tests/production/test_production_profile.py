"""The production profile without Docker (issue 12): weekly cycles through a process worker on
the services of ``infra/docker-compose.yaml``, the Prefect server taken away in the middle of them.

Services (``conftest.py``): PostgreSQL holding the compose file's two databases; the Prefect server
and Label Studio on it, with the compose file's settings; S3 (moto) as the object store, the DVC
remote and the model registry; ``fleetloop worker`` polling the ``fleetloop`` pool with the
compose worker's environment; the deployments registered by ``fleetloop deploy`` (as
``docker compose exec worker fleetloop deploy`` does).

Each test fires the ``weekly-cycle/weekly`` deployment for one week, stops the Prefect server in
the middle of the run, starts it again on the same database and port, waits for the run to end,
then fires the deployment again for the same week (the next run). The next run must complete,
and nothing may exist twice: Label Studio projects and tasks, campaign records, cycle records,
mining runs, model versions.

- a restart (down ~20 s, while the cycle retrains): Prefect's client retries its calls (a
  refused connection too, once it has connected) for about a minute, so the run rides through the
  restart and completes; the next run finds the week done and does nothing.
- an outage longer than those retries (~100 s, from the cycle's first subflow): the steps that
  hit it fail, the cycle records them, carries on once the server is back and ends Failed without
  writing its record; the next run redoes the week, and every step is idempotent (a mining step
  the interrupted run completed is reused, not run again: its key leaves out when the cycle's
  calibration was fitted).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.production import world as sim
from tests.production.conftest import Profile, Worker, fleetloop_cli

pytest_plugins = ["tests.fixtures_s3"]
pytestmark = [pytest.mark.services, pytest.mark.timeout(1200)]

BUDGET = 12
DEPLOYMENT = "weekly-cycle/weekly"
#: deploy with the schedules moved to 1 January, so no scheduled run (label-sync fires every 15
#: minutes) interleaves with the runs the tests start; everything else as deployed
QUIET_CRONS = {f"FLEETLOOP_PREFECT__{k}": "0 3 1 1 *" for k in ("WEEKLY_CRON", "DRIFT_CRON", "LABEL_SYNC_CRON")}


@contextmanager
def prefect_client(profile: Profile) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: profile.api_url}), get_client(sync_client=True) as client:
        yield client


def wait_for(check: Callable[[], Any], timeout: float, what: str, poll: float = 1.0,
             diagnose: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"{what}: not within {timeout:.0f}s\n{diagnose()}")


def logs_tail(profile: Profile) -> str:
    logs = [*profile.worker_logs, profile.prefect.log_path]
    return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:])
                     for p in logs if p.exists())


@pytest.fixture(scope="module")
def world(profile: Profile, tmp_path_factory: pytest.TempPathFactory) -> sim.World:
    profile.worker_env["FLEETLOOP_PARAMS"] = str(sim.pipeline_params(profile.home / "pipeline"))
    return sim.build(profile.worker_env, tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="module")
def deployed(profile: Profile, world: sim.World, worker: Worker) -> Worker:
    """`fleetloop deploy` with the deployment's environment, then the worker polling its pool."""
    fleetloop_cli(profile, "deploy", env=QUIET_CRONS)
    worker.start()
    pool = profile.worker_env["FLEETLOOP_PREFECT__WORK_POOL"]

    def polling() -> bool:
        assert worker.running(), logs_tail(profile)
        with prefect_client(profile) as client:
            return any(w.last_heartbeat_time for w in client.read_workers_for_work_pool(pool))

    wait_for(polling, 120, "the worker polls the pool", diagnose=lambda: logs_tail(profile))
    return worker


def fire(profile: Profile, week: str) -> Any:
    from prefect.deployments import run_deployment

    with prefect_client(profile):
        return run_deployment(DEPLOYMENT, parameters={"week": week, "budget": BUDGET, "retrain_unchanged": True},
                              timeout=0, as_subflow=False)


def read_run(profile: Profile, run_id: Any) -> Any:
    with prefect_client(profile) as client:
        return client.read_flow_run(run_id)


def final_run(profile: Profile, run_id: Any, timeout: float = 900) -> Any:
    return wait_for(lambda: (r := read_run(profile, run_id)).state.is_final() and r, timeout,
                    f"flow run {run_id} reaches a final state", poll=2.0, diagnose=lambda: logs_tail(profile))


def subflows(profile: Profile, run_id: Any) -> dict[str, str]:
    """The cycle run's subflows: flow name -> state name."""
    from prefect.client.schemas.filters import FlowFilter, FlowRunFilter

    with prefect_client(profile) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [run_id]}))
        names = {f.id: f.name for f in client.read_flows(flow_filter=FlowFilter(id={"any_": [r.flow_id for r in runs]}))}
    return {names[r.flow_id]: r.state.name if r.state else "?" for r in runs}


def cycle_summary(profile: Profile, run_id: Any) -> str:
    from prefect.client.schemas.filters import ArtifactFilter

    with prefect_client(profile) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key={"any_": ["weekly-cycle-summary"]},
                                                                    flow_run_id={"any_": [run_id]}))
    return "\n".join(str(a.data) for a in arts)


def label_studio_tasks(profile: Profile, campaign: str) -> tuple[list[int], list[str]]:
    """Ids of the projects titled ``campaign``, and the ``fleetloop_key`` of every task in them
    (Label Studio's API, not fleetloop's client)."""
    headers = {"Authorization": f"Token {profile.variables['LABEL_STUDIO_TOKEN']}"}
    with httpx.Client(base_url=profile.label_studio_url, headers=headers, timeout=30) as ls:
        projects = [p["id"] for p in ls.get("/api/projects", params={"page_size": 100}).json()["results"]
                    if p["title"] == campaign]
        keys: list[str] = []
        for pid in projects:
            page, seen = 1, 0
            while True:
                body = ls.get("/api/tasks", params={"project": pid, "page": page, "page_size": 100}).json()
                keys += [t["data"].get("fleetloop_key") for t in body["tasks"]]
                seen += len(body["tasks"])
                if not body["tasks"] or seen >= body["total"]:
                    break
                page += 1
    return projects, keys


def mining_runs(world: sim.World) -> list[str]:
    return sorted(k for k in world.store.list("mining/") if k.endswith("/summary.json"))


@dataclass
class Interruption:
    """What one interrupted cycle and the next run of the same week did."""

    first: Any  # the interrupted run (final)
    steps_at_stop: dict[str, str]
    steps: dict[str, str]
    down_s: float
    worker_survived: bool
    second: Any  # the next run (final)
    second_noop: bool
    mining_runs_added: list[str]
    seconds: float

    def describe(self) -> str:
        return (f"interrupted run: {self.first.state.name} ({self.first.state.message or 'no message'}); "
                f"subflows when the server stopped {self.steps_at_stop}, at the end {self.steps}; "
                f"Prefect server down {self.down_s:.0f}s; worker survived: {self.worker_survived}. Next run: "
                f"{self.second.state.name}, {'a no-op (week already done)' if self.second_noop else 'redid the week'}; "
                f"mining runs added: {len(self.mining_runs_added)}; {self.seconds:.0f}s in all")


def interrupt_and_rerun(profile: Profile, worker: Worker, world: sim.World, week: str,
                        stop_when: Callable[[dict[str, str]], bool], outage_s: float) -> Interruption:
    t0 = time.monotonic()
    mined_before = mining_runs(world)
    first = fire(profile, week)

    def time_to_stop() -> bool:
        run = read_run(profile, first.id)
        assert not run.state.is_final(), f"the cycle ended before the interruption: {run.state}\n{logs_tail(profile)}"
        return stop_when(subflows(profile, first.id))

    wait_for(time_to_stop, 600, "the moment to stop the Prefect server", diagnose=lambda: logs_tail(profile))
    at_stop = subflows(profile, first.id)
    down_at = time.monotonic()
    profile.stop_prefect()
    assert not profile.prefect_healthy()
    time.sleep(outage_s)
    profile.start_prefect()  # same database, same port
    down_s = time.monotonic() - down_at

    first_run = final_run(profile, first.id)
    steps = subflows(profile, first.id)
    survived = worker.running()
    if not survived:  # compose restarts it (restart: unless-stopped); so does the test
        worker.start()
    second = fire(profile, week)
    second_run = final_run(profile, second.id)
    return Interruption(first=first_run, steps_at_stop=at_stop, steps=steps, down_s=down_s, worker_survived=survived,
                        second=second_run, second_noop="already done" in cycle_summary(profile, second.id),
                        mining_runs_added=sorted(set(mining_runs(world)) - set(mined_before)),
                        seconds=time.monotonic() - t0)


def assert_nothing_twice(profile: Profile, world: sim.World, week: str, seen: Interruption) -> None:
    from fleetloop.cycle import campaign_name
    from fleetloop.label import index
    from fleetloop.registry.api import Registry

    assert seen.second.state.is_completed(), f"{seen.describe()}\n{logs_tail(profile)}"
    if seen.first.state.is_completed():
        assert seen.second_noop, seen.describe()  # the interrupted run finished the week: nothing left to do
    else:
        assert not seen.second_noop, seen.describe()
    campaign = campaign_name(week)
    projects, keys = label_studio_tasks(profile, campaign)
    assert len(projects) == 1, f"{len(projects)} Label Studio projects titled {campaign}"
    assert len(keys) == BUDGET and len(set(keys)) == BUDGET, f"{len(keys)} tasks, {len(set(keys))} distinct"
    assert [c.name for c in index.campaigns(world.store)].count(campaign) == 1
    records = [k for k in world.store.list(f"cycles/{week}/") if k.endswith(".json")]
    assert len(records) == 1, records
    registry = Registry(world.store)
    assert [v.version for v in registry.list()] == [1], "retrained once (later retrains reuse v1): one model version"
    assert registry.get("production").version == 1
    assert world.store.list("dvc/"), "dataset-v1's data is on the DVC remote in S3"
    # the services really run on PostgreSQL: the runs and the tasks are rows of its databases
    ids = ", ".join(f"'{r.id}'" for r in (seen.first, seen.second))
    assert profile.postgres.sql(f"SELECT count(*) FROM flow_run WHERE id IN ({ids})", database="prefect").strip() == "2"
    tasks = profile.postgres.sql(f"SELECT count(*) FROM task WHERE project_id = {projects[0]}", database="labelstudio")
    assert int(tasks) == BUDGET
    with prefect_client(profile) as client:  # no run left Running / Pending / Scheduled
        from prefect.client.schemas.filters import DeploymentFilter, FlowRunFilter

        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name={"any_": ["weekly"]}),
                                     flow_run_filter=FlowRunFilter(id={"any_": [seen.first.id, seen.second.id]}))
        assert all(r.state.is_final() for r in runs), [(r.name, r.state.name) for r in runs]
    assert len(seen.mining_runs_added) == 1, seen.mining_runs_added


def test_a_prefect_server_restart_mid_cycle_is_ridden_through(profile, world, deployed) -> None:
    """The server restarts (~20 s down) while the cycle retrains: the run completes by itself."""
    week = world.weeks[0]
    seen = interrupt_and_rerun(profile, deployed, world, week, stop_when=lambda s: s.get("retrain") == "Running",
                               outage_s=8)
    print("\n" + seen.describe())
    assert seen.first.state.is_completed(), seen.describe()
    assert seen.worker_survived, seen.describe()
    assert_nothing_twice(profile, world, week, seen)


def test_an_outage_longer_than_the_client_retries_fails_the_run_and_the_next_run_recovers(
        profile, world, deployed) -> None:
    """The server is down ~100 s from the cycle's first subflow: steps fail, the run ends Failed
    (no cycle record), the next run redoes the week without duplicating anything."""
    week = world.weeks[1]
    seen = interrupt_and_rerun(profile, deployed, world, week, stop_when=bool, outage_s=90)
    print("\n" + seen.describe())
    assert seen.first.state.is_failed(), seen.describe()
    assert f"weekly cycle {week} not done: " in (seen.first.state.message or ""), seen.describe()  # names the failed steps
    assert_nothing_twice(profile, world, week, seen)
