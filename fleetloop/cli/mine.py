"""``fleetloop mine PATH`` (rank or select frames for labeling), ``fleetloop mine --from-store``
(a log query over the store), ``fleetloop mine calibrate`` (fit severities from labels) and
``fleetloop sample OUT``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from fleetloop.cli.output import JsonOpt, fail, grouped, keep_whole, print_json
from fleetloop.store.atomic import writable_dir_problem

console = Console(stderr=True, soft_wrap=True)


class _MineGroup(TyperGroup):
    """``fleetloop mine ARGS`` runs ``fleetloop mine rank ARGS`` unless ARGS start with a sub-command."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["rank", *args]
        return super().parse_args(ctx, args)


mine_app = typer.Typer(cls=_MineGroup, no_args_is_help=True,
                       help="Rank frames for labeling (`fleetloop mine PATH` = `fleetloop mine rank PATH`), "
                            "or fit the miner from labels (`fleetloop mine calibrate`).")


def register(app: typer.Typer) -> None:
    app.add_typer(mine_app, name="mine")

    @mine_app.command("rank")
    def mine(
        path: Annotated[Path | None, typer.Argument(help="Directory of logs (KITTI tracking layout or fleetloop "
                                                             "parquet layout); omit with --from-store.")] = None,
        format: Annotated[str, typer.Option("--format", "-f", help="kitti-tracking | parquet")] = "kitti-tracking",
        out: Annotated[Path, typer.Option("--out", "-o", help="ranked.csv or ranked.parquet")] = Path("ranked.csv"),
        budget: Annotated[int | None, typer.Option("--budget", "-b", min=1,
                          help="Write only this many frames, selected with diversity; without it every frame, ranked.")] = None,
        budget_cost: Annotated[float | None, typer.Option("--budget-cost", min=1,
                               help="Select by expected errors per unit of labelling cost (1 + estimated objects) "
                                    "until this much cost is spent.")] = None,
        camera_tracker: Annotated[str | None, typer.Option(help="The camera stream whose errors count (e.g. "
                                  "yolox_sort, ciwt); every other camera stream is evidence.")] = None,
        lidar_detector: Annotated[str | None, typer.Option(help="KITTI layout: lidar detector to read (e.g. pointrcnn).")] = None,
        params: Annotated[Path | None, typer.Option("--params", help="Mining params (thresholds, severities, ...): a params file (its mine: section) or the mining params alone, YAML or JSON. Default: params.yaml's mine: section ($FLEETLOOP_PARAMS, else the nearest params.yaml), as the mine flow reads it.")] = None,
        log: Annotated[list[str] | None, typer.Option("--log", help="Only these log ids (repeatable).")] = None,
        validate: Annotated[bool, typer.Option(help="Validate every table with Great Expectations first.")] = True,
        shard_logs: Annotated[int, typer.Option(min=1, help="Logs per shard (memory holds one shard; validation has a "
                                                "fixed cost per shard).")] = 128,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the run's summary as JSON on stdout (no progress "
                                              "bar): logs, frames, flags, quarantined and warned logs, seconds.")] = False,
        from_store: Annotated[bool, typer.Option("--from-store", help="Mine logs in the configured store (with the "
                              "query options below) instead of PATH.")] = False,
        since: Annotated[list[str] | None, typer.Option(metavar="<datetime>", help="--from-store: arrived at or after "
                         "(ISO 8601, UTC unless it names a zone, e.g. 2026-11-23T08:00:00+01:00; a date alone is its "
                         "midnight UTC).")] = None,
        until: Annotated[list[str] | None, typer.Option(metavar="<datetime>", help="--from-store: arrived before (a date "
                         "alone: before that day, so --until 2026-11-24 leaves out the 24th).")] = None,
        drive_since: Annotated[list[str] | None, typer.Option(metavar="<datetime>", help="--from-store: driven at or "
                               "after.")] = None,
        drive_until: Annotated[list[str] | None, typer.Option(metavar="<datetime>", help="--from-store: driven "
                               "before.")] = None,
        vehicle: Annotated[list[str] | None, typer.Option(metavar="<str>", help="--from-store: only this vehicle's logs (ignoring case).")] = None,
        tag: Annotated[list[str] | None, typer.Option("--tag", help="--from-store: name=value, e.g. weather=rain (repeatable; values match ignoring case).")] = None,
    ) -> None:
        """Run the sanity checks over every frame and write the frames ranked by priority
        (columns log_id, frame, score, reasons, ...; higher score = label first).

        A log that does not parse or validate is quarantined and named (file, line) and the
        others are mined. Exit 0 when --out was written (quarantined logs included); 1 when nothing could
        be mined or written (no logs, every log quarantined, no stored log matching, --out not
        writable); 2 for a bad command line, query or params (e.g. a --camera-tracker or
        --lidar-detector the logs do not have); 130 when interrupted (Ctrl-C; --out is never
        left half-written: it is as it was, or the whole new output)."""
        from pydantic import ValidationError
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from fleetloop.ingest.importers import FORMATS, LogFormatError
        from fleetloop.mine.files import MiningOutputError, out_kind
        from fleetloop.mine.params import MiningParams
        from fleetloop.mine_files import CameraStreamError, mine_files
        from fleetloop.params import ParamsError, find_params_file, mining_params
        from fleetloop.perception.batch import MiningInputError

        if tag is None:
            tag = []
        if log is None:
            log = []
        if format not in FORMATS:
            raise typer.BadParameter(f"expected one of {FORMATS}", param_hint="--format")
        if budget is not None and budget_cost is not None:
            raise typer.BadParameter("give --budget or --budget-cost, not both", param_hint="--budget-cost")
        if budget_cost is not None and not math.isfinite(budget_cost):
            raise typer.BadParameter(f"{budget_cost} is not a finite number", param_hint="--budget-cost")
        if from_store and path is not None:
            raise typer.BadParameter(f"give a directory of logs or --from-store, not both ({path})", param_hint="PATH")
        if from_store and lidar_detector:  # the store holds the detector each log was ingested with
            raise typer.BadParameter("only for a directory of logs (KITTI layout), not --from-store",
                                     param_hint="--lidar-detector")
        query_options = {"--since": since, "--until": until, "--drive-since": drive_since, "--drive-until": drive_until,
                         "--vehicle": vehicle, "--tag": tag or None}
        stray = [name for name, value in query_options.items() if value is not None]
        if stray and not from_store:  # they would be ignored: every log of PATH mined, as if unfiltered
            raise typer.BadParameter(f"{', '.join(stray)} query the store: only with --from-store "
                                     "(--log picks logs of PATH)", param_hint=stray[0])
        try:
            mp = mining_params(params)
            source = params or find_params_file()
            if camera_tracker:
                mp = MiningParams.model_validate({**mp.model_dump(), "camera_stream": camera_tracker})
        except (ParamsError, ValidationError) as exc:
            raise fail(exc, 2, as_json=as_json, prefix="bad mining params") from None
        try:
            out_kind(out)
        except MiningOutputError as exc:
            raise fail(exc, 1, as_json=as_json, prefix="mine failed") from None
        problem = f"{out} is a directory" if out.is_dir() else writable_dir_problem(out.parent)
        if problem:
            raise fail(f"--out {out}: cannot write: {problem}", 1, as_json=as_json, prefix="mine failed")
        if from_store:
            _mine_store(mp, source, out, budget, budget_cost, quiet, as_json, camera_tracker, since=since, until=until,
                        drive_since=drive_since, drive_until=drive_until, vehicle=vehicle, tags=tag, log_ids=log or None)
            return
        if path is None:
            raise typer.BadParameter("give a directory of logs, or --from-store", param_hint="PATH")
        options = {}
        if format == "kitti-tracking":
            options = {k: v for k, v in {"lidar_detector": lidar_detector}.items() if v}
            if path.is_dir():  # a missing PATH is mine_files' error ("does not exist"), not the tracker's
                _check_kitti_tracker(path, camera_tracker)
                _check_kitti_source(path, "lidar_det", lidar_detector, "--lidar-detector")
        elif lidar_detector:
            raise typer.BadParameter("only for --format kitti-tracking", param_hint="--lidar-detector")

        before = _file_identity(out)
        with Progress(TextColumn("{task.description:<11}"), BarColumn(), MofNCompleteColumn(), TextColumn("logs"),
                      TimeElapsedColumn(), console=console, disable=quiet or as_json, transient=True) as bar:
            task = bar.add_task("starting", total=None)

            def progress(stage: str, done: int, total: int) -> None:
                bar.update(task, description=stage, completed=done, total=total)

            try:
                _table, report = mine_files(path, format, out, budget=budget, budget_cost=budget_cost, params=mp, validate=validate,
                                           shard_logs=shard_logs, log_ids=log or None, importer_options=options,
                                           progress=progress, camera_tracker=camera_tracker)
            except CameraStreamError as exc:
                bar.stop()
                raise typer.BadParameter(str(exc), param_hint="--camera-tracker") from None
            except (LogFormatError, MiningInputError, MiningOutputError, FileNotFoundError) as exc:
                bar.stop()
                raise fail(exc, 1, as_json=as_json, prefix="mine failed") from None
            except KeyboardInterrupt:  # typer would exit 130 silently: no line, no JSON
                bar.stop()
                raise fail(_interrupted(out, before), 130, as_json=as_json, prefix="mine stopped") from None
        if as_json:
            print_json({"ok": True, "out": str(out), "budget": budget, "budget_cost": budget_cost,
                        "params": str(source) if source else None, **dataclasses.asdict(report)})
            _exit_now()
            return
        if quiet:  # no summary, but a log left out is still named
            for line in grouped(report.quarantined, "[red]quarantined[/]", ""):
                console.print(line, highlight=False)
            _exit_now()
            return
        what = (f"top {report.written:,} frames (budget {budget})" if budget else
                f"{report.written:,} frames (cost budget {budget_cost:g})" if budget_cost else f"all {report.written:,} frames, ranked")
        console.print(f"[green]wrote {out}[/]: {what} from {report.logs} logs, {report.flags:,} flags "
                      f"(params: {source or 'defaults'}; validation: {report.validation})")
        console.print(f"  seconds (CPU seconds) per stage: {_stages(report.seconds, report.cpu_seconds)}", highlight=False)
        for line in grouped(report.quarantined, "[red]quarantined[/]", ""):
            console.print(line, highlight=False)
        for line in grouped(report.warnings, "[yellow]warning[/]", " (mined)"):
            console.print(line, highlight=False)
        if report.judged_camera:
            console.print(f"  judged camera stream: {', '.join(report.judged_camera)} (the others are evidence)")
        for s in report.skipped:
            console.print(f"  skipped {s}")
        _exit_now()

    @mine_app.command("calibrate")
    def calibrate_cmd(
        path: Annotated[Path, typer.Argument(help="Directory of labelled logs (KITTI tracking layout with label_02/).")],
        params_file: Annotated[Path, typer.Option("--params-file", help="params.yaml whose mine: section gets the "
                                                  "fitted severities (created if missing; in an existing file only the "
                                                  "keys that change are rewritten, its other lines and comments kept).")]
        = Path("params.yaml"),
        camera_tracker: Annotated[str | None, typer.Option(help="The camera stream whose errors count (written to "
                                                           "mine.camera_stream with the fit).")] = None,
        log: Annotated[list[str] | None, typer.Option("--log", help="Fit on these log ids only (repeatable).")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the table, write nothing.")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Fit each flag's severity per class from labelled frames (how often it marked a real
        error, with the counts) and write them into the mine: section of params.yaml. Prints
        which values change from the file's and why. Exit 1 when nothing can be fitted (no
        labelled frame), the file cannot be read or written (a FIFO, read-only, a key given twice)
        or changed while it ran (nothing is written then); 2 for a camera stream that is not in
        the layout."""
        import os

        from rich.table import Table

        from fleetloop.ingest.importers import LogFormatError
        from fleetloop.mine.calibrate import calibrate, kitti_labels
        from fleetloop.params import LoopParams, ParamsError, load_params, write_params

        if log is None:
            log = []
        _check_kitti_tracker(path, camera_tracker)
        target = params_file.resolve() if params_file.is_symlink() else params_file  # a link: write its target
        if target.exists() and not target.is_file() and not target.is_dir():  # a FIFO would block the read
            raise fail(f"--params-file {params_file}: not a regular file", 1, as_json=as_json, prefix="calibrate failed")
        if not dry_run:
            problem = (f"{params_file} is a directory" if target.is_dir()
                       else f"{params_file} is read-only" if target.is_file() and (
                           not target.stat().st_mode & 0o222 or not os.access(target, os.W_OK))
                       else writable_dir_problem(target.parent))
            if problem:
                raise fail(f"--params-file {params_file}: cannot write: {problem}", 1, as_json=as_json,
                           prefix="calibrate failed")
        try:
            read = target.read_bytes() if target.is_file() else None  # what the file was; compared before writing
            loop = load_params(params_file) if params_file.exists() else LoopParams()
        except OSError as exc:
            raise fail(f"cannot read {params_file}: {exc.strerror or exc}", 1, as_json=as_json,
                       prefix="calibrate failed") from None
        except ParamsError as exc:
            raise fail(exc, 1, as_json=as_json, prefix="calibrate failed") from None
        mp = loop.mine
        if camera_tracker:
            mp = mp.model_copy(update={"camera_stream": camera_tracker})
        elif mp.camera_stream:
            _check_file_stream(path, mp.camera_stream, params_file, as_json)
        try:
            logs, truth, quarantined = _load_labelled(path, log or None)
            labels = kitti_labels(truth, logs)
        except (LogFormatError, FileNotFoundError, ValueError) as exc:
            raise fail(exc, 1, as_json=as_json, prefix="calibrate failed") from None
        for line in grouped(quarantined, "[red]quarantined[/]", " (not used)"):
            console.print(line, highlight=False)
        result = calibrate(logs, labels, mp, source=f"{path} logs {sorted(logs.log_ids)}")
        cal = result.params.calibration
        if not result.labelled_logs:  # nothing to fit on: writing would only wipe an earlier fit
            raise fail(f"{path}: no label on any frame of {_few(result.unlabelled_logs)}"
                       + _unmatched(result) + "; nothing to fit on, nothing written", 1, as_json=as_json,
                       prefix="calibrate failed")
        changes = _severity_changes(loop.mine, result.params, result.table.to_pylist())
        keys = [k for k, v in result.params.model_dump(mode="json").items() if loop.mine.model_dump(mode="json").get(k) != v]
        whole = False
        was = str(params_file) if params_file.is_file() else "the defaults"
        before = "new" if not target.is_file() else None
        if not dry_run:
            now = target.read_bytes() if target.is_file() else None
            if now != read:  # another calibration or an edit while this one ran: writing would undo it
                raise fail(f"--params-file {params_file} changed while calibrating (another calibration or an edit); "
                           "nothing written: run it again", 1, as_json=as_json, prefix="calibrate failed")
            try:
                whole = write_params(target, loop.model_copy(update={"mine": result.params}))
            except ParamsError as exc:
                raise fail(exc, 1, as_json=as_json, prefix="calibrate failed") from None
        if as_json:
            print_json({"ok": True, "params_file": None if dry_run else str(params_file), "quarantined": quarantined,
                        "labelled_logs": result.labelled_logs, "unlabelled_logs": result.unlabelled_logs,
                        "unmatched_labels": result.unmatched_labels, "judged_camera": result.judged_camera,
                        "skipped": result.skipped, "changes": changes, "written_keys": [] if dry_run else keys,
                        "whole_file": whole, "rows": result.table.to_pylist(),
                        "errors": result.truth, "calibration": cal.model_dump(mode="json") if cal else None})
            return
        heads = ("reason", "class", "flags", "errors", "prec", "default", "severity", "kept")
        table = Table(*heads, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                      caption="flags: of this reason and class on the labelled frames; errors: of those, real errors; prec: their "
                              "share; kept: fitted; 'too few' flags to fit, or 'unstable' (refits without one group of the "
                              "labelled logs move it different ways from the default): the default stays")
        for r in result.table.to_pylist():
            table.add_row(r["reason"], r["class"], str(r["flagged"]), str(r["errors"]), f"{r['precision']:.2f}",
                          f"{r['prior']:.2f}", f"{r['severity']:.3f}",
                          "fitted" if r["stable"] else "unstable" if r["fitted"] else "too few")
        Console().print(keep_whole(table, *heads))  # fits 80 columns without cutting a name or a number
        if result.truth:
            console.print("errors on the labelled frames (the matching rules of fleetloop.mine.calibrate): "
                          + ", ".join(f"{k} {v}" for k, v in result.truth.items()))
        if cal is not None and cal.unexplained_per_object:
            console.print(f"errors no flag explains (where the miner is blind): {cal.unexplained_per_frame:.2f} per frame, "
                          + ", ".join(f"{v:.2f} per {c}" for c, v in cal.unexplained_per_object.items()))
        console.print(f"fitted on {cal.labelled_frames if cal else 0:,} labelled frames of {_few(result.labelled_logs, 8)}"
                      + ("; one labelled log: no stability check, every fitted value kept"
                         if len(result.labelled_logs) < 2 else ""), highlight=False)
        if result.judged_camera:
            console.print(f"  judged camera stream: {escape(result.judged_camera)} (the others are evidence)", highlight=False)
        for s in result.skipped:
            console.print(f"  skipped {escape(s)}", highlight=False)
        if result.unlabelled_logs:
            console.print(f"  [yellow]not used[/] (no label on any of their frames: label file missing or empty): "
                          f"{escape(_few(result.unlabelled_logs, 8))}", highlight=False)
        if result.unmatched_labels:
            console.print(f"  [yellow]not used[/]: {escape(_unmatched(result).removeprefix('; '))}", highlight=False)
        verb = "would change" if dry_run else "changed"
        if loop.mine.camera_stream != result.params.camera_stream:
            console.print(f"mine.camera_stream {verb}: {loop.mine.camera_stream} -> {result.params.camera_stream}",
                          highlight=False)
        if changes:
            console.print(f"severities that {verb} from {was}:", highlight=False)
            for c in changes:
                console.print(f"  {c['reason']} {c['class']}: {c['was']:.4g} -> {c['now']:.4g} ({c['why']})", highlight=False)
        else:
            console.print(f"no severity {verb.split()[-1]} from {was}", highlight=False)
        if dry_run:
            return
        how = ("a new file, every value spelled out" if before == "new" else
               "the whole file rewritten, keeping its opening comments: its layout could not be kept" if whole else
               "the file's other lines and comments kept")
        console.print(f"[green]wrote {escape(str(params_file))}[/]: mine.class_severities for "
                      f"{sum(len(v) for v in result.params.class_severities.values())} reason/class pairs, "
                      f"{', '.join('mine.' + k for k in keys if k != 'class_severities') or 'nothing else'} ({how})",
                      highlight=False)

    @app.command()
    def sample(
        out: Annotated[Path, typer.Argument(help="Directory to write the sample logs to (parquet layout).")],
        logs: Annotated[int, typer.Option(min=1, help="Number of logs.")] = 3,
        frames: Annotated[int, typer.Option(min=10, help="Frames per log.")] = 150,
        seed: Annotated[int, typer.Option(min=0, help="Random seed (same seed, same sample).")] = 0,
    ) -> None:
        """Write a small generated fleet sample with injected perception errors (and the list of
        injected errors, injected_errors.csv), so `fleetloop mine OUT --format parquet` runs
        without any real data.

        OUT is created if missing; an existing OUT may hold only an earlier sample's logs that
        this one replaces (a rerun), never other files. Exit 1 when OUT cannot be written, 2 for
        a bad option."""
        from fleetloop.sim.sample import write_sample

        ours = {f"sample-{i:03d}" for i in range(logs)} | {"injected_errors.csv"}
        if out.exists() and not out.is_dir():
            raise fail(f"{out} is not a directory", 1, prefix="sample failed")
        others = sorted(p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith(".")) \
            if out.is_dir() else []
        if others:  # they would be mined with the sample, and not be in its injected_errors.csv
            raise fail(f"{out} holds other entries ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); "
                       "write the sample into a new or empty directory", 1, prefix="sample failed")
        try:
            dirs = write_sample(out, n_logs=logs, n_frames=frames, seed=seed)
        except OSError as exc:
            raise fail(f"{out}: cannot write: {exc.strerror or exc}", 1, prefix="sample failed") from None
        console.print(f"[green]wrote {len(dirs)} logs of {frames} frames to {out}[/] (injected errors: {out / 'injected_errors.csv'})")


def _check_kitti_tracker(root: Path, camera_tracker: str | None) -> None:
    """A KITTI layout names its camera trackers (``camera_trk/<name>/``): a judged one that is not
    there is a usage error, not a silent fallback to another stream."""
    from fleetloop.ingest.importers.kitti import KittiTrackingImporter

    names = KittiTrackingImporter.source_names(root, "camera_trk")
    if camera_tracker and camera_tracker.removeprefix("camera:") not in names:
        raise typer.BadParameter(f"no camera tracker {camera_tracker!r} under {root / 'camera_trk'}; available: {names}",
                                 param_hint="--camera-tracker")


def _check_kitti_source(root: Path, kind: str, name: str | None, option: str) -> None:
    """A source asked for by name (``--lidar-detector``) that the KITTI layout does not have is a
    usage error naming the ones it has, not every log quarantined for the same reason."""
    from fleetloop.ingest.importers.kitti import KittiTrackingImporter

    names = KittiTrackingImporter.source_names(root, kind)
    if name and name not in names:
        raise typer.BadParameter(f"no {kind} source {name!r} under {root / kind}; available: {names}", param_hint=option)


def _file_identity(path: Path) -> tuple[int, int] | None:
    """What tells whether ``path`` was replaced (its inode and modification time), None when absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _interrupted(out: Path, before: tuple[int, int] | None) -> str:
    """The line for a run stopped by Ctrl-C: whether ``out`` was written (outputs are renamed into
    place whole, so it is either as it was or complete)."""
    if _file_identity(out) != before:
        return f"interrupted by SIGINT after --out {out} was written whole"
    return f"interrupted by SIGINT; --out {out} is as it was (nothing written): run it again"


