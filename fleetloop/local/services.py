"""Local services for the embedded default: start, stop and find them.

``fleetloop services up`` starts each registered :class:`Service` (the Prefect server with its
UI, then Label Studio) as a background process on 127.0.0.1, with its state and log under
``<home>/services/<name>/`` (see :mod:`fleetloop.local.server`). ``up`` is idempotent: a service
that is already running is left alone. Every fleetloop command finds the running Prefect server
through its state file (:func:`prefect_api_url`, :func:`ensure_prefect_env`), so no extra
environment variables are needed. A service the settings point at a deployed server (e.g.
``FLEETLOOP_PREFECT__API_URL``) is not started locally; ``status`` reports that server's health.

This module only orchestrates: :mod:`~fleetloop.local.prefect_server` and
:mod:`~fleetloop.local.label_studio` describe the servers, :mod:`~fleetloop.local.server` and
:mod:`~fleetloop.local.process` run them.
"""

from __future__ import annotations

import os
from pathlib import Path

from fleetloop.local.label_studio import LABEL_STUDIO
from fleetloop.local.prefect_server import PREFECT, api_url
from fleetloop.local.server import LocalServer, Service, ServiceError, ServiceStatus, services_home
from fleetloop.settings import Settings, get_settings

__all__ = [
    "PREFECT",
    "SERVICES",
    "LocalServer",
    "Service",
    "ServiceError",
    "ServiceStatus",
    "down",
    "ensure_prefect_env",
    "get_service",
    "prefect_api_url",
    "register",
    "services_dir",
    "status",
    "up",
]

#: The services ``fleetloop services`` manages, started in this order and stopped in reverse.
SERVICES: list[Service] = [PREFECT, LABEL_STUDIO]


def register(service: Service) -> None:
    """Add (or replace, by name) a service in :data:`SERVICES`."""
    for i, s in enumerate(SERVICES):
        if s.name == service.name:
            SERVICES[i] = service
            return
    SERVICES.append(service)


def get_service(name: str) -> Service:
    for s in SERVICES:
        if s.name == name:
            return s
    raise ServiceError(f"no service {name!r}; known: {', '.join(s.name for s in SERVICES)}")


def _select(names: list[str] | None) -> list[Service]:
    return [get_service(n) for n in names] if names else list(SERVICES)


def up(settings: Settings | None = None, names: list[str] | None = None) -> list[ServiceStatus]:
    """Start the services (all when ``names`` is None) unless running; their statuses."""
    settings = settings or get_settings()
    return [s.start(settings) for s in _select(names)]


def down(settings: Settings | None = None, names: list[str] | None = None) -> list[str]:
    """Stop the local services (each with everything it started); the names of those that ran."""
    settings = settings or get_settings()
    return [s.name for s in reversed(_select(names)) if s.stop(settings)]


def status(settings: Settings | None = None, names: list[str] | None = None) -> list[ServiceStatus]:
    """Each service's URL, health and process."""
    settings = settings or get_settings()
    return [s.status(settings) for s in _select(names)]


def services_dir(settings: Settings) -> Path:
    """``<home>/services`` (one directory per service)."""
    return services_home(settings.home)


def prefect_api_url(settings: Settings | None = None) -> str | None:
    """``settings.prefect.api_url``, else the running local server's API URL, else None
    (Prefect then falls back to its ephemeral in-process API). No network call."""
    return api_url(settings or get_settings())


def ensure_prefect_env(settings: Settings | None = None) -> str | None:
    """Point Prefect at fleetloop's server: set ``PREFECT_API_URL`` (unless the user set it) to
    :func:`prefect_api_url`, and turn off Prefect's analytics unless set. Call it before
    ``import prefect``: Prefect reads its settings at import. Returns the API URL in effect."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    url = prefect_api_url(settings)
    if url:
        os.environ["PREFECT_API_URL"] = url
    return url
