"""End to end: ``fleetloop mine`` (parse, validate, check, rank, write) against the yardstick's
``reference_miner.py`` on the same replicated KITTI frames, in one run.

    .venv/bin/python benchmarks/mining_e2e.py [--copies 136] [--json out.json]

A one-copy run of ``fleetloop mine`` comes first, so numba's one-time compile of the association
kernels after an install (about 6 CPU-s, cached afterwards) is reported apart from the figure.
Writes ``--copies`` renamed copies of the KITTI slice (calib, PointRCNN, both camera trackers,
seqmap; 1,479 frames a copy, so 136 copies = 201,144 frames) to a temporary directory, then runs
each miner as a child process and reports its CPU time (user + sys of the child), wall time,
frames per CPU-second and peak RSS, and ``fleetloop mine``'s own per-stage seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import KITTI, require_kitti

REFERENCE = ROOT.parent / "shared" / "tools" / "kitti_eval" / "reference_miner.py"
SOURCES = ["calib", "lidar_det/pointrcnn", "camera_trk/ciwt", "camera_trk/yolox_sort"]


def write_copies(dest: Path, copies: int) -> int:
    seqmap = [line.split() for line in (KITTI / "seqmap.txt").read_text().splitlines() if line.strip()]
    lines, frames = [], 0
    for sub in SOURCES:
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for k in range(copies):
        for seq, _, start, n in seqmap:
            name = f"{k:04d}{seq}"
            for sub in SOURCES:
                shutil.copyfile(KITTI / sub / f"{seq}.txt", dest / sub / f"{name}.txt")
            lines.append(f"{name} empty {start} {n}")
            frames += int(n)
    (dest / "seqmap.txt").write_text("\n".join(lines) + "\n")
    return frames


def child(cmd: list[str]) -> dict:
    """Run ``cmd`` and account for it alone (``os.wait4``): CPU (user + sys, all its threads),
    wall time and its own peak RSS (``RUSAGE_CHILDREN`` would give the largest of all children)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, "COLUMNS": "250"})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errors = out.read().strip(), err.read().strip()
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {(text + chr(10) + errors)[-2000:]}")
    return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "wall_s": round(wall, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "output": text}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=136)
    ap.add_argument("--shard-logs", type=int, default=None, help="passed to fleetloop mine (default: its own)")
    ap.add_argument("--no-reference", action="store_true", help="run fleetloop mine only")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    require_kitti()
    with tempfile.TemporaryDirectory(prefix="fleetloop-e2e-") as tmp:
        # numba compiles the association kernels on the first run after an install and caches them
        # (fleetloop/perception/__pycache__); a one-copy run first keeps that out of the figure.
        cold = not any((ROOT / "fleetloop" / "perception" / "__pycache__").glob("geometry.*.nbi"))
        warm_src = Path(tmp) / "warm"
        warm_frames = write_copies(warm_src, 1)
        warm = child([str(Path(sys.executable).parent / "fleetloop"), "mine", str(warm_src), "--camera-tracker",
                      "yolox_sort", "--out", str(Path(tmp) / "warm.csv")])
        print(f"warm-up on one copy ({warm_frames:,} frames): {warm['cpu_s']} s CPU"
              + (" (numba's kernel cache was empty: this includes compiling them, once per install)" if cold else ""), flush=True)
        src = Path(tmp) / "kitti"
        frames = write_copies(src, args.copies)
        print(f"{frames:,} frames ({args.copies} copies of the KITTI slice); machine: {os.cpu_count()} cores", flush=True)
        cmd = [str(Path(sys.executable).parent / "fleetloop"), "mine", str(src), "--camera-tracker", "yolox_sort",
               "--out", str(Path(tmp) / "ranked.csv"), "--json"]
        if args.shard_logs:
            cmd += ["--shard-logs", str(args.shard_logs)]
        fl = child(cmd)
        summary = json.loads(fl["output"])  # ``--json``: the run's summary, its per-stage seconds included
        stages, wall_stages = summary["cpu_seconds"], summary["seconds"]
        ref = None if args.no_reference else child(
            [sys.executable, str(REFERENCE), "--data", str(src), "--camera-tracker", "yolox_sort",
             "--out", str(Path(tmp) / "ref.csv")])
    rep = {"frames": frames, "warm_up": {"cpu_s": warm["cpu_s"], "numba_cache_was_empty": cold}, "fleetloop": {k: v for k, v in fl.items() if k != "output"},
           "fleetloop_stages_cpu_s": stages, "fleetloop_stages_wall_s": wall_stages}
    rep["fleetloop"]["frames_per_cpu_s"] = round(frames / fl["cpu_s"])
    other = fl["cpu_s"] - sum(stages.values())
    shares = {k: round(v / fl["cpu_s"], 3) for k, v in stages.items()} | {"start-up, imports, other": round(other / fl["cpu_s"], 3)}
    rep["fleetloop_stage_shares"] = shares
    print(f"fleetloop mine (validated): {fl['cpu_s']} s CPU, {fl['wall_s']} s wall, {rep['fleetloop']['frames_per_cpu_s']:,} "
          f"frames/CPU-s, peak RSS {fl['peak_rss_mb']} MB")
    print(f"  CPU s per stage: {stages}; start-up, imports and the rest {other:.2f} s")
    print(f"  shares of its CPU: {shares}")
    if ref is not None:
        rep["reference"] = {k: v for k, v in ref.items() if k != "output"}
        rep["reference_output"] = ref["output"]
        rep["reference"]["frames_per_cpu_s"] = round(frames / ref["cpu_s"])
        rep["cpu_ratio"] = round(fl["cpu_s"] / ref["cpu_s"], 3)
        print(f"reference_miner.py: {ref['cpu_s']} s CPU, {ref['wall_s']} s wall, {rep['reference']['frames_per_cpu_s']:,} "
              f"frames/CPU-s, peak RSS {ref['peak_rss_mb']} MB")
        print(f"CPU ratio fleetloop / reference = {rep['cpu_ratio']} (target <= 0.25)")
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