def _check_file_stream(root: Path, stream: str, params_file: Path, as_json: bool) -> None:
    """``mine calibrate``: the params file's ``mine.camera_stream`` must name a camera tracker of
    the KITTI layout (the fit would otherwise judge another stream and write it beside that name)."""
    from fleetloop.ingest.importers.kitti import KittiTrackingImporter

    names = KittiTrackingImporter.source_names(root, "camera_trk")
    if names and stream.removeprefix("camera:") not in names:
        raise fail(f"{params_file}: mine.camera_stream {stream!r} is not a camera tracker under {root / 'camera_trk'} "
                   f"(available: {names}); pass --camera-tracker NAME", 2, as_json=as_json, prefix="calibrate failed")


def _few(ids: list[str], most: int = 5) -> str:
    """``3 logs (0001, 0006, 0010)``: a count and the first few ids."""
    if not ids:
        return "no log"
    shown = ", ".join(ids[:most]) + (", ..." if len(ids) > most else "")
    return f"{len(ids)} log{'s' if len(ids) > 1 else ''} ({shown})"


def _unmatched(result) -> str:
    if not result.unmatched_labels:
        return ""
    return (f"; {result.unmatched_labels} label row(s) name frames the logs do not have "
            f"(e.g. {', '.join(result.unmatched_examples)})")


