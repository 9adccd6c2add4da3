"""Validate drive logs with Great Expectations before anything uses them.

:func:`validate_logs` runs each table's suite (``fleetloop/ingest/suites/<table>.json``) ONCE
over the whole batch (GX has a per-run overhead; per-log runs would multiply it), then
attributes every failing row back to its log through an index column, so each log gets an exact
report: which expectation, which rows and frames, sample values. A log with a *critical*
failure is quarantined; *warnings* keep the log and list the rows (the miner flags them, e.g.
``invalid_box``). The severity model is written down in ``docs/schema.md`` ("Validation").

Every suite is first screened by :mod:`fleetloop.ingest.screen`, which evaluates the same
expectations with pyarrow and clears the ones GX would pass; GX runs only the others and writes
their report. A clean batch never reaches GX. GX is imported lazily and its ephemeral context,
data assets and validation definitions are built once per process (see :func:`_runner`).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from fleetloop.ingest.screen import screen
from fleetloop.ingest.suites import load_suite_dict
from fleetloop.schema import LABELS, STREAMS, DriveLogs
from fleetloop.store.atomic import write_atomic
from fleetloop.verdict import Verdict

Severity = Literal["critical", "warning"]

#: How many rows/sample values a report keeps per failure (the counts are always exact).
MAX_REPORT_ROWS = 10_000
MAX_SAMPLES = 10

#: Derived columns -> the original columns whose values make a failing row readable.
_SOURCE_COLUMNS = {
    "_dt_ns": ["timestamp_ns"],
    "_calibrated": [],
    "_frame_known": [],
    "_P_len": ["P"],
    "_P_finite": ["P"],
    "_fx": ["P"],
    "_fy": ["P"],
    "_lidar_to_cam_len": ["lidar_to_cam"],
    "_lidar_to_cam_finite": ["lidar_to_cam"],
    "_rot_err": ["lidar_to_cam"],
}


# the pydantic mypy plugin's synthesized __init__ ends in **kwargs, which clashes with the field
# named ``kwargs`` (a plugin limitation; the field name is part of the persisted reports)
class Failure(BaseModel):  # type: ignore[no-redef]
    """One expectation that failed for one log."""

    table: str
    expectation: str  # GX expectation type, or "arrow_schema" / "parse"
    description: str  # what the expectation says, in words
    severity: Severity
    flag: str | None = None  # for warnings: the miner's flag name (e.g. "invalid_box")
    columns: list[str] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)  # the expectation's parameters
    unexpected_count: int = 0  # failing rows of this log (exact)
    rows: list[int] = Field(default_factory=list)  # row positions within this log's table (first MAX_REPORT_ROWS)
    frames: list[int] = Field(default_factory=list)  # distinct frames of those rows
    samples: list[dict[str, Any]] = Field(default_factory=list)  # a few failing rows with their values
    detail: str | None = None  # for table-level failures: what GX observed

    @property
    def rows_truncated(self) -> bool:
        return self.unexpected_count > len(self.rows)


class LogReport(BaseModel):
    """Everything validation found about one log."""

    log_id: str
    status: Literal["quarantined", "warnings", "passed"]
    num_frames: int = 0
    rows: dict[str, int] = Field(default_factory=dict)  # rows of this log per table
    critical: list[Failure] = Field(default_factory=list)
    warnings: list[Failure] = Field(default_factory=list)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def quarantined(self) -> bool:
        return self.status == "quarantined"

    @classmethod
    def from_format_error(cls, log_id: str, error: Exception) -> LogReport:
        """A log whose files did not parse (see ``fleetloop.ingest.importers.load_logs_isolated``)."""
        path, line, fld, row = (getattr(error, a, None) for a in ("path", "line", "field", "row"))
        failure = Failure(
            table="source",
            expectation="parse",
            description=f"the source file parses ({getattr(error, 'reason', error)})",
            severity="critical",
            columns=[fld] if fld else [],
            kwargs={k: v for k, v in {"path": path, "line": line, "row": row}.items() if v is not None},
            unexpected_count=1,
            rows=[row] if row is not None else [],
            detail=str(error),
        )
        return cls(log_id=log_id, status="quarantined", critical=[failure])

    @property
    def reason(self) -> str:
        """Why the log is quarantined, in one line: its first critical failure (the parse error
        with its file and line, or ``table: expectation: description``) and how many more."""
        if not self.critical:
            return "failed validation"
        first = self.critical[0]
        text = (first.detail if first.expectation == "parse" and first.detail
                else f"{first.table}: {first.expectation}: {first.description}")
        more = len(self.critical) - 1
        return text + (f" (and {more} more critical failure{'s' if more > 1 else ''})" if more else "")

    @property
    def warning_line(self) -> str:
        """The log's warnings in one line: each table, how many rows fail what, and the miner's
        flag for them (the rows are kept and mined)."""
        return "; ".join(
            f"{w.table}: {w.unexpected_count} {'row fails' if w.unexpected_count == 1 else 'rows fail'} '{w.description}'"
            + (f" (flagged {w.flag})" if w.flag else "") for w in self.warnings)

    def to_markdown(self) -> str:
        return _markdown(self)

    def verdict(self) -> Verdict:
        """The report as the one decision type (``validation:<log>``): failed when quarantined,
        one reason per critical expectation; warnings stay in the details."""
        def line(f: Failure) -> str:
            return f"{f.table}: {f.description} ({f.unexpected_count} rows)"

        return Verdict.of(f"validation:{self.log_id}", [line(f) for f in self.critical],
                          passes=[f"{self.num_frames} frames passed"], warnings=[line(f) for f in self.warnings],
                          rows=self.rows)


@dataclass
class ValidationResult:
    """The outcome of validating a batch of logs."""

    good: DriveLogs  # the logs that passed (possibly with warnings)
    quarantined: dict[str, LogReport]  # log_id -> why it failed
    warnings: dict[str, LogReport]  # log_id -> warnings of logs that passed
    seconds: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)  # rows validated per table
    _flagged: list[tuple[str, str, np.ndarray, np.ndarray, str, str]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return not self.quarantined

    def flagged_rows(self, table: str | None = None, flag: str | None = None) -> pa.Table:
        """Every row of a good log that failed a warning: ``log_id, table, row, frame, flag,
        expectation`` (``row``: position within the log's table). All rows, not a sample."""
        parts = [
            (log_id, t, rows, frames, f, exp)
            for log_id, t, rows, frames, f, exp in self._flagged
            if (table is None or t == table) and (flag is None or f == flag)
        ]
        n = [len(p[2]) for p in parts]
        return pa.table(
            {
                "log_id": pa.array([p[0] for p, k in zip(parts, n, strict=True) for _ in range(k)], pa.string()),
                "table": pa.array([p[1] for p, k in zip(parts, n, strict=True) for _ in range(k)], pa.string()),
                "row": pa.array(np.concatenate([p[2] for p in parts]) if parts else [], pa.int64()),
                "frame": pa.array(np.concatenate([p[3] for p in parts]) if parts else [], pa.int32()),
                "flag": pa.array([p[4] for p, k in zip(parts, n, strict=True) for _ in range(k)], pa.string()),
                "expectation": pa.array([p[5] for p, k in zip(parts, n, strict=True) for _ in range(k)], pa.string()),
            }
        )


# --------------------------------------------------------------------------- GX, once per process

_LOCK = threading.Lock()
_RUNNERS: dict[str, Any] = {}  # table -> GX ValidationDefinition
_EXPECTATIONS: dict[str, list] = {}  # table -> its suite's Expectations, in file order (to run some of them)


def _runner(table: str):
    """The cached GX validation definition of ``table`` (context built on first use)."""
    with _LOCK:
        if not _RUNNERS:
            os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            from fleetloop.ingest.suites import TABLES

            ctx = gx.get_context(mode="ephemeral")
            ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
            source = ctx.data_sources.add_pandas(name="fleetloop")
            for name in TABLES:
                batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe("batch")
                d = load_suite_dict(name)
                d.pop("id", None)
                for e in d["expectations"]:
                    e.pop("id", None)
                suite = ctx.suites.add(gx.ExpectationSuite(**d))
                _EXPECTATIONS[name] = list(suite.expectations)
                _RUNNERS[name] = ctx.validation_definitions.add(
                    gx.ValidationDefinition(name=f"{name}-validation", data=batch, suite=suite)
                )
        return _RUNNERS[table]


_SUITES: dict[str, dict] = {}  # table -> suite dict, for the screen


def _suite(table: str) -> dict:
    with _LOCK:
        if table not in _SUITES:
            _SUITES[table] = load_suite_dict(table)
        return _SUITES[table]


_COMPLETE = {
    "result_format": "COMPLETE",
    "unexpected_index_column_names": ["_pos"],
    "return_unexpected_index_query": False,
    "partial_unexpected_count": 0,
}


def _run_suite(table: str, prepared: pa.Table) -> list:
    """The failed expectation results of ``table``'s suite on ``prepared``, with every failing row.

    First the suite's vectorised screen (:mod:`fleetloop.ingest.screen`): it clears the
    expectations GX would pass (``tests/unit/test_validation.py`` checks the two agree). GX runs
    only the ones it cannot clear, with ``COMPLETE`` results, and only then is it imported: on a
    clean batch GX is not run at all."""
    import copy

    flagged = screen(_suite(table), prepared)
    if not flagged:
        return []
    import great_expectations as gx
    import pandas as pd

    vd = _runner(table)
    again = []
    for i in flagged:
        e = copy.copy(_EXPECTATIONS[table][i])
        e.id = None
        again.append(e)
    df = _for_gx(prepared.select(_gx_columns(again, prepared.column_names)))
    # GX filters the whole batch frame per column expectation (df[df[col].notnull()]); without
    # copy-on-write pandas deep-copies every column each time. With it the copies are lazy.
    with _LOCK, pd.option_context("mode.copy_on_write", True):
        batch = vd.batch_definition.get_batch(batch_parameters={"dataframe": df})
        res = batch.validate(gx.ExpectationSuite(name=f"{table}-failures", expectations=again), result_format=_COMPLETE)
    return [r for r in res.results if not r.success]


def _gx_columns(expectations: list, columns: list[str]) -> list[str]:
    """The columns GX needs to run ``expectations`` and report their failing rows: the ones they
    name and the index column ``_pos``; all of them when one checks the table's set of columns.
    GX converts, hashes and indexes the frame it gets, so a narrow frame costs less (the result
    is the same: every expectation sees the columns it names, row for row)."""
    need = {"_pos"}
    for e in expectations:
        if e.expectation_type.startswith("expect_table_"):
            return columns
        need.update(_named_columns(e.configuration.kwargs))
    return [c for c in columns if c in need]


def _for_gx(prepared: pa.Table):
    """The pandas frame GX runs on. GX 1.24 vectorises between-checks only for int64/float64
    columns; narrower dtypes go through a per-value Python map (~25x slower), so they are widened.
    Strings become categoricals: no Python str per row, null checks and set membership on codes."""
    cols = {}
    for f in prepared.schema:
        col = prepared[f.name]
        if pa.types.is_floating(f.type):
            col = col.cast(pa.float64())
        elif pa.types.is_integer(f.type):
            col = col.cast(pa.int64())
        elif pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            col = col.dictionary_encode()
        cols[f.name] = col
    return pa.table(cols).to_pandas()


# --------------------------------------------------------------------------- derived columns


def _same_schema(table: pa.Table, schema: pa.Schema) -> str | None:
    """None if ``table`` has the schema's columns and types (nullability aside), else why not."""
    have = {f.name: f.type for f in table.schema}
    for f in schema:
        if f.name not in have:
            return f"column {f.name!r} is missing"
        if have[f.name] != f.type:
            return f"column {f.name!r} is {have[f.name]}, expected {f.type}"
    extra = sorted(set(have) - set(schema.names))
    return f"unexpected columns {extra}" if extra else None


def _frame_keys(log_id: pa.ChunkedArray, frame: pa.ChunkedArray, logs: pa.Array) -> np.ndarray:
    """int64 key per row: (index of log_id in ``logs``) << 32 | frame; -1 for unknown logs."""
    code = pc.index_in(log_id, value_set=logs).fill_null(-1).to_numpy().astype(np.int64)
    f = frame.fill_null(0).to_numpy().astype(np.int64) & 0xFFFFFFFF
    return np.where(code < 0, -1, (code << 32) | f)


def _prepare(name: str, t: pa.Table, logs: DriveLogs | None) -> pa.Table:
    """The table a suite validates: scalar columns plus the derived ``_`` columns."""
    n = t.num_rows
    cols: dict[str, Any] = {f.name: t[f.name] for f in t.schema
                            if not (pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type))}
    cols["_pos"] = np.arange(n, dtype=np.int64)
    cols["_missing"] = _missing(t, LABELS if name == "labels" else STREAMS[name])
    if name == "frames":
        order = pc.sort_indices(t, sort_keys=[("log_id", "ascending"), ("frame", "ascending")]).to_numpy()
        log_sorted = t["log_id"].take(order)
        ts_col = t["timestamp_ns"].take(order)
        ts = ts_col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        same = np.zeros(n, bool)
        if n > 1:
            same[1:] = pc.equal(log_sorted[1:], log_sorted[:-1]).fill_null(False).to_numpy(zero_copy_only=False)
        same &= ~pc.is_null(ts_col).to_numpy(zero_copy_only=False)  # a missing timestamp is _missing's job
        dt_sorted = np.full(n, np.nan)
        dt_sorted[1:] = np.diff(ts).astype(np.float64)  # differences in int64: exact, then small enough for float64
        dt_sorted[~same] = np.nan  # a log's first frame has no predecessor
        dt = np.empty(n)
        dt[order] = dt_sorted
        cols["_dt_ns"] = dt
        calibrated = logs.calibration["log_id"].combine_chunks() if logs is not None else pa.array([], pa.string())
        cols["_calibrated"] = pc.is_in(t["log_id"], value_set=calibrated).fill_null(False).to_numpy(zero_copy_only=False)
    elif name in ("lidar_detections", "camera_detections", "tracks"):
        frames = logs.frames if logs is not None else STREAMS["frames"].empty_table()
        known_logs = pc.unique(frames["log_id"])
        frame_keys = _frame_keys(frames["log_id"], frames["frame"], known_logs)
        keys = _frame_keys(t["log_id"], t["frame"], known_logs)
        frame_keys.sort()
        at = np.minimum(np.searchsorted(frame_keys, keys), max(frame_keys.size - 1, 0))
        cols["_frame_known"] = (keys >= 0) & (frame_keys[at] == keys) if frame_keys.size else np.zeros(n, bool)
    elif name == "calibration":
        for col, short in (("P", "_P"), ("lidar_to_cam", "_lidar_to_cam")):
            values = t[col].to_pylist()
            cols[f"{short}_len"] = np.array([len(v) if v is not None else 0 for v in values], np.int64)
            cols[f"{short}_finite"] = np.array(
                [v is not None and len(v) > 0 and all(x is not None and math.isfinite(x) for x in v) for v in values]
            )
            if col == "P":
                cols["_fx"] = np.array([_at(v, 0) for v in values], np.float64)
                cols["_fy"] = np.array([_at(v, 5) for v in values], np.float64)
            else:
                cols["_rot_err"] = np.array([_rotation_error(v) for v in values], np.float64)
    return pa.table(cols)


