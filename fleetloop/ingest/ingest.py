"""Ingest: import logs from a source, validate them, store the good ones and quarantine the bad
ones with a report.

Every log is on its own: a log that fails in any way (a file that does not parse, an invalid
log id, a missing anchor file, an unexpected exception while loading, validating or storing it)
is quarantined with a report naming the file and the reason, and the rest of the batch goes
on, whatever the order of the logs. A log whose keys the store refuses while it still answers
(e.g. a foreign object in their way) is named in ``failed`` and the rest goes on; only a store
that cannot be reached stops the batch (:class:`IngestInterrupted`, naming what was stored).

A log is registered once per content hash with conditional writes (see
:mod:`fleetloop.store.logs`), so a rerun is safe and two ingests of the same log ids may run at
once, on one machine or several: one of them stores each log; the other reports the same
content as unchanged, or other content as a conflict, never overwriting it. A log stored (or
found unchanged) by a run loses the quarantine report an earlier run wrote for it, so
``quarantine/`` names only logs that are not in the store.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from fleetloop.store.objects import StorageError, Store

if TYPE_CHECKING:
    from fleetloop.ingest.validation import LogReport, ValidationResult
    from fleetloop.schema import DriveLogs


class IngestReport(BaseModel):
    source: str
    format: str
    registered: list[str] = Field(default_factory=list)  # newly stored logs
    unchanged: list[str] = Field(default_factory=list)  # already stored with the same content
    quarantined: dict[str, str] = Field(default_factory=dict)  # log_id -> report key
    reasons: dict[str, str] = Field(default_factory=dict)  # log_id -> why it is quarantined, one line
    warnings: dict[str, str] = Field(default_factory=dict)  # log_id -> what validation warned of (stored anyway)
    conflicts: dict[str, str] = Field(default_factory=dict)  # log_id -> why (same id, other content)
    failed: dict[str, str] = Field(default_factory=dict)  # log_id -> the store's error for it (the store up)
    frames: int = 0
    seconds: float = 0.0


class IngestInterrupted(StorageError):
    """The store failed partway (an endpoint gone down): says which logs were stored before it
    did and which were not; ``report`` is what was done."""

    def __init__(self, cause: StorageError, report: IngestReport, not_stored: list[str]) -> None:
        stored = report.registered + report.unchanged
        super().__init__(f"{cause}; stored before the store failed: {_some(stored)}; not stored: {_some(not_stored)} "
                         "(run the same command again: stored logs are recognised, the rest is stored)")
        self.report = report
        self.not_stored = not_stored


def _some(ids: list[str], most: int = 5) -> str:
    if not ids:
        return "none"
    return f"{len(ids)} log(s) ({', '.join(ids[:most])}{', ...' if len(ids) > most else ''})"


def ingest(store: Store, source: Path | str, fmt: str, log_ids: list[str] | None = None, *,
           arrived_at: datetime | None = None, **importer_options: Any) -> IngestReport:
    """Import logs from ``source``, validate them, store the good ones and quarantine the bad
    ones with a report. A bad log never stops the batch. ``arrived_at`` (default now) backdates
    the arrival of a backfill."""
    from fleetloop.ingest.importers import load_logs_isolated
    from fleetloop.ingest.validation import LogReport

    t0 = time.perf_counter()
    source = _resolved(Path(source))  # recorded on each stored log: meaningful from anywhere
    report = IngestReport(source=str(source), format=fmt)
    loaded = load_logs_isolated(source, fmt, log_ids, **importer_options)
    for log_id, error in loaded.errors.items():  # logs that do not load: quarantined, the rest goes on
        _quarantine(store, LogReport.from_format_error(log_id, error), report)
    result = _validate(loaded.logs)
    for i, log_id in enumerate(result.good.log_ids):
        try:
            _store_one(store, result.good.select([log_id]), f"{fmt}:{source}", arrived_at, report)
        except StorageError as exc:
            if _reachable(store):  # this log's keys, not the store (e.g. a foreign object in its way): go on
                report.failed[log_id] = str(exc)
                continue
            _finish(report, result, t0)  # the store itself failed: nothing after this log can be stored either
            raise IngestInterrupted(exc, report, result.good.log_ids[i:]) from exc
    _finish(report, result, t0)
    for log_report in result.quarantined.values():
        _quarantine(store, log_report, report)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _reachable(store: Store) -> bool:
    """Does the store still answer (a read of a key that need not exist)? Tells a failure of one
    log's keys from a store that is down."""
    try:
        store.exists("quarantine/.probe")
    except StorageError:
        return False
    return True


