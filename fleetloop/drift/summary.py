"""The machine-readable drift summary (``summary.json``), as pydantic models.

The flow, the CLI and :func:`fleetloop.drift.slices.drifted_slices` read this, never Evidently's
own snapshot format, so an Evidently upgrade only touches :mod:`fleetloop.drift.report`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

SUMMARY_VERSION = 1


class FeatureDrift(BaseModel):
    name: str
    kind: Literal["numerical", "categorical"]
    method: str  # Evidently drift method, e.g. "wasserstein" (normed), "jensenshannon"
    threshold: float
    score: float | None  # the method's value: a distance (drift when >= threshold) or a p-value (drift when < threshold)
    drifted: bool  # over the threshold (Evidently's test failed) and, where checked, p_value <= significance
    over_threshold: bool | None = None  # Evidently's verdict alone (the HTML report shows it)
    p_value: float | None = None  # share of random deals of the windows' logs at least this far apart (None: not checked)
    reference_mean: float | None = None  # numerical: mean over non-missing rows
    current_mean: float | None = None
    reference_missing: float = 0.0  # share of rows where the feature is missing (NaN)
    current_missing: float = 0.0
    reference_shares: dict[str, float] | None = None  # categorical: share of rows per value
    current_shares: dict[str, float] | None = None


class SkippedFeature(BaseModel):
    name: str
    reason: str


class TestOutcome(BaseModel):
    name: str
    status: Literal["pass", "fail"]
    description: str = ""


class DailyMean(BaseModel):
    day: str  # YYYY-MM-DD (UTC)
    mean: float | None
    frames: int


class AgreementTrend(BaseModel):
    """Mean sensor agreement, the production-quality proxy: current window vs reference."""

    feature: str
    reference_mean: float | None
    current_mean: float | None
    delta: float | None  # current - reference
    tolerance: float
    degraded: bool  # current mean below reference mean by more than ``tolerance``
    reference_by_day: list[DailyMean] = Field(default_factory=list)
    current_by_day: list[DailyMean] = Field(default_factory=list)


class DriftSummary(BaseModel):
    version: int = SUMMARY_VERSION
    created_at: str
    evidently_version: str
    reference_rows: int
    current_rows: int
    threshold: float  # per-feature drift threshold of the fixed methods
    drift_share: float  # dataset drift when at least this share of the compared features drifted
    significance: float | None = None  # a feature's p_value must be at most this (None: the check was not applied)
    chance_check: str = ""  # how the log-level check ran, or why it did not (fleetloop.drift.chance)
    num_method: str
    cat_method: str
    features: dict[str, FeatureDrift]
    skipped: list[SkippedFeature] = Field(default_factory=list)
    n_features: int
    n_drifted: int
    share_drifted: float
    dataset_drift: bool
    drifted_features: list[str]
    tests: list[TestOutcome]
    tests_passed: int
    tests_failed: int
    agreement_trend: list[AgreementTrend] = Field(default_factory=list)
    html_sample_rows: dict[str, int]  # rows of each window the HTML report was drawn from
    html_from_sample: bool  # False: the HTML shows exactly the statistics above
    report_html: str | None = None  # file name of the HTML report next to summary.json
    report_html_bytes: int | None = None
    slice_boost: dict[str, float] = Field(default_factory=dict)  # mining params' slice_boost format

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2, allow_nan=False))
            tmp.replace(path)
        except BaseException:  # no orphaned temporary left next to the report
            tmp.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: Path | str) -> DriftSummary:
        return cls.model_validate_json(Path(path).read_text())
