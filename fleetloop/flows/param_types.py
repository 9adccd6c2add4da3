"""Flow parameter types that carry the rules the CLI and the store already apply, so a flow's
signature refuses what they refuse: Prefect validates every run's parameters against it (the
CLI's ``fleetloop run --param`` check before contacting Prefect, the engine when the run starts)
and the UI's run form gets the JSON schema (patterns, bounds).

The rules are not restated here: each type calls the existing validator (the log id rule of
:mod:`fleetloop.store.ids`, :class:`fleetloop.store.query.LogQuery` for tags and windows,
:func:`fleetloop.cycle.week_start` for ISO weeks).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationError, ValidationInfo

from fleetloop.cycle import week_start
from fleetloop.store.ids import LOG_ID_PATTERN, check_log_id
from fleetloop.store.query import LogQuery


def _by_log_query(**fields: Any) -> None:
    """Refuse what :class:`LogQuery` refuses, with its own one-line reason."""
    try:
        LogQuery.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        cause = (first.get("ctx") or {}).get("error")
        raise ValueError(str(cause) if cause is not None else first["msg"]) from None


def _tag(value: str) -> str:
    _by_log_query(tags=[value])
    return value


def _vehicle(value: str) -> str:
    _by_log_query(vehicle=value)
    return value


def _window_end(start: str, end: str) -> Callable[[datetime, ValidationInfo], datetime]:
    """The end of a window (``until`` after ``since``): checked against the start parameter, which
    the flow's signature must declare before the end (pydantic validates in signature order and
    gives a validator the parameters validated before it)."""

    def check(value: datetime, info: ValidationInfo) -> datetime:
        begun = (info.data or {}).get(start)
        if begun is not None:
            _by_log_query(**{start: begun, end: value})
        return value

    return check


def _week(value: str) -> str:
    week_start(value)  # 2026-W00 and 2026-W99 match the pattern but are no ISO week
    return value


#: A stored log's id (``fleetloop.store.ids``: a safe path segment).
LogId = Annotated[
    str,
    AfterValidator(check_log_id),
    Field(description="a log id", json_schema_extra={"pattern": LOG_ID_PATTERN.pattern}),
]
#: A frame tag filter ``name=value`` (``weather=rain``), as ``fleetloop mine --tag`` takes it.
Tag = Annotated[str, AfterValidator(_tag), Field(description="name=value, e.g. weather=rain")]
Vehicle = Annotated[str, AfterValidator(_vehicle)]
#: ``until`` of the arrival window: after ``since`` (declare ``since`` first).
Until = Annotated[datetime, AfterValidator(_window_end("since", "until"))]
#: ``drive_until`` of the drive-time window: after ``drive_since`` (declare ``drive_since`` first).
DriveUntil = Annotated[datetime, AfterValidator(_window_end("drive_since", "drive_until"))]
#: An ISO week ``YYYY-Www`` that exists (``2026-W49``).
IsoWeek = Annotated[str, Field(pattern=r"^\d{4}-W\d{2}$", description="ISO week, e.g. 2026-W49"), AfterValidator(_week)]
#: A dataset version (``dataset-vN``), from 1.
DatasetVersion = Annotated[int, Field(ge=1, description="dataset version N of dataset-vN")]
