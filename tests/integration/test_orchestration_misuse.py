"""`fleetloop deploy`, `worker` and `run` misused: no Prefect API at the configured URL, a URL
without its /api, odd `--timeout`s, Ctrl-C while waiting, a deployment deleted while a run
waits, a work pool of another type, `deploy` twice.

Against a real Prefect API (Prefect's test harness: a server process on loopback), with the real
command line in a subprocess. Every failure is one line on stderr and, with `--json`, one JSON
document on stdout with ``ok`` false, with the exit code the command's help gives.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.services

FLEETLOOP = [sys.executable, "-m", "fleetloop"]
IDLE = "misuse-nobody-polls"  # a process pool no worker ever polls
MARK = "FLEETLOOP_TEST_ORCH_MISUSE_MARK"


def _dead_url() -> str:
    """An API URL on a loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `fleetloop` subprocess, without this shell's Prefect/fleetloop
    settings; PREFECT_API_URL is set by each test (or by ``api_env``)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETLOOP_", "PREFECT_"))}
    return clean | {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "FLEETLOOP_HOME": str(tmp_path / "home"),
        "FLEETLOOP_PREFECT__WORK_POOL": IDLE,
        MARK: uuid.uuid4().hex,
    }


@pytest.fixture
def api_env(prefect_api: str, env: dict[str, str]) -> dict[str, str]:
    return env | {"PREFECT_API_URL": prefect_api}


@pytest.fixture
def idle_deployment(prefect_api: str) -> str:
    """``monitor-drift/daily`` in a process pool that no worker polls (made again for each test:
    a test may delete it); its id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(WorkPoolCreate(name=IDLE, type="process"))
        dep = client.create_deployment(flow_id=client.create_flow_from_name("monitor-drift"), name="daily",
                                       work_pool_name=IDLE, entrypoint="drift.py:monitor_drift")
    return str(dep)


def _runs_of(deployment_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[uuid.UUID(deployment_id)])))


def _fleetloop(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLEETLOOP, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _one_json_failure(r: subprocess.CompletedProcess[str], code: int) -> dict:
    """stdout is one JSON document with ok false; stderr says why in one line, no traceback."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and isinstance(doc["error"], str) and "\n" not in doc["error"], doc
    assert "Traceback" not in r.stderr, r.stderr
    return doc


