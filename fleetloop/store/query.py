"""Which stored logs to mine: a query an engineer asks ("the rainy drives from Tuesday on vehicle 7").

    q = LogQuery(since="2025-03-04", until="2025-03-05", vehicle="7", tags=["weather=rain"])
    ids = select_logs(list_logs(store), q, store)

Fields (all optional, combined with AND):

* ``since`` / ``until``: arrival window (``LogManifest.arrived_at``), ``since`` inclusive;
* ``drive_since`` / ``drive_until``: drive-time window (the log's frames' timestamps overlap it);
* ``vehicle``: the log's vehicle tag; ``tags``: ``name=value`` pairs over the frame tags
  (``weather``, ``time_of_day``, ``place``, ``vehicle``): a log matches when some frame has
  every pair's value (within one name, several values mean any of them; values match ignoring
  case and the spaces around them; ``vehicle`` and ``vehicle=`` tags must agree);
* ``log_ids``: only these logs.

Times are datetimes or ISO 8601 text (``2026-11-24``, ``2026-11-24T08:00:00+01:00``, ``...Z``);
naive ones are UTC and a date alone is its midnight, so ``until="2026-11-24"`` ends before that
day. A bare number is refused (pydantic would read ``20261124`` as seconds since 1970).

Manifests that record ``vehicle`` / ``tags`` / ``drive_start`` / ``drive_end`` are filtered from
the manifest alone; for older manifests the log's ``frames`` table is read (one small table per
log) when ``store`` is given.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, overload

import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from fleetloop.store.ids import InvalidLogIdError, check_log_id

TAG_NAMES = ("weather", "time_of_day", "place", "vehicle")
_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


class LogQueryError(ValueError):
    """The query cannot be answered (e.g. it filters on what the store does not record)."""


@overload
def _utc(v: datetime) -> datetime: ...


@overload
def _utc(v: None) -> None: ...


def _utc(v: datetime | None) -> datetime | None:
    if v is None:
        return None
    return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


class LogQuery(BaseModel):
    """A validated log query (see module doc). Naive times are UTC."""

    model_config = ConfigDict(extra="forbid")

    since: datetime | None = Field(None, description="arrived at or after (UTC)")
    until: datetime | None = Field(None, description="arrived before (UTC)")
    drive_since: datetime | None = Field(None, description="driven at or after (UTC)")
    drive_until: datetime | None = Field(None, description="driven before (UTC)")
    vehicle: str | None = Field(None, min_length=1, max_length=200)
    tags: list[str] = Field(default_factory=list, description="name=value, e.g. weather=rain")
    log_ids: list[str] | None = None

    @field_validator("since", "until", "drive_since", "drive_until", "vehicle", mode="before")
    @classmethod
    def _given(cls, v: Any, info: ValidationInfo) -> Any:
        """One value as given: a command line's option given several times comes as a list and is
        refused (never the last one kept silently); a time that is a bare number is refused (it
        would be read as seconds since 1970); spaces around a vehicle are dropped."""
        if isinstance(v, list | tuple):
            if len(v) > 1:
                also = " (several vehicles: --tag vehicle=A --tag vehicle=B)" if info.field_name == "vehicle" else ""
                raise ValueError(f"given {len(v)} times ({', '.join(map(str, v))}): give it once{also}")
            v = v[0] if v else None
        if info.field_name == "vehicle":
            return v.strip() if isinstance(v, str) else v
        if (isinstance(v, int | float) and not isinstance(v, bool)) or (isinstance(v, str) and _NUMBER.fullmatch(v)):
            raise ValueError(f"{v!r} is a number, not a date: give e.g. 2026-11-24 or 2026-11-24T08:00:00+01:00 "
                             "(a number would be read as seconds since 1970)")
        return v

    @field_validator("since", "until", "drive_since", "drive_until")
    @classmethod
    def _tz(cls, v: datetime | None) -> datetime | None:
        try:
            return _utc(v)
        except OverflowError:  # 0001-01-01T00:00+01:00, 9999-12-31T23:59-01:00: no such UTC time
            raise ValueError(f"{v.isoformat() if v else v} is out of range in UTC") from None

    @field_validator("log_ids")
    @classmethod
    def _ids(cls, v: list[str] | None) -> list[str] | None:
        """Each a valid log id (``''`` or ``../x`` can name no stored log: a typo, said as one)."""
        for log_id in v or []:
            try:
                check_log_id(log_id)
            except InvalidLogIdError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        out = []
        for t in v:
            name, sep, value = (s.strip() for s in t.partition("="))
            name = name.lower()
            if not sep or name not in TAG_NAMES or not value or "=" in value:
                raise ValueError(f"tag {t!r} must look like 'weather=rain' (one '=', a value) with a name in "
                                 f"{TAG_NAMES}")
            out.append(f"{name}={value}")
        return out

    @model_validator(mode="after")
    def _windows(self) -> LogQuery:
        if self.since and self.until and self.until <= self.since:
            raise ValueError(f"until must be after since (until {self.until}, since {self.since}; a date alone is "
                             "its midnight)")
        if self.drive_since and self.drive_until and self.drive_until <= self.drive_since:
            raise ValueError(f"drive_until must be after drive_since (drive_until {self.drive_until}, drive_since "
                             f"{self.drive_since}; a date alone is its midnight)")
        vehicles = {t.partition("=")[2].casefold() for t in self.tags if t.startswith("vehicle=")}
        if self.vehicle and vehicles and self.vehicle.casefold() not in vehicles:
            raise ValueError(f"vehicle {self.vehicle!r} and tags vehicle={'|'.join(sorted(vehicles))} cannot both "
                             "hold (a frame has one vehicle): give the vehicles as --tag vehicle=... only")
        return self

    @property
    def tag_sets(self) -> dict[str, set[str]]:
        """Wanted values (casefolded) by tag name; ``vehicle`` narrows the ``vehicle=`` tags (AND)."""
        out: dict[str, set[str]] = {}
        for t in self.tags:
            name, _, value = t.partition("=")
            out.setdefault(name, set()).add(value.casefold())
        if self.vehicle:
            out["vehicle"] = {self.vehicle.casefold()}
        return out

    @property
    def needs_content(self) -> bool:
        """Does it filter on what only the log's frames (or a newer manifest) record?"""
        return bool(self.tag_sets or self.drive_since or self.drive_until)

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.model_dump(exclude_none=True, exclude_defaults=True).items()]
        return ", ".join(parts) or "all logs"


