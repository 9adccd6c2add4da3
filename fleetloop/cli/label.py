"""``fleetloop label``: push mined frames to Label Studio, sync verified labels back.

Label Studio is ``settings.label_studio`` (URL + token) or else the local server started by
``fleetloop services up``. Exit codes: 0 done, 3 done but some frames/annotations were reported
(the report lists them; the rest went through), 2 nothing done (bad input, unreachable server).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.console import Console
from rich.markup import escape

from fleetloop.cli.output import JsonOpt, fail, print_json

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

app = typer.Typer(
    help="Labeling campaigns in Label Studio: push, sync, status, simulate, listen.", no_args_is_help=True
)
console = Console()

CampaignOpt = Annotated[str, typer.Option("--campaign", "-c", help="Campaign name (= Label Studio project title).")]


def _boundary_errors() -> tuple[type[Exception], ...]:
    from fleetloop.ingest.importers import LogFormatError
    from fleetloop.label.client import LabelStudioError
    from fleetloop.label.push import SelectionError
    from fleetloop.label.sync import SyncError
    from fleetloop.local.label_studio import LabelStudioServerError
    from fleetloop.store.locks import LockTimeout
    from fleetloop.store.logs import LogIntegrityError
    from fleetloop.store.objects import StorageError

    return (
        LabelStudioError,
        LogIntegrityError,
        LabelStudioServerError,
        LogFormatError,
        SelectionError,
        SyncError,
        LockTimeout,
        StorageError,
        FileNotFoundError,
    )


def _settings():
    """The settings, with the local Label Studio filled in when none is configured."""
    from fleetloop.local.connect import resolve_settings
    from fleetloop.settings import get_settings

    return resolve_settings(get_settings())


def _client():
    from fleetloop.label.api import client_for

    return client_for(_settings())


@app.command()
def push(
    selection: Annotated[
        Path, typer.Argument(help="Selection CSV written by `fleetloop mine --budget` (a file, or a key in the store).")
    ],
    campaign: CampaignOpt,
    source: Annotated[Path | None, typer.Option(help="Read the logs from here (else from the store).")] = None,
    format: Annotated[
        str, typer.Option("--format", "-f", help="Format of --source: kitti-tracking | parquet")
    ] = "kitti-tracking",
    model_version: Annotated[str | None, typer.Option(help="Prediction model version (default: settings).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Tasks per import request.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """Create pre-annotated tasks for the selected frames (idempotent: existing tasks are kept)."""
    from fleetloop.label.api import push_selection, selection_rows

    try:
        from fleetloop.label.campaigns import check_name
        from fleetloop.label.push import SelectionError

        check_name(campaign)  # a usage error before anything is read
        settings = _settings()
        from fleetloop.store.objects import get_store

        rows = selection_rows(selection, get_store(settings))
        if not rows:  # nothing to push: no empty campaign is made
            raise SelectionError(f"{selection}: no frames selected (no rows under the header)")
        logs = None
        if source is not None:  # the logs straight from files, not from the store
            from fleetloop.ingest.importers import load_logs

            logs = load_logs(source, format=format, log_ids=sorted({r["log_id"] for r in rows}))
        from fleetloop.params import load_params

        report = push_selection(selection, campaign, settings, logs=logs, batch_size=batch_size, rows=rows,
                                model_version=model_version, camera_stream=load_params().mine.camera_stream)
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    if as_json:
        print_json(report.model_dump(), ok=not report.problems)
    else:
        console.print(
            f"campaign [bold]{campaign}[/] (project {report.project_id}): {report.selected} frames selected, "
            f"[green]{report.created} tasks created[/], {report.already_present} already there, "
            f"[red]{len(report.problems)} problems[/] ({report.requests} import requests, {report.seconds:.1f} s)"
        )
        for p in report.problems:
            console.print(f"  [red]{p.stage}[/] log {p.log_id} frame {p.frame}: {p.message}")
    raise typer.Exit(3 if report.problems else 0)


@app.command()
def sync(
    campaign: Annotated[
        str | None, typer.Option("--campaign", "-c", help="Campaign to sync (default: every open campaign).")
    ] = None,
    page_size: Annotated[int, typer.Option(min=1, help="Tasks per page.")] = 100,
    shard_size: Annotated[int, typer.Option(min=1, help="Annotations per output shard.")] = 5000,
    as_json: JsonOpt = False,
) -> None:
    """Deliver new and updated annotations as label shards (exactly once, with a watermark),
    validated with the labels suite. Without --campaign: every open campaign of the index."""
    from fleetloop.ingest.validation import label_failures
    from fleetloop.label.api import sync_campaign, sync_open_campaigns

    try:
        settings = _settings()
        if campaign is None:
            out = sync_open_campaigns(settings, validate=label_failures, page_size=page_size, shard_size=shard_size)
            if out.failed and not out.campaigns:  # every campaign failed: is Label Studio there at all?
                from fleetloop.label.api import client_for

                with client_for(settings) as client:
                    client.whoami()  # unreachable / token rejected: nothing was done (exit 2)
        else:
            report = sync_campaign(campaign, settings, validate=label_failures, page_size=page_size,
                                   shard_size=shard_size)
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    if campaign is None:
        problems = out.failed or any(r.problems for r in out.reports)
        if as_json:
            print_json({**out.model_dump(), "delivered": out.delivered}, ok=not problems)
        else:
            console.print(f"{len(out.campaigns)} open campaigns synced: [green]{out.delivered} delivered[/]"
                          + (f"; complete now: {', '.join(out.completed)}" if out.completed else ""))
            for r in out.reports:
                _print_sync_report(r, brief=True)
            for name, why in out.failed.items():
                console.print(f"  [red]{escape(name)} failed[/]: {escape(why)}", highlight=False)
        raise typer.Exit(3 if problems else 0)
    if as_json:
        print_json(report.model_dump(), ok=not report.problems)
    else:
        _print_sync_report(report)
    raise typer.Exit(3 if report.problems else 0)


def _print_sync_report(report, *, brief: bool = False) -> None:
    """One campaign's sync for people; ``brief`` (a campaign among all open ones): only when it
    delivered or rejected something, without the shard keys."""
    if brief and not (report.delivered or report.problems or report.recovered_shards or report.retracted
                      or report.tasks_deleted):
        return
    retracted = f", {report.retracted} retracted (deleted in Label Studio)" if report.retracted else ""
    tasks_gone = (f", {report.tasks_deleted} tasks deleted in Label Studio (their labels kept)"
                  if report.tasks_deleted else "")
    console.print(
        f"campaign [bold]{escape(report.campaign)}[/]: {report.annotations_seen} annotations seen, "
        f"[green]{report.delivered} delivered[/] ({report.revisions} revisions, {report.labels} boxes, "
        f"{report.empty} empty, {report.unusable} unusable){retracted}{tasks_gone}, {report.already_delivered} "
        f"already delivered, [red]{len(report.problems)} rejected[/] in {report.seconds:.1f} s"
    )
    for key in report.recovered_shards:
        console.print(f"  recovered shard of an interrupted sync: {key}")
    if not brief:
        for key in report.shards:
            console.print(f"  wrote {key}")
    for p in report.problems:
        console.print(
            f"  [red]task {p.task_id} annotation {p.annotation_id}[/] (log {escape(str(p.log_id))} frame {p.frame}, "
            f"region {escape(str(p.region))}): {escape(p.message)}", highlight=False
        )


@app.command()
def status(
    campaign: Annotated[str | None, typer.Option(
        "--campaign", "-c", help="Campaign name (= Label Studio project title); without it, every campaign pushed so far.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Counts of tasks, annotated tasks and synced tasks of a campaign, or of every campaign
    (oldest first, with its state: open until every task's annotation is synced, then complete).
    Exit 3 when a campaign's row could not be counted (its project gone from Label Studio: the
    row says why; the other rows are shown)."""
    from fleetloop.label.api import status as campaign_status
    from fleetloop.label.api import statuses

    try:
        result = statuses(_settings()) if campaign is None else campaign_status(campaign, _settings())
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    if as_json:
        print_json(result)
    elif isinstance(result, dict):
        console.print(
            f"campaign [bold]{campaign}[/] ({result['url']}): {result['tasks']} tasks, {result['annotated']} annotated, "
            f"{result['synced']} synced ({result['annotations_delivered']} annotations delivered in "
            f"{result['shards']} shards"
            + (f", {result['annotations_retracted']} retracted" if result.get("annotations_retracted") else "") + ")"
            + (f"; [yellow]{result['annotations_undelivered']} annotations not delivered as they are now[/] (new,"
               " updated since, or rejected: `fleetloop label sync -c` delivers or reports them)"
               if result.get("annotations_undelivered") else "")
        )
    else:
        _print_campaigns(result)
    if isinstance(result, list) and any("error" in row for row in result):
        raise typer.Exit(3)


