"""Promotion-gate parameters: the ``promote:`` section of params.yaml."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, field_validator


def _a_number(v: Any) -> Any:
    if isinstance(v, bool):  # YAML's yes/no/true/false: float() would take them as 1 and 0
        raise ValueError("should be a number, not true/false")
    if isinstance(v, float) and math.isnan(v):  # else the first failing bound (">= 0") would be named
        raise ValueError("should be a finite number, not nan")
    return v


#: a finite number (an int is fine; true/false, .inf and .nan are not)
Number = Annotated[float, BeforeValidator(_a_number), Field(allow_inf_nan=False)]


class PromoteParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    primary: str = Field("map50", description="the metric a candidate must beat production on")
    better: Literal["higher", "lower"] = Field(
        "higher", description="which way the primary metric improves: higher (mAP) or lower (a miss rate, a loss); "
                              "the floor, the improvement and the slice tolerance follow it")
    min_improvement: Number = Field(0.0, ge=0, description="the primary metric must improve by more than this")
    min_support: StrictInt = Field(20, ge=0, description="slices with fewer objects than this are not gated")
    slice_tolerance: Number = Field(0.03, ge=0, description="largest allowed worsening of a gated slice's metric")
    floor: Number = Field(0.1, ge=0, description="the first model is promoted only when its primary metric reaches this "
                                                  "(at least this; at most this when lower is better)")
    max_latency_ms: Number | None = Field(None, gt=0, description="candidates slower than this (CPU, per image) are rejected")

    @field_validator("primary")
    @classmethod
    def _metric_name(cls, v: str) -> str:
        if not v or v != v.strip() or any(c.isspace() for c in v):
            raise ValueError(f"{v!r} is not a metric name: the name of a metric in metrics.json's overall, e.g. map50")
        return v
