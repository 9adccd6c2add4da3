"""The local Prefect server (API + UI) of the embedded default, and where fleetloop finds it.

``prefect server start`` on 127.0.0.1 with its SQLite database under
``<home>/services/prefect/`` and analytics off. Settings that name a deployed server
(``FLEETLOOP_PREFECT__API_URL``) win: then nothing is started, and the status is that server's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fleetloop.local.process import Launch, clean_env
from fleetloop.local.server import LocalServer
from fleetloop.settings import Settings

__all__ = ["PREFECT", "api_url"]


def _local_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.prefect.port}"


def _external_url(settings: Settings) -> str | None:
    api = settings.prefect.api_url
    return api.rstrip("/").removesuffix("/api") if api else None


def _launch(settings: Settings, directory: Path) -> Launch:
    url = _local_url(settings)
    argv = [sys.executable, "-m", "prefect", "server", "start",
            "--host", "127.0.0.1", "--port", str(settings.prefect.port), "--analytics-off"]
    env = clean_env(
        {
            "PREFECT_HOME": str(directory),  # SQLite database, profiles, logs
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_URL": f"{url}/api",
        },
        inherit_prefixes=("PREFECT_SERVER_", "PREFECT_UI_", "PREFECT_LOGGING_"),  # the user's server tuning
    )
    return Launch(argv=argv, env=env, cwd=directory)


PREFECT = LocalServer(
    name="prefect",
    local_url=_local_url,
    launch=_launch,
    external_url=_external_url,
    health_path="/api/health",
    command_word="prefect",
    start_timeout_s=120.0,
)


def api_url(settings: Settings) -> str | None:
    """``settings.prefect.api_url``, else the running local server's API URL, else None
    (Prefect then falls back to its ephemeral in-process API). No network call."""
    if settings.prefect.api_url:
        return settings.prefect.api_url
    url = PREFECT.running_url(settings)
    return f"{url}/api" if url else None
