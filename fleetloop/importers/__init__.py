"""Importers: read drive logs from a source layout into :class:`fleetloop.schema.DriveLogs`.

Every importer implements the same two calls (see :class:`Importer`) and never half-loads:
a file that does not parse raises :class:`LogFormatError` naming the file, line and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from fleetloop.schema import DriveLogs


class LogFormatError(ValueError):
    """A source file that does not parse. Says which file, line (1-based) and field."""

    def __init__(self, path: Path | str, message: str, *, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field = str(path), line, field
        where = str(path) + (f", line {line}" if line is not None else "") + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")


class Importer(Protocol):
    name: str

    def list_logs(self, root: Path) -> list[str]:
        """The log ids available under ``root``."""

    def load(self, root: Path, log_ids: list[str] | None = None) -> DriveLogs:
        """Load the given logs (all when None). Raises LogFormatError on unparseable input."""


def get_importer(fmt: str, **options) -> Importer:
    from fleetloop.importers.kitti import KittiTrackingImporter
    from fleetloop.importers.parquet import ParquetImporter

    importers = {"kitti-tracking": KittiTrackingImporter, "parquet": ParquetImporter}
    if fmt not in importers:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {sorted(importers)}")
    return importers[fmt](**options)


def load_logs(root: Path | str, format: str, log_ids: list[str] | None = None, **options) -> DriveLogs:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"log source {root} does not exist")
    return get_importer(format, **options).load(root, log_ids)


FORMATS = ("kitti-tracking", "parquet")
