"""Run an exported reference model with onnxruntime: the vehicles' camera detector.

Imports numpy and onnxruntime only (no torch), so building an :class:`OnnxDetector` is cheap.
``detect(images)`` takes uint8 (N, H, W, 3) RGB images of any size (padded bottom/right to a
multiple of :data:`STRIDE_MULTIPLE`) and returns, per image, a float32 (k, 6) array of
``[x1, y1, x2, y2, score, class_index]`` in image pixels, highest score first.

Decoding (shared with the PyTorch twin): a heatmap cell is a detection when it is the maximum of
its 3x3 neighbourhood (max-pool NMS), among the ``top_k`` best cells of the image, and scores at
least ``score_threshold``; its box is centred at ``(cell + offset) * OUTPUT_STRIDE`` with size
``exp(log size)``, clipped to the image.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

#: Pixels per heatmap cell.
OUTPUT_STRIDE = 4
#: Input height and width must be multiples of this (the deepest stage has stride 16).
STRIDE_MULTIPLE = 16
#: Value of the padding pixels (a neutral grey).
PAD_VALUE = 114

DEFAULT_SCORE_THRESHOLD = 0.05
DEFAULT_TOP_K = 100


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H', W') padded to multiples of STRIDE_MULTIPLE."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images of shape (N, H, W, 3), got {images.shape}")
    _, h, w, _ = images.shape
    ph, pw = -h % STRIDE_MULTIPLE, -w % STRIDE_MULTIPLE
    if ph or pw:
        images = np.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=PAD_VALUE)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)


def _maxpool3(heat: np.ndarray) -> np.ndarray:
    h, w = heat.shape[-2:]
    padded = np.pad(heat, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    out = heat.copy()
    for dy in range(3):
        for dx in range(3):
            np.maximum(out, padded[:, :, dy:dy + h, dx:dx + w], out=out)
    return out


def decode(
    heat: np.ndarray, size: np.ndarray, offset: np.ndarray, image_height: int, image_width: int,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD, top_k: int = DEFAULT_TOP_K,
) -> list[np.ndarray]:
    """Detections from the heads' outputs (heat: probabilities (N, C, h, w); size, offset (N, 2, h, w))."""
    peaks = np.where(_maxpool3(heat) == heat, heat, 0.0)
    n, c, h, w = heat.shape
    out: list[np.ndarray] = []
    for i in range(n):
        flat = peaks[i].ravel()
        k = min(top_k, flat.size)
        idx = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
        idx = idx[flat[idx] >= score_threshold]
        idx = idx[np.argsort(-flat[idx], kind="stable")]
        cls, y, x = np.unravel_index(idx, (c, h, w))
        cx = (x + offset[i, 0, y, x]) * OUTPUT_STRIDE
        cy = (y + offset[i, 1, y, x]) * OUTPUT_STRIDE
        bw, bh = np.exp(size[i, 0, y, x]), np.exp(size[i, 1, y, x])
        det = np.stack([
            np.clip(cx - bw / 2, 0, image_width), np.clip(cy - bh / 2, 0, image_height),
            np.clip(cx + bw / 2, 0, image_width), np.clip(cy + bh / 2, 0, image_height),
            flat[idx], cls.astype(np.float32),
        ], axis=1).astype(np.float32).reshape(-1, 6)
        keep = (det[:, 2] > det[:, 0]) & (det[:, 3] > det[:, 1])
        out.append(det[keep])
    return out


def read_config(model_dir: str | Path) -> dict:
    """The model directory's ``config.json``."""
    return json.loads((Path(model_dir) / "config.json").read_text())


class OnnxDetector:
    """The exported model (``model_dir/model.onnx``) on onnxruntime's CPU provider."""

    def __init__(self, model_dir: str | Path, *, intra_op_threads: int = 1,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD, top_k: int = DEFAULT_TOP_K) -> None:
        import onnxruntime as ort

        model_dir = Path(model_dir)
        config = read_config(model_dir)
        self.classes: tuple[str, ...] = tuple(config["model"]["classes"])
        self.input_size: tuple[int, int] = (int(config["input"]["width"]), int(config["input"]["height"]))
        self.score_threshold = score_threshold
        self.top_k = top_k
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def raw(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The heads' outputs (heat probabilities, log size, offset) for uint8 (N, H, W, 3) images."""
        heat, size, offset = self.session.run(None, {self._input: to_input(images)})
        return heat, size, offset

    def detect(self, images: np.ndarray) -> list[np.ndarray]:
        """Per image a float32 (k, 6) array ``[x1, y1, x2, y2, score, class_index]``."""
        heat, size, offset = self.raw(images)
        return decode(heat, size, offset, images.shape[1], images.shape[2], self.score_threshold, self.top_k)


def measure_latency(model_dir: str | Path, n: int = 50, warmup: int = 5, seed: int = 0) -> float:
    """Median milliseconds of ``OnnxDetector.detect`` on one image (CPU, one intra-op thread)."""
    det = OnnxDetector(model_dir, intra_op_threads=1)
    width, height = det.input_size
    image = np.random.default_rng(seed).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    for _ in range(warmup):
        det.detect(image)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        det.detect(image)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)