def _missing(t: pa.Table, schema: pa.Schema) -> pa.Array:
    """Per row, the comma-separated names of its missing fields (null where the schema requires
    a value, NaN in any float column); null for a complete row. Vectorised: the strings are
    built once per distinct pattern of missing fields, not per row."""
    n = t.num_rows
    names, masks = [], []
    for f in schema:
        col = t[f.name]
        if pa.types.is_floating(f.type):  # NaN is never a value; null only where allowed
            m = pc.is_nan(col).fill_null(False) if f.nullable else pc.is_null(col, nan_is_null=True)
        elif not f.nullable:
            if col.null_count == 0:
                continue
            m = pc.is_null(col)
        else:
            continue
        names.append(f.name)
        masks.append(m.to_numpy(zero_copy_only=False))
    bits = np.zeros(n, np.int64)
    for i, m in enumerate(masks):
        bits |= m.astype(np.int64) << i
    bad = np.flatnonzero(bits)
    if not bad.size:
        return pa.nulls(n, pa.string()).dictionary_encode()
    patterns, inverse = np.unique(bits[bad], return_inverse=True)
    labels = [", ".join(nm for i, nm in enumerate(names) if p >> i & 1) for p in patterns.tolist()]
    codes = np.full(n, -1, np.int32)
    codes[bad] = inverse
    return pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0), pa.array(labels, pa.string()))


