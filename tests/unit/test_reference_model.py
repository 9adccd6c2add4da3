"""The reference camera detector: it learns, its ONNX export matches PyTorch, its CLIs keep the contract."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from fleetloop.train.metrics import PREDICTIONS_SCHEMA, PREPARED_SCHEMA, evaluate  # noqa: E402
from fleetloop.train.reference import predict as predict_mod  # noqa: E402
from fleetloop.train.reference import train as train_mod  # noqa: E402
from fleetloop.train.reference.model import CenterNet, TorchDetector  # noqa: E402
from fleetloop.train.reference.predict import predict_table  # noqa: E402
from fleetloop.train.reference.runner import OnnxDetector, decode, measure_latency, to_input  # noqa: E402
from fleetloop.train.reference.train import TrainingError, TrainParams  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
H, W = 64, 96
# class: (colour, width range, height range)
SHAPES = {
    "car": ((210, 40, 40), (16, 26), (9, 13)),
    "pedestrian": ((40, 60, 220), (5, 7), (14, 20)),
    "traffic_cone": ((250, 200, 30), (6, 9), (6, 9)),
}


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    img = rng.normal(100, 20, (H, W, 3))
    boxes: list[dict] = []
    for _ in range(int(rng.integers(1, 4))):
        cls = list(SHAPES)[int(rng.integers(len(SHAPES)))]
        colour, (w0, w1), (h0, h1) = SHAPES[cls]
        w, h = int(rng.integers(w0, w1)), int(rng.integers(h0, h1))
        x, y = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
        if any(x < b["x2"] + 2 and b["x1"] < x + w + 2 and y < b["y2"] + 2 and b["y1"] < y + h + 2 for b in boxes):
            continue
        img[y:y + h, x:x + w] = np.array(colour) + rng.normal(0, 12, (h, w, 3))
        boxes.append({"cls": cls, "x1": float(x), "y1": float(y), "x2": float(x + w), "y2": float(y + h),
                      "attr": "green" if cls == "traffic_cone" and rng.random() < 0.3 else None})
    return np.clip(img, 0, 255).astype(np.uint8), boxes


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _split(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = [_scene(rng) for _ in range(n)]
    return pa.table({
        "log_id": [f"log-{seed}"] * n, "frame": list(range(n)), "image_png": [_png(im) for im, _ in rows],
        "width": [W] * n, "height": [H] * n,
        "weather": [("clear", "rain")[i % 2] for i in range(n)], "time_of_day": ["day"] * n,
        "boxes": [b for _, b in rows],
    }, schema=PREPARED_SCHEMA)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prepared")
    pq.write_table(_split(200, seed=1), d / "train.parquet")
    pq.write_table(_split(40, seed=2), d / "val.parquet")
    pq.write_table(_split(60, seed=3), d / "test.parquet")
    return d


# small and short: one thread copes best with a busy machine; the time budget bounds the run
PARAMS = TrainParams(epochs=4, batch_size=16, warmup_steps=10, lr=5e-3, seed=0, threads=1)


@pytest.fixture(scope="module")
def model_dir(data_dir, tmp_path_factory) -> tuple[Path, train_mod.TrainReport]:
    out = tmp_path_factory.mktemp("model")
    report = train_mod.train(data_dir, out, params=PARAMS, max_seconds=40)
    return out, report


def _map50(detector, table: pa.Table) -> float:
    return evaluate(table, predict_table(table, detector)).overall.map50


def test_model_learns(model_dir, data_dir):
    out, report = model_dir
    test = pq.read_table(data_dir / "test.parquet")
    trained = _map50(TorchDetector(out), test)
    torch.manual_seed(0)
    untrained = _map50(TorchDetector.from_net(CenterNet()), test)
    assert trained > 0.3 and trained > untrained + 0.2, (trained, untrained, report)
    assert report.val_frames == 40 and report.val_map50 is not None and report.val_map50 > 0.3
    assert len(report.losses) == report.epochs_run and all(np.isfinite(report.losses))


def test_model_dir_contents(model_dir):
    out, report = model_dir
    assert {p.name for p in out.iterdir()} == {"model.pt", "model.onnx", "config.json", "val_metrics.json"}
    config = json.loads((out / "config.json").read_text())
    assert config["classes"] == ["car", "pedestrian", "cyclist", "traffic_cone"]
    assert config["input"]["width"] == W and config["input"]["height"] == H
    assert config["training"]["n_images"] == 200 == report.n_images
    assert config["training"]["epochs_run"] == report.epochs_run >= 1
    assert 50_000 < report.n_params < 400_000


def test_onnx_matches_torch(model_dir, data_dir):
    out, _ = model_dir
    images = np.stack([np.asarray(Image.open(io.BytesIO(p))) for p in
                       pq.read_table(data_dir / "test.parquet").column("image_png").to_pylist()[:8]])
    onnx_det, torch_det = OnnxDetector(out), TorchDetector(out)
    for a, b in zip(onnx_det.raw(images), torch_det.raw(images), strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() < 1e-4
    # another batch size and an image size that needs padding run too
    odd = images[:3, :50, :70]
    for a, b in zip(onnx_det.raw(odd), torch_det.raw(odd), strict=True):
        assert np.abs(a - b).max() < 1e-4
    dets = onnx_det.detect(images)
    assert len(dets) == 8 and all(d.dtype == np.float32 and d.shape[1] == 6 for d in dets)
    assert max(len(d) for d in dets) > 0
    assert measure_latency(out, n=5) > 0


def test_fine_tune_starts_from_the_given_weights(model_dir, data_dir, tmp_path):
    out, report = model_dir
    short = PARAMS.model_copy(update={"epochs": 1})
    tuned = train_mod.train(data_dir, tmp_path / "tuned", params=short.model_copy(update={"init_from": str(out)}),
                            max_seconds=15)
    fresh = train_mod.train(data_dir, tmp_path / "fresh", params=short, max_seconds=15)
    # the warm start begins where the first run ended, far below a fresh network's first epoch
    assert tuned.losses[0] < fresh.losses[0] * 0.8, (tuned.losses, fresh.losses, report.losses)
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["params"]["init_from"] == str(out)
    assert json.loads((out / "config.json").read_text())["params"]["init_from"] is None  # default: fresh
    with pytest.raises(TrainingError, match=r"init_from: .*widths"):
        train_mod.train(data_dir, tmp_path / "bad", params=short.model_copy(update={"init_from": str(out),
                                                                                  "widths": (8, 16, 24, 32)}))
    with pytest.raises(TrainingError, match=r"init_from: no model\.pt"):
        train_mod.train(data_dir, tmp_path / "bad", params=short.model_copy(update={"init_from": str(tmp_path)}))


def test_predict_cli_writes_predictions(model_dir, data_dir, tmp_path):
    out, _ = model_dir
    dest = tmp_path / "predictions.parquet"
    run = subprocess.run([sys.executable, "-m", "fleetloop.train.reference.predict", "--model", str(out),
                          "--data", str(data_dir / "test.parquet"), "--out", str(dest)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    table = pq.read_table(dest)
    assert table.schema.equals(PREDICTIONS_SCHEMA)
    assert table.num_rows > 0
    assert set(table.column("cls").to_pylist()) <= {"car", "pedestrian", "cyclist", "traffic_cone"}
    torch_preds = predict_mod.predict(out, data_dir / "test.parquet", backend="torch")
    assert torch_preds.num_rows == table.num_rows


def test_runner_does_not_import_torch():
    code = ("import sys, fleetloop.train.reference.runner as r; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(r.OnnxDetector.__name__)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr


def test_decode_places_a_box():
    heat = np.zeros((1, 4, 8, 12), np.float32)
    heat[0, 2, 3, 5] = 0.9
    heat[0, 2, 3, 6] = 0.5  # a neighbour, not a peak
    size = np.zeros((1, 2, 8, 12), np.float32)
    size[0, :, 3, 5] = np.log([8.0, 4.0])
    offset = np.full((1, 2, 8, 12), 0.5, np.float32)
    (det,) = decode(heat, size, offset, 32, 48)
    np.testing.assert_allclose(det, [[18, 12, 26, 16, 0.9, 2]], atol=1e-5)
    assert to_input(np.zeros((2, 20, 30, 3), np.uint8)).shape == (2, 3, 32, 32)


def _cli_error(capsys, argv: list[str]) -> str:
    assert train_mod.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_input_is_one_clear_error(tmp_path, capsys):
    assert "split file not found" in _cli_error(capsys, ["--data", str(tmp_path), "--out", str(tmp_path / "m")])
    pq.write_table(PREPARED_SCHEMA.empty_table(), tmp_path / "train.parquet")
    assert "no frames" in _cli_error(capsys, ["--data", str(tmp_path), "--out", str(tmp_path / "m")])
    bad = _split(2, seed=5).set_column(2, "image_png", pa.array([b"not a png", b"x"], pa.binary()))
    pq.write_table(bad, tmp_path / "train.parquet")
    assert "undecodable image_png" in _cli_error(capsys, ["--data", str(tmp_path), "--out", str(tmp_path / "m")])
    (tmp_path / "p.json").write_text('{"epochz": 3}')
    assert "epochz" in _cli_error(capsys, ["--data", str(tmp_path), "--out", str(tmp_path / "m"),
                                            "--params", str(tmp_path / "p.json")])
    with pytest.raises(TrainingError, match=r"no config\.json"):
        predict_mod.predict(tmp_path, tmp_path / "train.parquet")


def test_cli_exit_code_on_missing_data(tmp_path):
    run = subprocess.run([sys.executable, "-m", "fleetloop.train.reference.train", "--data", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "m")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().startswith("error: split file not found") and run.stderr.count("\n") == 1
