"""``fleetloop drift REFERENCE CURRENT``: drift of production-traffic features between two log sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.table import Table

from fleetloop.cli.output import JsonOpt, err, fail, grouped, print_json
from fleetloop.store.atomic import writable_dir_problem

console = Console()


def _split(values: list[str] | None, option: str) -> list[str] | None:
    """Repeatable and/or comma-separated log ids; None (all logs) when the option is not given.
    Given but naming no id (``-r ""``, an empty shell variable) is a usage error, never "all logs"."""
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    if not out:
        raise typer.BadParameter(f"names no log id (got {values!r}); leave it out to compare every log",
                                 param_hint=option)
    return out


def _out_dir_problem(out: Path) -> str | None:
    """Why the report directory ``out`` cannot be written (an existing file, a read-only
    directory or parent), found before the logs are loaded; it is created only when written."""
    if out.exists():
        if not out.is_dir():
            return f"{out} exists and is not a directory"
        from fleetloop.drift.report import HTML_NAME, SUMMARY_NAME

        for name in (HTML_NAME, SUMMARY_NAME):  # replaced by the report: only a file can be
            if (out / name).exists() and not (out / name).is_file():
                return f"{out / name} exists and is not a file"
        return writable_dir_problem(out)
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


def _overlap_warnings(reference: Path, current: Path, ref_ids: list[str], cur_ids: list[str]) -> list[str]:
    """A reference and a current window that share logs (the same directory and ids): their
    frames sit in both windows and pull the comparison toward "no drift"."""
    try:
        same_root = reference.resolve() == current.resolve()
    except OSError:
        same_root = reference == current
    shared = sorted(set(ref_ids) & set(cur_ids)) if same_root else []
    if not shared:
        return []
    what = "the same logs" if set(ref_ids) == set(cur_ids) else f"{len(shared)} log{'s' if len(shared) > 1 else ''}"
    return [f"the reference and current windows share {what} ({', '.join(shared[:5])}"
            f"{', ...' if len(shared) > 5 else ''}): their frames are compared with themselves"]


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
        significance: Annotated[float, typer.Option(help="A feature drifts only when random deals of the windows' logs are "
                                                    "as far apart with at most this probability (1: the threshold alone).")] = 0.05,
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
        # numbers checked before the logs are loaded (a typo is a usage error, found in no time)
        if not threshold > 0:
            raise typer.BadParameter(f"must be > 0, got {threshold}", param_hint="--threshold")
        if not 0 < drift_share <= 1:
            raise typer.BadParameter(f"must be in (0, 1], got {drift_share}", param_hint="--drift-share")
        if not 0 < significance <= 1:
            raise typer.BadParameter(f"must be in (0, 1], got {significance}", param_hint="--significance")
        if display_sample < 1:
            raise typer.BadParameter(f"must be >= 1, got {display_sample}", param_hint="--display-sample")
        ref_ids, cur_ids = _split(reference_logs, "--reference-logs"), _split(current_logs, "--current-logs")
        problem = _out_dir_problem(out)
        if problem:
            raise fail(f"--out {out}: cannot write: {problem}", 1, as_json=as_json, prefix="drift failed")
        quarantined: dict[str, dict[str, str]] = {"reference": {}, "current": {}}
        try:
            with err.status("Loading logs"):
                ref = _load_window("reference", reference, format, ref_ids, validate, quarantined["reference"])
                cur = _load_window("current", current, format, cur_ids, validate, quarantined["current"])
            for window, reasons in quarantined.items():
                for line in grouped(reasons, f"[red]quarantined[/] ({window})", " (not compared)"):
                    err.print(line, highlight=False)
            warnings = _overlap_warnings(reference, current, ref.log_ids, cur.log_ids)
            for w in warnings:
                err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
            # numpy's floating-point warnings (Evidently correlating a constant column, a NaN of an
            # unvalidated log) are no news for the user: the summary says which features were skipped
            with err.status(f"Comparing {cur.num_frames:,} current frames with {ref.num_frames:,} reference frames"), \
                    np.errstate(invalid="ignore", divide="ignore"):
                result = monitor_drift(ref, cur, out, params=FeatureParams(), threshold=threshold,
                                       drift_share=drift_share, display_sample=display_sample, significance=significance)
        except (LogFormatError, OSError, DriftInputError, FeatureError) as exc:
            raise fail(exc, 1, as_json=as_json, prefix="drift failed") from None

        s = result.summary
        if as_json:
            # "ok" is true when the command exits 0: a drift that --fail-on-drift turns into exit 3 is not ok
            print_json({"ok": not (fail_on_drift and s.dataset_drift), "report": str(out / (s.report_html or "")),
                        "summary_json": str(out / "summary.json"), "quarantined": quarantined, "warnings": warnings,
                        **s.model_dump(mode="json")})
            if fail_on_drift and s.dataset_drift:
                raise typer.Exit(3)
            return
        table = Table(title=f"Drift: {s.current_rows:,} current vs {s.reference_rows:,} reference frames")
        columns: tuple[tuple[str, JustifyMethod], ...] = (
            ("feature", "left"), ("method", "left"), ("score", "right"), ("p", "right"), ("drift", "center"),
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
            p_value = "-" if f.p_value is None else f"{f.p_value:.3f}"
            table.add_row(f.name, f.method, score, p_value, "[red]yes[/]" if f.drifted else "no", ref_v, cur_v)
        console.print(table)
        console.print(f"[dim]threshold {s.threshold:g}; log-level check: {escape(s.chance_check)}[/]")
        if s.skipped:
            by_reason: dict[str, list[str]] = {}
            for k in s.skipped:
                by_reason.setdefault(k.reason, []).append(k.name)
            console.print("[dim]not compared: " + "; ".join(f"{', '.join(names)} ({escape(why)})"
                                                           for why, names in by_reason.items()) + "[/]")
        for t in s.agreement_trend:
            if t.reference_mean is not None and t.current_mean is not None:
                console.print(f"{t.feature}: {t.reference_mean:.3f} -> {t.current_mean:.3f} "
                              + ("[red](degraded)[/]" if t.degraded else ""))
        verdict = "[red]DATASET DRIFT[/]" if s.dataset_drift else "[green]no dataset drift[/]"
        named = (": " + ", ".join(s.drifted_features[:8]) + (", ..." if len(s.drifted_features) > 8 else "")
                 if s.drifted_features else "")
        console.print(f"{verdict}: {s.n_drifted} of {s.n_features} features drifted ({s.share_drifted:.0%}){named}; "
                      f"tests {s.tests_passed} passed, {s.tests_failed} failed")
        if s.slice_boost:
            console.print("slices to boost: " + ", ".join(f"{k} x{v}" for k, v in s.slice_boost.items()))
        console.print(f"report: {out / (s.report_html or '')}  summary: {out / 'summary.json'}")
        if fail_on_drift and s.dataset_drift:
            raise typer.Exit(3)
