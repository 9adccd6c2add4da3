"""Mining quality on real data: do the frames the miner ranks first hold the real errors?

    .venv/bin/python benchmarks/mining_quality.py [--root ../shared/data/kitti-tracking]
        [--camera-tracker ciwt|yolox_sort] [--truth hard|all] [--ranked ranked.csv] [--json out.json]

The ranking comes from the logged outputs only (``fleetloop.mine.mining.mine``, or a CSV written
by ``fleetloop mine``); ground truth (label_02) is read only here, by ``kitti_truth``, to count the
real errors of each frame (rules in benchmarks/README.md and kitti_truth.py).

For the top p = 1, 5, 10, 20 % of frames it reports
  precision  share of the selected frames holding at least one real error
  lift       real errors per selected frame / real errors per frame overall (random = 1)
  captured   share of all real errors inside the selection
  cost-lift  the same ratio as lift with the budget counted in labeling cost (1 per frame +
             1 per ground-truth object): frames are taken in rank order while the cumulative
             cost stays within p % of the total cost; errors per unit cost selected / overall
next to the baselines: random (mean of 200 seeded shuffles), low confidence, number of
detections, equal-weight disagreement (flag count) and the oracle (sorted by true errors for
lift, by true errors per unit cost for cost-lift).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kitti_truth import kitti_truth_errors
from fleetloop.ingest.importers import load_logs
from fleetloop.mine.mining import mine, rank
from fleetloop.mine.params import MiningParams

PCTS = (0.01, 0.05, 0.10, 0.20)
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti-tracking"
TARGET = {"lift@10%": 2.8, "cost-lift@10%": 2.2}


def order_from_key(key: np.ndarray) -> np.ndarray:
    """Rows sorted by key descending; ties keep the frame order (log, frame)."""
    return np.lexsort((np.arange(len(key)), -np.asarray(key, np.float64)))


def metrics(order: np.ndarray, errors: np.ndarray, cost: np.ndarray, pcts=PCTS) -> dict[str, float]:
    e = errors[order].astype(np.float64)
    c = cost[order].astype(np.float64)
    n = len(e)
    out: dict[str, float] = {}
    per_frame = e.sum() / n
    per_cost = e.sum() / c.sum()
    cum_cost = np.cumsum(c)
    for p in pcts:
        k = max(1, round(p * n))
        sel = e[:k]
        kc = max(1, int(np.searchsorted(cum_cost, p * cum_cost[-1], side="right")))
        tag = f"{round(p * 100):d}%"
        out[f"precision@{tag}"] = float((sel > 0).mean())
        out[f"lift@{tag}"] = float(sel.mean() / per_frame)
        out[f"captured@{tag}"] = float(sel.sum() / e.sum())
        out[f"cost-lift@{tag}"] = float((e[:kc].sum() / c[:kc].sum()) / per_cost)
    return out


def random_metrics(errors: np.ndarray, cost: np.ndarray, n_runs: int = 200, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    runs = [metrics(rng.permutation(len(errors)), errors, cost) for _ in range(n_runs)]
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def baselines(logs, frames_idx: pd.MultiIndex, params: MiningParams) -> dict[str, np.ndarray]:
    """Per-frame keys of the simple rankers, aligned with ``frames_idx``."""
    lid = logs.lidar_detections.to_pandas()
    cam = logs.camera_detections.to_pandas() if logs.camera_detections.num_rows else logs.tracks.to_pandas()
    lo, hi = params.uncertainty_band

    def per_frame(df: pd.DataFrame) -> np.ndarray:
        return df.groupby(["log_id", "frame"]).size().reindex(frames_idx).fillna(0).to_numpy(np.float64)

    low = per_frame(lid[(lid.score >= lo) & (lid.score < hi)])
    if cam["score"].notna().any():
        low = low + per_frame(cam[cam.score < 0.5])
    ndet = per_frame(lid[lid.score >= params.lidar_score_threshold]) + per_frame(cam)
    return {"low confidence": low, "number of detections": ndet}


def ranked_from_csv(path: Path, frames_idx: pd.MultiIndex) -> np.ndarray:
    """Row order (into frames_idx) of a ``fleetloop mine`` CSV; frames it lacks go last."""
    df = pd.read_csv(path, dtype={"log_id": str})
    pos = pd.Series(np.arange(len(df)), index=pd.MultiIndex.from_arrays([df.log_id, df.frame.astype(int)]))
    rank_of = pos.reindex(frames_idx).to_numpy(np.float64)
    missing = np.isnan(rank_of)
    rank_of[missing] = len(df) + np.flatnonzero(missing)
    return np.argsort(rank_of, kind="stable")


def evaluate(root: Path, camera_tracker: str, truth: str, params: MiningParams, ranked_csv: Path | None = None) -> dict:
    logs = load_logs(root, "kitti-tracking", camera_tracker=camera_tracker)
    difficulty = None if truth == "all" else truth
    tf = kitti_truth_errors(root, logs, difficulty=difficulty).frames
    idx = pd.MultiIndex.from_frame(tf[["log_id", "frame"]])
    errors, cost = tf["errors"].to_numpy(), tf["cost"].to_numpy()

    t0 = time.perf_counter()
    result = mine(logs, params)
    mine_s = time.perf_counter() - t0
    ranked = rank(result.frames).select(["log_id", "frame"]).to_pandas()
    if ranked_csv is not None:
        order = ranked_from_csv(ranked_csv, idx)
    else:
        pos = pd.Series(np.arange(len(ranked)), index=pd.MultiIndex.from_frame(ranked))
        order = np.argsort(pos.reindex(idx).to_numpy(), kind="stable")
    flags = result.flags.to_pandas()
    flag_count = flags.groupby(["log_id", "frame"]).size().reindex(idx).fillna(0).to_numpy(np.float64)

    rows = {"fleetloop": metrics(order, errors, cost), "random": random_metrics(errors, cost)}
    for name, key in baselines(logs, idx, params).items():
        rows[name] = metrics(order_from_key(key), errors, cost)
    rows["equal-weight disagreement"] = metrics(order_from_key(flag_count), errors, cost)
    oracle = metrics(order_from_key(errors), errors, cost)
    oracle_cost = metrics(order_from_key(errors / cost), errors, cost)
    rows["oracle"] = {k: (oracle_cost[k] if k.startswith("cost-lift") else oracle[k]) for k in oracle}
    return {
        "camera_tracker": camera_tracker, "truth": truth, "frames": len(tf),
        "errors": {k: int(tf[k].sum()) for k in ("lidar_miss", "lidar_fa", "camera_miss", "camera_fa", "errors")},
        "cost": int(cost.sum()), "mine_seconds": round(mine_s, 3), "skipped": result.skipped, "rankers": rows,
    }


def format_report(rep: dict) -> str:
    cols = [f"{m}@{p}" for p in ("1%", "5%", "10%", "20%") for m in ("precision", "lift", "captured", "cost-lift")]
    short = {"precision": "prec", "lift": "lift", "captured": "capt", "cost-lift": "clift"}
    head = f"camera tracker {rep['camera_tracker']}, truth '{rep['truth']}': {rep['frames']} frames, errors {rep['errors']}, cost {rep['cost']}"
    lines = [head, "| ranker | " + " | ".join(short[c.split('@')[0]] + "@" + c.split('@')[1] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, m in rep["rankers"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.2f}" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--camera-tracker", default="ciwt")
    ap.add_argument("--truth", default="hard", choices=["hard", "moderate", "easy", "all"])
    ap.add_argument("--ranked", type=Path, default=None, help="evaluate this `fleetloop mine` CSV instead of mining here")
    ap.add_argument("--params", type=Path, default=None, help="MiningParams JSON")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not (args.root / "calib").is_dir():
        print(f"KITTI slice not found at {args.root}", file=sys.stderr)
        return 2
    params = MiningParams.model_validate_json(args.params.read_text()) if args.params else MiningParams()
    rep = evaluate(args.root, args.camera_tracker, args.truth, params, args.ranked)
    print(format_report(rep))
    m = rep["rankers"]["fleetloop"]
    verdict = all(m[k] >= v for k, v in TARGET.items())
    print(f"fleetloop lift@10% = {m['lift@10%']:.2f}, cost-lift@10% = {m['cost-lift@10%']:.2f} "
          f"(targets {TARGET['lift@10%']} / {TARGET['cost-lift@10%']}: {'met' if verdict else 'NOT met'}); "
          f"checks skipped: {rep['skipped']}")
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
