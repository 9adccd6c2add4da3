"""``fleetloop ingest`` and ``fleetloop logs list``: logs into and out of the configured store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fleetloop.cli.output import JsonOpt, err, fail, grouped, print_json

console = Console(soft_wrap=True)
logs_app = typer.Typer(help="Logs in the configured store.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(logs_app, name="logs")

    @app.command()
    def ingest(
        path: Annotated[Path, typer.Argument(help="Directory of logs to bring in.")],
        format: Annotated[str, typer.Option("--format", "-f", help="kitti-tracking | parquet")] = "kitti-tracking",
        log: Annotated[list[str] | None, typer.Option("--log", help="Only these log ids (repeatable).")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Validate logs and store them (the function the ingest-logs flow calls). Bad logs are
        quarantined with a report; the rest go on. Rerunning stores nothing twice; a log id
        already stored with other content is reported, never overwritten (exit 1), as is a log
        whose keys the store refuses while it still answers (exit 1). Exit 1 too when no log is
        found, a --log is not there, or every log is quarantined."""
        from fleetloop.ingest.importers import FORMATS, LogFormatError
        from fleetloop.ingest.ingest import IngestInterrupted
        from fleetloop.ingest.ingest import ingest as do_ingest
        from fleetloop.settings import get_settings
        from fleetloop.store.ids import InvalidLogIdError, check_log_id
        from fleetloop.store.objects import StorageError, get_store

        if format not in FORMATS:
            raise typer.BadParameter(f"expected one of {FORMATS}", param_hint="--format")
        try:
            wanted = [check_log_id(i) for i in log] if log else None
        except InvalidLogIdError as exc:
            raise typer.BadParameter(str(exc), param_hint="--log") from None
        try:
            with err.status(f"Ingesting {path} ({format})"):
                report = do_ingest(get_store(get_settings()), path, format, wanted)
        except IngestInterrupted as exc:  # the store failed partway: say what was stored before it did
            if as_json:
                print_json({"ok": False, "error": f"ingest failed: {exc}", **exc.report.model_dump(mode="json"),
                            "not_stored": exc.not_stored})
                err.print(f"[red]ingest failed:[/] {escape(str(exc))}", highlight=False)
                raise typer.Exit(1) from None
            raise fail(exc, 1, prefix="ingest failed") from None
        except (LogFormatError, StorageError, FileNotFoundError) as exc:
            raise fail(exc, 1, as_json=as_json, prefix="ingest failed") from None
        n_logs = (len(report.registered) + len(report.unchanged) + len(report.quarantined) + len(report.conflicts)
                  + len(report.failed))
        if not n_logs:
            raise fail(f"no logs found in {path} (format {format})", 1, as_json=as_json, prefix="ingest failed")
        # exit 1 when a log was not stored (another's content, or the store refused its keys), or when
        # nothing of the batch is in the store
        ok = not report.conflicts and not report.failed and bool(report.registered or report.unchanged)
        if as_json:
            print_json({"ok": ok, **report.model_dump(mode="json")})
            raise typer.Exit(0 if ok else 1)
        console.print(
            f"[green]{len(report.registered)} new[/], {len(report.unchanged)} unchanged, "
            f"[red]{len(report.quarantined)} quarantined[/], {len(report.conflicts)} conflicts"
            + (f", [red]{len(report.failed)} failed[/]" if report.failed else "") + "; "
            f"{report.frames:,} frames in {report.seconds:.1f} s"
        )
        named = {(log_id if log_id.isprintable() else repr(log_id)): why for log_id, why in report.reasons.items()}
        for line in grouped(named, "[red]quarantined[/]", ""):
            console.print(line, highlight=False)
        if report.quarantined:
            console.print(f"  reports in the store: {escape(next(iter(report.quarantined.values())))}"
                          + (" and one per other log (--json lists them)" if len(report.quarantined) > 1 else ""),
                          highlight=False)
        for line in grouped(report.warnings, "[yellow]warning[/]", " (stored)"):
            console.print(line, highlight=False)
        for log_id, why in report.conflicts.items():
            console.print(f"  [yellow]not stored {escape(log_id)}:[/] {escape(why)}")
        for log_id, why in report.failed.items():
            console.print(f"  [red]not stored {escape(log_id)}:[/] {escape(why)} (the store refused it; fix that "
                          "and run the same command again)", highlight=False)
        if not ok:
            if not report.conflicts and not report.failed:
                err.print("[red]ingest failed:[/] nothing stored: every log was quarantined", highlight=False)
            raise typer.Exit(1)

    @logs_app.command("list")
    def list_cmd(
        since: Annotated[list[str] | None, typer.Option(metavar="<datetime>", help="Only logs that arrived at or after "
                         "this time: ISO 8601, UTC unless it names a zone (2026-11-23T08:00:00+01:00, ...Z); a date "
                         "alone is its midnight UTC.")] = None,
        until: Annotated[list[str] | None, typer.Option(metavar="<datetime>", help="Only logs that arrived before this "
                         "time (a date alone: before that day, so --until 2026-11-24 leaves out the 24th).")] = None,
        drive_since: Annotated[list[str] | None, typer.Option(metavar="<datetime>", help="Only logs driven at or after "
                               "this time.")] = None,
        drive_until: Annotated[list[str] | None, typer.Option(metavar="<datetime>", help="Only logs driven before this "
                               "time.")] = None,
        vehicle: Annotated[list[str] | None, typer.Option(metavar="<str>", help="Only this vehicle's logs (ignoring case).")] = None,
        tag: Annotated[list[str] | None, typer.Option("--tag", help="name=value, e.g. weather=rain (repeatable; "
                                                      "a log matches when one of its frames has every pair; "
                                                      "values match ignoring case).")] = None,
        log: Annotated[list[str] | None, typer.Option("--log", help="Only these log ids (repeatable).")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """The logs in the store, oldest arrival first; with query options, the logs that match
        (the query `fleetloop mine --from-store` takes, so this previews what it would mine). A
        log whose manifest is not readable (a foreign or damaged object, an I/O error) is named on
        stderr, one line each, the others are listed, and the exit code is 1. A bad query (a date
        that is not one, a tag that is not name=value, an option given twice, --since not before
        --until) is one line and exit 2; a --log not in the store, exit 1."""
        from pydantic import ValidationError

        from fleetloop.settings import get_settings
        from fleetloop.store.logs import LogIntegrityError, list_logs
        from fleetloop.store.objects import StorageError, get_store
        from fleetloop.store.query import LogQuery, LogQueryError, select_logs

        try:
            q = LogQuery.model_validate({"since": since, "until": until, "drive_since": drive_since,
                                         "drive_until": drive_until, "vehicle": vehicle, "tags": tag or [],
                                         "log_ids": log or None})
        except ValidationError as exc:
            from fleetloop.problems import first_problem

            raise fail(str(first_problem(exc)[0]), 2, as_json=as_json, prefix="bad query") from None
        problems: dict[str, str] = {}
        try:
            store = get_store(get_settings())
            manifests = list_logs(store, since=q.since, inclusive=True, problems=problems)
            if q != LogQuery(since=q.since):  # anything but the arrival start: filter
                keep = set(select_logs(manifests, q, store))
                manifests = [m for m in manifests if m.log_id in keep]
        except (StorageError, LogIntegrityError, LogQueryError, LookupError) as exc:  # LookupError: a --log not stored
            raise fail(exc, 1, as_json=as_json) from None
        if as_json:
            print_json([m.model_dump(mode="json") for m in manifests])
        else:
            table = Table("log_id", "frames", "arrived_at", "source")
            for m in manifests:
                table.add_row(m.log_id, f"{m.n_frames:,}", str(m.arrived_at), escape(m.source))
            console.print(table)
            console.print(f"{len(manifests)} logs" + (f" match ({escape(q.describe())})" if q != LogQuery() else "")
                          + (f", {len(problems)} not listed (unreadable)" if problems else ""), highlight=False)
        for log_id, why in problems.items():
            err.print(f"[red]not listed[/] {escape(log_id)}: {escape(why)}", highlight=False)
        if problems:
            raise typer.Exit(1)