def _severity_changes(old, new, rows: list[dict]) -> list[dict]:
    """Every (reason, class) whose severity in ``new`` differs from ``old``'s (its
    class_severities, else its default), with why: fitted, or back at the default (too few flags,
    unstable, or not flagged on these labels)."""
    from fleetloop.schema import CLASSES

    by = {(r["reason"], r["class"]): r for r in rows}
    was, now = old.severity_table(), new.severity_table()
    out = []
    for reason in now:
        for i, cls in enumerate(CLASSES):
            a, b = was[reason][i], now[reason][i]
            if a == b:
                continue
            r = by.get((reason, cls))
            why = ("fitted" if r is not None and r["stable"] else "unstable: the default" if r is not None and r["fitted"]
                   else "too few flags: the default" if r is not None else "not flagged on these labels: the default")
            out.append({"reason": reason, "class": cls, "was": a, "now": b, "why": why})
    return out


def _stages(wall: dict[str, float], cpu: dict[str, float]) -> str:
    """``load 0.41 (0.39), validate ...``: each stage's wall seconds and, in brackets, CPU seconds."""
    return ", ".join(f"{stage} {secs:.2f}" + (f" ({cpu[stage]:.2f})" if stage in cpu else "") for stage, secs in wall.items())


def _load_labelled(root: Path, log_ids: list[str] | None):
    """The logs of a labelled KITTI layout, each loaded on its own (a log whose files or labels do
    not parse is left out, with its reason); (logs, ground truth, log_id -> reason). A requested
    log that does not exist, or no log left to fit on, is an error."""
    import pyarrow as pa

    from fleetloop.ingest.importers import LogFormatError, get_importer, load_logs_isolated
    from fleetloop.ingest.importers.kitti import read_kitti_truth

    label_dir = root / "label_02"
    if root.exists():  # whole-source problems first, before any log is read
        available = get_importer("kitti-tracking").list_logs(root)
        if not label_dir.is_dir():
            raise LogFormatError(root, "no label_02/ ground truth directory")
        missing = sorted(set(log_ids or []) - set(available))
        if missing:
            raise LogFormatError(root, f"logs not found: {missing}")
    loaded = load_logs_isolated(root, "kitti-tracking", log_ids)
    quarantined = {k: str(v) for k, v in loaded.errors.items()}
    good, truths = [], []
    for log_id in loaded.logs.log_ids:
        if not log_ids and not (label_dir / f"{log_id}.txt").exists():
            good.append(log_id)  # an unlabelled log, as before: its frames are not judged
            continue
        try:
            truths.append(read_kitti_truth(root, [log_id]))
        except LogFormatError as exc:
            quarantined[log_id] = str(exc)
            continue
        good.append(log_id)
    if not truths:
        why = "; ".join(f"{k}: {v}" for k, v in list(quarantined.items())[:3])
        raise LogFormatError(root, "no labelled log loads" + (f" ({why}{'; ...' if len(quarantined) > 3 else ''})"
                                                             if why else ""))
    logs = loaded.logs if len(good) == len(loaded.logs.log_ids) else loaded.logs.select(good)
    return logs, pa.concat_tables(truths), quarantined


