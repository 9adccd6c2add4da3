"""fleetloop's own columnar layout: ``<root>/<log_id>/<stream>.parquet``, one file per stream
(see :mod:`fleetloop.schema`). A missing stream file means the log does not carry that
stream; ``frames`` and ``calibration`` are required."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fleetloop.importers import LogFormatError
from fleetloop.schema import STREAMS, DriveLogs

REQUIRED = ("frames", "calibration")


def write_parquet_log(logs: DriveLogs, root: Path | str) -> list[Path]:
    """Write each log of ``logs`` in the parquet layout; returns the log directories."""
    root = Path(root)
    out = []
    for log_id in logs.log_ids:
        one = logs.select([log_id])
        d = root / log_id
        d.mkdir(parents=True, exist_ok=True)
        for name, table in one.tables().items():
            tmp = d / f".{name}.parquet.tmp"
            pq.write_table(table, tmp)
            tmp.replace(d / f"{name}.parquet")
        out.append(d)
    return out


class ParquetImporter:
    name = "parquet"

    def list_logs(self, root: Path) -> list[str]:
        if (root / "frames.parquet").exists():  # a single log directory
            return [root.name]
        return sorted(p.name for p in root.iterdir() if (p / "frames.parquet").exists())

    def load(self, root: Path, log_ids: list[str] | None = None) -> DriveLogs:
        root = Path(root)
        single = (root / "frames.parquet").exists()
        available = self.list_logs(root)
        if not available:
            raise LogFormatError(root, "no logs found (expected <log_id>/frames.parquet)")
        log_ids = available if log_ids is None else log_ids
        missing = sorted(set(log_ids) - set(available))
        if missing:
            raise LogFormatError(root, f"logs not found: {missing}")
        parts = [self._load_one(root if single else root / log_id) for log_id in log_ids]
        return DriveLogs.concat(parts)

    @staticmethod
    def _load_one(d: Path) -> DriveLogs:
        tables = {}
        for name, schema in STREAMS.items():
            path = d / f"{name}.parquet"
            if not path.exists():
                if name in REQUIRED:
                    raise LogFormatError(path, f"required stream {name!r} is missing")
                tables[name] = schema.empty_table()
                continue
            try:
                t = pq.read_table(path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise LogFormatError(path, f"not a readable parquet file: {exc}") from None
            for f in schema:
                if f.name not in t.column_names:
                    raise LogFormatError(path, "missing column", field=f.name)
            try:
                t = t.select(schema.names).cast(schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise LogFormatError(path, f"columns do not match the {name} schema: {exc}") from None
            tables[name] = t
        return DriveLogs(**tables)
