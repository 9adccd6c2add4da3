"""`fleetloop services up|status|down` with a real `prefect server start` on a free loopback port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from fleetloop.local.services import ensure_prefect_env, prefect_api_url
from fleetloop.settings import PrefectSettings, Settings

pytestmark = pytest.mark.services


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CLI:
    """Runs the real `fleetloop` command line in a subprocess with its own FLEETLOOP_HOME.
    Only the Prefect service is started (Label Studio has its own tests)."""

    def __init__(self, home: Path, port: int) -> None:
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("FLEETLOOP_", "PREFECT_"))
        } | {"FLEETLOOP_HOME": str(home), "FLEETLOOP_PREFECT__PORT": str(port)}
        self.cwd = home

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from fleetloop.cli import app; app()", *args],
            env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=timeout,
        )

    def status(self) -> tuple[int, dict]:
        r = self("services", "status", "-s", "prefect", "--json")
        return r.returncode, json.loads(r.stdout)


@pytest.fixture
def cli(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    port = _free_port()
    run = CLI(home, port)
    yield run
    run("services", "down")  # never leave a server behind, even when a test fails


def test_up_status_idempotent_up_and_down(cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    home, port = Path(cli.env["FLEETLOOP_HOME"]), int(cli.env["FLEETLOOP_PREFECT__PORT"])
    url = f"http://127.0.0.1:{port}"

    code, before = cli.status()
    assert code == 1 and before["prefect"]["healthy"] is False and before["prefect"]["running"] is False

    t0 = time.monotonic()
    r = cli("services", "up", "-s", "prefect", "--json")
    assert r.returncode == 0, r.stderr
    started = json.loads(r.stdout)["prefect"]
    assert started["healthy"] and started["url"] == url
    print(f"services up (fresh database): {time.monotonic() - t0:.1f}s")
    pid = started["pid"]
    # the server outlived the command that started it, and its state is under <home>/services/prefect
    assert psutil.pid_exists(pid)
    assert (home / "services" / "prefect" / "prefect.db").exists()
    state_file = home / "services" / "prefect" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["pid"] == pid and state["url"] == url and state_file.stat().st_mode & 0o777 == 0o600
    assert os.getpgid(pid) == pid  # its own process group: stopped as one
    # a whitelisted environment: nothing of the caller's leaks into the server
    assert "FLEETLOOP_HOME" not in psutil.Process(pid).environ()

    code, st = cli.status()
    assert code == 0 and st["prefect"]["healthy"] and st["prefect"]["pid"] == pid
    assert httpx.get(f"{url}/api/health", timeout=5).json() is True
    assert httpx.get(url, timeout=5).status_code == 200  # the UI is served too

    t0 = time.monotonic()
    again = cli("services", "up", "-s", "prefect", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["prefect"]["pid"] == pid  # up twice = one server
    assert time.monotonic() - t0 < 10

    # fleetloop code finds the running server without PREFECT_API_URL in the environment
    settings = Settings(home=home, prefect=PrefectSettings(port=port))
    assert prefect_api_url(settings) == f"{url}/api"
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert ensure_prefect_env(settings) == f"{url}/api"
    assert os.environ["PREFECT_API_URL"] == f"{url}/api"
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere:1/api")  # the user's own setting wins
    assert ensure_prefect_env(settings) == "http://elsewhere:1/api"
    assert prefect_api_url(Settings(home=home, prefect=PrefectSettings(api_url="http://x:2/api"))) == "http://x:2/api"

    # ... and a flow run in another process lands on it
    flow_code = textwrap.dedent(
        """
        from fleetloop.local.services import ensure_prefect_env
        ensure_prefect_env()
        from prefect import flow

        @flow(name="services-smoke")
        def smoke() -> int:
            return 42

        assert smoke() == 42
        """
    )
    r = subprocess.run([sys.executable, "-c", flow_code], env=cli.env, cwd=cli.cwd,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = httpx.post(f"{url}/api/flow_runs/filter", json={}, timeout=10).json()
    assert [fr["state_type"] for fr in runs] == ["COMPLETED"]

    # a server that died (crash, OOM kill) is noticed and replaced by the next `up`
    psutil.Process(pid).kill()
    psutil.Process(pid).wait(10) if psutil.pid_exists(pid) else None
    code, st = cli.status()
    assert code == 1 and st["prefect"]["running"] is False
    assert prefect_api_url(settings) is None
    r = cli("services", "up", "-s", "prefect", "--json")
    assert r.returncode == 0, r.stderr
    pid = json.loads(r.stdout)["prefect"]["pid"]
    assert cli.status()[0] == 0

    t0 = time.monotonic()
    r = cli("services", "down")
    assert r.returncode == 0 and "prefect" in r.stdout
    assert time.monotonic() - t0 < 20
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/api/health", timeout=2)
    code, after = cli.status()
    assert code == 1 and after["prefect"]["running"] is False
    assert prefect_api_url(settings) is None
    assert "nothing was running" in cli("services", "down").stdout


def test_up_refuses_a_port_held_by_another_process(cli: CLI) -> None:
    port = int(cli.env["FLEETLOOP_PREFECT__PORT"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        r = cli("services", "up", "-s", "prefect")
    assert r.returncode == 1
    assert f"port {port}" in r.stderr and "FLEETLOOP_PREFECT__PORT" in r.stderr
    assert "Traceback" not in r.stderr
    code, st = cli.status()
    assert code == 1 and st["prefect"]["running"] is False


def test_external_prefect_is_reported_not_started(cli: CLI) -> None:
    port = _free_port()  # nothing listens: an external server that is down
    cli.env["FLEETLOOP_PREFECT__API_URL"] = f"http://127.0.0.1:{port}/api"
    r = cli("services", "up", "-s", "prefect", "--json")
    assert r.returncode == 1, r.stderr
    st = json.loads(r.stdout)["prefect"]
    assert st["mode"] == "external" and st["url"] == f"http://127.0.0.1:{port}" and st["healthy"] is False
    assert st["pid"] is None
    assert not (Path(cli.env["FLEETLOOP_HOME"]) / "services" / "prefect").exists()


# ------------------------------------------------------------------ the process manager itself

# A process tree like a Prefect worker's: a child in the group and one in its own session (as
# Prefect starts flow runs), every one of them ignoring SIGTERM; the root records their pids.
TREE = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    a = subprocess.Popen([sys.executable, "-c", stubborn])
    b = subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True)
    open(sys.argv[1], "w").write(f"{a.pid} {b.pid}")
    time.sleep(600)
    """
)


