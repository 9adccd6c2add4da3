"""Training parameters: the ``train:`` section of params.yaml (DVC reads it too)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TrainParams(BaseModel):
    """The trainer is a command the team owns (docs/training.md has the contract). ``{data}``,
    ``{model}``, ``{init}``, ``{out}``, ``{epochs}`` and ``{seed}`` are filled in; the rest is
    passed as is. ``{init}`` is a folder holding the production model's files when
    ``warm_start`` is on and there is a production model, else an empty folder."""

    model_config = ConfigDict(extra="forbid")

    command: str = ("python -m fleetloop.train.reference.train --data {data} --out {model} --epochs {epochs} "
                    "--seed {seed} --init-from {init}")
    predict: str = "python -m fleetloop.train.reference.predict --model {model} --data {data} --out {out}"
    epochs: int = Field(24, ge=1, description="epochs of a training from scratch")
    warm_start: bool = Field(True, description="start from the production model's weights when there is one")
    finetune_epochs: int = Field(8, ge=1, description="epochs of a warm-started training")
    seed: int = 0
    timeout_s: int = Field(3600, ge=1, description="the training subprocess is killed after this long")
