"""``fleetloop deploy``, ``fleetloop worker`` and ``fleetloop run``: the Prefect side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)

#: flow name -> its deployment name (see fleetloop.flows.deployments)
DEPLOYMENTS = {
    "weekly-cycle": "weekly",
    "ingest-logs": "on-demand",
    "mine": "on-demand",
    "monitor-drift": "daily",
    "label-push": "on-demand",
    "label-sync": "poll",
}


def _prefect_env():
    from fleetloop.local.services import ensure_prefect_env
    from fleetloop.settings import get_settings

    settings = get_settings()
    url = ensure_prefect_env(settings)
    if not url:
        err.print("[red]No Prefect API:[/] start the local one with `fleetloop services up`, "
                  "or set FLEETLOOP_PREFECT__API_URL / PREFECT_API_URL.")
        raise typer.Exit(2)
    return settings, url


def parse_params(pairs: list[str]) -> dict:
    """``key=value`` pairs; values are JSON when they parse as JSON, else strings."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint="--param")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def register(app: typer.Typer) -> None:
    @app.command()
    def deploy(
        serve: Annotated[bool, typer.Option("--serve", help="Register and run the deployments in this process.")] = False,
    ) -> None:
        """Register every flow's deployment (weekly cycle on its cron schedule, each step on demand)."""
        from fleetloop.flows import deployments

        settings, url = _prefect_env()
        if serve:
            console.print(f"Serving fleetloop deployments against {url} (Ctrl-C to stop)")
            deployments.serve(settings)
            return
        ids = deployments.deploy_to_pool(settings)
        console.print(f"Registered {len(ids)} deployments in work pool [bold]{settings.prefect.work_pool}[/] at {url}.")
        console.print("Run them with: [bold]fleetloop worker[/]")

    @app.command()
    def worker() -> None:
        """Start a Prefect process worker for fleetloop's work pool (no Docker needed)."""
        settings, _ = _prefect_env()
        cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", settings.prefect.work_pool, "--type", "process"]
        raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))

    @app.command()
    def run(
        flow: Annotated[str, typer.Argument(help=f"One of: {', '.join(DEPLOYMENTS)}")],
        param: Annotated[list[str], typer.Option("--param", "-p", help="key=value (JSON values allowed)")] = [],
        wait: Annotated[bool, typer.Option("--wait", help="Wait for the run; exit non-zero if it fails.")] = False,
        timeout: Annotated[float, typer.Option(help="With --wait: give up after this many seconds.")] = 3600,
    ) -> None:
        """Trigger a deployed flow on demand and print its URL in the Prefect UI."""
        if flow not in DEPLOYMENTS:
            raise typer.BadParameter(f"unknown flow {flow!r}; expected one of {list(DEPLOYMENTS)}", param_hint="FLOW")
        parameters = parse_params(param)
        _, api_url = _prefect_env()
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
        from prefect.settings import PREFECT_UI_URL

        name = f"{flow}/{DEPLOYMENTS[flow]}"
        try:
            fr = run_deployment(name=name, parameters=parameters, timeout=0, as_subflow=False)
        except ObjectNotFound:
            err.print(f"[red]No deployment {name}:[/] register them with `fleetloop deploy`.")
            raise typer.Exit(2) from None
        except PrefectHTTPStatusError as exc:
            detail = exc.response.text[:500]
            err.print(f"[red]The Prefect API refused the run of {name}:[/] {detail}")
            raise typer.Exit(2) from None
        except Exception as exc:  # parameter validation happens client-side too
            if type(exc).__name__ in ("ParameterTypeError", "SignatureMismatchError", "ValidationError"):
                err.print(f"[red]Invalid parameters for {name}:[/] {exc}")
                raise typer.Exit(2) from None
            raise
        ui = (PREFECT_UI_URL.value() or api_url.removesuffix("/api")).rstrip("/")
        console.print(f"flow run {fr.name}: {ui}/runs/flow-run/{fr.id}", soft_wrap=True)
        if not wait:
            return
        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            while True:
                state = client.read_flow_run(fr.id).state
                if state is not None and state.is_final():
                    break
                if time.monotonic() > deadline:
                    err.print(f"[yellow]Still {state.name if state else 'pending'} after {timeout:.0f} s[/]")
                    raise typer.Exit(3)
                time.sleep(1.0)
        if state.is_completed():
            console.print(f"[green]{state.name}[/]")
            return
        err.print(f"[red]{state.name}:[/] {state.message or ''}")
        raise typer.Exit(1)