def _spawn_tree(tmp_path: Path) -> tuple[int, list[int]]:
    from fleetloop.local.process import Launch, clean_env, spawn

    pids = tmp_path / "pids"
    proc = spawn(Launch([sys.executable, "-c", TREE, str(pids)], env=clean_env()), tmp_path / "tree.log")
    deadline = time.monotonic() + 20
    while not (pids.exists() and pids.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "tree.log").read_text()
        time.sleep(0.05)
    return proc.pid, [int(p) for p in pids.read_text().split()]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_stop_tree_reaches_every_descendant_and_escalates(tmp_path: Path) -> None:
    import signal

    from fleetloop.local.process import stop_tree

    root, descendants = _spawn_tree(tmp_path)
    assert os.getpgid(root) == root and os.getpgid(descendants[1]) != root  # one left the group
    t0 = time.monotonic()
    steps = ((signal.SIGTERM, 0.5), (signal.SIGINT, 1.0), (signal.SIGKILL, 2.0))
    assert stop_tree(root, create_time=psutil.Process(root).create_time(), steps=steps) is True
    assert time.monotonic() - t0 < 5
    assert not any(_alive(p) for p in [root, *descendants])
    assert stop_tree(root) is False  # already gone


def test_stop_tree_never_signals_a_reused_pid() -> None:
    from fleetloop.local.process import stop_tree

    me = psutil.Process()
    assert stop_tree(me.pid, create_time=me.create_time() - 3600) is False  # "our" pid, another start time
    assert me.is_running()


def test_supervise_returns_the_exit_code_and_stops_what_the_child_left(tmp_path: Path) -> None:
    """A child that exits on its own leaves a grandchild in its own session: supervise stops it."""
    pids = tmp_path / "pid"
    code = textwrap.dedent(
        f"""
        import subprocess, sys
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        open({str(pids)!r}, "w").write(str(p.pid))
        sys.exit(7)
        """
    )
    script = textwrap.dedent(
        f"""
        import sys
        from fleetloop.local.process import supervise
        sys.exit(supervise([sys.executable, "-c", {code!r}]))
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 7, r.stderr
    orphan = int(pids.read_text())
    deadline = time.monotonic() + 5
    while _alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(orphan)


class _FakeServer:
    """A LocalServer for ``python -m http.server``: the whole life cycle in a second."""

    def __init__(self, home: Path) -> None:
        from fleetloop.local.process import Launch, clean_env
        from fleetloop.local.server import LocalServer

        self.port = _free_port()
        self.settings = Settings(home=home)
        self.service = LocalServer(
            name="web",
            local_url=lambda s: f"http://127.0.0.1:{self.port}",
            launch=lambda s, d: Launch([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.port)],
                                       env=clean_env(), cwd=d),
            health_path="/",
            command_word="http.server",
            start_timeout_s=30,
        )


def test_local_server_up_is_idempotent_and_serialised(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    fake = _FakeServer(tmp_path)
    try:
        with ThreadPoolExecutor(4) as pool:  # four `up` at once: one server
            statuses = list(pool.map(lambda _: fake.service.start(fake.settings), range(4)))
        assert {s.pid for s in statuses} == {statuses[0].pid} and all(s.healthy for s in statuses)
        pid = statuses[0].pid
        assert pid is not None and os.getpgid(pid) == pid
        st = fake.service.status(fake.settings)
        assert st.running and st.healthy and st.pid == pid
        assert fake.service.stop(fake.settings) is True
        assert not _alive(pid)
        assert fake.service.stop(fake.settings) is False
        assert fake.service.status(fake.settings).running is False
    finally:
        fake.service.stop(fake.settings)


def test_a_recorded_pid_that_is_not_our_server_is_never_signalled(tmp_path: Path) -> None:
    """A stale state file whose pid now belongs to another process (here: this test)."""
    fake = _FakeServer(tmp_path)
    server = fake.service.process(fake.settings)
    me = psutil.Process()
    server.write_state({"name": "web", "url": f"http://127.0.0.1:{fake.port}", "pid": me.pid,
                        "create_time": me.create_time()})
    assert fake.service.status(fake.settings).running is False  # not an http.server command line
    assert fake.service.stop(fake.settings) is False
    assert me.is_running()
    assert server.read_state()["pid"] is None
