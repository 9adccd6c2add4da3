"""What every command prints: results on stdout (``--json``: one JSON document), errors as one
line on stderr, and with ``--json`` also ``{"ok": false, "error": ...}`` on stdout, so a machine
reading stdout always gets JSON, whatever happened. Exit codes are the command's own (its help
says which)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON (errors too: {ok: false, error}).")]


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def fail(problem: BaseException | str, code: int = 2, *, as_json: bool = False, prefix: str = "error") -> typer.Exit:
    """Report ``problem`` (stderr; with ``as_json`` also as JSON on stdout) and return the
    ``typer.Exit(code)`` to raise: ``raise fail(exc, as_json=as_json) from None``. Exception text
    is printed literally (never read as rich markup)."""
    message = str(problem)
    if as_json:
        typer.echo(json.dumps({"ok": False, "error": f"{prefix}: {message}" if prefix != "error" else message}))
    err.print(f"[red]{escape(prefix)}:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)
