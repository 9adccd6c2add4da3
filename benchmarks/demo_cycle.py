"""How long one weekly cycle of ``fleetloop demo`` takes, stage by stage.

    .venv/bin/python benchmarks/demo_cycle.py                      # a fresh demo home: week 0 + 2 weeks
    .venv/bin/python benchmarks/demo_cycle.py --home .fleetloop --weeks 1   # one more week of an existing demo

Runs ``fleetloop demo --weeks N --json`` (the real thing: local Prefect server and Label Studio,
DVC, the registry) with ``FLEETLOOP_HOME`` set to ``--home`` (default: a temporary directory,
so week 0, the seed set and the first model trained from scratch, comes first), then prints, for
every week it ran, each stage's seconds as the demo recorded them: the fleet's drive, ingest,
the weekly cycle's steps (drift, sync, grow, retrain, calibrate, mine, push), the simulated
labeling team, and the week's own labels synced, grown and trained on (sync, grow, retrain). The
issue's target: a weekly cycle at the default size (drive + ingest + cycle + labeling + sync +
grow + retrain) in under 10 minutes on 2 cores. The load average is printed beside the figures: this
machine is often shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 600.0
STAGES = ("drive", "ingest", "cycle.drift", "cycle.sync", "cycle.grow", "cycle.retrain", "cycle.calibrate",
          "cycle.mine", "cycle.push", "labeling", "sync", "grow", "retrain")


def run(home: Path, weeks: int) -> dict:
    env = {**os.environ, "FLEETLOOP_HOME": str(home)}
    fleetloop = Path(sys.executable).with_name("fleetloop")
    cmd = [str(fleetloop), "demo", "--weeks", str(weeks), "--json"]
    print(f"$ FLEETLOOP_HOME={home} fleetloop {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)  # progress: on stderr
    if proc.returncode != 0:
        raise SystemExit(f"fleetloop demo failed with exit code {proc.returncode}")
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, help="FLEETLOOP_HOME of the demo (default: a fresh temporary one)")
    ap.add_argument("--weeks", type=int, default=None, help="weeks to run (default: 2 in a fresh home, else 1)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    if a.home is None:
        with tempfile.TemporaryDirectory(prefix="demo-cycle-") as tmp:
            doc = run(Path(tmp), a.weeks or 2)
            subprocess.run([str(Path(sys.executable).with_name("fleetloop")), "services", "down"], cwd=ROOT,
                           env={**os.environ, "FLEETLOOP_HOME": tmp}, capture_output=True)
    else:
        doc = run(a.home.resolve(), a.weeks or 1)
    wall = time.perf_counter() - t0
    rows = doc.get("rows", [])
    ran = rows[-(a.weeks or (2 if a.home is None else 1)):]
    print(f"\n{'week':>4} " + " ".join(f"{s:>15}" for s in STAGES) + f" {'week total':>11}")
    for r in ran:
        sec = r.get("seconds", {})
        if r["week"] == 0:
            print(f"{0:>4}  bootstrap: " + ", ".join(f"{k} {v:.0f} s" for k, v in sec.items()))
            continue
        total = sum(sec.get(k, 0.0) for k in ("drive", "ingest", "cycle", "labeling", "sync", "grow", "retrain"))
        print(f"{r['week']:>4} " + " ".join(f"{sec.get(s, 0.0):>15.1f}" for s in STAGES)
              + f" {total:>9.0f} s  {'under' if total < TARGET_S else 'OVER'} the 10-minute target")
    load1 = os.getloadavg()
    print(f"\nwall {wall:.0f} s for the whole run; load average {load0[0]:.1f} before, {load1[0]:.1f} after "
          f"(2 cores: above 2 means other jobs competed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
