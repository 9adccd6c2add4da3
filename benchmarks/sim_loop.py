"""The data-engine loop on the simulator as plain function calls (no Prefect, Label Studio or DVC).

Shared by the benchmarks that run the weekly loop offline: drive a simulated week with a camera
model, turn chosen frames into labeled training rows straight from the simulator's ground truth
(what the labeling team would deliver, without jitter), train the reference model into a model
directory, and score it on a fixed evaluation scenario set (the demo's, in the prepared layout).
"""

from __future__ import annotations

import io
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fleetloop.train.metrics import PREPARED_SCHEMA, Metrics

Detector = Callable[[np.ndarray], list[np.ndarray]]
#: the rare slices the demo reports, as Metrics.slices keys
RARE_SLICES = {"rain": "weather=rain", "night": "time_of_day=night", "green": "attr=green"}
#: simulated week 0 starts here (timestamps only; nothing depends on the date)
BASE = datetime(2025, 1, 6, tzinfo=UTC)


def no_model(images: np.ndarray) -> list[np.ndarray]:
    """Before the first model exists the fleet's camera reports nothing (as in the demo)."""
    return [np.zeros((0, 6), np.float32) for _ in range(len(images))]


def drive(week: int, seed: int, detector: Detector, n_logs: int, frames_per_log: int, out_dir: Path,
          rare_scale: float = 1.0) -> Any:
    """``fleetloop.sim.fleet.drive_week`` into ``out_dir`` (images as PNG files there).
    ``rare_scale`` multiplies the week's shares of rain, night and green-cone zones (the world's
    own mix at 1.0: a themed week shifts one condition to about half the logs)."""
    from fleetloop.sim.fleet import drive_week
    from fleetloop.sim.world import week_mix

    mix = week_mix(week, seed)
    if rare_scale != 1.0:
        mix = mix.model_copy(update={k: min(1.0, getattr(mix, k) * rare_scale) for k in ("rain", "night", "green_cones")})
    return drive_week(week, seed=seed, detector=detector, n_logs=n_logs, frames_per_log=frames_per_log,
                      out_dir=out_dir, start=BASE + timedelta(days=7 * week), mix=mix)


def frame_keys(frames: pa.Table) -> list[tuple[str, int]]:
    return list(zip(frames["log_id"].to_pylist(), [int(f) for f in frames["frame"].to_pylist()], strict=True))


def clear_day_frames(week: Any) -> list[tuple[str, int]]:
    """The frames of a week driven in clear weather by day (the demo's seed set)."""
    f = week.logs.frames
    return frame_keys(f.filter(pc.and_(pc.equal(f["weather"], "clear"), pc.equal(f["time_of_day"], "day"))))


def labeled_rows(week: Any, keys: Iterable[tuple[str, int]]) -> pa.Table:
    """PREPARED_SCHEMA rows for ``keys`` of a simulated week: the PNG the car logged and every
    ground-truth box of the frame (attributes kept), as a labeler would draw them."""
    wanted = list(dict.fromkeys(keys))
    f = week.logs.frames
    meta = {(r["log_id"], int(r["frame"])): r
            for r in f.select(["log_id", "frame", "image_uri", "weather", "time_of_day"]).to_pylist()}
    boxes: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in week.truth.select(["log_id", "frame", "cls", "x1", "y1", "x2", "y2", "attr"]).to_pylist():
        boxes.setdefault((r["log_id"], int(r["frame"])), []).append(
            {k: r[k] for k in ("cls", "x1", "y1", "x2", "y2", "attr")})
    rows = [meta[k] for k in wanted]
    pngs = [Path(r["image_uri"]).read_bytes() for r in rows]
    from PIL import Image

    sizes = [Image.open(io.BytesIO(p)).size for p in pngs[:1]] or [(0, 0)]
    width, height = sizes[0]
    return pa.table({
        "log_id": [k[0] for k in wanted],
        "frame": pa.array([k[1] for k in wanted], pa.int64()),
        "image_png": pngs,
        "width": pa.array([width] * len(rows), pa.int32()),
        "height": pa.array([height] * len(rows), pa.int32()),
        "weather": [r["weather"] for r in rows],
        "time_of_day": [r["time_of_day"] for r in rows],
        "boxes": pa.array([boxes.get(k, []) for k in wanted], PREPARED_SCHEMA.field("boxes").type),
    }, schema=PREPARED_SCHEMA)


