"""fleetloop's own columnar layout: ``<root>/<log_id>/<stream>.parquet``, one file per stream
(see :mod:`fleetloop.schema` and ``docs/schema.md``). A missing stream file means the log does
not carry that stream; ``frames`` (at least one row) and ``calibration`` are required. ``<root>``
may also be a single log directory. Every directory under ``<root>`` holding a ``*.parquet``
entry is a log, so a log missing its ``frames.parquet`` is reported, never skipped. A stream
entry that is not a readable regular file (a directory, a broken or looping link, an
unreadable file), extra columns aside, missing or repeated columns, types that do not cast
safely or are of another kind (text for a number, a number for text, booleans; a timestamp is
read as ``timestamp_ns`` in nanoseconds whatever its unit), null keys and rows of another log
are :class:`LogFormatError`. Values (NaN, ranges, box sizes, ...)
are the validation's job (``fleetloop.ingest.validation``), not the importer's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleetloop.ingest.importers import LogFormatError
from fleetloop.schema import STREAMS, DriveLogs
from fleetloop.store.atomic import write_atomic

REQUIRED = ("frames", "calibration")


def write_parquet_log(logs: DriveLogs, root: Path | str) -> list[Path]:
    """Write each log of ``logs`` in the parquet layout; returns the log directories. Each file
    is written to a temporary name and renamed, so a reader never sees a half-written file."""
    root = Path(root)
    out = []
    for log_id in logs.log_ids:
        one = logs.select([log_id])
        d = root / log_id
        d.mkdir(parents=True, exist_ok=True)
        for name, table in one.tables().items():
            _write_atomically(table, d / f"{name}.parquet")
        out.append(d)
    return out


def _write_atomically(table: pa.Table, path: Path) -> None:
    """Write to a unique temporary name beside ``path``, then rename (removed on any failure)."""
    write_atomic(path, lambda fh: pq.write_table(table, fh))


class ParquetImporter:
    name = "parquet"

    def list_logs(self, root: Path) -> list[str]:
        root = Path(root)
        if not root.is_dir():
            raise LogFormatError(root, "not a directory of parquet logs")
        if _is_single(root):
            return [root.name]
        return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and _holds_streams(p))

    def log_location(self, root: Path, log_id: str) -> Path:
        """The log's directory."""
        root = Path(root)
        return root if _is_single(root) else root / log_id

    def load(self, root: Path, log_ids: list[str] | None = None) -> DriveLogs:
        root = Path(root)
        available = self.list_logs(root)
        if not available:
            raise LogFormatError(root, "no logs found (expected <log_id>/frames.parquet)")
        single = _is_single(root)
        log_ids = available if log_ids is None else list(dict.fromkeys(log_ids))
        missing = sorted(set(log_ids) - set(available))
        if missing:
            raise LogFormatError(root, f"logs not found: {missing}")
        parts = [self._load_one(root if single else root / log_id, None if single else log_id) for log_id in log_ids]
        return DriveLogs.concat(parts)

    @staticmethod
    def _load_one(d: Path, log_id: str | None) -> DriveLogs:
        """One log directory. ``log_id``: the id its rows must carry (None: whatever the
        frames table says, for a single log directory)."""
        tables = {}
        for name in ("frames", *(n for n in STREAMS if n != "frames")):  # frames first: it names the log
            schema = STREAMS[name]
            path = d / f"{name}.parquet"
            if not os.path.lexists(path):  # an entry that exists in any form is read, or reported
                if name in REQUIRED:
                    raise LogFormatError(path, f"required stream {name!r} is missing")
                tables[name] = schema.empty_table()
                continue
            t = _read_stream(path, name, schema)
            if name == "frames" and t.num_rows == 0:
                raise LogFormatError(path, "no frames: a log needs at least one frame", field="frame")
            if log_id is None:
                ids = pc.unique(t["log_id"]).to_pylist()
                if len(ids) != 1:
                    raise LogFormatError(path, f"a log directory holds exactly one log; found {ids}", field="log_id")
                log_id = ids[0]
            other = pc.not_equal(t["log_id"], log_id)
            if pc.any(other).as_py():
                row = int(pc.index(other, True).as_py())
                raise LogFormatError(
                    path, f"row of log {t['log_id'][row].as_py()!r} in the directory of log {log_id!r}",
                    row=row, field="log_id",
                )
            tables[name] = t
        return DriveLogs(**tables)


