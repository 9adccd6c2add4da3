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

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, ValidationInfo

from fleetloop.cycle import week_start
from fleetloop.problems import first_problem
from fleetloop.store.ids import LOG_ID_PATTERN, check_log_id
from fleetloop.store.query import TAG_NAMES, LogQuery


def _by_log_query(**fields: Any) -> None:
    """Refuse what :class:`LogQuery` refuses, with its own one-line reason."""
    try:
        LogQuery.model_validate(fields)
    except ValidationError as exc:
        raise ValueError(first_problem(exc)[0].what) from None


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


def _time(field: str) -> Callable[[Any], Any]:
    """A window end as given, before pydantic reads it: a bare number is refused as
    :class:`LogQuery` refuses it (pydantic would read ``20261124`` as seconds since 1970, and
    ``--param since=20261124`` arrives as a number)."""

    def check(value: Any) -> Any:
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            _by_log_query(**{field: value})
        return value

    return check


def _week(value: str) -> str:
    week_start(value)  # 2025-W53 matches the pattern but is no ISO week (2025 has 52)
    return value


# The JSON-schema patterns below are what the Prefect server and its run form check (they cannot
# run the validators); the validators are what the flow checks when it runs. The patterns say the
# same rules as far as a pattern can (lookaheads: the schema's, never pydantic's, regex engine).
_LOG_ID_SCHEMA = r"^(?!.*\.\.)" + LOG_ID_PATTERN.pattern.removeprefix("^")
_TAG_SCHEMA = rf"^({'|'.join(TAG_NAMES)})=.+$"
_WEEK_SCHEMA = r"^\d{4}-W(0[1-9]|[1-4][0-9]|5[0-3])$"

#: A stored log's id (``fleetloop.store.ids``: a safe path segment).
LogId = Annotated[
    str,
    AfterValidator(check_log_id),
    Field(description="a log id", json_schema_extra={"pattern": _LOG_ID_SCHEMA}),
]
#: A frame tag filter ``name=value`` (``weather=rain``), as ``fleetloop mine --tag`` takes it.
Tag = Annotated[str, AfterValidator(_tag),
                Field(description="name=value, e.g. weather=rain", json_schema_extra={"pattern": _TAG_SCHEMA})]
Vehicle = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_vehicle)]
#: ``since`` of the arrival window (a time, never a bare number).
Since = Annotated[datetime, BeforeValidator(_time("since"))]
#: ``until`` of the arrival window: after ``since`` (declare ``since`` first).
Until = Annotated[datetime, BeforeValidator(_time("until")), AfterValidator(_window_end("since", "until"))]
#: ``drive_since`` of the drive-time window.
DriveSince = Annotated[datetime, BeforeValidator(_time("drive_since"))]
#: ``drive_until`` of the drive-time window: after ``drive_since`` (declare ``drive_since`` first).
DriveUntil = Annotated[datetime, BeforeValidator(_time("drive_until")),
                       AfterValidator(_window_end("drive_since", "drive_until"))]
#: An ISO week ``YYYY-Www`` that exists (``2026-W49``).
IsoWeek = Annotated[str, Field(pattern=_WEEK_SCHEMA, description="ISO week, e.g. 2026-W49"), AfterValidator(_week)]
#: A dataset version (``dataset-vN``), from 1.
DatasetVersion = Annotated[int, Field(ge=1, strict=True, description="dataset version N of dataset-vN (an integer: true is not 1)")]
