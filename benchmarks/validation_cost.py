"""What validation (Great Expectations suites, fleetloop.ingest.validation) costs next to the rest of ingest.

Replicates the real KITTI slice to about N frames (each copy a new log id), then times, per
100k frames: parsing the KITTI text files, reading/writing the parquet layout, and
``validate_logs`` on the whole batch (one suite run per table), and on the same batch made clean
(without CIWT's one inverted box per copy: no expectation fails, so GX is not run). CPU seconds of this process
(robust on a shared machine) and wall seconds, best of ``--repeat``.

    .venv/bin/python benchmarks/validation_cost.py [--frames 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
from common import KITTI, replicate_logs

from fleetloop.ingest.importers import load_logs
from fleetloop.ingest.importers.parquet import write_parquet_log
from fleetloop.ingest.validation import validate_logs
from fleetloop.schema import DriveLogs


def timed(fn, repeat: int):
    best_cpu = best_wall = float("inf")
    out = None
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        best_cpu, best_wall = min(best_cpu, time.process_time() - c), min(best_wall, time.perf_counter() - w)
    return out, best_cpu, best_wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kitti", type=Path, default=KITTI)
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not (args.kitti / "calib").is_dir():
        print(f"KITTI slice not found at {args.kitti}", file=sys.stderr)
        return 2

    one = load_logs(args.kitti, "kitti-tracking")
    copies = -(-args.frames // one.num_frames)

    def parse():
        return replicate_logs(load_logs(args.kitti, "kitti-tracking"), copies)

    batch, parse_cpu, parse_wall = timed(parse, args.repeat)
    n = batch.num_frames
    rows = sum(t.num_rows for t in batch.tables().values())
    validate_logs(one)  # first call: imports GX and builds the context (once per process)

    first = time.perf_counter()
    validate_logs(one)
    warm_small = time.perf_counter() - first
    result, val_cpu, val_wall = timed(lambda: validate_logs(batch), args.repeat)
    # the same batch without CIWT's one inverted box per copy: clean, so no expectation reaches GX
    tr = batch.tracks
    ok = pc.and_(pc.greater(tr["x2"], tr["x1"]), pc.greater(tr["y2"], tr["y1"]))
    clean = DriveLogs(**{**batch.tables(), "tracks": tr.filter(ok)})
    clean_result, clean_cpu, clean_wall = timed(lambda: validate_logs(clean), args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        _, write_cpu, write_wall = timed(lambda: write_parquet_log(batch, tmp), args.repeat)
        _, read_cpu, read_wall = timed(lambda: load_logs(tmp, "parquet"), args.repeat)

    per = 100_000 / n
    print(f"batch: {n:,} frames ({copies} copies of {one.num_frames} real frames), {rows:,} rows in all tables")
    print(f"validation result: {len(result.quarantined)} quarantined, {len(result.warnings)} logs with warnings "
          f"(clean batch: {len(clean_result.quarantined)}, {len(clean_result.warnings)})")
    print("seconds per 100k frames    CPU     wall")
    for label, c, w in (
        ("parse KITTI text", parse_cpu, parse_wall),
        ("read parquet layout", read_cpu, read_wall),
        ("write parquet layout", write_cpu, write_wall),
        ("validate_logs", val_cpu, val_wall),
        ("  same, clean batch", clean_cpu, clean_wall),
    ):
        print(f"  {label:<24} {c * per:6.2f}  {w * per:6.2f}")
    kitti_ingest = parse_cpu + val_cpu + write_cpu
    parquet_ingest = read_cpu + val_cpu + write_cpu
    print(f"validation share of ingest (CPU): KITTI text {val_cpu / kitti_ingest:.0%}, parquet {val_cpu / parquet_ingest:.0%}")
    print(f"fixed cost of one validate_logs call on the real slice (warm): {warm_small:.2f} s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