def _at(v, i) -> float:
    return float(v[i]) if v is not None and len(v) > i and v[i] is not None else math.nan


def _rotation_error(v) -> float:
    if v is None or len(v) != 12 or any(x is None for x in v):
        return math.nan
    R = np.asarray(v, np.float64).reshape(3, 4)[:, :3]
    err = float(np.abs(R @ R.T - np.eye(3)).max())
    return err if math.isfinite(err) else math.nan


# --------------------------------------------------------------------------- attribution


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def _row_in_log(log_codes: np.ndarray) -> np.ndarray:
    """Position of each row among the rows of its log (vectorised)."""
    order = np.argsort(log_codes, kind="stable")
    sorted_codes = log_codes[order]
    starts = np.searchsorted(sorted_codes, sorted_codes, side="left")
    out = np.empty(len(log_codes), np.int64)
    out[order] = np.arange(len(log_codes)) - starts
    return out


class _Table:
    """Per-table arrays for attributing failing positions to logs, built lazily."""

    def __init__(self, name: str, table: pa.Table):
        self.name, self.table = name, table
        self._encoded: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _encode(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log code of each row, log id of each code, position of each row within its log)."""
        if self._encoded is None:
            enc = pc.dictionary_encode(self.table["log_id"].fill_null("<null>")).combine_chunks()
            codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            logs = np.asarray(enc.dictionary.to_pylist(), dtype=object)
            self._encoded = (codes, logs, _row_in_log(codes))
        return self._encoded

    def log_ids(self) -> list[str]:
        if "log_id" not in self.table.column_names:
            return []
        _, logs, _ = self._encode()
        return sorted(set(logs.tolist()))

    def by_log(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        all_codes, logs, _ = self._encode()
        codes = all_codes[pos]
        return {logs[c]: pos[codes == c] for c in np.unique(codes)}

    def rows(self, pos: np.ndarray) -> np.ndarray:
        _, _, row = self._encode()
        return row[pos]

    def frames(self, pos: np.ndarray) -> np.ndarray:
        if "frame" not in self.table.column_names:
            return np.zeros(0, np.int32)
        return self.table["frame"].take(pa.array(pos)).fill_null(-1).to_numpy(zero_copy_only=False)

    def values(self, col: str, pos: np.ndarray) -> list:
        return self.table[col].take(pa.array(pos)).to_pylist()


def _named_columns(kwargs) -> list[str]:
    """The columns an expectation's kwargs name (column, column_A/B, column_list)."""
    return [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs] + list(kwargs.get("column_list") or [])


