"""Dataset growth parameters: the ``grow:`` section of params.yaml."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator


class GrowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    splits: dict[str, float] = Field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15},
                                     description="share of logs per split (a stable function of the log id)")
    shard_rows: int = Field(5000, ge=1, description="frames per Parquet shard inside a growth batch")
    with_images: bool = Field(True, description="pack the labeled frames' camera images into the batch")
    rare_share: float = Field(0.05, ge=0, le=1, description="a class with less than this share of a version's "
                              "objects counts as rare (the manifest's `rare` slice)")

    @field_validator("splits")
    @classmethod
    def _splits(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != {"train", "val", "test"}:
            raise ValueError(f"splits must name train, val and test, got {sorted(v)}")
        if not all(math.isfinite(r) for r in v.values()):  # NaN passes every comparison below
            raise ValueError(f"split ratios must be finite numbers, got {v}")
        if any(r < 0 for r in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6 or v["train"] <= 0:
            raise ValueError(f"split ratios must be >= 0, sum to 1 and give train a share, got {v}")
        return v