def _print_campaigns(rows: list[dict]) -> None:
    """``fleetloop label status`` without a campaign, for people: one row per campaign."""
    if not rows:
        console.print("no campaigns yet: `fleetloop label push` creates one (the weekly cycle pushes one a week)")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col, just in (("campaign", "left"), ("state", "left"), ("tasks", "right"), ("annotated", "right"),
                      ("synced", "right"), ("created", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        counts = ("-", "-", "-") if "error" in r else (f"{r['tasks']:,}", f"{r['annotated']:,}", f"{r['synced']:,}")
        table.add_row(escape(r["campaign"]), r["state"], *counts, r["created_at"][:10])
    console.print(table)
    for r in rows:
        if "error" in r:
            console.print(f"[yellow]{escape(r['campaign'])}[/]: {escape(r['error'])}", highlight=False)


@app.command()
def simulate(
    campaign: CampaignOpt,
    truth: Annotated[Path, typer.Option(help="Ground truth: a KITTI tracking root (label_02/) or a Parquet table.")],
    latency: Annotated[float, typer.Option(min=0, help="Seconds per task.")] = 0.0,
    noise: Annotated[float, typer.Option(min=0, help="Pixel jitter (std-dev) per box edge.")] = 0.0,
    skip_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of tasks skipped.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="Answer at most this many tasks.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer open tasks with a simulated labeling team (demo and tests only)."""
    from fleetloop.sim.labeling_team import TeamConfig, load_truth
    from fleetloop.sim.labeling_team import simulate as do_simulate

    try:
        table = load_truth(truth)
        with _client() as client:
            report = do_simulate(
                campaign,
                table,
                client=client,
                limit=limit,
                team=TeamConfig(latency_s=latency, noise_px=noise, skip_rate=skip_rate, seed=seed),
            )
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    if as_json:
        print_json(report.model_dump(exclude={"submissions"}), ok=True)
    else:
        console.print(
            f"simulated team on [bold]{campaign}[/]: {report.answered} labeled ({report.boxes} boxes), "
            f"{report.unusable} marked unusable, {report.left_open} left open, {report.seconds:.1f} s"
        )


@app.command()
def listen(
    campaign: Annotated[list[str], typer.Option("--campaign", "-c", help="Campaigns to watch (repeatable).")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    public_url: Annotated[
        str | None, typer.Option(help="URL Label Studio posts to (default http://HOST:PORT/webhook).")
    ] = None,
    trigger: Annotated[
        str, typer.Option(help="sync: run the sync here | deployment: run the label-sync deployment")
    ] = "sync",
    deployment: Annotated[
        str, typer.Option(help="Deployment to run with --trigger deployment.")
    ] = "label-sync/poll",
) -> None:
    """Receive Label Studio webhooks and sync (or trigger the label-sync deployment) on each
    created/updated annotation. Registers the campaigns' webhooks first (idempotent)."""
    import secrets

    from fleetloop.label.webhook import WebhookReceiver, register_webhook

    settings = _settings()
    secret_file = settings.home.resolve() / "labeling" / "webhook-secret"
    if not secret_file.exists():
        from fleetloop.store.atomic import write_atomic

        secret_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(secret_file, secrets.token_hex(20).encode(), mode=0o600)  # never readable by others
    secret = secret_file.read_text().strip()

    if trigger == "sync":

        def action(name: str) -> None:
            from fleetloop.ingest.validation import label_failures
            from fleetloop.label.api import sync_campaign

            r = sync_campaign(name, settings, validate=label_failures)
            console.print(f"synced {name}: {r.delivered} delivered, {len(r.problems)} rejected")
    elif trigger == "deployment":

        def action(name: str) -> None:
            from fleetloop.local.services import ensure_prefect_env

            ensure_prefect_env(settings)
            from prefect.deployments import run_deployment

            # async_dispatch types it FlowRun | Coroutine; called from this (sync) thread it returns the FlowRun
            run = cast("FlowRun", run_deployment(deployment, parameters={"campaign": name}, timeout=0))
            console.print(f"triggered {deployment} for {name}: flow run {run.id}")
    else:
        raise typer.BadParameter("expected sync or deployment", param_hint="--trigger")

    errors: tuple[type[Exception], ...] = (OSError, *_boundary_errors())
    try:
        receiver = WebhookReceiver(action, secret=secret, host=host, port=port, campaigns=set(campaign))
        url = public_url or receiver.url
        with _client() as client:
            for name in campaign:
                hook = register_webhook(client, name, url, secret)
                console.print(f"webhook {hook} of campaign {name} -> {url}")
    except errors as exc:
        raise fail(exc) from None
    console.print(f"listening on {receiver.url} (Ctrl-C to stop)")
    try:
        receiver.serve_forever()
    except KeyboardInterrupt:
        receiver.stop()