def _failure_kwargs(cfg) -> tuple[list[str], dict]:
    kwargs = {k: _jsonable(v) for k, v in dict(cfg.kwargs).items() if k not in ("result_format", "batch_id")}
    return _named_columns(kwargs), kwargs


def _attribute(name: str, tab: _Table, results: list, sink: dict[str, dict[str, list[Failure]]], flagged: list) -> None:
    """Turn failed GX results of one table into per-log Failures in ``sink[log_id][severity]``."""
    for r in results:
        cfg = r.expectation_config
        severity: Severity = "warning" if str(getattr(cfg.severity, "value", cfg.severity)) == "warning" else "critical"
        flag = (cfg.meta or {}).get("flag")
        columns, kwargs = _failure_kwargs(cfg)
        base = dict(table=name, expectation=cfg.type, description=cfg.description or cfg.type, severity=severity,
                    flag=flag, columns=columns, kwargs=kwargs)
        exc = (r.exception_info or {}) if isinstance(r.exception_info, dict) else {}
        index = (r.result or {}).get("unexpected_index_list")
        if exc.get("raised_exception") or not index:
            # a table-level expectation (columns) or one that could not run: every log of the table
            detail = exc.get("exception_message") if exc.get("raised_exception") else None
            observed = (r.result or {}).get("observed_value")
            detail = detail or (f"observed: {_jsonable(observed)}" if observed is not None else None)
            level = "critical" if exc.get("raised_exception") else severity
            count = int((r.result or {}).get("unexpected_count") or 0)
            for log_id in tab.log_ids() or ["<unknown>"]:
                sink.setdefault(log_id, {"critical": [], "warning": []})[level].append(
                    Failure(**base, unexpected_count=count, detail=detail)
                )
            continue
        pos = np.fromiter((d["_pos"] for d in index), dtype=np.int64, count=len(index))
        by_pos = {int(d["_pos"]): d for d in index}
        extra = [c for col in columns for c in _SOURCE_COLUMNS.get(col, [])]
        for log_id, p in tab.by_log(pos).items():
            p = np.sort(p)
            rows = tab.rows(p)
            frames = tab.frames(p)
            sample_pos = p[:MAX_SAMPLES]
            samples = []
            extras = {c: tab.values(c, sample_pos) for c in extra}
            for i, q in enumerate(sample_pos):
                s: dict[str, Any] = {"row": int(rows[i])}
                if len(frames):
                    s["frame"] = int(frames[i])
                d = by_pos.get(int(q), {})
                s.update({k: _jsonable(v) for k, v in d.items() if k != "_pos"})
                s.update({c: _jsonable(extras[c][i]) for c in extras})
                samples.append(s)
            sink.setdefault(log_id, {"critical": [], "warning": []})[severity].append(
                Failure(
                    **base,
                    unexpected_count=len(p),
                    rows=rows[:MAX_REPORT_ROWS].tolist(),
                    frames=sorted(set(frames.tolist()))[:MAX_REPORT_ROWS],
                    samples=samples,
                )
            )
            if severity == "warning":
                flagged.append((log_id, name, rows, frames.astype(np.int32), flag or cfg.type, cfg.type))


