"""What every command prints: results on stdout (``--json``: one JSON document), errors as one
line on stderr, and with ``--json`` also ``{"ok": false, "error": ...}`` on stdout, so a machine
reading stdout always gets JSON, whatever happened. Exit codes are the command's own (its help
says which). Credentials embedded in URLs (``https://user:pass@host``) are masked in both
(:func:`fleetloop.settings.redact`)."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fleetloop.settings import redact

err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON (errors too: {ok: false, error}).")]


def print_json(obj: Any, *, ok: bool | None = None) -> None:
    """``obj`` as one valid JSON document: NaN and infinities become null (JSON has none), and
    text that is not UTF-8 (a file name's undecodable bytes) is escaped rather than written raw.
    ``ok`` (a document that is an object): its first key, true when the command exits 0."""
    if ok is not None and isinstance(obj, dict):
        obj = {"ok": ok, **obj}
    text = json.dumps(_finite(obj), indent=2, default=str, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(_finite(obj), indent=2, default=str)
    typer.echo(redact(text))


def describe(exc: BaseException) -> str:
    """An exception in one line: a pydantic ValidationError as ``field: problem; ...`` (its own
    text spans lines and links to pydantic's docs), invalid settings named as such. Credentials
    in URLs are masked."""
    return redact(_describe(exc))


def _describe(exc: BaseException) -> str:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    if isinstance(exc, SettingsError):
        if isinstance(exc.__cause__, json.JSONDecodeError):  # a section set as JSON; its text may hold secrets
            why = exc.__cause__
            return (f"invalid settings (FLEETLOOP_* environment or .env): {exc}: not valid JSON ({why.msg} at "
                    f"character {why.pos})")
        return f"invalid settings (FLEETLOOP_* environment or .env): {exc}"
    if not isinstance(exc, ValidationError):
        return str(exc)
    from fleetloop.problems import problems

    found = "; ".join(f"{p.where or 'value'}: {p.what}" for p in problems(exc))
    if exc.title == "Settings":
        return f"invalid settings (FLEETLOOP_* environment or .env): {found}"
    return found


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


#: codes of the errors a command reported itself (through :func:`fail`), so the console script
#: adds no line of its own (e.g. to an interruption the command already worded)
REPORTED: list[int] = []


def fail(problem: BaseException | str, code: int = 2, *, as_json: bool = False, prefix: str = "error") -> typer.Exit:
    """Report ``problem`` (stderr; with ``as_json`` also as JSON on stdout) and return the
    ``typer.Exit(code)`` to raise: ``raise fail(exc, as_json=as_json) from None``. Exception text
    is printed literally (never read as rich markup)."""
    message = describe(problem) if isinstance(problem, BaseException) else redact(problem)
    if as_json:
        typer.echo(json.dumps({"ok": False, "error": f"{prefix}: {message}" if prefix != "error" else message}))
    err.print(f"[red]{escape(prefix)}:[/] {escape(message)}", highlight=False)
    REPORTED.append(code)
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


def keep_whole(table: Table, *headers: str) -> Table:
    """Never cut or wrap the cells of these columns (dates, names): at any terminal width the
    other columns wrap instead. Call it after the rows are added."""
    for column in table.columns:
        if column.header in headers:
            column.no_wrap = True
            column.min_width = max([cell_len(str(c)) for c in column.cells] + [cell_len(str(column.header))])
    return table
