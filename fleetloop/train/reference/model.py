"""The reference camera detector: a small CenterNet-style network in plain PyTorch.

A four-stage convolutional backbone (strides 2, 4, 8, 16) with a light top-down path back to
stride 4, and three heads on the stride-4 map: a per-class centre heatmap (logits), the box size
as ``log(width), log(height)`` in pixels, and the sub-cell offset of the centre. No anchors and no
NMS: peaks of the heatmap are the detections (see ``runner.decode``).

The network takes float32 NCHW images with values 0..255 (it normalises internally); height and
width must be multiples of :data:`STRIDE_MULTIPLE` (the runners pad). :class:`ExportHeads`
wraps it with a sigmoid on the heatmap: that is the graph exported to ONNX and run by both
detectors. :class:`TorchDetector` is the PyTorch twin of ``runner.OnnxDetector``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fleetloop.schema import CLASSES
from fleetloop.train.reference.runner import (
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_TOP_K,
    OUTPUT_STRIDE,
    STRIDE_MULTIPLE,
    decode,
    to_input,
)

__all__ = ["ARCH", "OUTPUT_STRIDE", "STRIDE_MULTIPLE", "CenterNet", "ExportHeads", "ModelConfig", "TorchDetector"]

ARCH = "centernet-tiny-v1"
_PRIOR = 0.05  # initial heatmap probability (focal-loss bias init)


@dataclass
class ModelConfig:
    """Architecture hyper-parameters (stored in ``config.json``)."""

    classes: tuple[str, ...] = CLASSES
    widths: tuple[int, int, int, int] = (16, 32, 48, 64)
    head: int = 32
    arch: str = ARCH

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ModelConfig:
        default = cls()
        w = [int(v) for v in data.get("widths", default.widths)]
        return cls(classes=tuple(data.get("classes", default.classes)), widths=(w[0], w[1], w[2], w[3]),
                   head=int(data.get("head", default.head)), arch=str(data.get("arch", default.arch)))


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _head(cin: int, mid: int, bias: list[float]) -> nn.Sequential:
    """3x3 conv, ReLU, 1x1 conv to ``len(bias)`` channels with small weights and the given biases."""
    out = nn.Conv2d(mid, len(bias), 1)
    nn.init.normal_(out.weight, std=0.01)
    assert out.bias is not None
    with torch.no_grad():
        out.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return nn.Sequential(nn.Conv2d(cin, mid, 3, 1, 1), nn.ReLU(inplace=True), out)


class CenterNet(nn.Module):
    """Backbone + top-down fusion + heads; ``forward`` returns (heat logits, log size, offset)."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        w0, w1, w2, w3 = self.config.widths
        self.stem = _conv_bn(3, w0, 2)
        self.s4 = nn.Sequential(_conv_bn(w0, w1, 2), _conv_bn(w1, w1))
        self.s8 = nn.Sequential(_conv_bn(w1, w2, 2), _conv_bn(w2, w2))
        self.s16 = nn.Sequential(_conv_bn(w2, w3, 2), _conv_bn(w3, w3))
        self.lat16 = nn.Conv2d(w3, w2, 1)
        self.fuse8 = _conv_bn(w2, w2)
        self.lat8 = nn.Conv2d(w2, w1, 1)
        self.fuse4 = _conv_bn(w1, self.config.head)
        h = self.config.head
        self.heat = _head(h, h, [float(np.log(_PRIOR / (1 - _PRIOR)))] * len(self.config.classes))
        self.box = _head(h, h, [float(np.log(16.0)), float(np.log(16.0)), 0.5, 0.5])  # log w, log h, offset x, y
        self.register_buffer("mean", torch.tensor([110.0, 115.0, 120.0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([1 / 60.0] * 3).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (x - self.mean) * self.scale
        c4 = self.s4(self.stem(x))
        c8 = self.s8(c4)
        c16 = self.s16(c8)
        p8 = self.fuse8(c8 + F.interpolate(self.lat16(c16), scale_factor=2.0, mode="nearest"))
        p4 = self.fuse4(c4 + F.interpolate(self.lat8(p8), scale_factor=2.0, mode="nearest"))
        box = self.box(p4)
        return self.heat(p4), box[:, :2], box[:, 2:]


class ExportHeads(nn.Module):
    """The inference graph: (heatmap probabilities, log size, offset), each (N, *, H/4, W/4)."""

    def __init__(self, net: CenterNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heat, size, offset = self.net(images)
        return torch.sigmoid(heat), size, offset


def n_params(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


@dataclass
class LoadedModel:
    """A model read back from a model directory."""

    net: CenterNet
    config: dict = field(default_factory=dict)


def load_model(model_dir: str | Path) -> LoadedModel:
    """The network of ``model_dir`` (``config.json`` + ``model.pt``) in eval mode."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    net = CenterNet(ModelConfig.from_json(config["model"]))
    net.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    return LoadedModel(net=net, config=config)


class TorchDetector:
    """PyTorch twin of ``OnnxDetector``: ``detect(uint8 (N, H, W, 3)) -> [(k, 6) float32]``.

    Each row is ``[x1, y1, x2, y2, score, class_index]`` in image pixels, class indices into
    ``self.classes``.
    """

    def __init__(self, model_dir: str | Path | None = None, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 top_k: int = DEFAULT_TOP_K, *, net: CenterNet | None = None) -> None:
        if net is None:
            if model_dir is None:
                raise ValueError("TorchDetector needs a model directory or a network")
            net = load_model(model_dir).net
        self.net = net.eval()
        self.heads = ExportHeads(net).eval()
        self.classes: tuple[str, ...] = tuple(net.config.classes)
        self.score_threshold = score_threshold
        self.top_k = top_k

    @classmethod
    def from_net(cls, net: CenterNet, score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> TorchDetector:
        """A detector over an in-memory network (switched to eval mode)."""
        return cls(None, score_threshold, net=net)

    def raw(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The heads' outputs for uint8 (N, H, W, 3) images (padded to the stride multiple)."""
        x = torch.from_numpy(to_input(images))
        with torch.inference_mode():
            heat, size, offset = self.heads(x)
        return heat.numpy(), size.numpy(), offset.numpy()

    def detect(self, images: np.ndarray) -> list[np.ndarray]:
        heat, size, offset = self.raw(images)
        return decode(heat, size, offset, images.shape[1], images.shape[2], self.score_threshold, self.top_k)