def _is_single(root: Path) -> bool:
    """``root`` is itself one log's directory."""
    return os.path.lexists(root / "frames.parquet")


def _holds_streams(d: Path) -> bool:
    """A directory with at least one ``*.parquet`` entry (of any kind): a log, good or bad."""
    try:
        if not d.is_dir():
            return False
        with os.scandir(d) as entries:
            return any(e.name.endswith(".parquet") and not e.name.startswith(".") for e in entries)
    except OSError:  # an unreadable directory: list it, so loading reports it
        return True


def _read_stream(path: Path, name: str, schema: pa.Schema) -> pa.Table:
    if not path.is_file():  # pq.read_table would read a directory as a dataset
        raise LogFormatError(path, "not a readable regular file (a directory, a broken or looping link?)")
    try:
        with pq.ParquetFile(path) as pf:
            names = pf.schema_arrow.names
            for f in schema:
                if f.name not in names:
                    raise LogFormatError(path, f"missing column of the {name} schema", field=f.name)
                if names.count(f.name) > 1:
                    raise LogFormatError(path, f"column given {names.count(f.name)} times (which one is the log's?)",
                                         field=f.name)
            t = pf.read(columns=schema.names)  # the schema's columns only: extra ones (even repeated) are ignored
    except (pa.ArrowException, OSError) as exc:
        raise LogFormatError(path, f"not a readable parquet file: {exc}") from None
    t = t.select(schema.names)
    columns = []
    for f in schema:
        col = t[f.name]
        kind = _kind_mismatch(col.type, f.type, time=f.name == "timestamp_ns")
        if kind:
            raise LogFormatError(path, f"type {col.type} does not cast to {f.type}: {kind}", field=f.name)
        if f.name == "timestamp_ns" and pa.types.is_timestamp(col.type):  # nanoseconds, whatever the unit stored
            try:
                col = col.cast(pa.timestamp("ns", tz=col.type.tz))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise LogFormatError(path, f"type {col.type} does not cast to {f.type}: {exc}", field=f.name) from None
        try:
            columns.append(col.cast(f.type))  # safe cast: no truncation, no overflow
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise LogFormatError(
                path, f"type {col.type} does not cast to {f.type}: {exc}", field=f.name
            ) from None
    t = pa.Table.from_arrays(columns, schema=schema)
    for key in ("log_id", "frame"):
        if key in t.column_names and t[key].null_count:
            row = int(pc.index(pc.is_null(t[key]), True).as_py())
            raise LogFormatError(path, "null key", row=row, field=key)
    return t


def _kind_mismatch(src: pa.DataType, dst: pa.DataType, time: bool = False) -> str | None:
    """Why a column of type ``src`` cannot hold a ``dst`` column's values, or None. A cast may
    narrow or widen within a kind (int64 -> int32 in range, float64 -> float32, dictionary or
    large strings -> strings, any list of 12 numbers -> the fixed-size list); across kinds it
    would convert values, not check them (strings parsed as numbers, booleans as 0/1, numbers
    written as text, a timestamp's count in its own unit), so a column of another kind is a
    wrong type. A timestamp is accepted for a ``time`` column (``timestamp_ns``: the caller
    converts it to nanoseconds). An all-null column (type null) is left to the null checks."""
    if pa.types.is_dictionary(src):
        src = src.value_type
    if pa.types.is_null(src):
        return None
    if pa.types.is_string(dst) or pa.types.is_large_string(dst):
        ok = (pa.types.is_string(src) or pa.types.is_large_string(src) or pa.types.is_binary(src)
              or pa.types.is_large_binary(src) or getattr(pa.types, "is_string_view", lambda _: False)(src))
        return None if ok else "a text column cannot be of another kind"
    if pa.types.is_integer(dst) or pa.types.is_floating(dst):
        if time and pa.types.is_timestamp(src):
            return None
        ok = pa.types.is_integer(src) or pa.types.is_floating(src) or pa.types.is_decimal(src)
        return None if ok else "a numeric column cannot be of another kind"
    if pa.types.is_list(dst) or pa.types.is_fixed_size_list(dst) or pa.types.is_large_list(dst):
        if not (pa.types.is_list(src) or pa.types.is_fixed_size_list(src) or pa.types.is_large_list(src)):
            return "a list column cannot be of another kind"
        inner = _kind_mismatch(src.value_type, dst.value_type)
        return f"its values: {inner}" if inner else None
    return None