def _finish(report: IngestReport, result: ValidationResult, t0: float) -> None:
    """The warnings of the logs stored so far, and the time taken."""
    report.warnings = {log_id: rep.warning_line for log_id, rep in result.warnings.items()
                       if log_id in report.registered or log_id in report.unchanged}
    report.seconds = round(time.perf_counter() - t0, 3)


def _store_one(store: Store, one: DriveLogs, source: str, arrived_at: datetime | None, report: IngestReport) -> None:
    """Store one validated log and record what happened in ``report``."""
    from fleetloop.ingest.validation import LogReport
    from fleetloop.store.logs import LogConflictError, commit_log

    log_id = one.log_ids[0]
    try:
        result = commit_log(store, one, source=source, arrived_at=arrived_at)
    except LogConflictError as exc:  # never overwrite a stored log silently; the rest goes on
        report.conflicts[log_id] = str(exc)
        return
    except StorageError:  # the store itself is unreachable: nothing else can be stored either
        raise
    except Exception as exc:  # anything else is this log's problem
        failure = _Failure(source, f"the log cannot be stored: {type(exc).__name__}: {exc}")
        _quarantine(store, LogReport.from_format_error(log_id, failure), report)
        return
    (report.registered if result.created else report.unchanged).append(log_id)
    report.frames += one.num_frames
    _clear_quarantine(store, log_id)


def _resolved(source: Path) -> Path:
    """``source`` as an absolute path; a path that cannot be resolved (a symbolic link loop) is a
    :class:`LogFormatError` naming it, like any other source that is not a directory of logs."""
    from fleetloop.ingest.importers import LogFormatError

    try:
        return source.resolve()
    except (OSError, RuntimeError) as exc:  # Python 3.11 raises RuntimeError for a link loop
        raise LogFormatError(source, f"cannot resolve the path: {exc}") from None


def _clear_quarantine(store: Store, log_id: str) -> None:
    """A log now in the store is no longer quarantined: remove the report an earlier run wrote
    for it (a fixed log ingested again), so ``quarantine/`` lists only logs that are not stored.
    Best effort: the log is stored either way."""
    from fleetloop.ingest.validation import quarantine_key

    base = quarantine_key(log_id)
    try:
        if store.exists(f"{base}/report.json") or store.exists(f"{base}/report.md"):
            store.delete(f"{base}/report.md")
            store.delete(f"{base}/report.json")
    except StorageError:
        pass


def _quarantine(store: Store, log_report: LogReport, report: IngestReport) -> None:
    """Write the log's quarantine report to the store; record where it is and why in ``report``."""
    from fleetloop.ingest.validation import quarantine

    report.quarantined[log_report.log_id] = quarantine(store, log_report)
    report.reasons[log_report.log_id] = log_report.reason


class _Failure(ValueError):
    """Why a log failed after loading (shaped like a LogFormatError for the report)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def _validate(logs: DriveLogs) -> ValidationResult:
    """Validate the batch in one pass; if that pass fails unexpectedly, validate log by log so
    the log that breaks it is quarantined and the others go on."""
    from fleetloop.ingest.validation import ValidationResult, validate_logs
    from fleetloop.schema import DriveLogs

    try:
        return validate_logs(logs)
    except Exception:  # one log broke the batch pass: find it
        pass
    parts = [_validate_one(logs.select([log_id])) for log_id in logs.log_ids]
    return ValidationResult(
        good=DriveLogs.concat([p.good for p in parts if p.good.num_frames]),
        quarantined={k: v for p in parts for k, v in p.quarantined.items()},
        warnings={k: v for p in parts for k, v in p.warnings.items()},
    )


def _validate_one(one: DriveLogs) -> ValidationResult:
    """Validate one log; an exception quarantines it with the exception as the reason."""
    from fleetloop.ingest.validation import LogReport, ValidationResult, validate_logs
    from fleetloop.schema import DriveLogs

    try:
        return validate_logs(one)
    except Exception as exc:
        failure = _Failure("validation", f"validation could not run on this log: {type(exc).__name__}: {exc}")
        reports = {log_id: LogReport.from_format_error(log_id, failure) for log_id in one.log_ids}
        return ValidationResult(good=DriveLogs.empty(), quarantined=reports, warnings={})