# --------------------------------------------------------------------------- public API


def validate_logs(logs: DriveLogs) -> ValidationResult:
    """Validate every table of a batch of logs; quarantine the logs with critical failures."""
    t0 = time.perf_counter()
    sink: dict[str, dict[str, list[Failure]]] = {}
    flagged: list = []
    rows = {}
    for name, table in logs.tables().items():
        rows[name] = table.num_rows
        tab = _Table(name, table)
        problem = _same_schema(table, STREAMS[name])
        if problem is not None:
            for log_id in tab.log_ids() or logs.log_ids:
                sink.setdefault(log_id, {"critical": [], "warning": []})["critical"].append(
                    Failure(table=name, expectation="arrow_schema", severity="critical",
                            description=f"the {name} table has the schema of fleetloop.schema", detail=problem)
                )
            continue
        if table.num_rows == 0:
            continue
        _attribute(name, tab, _run_suite(name, _prepare(name, table, logs)), sink, flagged)
    bad = {log_id for log_id, s in sink.items() if s["critical"]}
    all_logs = logs.log_ids
    frames_per_log = _counts(logs.frames)
    rows_per_log = {name: _counts(t) for name, t in logs.tables().items()}
    quarantined: dict[str, LogReport] = {}
    warnings: dict[str, LogReport] = {}
    for log_id, s in sink.items():
        report = LogReport(
            log_id=log_id,
            status="quarantined" if log_id in bad else "warnings",
            num_frames=frames_per_log.get(log_id, 0),
            rows={name: c.get(log_id, 0) for name, c in rows_per_log.items()},
            critical=s["critical"],
            warnings=s["warning"],
        )
        (quarantined if log_id in bad else warnings)[log_id] = report
    good = logs if not bad else logs.select([i for i in all_logs if i not in bad])
    flagged = [f for f in flagged if f[0] not in bad]
    return ValidationResult(good=good, quarantined=quarantined, warnings=warnings,
                            seconds=time.perf_counter() - t0, rows=rows, _flagged=flagged)


