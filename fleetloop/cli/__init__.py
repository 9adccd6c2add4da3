"""The ``fleetloop`` command line. Each area registers its commands from its own module;
heavy libraries are imported inside the commands, so ``fleetloop --help`` is instant."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="fleetloop",
    help="fleetloop: mine fleet logs, label, version, retrain, promote, monitor drift.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Modules with a register(app) function add top-level commands; modules with an `app` add a group.
_COMMANDS = ["mine", "drift", "logs", "orchestration", "demo"]
_GROUPS = {"services": "services", "label": "label"}

for _name in _COMMANDS:
    try:
        _mod = importlib.import_module(f"fleetloop.cli.{_name}")
    except ModuleNotFoundError as exc:  # pragma: no cover - only while an area is being written
        if exc.name != f"fleetloop.cli.{_name}":
            raise
        continue
    _mod.register(app)
for _group, _name in _GROUPS.items():
    try:
        _mod = importlib.import_module(f"fleetloop.cli.{_name}")
    except ModuleNotFoundError as exc:  # pragma: no cover
        if exc.name != f"fleetloop.cli.{_name}":
            raise
        continue
    app.add_typer(_mod.app, name=_group)


def main() -> None:
    """The console script: errors that reach the top become one clear line (exit 1), not a
    traceback. ``FLEETLOOP_DEBUG=1`` shows the traceback."""
    import os
    import sys

    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except Exception as exc:
        if os.environ.get("FLEETLOOP_DEBUG"):
            raise
        from pydantic import ValidationError

        if isinstance(exc, ValidationError) and exc.title == "Settings":
            lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            print("fleetloop: invalid settings (FLEETLOOP_* environment or .env):\n" + "\n".join(lines),
                  file=sys.stderr)
            raise SystemExit(2) from None
        print(f"fleetloop: {type(exc).__name__}: {exc}\n(FLEETLOOP_DEBUG=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