def _wait_for_new_run(deployment_id: str, before: int, proc: subprocess.Popen[str], timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        runs = _runs_of(deployment_id)
        if len(runs) > before:
            return runs[0] if len(runs) == 1 else max(runs, key=lambda r: r.created)
        time.sleep(0.3)
    raise AssertionError("fleetloop run made no flow run")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


# --- no Prefect API at the configured URL ---------------------------------------------------------


def test_run_against_an_api_that_is_down_is_one_line_exit_2(env) -> None:
    """Before: `ConnectError: [Errno 111] Connection refused` (not naming the URL), exit 1, the
    code of a run that did not complete."""
    url = _dead_url()
    r = _fleetloop(["run", "mine", "--json"], env | {"PREFECT_API_URL": url})
    doc = _one_json_failure(r, 2)
    assert doc["error"].startswith(f"No Prefect API at {url}: ConnectError"), doc
    assert r.stderr.strip().count("\n") == 0 and url in r.stderr, r.stderr


def test_deploy_against_an_api_that_is_down_is_one_line_exit_2(env) -> None:
    url = _dead_url()
    r = _fleetloop(["deploy"], env | {"PREFECT_API_URL": url})
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.strip().count("\n") == 0 and f"No Prefect API at {url}" in r.stderr, r.stderr
    doc = _one_json_failure(_fleetloop(["deploy", "--json"], env | {"PREFECT_API_URL": url}), 2)
    assert doc["error"].startswith(f"No Prefect API at {url}: ConnectError"), doc
    doc = _one_json_failure(_fleetloop(["deploy", "--serve", "--json"], env | {"PREFECT_API_URL": url}), 2)
    assert doc["error"].startswith("usage: Invalid value for --json: --serve runs until stopped"), doc


def test_run_with_an_api_url_missing_its_api_path_says_so(api_env, idle_deployment) -> None:
    """Before: every call answered 404, so the run read as `No deployment monitor-drift/daily:
    register them with fleetloop deploy` (and `deploy` itself failed with a raw HTTP error)."""
    base = api_env["PREFECT_API_URL"].removesuffix("/api")
    before = len(_runs_of(idle_deployment))
    r = _fleetloop(["run", "monitor-drift", "--json"], api_env | {"PREFECT_API_URL": base})
    doc = _one_json_failure(r, 2)
    assert f"No Prefect API at {base}: HTTP 404" in doc["error"] and "ends in /api" in doc["error"], doc
    assert "No deployment" not in r.stderr
    assert len(_runs_of(idle_deployment)) == before


def test_worker_says_when_the_api_does_not_answer(env, tmp_path) -> None:
    """A worker started against a wrong URL keeps trying (a server may come up later) but says so
    in one line first. Before: Prefect's retries and tracebacks, and nothing naming the URL."""
    url = _dead_url()
    log = tmp_path / "worker.err"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([*FLEETLOOP, "worker"], env=env | {"PREFECT_API_URL": url}, stdout=subprocess.DEVNULL,
                                stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + 60
        while "Prefect worker for work pool" not in log.read_text():  # printed just before `prefect worker` starts
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        said = " ".join(log.read_text().split())
        assert f"The Prefect API at {url} does not answer (ConnectError" in said, said
        assert "the worker keeps trying" in said
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
        _stop(proc)
        for p in psutil.process_iter():  # whatever it started, by pid
            with contextlib.suppress(psutil.Error):
                if p.environ().get(MARK) == env[MARK]:
                    p.kill()


# --- odd timeouts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", ["0", "-5", "nan"])
def test_run_wait_refuses_a_timeout_that_is_not_positive_before_making_a_run(api_env, idle_deployment, timeout) -> None:
    """Before: the run was made, then given up on at once (exit 3, `Still Scheduled after -5 s`),
    left behind for a worker to pick up later."""
    before = len(_runs_of(idle_deployment))
    r = _fleetloop(["run", "monitor-drift", "--wait", "--timeout", timeout, "--json"], api_env)
    doc = _one_json_failure(r, 2)
    assert doc["error"].startswith("usage: Invalid value for --timeout: must be a number of seconds > 0"), doc
    assert len(_runs_of(idle_deployment)) == before


def test_run_wait_timeout_with_json_names_the_run_that_goes_on(api_env, idle_deployment) -> None:
    """Before: `{"ok": false, "error": "flow run x: Still Scheduled after 2 s"}`: no id, no URL, so
    a script could not follow (or cancel) the run it had just made."""
    r = _fleetloop(["run", "monitor-drift", "--wait", "--timeout", "2", "--no-worker-after", "3600", "--json"], api_env)
    doc = _one_json_failure(r, 3)
    run = _runs_of(idle_deployment)
    assert doc["id"] in {str(x.id) for x in run}, doc
    assert doc["url"].endswith(f"/runs/flow-run/{doc['id']}") and doc["state"] in ("Scheduled", "Late", "Pending")
    assert "after 2 s; it goes on" in doc["error"] and doc["url"] in doc["error"]
    assert "it goes on" in r.stderr


# --- interrupted or pulled from under the wait ------------------------------------------------------


def _wait_then(api_env, deployment: str, extra: list[str], meanwhile, timeout: float):
    """`fleetloop run monitor-drift --wait --json` (with ``extra``): once its run exists,
    ``meanwhile(proc)``, then its end within ``timeout`` s. Returns the run and what the command
    did. SIGINT is at its default in it, as in a terminal, whatever this test process has: a
    process started with SIGINT ignored (a background job's, as a CI rehearsal started with `&`
    runs) keeps it ignored, and a Ctrl-C would never arrive (it timed out so once)."""
    before = len(_runs_of(deployment))
    proc = subprocess.Popen([*FLEETLOOP, "run", "monitor-drift", "--wait", *extra, "--no-worker-after", "3600", "--json"],
                            env=api_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        run = _wait_for_new_run(deployment, before, proc)
        meanwhile(proc)
        out, err = proc.communicate(timeout=timeout)
    finally:
        _stop(proc)
    return run, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_during_run_wait_stops_waiting_not_the_run(api_env, idle_deployment) -> None:
    """Before: `Aborted!`, exit 1 (as if the run had failed) and nothing on stdout for --json."""

    def ctrl_c(proc: subprocess.Popen) -> None:
        time.sleep(1.5)  # in the waiting loop
        proc.send_signal(signal.SIGINT)

    run, r = _wait_then(api_env, idle_deployment, [], ctrl_c, 30)
    doc = _one_json_failure(r, 130)
    assert doc["id"] == str(run.id) and "stopped waiting (Ctrl-C); the run goes on" in doc["error"], doc
    still = [x for x in _runs_of(idle_deployment) if x.id == run.id]
    assert still and still[0].state is not None and still[0].state.is_scheduled(), still  # not cancelled


def test_run_wait_when_the_deployment_is_deleted_meanwhile(api_env, idle_deployment) -> None:
    """Deleting a deployment deletes its scheduled runs. Before: `ObjectNotFound: None`."""
    from prefect.client.orchestration import get_client

    def delete(_proc: subprocess.Popen) -> None:
        with get_client(sync_client=True) as client:
            client.delete_deployment(uuid.UUID(idle_deployment))

    run, r = _wait_then(api_env, idle_deployment, ["--timeout", "120"], delete, 60)
    doc = _one_json_failure(r, 1)
    assert doc["id"] == str(run.id) and "deleted before it finished" in doc["error"], doc
    assert "ObjectNotFound" not in r.stderr


class _Outage:
    """A loopback TCP relay to the Prefect API: ``down()`` closes it and every connection through
    it (the server vanishes for the client: refused, or cut mid-keep-alive), ``up()`` opens it
    again on the same port. The Prefect server behind it stays as it is."""

    def __init__(self, api_url: str) -> None:
        from urllib.parse import urlsplit

        target = urlsplit(api_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 80)
        self.path = target.path
        self.port = 0
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def up(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for c in self.conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self.conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def outage(api_env):
    relay = _Outage(api_env["PREFECT_API_URL"])
    yield relay
    relay.down()


def test_run_wait_when_the_api_goes_down_for_good_says_so_and_names_the_run(api_env, idle_deployment, outage) -> None:
    """Before: a minute of silence (Prefect's client retrying), then `ConnectError: All connection
    attempts failed`, exit 1: the code of a run that failed, without the run's id or URL."""
    run, r = _wait_then(api_env | {"PREFECT_API_URL": outage.url}, idle_deployment, ["--timeout", "10"],
                        lambda _proc: (time.sleep(1.5), outage.down()), 60)
    doc = _one_json_failure(r, 3)
    assert doc["id"] == str(run.id) and doc["url"].endswith(f"/runs/flow-run/{run.id}"), doc
    assert "the Prefect API has not answered for" in doc["error"] and "the run may go on" in doc["error"], doc
    said = " ".join(r.stderr.split())
    assert "The Prefect API stopped answering" in said and "still trying for 60 s" in said, said
    assert "ConnectError" in doc["error"] or "ReadError" in doc["error"] or "RemoteProtocolError" in doc["error"], doc


def test_run_wait_when_the_api_comes_back_goes_on_waiting(api_env, idle_deployment, outage) -> None:
    """A server restart is a few seconds without an API: the wait says so and goes on."""

    def restart(_proc: subprocess.Popen) -> None:
        time.sleep(1.5)
        outage.down()
        time.sleep(5)
        outage.up()

    run, r = _wait_then(api_env | {"PREFECT_API_URL": outage.url}, idle_deployment, ["--timeout", "14"], restart, 60)
    doc = _one_json_failure(r, 3)
    assert doc["id"] == str(run.id) and "Still Scheduled after 14 s; it goes on" in doc["error"], doc
    said = " ".join(r.stderr.split())
    assert "The Prefect API stopped answering" in said and "The Prefect API answers again; still waiting." in said, said


# --- deploy ------------------------------------------------------------------------------------------


def test_deploy_refuses_a_work_pool_of_another_type(api_env) -> None:
    """Before: 8 deployments registered in a kubernetes pool (exit 0), which `fleetloop worker`, a
    process worker, then polled with a type-mismatch warning."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = "misuse-kubernetes"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="kubernetes"))
    r = _fleetloop(["deploy", "--json"], api_env | {"FLEETLOOP_PREFECT__WORK_POOL": pool})
    doc = _one_json_failure(r, 2)
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert f"work pool '{pool}' is a kubernetes pool" in r.stderr and "FLEETLOOP_PREFECT__WORK_POOL" in r.stderr
    assert doc["error"].startswith(f"Not deployed: work pool '{pool}' is a kubernetes pool"), doc
    with get_client(sync_client=True) as client:
        assert [d.name for d in client.read_deployments() if d.work_pool_name == pool] == []


@pytest.mark.parametrize(("variable", "cron"), [("FLEETLOOP_PREFECT__WEEKLY_CRON", "0 3 * * 8"),
                                                ("FLEETLOOP_PREFECT__LABEL_SYNC_CRON", "*/15 * * * * R")])
def test_deploy_with_a_cron_setting_that_is_no_schedule_names_it_and_registers_nothing(api_env, variable, cron) -> None:
    """Before: `ValueError: Invalid cron string: "0 3 * * 8"`, not naming the setting, exit 1 (and
    so did every `fleetloop run`)."""
    from prefect.client.orchestration import get_client

    pool = f"misuse-cron-{variable[-14:].lower().strip('_')}"
    r = _fleetloop(["deploy", "--json"], api_env | {"FLEETLOOP_PREFECT__WORK_POOL": pool, variable: cron})
    doc = _one_json_failure(r, 2)
    assert doc["error"].startswith(f"Not deployed: {variable}: "), doc
    assert cron in doc["error"] and "five fields" in doc["error"], doc
    with get_client(sync_client=True) as client:
        assert [d.name for d in client.read_deployments() if d.work_pool_name == pool] == []
    r = _fleetloop(["run", "mine", "--json"], api_env | {variable: cron})  # run finds its flow through the specs
    assert _one_json_failure(r, 2)["error"].startswith(f"Invalid settings: {variable}: "), r.stdout


def test_worker_refuses_a_work_pool_of_another_type(api_env) -> None:
    """Before: `fleetloop worker` started a process worker on a kubernetes pool, which Prefect
    allows with a type-mismatch warning, and polled for runs it was never meant to run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = "misuse-kubernetes-worker"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="kubernetes"))
    proc = subprocess.Popen([*FLEETLOOP, "worker"], env=api_env | {"FLEETLOOP_PREFECT__WORK_POOL": pool},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:  # a worker that started after all: stop it and what it started
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            _stop(proc)
            for p in psutil.process_iter():
                with contextlib.suppress(psutil.Error):
                    if p.environ().get(MARK) == api_env[MARK]:
                        p.kill()
    assert proc.returncode == 2, (proc.returncode, out, err)
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert f"No worker started: work pool '{pool}' is a kubernetes pool" in " ".join(err.split()), err
    with get_client(sync_client=True) as client:
        assert client.read_workers_for_work_pool(pool) == []  # nothing ever polled it


def test_deploy_twice_updates_in_place(api_env) -> None:
    """Twice: the same deployment ids, one schedule each, one work pool (a regression guard: this
    already held)."""
    from prefect.client.orchestration import get_client

    pool = "misuse-twice"
    env = api_env | {"FLEETLOOP_PREFECT__WORK_POOL": pool}

    def deployed() -> dict[str, tuple[str, int]]:
        with get_client(sync_client=True) as client:
            flows = {f.id: f.name for f in client.read_flows()}
            return {f"{flows[d.flow_id]}/{d.name}": (str(d.id), len(d.schedules))
                    for d in client.read_deployments() if d.work_pool_name == pool}

    for _ in range(2):
        r = _fleetloop(["deploy", *(["--json"] if _ else [])], env)
        assert r.returncode == 0, r.stderr
        if _ == 0:
            first = deployed()
    second = deployed()
    assert len(second) == 8 and second == first
    doc = json.loads(r.stdout)  # --json: what was registered, for a script (before: no such option)
    assert doc["ok"] is True and doc["work_pool"] == pool and doc["api_url"] == env["PREFECT_API_URL"], doc
    assert doc["deployments"] == {name: dep_id for name, (dep_id, _n) in second.items()}, doc
    assert second["weekly-cycle/weekly"][1] == 1 and second["mine/on-demand"][1] == 0


# --- --param --------------------------------------------------------------------------------------


def test_run_param_given_twice_is_refused_before_making_a_run(api_env, idle_deployment) -> None:
    """Before: the last one won without a word (`--param week=2026-W01 --param week=2026-W02`
    ran week 2026-W02)."""
    before = len(_runs_of(idle_deployment))
    r = _fleetloop(["run", "monitor-drift", "--param", "week=2026-W01", "--param", "week=2026-W02", "--json"], api_env)
    doc = _one_json_failure(r, 2)
    assert doc["error"] == "usage: Invalid value for --param: week is given twice", doc
    assert len(_runs_of(idle_deployment)) == before


def test_run_param_that_reads_as_a_number_is_sent_as_text_where_the_flow_takes_text(api_env, idle_deployment) -> None:
    """`--param vehicle=42`: JSON reads 42, the mine flow takes a vehicle id (a string). Before:
    refused, `vehicle: Input should be a valid string`; numbers stay numbers where the flow takes one."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        dep = str(client.create_deployment(flow_id=client.create_flow_from_name("mine"), name="on-demand",
                                           work_pool_name=IDLE, entrypoint="mine.py:mine"))
    r = _fleetloop(["run", "mine", "--param", "vehicle=42", "--param", "budget=7", "--json"], api_env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    run = [x for x in _runs_of(dep) if str(x.id) == doc["id"]]
    assert run and run[0].parameters == {"vehicle": "42", "budget": 7}, run
    r = _fleetloop(["run", "mine", "--param", "budget=1.5", "--json"], api_env)  # still refused: not an integer
    assert _one_json_failure(r, 2)["error"].endswith("budget: Input should be a valid integer, got a number with a "
                                                    "fractional part"), r.stdout
    r = _fleetloop(["run", "monitor-drift", "--param", "week=2026", "--json"], api_env)  # the text's own problem
    assert "week: String should match pattern" in _one_json_failure(r, 2)["error"], r.stdout
