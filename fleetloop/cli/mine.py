"""``fleetloop mine PATH`` (rank or select frames for labeling) and ``fleetloop sample OUT``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command()
    def mine(
        path: Annotated[Path, typer.Argument(help="Directory of logs (KITTI tracking layout or fleetloop parquet layout).")],
        format: Annotated[str, typer.Option("--format", "-f", help="kitti-tracking | parquet")] = "kitti-tracking",
        out: Annotated[Path, typer.Option("--out", "-o", help="ranked.csv or ranked.parquet")] = Path("ranked.csv"),
        budget: Annotated[Optional[int], typer.Option("--budget", "-b", min=1,
                          help="Write only this many frames, selected with diversity; without it every frame, ranked.")] = None,
        camera_tracker: Annotated[Optional[str], typer.Option(help="KITTI layout: camera tracker to read (e.g. ciwt, yolox_sort).")] = None,
        lidar_detector: Annotated[Optional[str], typer.Option(help="KITTI layout: lidar detector to read (e.g. pointrcnn).")] = None,
        params: Annotated[Optional[Path], typer.Option("--params", help="MiningParams as JSON (thresholds, severities, ...).")] = None,
        log: Annotated[list[str], typer.Option("--log", help="Only these log ids (repeatable).")] = [],
        validate: Annotated[bool, typer.Option(help="Validate every table with Great Expectations first.")] = True,
        shard_logs: Annotated[int, typer.Option(min=1, help="Logs per shard (memory holds one shard).")] = 64,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
    ) -> None:
        """Run the sanity checks over every frame and write the frames ranked by priority
        (columns log_id, frame, score, reasons, ...; higher score = label first)."""
        from pydantic import ValidationError
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from fleetloop.perception.batch import MiningInputError
        from fleetloop.mine.files import MiningOutputError, mine_files
        from fleetloop.mine.params import MiningParams
        from fleetloop.ingest.importers import FORMATS, LogFormatError

        if format not in FORMATS:
            raise typer.BadParameter(f"expected one of {FORMATS}", param_hint="--format")
        try:
            mp = MiningParams.model_validate_json(params.read_text()) if params else MiningParams()
        except (OSError, ValidationError) as exc:
            console.print(f"[red]bad --params {params}:[/] {exc}")
            raise typer.Exit(2) from None
        options = {}
        if format == "kitti-tracking":
            options = {k: v for k, v in {"camera_tracker": camera_tracker, "lidar_detector": lidar_detector}.items() if v}
        elif camera_tracker or lidar_detector:
            raise typer.BadParameter("only for --format kitti-tracking", param_hint="--camera-tracker/--lidar-detector")

        with Progress(TextColumn("{task.description:<11}"), BarColumn(), MofNCompleteColumn(), TextColumn("logs"),
                      TimeElapsedColumn(), console=console, disable=quiet, transient=True) as bar:
            task = bar.add_task("starting", total=None)

            def progress(stage: str, done: int, total: int) -> None:
                bar.update(task, description=stage, completed=done, total=total)

            try:
                table, report = mine_files(path, format, out, budget=budget, params=mp, validate=validate,
                                           shard_logs=shard_logs, log_ids=log or None, importer_options=options,
                                           progress=progress)
            except (LogFormatError, MiningInputError, MiningOutputError, FileNotFoundError) as exc:
                bar.stop()
                console.print(f"[red]mine failed:[/] {exc}")
                raise typer.Exit(1) from None
        if quiet:
            return
        what = f"top {report.written:,} frames (budget {budget})" if budget else f"all {report.written:,} frames, ranked"
        console.print(f"[green]wrote {out}[/]: {what} from {report.logs} logs, {report.flags:,} flags "
                      f"(validation: {report.validation}; seconds: {report.seconds})")
        for log_id, why in report.quarantined.items():
            console.print(f"  [red]quarantined {log_id}[/]: {why}")
        for s in report.skipped:
            console.print(f"  skipped {s}")

    @app.command()
    def sample(
        out: Annotated[Path, typer.Argument(help="Directory to write the sample logs to (parquet layout).")],
        logs: Annotated[int, typer.Option(min=1, help="Number of logs.")] = 3,
        frames: Annotated[int, typer.Option(min=10, help="Frames per log.")] = 150,
        seed: Annotated[int, typer.Option(help="Random seed (same seed, same sample).")] = 0,
    ) -> None:
        """Write a small generated fleet sample with injected perception errors (and the list of
        injected errors, injected_errors.csv), so `fleetloop mine OUT --format parquet` runs
        without any real data."""
        from fleetloop.sim.sample import write_sample

        dirs = write_sample(out, n_logs=logs, n_frames=frames, seed=seed)
        console.print(f"[green]wrote {len(dirs)} logs of {frames} frames to {out}[/] (injected errors: {out / 'injected_errors.csv'})")
