"""The production profile's settings, read from ``infra/docker-compose.yaml`` (one source).

The test tier starts the same services as the compose file, without Docker, on loopback. It takes
each service's ``environment`` (and the Prefect server's ``command``) from the compose file, fills
in the ``${VAR}`` references with the test's values the way compose does (``${VAR:-default}``,
``${VAR:?message}``, ``$$``), and maps the compose network's addresses (``prefect-db:5432``,
``http://label-studio:8080``, ...) to the loopback ports the test chose. A setting the profile
needs that the compose file lost fails here (and in ``tests/unit/test_compose_profile.py``),
so the file and the profile cannot drift apart silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "infra" / "docker-compose.yaml"

#: what each service of the profile reads from the compose file: if one of these disappears from
#: it, the profile would silently run differently from a deployment, so loading fails instead
REQUIRED: dict[str, tuple[str, ...]] = {
    "prefect-db": ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"),
    "label-studio-db": ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"),
    "prefect-server": ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_ANALYTICS_ENABLED"),
    "label-studio": (
        "DJANGO_DB", "POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "POSTGRE_HOST", "POSTGRE_PORT",
        "SECRET_KEY", "LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN", "SENTRY_DSN", "LATEST_VERSION_CHECK", "COLLECT_ANALYTICS",
    ),
    "worker": (
        "PREFECT_API_URL", "FLEETLOOP_PREFECT__API_URL", "FLEETLOOP_PREFECT__WORK_POOL",
        "FLEETLOOP_STORAGE__BACKEND", "FLEETLOOP_STORAGE__S3__ENDPOINT_URL", "FLEETLOOP_STORAGE__S3__BUCKET",
        "FLEETLOOP_STORAGE__S3__ACCESS_KEY_ID", "FLEETLOOP_STORAGE__S3__SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
        "FLEETLOOP_LABEL_STUDIO__URL", "FLEETLOOP_LABEL_STUDIO__TOKEN",
    ),
}

_REF = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?|-|\?)(?P<arg>[^}]*))?\}")


class ComposeError(ValueError):
    """The compose file lacks something the profile needs, or a required variable is unset."""


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's substitution: ``${X}``, ``${X:-default}`` / ``${X-default}``, ``${X:?error}`` /
    ``${X?error}``, and ``$$`` for a literal ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        val = variables.get(name)
        unset = val is None or (op is not None and op.startswith(":") and val == "")
        if op in (":-", "-") and unset:
            return arg
        if op in (":?", "?") and unset:
            raise ComposeError(f"${{{name}}} is required by the compose file: {arg}")
        return val or ""

    return _REF.sub(sub, value)


@dataclass(frozen=True)
class Address:
    """Where a compose service's container port is reached from the test: loopback, a port."""

    host: str
    port: int


def localize(env: Mapping[str, str], addresses: Mapping[tuple[str, int], Address]) -> dict[str, str]:
    """Compose network names to loopback: ``<service>:<port>`` in any value becomes the
    address the test gave it; Label Studio's ``POSTGRE_HOST`` / ``POSTGRE_PORT`` pair (a bare host
    name and port) likewise."""
    out = dict(env)
    for (service, container_port), addr in addresses.items():
        for k, v in out.items():
            out[k] = v.replace(f"{service}:{container_port}", f"{addr.host}:{addr.port}")
    host, port = out.get("POSTGRE_HOST", ""), out.get("POSTGRE_PORT", "")
    if port.isdigit() and (host, int(port)) in addresses:
        addr = addresses[(host, int(port))]
        out["POSTGRE_HOST"], out["POSTGRE_PORT"] = addr.host, str(addr.port)
    return out


def load(path: Path = COMPOSE_FILE) -> dict:
    return yaml.safe_load(path.read_text())  # resolves the x-fleetloop-env anchor and `<<:` merges


def service_env(
    service: str,
    variables: Mapping[str, str],
    addresses: Mapping[tuple[str, int], Address] | None = None,
    compose: dict | None = None,
) -> dict[str, str]:
    """The environment of ``service`` as the compose file sets it, with the test's variables and
    addresses. Raises :class:`ComposeError` when a setting in :data:`REQUIRED` is missing."""
    compose = compose if compose is not None else load()
    spec = (compose.get("services") or {}).get(service)
    if spec is None:
        raise ComposeError(f"service {service!r} is missing from the compose file")
    raw = spec.get("environment") or {}
    if isinstance(raw, list):  # the `- KEY=value` form
        raw = dict(item.split("=", 1) for item in raw)
    missing = [k for k in REQUIRED.get(service, ()) if k not in raw]
    if missing:
        raise ComposeError(f"the compose file's {service!r} service no longer sets {', '.join(missing)}, "
                           "which the production profile (tests/production) needs")
    env = {str(k): interpolate("" if v is None else str(v), variables) for k, v in raw.items()}
    return localize(env, addresses or {})


def prefect_server_argv(host: str, port: int, compose: dict | None = None) -> list[str]:
    """The Prefect server's ``command`` from the compose file, listening on ``host:port``."""
    compose = compose if compose is not None else load()
    command = list(compose["services"]["prefect-server"]["command"])
    if command[:3] != ["prefect", "server", "start"] or "--host" not in command or "--port" not in command:
        raise ComposeError(f"prefect-server's command is not `prefect server start --host H --port P ...`: {command}")
    command[command.index("--host") + 1] = host
    command[command.index("--port") + 1] = str(port)
    return command[1:]  # without the program: the caller runs `python -m prefect`


def image_tag(service: str, compose: dict | None = None) -> str:
    """The tag of a service's image (``3.8.8-python3.11`` of ``prefecthq/prefect:3.8.8-python3.11``)."""
    compose = compose if compose is not None else load()
    image = str(compose["services"][service]["image"])
    return image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else "latest"
