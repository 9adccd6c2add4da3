"""Train the reference camera detector on prepared split files; write the model directory.

CLI::

    python -m fleetloop.train.reference.train --data DIR --out MODEL_DIR \\
        [--epochs N] [--seed S] [--max-seconds T] [--params params.json] [--init-from MODEL_DIR]

reads ``DIR/train.parquet`` (and ``DIR/val.parquet`` when present and not empty) and writes
``MODEL_DIR/model.pt`` (state dict), ``MODEL_DIR/config.json`` (architecture, classes, input
size, training figures), ``MODEL_DIR/model.onnx`` and, with a validation split,
``MODEL_DIR/val_metrics.json``. It prints one progress line per epoch. ``params.json`` holds
:class:`TrainParams` fields; command-line flags override it. Bad input exits 2 with one
``error: ...`` line on stderr.

Training: AdamW with a linear warm-up and cosine decay, CenterNet's penalty-reduced focal loss
on the heatmap plus L1 on log box size and centre offset at object centres, random horizontal
flips. Seeds fix the initialisation and the batch order; ``--max-seconds`` stops training at the
first batch that would start after the budget (at least one batch runs; the model is still
written, and the learning-rate schedule is the one planned for all epochs). ``init_from`` (a
model directory of the same architecture) fine-tunes: the network starts from its ``model.pt``
instead of a fresh initialisation (the optimiser and the schedule start afresh).
``--init-from`` must name a directory; one without ``model.pt`` means from scratch. Boxes are
clipped to their frame; unusable boxes are skipped and counted (``data.load_split``), and a train
split without a usable box is an error. ``--out`` is checked before the training starts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from fleetloop.schema import CLASSES
from fleetloop.train.reference.data import (
    Split,
    Targets,
    TrainingError,
    flip_boxes,
    load_split,
    make_targets,
    read_optional_split,
    read_split,
)
from fleetloop.train.reference.model import ARCH, CenterNet, ModelConfig, n_params
from fleetloop.train.reference.runner import STRIDE_MULTIPLE, to_input

__all__ = ["TrainParams", "TrainReport", "TrainingError", "main", "train"]

DEFAULT_EPOCHS = 12


class TrainParams(BaseModel):
    """Training hyper-parameters (the fields ``params.json`` may set)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(DEFAULT_EPOCHS, ge=1)
    seed: int = Field(0, ge=0, lt=2**63)  # numpy's and torch's generators take no negative seeds
    max_seconds: float | None = Field(None, gt=0, allow_inf_nan=False)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(4e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(1e-4, ge=0, allow_inf_nan=False)
    warmup_steps: int = Field(100, ge=0)
    flip: bool = True
    threads: int = Field(2, ge=1)
    widths: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt] = ModelConfig.widths
    head: PositiveInt = ModelConfig.head
    size_weight: float = Field(1.0, ge=0, allow_inf_nan=False)
    offset_weight: float = Field(1.0, ge=0, allow_inf_nan=False)
    export_onnx: bool = True
    init_from: str | None = None  # a model directory whose weights start the training (fine-tuning)


class TrainReport(BaseModel):
    """What a training run did (also stored in ``config.json`` under ``training``)."""

    model_dir: str
    epochs: int
    epochs_run: int
    seed: int
    train_seconds: float
    stopped_early: bool
    n_images: int
    n_objects: int
    skipped_boxes: int
    n_params: int
    final_loss: float
    losses: list[float]
    onnx: bool
    val_frames: int = 0
    val_map50: float | None = None


# --------------------------------------------------------------------------------------------
# loss


