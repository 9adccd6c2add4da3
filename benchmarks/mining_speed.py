"""Mining throughput and memory, and the end-to-end cost of ``fleetloop mine`` vs a naive miner.

    .venv/bin/python benchmarks/mining_speed.py [--sizes 100000,300000,1000000] [--e2e-copies 20]
        [--skip-e2e] [--json out.json]

1. Checks + ranking: for each size, a FRESH process replicates the real KITTI frames (the 5
   sequences, 1,479 frames; the generated sample when ../shared is absent) under new log ids
   until it has that many frames, mines them shard by shard (a shard = ``--shard-frames`` frames
   of whole logs) and ranks all frames. It reports CPU seconds of mine + rank (generation
   excluded), frames per CPU-second (= per core: the kernels are single-threaded) and peak RSS.
   The numba kernels are compiled once and cached on disk; each worker loads them before timing
   (the load time is reported as ``jit_load_s``).
2. End to end: writes ``--e2e-copies`` renamed copies of the KITTI slice in its own file layout,
   then times, as child processes, ``fleetloop mine DIR --out ranked.csv`` (parse + Great
   Expectations validation + checks + ranking + CSV) and ``benchmarks/naive_mining.py DIR``
   (parse + per-frame numpy/scipy checks + ranking), and reports their CPU time (user + sys).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import KITTI


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _base_logs():
    from fleetloop.ingest.importers import load_logs
    from fleetloop.sim.sample import generate_sample

    if (KITTI / "calib").is_dir():
        return load_logs(KITTI, "kitti-tracking", camera_tracker="ciwt"), "kitti (ciwt)"
    return generate_sample(n_logs=5, n_frames=300, seed=0)[0], "generated sample"


def _renamed(logs, suffix: str):
    import pyarrow as pa
    import pyarrow.compute as pc

    from fleetloop.schema import DriveLogs

    out = {}
    for name, t in logs.tables().items():
        i = t.column_names.index("log_id")
        out[name] = t.set_column(i, "log_id", pc.binary_join_element_wise(t.column("log_id"), pa.scalar(suffix), "~"))
    return DriveLogs(**out)


def worker(n_frames: int, shard_frames: int) -> dict:
    """Runs in a fresh process: mine ``n_frames`` replicated frames shard by shard, then rank."""
    import pyarrow as pa

    from fleetloop.mine.mining import compact_frames, mine, rank
    from fleetloop.mine.params import MiningParams
    from fleetloop.schema import DriveLogs

    base, source = _base_logs()
    params = MiningParams(camera_classes=["car", "pedestrian"], lidar_classes=["car", "pedestrian", "cyclist"])
    t0 = time.perf_counter()
    mine(base.select(base.log_ids[:1]), params)  # load the cached numba kernels
    jit_load = time.perf_counter() - t0
    rss_start = _rss_mb()
    per_copy = base.num_frames
    copies = -(-n_frames // per_copy)
    copies_per_shard = max(1, shard_frames // per_copy)
    frames, cpu_mine, cpu_gen, flags, done = [], 0.0, 0.0, 0, 0
    for start in range(0, copies, copies_per_shard):
        c0 = time.process_time()
        shard = DriveLogs.concat([_renamed(base, f"{k:05d}") for k in range(start, min(copies, start + copies_per_shard))])
        c1 = time.process_time()
        res = mine(shard, params)
        c2 = time.process_time()
        cpu_gen += c1 - c0
        cpu_mine += c2 - c1
        frames.append(compact_frames(res.frames))
        flags += res.flags.num_rows
        done += shard.num_frames
        del shard, res
    c0 = time.process_time()
    ranked = rank(pa.concat_tables(frames))
    cpu_rank = time.process_time() - c0
    assert ranked.num_rows == done
    cpu = cpu_mine + cpu_rank
    return {"frames": done, "source": source, "shard_frames": copies_per_shard * per_copy, "flags": flags,
            "cpu_mine_s": round(cpu_mine, 3), "cpu_rank_s": round(cpu_rank, 3), "cpu_generate_s": round(cpu_gen, 3),
            "frames_per_cpu_s": round(done / cpu), "jit_load_s": round(jit_load, 2),
            "rss_after_warmup_mb": round(rss_start), "peak_rss_mb": round(_rss_mb()),
            "result_table_mb": round(ranked.nbytes / 2**20, 1)}


def run_sizes(sizes: list[int], shard_frames: int) -> list[dict]:
    out = []
    for n in sizes:
        proc = subprocess.run([sys.executable, __file__, "--worker", str(n), "--shard-frames", str(shard_frames)],
                              capture_output=True, text=True, check=True)
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = out[-1]
        print(f"  {r['frames']:>9,} frames: {r['frames_per_cpu_s']:>9,} frames/s/core (mine {r['cpu_mine_s']} s + rank "
              f"{r['cpu_rank_s']} s CPU), peak RSS {r['peak_rss_mb']} MB (after warm-up {r['rss_after_warmup_mb']} MB, "
              f"result table {r['result_table_mb']} MB)", flush=True)
    return out


def write_kitti_copies(dest: Path, copies: int) -> int:
    """``copies`` renamed copies of the KITTI slice (calib, lidar_det, camera_trk, seqmap)."""
    seqmap = [line.split() for line in (KITTI / "seqmap.txt").read_text().splitlines() if line.strip()]
    lines, frames = [], 0
    for sub in ["calib", "lidar_det/pointrcnn", "camera_trk/ciwt"]:
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for k in range(copies):
        for seq, _, start, n in seqmap:
            name = f"{k:04d}{seq}"
            for sub in ["calib", "lidar_det/pointrcnn", "camera_trk/ciwt"]:
                shutil.copyfile(KITTI / sub / f"{seq}.txt", dest / sub / f"{name}.txt")
            lines.append(f"{name} empty {start} {n}")
            frames += int(n)
    (dest / "seqmap.txt").write_text("\n".join(lines) + "\n")
    return frames


def _child_cpu(cmd: list[str]) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed: {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, (proc.stdout + proc.stderr).strip()


def run_e2e(copies: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="fleetloop-e2e-") as tmp:
        src = Path(tmp) / "kitti"
        frames = write_kitti_copies(src, copies)
        fleet = [str(Path(sys.executable).parent / "fleetloop"), "mine", str(src), "--format", "kitti-tracking",
                 "--camera-tracker", "ciwt", "--out", str(Path(tmp) / "ranked.csv")]
        cpu_f, wall_f, out_f = _child_cpu(fleet)
        naive = [sys.executable, str(ROOT / "benchmarks" / "naive_mining.py"), str(src), "--camera-tracker", "ciwt",
                 "--out", str(Path(tmp) / "naive.csv")]
        cpu_n, wall_n, out_n = _child_cpu(naive)
        agreement = _agreement(Path(tmp) / "ranked.csv", Path(tmp) / "naive.csv")
    return {"frames": frames, "fleetloop_cpu_s": round(cpu_f, 2), "fleetloop_wall_s": round(wall_f, 2),
            "naive_cpu_s": round(cpu_n, 2), "naive_wall_s": round(wall_n, 2), "cpu_ratio": round(cpu_f / cpu_n, 3),
            "fleetloop_output": out_f.splitlines()[0] if out_f else "", "naive_output": out_n, "agreement": agreement}


def _agreement(ours: Path, naive: Path) -> dict:
    import numpy as np
    import pandas as pd

    a = pd.read_csv(ours, dtype={"log_id": str})
    b = pd.read_csv(naive, dtype={"log_id": str})
    m = a.merge(b, on=["log_id", "frame"], suffixes=("", "_naive"))
    k = max(1, len(m) // 10)
    top_a = set(zip(a.log_id[:k], a.frame[:k], strict=False))
    top_b = set(zip(b.log_id[:k], b.frame[:k], strict=False))
    return {"expected_errors_corr": round(float(np.corrcoef(m.expected_errors, m.expected_errors_naive)[0, 1]), 4),
            "top10pct_overlap": round(len(top_a & top_b) / k, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--shard-frames", type=int, default=20_000)
    ap.add_argument("--e2e-copies", type=int, default=20)
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.shard_frames)))
        return 0
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    print("checks + ranking (fresh process per size):")
    report = {"sizes": run_sizes([int(s) for s in args.sizes.split(",")], args.shard_frames)}
    if not args.skip_e2e:
        if not (KITTI / "calib").is_dir():
            print("end to end: skipped (needs the KITTI slice in ../shared)")
        else:
            print(f"end to end on {args.e2e_copies} copies of the KITTI slice:", flush=True)
            e = report["e2e"] = run_e2e(args.e2e_copies)
            print(f"  {e['frames']:,} frames: fleetloop mine {e['fleetloop_cpu_s']} s CPU ({e['fleetloop_wall_s']} s wall), "
                  f"naive {e['naive_cpu_s']} s CPU ({e['naive_wall_s']} s wall): ratio {e['cpu_ratio']} "
                  f"(target <= 0.25); agreement {e['agreement']}")
            print(f"  fleetloop: {e['fleetloop_output']}")
            print(f"  {e['naive_output']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