def scenario_set(seed: int, n_frames: int) -> pa.Table:
    """The fixed evaluation set (``fleetloop.demo.write_scenarios``) as a prepared table."""
    from fleetloop.demo import write_scenarios

    with tempfile.TemporaryDirectory() as tmp:
        path = write_scenarios(Path(tmp) / "eval.parquet", seed, n_frames)
        return pq.read_table(path)


def train_model(rows: pa.Table, out_dir: Path, *, epochs: int, seed: int, threads: int,
                init_from: Path | None = None, export: bool = True) -> Any:
    """Train (or fine-tune from ``init_from``) the reference model on ``rows``; no validation
    split. ``export=False`` leaves out the trainer's ONNX export (see :func:`export_onnx`)."""
    from fleetloop.train.reference.train import TrainParams, train

    data = out_dir.parent / f"{out_dir.name}-data"
    data.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, data / "train.parquet")
    params = TrainParams(epochs=epochs, seed=seed, threads=threads, export_onnx=export,
                         init_from=str(init_from) if init_from is not None else None)
    report = train(data, out_dir, params=params)
    (data / "train.parquet").unlink()
    data.rmdir()
    return report


def export_onnx(model_dir: Path, tolerance: float = 1e-3) -> float:
    """Write ``model_dir/model.onnx`` with torch's TorchScript exporter (about 1 s, where the
    trainer's dynamo export takes 10-15 s: it would be a quarter of a benchmark's time) and check
    it against PyTorch like the trainer's export test does; returns the largest difference.
    The graph, opset, names and dynamic axes are those of ``fleetloop.train.reference.onnx_export``."""
    import warnings

    import torch

    from fleetloop.train.reference.model import ExportHeads, load_model
    from fleetloop.train.reference.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAMES, check_export
    from fleetloop.train.reference.runner import STRIDE_MULTIPLE, read_config

    net = load_model(model_dir).net
    config = read_config(model_dir)
    h = int(config["input"]["height"]) + (-int(config["input"]["height"]) % STRIDE_MULTIPLE)
    w = int(config["input"]["width"]) + (-int(config["input"]["width"]) % STRIDE_MULTIPLE)
    path = model_dir / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ExportHeads(net).eval(), (torch.full((2, 3, h, w), 114.0),), str(path), dynamo=False,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), opset_version=OPSET,
                          dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"}})
    x = np.random.default_rng(0).uniform(0, 255, (3, 3, h, w)).astype(np.float32)
    diff = check_export(net, path, x)
    if not diff < tolerance:
        raise RuntimeError(f"{path}: onnxruntime differs from PyTorch by {diff:g}")
    return diff


@dataclass
class Scores:
    overall: float
    rain: float
    night: float
    green: float

    @property
    def rare(self) -> float:
        """The rare-slice mAP: the mean of the rain, night and green-cone slices."""
        return float(np.mean([self.rain, self.night, self.green]))


def scores(metrics: Metrics) -> Scores:
    def get(key: str) -> float:
        s = metrics.slices.get(key)
        return float(s.map50) if s is not None and s.map50 is not None else 0.0

    return Scores(overall=float(metrics.overall.map50 or 0.0), rain=get(RARE_SLICES["rain"]),
                  night=get(RARE_SLICES["night"]), green=get(RARE_SLICES["green"]))


def evaluate_model(model_dir: Path, table: pa.Table, threads: int = 1) -> Scores:
    """The model's ONNX export (as the cars run it) scored on a prepared table."""
    from fleetloop.train.metrics import evaluate
    from fleetloop.train.reference.predict import predict_table
    from fleetloop.train.reference.runner import OnnxDetector

    det = OnnxDetector(model_dir, intra_op_threads=threads)
    return scores(evaluate(table, predict_table(table, det)))


def onnx_detector(model_dir: Path, threads: int = 1) -> Detector:
    from fleetloop.train.reference.runner import OnnxDetector

    return OnnxDetector(model_dir, intra_op_threads=threads).detect
