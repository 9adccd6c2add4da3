"""End to end: ``fleetloop mine`` (parse, validate, check, rank, write) against the yardstick's
``reference_miner.py`` on the same replicated KITTI frames, in one run.

    .venv/bin/python benchmarks/mining_e2e.py [--copies 136] [--json out.json]

Writes ``--copies`` renamed copies of the KITTI slice (calib, PointRCNN, both camera trackers,
seqmap; 1,479 frames a copy, so 136 copies = 201,144 frames) to a temporary directory, then runs
each miner as a child process and reports its CPU time (user + sys of the child), wall time,
frames per CPU-second and peak RSS, and ``fleetloop mine``'s own per-stage seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
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
    """Run ``cmd`` under /usr/bin/time-like accounting: CPU (user + sys), wall, peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed: {proc.stderr[-2000:]}")
    return {"cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
            "wall_s": round(wall, 2), "peak_rss_mb": round(after.ru_maxrss / 1024),
            "output": (proc.stdout + proc.stderr).strip()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=136)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    require_kitti()
    with tempfile.TemporaryDirectory(prefix="fleetloop-e2e-") as tmp:
        src = Path(tmp) / "kitti"
        frames = write_copies(src, args.copies)
        print(f"{frames:,} frames ({args.copies} copies of the KITTI slice); machine: {os.cpu_count()} cores", flush=True)
        fl = child([str(Path(sys.executable).parent / "fleetloop"), "mine", str(src), "--camera-tracker", "yolox_sort",
                    "--out", str(Path(tmp) / "ranked.csv")])
        stages = {}
        m = re.search(r"seconds: (\{[^}]*\})", fl["output"].replace("\n", " "))
        if m:
            stages = json.loads(m.group(1).replace("'", '"'))
        ref = child([sys.executable, str(REFERENCE), "--data", str(src), "--camera-tracker", "yolox_sort",
                     "--out", str(Path(tmp) / "ref.csv")])
    rep = {"frames": frames, "fleetloop": {k: v for k, v in fl.items() if k != "output"}, "fleetloop_stages_s": stages,
           "reference": {k: v for k, v in ref.items() if k != "output"}, "reference_output": ref["output"]}
    rep["cpu_ratio"] = round(fl["cpu_s"] / ref["cpu_s"], 3)
    rep["fleetloop"]["frames_per_cpu_s"] = round(frames / fl["cpu_s"])
    rep["reference"]["frames_per_cpu_s"] = round(frames / ref["cpu_s"])
    print(f"fleetloop mine (validated): {fl['cpu_s']} s CPU, {fl['wall_s']} s wall, {rep['fleetloop']['frames_per_cpu_s']:,} "
          f"frames/CPU-s, peak RSS {fl['peak_rss_mb']} MB; stages (wall s): {stages}")
    print(f"reference_miner.py:        {ref['cpu_s']} s CPU, {ref['wall_s']} s wall, {rep['reference']['frames_per_cpu_s']:,} "
          f"frames/CPU-s, peak RSS {ref['peak_rss_mb']} MB")
    print(f"CPU ratio fleetloop / reference = {rep['cpu_ratio']} (target <= 0.25)")
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