def validate_table(name: str, table: pa.Table) -> dict[str, LogReport]:
    """Validate one table on its own (e.g. ``labels``); log_id -> report, for logs with any
    failure. Cross-table expectations (frame exists, log calibrated) need :func:`validate_logs`."""
    schema = LABELS if name == "labels" else STREAMS[name]
    sink: dict[str, dict[str, list[Failure]]] = {}
    tab = _Table(name, table)
    problem = _same_schema(table, schema)
    if problem is not None:
        for log_id in tab.log_ids() or ["<unknown>"]:
            sink.setdefault(log_id, {"critical": [], "warning": []})["critical"].append(
                Failure(table=name, expectation="arrow_schema", severity="critical",
                        description=f"the {name} table has the schema of fleetloop.schema", detail=problem)
            )
    elif table.num_rows:
        if name in ("frames", "lidar_detections", "camera_detections", "tracks"):
            raise ValueError(f"{name} refers to other tables: validate it with validate_logs")
        _attribute(name, tab, _run_suite(name, _prepare(name, table, None)), sink, [])
    counts = _counts(table)
    return {
        log_id: LogReport(log_id=log_id, status="quarantined" if s["critical"] else "warnings",
                          rows={name: counts.get(log_id, 0)}, critical=s["critical"], warnings=s["warning"])
        for log_id, s in sink.items()
    }


