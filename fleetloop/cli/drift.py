"""``fleetloop drift REFERENCE CURRENT``: drift of production-traffic features between two log sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, JustifyMethod
from rich.table import Table

from fleetloop.cli.output import JsonOpt, err, fail, grouped, print_json
from fleetloop.store.atomic import writable_dir_problem

console = Console()


def _split(values: list[str] | None) -> list[str] | None:
    """Repeatable and/or comma-separated log ids; None (all logs) when none are given."""
    out = [v.strip() for item in values or [] for v in item.split(",") if v.strip()]
    return out or None


def _out_dir_problem(out: Path) -> str | None:
    """Why the report directory ``out`` cannot be written (an existing file, a read-only
    directory or parent), found before the logs are loaded; it is created only when written."""
    if out.exists():
        return writable_dir_problem(out) if out.is_dir() else f"{out} exists and is not a directory"
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return writable_dir_problem(parent)


def _load_window(name: str, root: Path, fmt: str, log_ids: list[str] | None, validate: bool,
                 quarantined: dict[str, str]):
    """One window's logs, each loaded on its own and (``validate``) validated as ``fleetloop mine``
    validates them: a log that does not parse or fails validation goes to ``quarantined`` (log_id
    -> reason) and the others are compared. Requested logs that do not exist, or a window with no
    log left, are an error."""
    from fleetloop.drift import DriftInputError
    from fleetloop.ingest.importers import load_logs_isolated

    loaded = load_logs_isolated(root, fmt, log_ids)
    quarantined.update({k: str(v) for k, v in loaded.errors.items()})
    logs = loaded.logs
    if validate and logs.num_frames:
        try:
            from fleetloop.ingest.validation import validate_logs
        except ImportError:  # Great Expectations not installed: compared unvalidated, as mine does
            pass
        else:
            result = validate_logs(logs)
            quarantined.update({k: rep.reason for k, rep in result.quarantined.items()})
            logs = result.good
    if not logs.num_frames:
        why = "; ".join(f"{k}: {v}" for k, v in list(quarantined.items())[:3])
        raise DriftInputError(f"{name} window ({root}): "
                              + (f"no log to compare, all {len(quarantined)} quarantined ({why}"
                                 f"{'; ...' if len(quarantined) > 3 else ''})" if why else "no logs found"))
    return logs


def register(app: typer.Typer) -> None:
    @app.command()
    def drift(
        reference: Annotated[Path, typer.Argument(help="Reference logs (e.g. last week, or the training data's logs).")],
        current: Annotated[Path, typer.Argument(help="Current logs (e.g. this week).")],
        format: Annotated[str, typer.Option("--format", "-f", help="kitti-tracking | parquet")] = "kitti-tracking",
        out: Annotated[Path, typer.Option("--out", "-o", help="Directory for drift_report.html and summary.json.")] = Path("drift-out"),
        reference_logs: Annotated[list[str] | None, typer.Option("--reference-logs", "-r",
                                  help="Only these reference log ids (repeatable or comma-separated).")] = None,
        current_logs: Annotated[list[str] | None, typer.Option("--current-logs", "-c",
                                help="Only these current log ids (repeatable or comma-separated).")] = None,
        threshold: Annotated[float, typer.Option(help="Per-feature drift threshold (normed Wasserstein / Jensen-Shannon distance).")] = 0.1,
        drift_share: Annotated[float, typer.Option(help="Dataset drift when at least this share of features drifted.")] = 0.5,
        display_sample: Annotated[int, typer.Option(help="At most this many rows per window are drawn in the HTML (statistics use all).")] = 50_000,
        fail_on_drift: Annotated[bool, typer.Option(help="Exit with code 3 when dataset drift is detected.")] = False,
        validate: Annotated[bool, typer.Option(help="Validate the logs with Great Expectations first (as `fleetloop "
                                               "mine` does); a log that fails is left out, with its reason.")] = True,
        as_json: JsonOpt = False,
    ) -> None:
        """Compute per-frame features of both log sets, compare them with Evidently, write the HTML
        report and summary.json (per-feature score and verdict, share of drifted features, tests,
        agreement trend, slices to boost in the next mining run)."""
        import numpy as np

        from fleetloop.drift import DriftInputError, FeatureParams, monitor_drift
        from fleetloop.drift.features import FeatureError
        from fleetloop.ingest.importers import FORMATS, LogFormatError

        if format not in FORMATS:
            raise typer.BadParameter(f"expected one of {FORMATS}", param_hint="--format")
        problem = _out_dir_problem(out)
        if problem:
            raise fail(f"--out {out}: cannot write: {problem}", 1, as_json=as_json, prefix="drift failed")
        quarantined: dict[str, dict[str, str]] = {"reference": {}, "current": {}}
        try:
            with err.status("Loading logs"):
                ref = _load_window("reference", reference, format, _split(reference_logs), validate, quarantined["reference"])
                cur = _load_window("current", current, format, _split(current_logs), validate, quarantined["current"])
            for window, reasons in quarantined.items():
                for line in grouped(reasons, f"[red]quarantined[/] ({window})", " (not compared)"):
                    err.print(line, highlight=False)
            # numpy's floating-point warnings (Evidently correlating a constant column, a NaN of an
            # unvalidated log) are no news for the user: the summary says which features were skipped
            with err.status(f"Comparing {cur.num_frames:,} current frames with {ref.num_frames:,} reference frames"), \
                    np.errstate(invalid="ignore", divide="ignore"):
                result = monitor_drift(ref, cur, out, params=FeatureParams(), threshold=threshold,
                                       drift_share=drift_share, display_sample=display_sample)
        except (LogFormatError, OSError, DriftInputError, FeatureError) as exc:
            raise fail(exc, 1, as_json=as_json, prefix="drift failed") from None

        s = result.summary
        if as_json:
            print_json({"ok": True, "report": str(out / (s.report_html or "")), "summary_json": str(out / "summary.json"),
                        "quarantined": quarantined, **s.model_dump(mode="json")})
            if fail_on_drift and s.dataset_drift:
                raise typer.Exit(3)
            return
        table = Table(title=f"Drift: {s.current_rows:,} current vs {s.reference_rows:,} reference frames")
        columns: tuple[tuple[str, JustifyMethod], ...] = (
            ("feature", "left"), ("method", "left"), ("score", "right"), ("drift", "center"),
            ("reference", "right"), ("current", "right"))
        for col, justify in columns:
            table.add_column(col, justify=justify)
        for f in sorted(s.features.values(), key=lambda f: (not f.drifted, f.name)):
            if f.kind == "numerical":
                ref_v = "-" if f.reference_mean is None else f"{f.reference_mean:.3g}"
                cur_v = "-" if f.current_mean is None else f"{f.current_mean:.3g}"
            else:
                ref_v = ", ".join(f"{k} {v:.0%}" for k, v in sorted((f.reference_shares or {}).items(), key=lambda kv: -kv[1])[:3])
                cur_v = ", ".join(f"{k} {v:.0%}" for k, v in sorted((f.current_shares or {}).items(), key=lambda kv: -kv[1])[:3])
            score = "-" if f.score is None else f"{f.score:.3f}"
            table.add_row(f.name, f.method, score, "[red]yes[/]" if f.drifted else "no", ref_v, cur_v)
        console.print(table)
        if s.skipped:
            console.print(f"[dim]not compared: {', '.join(k.name for k in s.skipped)}[/]")
        for t in s.agreement_trend:
            if t.reference_mean is not None and t.current_mean is not None:
                console.print(f"{t.feature}: {t.reference_mean:.3f} -> {t.current_mean:.3f} "
                              + ("[red](degraded)[/]" if t.degraded else ""))
        verdict = "[red]DATASET DRIFT[/]" if s.dataset_drift else "[green]no dataset drift[/]"
        console.print(f"{verdict}: {s.n_drifted} of {s.n_features} features drifted ({s.share_drifted:.0%}); "
                      f"tests {s.tests_passed} passed, {s.tests_failed} failed")
        if s.slice_boost:
            console.print("slices to boost: " + ", ".join(f"{k} x{v}" for k, v in s.slice_boost.items()))
        console.print(f"report: {out / (s.report_html or '')}  summary: {out / 'summary.json'}")
        if fail_on_drift and s.dataset_drift:
            raise typer.Exit(3)
