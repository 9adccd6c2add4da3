"""Mining quality on real data: do the frames the miner ranks first hold the real errors?

    .venv/bin/python benchmarks/mining_quality.py [--camera-tracker yolox_sort|ciwt] [--ranked ranked.csv]
        [--truth yardstick|hard|all] [--json out.json]

By default every ranking is judged by the yardstick, exactly as its README says
(``../shared/tools/kitti_eval``: ``truth.py`` -> per-frame true errors of PointRCNN + the judged
camera stream, ``score.py --ranking R.csv --truth T.csv``; YOLOX-SORT is the stream whose errors
count, so it is the default judged stream). Each ranker writes a ``sequence,frame,score`` CSV and
``score.py`` scores it; its table (precision, lift, capture, cost-lift at 1/5/10/20 %) is parsed.

Rankers, all from the logged outputs only (never label_02):
  fleetloop                  ``fleetloop.mine.mining.mine`` with the judged stream (or a CSV
                             written by ``fleetloop mine``, ``--ranked``)
  random                     a constant score: by the yardstick's tie rule, exactly random order
  low confidence             lidar detections whose score is inside the uncertainty band (0.9-0.99)
                             plus judged-camera boxes with confidence < 0.5 (when it reports one)
  number of detections       lidar detections at their class's operating point + judged-camera boxes
  equal-weight disagreement  the number of the miner's flags on the frame
  reference                  the yardstick's ``reference_miner.py``
  oracle                     the true errors (their lift is the ceiling), and true errors per unit
                             of cost (the cost-lift ceiling)

``--truth hard|all`` judges instead by the project's own earlier rule (``kitti_truth.py``, 2D
matching, KITTI difficulty filters), kept for comparison with earlier figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kitti_truth import kitti_truth_errors
from fleetloop.ingest.importers import load_logs
from fleetloop.mine.mining import mine, rank
from fleetloop.mine.params import MiningParams

PCTS = (0.01, 0.05, 0.10, 0.20)
ERROR_TYPES = ("lidar_fn", "lidar_fp", "camera_fn", "camera_fp")  # the yardstick truth's kinds of error
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti-tracking"
YARDSTICK = Path(__file__).resolve().parents[2] / "shared" / "tools" / "kitti_eval"
#: Issue 11's targets, under the yardstick with YOLOX-SORT judged (the project's own rule: 2.8 / 2.2).
TARGET = {"lift@10%": 3.0, "cost-lift@10%": 2.2}


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
    thr = lid.cls.map(lambda c: params.lidar_threshold(c)).to_numpy(np.float64) if len(lid) else np.zeros(0)
    ndet = per_frame(lid[lid.score.to_numpy(np.float64) >= thr]) + per_frame(cam)
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


def write_ranking(path: Path, keys: list[tuple[str, int]], score: np.ndarray) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sequence", "frame", "score"])
        w.writerows((s, f, repr(float(v))) for (s, f), v in zip(keys, score, strict=True))


def yardstick_truth(root: Path, camera_tracker: str, out: Path) -> Path:
    subprocess.run([sys.executable, str(YARDSTICK / "truth.py"), "--data", str(root), "--camera-tracker", camera_tracker,
                    "--out", str(out)], check=True, capture_output=True, text=True)
    return out


def yardstick_score(ranking: Path, truth: Path) -> dict[str, float]:
    """``score.py --ranking R --truth T``; its table parsed into {metric@K: value}."""
    out = subprocess.run([sys.executable, str(YARDSTICK / "score.py"), "--ranking", str(ranking), "--truth", str(truth)],
                         check=True, capture_output=True, text=True).stdout
    m: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 7 and parts[0].endswith("%") and parts[0][:-1].isdigit():
            k = parts[0]
            m.update({f"precision@{k}": float(parts[2]), f"lift@{k}": float(parts[4]), f"captured@{k}": float(parts[5]),
                      f"cost-lift@{k}": float(parts[6])})
    if not m:
        raise RuntimeError(f"score.py printed no table:\n{out}")
    return m


def evaluate_yardstick(root: Path, camera_tracker: str, params: MiningParams, ranked_csv: Path | None = None,
                       workdir: Path | None = None) -> dict:
    """Every ranker scored by the yardstick (module doc). ``params.camera_stream`` is set to
    ``camera_tracker`` (the judged stream); both camera streams are loaded as evidence."""
    params = params.model_copy(update={"camera_stream": camera_tracker})
    logs = load_logs(root, "kitti-tracking")
    with tempfile.TemporaryDirectory(prefix="mining-quality-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        truth = yardstick_truth(root, camera_tracker, work / "truth.csv")
        with open(truth) as fh:
            rows = list(csv.DictReader(fh))
        keys = [(r["sequence"], int(r["frame"])) for r in rows]
        errors = np.array([float(r["error_count"]) for r in rows])
        cost = 1.0 + np.array([float(r["n_gt"]) for r in rows])
        idx = pd.MultiIndex.from_tuples(keys, names=["log_id", "frame"])

        t0 = time.perf_counter()
        result = mine(logs, params)
        mine_s = time.perf_counter() - t0
        fr = result.frames.select(["log_id", "frame", "score"]).to_pandas().set_index(["log_id", "frame"])["score"]
        scores: dict[str, np.ndarray] = {"fleetloop": fr.reindex(idx).to_numpy(np.float64)}
        if ranked_csv is not None:
            df = pd.read_csv(ranked_csv, dtype={"log_id": str}).set_index(["log_id", "frame"])["score"]
            scores["fleetloop"] = df.reindex(idx).fillna(-np.inf).to_numpy(np.float64)
        scores["random"] = np.zeros(len(keys))
        judged = logs.select(logs.log_ids)
        tr = judged.tracks.filter(pc.equal(judged.tracks.column("sensor"), f"camera:{camera_tracker}"))
        judged = type(logs)(**{**logs.tables(), "tracks": tr, "camera_detections": logs.camera_detections.slice(0, 0)})
        scores.update(baselines(judged, idx, params))
        flags = result.flags.select(["log_id", "frame"]).to_pandas()
        scores["equal-weight disagreement"] = flags.groupby(["log_id", "frame"]).size().reindex(idx).fillna(0).to_numpy(np.float64)
        ref = work / "reference.csv"
        subprocess.run([sys.executable, str(YARDSTICK / "reference_miner.py"), "--data", str(root), "--camera-tracker",
                        camera_tracker, "--out", str(ref)], check=True, capture_output=True, text=True)
        out = {}
        for name, sc in scores.items():
            path = work / f"{name.replace(' ', '_')}.csv"
            write_ranking(path, keys, sc)
            out[name] = yardstick_score(path, truth)
        out["reference"] = yardstick_score(ref, truth)
        with open(ref) as fh:
            ref_score = {(r["sequence"].zfill(4), int(r["frame"])): float(r["score"]) for r in csv.DictReader(fh)}
        by_class = lidar_misses_by_class(root)
        kinds_ref = np.array([ref_score.get((s.zfill(4), f), -np.inf) for s, f in keys])
        kinds = error_type_lifts({**{k: scores[k] for k in ("fleetloop", "low confidence", "number of detections")},
                                  "reference": kinds_ref,
                                  "oracle (true errors)": errors},
                                 rows, by_class, keys)
        per_seq = sequence_lifts({"fleetloop": scores["fleetloop"], "reference": kinds_ref,
                                  "oracle (true errors)": errors}, errors, by_class, keys)
        write_ranking(work / "oracle.csv", keys, errors)
        write_ranking(work / "oracle_cost.csv", keys, errors / cost)
        o, oc = yardstick_score(work / "oracle.csv", truth), yardstick_score(work / "oracle_cost.csv", truth)
        out["oracle"] = {k: (oc[k] if k.startswith("cost-lift") else o[k]) for k in o}
        tot = {k: int(sum(int(r[k]) for r in rows)) for k in (*ERROR_TYPES, "error_count")}
        kind_totals = {k: tot[k] for k in ERROR_TYPES}
        for c, m in by_class.items():
            kind_totals[f"lidar_fn {c.lower()}"] = kind_totals[f"lidar_fn {c.lower()} in its sequences"] = sum(m.values())
    return {"camera_tracker": camera_tracker, "truth": "yardstick", "frames": len(keys), "errors": tot,
            "cost": int(cost.sum()), "mine_seconds": round(mine_s, 3), "skipped": result.skipped, "rankers": out,
            "error_types": kinds, "error_totals": kind_totals, "sequences": per_seq}



def lidar_misses_by_class(root: Path) -> dict[str, dict[tuple[str, int], int]]:
    """Per class, the lidar misses of every frame, counted by the yardstick's own function
    (``truth.lidar_errors``) on that class's labels and detections alone."""
    sys.path.insert(0, str(YARDSTICK))
    import kitti_common as K
    import truth as T

    out: dict[str, dict[tuple[str, int], int]] = {c: {} for c in K.LIDAR_CLASSES}
    empty = np.zeros(0, int)
    for seq, n in K.read_seqmap(str(root)):
        with warnings.catch_warnings():  # the yardstick's readers leave their files to the collector
            warnings.simplefilter("ignore", ResourceWarning)
            lab = K.load_labels(str(root / "label_02" / f"{seq}.txt"))
            det = K.load_lidar(str(root / "lidar_det" / "pointrcnn" / f"{seq}.txt"))
        gl, gd = K.group_by_frame(lab["frame"]), K.group_by_frame(det["frame"])
        for f in range(n):
            gi, di = gl.get(f, empty), gd.get(f, empty)
            for c in K.LIDAR_CLASSES:
                out[c][(seq, f)] = T.lidar_errors(lab, gi[lab["type"][gi] == c], det, di[det["cls"][di] == c])[0]
    return out


