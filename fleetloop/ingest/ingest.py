"""Ingest: import logs from a source, validate them, store the good ones and quarantine the bad
ones with a report. A log is registered once per content hash (the store's manifest-last write),
so a rerun is safe."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from fleetloop.store.objects import Store


class IngestReport(BaseModel):
    source: str
    format: str
    registered: list[str] = Field(default_factory=list)  # newly stored logs
    unchanged: list[str] = Field(default_factory=list)  # already stored with the same content
    quarantined: dict[str, str] = Field(default_factory=dict)  # log_id -> report key
    conflicts: dict[str, str] = Field(default_factory=dict)  # log_id -> why (same id, other content)
    frames: int = 0
    seconds: float = 0.0


def ingest(store: Store, source: Path | str, fmt: str, log_ids: list[str] | None = None, *,
           arrived_at: datetime | None = None, **importer_options) -> IngestReport:
    """Import logs from ``source``, validate them, store the good ones and quarantine the bad
    ones with a report. A bad log never stops the batch. ``arrived_at`` (default now) backdates
    the arrival of a backfill."""
    from fleetloop.ingest.importers import load_logs_isolated
    from fleetloop.store.logs import LogConflictError
    from fleetloop.store.logs import list_logs, put_log
    from fleetloop.ingest.validation import LogReport, quarantine, validate_logs

    t0 = time.perf_counter()
    report = IngestReport(source=str(source), format=fmt)
    loaded = load_logs_isolated(source, fmt, log_ids, **importer_options)
    for log_id, error in loaded.errors.items():  # files that do not parse: quarantined, the rest goes on
        report.quarantined[log_id] = quarantine(store, LogReport.from_format_error(log_id, error))
    result = validate_logs(loaded.logs)
    known = {m.log_id: m for m in list_logs(store)}
    for log_id in result.good.log_ids:
        one = result.good.select([log_id])
        before = known.get(log_id)
        try:
            manifest = put_log(store, one, source=f"{fmt}:{source}", arrived_at=arrived_at)
        except LogConflictError as exc:  # never overwrite a stored log silently; the rest goes on
            report.conflicts[log_id] = str(exc)
            continue
        if before is not None and before.sha256 == manifest.sha256:
            report.unchanged.append(log_id)
        else:
            report.registered.append(log_id)
        report.frames += one.num_frames
    for log_id, log_report in result.quarantined.items():
        report.quarantined[log_id] = quarantine(store, log_report)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


