"""Run a trained reference model over a split file and write its detections.

CLI::

    python -m fleetloop.train.reference.predict --model MODEL_DIR --data FILE.parquet \\
        --out predictions.parquet [--backend auto|onnx|torch] [--batch-size N]

The input is a prepared split (``fleetloop.train.metrics.PREPARED_SCHEMA``; only ``log_id``,
``frame`` and ``image_png`` are read). The output has one row per detected box in
``PREDICTIONS_SCHEMA`` (log_id, frame, cls, score, x1, y1, x2, y2). The ``auto`` backend runs
``model.onnx`` on onnxruntime when the model directory has it (as a vehicle would), else PyTorch.
Bad input exits 2 with one ``error: ...`` line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fleetloop.train.metrics import PREDICTIONS_SCHEMA
from fleetloop.train.reference.data import TrainingError, decode_images, read_split
from fleetloop.train.reference.runner import DEFAULT_SCORE_THRESHOLD

Backend = Literal["auto", "onnx", "torch"]


class Detector(Protocol):
    """What predict needs of a detector."""

    classes: tuple[str, ...]

    def detect(self, images: np.ndarray) -> list[np.ndarray]: ...


def load_detector(model_dir: str | Path, backend: Backend = "auto",
                  score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> Detector:
    """An OnnxDetector (``onnx``, or ``auto`` with model.onnx present) or a TorchDetector."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise TrainingError(f"not a model directory (no config.json): {model_dir}")
    use_onnx = backend == "onnx" or (backend == "auto" and (model_dir / "model.onnx").is_file())
    weights = model_dir / ("model.onnx" if use_onnx else "model.pt")
    if not weights.is_file():
        raise TrainingError(f"no {weights.name} in {model_dir}")
    try:
        if use_onnx:
            from fleetloop.train.reference.runner import OnnxDetector

            return OnnxDetector(model_dir, intra_op_threads=2, score_threshold=score_threshold)
        from fleetloop.train.reference.model import TorchDetector

        return TorchDetector(model_dir, score_threshold=score_threshold)
    except Exception as exc:  # json, torch.load, onnxruntime and state-dict errors: many types for a bad file
        said = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])
        raise TrainingError(f"cannot load the model in {model_dir} (config.json, {weights.name}): "
                            f"{type(exc).__name__}{': ' + said[:300] if said else ''}") from exc


def predictions_from_detections(log_ids: Sequence[str], frames: Sequence[int], detections: Sequence[np.ndarray],
                                classes: Sequence[str]) -> pa.Table:
    """A PREDICTIONS_SCHEMA table from per-frame (k, 6) detection arrays."""
    counts = np.array([len(d) for d in detections], np.int64)
    dets = np.concatenate([d.reshape(-1, 6) for d in detections]) if detections else np.zeros((0, 6), np.float32)
    names = np.asarray(list(classes), dtype=object)
    cols = {
        "log_id": pa.array(np.repeat(np.asarray(list(log_ids), dtype=object), counts), pa.string()),
        "frame": pa.array(np.repeat(np.asarray(list(frames), np.int64), counts), pa.int64()),
        "cls": pa.array(names[dets[:, 5].astype(np.int64)], pa.string()),
        "score": pa.array(dets[:, 4].astype(np.float32), pa.float32()),
    }
    for j, key in enumerate(("x1", "y1", "x2", "y2")):
        cols[key] = pa.array(dets[:, j].astype(np.float32), pa.float32())
    return pa.table(cols, schema=PREDICTIONS_SCHEMA)


def predict_table(table: pa.Table, detector: Detector, batch_size: int = 64, name: str = "data") -> pa.Table:
    """Detections of ``detector`` on every frame of a split table (batches of equal-size images)."""
    detections: list[np.ndarray] = []
    for start in range(0, table.num_rows, batch_size):
        chunk = table.slice(start, batch_size)
        images = decode_images(chunk, name)
        shapes = _sizes(chunk, images)
        if len(set(shapes)) == 1:
            detections.extend(detector.detect(images))
        else:  # frames of different sizes: one at a time, unpadded
            for i, (h, w) in enumerate(shapes):
                detections.extend(detector.detect(images[i:i + 1, :h, :w]))
    return predictions_from_detections(table.column("log_id").to_pylist(), table.column("frame").to_pylist(),
                                       detections, detector.classes)


def _sizes(chunk: pa.Table, images: np.ndarray) -> list[tuple[int, int]]:
    if "width" in chunk.column_names and "height" in chunk.column_names:
        hs, ws = chunk.column("height").to_pylist(), chunk.column("width").to_pylist()
        if all(h is not None and w is not None for h, w in zip(hs, ws, strict=True)):
            return [(min(int(h), images.shape[1]), min(int(w), images.shape[2])) for h, w in zip(hs, ws, strict=True)]
    return [images.shape[1:3]] * len(images)


def predict(model_dir: str | Path, data: str | Path, out: str | Path | None = None, *, backend: Backend = "auto",
            batch_size: int = 64, score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> pa.Table:
    """Detections of the model in ``model_dir`` on the split file ``data``; written to ``out`` if given."""
    if batch_size < 1:
        raise TrainingError(f"batch_size must be at least 1, not {batch_size}")
    if not 0.0 <= score_threshold <= 1.0:  # also refuses NaN
        raise TrainingError(f"score_threshold must be between 0 and 1, not {score_threshold}")
    if out is not None and Path(out).is_dir():
        raise TrainingError(f"--out {out} is a directory, not a predictions file")
    detector = load_detector(model_dir, backend, score_threshold)
    table = read_split(data, need_boxes=False)
    predictions = predict_table(table, detector, batch_size, Path(data).name)
    if out is not None:
        try:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(predictions, out)
        except OSError as exc:
            raise TrainingError(f"cannot write {out}: {exc.strerror or str(exc).splitlines()[0]}") from exc
    return predictions


def _positive_int(text: str) -> int:
    value = int(text)  # argparse reports the ValueError as "invalid _positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 on success, 2 with ``error: ...`` on stderr for bad input."""
    ap = argparse.ArgumentParser(prog="python -m fleetloop.train.reference.predict",
                                 description="Detect objects with a trained reference model.")
    ap.add_argument("--model", required=True, type=Path, help="model directory (config.json, model.onnx/model.pt)")
    ap.add_argument("--data", required=True, type=Path, help="prepared split parquet file")
    ap.add_argument("--out", required=True, type=Path, help="predictions parquet file to write")
    ap.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto")
    ap.add_argument("--batch-size", type=_positive_int, default=64)
    ap.add_argument("--score-threshold", type=_probability, default=DEFAULT_SCORE_THRESHOLD)
    a = ap.parse_args(argv)
    try:
        preds = predict(a.model, a.data, a.out, backend=a.backend, batch_size=a.batch_size,
                        score_threshold=a.score_threshold)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {preds.num_rows} detections to {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