def _exit_now(code: int = 0) -> None:
    """End the process without the interpreter's teardown once ``fleetloop mine`` has written
    its output: with Great Expectations, pandas and numba loaded, freeing every module's objects
    one by one costs about a CPU-second. Only when this process runs the ``fleetloop`` command
    itself (never inside another program, e.g. a test's CliRunner); ``FLEETLOOP_NO_FAST_EXIT=1``
    turns it off. Nothing is pending then: the output was written atomically, no thread runs."""
    import os
    import sys

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    ours = Path(sys.argv[0]).name == "fleetloop" or (spec is not None and spec.name in ("fleetloop", "fleetloop.__main__"))
    if not ours or os.environ.get("FLEETLOOP_NO_FAST_EXIT"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _mine_store(mp, source: Path | None, out: Path, budget, budget_cost, quiet: bool, as_json: bool,
                camera_tracker: str | None, **query) -> None:
    """``fleetloop mine --from-store``: the mining step over the store's logs that match a query."""
    from pydantic import ValidationError

    from fleetloop.mine import run as mining
    from fleetloop.mine.files import MiningOutputError, write_frames
    from fleetloop.mine_files import CameraStreamError, check_judged
    from fleetloop.settings import get_settings, redact
    from fleetloop.store.logs import list_logs
    from fleetloop.store.objects import StorageError, get_store
    from fleetloop.store.query import LogQuery, LogQueryError, select_logs

    try:
        q = LogQuery.model_validate(query)
    except ValidationError as exc:
        from fleetloop.problems import first_problem

        raise fail(str(first_problem(exc)[0]), 2, as_json=as_json, prefix="bad query") from None
    try:
        store = get_store(get_settings())
        unlisted: dict[str, str] = {}  # manifests that are not valid log manifests: named, the rest mined
        ids = select_logs(list_logs(store, since=None, problems=unlisted), q, store)
        if not ids:
            also = f"; not listed: {', '.join(unlisted)}" if unlisted else ""
            raise fail(f"no stored logs match ({q.describe()}) in the store {redact(store.location)}{also}", 1,
                       as_json=as_json)
        run = mining.plan_mining(store, mp, budget, log_ids=ids, unlisted=unlisted)
        shards = [mining.mine_shard(store, run.key, i, s, mp) for i, s in enumerate(run.shards)]
        summary = mining.finish_mining(store, run, shards, mp)
        check_judged(camera_tracker, summary.judged_camera, summary.skipped)
    except CameraStreamError as exc:
        raise typer.BadParameter(str(exc), param_hint="--camera-tracker") from None
    except (LogQueryError, LookupError, StorageError) as exc:
        raise fail(exc, 1, as_json=as_json, prefix="mine failed") from None
    except KeyboardInterrupt:  # typer would exit 130 silently: no line, no JSON
        raise fail(f"interrupted by SIGINT; --out {out} is as it was (nothing written): run it again (finished "
                   "shards are kept in the store and not mined again)", 130, as_json=as_json,
                   prefix="mine stopped") from None
    for log_id, why in summary.unreadable.items():
        console.print(f"[yellow]left out[/] {escape(log_id)}: {escape(why)}", highlight=False)
    import pyarrow as pa

    from fleetloop.mine.ranking import select, select_cost
    from fleetloop.store.objects import table_from_bytes

    ranked = table_from_bytes(store.get_bytes(summary.ranked_key))
    if budget_cost is not None:
        table = select_cost(ranked, budget_cost, mp).drop_columns(["selected_score"])
    elif budget is not None:
        table = select(ranked, budget, mp).drop_columns(["selected_score"])
    else:
        table = ranked.append_column("rank", pa.array(range(1, ranked.num_rows + 1), pa.int64()))
    try:
        write_frames(table, out)
    except MiningOutputError as exc:
        raise fail(exc, 1, as_json=as_json, prefix="mine failed") from None
    if as_json:
        print_json({"ok": True, "out": str(out), "frames": table.num_rows, "logs": len(ids), "query": q.describe(),
                    "run": summary.run_key, "params": str(source) if source else None,
                    "judged_camera": summary.judged_camera, "unreadable": summary.unreadable})
    elif not quiet:
        console.print(f"[green]wrote {out}[/]: {table.num_rows:,} frames from {len(ids)} logs matching "
                      f"({q.describe()}); run {summary.run_key}; params: {source or 'defaults'}; judged camera stream: "
                      f"{', '.join(summary.judged_camera) or 'none'}")