def focal_loss(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss (alpha 2, beta 4), per object."""
    pos = gt.eq(1.0).float()
    p = torch.sigmoid(logits)
    pos_loss = F.logsigmoid(logits) * (1 - p) ** 2 * pos
    neg_loss = F.logsigmoid(-logits) * p**2 * (1 - gt) ** 4 * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def _gather(pred: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, 2, h, w) at flat cells (B, K) -> (B, K, 2)."""
    b, c = pred.shape[:2]
    flat = pred.reshape(b, c, -1)
    return flat.gather(2, index.unsqueeze(1).expand(b, c, index.shape[1])).permute(0, 2, 1)


def regression_loss(pred: torch.Tensor, target: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked L1 at object centres, per object."""
    diff = (_gather(pred, index) - target).abs().sum(dim=2) * mask
    return diff.sum() / mask.sum().clamp(min=1.0)


def detection_loss(outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], t: dict[str, torch.Tensor],
                   params: TrainParams) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """Total loss and its (heat, size, offset) parts."""
    heat, size, offset = outputs
    lh = focal_loss(heat, t["heat"])
    ls = regression_loss(size, t["size"], t["index"], t["mask"])
    lo = regression_loss(offset, t["offset"], t["index"], t["mask"])
    total = lh + params.size_weight * ls + params.offset_weight * lo
    return total, (float(lh.detach()), float(ls.detach()), float(lo.detach()))


# --------------------------------------------------------------------------------------------
# batches


def _batch(split: Split, idx: np.ndarray, rng: np.random.Generator, n_classes: int,
           flip: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images = split.images[idx].copy()
    boxes = [split.boxes[i] for i in idx]
    if flip:
        width = images.shape[2]
        for j in np.flatnonzero(rng.random(len(idx)) < 0.5):
            images[j] = images[j, :, ::-1]
            boxes[j] = flip_boxes(boxes[j], width)
    x = to_input(images)
    t: Targets = make_targets(boxes, [split.labels[i] for i in idx], n_classes, x.shape[2], x.shape[3])
    tensors = {k: torch.from_numpy(getattr(t, k)) for k in ("heat", "index", "size", "offset", "mask")}
    return torch.from_numpy(x), tensors


def _lr_at(step: int, total: int, params: TrainParams) -> float:
    if step < params.warmup_steps:
        return params.lr * (step + 1) / params.warmup_steps
    progress = (step - params.warmup_steps) / max(total - params.warmup_steps, 1)
    return params.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def fit(split: Split, params: TrainParams, log: Callable[[str], None] | None = None
        ) -> tuple[CenterNet, list[float], float, bool]:
    """Train a network on ``split`` (fresh, or from ``params.init_from``'s weights); returns
    (net, epoch losses, seconds, stopped early)."""
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    net = CenterNet(ModelConfig(widths=params.widths, head=params.head))
    if params.init_from is not None:
        _load_initial_weights(net, Path(params.init_from))
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    n = len(split.images)
    steps_per_epoch = max(math.ceil(n / params.batch_size), 1)
    total = steps_per_epoch * params.epochs
    losses: list[float] = []
    start = time.perf_counter()
    step = 0
    stopped = False
    for epoch in range(params.epochs):
        order = rng.permutation(n)
        sums = np.zeros(4)
        steps = 0
        for b in range(steps_per_epoch):
            if params.max_seconds is not None and step > 0 and time.perf_counter() - start >= params.max_seconds:
                stopped = True
                break
            x, t = _batch(split, order[b * params.batch_size:(b + 1) * params.batch_size], rng,
                          len(net.config.classes), params.flip)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, params)
            loss, parts = detection_loss(net(x), t, params)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += (float(loss.detach()), *parts)
            step += 1
            steps += 1
        if steps:
            mean = sums / steps
            losses.append(float(mean[0]))
            if log:
                partial = f" ({steps}/{steps_per_epoch} steps)" if steps < steps_per_epoch else ""
                log(f"epoch {epoch + 1}/{params.epochs}{partial} loss {mean[0]:.4f} (heat {mean[1]:.4f} "
                    f"size {mean[2]:.4f} offset {mean[3]:.4f}) elapsed {time.perf_counter() - start:.1f}s")
        if stopped:
            if log:
                log(f"stopped in epoch {epoch + 1}: the time budget of {params.max_seconds:g}s is used")
            break
    net.eval()
    return net, losses, time.perf_counter() - start, stopped


def _load_initial_weights(net: CenterNet, model_dir: Path) -> None:
    """Copy ``model_dir/model.pt`` into ``net``; TrainingError unless the architectures match."""
    weights = model_dir / "model.pt"
    if not weights.is_file():
        raise TrainingError(f"init_from: no model.pt in {model_dir}")
    try:
        config = json.loads((model_dir / "config.json").read_text())
        theirs = ModelConfig.from_json(config["model"])
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise TrainingError(f"init_from: cannot read {model_dir / 'config.json'}: {exc}") from exc
    if (theirs.arch, tuple(theirs.classes), theirs.widths, theirs.head) != (
            net.config.arch, tuple(net.config.classes), net.config.widths, net.config.head):
        raise TrainingError(f"init_from: {model_dir} is {theirs.arch} widths {list(theirs.widths)} head {theirs.head} "
                            f"classes {list(theirs.classes)}; this run trains {net.config.arch} widths "
                            f"{list(net.config.widths)} head {net.config.head} classes {list(net.config.classes)}")
    try:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as exc:  # torch.load raises many types for corrupt files; load_state_dict RuntimeError
        said = str(exc).strip().splitlines()[:2]
        raise TrainingError(f"init_from: cannot load {weights} into {net.config.arch} widths "
                            f"{list(net.config.widths)} head {net.config.head}: {type(exc).__name__}"
                            f"{': ' + ' '.join(s.strip() for s in said) if said else ''}") from exc


# --------------------------------------------------------------------------------------------
# the training run


def load_params(path: str | Path | None, **overrides: object) -> TrainParams:
    """Parameters from a JSON file (optional), with non-None ``overrides`` on top."""
    data: dict = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainingError(f"cannot read params file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise TrainingError(f"params file {path}: expected a JSON object")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        params = TrainParams(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise TrainingError(f"bad training parameter {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    return params


def _validate(net: CenterNet, data_dir: Path, out_dir: Path) -> tuple[int, float | None]:
    from fleetloop.train.metrics import evaluate, write_metrics
    from fleetloop.train.reference.model import TorchDetector
    from fleetloop.train.reference.predict import predict_table

    table = read_optional_split(data_dir / "val.parquet")
    if table is None or table.num_rows == 0:
        return 0, None
    predictions = predict_table(table, TorchDetector.from_net(net))
    metrics = evaluate(table, predictions)
    write_metrics(metrics, out_dir / "val_metrics.json")
    return table.num_rows, metrics.overall.map50


def train(data_dir: str | Path, out_dir: str | Path, *, epochs: int | None = None, seed: int | None = None,
          max_seconds: float | None = None, params: TrainParams | str | Path | None = None,
          log: Callable[[str], None] | None = None) -> TrainReport:
    """Train on ``data_dir/train.parquet`` and write the model directory ``out_dir``.

    ``params`` is a :class:`TrainParams` or a params.json path; ``epochs``, ``seed`` and
    ``max_seconds`` override it. ``log`` receives the progress lines. Raises
    :class:`TrainingError` on bad input.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    base = params if isinstance(params, TrainParams) else load_params(params)
    overrides = {"epochs": epochs, "seed": seed, "max_seconds": max_seconds}
    p = load_params(None, **{**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}})
    torch.set_num_threads(p.threads)
    table = read_split(data_dir / "train.parquet")
    if table.num_rows == 0:
        raise TrainingError(f"{data_dir / 'train.parquet'} has no frames")
    split = load_split(table, CLASSES, "train")
    if split.n_objects == 0:
        raise TrainingError(f"{data_dir / 'train.parquet'}: no box of the classes {', '.join(CLASSES)} to train on "
                            f"({table.num_rows} frames, {split.skipped_boxes} boxes skipped: other classes, "
                            "no area inside the frame or a coordinate that is not a number)")
    if p.init_from is not None:  # its errors before anything is written (fit loads it again, after seeding)
        _load_initial_weights(CenterNet(ModelConfig(widths=p.widths, head=p.head)), Path(p.init_from))
    _make_out_dir(out_dir)  # before the training: a bad --out costs no training time
    height, width = split.images.shape[1:3]
    if log:
        start = f", from {p.init_from}" if p.init_from else ""
        skipped = f", {split.skipped_boxes} boxes skipped" if split.skipped_boxes else ""
        log(f"training {ARCH} on {len(split.images)} frames ({split.n_objects} objects{skipped}) of {width}x{height}, "
            f"{p.epochs} epochs, seed {p.seed}{start}")
    net, losses, seconds, stopped = fit(split, p, log)
    for stale in ("model.onnx", "val_metrics.json"):  # of an earlier run into the same folder
        (out_dir / stale).unlink(missing_ok=True)
    torch.save(net.state_dict(), out_dir / "model.pt")
    config = {
        "arch": ARCH, "classes": list(CLASSES), "model": net.config.to_json(),
        "input": {"width": int(width), "height": int(height), "channels": "RGB", "dtype": "float32 0..255",
                  "stride_multiple": STRIDE_MULTIPLE},
        "params": p.model_dump(), "torch": torch.__version__,
    }
    report = TrainReport(
        model_dir=str(out_dir), epochs=p.epochs, epochs_run=len(losses), seed=p.seed, train_seconds=round(seconds, 2),
        stopped_early=stopped, n_images=len(split.images), n_objects=split.n_objects,
        skipped_boxes=split.skipped_boxes, n_params=n_params(net), final_loss=losses[-1], losses=losses,
        onnx=p.export_onnx,
    )
    _write_config(out_dir, config, report)  # predict/validation read it
    if p.export_onnx:
        from fleetloop.train.reference.onnx_export import export_onnx

        export_onnx(net, out_dir / "model.onnx", int(height), int(width))
    report.val_frames, report.val_map50 = _validate(net, data_dir, out_dir)
    _write_config(out_dir, config, report)
    if log:
        map50 = "n/a (no ground truth)" if report.val_map50 is None else f"{report.val_map50:.3f}"
        val = f", val map50 {map50} on {report.val_frames} frames" if report.val_frames else ""
        log(f"done in {seconds:.1f}s: {report.epochs_run} epochs{val}; wrote {out_dir}")
    return report


def _make_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainingError(f"--out {out_dir} is a file, not a model directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"cannot create the model directory {out_dir}: {exc.strerror or exc}") from exc
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise TrainingError(f"cannot write into the model directory {out_dir}: permission denied")


def _write_config(out_dir: Path, config: dict, report: TrainReport) -> None:
    data = {**config, "training": report.model_dump(exclude={"model_dir"})}
    (out_dir / "config.json").write_text(json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 on success, 2 with ``error: ...`` on stderr for bad input."""
    ap = argparse.ArgumentParser(prog="python -m fleetloop.train.reference.train",
                                 description="Train the reference camera detector.")
    ap.add_argument("--data", required=True, type=Path, help="folder with train.parquet (val.parquet optional)")
    ap.add_argument("--out", required=True, type=Path, help="model directory to write")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--max-seconds", type=float)
    ap.add_argument("--params", type=Path, help="JSON file of training parameters")
    ap.add_argument("--init-from", type=Path,
                    help="model directory whose weights start the training (fine-tune); one without model.pt: from scratch")
    a = ap.parse_args(argv)
    if a.init_from is not None and not a.init_from.is_dir():
        ap.error(f"argument --init-from: {a.init_from} is not a directory")
    try:
        # an init folder without a model (fleetloop's training workspace before the first production
        # model) means: train from scratch
        init = a.init_from if a.init_from is not None and (a.init_from / "model.pt").is_file() else None
        params = load_params(a.params, init_from=str(init) if init else None)
        train(a.data, a.out, epochs=a.epochs, seed=a.seed, max_seconds=a.max_seconds, params=params,
              log=lambda line: print(line, flush=True))
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
