"""Training parameters: the ``train:`` section of params.yaml (DVC reads it too)."""

from __future__ import annotations

import shlex
import string

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator

#: the placeholders each command is run with (``fleetloop.train.stages``: the train stage fills
#: ``{data}``, ``{model}``, ``{init}``; the evaluate stage ``{model}``, ``{data}``, ``{out}``; both
#: ``{epochs}`` and ``{seed}``)
PLACEHOLDERS = {
    "command": ("data", "model", "init", "epochs", "seed"),
    "predict": ("model", "data", "out", "epochs", "seed"),
}


def command_problem(template: str, allowed: tuple[str, ...]) -> str | None:
    """Why ``template`` cannot be run with ``allowed`` filled in, or ``None``: empty, a
    placeholder the stage does not fill, a stray brace, an unclosed quote."""
    if not template.strip():
        return "is empty: it must name the program to run"
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"is not a valid template ({exc}; write a literal brace as {{{{ or }}}})"
    unknown = [f"{{{f}}}" for f in fields if f not in allowed]
    if unknown:
        return (f"has the placeholder(s) {', '.join(unknown)}, which are not filled in: "
                f"use only {', '.join('{' + a + '}' for a in allowed)}")
    try:
        argv = shlex.split(template.format(**{a: "x" for a in allowed}))
    except ValueError as exc:
        return f"cannot be split into arguments: {exc}"
    if not argv:
        return "is empty: it must name the program to run"
    return None


class TrainParams(BaseModel):
    """The trainer is a command the team owns (docs/training.md has the contract). ``{data}``,
    ``{model}``, ``{init}``, ``{epochs}`` and ``{seed}`` are filled into ``command``; ``{model}``,
    ``{data}``, ``{out}``, ``{epochs}`` and ``{seed}`` into ``predict``; the rest is passed as is
    (any other placeholder is refused when the params are loaded). ``{init}`` is a folder holding
    the production model's files when ``warm_start`` is on and there is a production model, else
    an empty folder. The integers are strict: ``true`` is not 1."""

    model_config = ConfigDict(extra="forbid")

    command: str = ("python -m fleetloop.train.reference.train --data {data} --out {model} --epochs {epochs} "
                    "--seed {seed} --init-from {init}")
    predict: str = "python -m fleetloop.train.reference.predict --model {model} --data {data} --out {out}"
    epochs: StrictInt = Field(24, ge=1, description="epochs of a training from scratch")
    warm_start: bool = Field(True, description="start from the production model's weights when there is one")
    finetune_epochs: StrictInt = Field(8, ge=1, description="epochs of a warm-started training")
    seed: StrictInt = Field(0, ge=0)  # numpy's and torch's generators take no negative seed
    timeout_s: StrictInt = Field(3600, ge=1, description="the training subprocess is killed after this long")

    @field_validator("command", "predict")
    @classmethod
    def _runnable(cls, v: str, info: ValidationInfo) -> str:
        problem = command_problem(v, PLACEHOLDERS[info.field_name or "command"])
        if problem is not None:
            raise ValueError(f"{v!r} {problem}")
        return v