def lift_at(score: np.ndarray, values: np.ndarray, p: float = 0.10) -> float:
    """Lift of ``values`` in the top ``p`` of frames by ``score``, ties at the cut by expectation
    over a random order inside the tie (``score.py``'s rule)."""
    n = len(score)
    k = max(1, round(p * n))
    if values.sum() == 0:
        return float("nan")
    order = np.argsort(-score, kind="stable")
    s, v = score[order], values[order].astype(np.float64)
    cut = s[k - 1]
    above = s > cut
    tie = s == cut
    selected = v[above].sum() + (k - above.sum()) / tie.sum() * v[tie].sum()
    return float((selected / k) / (v.sum() / n))


def error_type_lifts(scores: dict[str, np.ndarray], truth_rows: list[dict], by_class: dict[str, dict],
                     keys: list[tuple[str, int]]) -> dict[str, dict[str, float]]:
    """Per ranker, lift@10 % of each kind of error alone, of the lidar's misses per class, and of
    those misses within the sequences where the lidar misses that class at all (``in its
    sequences``: ranked among those sequences' frames only, as a sequence set made of that class
    would be)."""
    cols = {k: np.array([float(r[k]) for r in truth_rows]) for k in ERROR_TYPES}
    seq = np.array([s for s, _ in keys])
    subsets: dict[str, np.ndarray] = {}
    for c, m in by_class.items():
        v = np.array([float(m.get(key, 0)) for key in keys])
        cols[f"lidar_fn {c.lower()}"] = v
        subsets[f"lidar_fn {c.lower()} in its sequences"] = v
    out: dict[str, dict[str, float]] = {}
    for name, sc in scores.items():
        sc = np.nan_to_num(sc, nan=-np.inf)
        row = {col: lift_at(sc, v) for col, v in cols.items()}
        for col, v in subsets.items():
            inside = np.isin(seq, np.unique(seq[v > 0]))
            row[col] = lift_at(sc[inside], v[inside]) if inside.any() else float("nan")
        out[name] = row
    return out


