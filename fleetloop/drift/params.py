"""Drift parameters: the ``drift:`` section of params.yaml."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DriftParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.1, gt=0, description="per-feature drift score at/above which a feature drifted")
    alert_share: float = Field(0.2, gt=0, le=1, description="share of drifted features that raises the alert (chance "
                               "alone drifts about `significance` of them)")
    significance: float = Field(0.05, gt=0, le=1, description="a feature drifts only when random deals of the two "
                                "windows' logs are as far apart with at most this probability (1: the threshold alone)")
    boost_max: float = Field(3.0, ge=1, description="largest mining boost given to a drifted slice")
