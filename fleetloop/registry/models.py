"""What the registry stores, as pydantic models.

* :class:`Metrics` — ``metrics.json`` from the evaluate stage (extra keys tolerated, kept).
* :class:`ModelVersion` — the immutable version card: files, lineage, metrics, latency.
* :class:`AliasState` — the small object an alias is (moved only by compare-and-swap).
* :class:`AliasMove` — one history entry (``from``/``to`` in JSON).
* :class:`Decision` — a gate or rollback decision recorded on a version.
* :class:`IndexPage` — a page of the listing index (cards of up to 100 versions).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetloop.verdict import Verdict


def utcnow() -> datetime:
    return datetime.now(UTC)


class MetricBlock(BaseModel):
    """One row of metrics: named metric values (``map50``: float or null) plus the counts behind
    them. Metric values are extra keys, so any metric name works."""

    model_config = ConfigDict(extra="allow")

    support: int = 0  # objects counted
    frames: int | None = None

    def value(self, metric: str) -> float | None:
        """The metric's value; ``None`` when absent, null, not a number, or NaN."""
        raw: Any = (self.model_extra or {}).get(metric)
        if raw is None or isinstance(raw, bool) or not isinstance(raw, int | float):
            return None
        v = float(raw)
        return None if math.isnan(v) else v


class Metrics(BaseModel):
    """``metrics.json``: ``{"primary", "overall", "per_class", "slices"}`` (extra keys kept)."""

    model_config = ConfigDict(extra="allow")

    primary: str | None = None
    overall: MetricBlock
    per_class: dict[str, MetricBlock] = Field(default_factory=dict)
    slices: dict[str, MetricBlock] = Field(default_factory=dict)

    def gated_slices(self) -> dict[str, MetricBlock]:
        """The slices the gate compares: ``slices``, plus ``class=<c>`` from ``per_class`` for
        classes the slices do not already name."""
        out = dict(self.slices)
        for name, block in self.per_class.items():
            out.setdefault(f"class={name}", block)
        return out


class Lineage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_version: int | None = None
    code_revision: str | None = None  # git HEAD of the working directory at registration
    params: dict[str, Any] = Field(default_factory=dict)
    training_seconds: float | None = None
    trainer: str | None = None


class ModelVersion(BaseModel):
    """The immutable version card ``versions/<V>.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    version: int = Field(ge=1)
    created_at: datetime
    files: dict[str, str]  # relative posix path -> sha256 hex
    size_bytes: int = 0
    lineage: Lineage
    metrics: Metrics
    latency_ms: float | None = None

    def primary_value(self, metric: str | None = None) -> float | None:
        return self.metrics.overall.value(metric or self.metrics.primary or "map50")


class AliasState(BaseModel):
    """``aliases/<name>.json``. ``history_seq`` is the history entry of the move that set it;
    ``stack`` (production only) the earlier production versions that rollback returns to."""

    model_config = ConfigDict(extra="forbid")

    alias: str
    version: int
    moved_at: datetime
    by: str
    reason: str = ""
    history_seq: int
    stack: list[int] = Field(default_factory=list)


MoveKind = Literal["promote", "rollback", "set"]


class AliasMove(BaseModel):
    """``history/<seq>.json``: one alias move. ``prev_seq`` is the alias's ``history_seq`` when
    the move was planned: a move is real only if it is on the chain from the alias's current
    ``history_seq`` back through ``prev_seq`` (see ``aliases.py``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    seq: int = Field(ge=1)
    alias: str
    from_version: int | None = Field(None, alias="from")
    to_version: int = Field(alias="to")
    who: str
    when: datetime
    why: str = ""
    kind: MoveKind
    prev_seq: int | None = None

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


DecisionAction = Literal["promote", "reject", "noop", "rollback"]


class Decision(BaseModel):
    """A decision about a version (``versions/<V>/decision-<n>.json``): the gate's
    :class:`~fleetloop.verdict.Verdict` (or the rollback's), who asked, and what happened."""

    model_config = ConfigDict(extra="forbid")

    model: str
    version: int
    action: DecisionAction
    promoted: bool  # production moved to ``version`` by this decision
    verdict: Verdict
    who: str
    when: datetime
    why: str = ""
    production_before: int | None = None
    production_after: int | None = None
    history_seq: int | None = None  # the alias move, when there was one
    number: int | None = None  # n in decision-<n>.json, once recorded

    @property
    def reasons(self) -> list[str]:
        return self.verdict.reasons


class IndexPage(BaseModel):
    """``index/<page>.json``: the cards of the versions in one page (a cache of immutable cards)."""

    model_config = ConfigDict(extra="forbid")

    page: int
    cards: dict[int, ModelVersion] = Field(default_factory=dict)
