"""Does calibration on some sequences' labels improve the ranking of the others?

    .venv/bin/python benchmarks/calibration_holdout.py [--camera-tracker yolox_sort] [--out-dir DIR]

Everything is scored by the yardstick exactly as its README says (``truth.py`` -> ``score.py
--ranking R.csv --truth T.csv``; YOLOX-SORT is the judged stream); a sequence is never scored by
params fitted on its own labels.

1. **Leave one sequence out.** For each sequence S, ``calibrate`` on the labels of the other four
   (``fleetloop.mine.calibrate``); the whole batch is mined with the fitted params and S's frames
   are kept (mining the whole batch keeps everything but the severities identical to the
   uncalibrated run, e.g. which classes each stream reports). The five held-out rankings are
   pooled into one CSV and scored next to the uncalibrated ranking, and each sequence alone (and
   the mean of those five figures). Pooling ranks frames scored by five different models against
   each other; each sequence alone is ranked by one model.
2. **Fit on a subset, score the rest.** For every way of choosing k = 2 and k = 3 of the five
   sequences, calibrate on those and rank the remaining ones with that one model; compare with
   the uncalibrated ranking of the same sequences (mean change of lift and cost-lift @10 %, and
   how often calibration is at least as good on both).
"""

from __future__ import annotations

import argparse
import itertools
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
    out = subprocess.run([sys.executable, str(YARDSTICK / "score.py"), "--ranking", str(ranking), "--truth", str(truth)],
                         capture_output=True, text=True, check=True).stdout
    return out.strip()


def at10(report: str) -> tuple[float, float]:
    row = next(line for line in report.splitlines() if line.strip().startswith("10%"))
    parts = row.split()
    return float(parts[4]), float(parts[6])


def subset_truth(truth: Path, seqs: list[str], out: Path) -> Path:
    rows = truth.read_text().splitlines()
    keep = {s.zfill(4) for s in seqs}
    out.write_text("\n".join([rows[0]] + [r for r in rows[1:] if r.split(",")[0].zfill(4) in keep]) + "\n")
    return out


