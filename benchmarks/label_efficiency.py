"""Label efficiency: fleetloop's mining against random and confidence-only frame selection.

The data-engine loop runs offline on the simulator (plain function calls: no Prefect, Label
Studio or DVC) for ``--weeks`` simulated weeks and ``--seeds`` seeds, three times per seed, once
per selection strategy, with the same labeling budget per week:

* **fleetloop**: as the weekly cycle does it: the drift step compares this week's traffic with last
  week's (``fleetloop.drift``, Evidently; week 1 against the seed drive) and, on a drift alert,
  steers mining toward the drifted slices (``slice_boost``); the mining severities are calibrated
  on every frame labelled so far (``fleetloop.mine.calibrate``: the seed set and the earlier
  weeks' picks); then ``mine(week logs, those params)`` + ``select(frames, budget, same params)``.
  The fleet's camera detections come from the strategy's own current model (its ONNX export
  through onnxruntime, as the cars run it), so mining sees that model's mistakes.
* **random**: ``budget`` frames drawn uniformly from the week's frames (seeded).
* **confidence**: confidence-only active learning on the logged camera detections (scores >= the
  fleet's logging threshold 0.3): frames with the most detections whose confidence lies in the
  camera uncertainty band of params.yaml (``camera_uncertainty_band``, [0.0, 0.5), so in effect
  [0.3, 0.5)) first, ties by the lowest mean detection confidence, then seeded random. Frames
  with no detection at all come last (a confidence score has nothing to say about them).

Every strategy of a seed starts from the same week 0: a seed set of ``--seed-frames``
clear-weather daytime frames (a week-0 drive) and the same first model trained on it from scratch
for ``--seed-epochs`` epochs. Then each week k = 1..weeks: the fleet drives week k
(``drive_week(k, seed=s, detector=the strategy's current model)``), the strategy picks
``--budget`` frames, their ground-truth boxes (exact, straight from the simulator: what the
labeling team delivers) join the training set, and the model is **fine-tuned from the previous
week's weights** for ``--epochs`` epochs on the whole training set so far (seed set + all frames
labeled so far; the same recipe and training seed for every strategy). The model is scored on a
fixed evaluation scenario set (``fleetloop.demo.write_scenarios``, rendered once per seed, every
weather x time of day, half the scenes with green cones, the same for all strategies): mAP@0.5
overall and on the rare slices rain, night and green cones; their mean is the **rare-slice mAP**.

The trainer runs without its ONNX export; the benchmark writes ``model.onnx`` with torch's
TorchScript exporter (same graph, opset, names and dynamic axes; about 1 s where the dynamo export
takes 10-15 s per model) and checks it against PyTorch before the fleet or the evaluation use it.

"Labels spent" counts the frames a strategy selected (the seed set, the same for all, is not
counted). For each strategy the labels it needs to reach random selection's final rare-slice mAP
are interpolated linearly along its weekly curve (week 0 = 0 labels); "not reached" when the
curve never gets there. Targets (issue 10): fleetloop reaches random's final rare-slice mAP with
at most 1/3 of the labels random needs for it, and its rare-slice mAP after week 3 is at least
1.5x random's. Both are judged on the mean over seeds; the per-seed verdicts are printed too.

Output: per seed and mean over seeds, one row per week and strategy (labels, mAP overall / rain /
night / green / rare, and what the picked frames were: shares in rain, at night, with a green
cone, against the week's pool); what fleetloop's mining flagged; the targets; the time per stage
(drive, drift, calibrate, mine = selection of every strategy, label, train, export, evaluate). Writes
``benchmarks/out/label_efficiency.png`` (rare-slice mAP against labels spent, mean over seeds
with the min-max band) and ``benchmarks/out/label_efficiency.json``.

Usage::

    .venv/bin/python benchmarks/label_efficiency.py              # the default (~30-45 min, 2 quiet cores)
    .venv/bin/python benchmarks/label_efficiency.py --quick      # a smoke run (~2-3 min)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sim_loop as sl

OUT = Path(__file__).resolve().parent / "out"
STRATEGIES = ("fleetloop", "random", "confidence")
#: fleetloop's mining with params.yaml's severities as they are (no calibration from the labels so
#: far): shows what the weekly calibration adds; only with ``--strategies ...,uncalibrated``
UNCALIBRATED = "uncalibrated"
#: not a real strategy: picks by the ground truth's conditions (rain, night, a green cone in the
#: frame), the most a selection can enrich the rare slices; only with ``--strategies ...,oracle``
ORACLE = "oracle"
#: not a real strategy either: picks the frames where the strategy's own current model (the camera
#: detections the fleet logged) has the most true errors against the ground truth (misses + false
#: alarms, IoU >= 0.5, same class): what mining estimates, known exactly; only with
#: ``--strategies ...,errors``
ERRORS = "errors"
EXTRA = (ORACLE, UNCALIBRATED, ERRORS)
TARGET_LABEL_SHARE = 1 / 3
TARGET_RATIO = 1.5
TARGET_WEEK = 3


@dataclass(frozen=True)
class Config:
    seeds: int = 3
    weeks: int = 4
    budget: int = 100
    logs_per_week: int = 24
    frames_per_log: int = 40
    seed_frames: int = 800
    seed_epochs: int = 16
    eval_frames: int = 480
    epochs: int = 6
    threads: int = 1
    strategies: tuple[str, ...] = STRATEGIES
    rare_scale: float = 1.0  # x the weeks' shares of rain, night, green-cone zones (1.0: the world's own mix)


QUICK = Config(seeds=2, weeks=3, budget=16, logs_per_week=4, frames_per_log=16, seed_frames=96, seed_epochs=3,
               eval_frames=48, epochs=1, threads=1)


@dataclass
class WeekResult:
    week: int
    labels: int  # frames selected so far (seed set not counted)
    train_frames: int
    overall: float
    rain: float
    night: float
    green: float
    rare: float
    picked: int = 0
    # shares of the week's picked frames / of the week's pool: rain, night, green cone in the truth
    picked_mix: dict[str, float] = field(default_factory=dict)
    pool_mix: dict[str, float] = field(default_factory=dict)
    mining: dict[str, Any] = field(default_factory=dict)  # fleetloop only: what the flags were


class Timer:
    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()

    def __call__(self, stage: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[stage] += time.perf_counter() - t0


def say(line: str) -> None:
    print(line, flush=True)


# --------------------------------------------------------------------------------------------
# selection


def calibrated(params: Any, labelled: list[tuple[Any, list[tuple[str, int]]]]) -> Any:
    """What the weekly cycle does before it mines (``fleetloop.recalibrate``): fit the severities
    on every frame labelled so far (the seed set and earlier weeks' picks, their exact truth)."""
    from fleetloop.mine.calibrate import calibrate
    from fleetloop.schema import DriveLogs

    logs = DriveLogs.concat([w.logs for w, _ in labelled])
    truth = pa.concat_tables([w.truth.select(["log_id", "frame", "cls", "x1", "y1", "x2", "y2"]) for w, _ in labelled])
    keys = [k for _, ks in labelled for k in ks]
    frames = pa.table({"log_id": [k for k, _ in keys], "frame": pa.array([f for _, f in keys], pa.int32())})
    return calibrate(logs, truth, params, source="label_efficiency", labelled_frames=frames).params


def week_features(week: Any) -> Any:
    """The drift step's per-frame features of a simulated week (its PNGs must still be there)."""
    from fleetloop.drift import compute_features

    return compute_features(week.logs)


def drift_steering(reference: Any, current: Any, drift_params: Any) -> dict[str, float]:
    """What the weekly cycle's drift step does before it mines: this week's traffic against last
    week's (Evidently, ``fleetloop.drift``); on a drift alert, the drifted slices' boosts."""
    import warnings

    from fleetloop.drift import monitor_drift
    from fleetloop.drift.compare import steering

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Evidently's correlations of constant columns
        result = monitor_drift(reference, current, tmp, threshold=drift_params.threshold,
                               drift_share=drift_params.alert_share)
    return steering(result.summary, drift_params)


def select_fleetloop(week: Any, budget: int, params: Any) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    from fleetloop.mine.mining import mine, select

    result = mine(week.logs, params)
    picked = select(result.frames, budget, params)
    return sl.frame_keys(picked), _mining_summary(result, picked)


def _mining_summary(result: Any, picked: pa.Table) -> dict[str, Any]:
    """Which flags fired, per condition of the week's frames, and what the picks carried."""
    frames = result.frames
    cond = {(r["log_id"], int(r["frame"])): _condition(r["weather"], r["time_of_day"])
            for r in frames.select(["log_id", "frame", "weather", "time_of_day"]).to_pylist()}
    n_frames = Counter(cond.values())
    per: dict[str, Counter[str]] = {c: Counter() for c in n_frames}
    for log_id, frame, reason in zip(result.flags["log_id"].to_pylist(), result.flags["frame"].to_pylist(),
                                     result.flags["reason"].to_pylist(), strict=True):
        per[cond[(log_id, int(frame))]][reason] += 1
    flags_per_frame = {c: {r: round(n / n_frames[c], 2) for r, n in per[c].most_common(6)} for c in sorted(per)}
    score = frames["score"].to_numpy(zero_copy_only=False)
    mean_score = {c: round(float(np.mean([s for k, s in zip(cond, score, strict=True) if cond[k] == c])), 3)
                  for c in sorted(n_frames)}
    in_picks: Counter[str] = Counter()
    for text in picked["reasons"].to_pylist():
        for item in filter(None, (text or "").split(";")):
            name, _, count = item.partition(":")
            in_picks[name] += int(count or 0)
    return {"frames": dict(n_frames), "flags_per_frame": flags_per_frame, "mean_score": mean_score,
            "flags_in_picks": dict(in_picks.most_common(8))}


def _condition(weather: str | None, tod: str | None) -> str:
    return f"{weather or '?'}-{tod or '?'}"


def select_random(week: Any, budget: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    keys = sl.frame_keys(week.logs.frames)
    idx = rng.choice(len(keys), size=min(budget, len(keys)), replace=False)
    return [keys[i] for i in sorted(idx.tolist())]


def select_confidence(week: Any, budget: int, band: tuple[float, float],
                      rng: np.random.Generator) -> list[tuple[str, int]]:
    keys = sl.frame_keys(week.logs.frames)
    index = {k: i for i, k in enumerate(keys)}
    cam = week.logs.camera_detections
    n = len(keys)
    in_band = np.zeros(n)
    total = np.zeros(n)
    count = np.zeros(n)
    lo, hi = band
    for log_id, frame, score in zip(cam["log_id"].to_pylist(), cam["frame"].to_pylist(), cam["score"].to_pylist(),
                                    strict=True):
        i = index[(log_id, int(frame))]
        count[i] += 1
        total[i] += score
        in_band[i] += lo <= score < hi
    mean_conf = np.where(count > 0, total / np.maximum(count, 1), 2.0)  # no detection: last
    order = np.lexsort((rng.random(n), mean_conf, -in_band))
    return [keys[i] for i in order[:budget]]


def select_oracle(week: Any, budget: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """Ground truth as a selector (a ceiling, not a strategy): frames by how many rare conditions
    they show (rain, night, a green cone), ties at random."""
    keys = sl.frame_keys(week.logs.frames)
    f = week.logs.frames
    t = week.truth.filter(pc.equal(week.truth["attr"], "green"))
    green = set(zip(t["log_id"].to_pylist(), [int(x) for x in t["frame"].to_pylist()], strict=True))
    rare = (np.array([w == "rain" for w in f["weather"].to_pylist()], np.float64)
            + np.array([d == "night" for d in f["time_of_day"].to_pylist()], np.float64)
            + np.array([k in green for k in keys], np.float64))
    order = np.lexsort((rng.random(len(keys)), -rare))
    return [keys[i] for i in order[:budget]]


def true_errors(week: Any) -> dict[tuple[str, int], int]:
    """Per frame: the logged camera detections' misses + false alarms against the ground truth
    (optimal one-to-one assignment on IoU >= 0.5 between boxes of the same class)."""
    from scipy.optimize import linear_sum_assignment

    from fleetloop.perception.geometry import iou_matrix

    def by_frame(t: pa.Table) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
        out: dict[tuple[str, int], list[tuple[str, list[float]]]] = {}
        for r in t.select(["log_id", "frame", "cls", "x1", "y1", "x2", "y2"]).to_pylist():
            out.setdefault((r["log_id"], int(r["frame"])), []).append((r["cls"], [r["x1"], r["y1"], r["x2"], r["y2"]]))
        return {k: (np.array([c for c, _ in v]), np.array([b for _, b in v], np.float64)) for k, v in out.items()}

    truth, cam = by_frame(week.truth), by_frame(week.logs.camera_detections)
    errors = {}
    for key in sl.frame_keys(week.logs.frames):
        (tc, tb), (cc, cb) = truth.get(key, (np.zeros(0), np.zeros((0, 4)))), cam.get(key, (np.zeros(0), np.zeros((0, 4))))
        iou = np.where(tc[:, None] == cc[None, :], iou_matrix(tb, cb), 0.0)
        i, j = linear_sum_assignment(-iou)
        errors[key] = len(tb) + len(cb) - 2 * int((iou[i, j] >= 0.5).sum())
    return errors


def select_errors(week: Any, budget: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """Ground truth as a selector (a ceiling for mining, not a strategy): the frames with the most
    true errors of the fleet's current model (:func:`true_errors`), ties at random."""
    keys = sl.frame_keys(week.logs.frames)
    err = true_errors(week)
    order = np.lexsort((rng.random(len(keys)), -np.array([err[k] for k in keys], np.float64)))
    return [keys[i] for i in order[:budget]]


def _mix(week: Any, keys: list[tuple[str, int]]) -> dict[str, float]:
    if not keys:
        return {"rain": 0.0, "night": 0.0, "green": 0.0, "green_cones": 0.0}
    f = week.logs.frames
    tags = {(r["log_id"], int(r["frame"])): (r["weather"], r["time_of_day"])
            for r in f.select(["log_id", "frame", "weather", "time_of_day"]).to_pylist()}
    t = week.truth.filter(pc.equal(week.truth["attr"], "green"))
    at = list(zip(t["log_id"].to_pylist(), [int(x) for x in t["frame"].to_pylist()], strict=True))
    green = set(at)
    picked = set(keys)
    # distinct green cones (log, track) seen in the picked frames: a week holds only a few dozen
    cones = {(k[0], tr) for k, tr in zip(at, t["track_id"].to_pylist(), strict=True) if k in picked}
    n = len(keys)
    return {"rain": round(sum(tags[k][0] == "rain" for k in keys) / n, 3),
            "night": round(sum(tags[k][1] == "night" for k in keys) / n, 3),
            "green": round(sum(k in green for k in keys) / n, 3),
            "green_cones": float(len(cones))}


# --------------------------------------------------------------------------------------------
# the loop


def run_seed(seed: int, cfg: Config, work: Path, timer: Timer, mine_params: Any,
             drift_params: Any) -> dict[str, list[WeekResult]]:
    from fleetloop.drift.compare import describe_steering

    base = work / f"seed{seed}"
    evalset = timer("setup", sl.scenario_set, seed + 1000, cfg.eval_frames)
    seed_logs = max(2, math.ceil(cfg.seed_frames / cfg.frames_per_log * 1.3))
    w0 = timer("setup", sl.drive, 0, seed, sl.no_model, seed_logs, cfg.frames_per_log, base / "w00")
    seed_keys = sl.clear_day_frames(w0)[:cfg.seed_frames]
    seed_rows = timer("label", sl.labeled_rows, w0, seed_keys)
    # the drift step's first reference (only fleetloop's strategy runs the drift step)
    w0_features = timer("drift", week_features, w0) if "fleetloop" in cfg.strategies else None
    shutil.rmtree(base / "w00", ignore_errors=True)
    model0 = base / "model-w00"
    rep = timer("train", sl.train_model, seed_rows, model0, epochs=cfg.seed_epochs, seed=seed, threads=cfg.threads,
                export=False)
    timer("export", sl.export_onnx, model0)
    s0 = timer("evaluate", sl.evaluate_model, model0, evalset, cfg.threads)
    say(f"seed {seed}: seed set {len(seed_keys)} clear-day frames; first model {cfg.seed_epochs} epochs in "
        f"{rep.train_seconds:.0f}s: mAP {s0.overall:.3f}, rare {s0.rare:.3f} (rain {s0.rain:.3f} night {s0.night:.3f} "
        f"green {s0.green:.3f})")
    out: dict[str, list[WeekResult]] = {}
    band = tuple(mine_params.camera_uncertainty_band)
    for strategy in cfg.strategies:
        rows = [WeekResult(0, 0, len(seed_keys), s0.overall, s0.rain, s0.night, s0.green, s0.rare)]
        data = seed_rows
        model = model0
        labels = 0
        labelled = [(w0, seed_keys)]  # what calibration learns from: every frame labelled so far
        last_features = w0_features  # the drift step's reference: last week's traffic
        for k in range(1, cfg.weeks + 1):
            week_dir = base / strategy / f"w{k:02d}"
            detector = sl.onnx_detector(model, cfg.threads)
            week = timer("drive", sl.drive, k, seed, detector, cfg.logs_per_week, cfg.frames_per_log, week_dir,
                         cfg.rare_scale)
            mining: dict[str, Any] = {}
            rng = np.random.default_rng([seed, k, (*STRATEGIES, *EXTRA).index(strategy), 0x1ABE1])
            if strategy == "fleetloop":
                features = timer("drift", week_features, week)
                boost = timer("drift", drift_steering, last_features, features, drift_params)
                last_features = features
                params = timer("calibrate", calibrated, mine_params, labelled)
                if boost:
                    params = params.model_copy(update={"slice_boost": boost})
                keys, mining = timer("mine", select_fleetloop, week, cfg.budget, params)
                mining["slice_boost"] = boost
            elif strategy == UNCALIBRATED:
                keys, mining = timer("mine", select_fleetloop, week, cfg.budget, mine_params)
            elif strategy == "random":
                keys = timer("mine", select_random, week, cfg.budget, rng)
            elif strategy == "confidence":
                keys = timer("mine", select_confidence, week, cfg.budget, band, rng)
            elif strategy == ERRORS:
                keys = timer("mine", select_errors, week, cfg.budget, rng)
            else:
                keys = timer("mine", select_oracle, week, cfg.budget, rng)
            picked_mix = _mix(week, keys)
            pool_mix = _mix(week, sl.frame_keys(week.logs.frames))
            new = timer("label", sl.labeled_rows, week, keys)
            labelled.append((week, keys))
            shutil.rmtree(week_dir, ignore_errors=True)
            data = pa.concat_tables([data, new])
            labels += len(keys)
            nxt = base / strategy / f"model-w{k:02d}"
            rep = timer("train", sl.train_model, data, nxt, epochs=cfg.epochs, seed=seed * 100 + k,
                        threads=cfg.threads, init_from=model, export=False)
            timer("export", sl.export_onnx, nxt)
            s = timer("evaluate", sl.evaluate_model, nxt, evalset, cfg.threads)
            if model != model0:
                shutil.rmtree(model, ignore_errors=True)
            model = nxt
            rows.append(WeekResult(k, labels, data.num_rows, s.overall, s.rain, s.night, s.green, s.rare,
                                   picked=len(keys), picked_mix=picked_mix, pool_mix=pool_mix, mining=mining))
            say(f"seed {seed} {strategy:<10} week {k} ({week.mix.theme}): +{len(keys)} labels "
                f"(rain {picked_mix['rain']:.0%} night {picked_mix['night']:.0%} green {picked_mix['green']:.0%}; "
                f"pool {pool_mix['rain']:.0%}/{pool_mix['night']:.0%}/{pool_mix['green']:.0%}"
                + (f"; {picked_mix['green_cones']:.0f} of the week's {pool_mix['green_cones']:.0f} green cones"
                   if pool_mix.get("green_cones") else "") + "), "
                f"trained {rep.n_images} frames in {rep.train_seconds:.0f}s: mAP {s.overall:.3f} rare {s.rare:.3f} "
                f"(rain {s.rain:.3f} night {s.night:.3f} green {s.green:.3f})"
                + (f"; drift steered mining toward {describe_steering(mining['slice_boost'])}"
                   if mining.get("slice_boost") else ""))
        shutil.rmtree(model, ignore_errors=True)
        out[strategy] = rows
    shutil.rmtree(base, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------
# summaries


def labels_to_reach(xs: list[float], ys: list[float], target: float) -> float | None:
    """Labels at which the piecewise-linear curve (xs, ys) first reaches ``target``; None if never."""
    if ys[0] >= target:
        return float(xs[0])
    for i in range(1, len(xs)):
        if ys[i] >= target:
            return float(xs[i - 1] + (target - ys[i - 1]) / (ys[i] - ys[i - 1]) * (xs[i] - xs[i - 1]))
    return None


def mean_curves(results: dict[int, dict[str, list[WeekResult]]]) -> dict[str, dict[str, list[float]]]:
    """Per strategy: labels and each metric per week, mean / min / max over seeds."""
    out: dict[str, dict[str, list[float]]] = {}
    for strategy in next(iter(results.values())):
        runs = [results[s][strategy] for s in sorted(results)]
        weeks = len(runs[0])
        curve: dict[str, list[float]] = {}
        for key in ("labels", "train_frames", "overall", "rain", "night", "green", "rare"):
            values = np.array([[getattr(r[w], key) for w in range(weeks)] for r in runs], np.float64)
            curve[key] = values.mean(0).tolist()
            curve[f"{key}_min"] = values.min(0).tolist()
            curve[f"{key}_max"] = values.max(0).tolist()
        for key in ("rain", "night", "green"):
            curve[f"picked_{key}"] = [float(np.mean([r[w].picked_mix.get(key, 0.0) for r in runs]))
                                      for w in range(weeks)]
        out[strategy] = curve
    return out


def judge(curves: dict[str, dict[str, list[float]]], weeks: int) -> dict[str, Any] | None:
    """The two targets on mean curves (``curves[strategy]["labels"|"rare"]``); None without
    both fleetloop and random."""
    if "random" not in curves or "fleetloop" not in curves:
        return None
    r, f = curves["random"], curves["fleetloop"]
    target = r["rare"][-1]
    need = {s: labels_to_reach(c["labels"], c["rare"], target) for s, c in curves.items()}
    random_labels = need["random"] if need["random"] is not None else r["labels"][-1]
    t1 = need["fleetloop"] is not None and need["fleetloop"] <= TARGET_LABEL_SHARE * random_labels
    out: dict[str, Any] = {
        "random_final_rare": target, "random_final_labels": r["labels"][-1], "labels_to_reach": need,
        "random_labels": random_labels, "target_labels_met": bool(t1),
    }
    if weeks >= TARGET_WEEK:
        ratio = f["rare"][TARGET_WEEK] / r["rare"][TARGET_WEEK] if r["rare"][TARGET_WEEK] > 0 else math.inf
        out.update(week3_fleetloop=f["rare"][TARGET_WEEK], week3_random=r["rare"][TARGET_WEEK], week3_ratio=ratio,
                   target_ratio_met=bool(ratio >= TARGET_RATIO))
    else:
        out.update(week3_ratio=None, target_ratio_met=None)
    return out


def _fmt_need(x: float | None) -> str:
    return "not reached" if x is None else f"{x:.0f}"


def print_table(title: str, curves: dict[str, dict[str, list[float]]], with_mix: bool = True) -> None:
    say(f"\n{title}")
    head = f"{'week':>4} {'strategy':<10} {'labels':>6} {'mAP':>6} {'rain':>6} {'night':>6} {'green':>6} {'rare':>6}"
    if with_mix:
        head += f"   {'picked: rain':>12} {'night':>6} {'green':>6}"
    say(head)
    weeks = len(next(iter(curves.values()))["labels"])
    for w in range(weeks):
        for strategy in curves:
            c = curves[strategy]
            if w == 0 and strategy != next(iter(curves)):
                continue
            name = "(all)" if w == 0 else strategy
            line = (f"{w:>4} {name:<10} {c['labels'][w]:>6.0f} {c['overall'][w]:>6.3f} {c['rain'][w]:>6.3f} "
                    f"{c['night'][w]:>6.3f} {c['green'][w]:>6.3f} {c['rare'][w]:>6.3f}")
            if with_mix and w > 0:
                line += f"   {c['picked_rain'][w]:>12.0%} {c['picked_night'][w]:>6.0%} {c['picked_green'][w]:>6.0%}"
            say(line)


def print_verdict(title: str, verdict: dict[str, Any] | None) -> None:
    if verdict is None:
        say(f"{title}: the targets compare fleetloop with random (both must run)")
        return
    need = verdict["labels_to_reach"]
    say(f"{title}: labels to reach random's final rare-slice mAP {verdict['random_final_rare']:.3f} "
        f"(random spent {verdict['random_final_labels']:.0f}): "
        + ", ".join(f"{s} {_fmt_need(need[s])}" for s in need))
    say(f"  target 1 (fleetloop <= 1/3 of the {verdict['random_labels']:.0f} labels random needs): "
        f"{'MET' if verdict['target_labels_met'] else 'NOT met'} (fleetloop: {_fmt_need(need['fleetloop'])})"
        + (" [degenerate: random did not improve on week 0]" if verdict["random_labels"] == 0 else ""))
    if verdict.get("week3_ratio") is not None:
        say(f"  target 2 (rare-slice mAP after week 3 >= 1.5x random's): "
            f"{'MET' if verdict['target_ratio_met'] else 'NOT met'} (fleetloop {verdict['week3_fleetloop']:.3f} vs "
            f"random {verdict['week3_random']:.3f}: {verdict['week3_ratio']:.2f}x)")
    else:
        say("  target 2: needs at least 3 weeks")


def print_mining(results: dict[int, dict[str, list[WeekResult]]]) -> None:
    say("\nWhat fleetloop's mining flagged (flags per frame of each condition, top reasons; mean frame score):")
    for seed in sorted(results):
        for r in results[seed].get("fleetloop", [])[1:]:
            m = r.mining
            if not m:
                continue
            parts = []
            for cond, flags in m["flags_per_frame"].items():
                top = ", ".join(f"{k} {v:.2f}" for k, v in list(flags.items())[:4])
                parts.append(f"{cond} ({m['frames'][cond]} fr, score {m['mean_score'][cond]:.2f}): {top}")
            say(f"  seed {seed} week {r.week}: " + " | ".join(parts))
            say("      in the picks: " + ", ".join(f"{k} {v}" for k, v in m["flags_in_picks"].items()))


def plot(curves: dict[str, dict[str, list[float]]], path: Path, cfg: Config, n_seeds: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    styles = {"fleetloop": ("tab:blue", "-o"), "random": ("tab:gray", "-s"), "confidence": ("tab:orange", "-^"),
              ORACLE: ("tab:green", "--d"), UNCALIBRATED: ("tab:purple", ":x"), ERRORS: ("tab:olive", "--^")}
    for ax, key, label in ((axes[0], "rare", "rare-slice mAP@0.5 (mean of rain, night, green cones)"),
                           (axes[1], "overall", "mAP@0.5 overall")):
        for strategy in curves:
            c = curves[strategy]
            colour, style = styles[strategy]
            ax.plot(c["labels"], c[key], style, color=colour, label=strategy)
            ax.fill_between(c["labels"], c[f"{key}_min"], c[f"{key}_max"], color=colour, alpha=0.15)
        ax.set_xlabel("frames labeled by the strategy (seed set not counted)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    if "random" in curves:
        axes[0].axhline(curves["random"]["rare"][-1], color="tab:gray", ls=":", lw=1, label="random, final")
    axes[0].legend(loc="upper left")
    fig.suptitle(f"Label efficiency on the simulator: {n_seeds} seeds (mean, min-max band), budget {cfg.budget}/week, "
                 f"{cfg.logs_per_week}x{cfg.frames_per_log} frames driven/week")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# main


def parse(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Config()
    ap.add_argument("--quick", action="store_true", help="a tiny configuration for a smoke run (flags still apply)")
    ap.add_argument("--seeds", type=int, help=f"seeds 0..N-1 (default {d.seeds})")
    ap.add_argument("--weeks", type=int, help=f"simulated weeks after week 0 (default {d.weeks})")
    ap.add_argument("--budget", type=int, help=f"frames labeled per week and strategy (default {d.budget})")
    ap.add_argument("--logs-per-week", type=int, help=f"default {d.logs_per_week}")
    ap.add_argument("--frames-per-log", type=int, help=f"default {d.frames_per_log}")
    ap.add_argument("--seed-frames", type=int, help=f"clear-day frames of the week-0 seed set (default {d.seed_frames})")
    ap.add_argument("--seed-epochs", type=int, help=f"epochs of the first model, from scratch (default {d.seed_epochs})")
    ap.add_argument("--eval-frames", type=int, help=f"frames of the fixed evaluation set (default {d.eval_frames})")
    ap.add_argument("--epochs", type=int, help=f"fine-tuning epochs per week (default {d.epochs})")
    ap.add_argument("--threads", type=int, help=f"torch / onnxruntime threads (default {d.threads})")
    ap.add_argument("--rare-scale", type=float, help="multiply every simulated week's shares of rain, night and "
                    "green-cone zones (default 1.0, the world's own mix, where a themed week has about half its logs in "
                    "the theme's condition; e.g. 0.35 makes a rainy week about 20 %% rain)")
    ap.add_argument("--strategies", help=f"comma-separated, from {', '.join((*STRATEGIES, *EXTRA))} (default "
                    f"{','.join(STRATEGIES)}; {ORACLE} selects by ground truth the frames with the most rare conditions: a "
                    f"reference, not a strategy, and no ceiling; {ERRORS} the frames where the current model has the most "
                    "true errors: what mining estimates, known exactly)")
    ap.add_argument("--out", type=Path, default=OUT, help="where the PNG and JSON go (default benchmarks/out)")
    a = ap.parse_args(argv)
    cfg = QUICK if a.quick else d
    over = {k: getattr(a, k) for k in ("seeds", "weeks", "budget", "logs_per_week", "frames_per_log", "seed_frames",
                                       "seed_epochs", "eval_frames", "epochs", "threads", "rare_scale") if getattr(a, k) is not None}
    if a.strategies:
        names = tuple(dict.fromkeys(x.strip() for x in a.strategies.split(",") if x.strip()))
        unknown = sorted(set(names) - {*STRATEGIES, *EXTRA})
        if unknown or not names:
            ap.error(f"--strategies: unknown {unknown}; choose from {', '.join((*STRATEGIES, *EXTRA))}")
        over["strategies"] = names
    cfg = Config(**{**asdict(cfg), **over})
    if cfg.seeds < 1 or cfg.weeks < 1 or cfg.budget < 1:
        ap.error("--seeds, --weeks and --budget must be at least 1")
    if not 0 < cfg.rare_scale <= 10:
        ap.error("--rare-scale must be in (0, 10]")
    return cfg, a


def main(argv: list[str] | None = None) -> int:
    cfg, a = parse(argv)
    from fleetloop.params import load_params
    from fleetloop.sim.stack import sim_mining

    loop = load_params()
    mine_params = sim_mining(loop.mine)  # the simulated stack's operating point and camera size
    say(f"label efficiency: {cfg}")
    say(f"training: week 0 from scratch ({cfg.seed_epochs} epochs), then each week fine-tuned from the previous "
        f"week's weights ({cfg.epochs} epochs on all labeled frames); torch/onnxruntime threads {cfg.threads}")
    timer = Timer()
    t0 = time.perf_counter()
    results: dict[int, dict[str, list[WeekResult]]] = {}
    with tempfile.TemporaryDirectory(prefix="label-efficiency-") as tmp:
        for seed in range(cfg.seeds):
            results[seed] = run_seed(seed, cfg, Path(tmp), timer, mine_params, loop.drift)
    wall = time.perf_counter() - t0

    per_seed_verdicts = {}
    for seed in sorted(results):
        curves = mean_curves({seed: results[seed]})
        print_table(f"seed {seed}", curves)
        per_seed_verdicts[seed] = judge(curves, cfg.weeks)
        print_verdict(f"seed {seed}", per_seed_verdicts[seed])
    curves = mean_curves(results)
    print_table(f"mean over {cfg.seeds} seeds", curves)
    verdict = judge(curves, cfg.weeks)
    print_verdict(f"mean over {cfg.seeds} seeds", verdict)
    print_mining(results)

    png = plot(curves, a.out / "label_efficiency.png", cfg, cfg.seeds)
    if verdict is not None:
        say("\nTargets (mean over seeds):")
        say(f"  fleetloop reaches random's final rare-slice mAP with <= 1/3 of random's labels: "
            f"{'MET' if verdict['target_labels_met'] else 'NOT MET'}")
        say(f"  fleetloop's rare-slice mAP after week 3 >= 1.5x random's: "
            f"{'MET' if verdict['target_ratio_met'] else 'NOT MET' if verdict['target_ratio_met'] is not None else 'n/a'}")
        say("  per seed: " + "; ".join(
            f"seed {s}: {'met' if v['target_labels_met'] else 'not met'} / "
            f"{'met' if v['target_ratio_met'] else 'not met'}" for s, v in per_seed_verdicts.items() if v))
    stages = ("setup", "drive", "drift", "calibrate", "mine", "label", "train", "export", "evaluate")
    say("\nTime per stage (s): " + ", ".join(f"{k} {timer.seconds[k]:.0f}" for k in stages)
        + f"; total {wall:.0f} s ({wall / 60:.1f} min)")
    say(f"wrote {png}")
    doc = {"config": asdict(cfg), "mean": curves, "verdict": verdict,
           "per_seed": {str(s): {"verdict": per_seed_verdicts[s],
                                 "weeks": {k: [asdict(r) for r in v] for k, v in results[s].items()}}
                        for s in sorted(results)},
           "seconds": {k: round(v, 1) for k, v in timer.seconds.items()}, "wall_seconds": round(wall, 1)}
    (a.out / "label_efficiency.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
