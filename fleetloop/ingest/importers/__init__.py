"""Importers: read drive logs from a source layout into :class:`fleetloop.schema.DriveLogs`.

Every importer implements the same two calls (see :class:`Importer`) and never half-loads:
a file that does not parse raises :class:`LogFormatError` naming the file, line (or row) and
field. :func:`load_logs` loads a batch all-or-nothing; :func:`load_logs_isolated` loads each log
on its own, so one unparseable log does not stop the others (its error goes to quarantine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fleetloop.schema import DriveLogs


class LogFormatError(ValueError):
    """A source file that does not parse. Says which file, line (1-based, text files) or row
    (0-based, columnar files) and field."""

    def __init__(
        self,
        path: Path | str,
        message: str,
        *,
        line: int | None = None,
        field: str | None = None,
        row: int | None = None,
    ):
        self.path, self.line, self.field, self.row = str(path), line, field, row
        self.reason = message
        where = (
            str(path)
            + (f", line {line}" if line is not None else "")
            + (f", row {row}" if row is not None else "")
            + (f", field {field!r}" if field else "")
        )
        super().__init__(f"{where}: {message}")


class Importer(Protocol):
    name: str

    def list_logs(self, root: Path) -> list[str]:
        """The log ids available under ``root``."""

    def load(self, root: Path, log_ids: list[str] | None = None) -> DriveLogs:
        """Load the given logs (all when None). Raises LogFormatError on unparseable input."""


FORMATS = ("kitti-tracking", "parquet")


def get_importer(fmt: str, **options) -> Importer:
    from fleetloop.ingest.importers.kitti import KittiTrackingImporter
    from fleetloop.ingest.importers.parquet import ParquetImporter

    importers = {"kitti-tracking": KittiTrackingImporter, "parquet": ParquetImporter}
    if fmt not in importers:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {sorted(importers)}")
    return importers[fmt](**options)


def load_logs(root: Path | str, format: str, log_ids: list[str] | None = None, **options) -> DriveLogs:
    """All requested logs, or LogFormatError (nothing half-loaded)."""
    root = Path(root)
    importer = get_importer(format, **options)
    if not root.exists():
        raise FileNotFoundError(f"log source {root} does not exist")
    return importer.load(root, log_ids)


@dataclass(frozen=True)
class LoadResult:
    logs: DriveLogs  # every log that parsed
    errors: dict[str, LogFormatError] = field(default_factory=dict)  # log_id -> why it did not


def load_logs_isolated(root: Path | str, format: str, log_ids: list[str] | None = None, **options) -> LoadResult:
    """Load each log on its own: a log whose files do not parse is reported in ``errors`` and
    the others still load. Problems that concern the whole source (missing directory, unknown
    format or source name) still raise."""
    root = Path(root)
    importer = get_importer(format, **options)
    if not root.exists():
        raise FileNotFoundError(f"log source {root} does not exist")
    available = importer.list_logs(root)
    wanted = available if log_ids is None else list(dict.fromkeys(log_ids))
    parts: list[DriveLogs] = []
    errors: dict[str, LogFormatError] = {}
    for log_id in wanted:
        if log_id not in available:
            errors[log_id] = LogFormatError(root, f"log {log_id!r} not found; available: {available}")
            continue
        try:
            parts.append(importer.load(root, [log_id]))
        except LogFormatError as exc:
            errors[log_id] = exc
    return LoadResult(DriveLogs.concat(parts), errors)
