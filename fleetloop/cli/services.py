"""``fleetloop services up|down|status``: the local servers of the embedded default."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from fleetloop.cli.output import JsonOpt, fail, print_json

if TYPE_CHECKING:
    from fleetloop.local.server import ServiceStatus

app = typer.Typer(
    help="Start, stop and inspect the local services (Prefect server + UI, Label Studio) on 127.0.0.1.",
    no_args_is_help=True,
)

ServiceOpt = Annotated[
    list[str] | None,
    typer.Option("--service", "-s", help="Only this service (repeatable). Default: all."),
]


def _login(statuses: list[ServiceStatus]) -> str | None:
    """``user / password`` of the local Label Studio (generated at its first start), if it runs."""
    from fleetloop.local.label_studio import read_state
    from fleetloop.settings import get_settings

    if not any(s.name == "label-studio" and s.mode == "local" and s.running for s in statuses):
        return None
    state = read_state(get_settings().home)
    return f"{state.username} / {state.password}" if state else None


def _print(statuses: list[ServiceStatus], as_json: bool) -> None:
    """The table (or with ``as_json`` the document, ``ok`` when every service is healthy: the exit code)."""
    login = _login(statuses)
    if as_json:
        doc = {s.name: s.model_dump(exclude={"name"}) for s in statuses}
        if login and "label-studio" in doc:
            doc["label-studio"]["login"] = login
        print_json(doc, ok=all(s.healthy for s in statuses))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    urls = [s.url if s.mode == "local" else f"{s.url} (external)" for s in statuses]
    table.add_column("service", no_wrap=True)
    table.add_column("url", no_wrap=True, min_width=max(map(len, urls), default=3))  # whole, to copy at any width
    table.add_column("health")
    table.add_column("pid")
    table.add_column("log / note", overflow="fold")
    for s, url in zip(statuses, urls, strict=True):
        health = "[green]healthy[/]" if s.healthy else ("[yellow]unhealthy[/]" if s.running or s.mode == "external" else "[dim]stopped[/]")
        note = s.log or ""
        if s.detail:
            note = f"{note}  {s.detail}".strip()
        table.add_row(s.name, url, health, str(s.pid or ""), note)
    console = Console()
    console.print(table)
    if login:
        console.print(f"Label Studio login: {login}", highlight=False, soft_wrap=True)


@app.command()
def up(service: ServiceOpt = None, as_json: JsonOpt = False) -> None:
    """Start the services unless they are running (idempotent) and wait until they are healthy.

    A service configured to use a deployed server (FLEETLOOP_PREFECT__API_URL, ...) is not
    started, only checked. Exit code 1 when any service is not healthy."""
    from fleetloop.cli.output import err
    from fleetloop.local.services import ServiceError
    from fleetloop.local.services import up as services_up

    try:
        with err.status("Starting the local services (the first start installs Label Studio into its own venv: "
                        "a few minutes)"):
            statuses = services_up(names=service)
    except ServiceError as exc:
        raise fail(exc, 1, as_json=as_json) from None
    _print(statuses, as_json)
    if not all(s.healthy for s in statuses):  # only an external server can be unhealthy here
        raise typer.Exit(1)


@app.command()
def down(service: ServiceOpt = None) -> None:
    """Stop the local services and everything they started (SIGTERM, then SIGINT, then SIGKILL)."""
    from rich.console import Console

    from fleetloop.local.services import ServiceError
    from fleetloop.local.services import down as services_down

    try:
        stopped = services_down(names=service)
    except ServiceError as exc:
        raise fail(exc, 1) from None
    Console().print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(service: ServiceOpt = None, as_json: JsonOpt = False) -> None:
    """Each service's URL and health. Exit code 1 when any of them is not healthy."""
    from fleetloop.local.services import ServiceError
    from fleetloop.local.services import status as services_status

    try:
        statuses = services_status(names=service)
    except ServiceError as exc:
        raise fail(exc, 1, as_json=as_json) from None
    _print(statuses, as_json)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)

