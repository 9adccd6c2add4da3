"""``fleetloop dataset``: grow the DVC-versioned dataset, show it, check a version out.

Where the repository and its remotes are comes from the settings (:func:`fleetloop.dataset.
dataset_config`); what a growth step does from ``params.yaml`` ``grow:``. Exit codes: 0 done
(``grow`` with nothing new included), 2 nothing done (a clear one-line error, no traceback).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fleetloop.cli.output import JsonOpt, fail, keep_whole, print_json
from fleetloop.settings import redact

if TYPE_CHECKING:
    from fleetloop.dataset.config import DatasetConfig

app = typer.Typer(help="The versioned dataset (git + DVC): grow, status, history, checkout.", no_args_is_help=True)
console = Console()



def _boundary_errors() -> tuple[type[Exception], ...]:
    from fleetloop.dataset.config import DatasetError
    from fleetloop.params import ParamsError
    from fleetloop.store.locks import LockTimeout
    from fleetloop.store.objects import StorageError

    return (DatasetError, ParamsError, StorageError, LockTimeout, OSError)


def _config() -> DatasetConfig:
    from fleetloop.dataset.config import dataset_config
    from fleetloop.settings import get_settings

    return dataset_config(get_settings())


@app.command()
def grow(as_json: JsonOpt = False) -> None:
    """Append the labels delivered since the last version as the next version (validated, data
    pushed, then tagged). Prints the new version, or "nothing new"; exit 0 either way."""
    from fleetloop.dataset.growth import grow as do_grow
    from fleetloop.ingest.validation import validate_labels
    from fleetloop.params import load_params
    from fleetloop.settings import get_settings
    from fleetloop.store.objects import get_store

    try:
        params = load_params().grow
        result = do_grow(get_store(get_settings()), _config(), params, validate=validate_labels)
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    if as_json:
        print_json(result.model_dump(mode="json"), ok=True)
        return
    for note in result.recovered:
        console.print(f"  recovered: {escape(note)}", highlight=False)
    console.print(f"[green]{escape(result.message)}[/]" if result.created else escape(result.message),
                  highlight=False)
    left_out = {"invalid": result.invalid, "stale": result.stale, "missing images": result.missing_images}
    if any(left_out.values()):
        console.print("  " + ", ".join(f"{n} {what}" for what, n in left_out.items() if n), highlight=False)
        for p in result.problems[:20]:
            where = (p.log_id + (f" frame {p.frame}" if p.frame is not None else "") if p.log_id is not None
                     else (p.shard or ""))
            console.print(f"  [yellow]{p.kind}[/] {escape(where)}: {escape(p.message)}", highlight=False)
    for w in result.warnings:
        console.print(f"  [yellow]warning:[/] {escape(w)}", highlight=False)


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """The newest version: frames, objects, splits, where the repository and remotes are."""
    from fleetloop.dataset.versions import status as do_status

    try:
        st = do_status(_config())
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    if as_json:
        print_json(st.model_dump(mode="json"), ok=True)
        return
    if st.version == 0:
        console.print(f"no version yet (repository {st.repo}, DVC remote {redact(st.remote)})", highlight=False)
        return
    splits = ", ".join(f"{name} {s.frames:,}" for name, s in st.splits.items())
    console.print(f"[bold]{st.tag}[/]: {st.frames:,} frames, {st.objects:,} objects ({splits})", highlight=False)
    console.print(f"  repository {st.repo}; DVC remote {redact(st.remote)}; git remote {redact(st.git_remote or '-')}",
                  highlight=False)
    if st.pending:
        console.print("  [yellow]a killed grow left an untagged commit: the next grow finishes it[/]")


@app.command()
def history(as_json: JsonOpt = False) -> None:
    """Every version, oldest first."""
    from fleetloop.dataset.versions import history as do_history

    try:
        versions = do_history(_config())
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    if as_json:
        print_json([v.model_dump(mode="json") for v in versions])
        return
    if not versions:
        console.print("no version yet: `fleetloop dataset grow` makes the first from the synced labels "
                      "(the weekly cycle grows it every week)", highlight=False)
        return
    table = Table("version", "tag", "frames", "objects", "batches", "campaigns", "created_at")
    for v in versions:
        table.add_row(str(v.version), v.tag, f"{v.frames:,}", f"{v.objects:,}", str(v.batches),
                      ", ".join(v.campaigns), v.created_at.isoformat(timespec="seconds"))
    console.print(keep_whole(table, "tag", "created_at"))


@app.command()
def checkout(
    version: Annotated[int, typer.Argument(min=1, help="Dataset version N (tag dataset-vN).")],
    to: Annotated[Path, typer.Option("--to", help="An empty or new directory to materialise it in.")],
    as_json: JsonOpt = False,
) -> None:
    """Materialise version N from the git and DVC remotes into an empty directory."""
    from fleetloop.dataset.versions import checkout as do_checkout

    try:
        result = do_checkout(version, to, _config())
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    if as_json:
        print_json({"version": result.version, "frames": result.frames, "path": result.path,
                     "tag": result.tag, "objects": result.objects, "batches": result.batches}, ok=True)
        return
    console.print(f"{result.tag}: {result.frames:,} frames, {result.objects:,} objects in {result.path}",
                  highlight=False)
