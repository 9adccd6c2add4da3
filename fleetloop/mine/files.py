"""Mining output files: a ranking or a selection written as CSV or Parquet, atomically.

Reading logs from files, validating and mining them is :mod:`fleetloop.mine_files` (it combines
the ingest and mine steps, so it lives above both)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fleetloop.store.atomic import write_atomic

FIRST_COLUMNS = ["log_id", "frame", "score", "reasons", "rank"]


class MiningOutputError(ValueError):
    """The output path cannot be written (unknown suffix, missing directory)."""


def out_kind(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise MiningOutputError(f"--out {out}: the file name must end in .csv or .parquet")
    if not out.parent.exists():
        raise MiningOutputError(f"--out {out}: directory {out.parent} does not exist")
    return suffix[1:]


def write_frames(table: pa.Table, out: Path) -> None:
    """Write ``table`` to ``out`` (CSV or Parquet by suffix) atomically: into a temporary file of
    a unique name in the same directory, then renamed over ``out``. Concurrent writers never
    share a temporary file (the last rename wins, whole); on any failure (a full disk
    included) the temporary file is removed, ``out`` is left as it was, and the error is a
    :class:`MiningOutputError` naming ``out``."""
    kind = out_kind(out)
    cols = FIRST_COLUMNS + [c for c in table.column_names if c not in FIRST_COLUMNS]
    table = table.select([c for c in cols if c in table.column_names])

    def write(fh: BinaryIO) -> None:
        if kind == "csv":
            _write_csv(table, fh)
        else:
            pq.write_table(table, fh)

    try:
        write_atomic(out, write)
    except (OSError, pa.ArrowException) as exc:
        raise MiningOutputError(f"--out {out}: cannot write: {exc}") from None


def _write_csv(table: pa.Table, fh: BinaryIO) -> None:
    fh.write((",".join(table.column_names) + "\n").encode())
    try:  # plain cells when no value needs quoting (the usual case), quoted strings otherwise
        pacsv.write_csv(table, fh, write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"))
    except pa.ArrowInvalid:
        fh.seek(0)
        fh.truncate()
        pacsv.write_csv(table, fh, write_options=pacsv.WriteOptions(quoting_style="needed"))