def validate_labels(labels: pa.Table) -> dict[str, LogReport]:
    """Labels are always strict: every failure is critical. log_id -> report of failing logs
    (empty when all labels are valid)."""
    return validate_table("labels", labels)


def _counts(t: pa.Table) -> dict[str, int]:
    if t.num_rows == 0 or "log_id" not in t.column_names:
        return {}
    vc = pc.value_counts(t["log_id"])
    return {v["values"].as_py(): v["counts"].as_py() for v in vc}


# --------------------------------------------------------------------------- quarantine

def quarantine_key(log_id: str) -> str:
    """``quarantine/<name>``: a valid log id is its own name; any other id gets an escaped name
    with a hash (:func:`fleetloop.store.ids.report_name`), so distinct ids never share a report."""
    from fleetloop.store.ids import report_name
    from fleetloop.store.keys import QUARANTINE

    return f"{QUARANTINE}{report_name(log_id)}"


def quarantine(dest, report: LogReport) -> str:
    """Write ``quarantine/<name>/report.md`` and ``report.json`` under ``dest`` (``<name>``: see
    :func:`quarantine_key`): a directory (``Path``/``str``) or a store with ``put_bytes(key,
    data)`` (``fleetloop.store.objects.Store``). Returns where the markdown report is (a path for
    a directory, a key for a store)."""
    base = quarantine_key(report.log_id)
    # file names that are not UTF-8 (undecodable bytes arrive as surrogates) are written escaped
    md = report.to_markdown().encode("utf-8", "backslashreplace")
    js = (json.dumps(report.model_dump(mode="json"), indent=2) + "\n").encode()
    if hasattr(dest, "put_bytes"):
        dest.put_bytes(f"{base}/report.json", js)
        dest.put_bytes(f"{base}/report.md", md)
        return f"{base}/report.md"
    d = Path(dest) / base
    d.mkdir(parents=True, exist_ok=True)
    for fname, data in (("report.json", js), ("report.md", md)):
        write_atomic(d / fname, data)  # unique temporary names: writers never share one
    return str(d / "report.md")