def sequence_lifts(scores: dict[str, np.ndarray], errors: np.ndarray, by_class: dict[str, dict],
                   keys: list[tuple[str, int]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per sequence and ranker, lift@10 % of all errors and of the lidar's pedestrian misses with the
    sequence's frames ranked among themselves (a set made of that sequence alone)."""
    seq = np.array([s for s, _ in keys])
    ped = np.array([float(by_class.get("Pedestrian", {}).get(k, 0)) for k in keys])
    out: dict[str, dict[str, dict[str, float]]] = {}
    ranked = {name: np.nan_to_num(sc, nan=-np.inf) for name, sc in scores.items()}
    for s in np.unique(seq):
        m = seq == s
        out[str(s)] = {name: {"errors": lift_at(sc[m], errors[m]), "lidar_fn pedestrian": lift_at(sc[m], ped[m])}
                       for name, sc in ranked.items()}
    return out


def format_sequences(rep: dict) -> str:
    by = rep.get("sequences")
    if not by:
        return ""
    names = list(next(iter(by.values())))
    lines = ["lift@10% within each sequence (its frames ranked among themselves): all errors / the lidar's "
             "pedestrian misses (nan: none):", "| sequence | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for s, row in by.items():
        lines.append(f"| {s} | " + " | ".join(f"{row[n]['errors']:.2f} / {row[n]['lidar_fn pedestrian']:.2f}"
                                                for n in names) + " |")
    return "\n".join(lines)


def format_error_types(rep: dict) -> str:
    by = rep.get("error_types")
    if not by:
        return ""
    cols = list(next(iter(by.values())))
    totals = rep.get("error_totals", {})
    lines = ["lift@10% of each kind of error alone (errors of that kind in the top 10 % per frame / overall per frame; "
             "nan: none of that kind):",
             "| ranker | " + " | ".join(f"{c} ({totals.get(c, '?')})" for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, m in by.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.2f}" for c in cols) + " |")
    return "\n".join(lines)


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
    ap.add_argument("--camera-tracker", default="yolox_sort", help="the judged camera stream")
    ap.add_argument("--truth", default="yardstick", choices=["yardstick", "hard", "moderate", "easy", "all"],
                    help="yardstick (default): ../shared/tools/kitti_eval; else the project's earlier own rule")
    ap.add_argument("--ranked", type=Path, default=None, help="evaluate this `fleetloop mine` CSV instead of mining here")
    ap.add_argument("--params", type=Path, default=None, help="MiningParams JSON")
    ap.add_argument("--out-dir", type=Path, default=None, help="keep the truth and ranking CSVs here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not (args.root / "calib").is_dir():
        print(f"KITTI slice not found at {args.root}", file=sys.stderr)
        return 2
    params = MiningParams.model_validate_json(args.params.read_text()) if args.params else MiningParams()
    if args.truth == "yardstick":
        if not (YARDSTICK / "score.py").exists():
            print(f"the yardstick is not at {YARDSTICK}", file=sys.stderr)
            return 2
        rep = evaluate_yardstick(args.root, args.camera_tracker, params, args.ranked, args.out_dir)
    else:
        rep = evaluate(args.root, args.camera_tracker, args.truth, params.model_copy(update={"camera_stream": args.camera_tracker}),
                       args.ranked)
    print(format_report(rep))
    if rep.get("error_types"):
        print(format_error_types(rep))
        print(format_sequences(rep))
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
