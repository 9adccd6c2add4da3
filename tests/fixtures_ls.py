"""A real Label Studio server for tests: its own venv, loopback, a fresh data dir.

Use with ``pytest_plugins = ["tests.fixtures_ls"]``. Installs Label Studio into
``<repo>/.fleetloop/services/label-studio/venv`` unless it is there already (~60 s once;
``FLEETLOOP_TEST_LS_VENV`` picks another venv), then starts it on a free port (~25 s first start).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from fleetloop.local import label_studio as server

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ls_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ls-home")


@pytest.fixture(scope="session")
def ls_server(ls_home):
    venv = Path(os.environ.get("FLEETLOOP_TEST_LS_VENV") or server.default_venv(REPO / ".fleetloop"))
    server.install(REPO / ".fleetloop", venv=venv)
    stray = os.environ.get("USERNAME")
    os.environ["USERNAME"] = "stray-shell-user"  # Label Studio would read it as its admin user
    try:
        state = server.start(ls_home, port=free_port(), venv=venv, install_if_missing=False)
    finally:
        os.environ.pop("USERNAME") if stray is None else os.environ.__setitem__("USERNAME", stray)
    yield state
    server.stop(ls_home)


@pytest.fixture(scope="session")
def client(ls_server):
    """A Label Studio API client for the server (one for the session)."""
    from fleetloop.label.client import LabelStudioClient

    with LabelStudioClient(ls_server.url, ls_server.token) as c:
        yield c


@pytest.fixture
def ls_settings(tmp_path, monkeypatch, ls_server, ls_home):
    """fleetloop's settings for a test against the Label Studio server: a fresh home with a local
    store, the server's URL, token and document root (read from the environment, as the CLI does)."""
    from fleetloop.settings import get_settings

    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__URL", ls_server.url)
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__TOKEN", ls_server.token)
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__DOCUMENT_ROOT", str(ls_home))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
