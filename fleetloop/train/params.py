"""Training parameters: the ``train:`` section of params.yaml (DVC reads it too)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TrainParams(BaseModel):
    """The trainer is a command the team owns (docs/training.md has the contract). ``{data}``,
    ``{model}``, ``{out}``, ``{epochs}`` and ``{seed}`` are filled in; the rest is passed as is."""

    model_config = ConfigDict(extra="forbid")

    command: str = "python -m fleetloop.train.reference.train --data {data} --out {model} --epochs {epochs} --seed {seed}"
    predict: str = "python -m fleetloop.train.reference.predict --model {model} --data {data} --out {out}"
    epochs: int = Field(12, ge=1)
    seed: int = 0
    timeout_s: int = Field(3600, ge=1, description="the training subprocess is killed after this long")
