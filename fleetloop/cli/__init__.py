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


def main() -> None:  # pragma: no cover
    app()
