"""Importers: read drive logs from a source layout into :class:`fleetloop.schema.DriveLogs`.

Every importer implements the same two calls (see :class:`Importer`) and never half-loads:
a file that does not parse raises :class:`LogFormatError` naming the file, line (or row) and
field. :func:`get_importer` hands out importers wrapped in :class:`GuardedImporter`, which
holds every importer to that contract: an invalid log id, a log that loads no frames, and any
other exception while loading a log (a singular matrix, a directory where a file should be, an
unreadable file, ``MemoryError`` ...) become a :class:`LogFormatError` naming the file.
:func:`load_logs` loads a batch all-or-nothing; :func:`load_logs_isolated` loads each log on
its own, so one bad log does not stop the others (its error goes to quarantine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from fleetloop.schema import DriveLogs
from fleetloop.store.ids import InvalidLogIdError, check_log_id


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

    # Optional: ``log_location(root, log_id) -> Path``, the file or directory that anchors a log
    # (named in a report when a failure cannot name a more precise file).


FORMATS = ("kitti-tracking", "parquet")

#: How much of an unexpected exception's text a report keeps.
_MAX_DETAIL = 300


def get_importer(fmt: str, **options: Any) -> GuardedImporter:
    from fleetloop.ingest.importers.kitti import KittiTrackingImporter
    from fleetloop.ingest.importers.parquet import ParquetImporter

    importers: dict[str, Any] = {"kitti-tracking": KittiTrackingImporter, "parquet": ParquetImporter}
    if fmt not in importers:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {sorted(importers)}")
    return GuardedImporter(importers[fmt](**options))


class GuardedImporter:
    """An importer held to the contract: whatever goes wrong with a log is a
    :class:`LogFormatError` naming a file, and every loaded log has a valid id and frames.

    Listing failures (``list_logs``) concern the whole source and are a ``LogFormatError`` on
    the source directory. Attributes other than ``list_logs``/``load`` are the wrapped
    importer's (``inner``)."""

    def __init__(self, inner: Importer) -> None:
        self.inner = inner
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"GuardedImporter({self.inner!r})"

    def list_logs(self, root: Path) -> list[str]:
        root = Path(root)
        try:
            return list(self.inner.list_logs(root))
        except LogFormatError:
            raise
        except Exception as exc:
            raise LogFormatError(_filename(exc) or root, f"cannot list the logs: {_describe(exc)}") from exc

    def load(self, root: Path, log_ids: list[str] | None = None) -> DriveLogs:
        root = Path(root)
        ids = self.list_logs(root) if log_ids is None else list(dict.fromkeys(log_ids))
        for log_id in ids:
            self._check_id(root, log_id)
        try:
            logs = self.inner.load(root, ids)
        except LogFormatError:
            raise
        except Exception as exc:  # every other failure of a log, MemoryError included
            raise self._unexpected(root, ids, exc) from exc
        self._check_loaded(root, ids, logs)
        return logs

    def location(self, root: Path, log_id: str) -> Path:
        """The file (or directory) that anchors ``log_id`` under ``root``."""
        custom = getattr(self.inner, "log_location", None)
        if callable(custom):
            try:
                return Path(custom(root, log_id))
            except Exception:  # a report must not fail on its file name
                return root
        if self.name == "kitti-tracking":  # until the KITTI importer names its own anchor
            return root / "calib" / f"{log_id}.txt"
        return root

    def _check_id(self, root: Path, log_id: str) -> None:
        try:
            check_log_id(log_id)
        except InvalidLogIdError as exc:
            raise LogFormatError(self.location(root, str(log_id)), str(exc), field="log_id") from None

    def _check_loaded(self, root: Path, ids: list[str], logs: DriveLogs) -> None:
        loaded = logs.log_ids
        for log_id in loaded:
            self._check_id(root, log_id)
        if len(loaded) < len(ids):  # a log that came back without frames would vanish silently
            missing = [i for i in ids if i not in loaded]
            raise LogFormatError(self.location(root, missing[0]), f"log {missing[0]!r} has no frames", field="frame")

    def _unexpected(self, root: Path, ids: list[str], exc: BaseException) -> LogFormatError:
        which = f"log {ids[0]!r}" if len(ids) == 1 else f"one of logs {ids[:5]}"
        path = _filename(exc) or _path_in_traceback(exc.__traceback__, root)
        if path is None:
            path = self.location(root, ids[0]) if len(ids) == 1 else root
        return LogFormatError(path, f"{which} cannot be read: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def _filename(exc: BaseException) -> str | None:
    name = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
    return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else None


def _path_in_traceback(tb: TracebackType | None, root: Path) -> Path | None:
    """The innermost ``path`` local under ``root`` on the traceback: the file being read when
    the exception was raised (best effort; None when no frame names one)."""
    found = None
    root = root.resolve() if root.exists() else root
    while tb is not None:
        value = tb.tb_frame.f_locals.get("path")
        if isinstance(value, (str, Path)):
            try:
                candidate = Path(value)
                if candidate.resolve().is_relative_to(root):
                    found = candidate
            except (OSError, RuntimeError, ValueError):  # a looping link, a bad name
                pass
        tb = tb.tb_next
    return found


def load_logs(root: Path | str, format: str, log_ids: list[str] | None = None, **options: Any) -> DriveLogs:
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


def load_logs_isolated(root: Path | str, format: str, log_ids: list[str] | None = None, **options: Any) -> LoadResult:
    """Load each log on its own: a log that fails in any way (see :class:`GuardedImporter`) is
    reported in ``errors`` and the others still load, whatever their order. Problems that
    concern the whole source (missing directory, unknown format or source name) still raise."""
    root = Path(root)
    importer = get_importer(format, **options)
    if not root.exists():
        raise FileNotFoundError(f"log source {root} does not exist")
    available = importer.list_logs(root)
    wanted = available if log_ids is None else list(dict.fromkeys(log_ids))
    missing = [log_id for log_id in wanted if log_id not in available]
    if missing:  # asked for by name: a typo, not a bad log (nothing to quarantine)
        shown = ", ".join(available[:20]) + (f", ... ({len(available)} logs)" if len(available) > 20 else "")
        raise LogFormatError(root, f"no log {', '.join(map(repr, missing))} here; available: {shown or 'none'}")
    parts: list[DriveLogs] = []
    errors: dict[str, LogFormatError] = {}
    for log_id in wanted:
        try:
            parts.append(importer.load(root, [log_id]))
        except LogFormatError as exc:
            errors[log_id] = exc
    return LoadResult(DriveLogs.concat(parts), errors)
