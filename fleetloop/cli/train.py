"""``fleetloop retrain``: train on a dataset version here, register, gate, promote or reject.
The same step runs in Prefect as the ``retrain`` flow (``fleetloop run retrain --wait``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fleetloop.cli.output import JsonOpt, err, fail, print_json

console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def retrain(
        dataset: Annotated[int | None, typer.Option("--dataset", min=1, help="Dataset version (default: the latest).")] = None,
        force: Annotated[bool, typer.Option(
            "--force", help="Train again even when this dataset version was trained with these params and this "
                            "pipeline (e.g. after the trainer's code changed): every stage reruns, the result is "
                            "registered as a new version and gated.")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """dvc repro on a dataset version, register the model, run the promotion gate against
        production: exit 0 when promoted (or already production), 1 when rejected, 2 on errors,
        130 when interrupted (Ctrl-C). A version already trained with the same params and
        pipeline (dvc.yaml, evaluation sets) is reused, not trained again, unless --force."""
        from fleetloop.dataset.config import DatasetError
        from fleetloop.params import ParamsError, load_params
        from fleetloop.registry.errors import RegistryError
        from fleetloop.retrain import retrain_latest
        from fleetloop.settings import get_settings
        from fleetloop.store.objects import StorageError
        from fleetloop.train.workspace import TrainingFailed

        try:
            def starting(version: int) -> None:
                if not as_json:
                    err.print(f"training on dataset-v{version} (dvc repro; minutes) ...")

            def progress(line: str) -> None:  # the trainer's lines (epochs), on stderr: stdout stays the JSON
                err.print(f"  {line}", markup=False, highlight=False)

            out = retrain_latest(get_settings(), load_params(), dataset, who="fleetloop retrain (cli)", on_start=starting,
                                 progress=progress, force=force)
        except (DatasetError, ParamsError, RegistryError, StorageError, TrainingFailed, OSError) as exc:
            raise fail(exc, as_json=as_json) from None
        except KeyboardInterrupt:  # typer would exit 130 silently: no line, no JSON
            raise fail("interrupted by SIGINT; run it again: it trains what was not finished and reuses a model "
                       "already registered", 130, as_json=as_json, prefix="retrain stopped") from None
        if as_json:
            print_json(out.model_dump(mode="json"), ok=out.promoted or out.action == "noop")
        else:
            head = "[green]promoted to production[/]" if out.promoted else f"[red]not promoted[/] ({out.action})"
            console.print(f"model v{out.model_version} on dataset-v{out.dataset_version}: {head}")
            for r in out.reasons:
                console.print(f"  - {r}")
            table = Table("slice", "candidate", "production", "delta", "support", "ok")

            def f(x: float | None) -> str:
                return "" if x is None else f"{x:.3f}"

            for name, row in sorted(out.slices.items()):
                table.add_row(name, f(row.get("candidate")), f(row.get("production")), f(row.get("delta")),
                              str(row.get("support")), "✓" if row.get("ok", True) else "✗")
            if out.slices:
                console.print(table)
        raise typer.Exit(0 if out.promoted or out.action == "noop" else 1)
