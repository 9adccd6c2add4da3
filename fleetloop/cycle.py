"""One weekly cycle as plain, typed values: the window it covers, its plan, and its record.

A cycle for ISO week ``W`` runs early in ``W`` (Monday 03:00 UTC by default) and covers the logs
that *arrived* during the previous week, ``[start(W) - 7 days, start(W))``; drift compares that
window with the one before it. Every step uses this one definition of "this week".
:func:`plan_cycle` reads the arrival index once; the plan's key (the week, the logs' content hashes,
the loop's params and the caller's ``extra``: the flow's run options and the training pipeline's
digest) makes a second run of the same cycle a no-op. The record is what the next
run and a person read: one entry per step, each ``ran``, ``skipped`` (with the reason) or
``failed`` (with the error).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from fleetloop.params import LoopParams
from fleetloop.store import keys
from fleetloop.store.logs import LogManifest, list_logs
from fleetloop.store.objects import Store

WEEK_DAYS = 7


class CycleInputError(ValueError):
    """A cycle parameter is not valid (e.g. a week that is not ``YYYY-Www``)."""


def iso_week(t: datetime) -> str:
    year, week, _ = t.isocalendar()
    return f"{year}-W{week:02d}"


def week_start(week: str) -> datetime:
    """Monday 00:00 UTC of ISO week ``YYYY-Www``."""
    try:
        year, w = week.split("-W")
        return datetime.combine(date.fromisocalendar(int(year), int(w), 1), time(), tzinfo=UTC)
    except ValueError as exc:
        raise CycleInputError(f"invalid week {week!r}: expected YYYY-Www, e.g. 2026-W49") from exc


class Window(BaseModel):
    """Logs that arrived in ``[start, end)``."""

    start: datetime
    end: datetime

    def contains(self, t: datetime) -> bool:
        return self.start <= t < self.end


def cycle_window(week: str) -> Window:
    """The logs a cycle of ``week`` covers: those that arrived during the week before it."""
    end = week_start(week)
    return Window(start=end - timedelta(days=WEEK_DAYS), end=end)


def reference_window(week: str) -> Window:
    """The window drift compares the cycle's window with: the week before it."""
    w = cycle_window(week)
    return Window(start=w.start - timedelta(days=WEEK_DAYS), end=w.start)


def check_due(week: str, now: datetime) -> None:
    """Refuse a cycle whose week has not begun at ``now``: its window (the week before it) is still
    open, so it would mine a partial week and record that as the week's cycle."""
    start = week_start(week)
    if start > now:
        raise CycleInputError(
            f"week {week} has not begun (it starts {start:%Y-%m-%d}): its cycle covers the logs that arrive until "
            f"then; run it on or after {start:%Y-%m-%d}, or give a week that has begun")


def campaign_name(week: str) -> str:
    """The labeling campaign a cycle pushes to: ``fleetloop-2026-w49``."""
    week_start(week)  # validates
    return f"fleetloop-{week.lower()}"


class CyclePlan(BaseModel):
    week: str
    window: Window
    reference: Window
    logs: list[LogManifest]  # arrived in the window, by log id
    reference_logs: list[LogManifest]  # arrived in the reference window
    key: str  # week + inputs: a second run with the same key is a no-op
    # logs whose manifest could not be read (log id -> why), named by the arrival index since the
    # reference window's start: left out of this cycle, which is then not marked done
    unreadable: dict[str, str] = Field(default_factory=dict)

    @field_validator("week")
    @classmethod
    def _week(cls, v: str) -> str:
        week_start(v)
        return v

    @property
    def log_ids(self) -> list[str]:
        return [m.log_id for m in self.logs]

    @property
    def record_key(self) -> str:
        return f"{keys.CYCLES}{self.week}/{self.key}.json"


def window_manifests(store: Store, week: str,
                     problems: dict[str, str] | None = None) -> tuple[list[LogManifest], list[LogManifest]]:
    """The logs that arrived in ``week``'s window and in its reference window (the week before),
    each ``[start, end)`` and sorted by log id, from one read of the arrival index. ``problems``:
    see :func:`fleetloop.store.logs.list_logs` (a manifest that cannot be read is named there)."""
    window, reference = cycle_window(week), reference_window(week)
    manifests = list_logs(store, since=reference.start, inclusive=True, problems=problems, until=window.end)

    def arrived_in(w: Window) -> list[LogManifest]:
        return sorted((m for m in manifests if w.contains(m.arrived_at)), key=lambda m: m.log_id)

    return arrived_in(window), arrived_in(reference)


def plan_cycle(store: Store, week: str, params: LoopParams, *, extra: str = "") -> CyclePlan:
    """Which logs the cycle covers and its key. Reads the arrival index once."""
    window, reference = cycle_window(week), reference_window(week)
    unreadable: dict[str, str] = {}  # one damaged manifest never stops the cycle: named, left out
    in_window, in_ref = window_manifests(store, week, problems=unreadable)
    h = hashlib.sha256(week.encode())
    for m in in_window:
        h.update(f"{m.log_id}:{m.sha256}\n".encode())
    for log_id in sorted(unreadable):
        h.update(f"{log_id}:unreadable\n".encode())
    h.update(params.model_dump_json().encode())
    h.update(extra.encode())
    return CyclePlan(week=week, window=window, reference=reference, logs=in_window, reference_logs=in_ref,
                     key=h.hexdigest()[:16], unreadable=dict(sorted(unreadable.items())))


StepStatus = Literal["ran", "skipped", "failed"]


class StepRecord(BaseModel):
    status: StepStatus
    reason: str = ""  # why it skipped or failed; what it did, in one line, when it ran
    seconds: float = 0.0
    details: dict[str, Any] = Field(default_factory=dict)


class CycleRecord(BaseModel):
    week: str
    key: str
    logs: list[str]
    started_at: datetime
    finished_at: datetime | None = None
    steps: dict[str, StepRecord] = Field(default_factory=dict)
    noop: bool = False  # a second run of the same key: nothing was done
    # logs of the cycle's window left out because they could not be read (log id -> why): the
    # other logs went through; the cycle is not marked done, so a rerun after a repair takes them
    left_out: dict[str, str] = Field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [name for name, s in self.steps.items() if s.status == "failed"]

    @property
    def complete(self) -> bool:
        """No step failed and no log was left out: the cycle may be marked done."""
        return not self.failed and not self.left_out


def load_record(store: Store, plan: CyclePlan) -> CycleRecord | None:
    """The record of a finished run of this plan's key, if there is one."""
    if not store.exists(plan.record_key):
        return None
    return CycleRecord.model_validate_json(store.get_bytes(plan.record_key))


def save_record(store: Store, plan: CyclePlan, record: CycleRecord) -> None:
    """Written once, when the cycle has finished without a failed step or a left-out log (such a
    cycle reruns)."""
    if not record.complete:
        raise ValueError(f"cycle {record.week} is not complete (failed: {record.failed}, left out: "
                         f"{sorted(record.left_out)}): it is not marked done")
    store.put_bytes(plan.record_key, record.model_dump_json(indent=2).encode())
