"""``fleetloop demo``: the main job on the embedded default."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        logs_per_week: Annotated[int, typer.Option(min=1, max=50)] = 4,
        frames: Annotated[int, typer.Option(min=20, max=5000, help="Frames per log.")] = 200,
        budget: Annotated[int, typer.Option(min=1, help="Frames sent to labeling.")] = 40,
    ) -> None:
        """Run the loop end to end on a generated fleet with local Prefect and Label Studio."""
        from fleetloop.demo import run_demo
        from fleetloop.settings import get_settings

        try:
            r = run_demo(get_settings(), logs_per_week=logs_per_week, frames=frames, budget=budget,
                         say=console.print)
        except Exception as exc:  # the demo's boundary: say what failed, not a traceback
            console.print(f"[red]demo failed:[/] {type(exc).__name__}: {exc}")
            raise typer.Exit(1) from None
        t = Table("", "", title="fleetloop demo" + (" (rerun: the week's cycle had already run)" if r.cycle_was_noop else ""))
        t.add_row("logs / frames", f"{r.logs} logs in the cycle, {r.frames:,} frames ingested, {r.quarantined} quarantined")
        t.add_row("drift", f"{100 * r.drift_share:.0f}% of features drifted; boosts: "
                  + (", ".join(f"{k} ×{v:g}" for k, v in r.slice_boost.items()) or "none"))
        t.add_row("mining", f"{r.mined_frames:,} frames ranked, {r.selected} selected")
        t.add_row("labeling", f"campaign {r.campaign}: {r.tasks} tasks, {r.annotated} annotated, "
                  f"{r.labels_delivered} synced, {r.label_boxes} label boxes delivered")
        t.add_row("Prefect UI", r.prefect_ui)
        t.add_row("Label Studio", r.label_studio)
        console.print(t)
        console.print("Stop the services with: fleetloop services down")
