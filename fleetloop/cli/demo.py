"""``fleetloop demo``: the main job on the embedded default (see fleetloop/demo.py)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fleetloop.cli.output import JsonOpt, err, fail

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
        from fleetloop.demo import DemoConfig, rows_json, run_demo
        from fleetloop.settings import get_settings

        config = DemoConfig(seed=seed, logs_per_week=logs_per_week, frames_per_log=frames_per_log,
                            seed_logs=seed_logs, budget=budget, eval_frames=eval_frames, epochs=epochs)
        say = (lambda msg: err.print(msg, highlight=False)) if as_json else (lambda msg: console.print(msg, highlight=False))
        try:
            result = run_demo(get_settings(), config, weeks=weeks, reset_first=reset, say=say)
        except Exception as exc:  # the demo's boundary: say what failed, not a traceback
            raise fail(f"{type(exc).__name__}: {exc}", 1, as_json=as_json, prefix="demo failed") from None
        if as_json:
            typer.echo(rows_json(result))
            return
        t = Table("week", "labels spent", "dataset", "candidate", "production", "mAP", "rain", "night",
                  "green cones", "promoted", "why", title="fleetloop demo: the production model, week by week")
        for r in result.rows:
            t.add_row(f"{r.week} ({r.iso_week})", str(r.labels_spent), f"v{r.dataset_version}",
                      f"v{r.model_version}" if r.model_version else "", f"v{r.production}" if r.production else "",
                      _f(r.map_overall), _f(r.map_rain), _f(r.map_night), _f(r.map_green),
                      "yes" if r.promoted else "no", r.why)
        console.print(t)
        console.print(f"Prefect UI:   {result.prefect_ui}  (flow runs, artifacts: promotion decisions, mined frames)")
        console.print(f"Label Studio: {result.label_studio}  (login {result.label_studio_login})")
        if result.plot:
            console.print(f"Plot:         {result.plot}")
        console.print(f"State:        {result.state}  (rerun: next week; --reset: start over; "
                      "fleetloop services down stops the services)")
