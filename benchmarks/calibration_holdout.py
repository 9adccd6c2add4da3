"""Does calibration on some sequences' labels improve the ranking of the others?

    .venv/bin/python benchmarks/calibration_holdout.py [--camera-tracker yolox_sort] [--out-dir DIR]

Leave-one-sequence-out on the KITTI slice: for each sequence S, ``calibrate`` on the labels of
the other four (``fleetloop.mine.calibrate``, its own 2D matching rules) and mine S with the
fitted params; S is never used to fit what ranks it. The held-out rankings of the five folds are
written as one ranking CSV (``sequence,frame,score``) next to the uncalibrated ranking, and both
are scored by the yardstick exactly as its README says
(``python3 ../shared/tools/kitti_eval/score.py --ranking R.csv --truth T.csv``, truth from its
``truth.py``). Also per fold (each held-out sequence alone).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import KITTI, require_kitti

YARDSTICK = ROOT.parent / "shared" / "tools" / "kitti_eval"


def ranking_csv(frames, path: Path) -> None:
    import pyarrow.csv as pacsv

    t = frames.select(["log_id", "frame", "score"]).rename_columns(["sequence", "frame", "score"])
    pacsv.write_csv(t, path)


def score(ranking: Path, truth: Path) -> str:
    out = subprocess.run(["python3", str(YARDSTICK / "score.py"), "--ranking", str(ranking), "--truth", str(truth)],
                         capture_output=True, text=True, check=True).stdout
    return out.strip()


def at10(report: str) -> tuple[float, float]:
    row = next(line for line in report.splitlines() if line.strip().startswith("10%"))
    parts = row.split()
    return float(parts[4]), float(parts[6])


def main(argv: list[str] | None = None) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc

    from fleetloop.ingest.importers import load_logs
    from fleetloop.ingest.importers.kitti import read_kitti_truth
    from fleetloop.mine.calibrate import calibrate, kitti_labels
    from fleetloop.mine.mining import mine
    from fleetloop.mine.params import MiningParams

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--camera-tracker", default="yolox_sort", help="the judged camera stream of the miner")
    ap.add_argument("--out-dir", type=Path, default=Path("calibration_holdout"))
    args = ap.parse_args(argv)
    require_kitti()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    truth = out / "truth.csv"  # the yardstick's truth: YOLOX-SORT is the stream whose errors count
    subprocess.run(["python3", str(YARDSTICK / "truth.py"), "--data", str(KITTI), "--out", str(truth)], check=True,
                   capture_output=True)
    logs = load_logs(KITTI, "kitti-tracking")
    labels = kitti_labels(read_kitti_truth(KITTI))
    params = MiningParams(camera_stream=args.camera_tracker)
    seqs = sorted(logs.log_ids)
    base = mine(logs, params).frames
    held: list[pa.Table] = []
    lines = [f"judged camera stream {args.camera_tracker}; leave-one-sequence-out", "",
             "| held-out | uncalibrated lift / cost-lift @10% | calibrated on the other four |", "|---|---|---|"]
    truth_rows = truth.read_text().splitlines()
    for s in seqs:
        fit = [x for x in seqs if x != s]
        lab = labels.filter(pc.is_in(labels.column("log_id"), value_set=pa.array(fit)))
        res = calibrate(logs.select(fit), lab, params, source=f"KITTI {fit}")
        cal = mine(logs.select([s]), res.params).frames
        held.append(cal)
        t_s = out / f"truth_{s}.csv"
        t_s.write_text("\n".join([truth_rows[0]] + [r for r in truth_rows[1:] if r.split(",")[0].zfill(4) == s]) + "\n")
        ranking_csv(base.filter(pc.equal(base.column("log_id"), s)), out / f"uncal_{s}.csv")
        ranking_csv(cal, out / f"cal_{s}.csv")
        u, c = at10(score(out / f"uncal_{s}.csv", t_s)), at10(score(out / f"cal_{s}.csv", t_s))
        lines.append(f"| {s} | {u[0]:.2f} / {u[1]:.2f} | {c[0]:.2f} / {c[1]:.2f} |")
    ranking_csv(base, out / "uncalibrated.csv")
    ranking_csv(pa.concat_tables(held), out / "calibrated_heldout.csv")
    u_rep, c_rep = score(out / "uncalibrated.csv", truth), score(out / "calibrated_heldout.csv", truth)
    print("\n".join(lines))
    print("\nall five sequences, each ranked by params not fitted on it:")
    print(u_rep)
    print(c_rep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
