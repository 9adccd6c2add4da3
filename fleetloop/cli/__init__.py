"""The ``fleetloop`` command line. Each area registers its commands from its own module;
heavy libraries are imported inside the commands, so ``fleetloop --help`` is instant."""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from typer.core import TyperGroup


class _LoopOrder(TyperGroup):
    """``fleetloop --help`` lists the commands in the loop's order (:data:`PANELS`)."""

    def list_commands(self, ctx: Any) -> list[str]:
        order = [name for names in PANELS.values() for name in names]
        return sorted(super().list_commands(ctx), key=lambda n: order.index(n) if n in order else len(order))


#: ``fleetloop --help`` lists the commands in these panels, in this order.
PANELS = {
    "The loop, step by step": ["ingest", "mine", "label", "dataset", "retrain", "registry", "drift"],
    "Running it": ["demo", "services", "deploy", "worker", "run"],
    "Looking around": ["logs", "sample"],
}

app = typer.Typer(
    cls=_LoopOrder,
    name="fleetloop",
    help="fleetloop: mine fleet logs, label, version, retrain, promote, monitor drift.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

from fleetloop.cli import dataset, demo, drift, label, logs, mine, orchestration, registry, services, train  # noqa: E402

for _module in (mine, drift, logs, orchestration, train, demo):  # top-level commands
    _module.register(app)
app.add_typer(services.app, name="services")
app.add_typer(label.app, name="label")
app.add_typer(dataset.app, name="dataset")
app.add_typer(registry.app, name="registry")


def _one_line_summaries(group: typer.Typer) -> None:
    """Give each command a one-line summary for the command lists of ``--help``: typer's rich
    formatter keeps a docstring's single line breaks there, so a wrapped first paragraph came out
    as ragged lines. The command's own ``--help`` still shows the whole docstring."""
    import inspect

    for info in group.registered_commands:
        if info.short_help is None and info.callback is not None:
            first = (info.help or inspect.getdoc(info.callback) or "").split("\n\n")[0]
            info.short_help = " ".join(first.split()) or None
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _one_line_summaries(sub.typer_instance)


_one_line_summaries(app)


def _panels(group: typer.Typer) -> None:
    """Each command's panel in ``--help`` (:data:`PANELS`; "Other" for one not listed there)."""
    panel = {name: title for title, names in PANELS.items() for name in names}
    infos: list[Any] = [*group.registered_commands, *group.registered_groups]
    for info in infos:
        name = info.name or (info.callback.__name__.replace("_", "-") if info.callback else "")
        info.rich_help_panel = panel.get(name, "Other")


_panels(app)


def main() -> None:
    """The console script: errors that reach the top become one clear line (exit 1), not a
    traceback. ``FLEETLOOP_DEBUG=1`` shows the traceback. Ctrl-C is exit 130 with one line (the
    command's own, or a generic one; JSON too with ``--json``). A usage error (an unknown or missing
    option, a bad value) is shown as typer shows it, exit 2; with ``--json`` stdout also gets
    ``{"ok": false, "error": ...}``, like every other error of a ``--json`` command."""
    import os
    import sys

    from fleetloop.cli.output import REPORTED

    REPORTED.clear()
    try:
        code = app(standalone_mode=False)  # typer.Exit(n) comes back as n; a finished command as None
    except typer.TyperException as exc:  # click's ClickException: the command line itself is wrong
        _usage_error(exc, as_json="--json" in sys.argv[1:])
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        raise SystemExit(1) from None
    except SystemExit:
        raise
    except Exception as exc:
        if os.environ.get("FLEETLOOP_DEBUG"):
            raise
        import json

        from pydantic import ValidationError
        from pydantic_settings import SettingsError

        from fleetloop.cli.output import describe

        if isinstance(exc, SettingsError) or (isinstance(exc, ValidationError) and exc.title == "Settings"):
            message, code, hint = describe(exc), 2, ""
        else:
            message, code, hint = f"{type(exc).__name__}: {describe(exc)}", 1, "\n(FLEETLOOP_DEBUG=1 shows the traceback)"
        if "--json" in sys.argv[1:]:
            print(json.dumps({"ok": False, "error": message}))
        print(f"fleetloop: {message}{hint}", file=sys.stderr)
        raise SystemExit(code) from None
    if code == 130 and 130 not in REPORTED:  # typer's own Exit(130) on Ctrl-C, which says nothing
        message = "interrupted by SIGINT (Ctrl-C); what finished is kept: run it again"
        if "--json" in sys.argv[1:]:
            import json

            print(json.dumps({"ok": False, "error": message}))
        print(f"fleetloop: {message}", file=sys.stderr)
    raise SystemExit(code if isinstance(code, int) else 0)


def _usage_error(exc: typer.TyperException, *, as_json: bool) -> NoReturn:
    """Show a usage error as typer does (usage, hint, the message in a panel; with no arguments
    at all, the help) and exit with its code; with ``--json`` also one JSON document on stdout."""
    import json

    from typer import rich_utils

    if as_json and exc.__class__.__name__ != "NoArgsIsHelpError":
        typer.echo(json.dumps({"ok": False, "error": f"usage: {exc.format_message()}"}))
    rich_utils.rich_format_error(exc)  # type: ignore[arg-type]
    raise SystemExit(getattr(exc, "exit_code", 2))