def _frames_summary(store, manifest) -> tuple[dict[str, set[str]], datetime | None, datetime | None, list[dict]]:
    """Tag values, drive start/end and the tag rows of a stored log (read from its frames table,
    wherever the manifest's layout version keeps it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fleetloop.store.logs import _stream_key  # the store's own rule for where a stream lives

    t = pq.read_table(pa.BufferReader(store.get_bytes(_stream_key(manifest, "frames"))),
                      columns=["timestamp_ns", *TAG_NAMES])
    rows = t.select(list(TAG_NAMES)).group_by(list(TAG_NAMES)).aggregate([]).to_pylist()
    tags = {n: set(pc.unique(t.column(n)).drop_null().to_pylist()) for n in TAG_NAMES}
    start: datetime | None
    end: datetime | None
    if t.num_rows:
        lo, hi = pc.min(t.column("timestamp_ns")).as_py(), pc.max(t.column("timestamp_ns")).as_py()
        start, end = (datetime.fromtimestamp(x / 1e9, UTC) for x in (lo, hi))
    else:
        start = end = None
    return tags, start, end, rows


def _tags_match(rows: list[dict], wanted: dict[str, set[str]]) -> bool:
    """Does some row hold every wanted tag (values compared casefolded, spaces around them ignored)?"""
    def fold(v: object) -> object:
        return v.strip().casefold() if isinstance(v, str) else v

    return any(all(fold(r.get(n)) in vals for n, vals in wanted.items()) for r in rows)


def select_logs(manifests: list, query: LogQuery, store=None) -> list[str]:
    """The ids of the manifests that match ``query``, in the manifests' order."""
    wanted_ids = set(query.log_ids) if query.log_ids is not None else None
    out: list[str] = []
    for m in manifests:
        if wanted_ids is not None and m.log_id not in wanted_ids:
            continue
        if query.since and m.arrived_at < query.since:
            continue
        if query.until and m.arrived_at >= query.until:
            continue
        if query.needs_content:
            rows = getattr(m, "tag_rows", None)
            start, end = getattr(m, "drive_start", None), getattr(m, "drive_end", None)
            if rows is None or (start is None and (query.drive_since or query.drive_until)):
                if store is None:
                    raise LogQueryError(f"log {m.log_id}: its manifest records no tags/drive times; "
                                        "pass the store to read them from the log's frames")
                _, start, end, rows = _frames_summary(store, m)
            if query.tag_sets and not _tags_match(rows, query.tag_sets):
                continue
            if query.drive_since and (end is None or _utc(end) < query.drive_since):
                continue
            if query.drive_until and (start is None or _utc(start) >= query.drive_until):
                continue
        out.append(m.log_id)
    if wanted_ids is not None:
        missing = sorted(wanted_ids - {m.log_id for m in manifests})
        if missing:
            raise LogQueryError(f"logs not in the store: {missing} (ingest them first: fleetloop ingest)")
    return out
