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
    state = json.loads((home / "services" / "state.json").read_text())
    assert state["services"]["prefect"]["pid"] == pid and state["services"]["prefect"]["url"] == url

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