def bootstrap(truth: Path, uncal: Path, cal: Path, per_seq: dict[str, tuple[Path, Path]], replicates: int,
              block: int = 20, seed: int = 0) -> str:
    """How far the leave-one-out change of lift / cost-lift @10 % could move by chance: a paired
    block bootstrap. Each sequence's frames are cut into blocks of ``block`` consecutive frames
    (neighbouring frames share their scene, so they are resampled together), the blocks resampled
    with replacement within their sequence, and both rankings scored on the same resampled frames
    with the yardstick's own ``score.evaluate`` (its tie and cost rules). Returns the lines to print."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("kitti_score", YARDSTICK / "score.py")
    assert spec is not None and spec.loader is not None
    sc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sc)
    keys, anyerr, cnt, ngt = sc.read_truth(truth)
    seq_of = np.array([k[0] for k in keys])
    rank_u, rank_c = sc.read_ranking(uncal), sc.read_ranking(cal)
    per = {s: (sc.read_ranking(u), sc.read_ranking(c)) for s, (u, c) in per_seq.items()}
    blocks = {s: [np.flatnonzero(seq_of == s)[i:i + block] for i in range(0, int((seq_of == s).sum()), block)]
              for s in per}
    rng = np.random.default_rng(seed)

    def at10(idx: np.ndarray, ranking: dict) -> tuple[float, float]:
        m = sc.evaluate([keys[i] for i in idx], anyerr[idx], cnt[idx], ranking, ks=("10%",), warn=False,
                        ngt=ngt[idx])["at"]["10%"]
        return m["lift"], m["clift"]

    def changes(picks: dict[str, np.ndarray]) -> tuple[tuple[float, float], tuple[float, float]]:
        """(pooled, mean of the five) change of (lift, cost-lift) on these frames."""
        idx = np.concatenate(list(picks.values()))
        (ul, uc), (cl, cc) = at10(idx, rank_u), at10(idx, rank_c)
        d = np.array([np.subtract(at10(picks[s], per[s][1]), at10(picks[s], per[s][0])) for s in per])
        return (cl - ul, cc - uc), tuple(d.mean(axis=0))

    seen = changes({s: np.concatenate(bs) for s, bs in blocks.items()})
    pooled, mean5 = [], []
    for _ in range(replicates):
        p, m = changes({s: np.concatenate([bs[i] for i in rng.integers(len(bs), size=len(bs))])
                        for s, bs in blocks.items()})
        pooled.append(p)
        mean5.append(m)
    lines = [f"\npaired block bootstrap of the leave-one-out change ({replicates} replicates; blocks of {block} frames "
             "resampled within each sequence; calibrated - uncalibrated, @10 %):"]
    for name, point, diffs in (("mean of the five", seen[1], mean5), ("all five, pooled", seen[0], pooled)):
        a = np.array(diffs)
        lo, hi = np.percentile(a, [2.5, 97.5], axis=0)
        both = float(((a[:, 0] > 0) & (a[:, 1] > 0)).mean())
        lines.append(f"  {name}: lift {point[0]:+.3f} (95 % of replicates: {lo[0]:+.3f} .. {hi[0]:+.3f}), cost-lift "
                     f"{point[1]:+.3f} ({lo[1]:+.3f} .. {hi[1]:+.3f}); better on both in {both:.0%} of replicates")
    return "\n".join(lines)


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
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "out" / "calibration_holdout")
    ap.add_argument("--no-subsets", action="store_true", help="leave-one-out only")
    ap.add_argument("--replicates", type=int, default=1000,
                    help="bootstrap replicates of the leave-one-out change (0: no bootstrap)")
    args = ap.parse_args(argv)
    if args.replicates < 0:
        ap.error("--replicates must be 0 or more")
    require_kitti()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    truth = out / "truth.csv"
    subprocess.run([sys.executable, str(YARDSTICK / "truth.py"), "--data", str(KITTI), "--camera-tracker",
                    args.camera_tracker, "--out", str(truth)], check=True, capture_output=True)
    logs = load_logs(KITTI, "kitti-tracking")
    labels = kitti_labels(read_kitti_truth(KITTI), logs)
    params = MiningParams(camera_stream=args.camera_tracker)
    seqs = sorted(logs.log_ids)
    base = mine(logs, params).frames
    ranking_csv(base, out / "uncalibrated.csv")

    def fitted(fit: list[str]) -> MiningParams:
        lab = labels.filter(pc.is_in(labels.column("log_id"), value_set=pa.array(fit)))
        return calibrate(logs.select(fit), lab, params, source=f"KITTI {fit}").params

    def held_out(p: MiningParams, test: list[str]) -> pa.Table:
        fr = mine(logs, p).frames
        return fr.filter(pc.is_in(fr.column("log_id"), value_set=pa.array(test)))

    lines = [f"judged camera stream {args.camera_tracker}", "", "leave one sequence out (lift / cost-lift @10 %):", "",
             "| held-out | uncalibrated | calibrated on the other four |", "|---|---|---|"]
    held: list[pa.Table] = []
    per_seq: list[tuple[float, float, float, float]] = []
    for s in seqs:
        cal = held_out(fitted([x for x in seqs if x != s]), [s])
        held.append(cal)
        t_s = subset_truth(truth, [s], out / f"truth_{s}.csv")
        ranking_csv(base.filter(pc.equal(base.column("log_id"), s)), out / f"uncal_{s}.csv")
        ranking_csv(cal, out / f"cal_{s}.csv")
        u, c = at10(score(out / f"uncal_{s}.csv", t_s)), at10(score(out / f"cal_{s}.csv", t_s))
        lines.append(f"| {s} | {u[0]:.2f} / {u[1]:.2f} | {c[0]:.2f} / {c[1]:.2f} |")
        per_seq.append((u[0], u[1], c[0], c[1]))
    mean = [sum(r[i] for r in per_seq) / len(per_seq) for i in range(4)]
    lines.append(f"| mean of the five (each ranked by one model) | {mean[0]:.3f} / {mean[1]:.3f} | {mean[2]:.3f} / {mean[3]:.3f} |")
    ranking_csv(pa.concat_tables(held), out / "calibrated_heldout.csv")
    u_rep, c_rep = score(out / "uncalibrated.csv", truth), score(out / "calibrated_heldout.csv", truth)
    u, c = at10(u_rep), at10(c_rep)
    lines.append(f"| all five, pooled | {u[0]:.2f} / {u[1]:.2f} | {c[0]:.2f} / {c[1]:.2f} |")
    print("\n".join(lines), flush=True)

    if args.replicates:
        print(bootstrap(truth, out / "uncalibrated.csv", out / "calibrated_heldout.csv",
                        {x: (out / f"uncal_{x}.csv", out / f"cal_{x}.csv") for x in seqs}, args.replicates), flush=True)

    if not args.no_subsets:
        print("\nfit on k sequences, one model ranks the other 5 - k (change of lift / cost-lift @10 % vs uncalibrated):")
        for k in (2, 3):
            deltas = []
            for fit in itertools.combinations(seqs, k):
                test = [x for x in seqs if x not in fit]
                name = "_".join(test)
                t_s = subset_truth(truth, test, out / f"truth_{name}.csv")
                ranking_csv(base.filter(pc.is_in(base.column("log_id"), value_set=pa.array(test))), out / f"uncal_{name}.csv")
                ranking_csv(held_out(fitted(list(fit)), test), out / f"cal_fit{k}_{name}.csv")
                u, c = at10(score(out / f"uncal_{name}.csv", t_s)), at10(score(out / f"cal_fit{k}_{name}.csv", t_s))
                deltas.append((c[0] - u[0], c[1] - u[1]))
                print(f"  fit {'+'.join(fit)} -> rank {'+'.join(test)}: {u[0]:.2f} / {u[1]:.2f} -> {c[0]:.2f} / {c[1]:.2f}",
                      flush=True)
            dl = sum(d[0] for d in deltas) / len(deltas)
            dc = sum(d[1] for d in deltas) / len(deltas)
            both = sum(1 for d in deltas if d[0] >= 0 and d[1] >= 0)
            print(f"k = {k}: {len(deltas)} splits, mean change lift {dl:+.3f}, cost-lift {dc:+.3f}; at least as good on "
                  f"both in {both} of {len(deltas)}")
    print("\nall five sequences, uncalibrated:\n" + u_rep + "\n\nall five, each ranked by params fitted on the other four:\n"
          + c_rep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