def _ranges(values: list[int], limit: int = 40) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    if not values:
        return "-"
    vs = sorted(set(values))
    out, start, prev = [], vs[0], vs[0]
    for v in [*vs[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    text = ", ".join(out[:limit])
    return text + (f", ... ({len(out) - limit} more runs)" if len(out) > limit else "")


_COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list", "column_set")


def _markdown(r: LogReport) -> str:
    title = {"quarantined": "Quarantined log", "warnings": "Log passed with warnings", "passed": "Log passed"}[r.status]
    lines = [f"# {title} `{r.log_id}`", ""]
    lines.append(f"Validated {r.created_at}: {len(r.critical)} critical failure(s), {len(r.warnings)} warning(s).")
    if r.rows:
        lines.append("Rows: " + ", ".join(f"{k} {v:,}" for k, v in r.rows.items()) + ".")
    lines.append("")
    if r.quarantined:
        lines.append("Critical failures quarantine the whole log: nothing downstream uses it until it is fixed "
                     "and ingested again. Severity model: docs/schema.md, section Validation.")
        lines.append("")
    for heading, failures in (("Critical", r.critical), ("Warnings", r.warnings)):
        if not failures:
            continue
        lines += [f"## {heading}", ""]
        for f in failures:
            params = ", ".join(f"{k}={v}" for k, v in f.kwargs.items() if k not in _COLUMN_KWARGS)
            cols = ", ".join(f"`{c}`" for c in f.columns)
            lines.append(f"### {f.table}: {f.description}")
            lines.append("")
            lines.append(
                f"- expectation: `{f.expectation}`" + (f" on {cols}" if cols else "") + (f" ({params})" if params else "")
            )
            if f.flag:
                lines.append(f"- flag: `{f.flag}`")
            if f.detail:
                lines.append(f"- detail: {f.detail}")
            if f.rows or f.unexpected_count:
                more = f" (first {len(f.rows):,} listed in report.json)" if f.rows_truncated else ""
                lines.append(f"- failing rows: {f.unexpected_count:,}{more}; rows {_ranges(f.rows)}")
            if f.frames:
                lines.append(f"- frames: {_ranges(f.frames)}")
            if f.samples:
                keys = list(dict.fromkeys(k for s in f.samples for k in s))
                lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                for s in f.samples:
                    lines.append("| " + " | ".join(_cell(s.get(k)) for k in keys) + " |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    return str(v).replace("|", "\\|")


def label_failures(labels: pa.Table) -> list[str]:
    """The labels suite as a plain check for the labeling sync (``LabelValidator``): one message
    per failing expectation, empty when every row is valid."""
    return [f"log {log_id}: {reason}" for log_id, report in validate_labels(labels).items()
            for reason in report.verdict().reasons if not report.verdict().passed]

