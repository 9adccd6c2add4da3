"""``fleetloop demo``: the main job on the embedded default (see fleetloop/demo.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console, JustifyMethod
from rich.table import Table

from fleetloop.cli.output import JsonOpt, describe, err, fail

if TYPE_CHECKING:
    from fleetloop.demo import DemoResult, WeekRow

console = Console()


def _f(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        weeks: Annotated[int, typer.Option(min=0, max=52, help="Simulated weeks to run after week 0.")] = 3,
        reset: Annotated[bool, typer.Option("--reset", help="Start over: remove the demo's data first.")] = False,
        as_json: JsonOpt = False,
        seed: Annotated[int, typer.Option(help="Seed of the simulated world.")] = 0,
        logs_per_week: Annotated[int, typer.Option(min=2, max=200, help="Drive logs per week.")] = 12,
        frames_per_log: Annotated[int, typer.Option(min=8, max=1000, help="Frames per log (10 Hz).")] = 40,
        seed_logs: Annotated[int, typer.Option(min=2, max=500, help="Week-0 logs forming the labeled seed set.")] = 24,
        budget: Annotated[int, typer.Option(min=1, help="Frames sent to labeling per week.")] = 120,
        eval_frames: Annotated[int, typer.Option(min=16, help="Frames of the fixed evaluation set.")] = 480,
        epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs (default: params.yaml).")] = None,
    ) -> None:
        """The loop making a camera model better: a simulated fleet drives with the production
        model, mining finds its mistakes, a simulated team labels them in Label Studio, the
        dataset grows, the model retrains and is promoted when the gate says it is better.
        Reruns continue with the next week; --reset starts over."""
        try:  # its imports take a moment: Ctrl-C there is an interruption too, not "Aborted!"
            from fleetloop.demo import (
                DemoBusy,
                DemoConfig,
                DemoHomeError,
                DemoInterrupted,
                DemoStateError,
                rows_json,
                run_demo,
            )
            from fleetloop.settings import get_settings
        except KeyboardInterrupt:
            raise fail("interrupted by SIGINT before it started anything", 130, as_json=as_json,
                       prefix="demo stopped") from None
        try:  # invalid FLEETLOOP_* settings: one line, exit 2, as every command says it
            settings = get_settings()
        except Exception as exc:
            raise fail(exc, 2, as_json=as_json, prefix="demo failed") from None

        config = DemoConfig(seed=seed, logs_per_week=logs_per_week, frames_per_log=frames_per_log,
                            seed_logs=seed_logs, budget=budget, eval_frames=eval_frames, epochs=epochs)
        say = (lambda msg: err.print(msg, highlight=False)) if as_json else (lambda msg: console.print(msg, highlight=False))
        try:
            result = run_demo(settings, config, weeks=weeks, reset_first=reset, say=say)
        except DemoInterrupted as exc:  # Ctrl-C or SIGTERM: which week a rerun redoes; 128 + the signal
            raise fail(str(exc), 128 + exc.signal, as_json=as_json, prefix="demo stopped") from None
        except KeyboardInterrupt:
            raise fail("interrupted by SIGINT: a rerun continues where the demo left off", 130, as_json=as_json,
                       prefix="demo stopped") from None
        except (DemoBusy, DemoHomeError, DemoStateError) as exc:  # their message says it all
            raise fail(str(exc), 1, as_json=as_json, prefix="demo failed") from None
        except Exception as exc:  # the demo's boundary: say what failed in one line, not a traceback
            raise fail(f"{type(exc).__name__}: {describe(exc)}", 1, as_json=as_json, prefix="demo failed") from None
        if as_json:
            typer.echo(rows_json(result))
            return
        print_table(result)
        console.print(f"Prefect UI:   {result.prefect_ui}  (flow runs, artifacts: promotion decisions, mined frames)")
        console.print(f"Label Studio: {result.label_studio}  (login {result.label_studio_login})")
        if result.plot:
            console.print(f"Plot:         {result.plot}")
        console.print(f"State:        {result.state}  (rerun: next week; --reset: start over; "
                      "fleetloop services down stops the services)")


def _outcome(r: WeekRow) -> str:
    if not r.model_version:
        return r.why
    if r.promoted:
        return f"v{r.model_version} promoted" + (f": {r.why}" if r.why and r.why != "promoted" else "")
    return f"v{r.model_version} not promoted: {r.why}"


#: Below this width the table's number columns would be cut: print a paragraph per week.
NARROW = 72


def print_table(result: DemoResult) -> None:
    """The weekly table as a person reads it in 80 columns: numbers never wrap, the week's
    outcome (the candidate model, promoted or not and why) takes what is left. In a terminal
    narrower than the numbers need, one paragraph per week instead."""
    from rich import box

    if console.width < NARROW:
        console.print("fleetloop demo: mAP@0.5 of the production model, week by week", style="bold")
        for r in result.rows:
            console.print(f"week {r.week} ({r.iso_week}): {r.labels_spent:,} labels, dataset v{r.dataset_version}, "
                          f"production {f'v{r.production}' if r.production else '-'}; mAP {_f(r.map_overall)}, rain "
                          f"{_f(r.map_rain)}, night {_f(r.map_night)}, green cones {_f(r.map_green)}; {_outcome(r)}",
                          highlight=False)
        return

    t = Table(title="fleetloop demo: mAP@0.5 of the production model, week by week", box=box.SIMPLE_HEAD,
              pad_edge=False, collapse_padding=True,
              caption="labels: frames labeled so far, seed set included")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("week", "left"), ("labels", "right"), ("data", "left"), ("prod.", "left"), ("mAP", "right"),
        ("rain", "right"), ("night", "right"), ("green", "right"))
    for name, justify in columns:
        t.add_column(name, justify=justify, no_wrap=True)
    t.add_column("model", ratio=1, min_width=12, overflow="fold")
    for r in result.rows:
        t.add_row(f"{r.week} {r.iso_week.rpartition('-')[2]}", f"{r.labels_spent:,}", f"v{r.dataset_version}",
                  f"v{r.production}" if r.production else "", _f(r.map_overall), _f(r.map_rain), _f(r.map_night),
                  _f(r.map_green), _outcome(r))
    console.print(t)
