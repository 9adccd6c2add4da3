"""Mine logs straight from files: what ``fleetloop mine PATH`` does.

Logs are read (the ingest step's importers), validated (its Great Expectations suites) and mined
shard by shard (a shard = a group of whole logs), so memory holds one shard plus the per-frame
results. A log that does not parse, fails validation, or (with validation off) is refused by the
miner is quarantined with its reason; the other logs are still mined. The frames of all shards
are then ranked (or selected under a budget) and written as CSV or Parquet. It combines two steps of the loop (ingest and mine), so it sits above
both, beside the weekly cycle.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from fleetloop.ingest.importers import LogFormatError, get_importer
from fleetloop.mine.files import MiningOutputError, out_kind, write_frames
from fleetloop.mine.mining import MiningResult, compact_frames, expand_frames, mine, rank, select, select_cost
from fleetloop.mine.params import MiningParams
from fleetloop.perception.batch import MiningInputError
from fleetloop.schema import DriveLogs, camera_stream_matches

if TYPE_CHECKING:
    from fleetloop.ingest.validation import ValidationResult


@dataclass
class MineFilesReport:
    logs: int = 0
    frames: int = 0
    flags: int = 0
    written: int = 0
    quarantined: dict[str, str] = field(default_factory=dict)  # log_id -> reason
    warnings: dict[str, str] = field(default_factory=dict)  # log_id -> validation warnings (the log is mined)
    skipped: list[str] = field(default_factory=list)
    judged_camera: list[str] = field(default_factory=list)  # the judged camera stream (one per shard that has cameras)
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # stage -> CPU seconds of this process (all threads)
    validation: str = "off"  # "great-expectations" | "off" | "unavailable"


class CameraStreamError(ValueError):
    """The camera stream asked for by name (``--camera-tracker``) is judged in no log: mining
    would silently judge another stream. Raised before anything is written."""


def check_judged(wanted: str | None, judged: list[str], skipped: list[str]) -> None:
    """Raise :class:`CameraStreamError` when a camera stream asked for by name (``wanted``) was
    judged in no shard (``judged``: the streams that were; ``skipped``: the miner's notes, which
    name the streams the logs have)."""
    if not wanted or any(camera_stream_matches(name, wanted) for name in judged):
        return
    note = next((s for s in skipped if s.startswith("camera stream ")), "")
    listed = re.search(r"\(streams: \[(.*?)\]\)", note)  # the miner's note names the streams the logs have
    streams = dict.fromkeys(n.strip().strip("'\"") for n in listed.group(1).split(",")) if listed else {}
    have = (f"the logs have {', '.join(streams)}" if streams else
            f"judged instead: {', '.join(judged)}" if judged else "the logs have no camera stream")
    raise CameraStreamError(f"no log has the camera stream {wanted!r} ({have}); nothing written")


def _input_files(importer, root: Path, ids: list[str], out: Path) -> str | None:
    """The log whose own file ``out`` is (a parquet layout's ``<log>/<stream>.parquet``), or None:
    writing the ranking there would destroy the log."""
    from fleetloop.schema import STREAMS

    if importer.name != "parquet" or out.suffix.lower() != ".parquet" or out.stem not in STREAMS:
        return None
    target = out.resolve().parent
    return next((i for i in ids if importer.location(root, i).resolve() == target), None)


def _load_shard(importer, root: Path, ids: list[str], report: MineFilesReport) -> DriveLogs | None:
    """Load a shard; when a file does not parse, load its logs one by one and quarantine the bad."""
    try:
        return importer.load(root, ids)
    except LogFormatError as exc:
        if len(ids) == 1:  # a shard of one log: quarantined like any other, the run goes on
            report.quarantined[ids[0]] = str(exc)
            return None
    parts = []
    for log_id in ids:
        try:
            parts.append(importer.load(root, [log_id]))
        except LogFormatError as exc:
            report.quarantined[log_id] = str(exc)
    return DriveLogs.concat(parts) if parts else None


def _mine_shard(logs: DriveLogs, params: MiningParams, report: MineFilesReport) -> list[tuple[int, MiningResult]]:
    """Mine a shard; when the miner rejects its input (a log it cannot mine, e.g. with
    ``--no-validate``), mine its logs one by one and quarantine the ones it rejects. Returns
    (logs mined, result) pairs."""
    try:
        return [(len(logs.log_ids), mine(logs, params))]
    except MiningInputError as exc:
        if len(logs.log_ids) == 1:
            report.quarantined[logs.log_ids[0]] = str(exc)
            return []
    results = []
    for log_id in logs.log_ids:
        try:
            results.append((1, mine(logs.select([log_id]), params)))
        except MiningInputError as exc:
            report.quarantined[log_id] = str(exc)
    return results


def mine_files(
    root: Path | str,
    fmt: str,
    out: Path | str | None = None,
    *,
    budget: int | None = None,
    budget_cost: float | None = None,
    params: MiningParams | None = None,
    validate: bool = True,
    shard_logs: int = 128,
    log_ids: list[str] | None = None,
    importer_options: dict | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    camera_tracker: str | None = None,
) -> tuple[pa.Table, MineFilesReport]:
    """Load, validate, mine, rank (or select ``budget`` frames, or frames worth ``budget_cost``
    of labelling cost) and write to ``out``.

    Returns the written table (ranked frames, or the selection) and a report. ``progress`` is
    called as ``progress(stage, logs_done, logs_total)``. ``camera_tracker``: the camera stream
    asked for by name (``--camera-tracker``, also set as ``params.camera_stream``): judged in no
    log, it is a :class:`CameraStreamError` and nothing is written. An ``out`` that is one of the logs' own
    files is a :class:`~fleetloop.mine.files.MiningOutputError` before any work."""
    params = params or MiningParams()
    root = Path(root)
    out = Path(out) if out is not None else None
    if out is not None:
        out_kind(out)
    if not root.exists():
        raise FileNotFoundError(f"log source {root} does not exist")
    report = MineFilesReport()
    importer = get_importer(fmt, **(importer_options or {}))
    available = importer.list_logs(root)
    if out is not None and (owner := _input_files(importer, root, available, out)):
        raise MiningOutputError(f"--out {out}: is a file of log {owner} under {root}; writing the ranking there "
                                "would destroy the log")
    if log_ids:
        missing = sorted(set(log_ids) - set(available))
        if missing:
            raise LogFormatError(root, f"logs not found: {missing}")
        available = [i for i in available if i in set(log_ids)]
    if not available:
        raise LogFormatError(root, "no logs found")
    validate_logs: Callable[[DriveLogs], ValidationResult] | None = None
    if validate:
        try:
            from fleetloop.ingest.validation import validate_logs as ge_validate_logs
            validate_logs = ge_validate_logs
            report.validation = "great-expectations"
        except ImportError:
            report.validation = "unavailable"
    shards = [available[i : i + shard_logs] for i in range(0, len(available), shard_logs)]
    frames: list[pa.Table] = []
    skipped: set[str] = set()
    t = {"load": 0.0, "validate": 0.0, "mine": 0.0, "rank": 0.0, "write": 0.0}
    cpu = dict.fromkeys(t, 0.0)
    clock = time.process_time
    done = 0
    for ids in shards:
        if progress:
            progress("loading", done, len(available))
        t0, c0 = time.perf_counter(), clock()
        logs = _load_shard(importer, root, ids, report)
        t["load"] += time.perf_counter() - t0
        cpu["load"] += clock() - c0
        if logs is not None and validate_logs is not None:
            if progress:
                progress("validating", done, len(available))
            t0, c0 = time.perf_counter(), clock()
            result = validate_logs(logs)
            t["validate"] += time.perf_counter() - t0
            cpu["validate"] += clock() - c0
            for log_id, rep in result.quarantined.items():
                report.quarantined[log_id] = rep.reason
            for log_id, rep in result.warnings.items():
                report.warnings[log_id] = rep.warning_line
            logs = result.good if result.good.num_frames else None
        if logs is not None and logs.num_frames:
            if progress:
                progress("mining", done, len(available))
            t0, c0 = time.perf_counter(), clock()
            results = _mine_shard(logs, params, report)
            t["mine"] += time.perf_counter() - t0
            cpu["mine"] += clock() - c0
            for n_logs, res in results:
                frames.append(compact_frames(res.frames))
                report.flags += res.flags.num_rows
                report.logs += n_logs
                skipped.update(res.skipped)
                if res.judged_camera and res.judged_camera not in report.judged_camera:
                    report.judged_camera.append(res.judged_camera)
        done += len(ids)
        if progress:
            progress("mined", done, len(available))
    if not frames:  # every log quarantined: an error, never an empty ranking written over --out
        why = "; ".join(f"{k}: {v}" for k, v in list(report.quarantined.items())[:3])
        raise MiningInputError(f"no logs to mine: all {len(available)} logs were quarantined"
                               + (f" ({why}{'; ...' if len(report.quarantined) > 3 else ''})" if why else ""),
                               quarantined=dict(report.quarantined))
    check_judged(camera_tracker, report.judged_camera, sorted(skipped))
    t0, c0 = time.perf_counter(), clock()
    all_frames = pa.concat_tables(frames)
    report.frames = all_frames.num_rows
    if budget_cost is not None:
        table = select_cost(all_frames, budget_cost, params).drop_columns(["selected_score"])
    elif budget is None:
        table = rank(all_frames)
        table = table.append_column("rank", pa.array(range(1, table.num_rows + 1), pa.int64()))
    else:
        table = select(all_frames, budget, params).drop_columns(["selected_score"])
    table = expand_frames(table)
    if fmt == "kitti-tracking":  # KITTI's name for a log: the yardstick's score.py reads the file as it is
        table = table.append_column("sequence", table.column("log_id"))
    t["rank"] = time.perf_counter() - t0
    cpu["rank"] = clock() - c0
    if out is not None:
        t0, c0 = time.perf_counter(), clock()
        write_frames(table, out)
        t["write"] = time.perf_counter() - t0
        cpu["write"] = clock() - c0
    report.written = table.num_rows
    report.skipped = sorted(skipped)
    report.seconds = {k: round(v, 3) for k, v in t.items()}
    report.cpu_seconds = {k: round(v, 3) for k, v in cpu.items()}
    return table, report
