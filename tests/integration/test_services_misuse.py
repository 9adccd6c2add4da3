"""`fleetloop services` misused: a home copied while its services run (two homes, one state),
and a hand-written state file naming a process fleetloop did not start. fleetloop must never
signal a process it did not start, nor report another home's server as its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.test_services import CLI, _alive, _free_port


@pytest.mark.services
def test_a_copied_home_never_claims_or_stops_the_original_homes_server(tmp_path: Path) -> None:
    """`cp -r` of a home while its Prefect server runs: the copy's state file names the
    original's process (right pid, start time and command). In the copy, status says stopped,
    `down` stops nothing, `up` on the same port fails naming the port; the original is untouched."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    port = _free_port()
    cli_a = CLI(a, port)
    try:
        r = cli_a("services", "up", "-s", "prefect", "--json")
        assert r.returncode == 0, r.stderr
        pid = json.loads(r.stdout)["prefect"]["pid"]
        shutil.copytree(a, b, ignore=shutil.ignore_patterns("*.sqlite*", "*.log"))
        cli_b = CLI(b, port)
        code, doc = cli_b.status()
        assert code == 1 and doc["ok"] is False and doc["prefect"]["running"] is False and doc["prefect"]["pid"] is None
        r = cli_b("services", "down", "-s", "prefect")
        assert r.returncode == 0 and "nothing was running" in r.stdout, r.stdout + r.stderr
        assert _alive(pid)
        r = cli_b("services", "up", "-s", "prefect", "--json")
        assert r.returncode == 1 and f"port {port}" in json.loads(r.stdout)["error"], r.stdout
        assert _alive(pid)
        code, doc = cli_a.status()
        assert code == 0 and doc["prefect"]["pid"] == pid
    finally:
        cli_a("services", "down")
    assert not _alive(pid)


def test_a_hand_written_pid_of_a_process_fleetloop_did_not_start_is_never_signalled(tmp_path: Path) -> None:
    """A state file (no start time: hand-written, or from before start times were recorded) naming
    a process that has the service's command word and leads its own process group, as a
    `prefect server start` typed in another terminal does."""
    from fleetloop.local.server import ServerProcess

    other = tmp_path / "elsewhere"
    other.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "prefect"], cwd=other,
                            start_new_session=True)
    try:
        assert os.getpgid(proc.pid) == proc.pid
        server = ServerProcess("prefect", tmp_path / "home" / "services" / "prefect", command_word="prefect")
        server.write_state({"name": "prefect", "url": "http://127.0.0.1:1", "pid": proc.pid})
        assert server.running(server.read_state()) is False
        with server.lock():
            assert server.stop() is False
        time.sleep(0.2)
        assert proc.poll() is None and psutil.Process(proc.pid).is_running()
        assert server.read_state()["pid"] is None  # forgotten, not signalled
    finally:
        proc.kill()
        proc.wait()


def test_a_server_recorded_by_an_earlier_fleetloop_can_still_be_stopped(tmp_path: Path) -> None:
    """A state file written before servers recorded their directory (pid, start time, command;
    the server running wherever it was started from): after an upgrade, `services down` must
    still recognise and stop it, or its port stays taken with no command to free it."""
    from fleetloop.local import process
    from fleetloop.local.server import ServerProcess

    other = tmp_path / "where-it-was-started"
    other.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "prefect"], cwd=other,
                            start_new_session=True)
    try:
        server = ServerProcess("prefect", tmp_path / "home" / "services" / "prefect", command_word="prefect")
        server.write_state({"name": "prefect", "url": "http://127.0.0.1:1", "pid": proc.pid,
                            "create_time": process.start_time(proc.pid)})
        assert server.running(server.read_state()) is True
        with server.lock():
            assert server.stop() is True
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
