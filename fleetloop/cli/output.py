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


def grouped(reasons: dict[str, str], label: str, note: str, most: int = 10, examples: int = 3) -> list[str]:
    """Lines for people of ``log_id -> reason``: logs with the same reason on one line (its count
    and a few ids), at most ``most`` lines; the rest is counted (``--json`` lists every log)."""
    by_reason: dict[str, list[str]] = {}
    for log_id, why in reasons.items():
        by_reason.setdefault(why, []).append(log_id)
    lines = []
    for why, ids in list(by_reason.items())[:most]:
        who = (escape(ids[0]) if len(ids) == 1 else
               f"{len(ids)} logs ({', '.join(escape(i) for i in ids[:examples])}{', ...' if len(ids) > examples else ''})")
        lines.append(f"  {label} {who}{note}: {escape(why)}")
    rest = list(by_reason.values())[most:]
    if rest:
        lines.append(f"  {label} ... and {sum(map(len, rest))} more logs for {len(rest)} other reasons "
                     "(--json lists every log)")
    return lines
