"""What the registry stores, as pydantic models.

* :class:`Metrics` — ``metrics.json`` from the evaluate stage (extra keys tolerated, kept).
* :class:`Registration` — what :meth:`Registry.register` is given, checked before anything is written.
* :class:`ModelVersion` — the immutable version card: files, lineage, metrics, latency.
* :class:`AliasState` — the small object an alias is (moved only by compare-and-swap).
* :class:`AliasMove` — one history entry (``from``/``to`` in JSON).
* :class:`Decision` — a gate or rollback decision recorded on a version.
* :class:`IndexPage` — a page of the listing index (cards of up to 100 versions).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from fleetloop.registry.errors import CorruptRecord
from fleetloop.verdict import Verdict

#: The validation context of the write boundary (:class:`Registration`, ``Registry.register``):
#: metrics are checked (counts, finite values, fractions within [0, 1], the primary metric) only
#: under it, so version cards stored before these checks still load (cards are immutable).
REGISTERING: dict[str, Any] = {"registering": True}

#: Metrics whose names start with one of these (case-insensitive) are fractions: average
#: precision / recall summaries (the evaluate stage's ``map50``, COCO-style ``map``, ``ap50``,
#: ``mar100``), precision, recall, F1, accuracy, IoU. Their values must lie in [0, 1]. Any other
#: metric (a loss, a latency, frames per second...) only has to be finite.
FRACTION_METRIC_PREFIXES = ("map", "ap", "mar", "precision", "recall", "f1", "accuracy", "iou", "miou")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _registering(info: ValidationInfo) -> bool:
    return bool(isinstance(info.context, dict) and info.context.get("registering"))


def is_fraction_metric(name: str) -> bool:
    return name.lower().startswith(FRACTION_METRIC_PREFIXES)


def metric_value_problem(name: str, raw: Any) -> str | None:
    """Why ``raw`` cannot be the value of metric ``name`` in a new version, or ``None``: a metric
    value is null (not measured) or a finite number; a fraction metric's within [0, 1]."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        # other extra keys of a block are tolerated (kept, never gated); a fraction must be a number
        return f"{name} is {raw!r}: a metric value is a number or null" if is_fraction_metric(name) else None
    v = float(raw)
    if not math.isfinite(v):
        return f"{name} is {v}: a metric value is a finite number or null (not measured)"
    if is_fraction_metric(name) and not 0.0 <= v <= 1.0:
        return f"{name} is {v:g}: it is a fraction, within [0, 1]"
    return None


class MetricBlock(BaseModel):
    """One row of metrics: named metric values (``map50``: float or null) plus the counts behind
    them. Metric values are extra keys, so any metric name works. Under :data:`REGISTERING` the
    counts must be >= 0 and the values pass :func:`metric_value_problem`."""

    model_config = ConfigDict(extra="allow")

    support: int = 0  # objects counted
    frames: int | None = None

    @field_validator("support", "frames")
    @classmethod
    def _count(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and v < 0 and _registering(info):
            raise ValueError(f"a count cannot be negative, got {v}")
        return v

    @model_validator(mode="after")
    def _values(self, info: ValidationInfo) -> MetricBlock:
        if _registering(info):
            for name, raw in (self.model_extra or {}).items():
                problem = metric_value_problem(name, raw)
                if problem is not None:
                    raise ValueError(problem)
        return self

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

    @model_validator(mode="after")
    def _primary(self, info: ValidationInfo) -> Metrics:
        """Under :data:`REGISTERING`: ``primary`` names a metric of ``overall`` (a number, or null
        when the evaluation had nothing to measure it on: the gate then rejects the version)."""
        if not _registering(info) or self.primary is None:
            return self
        extra = self.overall.model_extra or {}
        if self.primary not in extra:
            have = ", ".join(sorted(k for k, v in extra.items() if v is None or isinstance(v, int | float))) or "none"
            raise ValueError(f"primary metric {self.primary!r} is not in overall (its metrics: {have})")
        raw = extra[self.primary]
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int | float)):
            raise ValueError(f"primary metric {self.primary!r} of overall is {raw!r}, not a number")
        return self

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
    init_version: int | None = None  # the version whose weights the training started from (warm start)
    pipeline: str | None = None  # sha256 of the training pipeline's stages and evaluation sets (retrain.pipeline_digest)


class Registration(BaseModel):
    """What a new version is registered with, validated under :data:`REGISTERING` before any file
    is uploaded or any card claimed (the write boundary: a version card is create-only, so what
    is wrong here could never be corrected). :class:`Lineage` and :class:`ModelVersion` stay
    lenient so cards stored before these checks still load."""

    model_config = ConfigDict(extra="forbid")

    metrics: Metrics
    dataset_version: int | None = Field(None, ge=1, description="the dataset version trained on (dataset-vN)")
    code_revision: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    training_seconds: float | None = Field(None, ge=0, allow_inf_nan=False)
    trainer: str | None = None
    latency_ms: float | None = Field(None, ge=0, allow_inf_nan=False, description="CPU latency per image")
    init_version: int | None = Field(None, ge=1, description="the version the training started from")
    pipeline: str | None = Field(None, pattern=r"^[0-9a-f]{64}\z",
                                 description="sha256 of the training pipeline and evaluation sets")

    def lineage(self) -> Lineage:
        return Lineage(dataset_version=self.dataset_version, code_revision=self.code_revision,
                       params=self.params, training_seconds=self.training_seconds, trainer=self.trainer,
                       init_version=self.init_version, pipeline=self.pipeline)


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
    version: int = Field(ge=1)
    moved_at: datetime
    by: str
    reason: str = ""
    history_seq: int = Field(ge=1)
    stack: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)


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


R = TypeVar("R", bound=BaseModel)


def parse_record(cls: type[R], data: bytes, key: str, what: str) -> R:
    """``data`` (the object at ``key``) as a ``cls``; :class:`CorruptRecord` naming the key and
    the first problem when it is not one (truncated, garbage, wrong fields)."""
    try:
        return cls.model_validate_json(data)
    except ValidationError as exc:
        raise CorruptRecord(f"{key} is not a valid {what}: {validation_problem(exc)}") from None


def validation_problem(exc: ValidationError) -> str:
    """The first problem of a validation error, one line: ``where: what``."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = " ".join(str(first["msg"]).removeprefix("Value error, ").split())
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return (f"{where}: " if where else "") + msg + more
