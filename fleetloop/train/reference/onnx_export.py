"""Export the reference model to ONNX (``torch.onnx.export(dynamo=True)``, needs onnxscript).

The graph is :class:`~fleetloop.train.reference.model.ExportHeads`: input ``images`` float32
(N, 3, H, W) with values 0..255, outputs ``heat`` (sigmoid probabilities), ``size`` (log width,
log height in pixels) and ``offset``, each at a quarter of the input resolution. The batch axis
is dynamic, and so are H and W as multiples of 16. The weights are inside the one .onnx file (no
external data file). The export's own log lines and warnings are silenced; :func:`check_export`
compares onnxruntime with PyTorch on given inputs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.export import Dim

from fleetloop.train.reference.model import CenterNet, ExportHeads
from fleetloop.train.reference.runner import STRIDE_MULTIPLE

INPUT_NAME = "images"
OUTPUT_NAMES = ("heat", "size", "offset")
OPSET = 18


@contextlib.contextmanager
def _quiet_export():
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.__trace", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(net: CenterNet, path: str | Path, height: int, width: int) -> Path:
    """Write ``net`` (set to eval mode) as ONNX to ``path``; ``height``/``width`` give the example input."""
    path = Path(path)
    net.eval()
    heads = ExportHeads(net).eval()
    h = height + (-height % STRIDE_MULTIPLE)
    w = width + (-width % STRIDE_MULTIPLE)
    example = torch.full((2, 3, h, w), 114.0)
    shapes = {INPUT_NAME: {0: Dim("batch", min=1, max=4096), 2: STRIDE_MULTIPLE * Dim("h16", min=1, max=512),
                           3: STRIDE_MULTIPLE * Dim("w16", min=1, max=512)}}
    with _quiet_export():
        torch.onnx.export(heads, (example,), str(path), dynamo=True, input_names=[INPUT_NAME],
                          output_names=list(OUTPUT_NAMES), dynamic_shapes=shapes, opset_version=OPSET,
                          verbose=False, report=False, optimize=True, external_data=False)
    return path


def check_export(net: CenterNet, path: str | Path, inputs: np.ndarray) -> float:
    """Largest absolute difference between onnxruntime and PyTorch outputs on float32 NCHW ``inputs``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {INPUT_NAME: inputs.astype(np.float32)})
    with torch.inference_mode():
        torch_out = ExportHeads(net.eval())(torch.from_numpy(inputs.astype(np.float32)))
    return max(float(np.abs(a - b.numpy()).max()) for a, b in zip(onnx_out, torch_out, strict=True))
