"""The reference trainer, predictor and scorer misused: bad input is one ``error: ...`` line (or an
argparse usage error for a bad flag) and costs nothing, never a traceback; what succeeded is kept."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from fleetloop.train.metrics import PREDICTIONS_SCHEMA, PREPARED_SCHEMA, evaluate  # noqa: E402
from fleetloop.train.reference import predict as predict_mod  # noqa: E402
from fleetloop.train.reference import train as train_mod  # noqa: E402
from fleetloop.train.reference.model import CenterNet, ModelConfig  # noqa: E402
from fleetloop.train.reference.synthetic import synthetic_split  # noqa: E402

BOXES = PREPARED_SCHEMA.field("boxes").type
FAST = {"export_onnx": False, "threads": 1, "batch_size": 4, "warmup_steps": 1, "epochs": 1}


def _box(cls: str = "car", x1: float | None = 2.0, y1: float | None = 2.0, x2: float | None = 14.0,
         y2: float | None = 12.0, attr: str | None = None) -> dict:
    return {"cls": cls, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "attr": attr}


def _frames(n: int = 3, boxes: list[list[dict]] | None = None, seed: int = 0) -> pa.Table:
    t = synthetic_split(n, seed=seed, width=32, height=32)
    return t if boxes is None else t.set_column(7, "boxes", pa.array(boxes, BOXES))


def _data(tmp_path: Path, **splits: pa.Table) -> Path:
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    for name, table in splits.items():
        pq.write_table(table, d / f"{name}.parquet")
    return d


def _params(tmp_path: Path, **extra: object) -> Path:
    f = tmp_path / "params.json"
    f.write_text(json.dumps({**FAST, **extra}))
    return f


def _train(capsys, tmp_path: Path, data: Path, out: Path, *extra: str, **params: object) -> tuple[int, str, str]:
    rc = train_mod.main(["--data", str(data), "--out", str(out), "--params", str(_params(tmp_path, **params)), *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err.strip()


def _one_line_error(rc: int, err: str) -> str:
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, (rc, err)
    return err


def _untrained_model(model_dir: Path, config: ModelConfig | None = None) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = CenterNet(config)
    torch.save(net.state_dict(), model_dir / "model.pt")
    (model_dir / "config.json").write_text(json.dumps({
        "model": net.config.to_json(), "input": {"width": 32, "height": 32}}))
    return model_dir


# --------------------------------------------------------------------------------------------
# train


def test_a_val_split_without_ground_truth_keeps_the_model(tmp_path, capsys):
    """Before: the closing log line formatted ``val_map50=None`` and raised TypeError after the
    model was written (val frames that are all negatives, or boxes of other classes)."""
    data = _data(tmp_path, train=_frames(3), val=_frames(2, [[], [_box("tractor")]], seed=1))
    rc, out, err = _train(capsys, tmp_path, data, tmp_path / "m")
    assert rc == 0, err
    assert "val map50 n/a (no ground truth) on 2 frames" in out
    assert json.loads((tmp_path / "m" / "config.json").read_text())["training"]["val_map50"] is None


def test_boxes_outside_the_frame_or_without_area_are_skipped_and_counted(tmp_path, capsys):
    """Before: a box beyond the frame (or flipped beyond it) indexed outside the heatmap
    (IndexError), a NaN/inf/null coordinate raised ValueError/OverflowError while building targets."""
    bad = [_box(x1=40, y1=40, x2=60, y2=60), _box(x1=-30, y1=-30, x2=-5, y2=-2), _box(x1=math.nan),
           _box(x2=math.inf), _box(y1=None), _box(x2=2.0), _box(x1=20.0, x2=4.0)]
    partly = _box(x1=-6.0, y1=20.0, x2=10.0, y2=40.0)  # clipped to the 32x32 frame, kept
    data = _data(tmp_path, train=_frames(2, [[_box(), *bad], [partly]]))
    report = train_mod.train(data, tmp_path / "m", params=train_mod.load_params(_params(tmp_path)))
    assert report.n_objects == 2 and report.skipped_boxes == len(bad)
    assert all(np.isfinite(report.losses))


def test_a_train_split_without_any_usable_box_is_an_error(tmp_path, capsys):
    """Before: a train split with no box of the model's classes (all negatives, other class
    names, degenerate boxes) trained a detector of nothing and exited 0."""
    data = _data(tmp_path, train=_frames(2, [[_box("Car")], []]))
    err = _one_line_error(*_train(capsys, tmp_path, data, tmp_path / "m")[::2])
    assert "train.parquet: no box of the classes car" in err and "1 boxes skipped" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("flag", "value", "field"), [
    ("seed", -1, "seed"), ("seed", 2**70, "seed"), ("threads", 0, "threads"), ("lr", "nan", "lr"),
    ("lr", -0.1, "lr"), ("max_seconds", "nan", "max_seconds"), ("max_seconds", -1, "max_seconds"),
    ("widths", [0, 8, 8, 8], "widths.0"), ("head", 0, "head"), ("warmup_steps", -5, "warmup_steps"),
])
def test_bad_training_parameters_are_one_line_naming_the_field(tmp_path, capsys, flag, value, field):
    """Before: negative/huge seeds, threads 0, a NaN or negative lr, zero widths raised from numpy
    or torch (tracebacks); a NaN or negative time budget was silently ignored or ran one batch."""
    data = _data(tmp_path, train=_frames(2))
    value = float(value) if value == "nan" else value
    params = tmp_path / "p.json"
    params.write_text(json.dumps({**FAST, flag: value}, allow_nan=True))
    rc = train_mod.main(["--data", str(data), "--out", str(tmp_path / "m"), "--params", str(params)])
    err = _one_line_error(rc, capsys.readouterr().err.strip())
    assert f"bad training parameter {field}:" in err


def test_out_that_is_a_file_fails_before_training(tmp_path, capsys):
    """Before: the whole training ran, then ``mkdir`` raised FileExistsError (a traceback)."""
    data = _data(tmp_path, train=_frames(2))
    (tmp_path / "m").write_text("keep me")
    rc, out, err = _train(capsys, tmp_path, data, tmp_path / "m")
    assert "is a file, not a model directory" in _one_line_error(rc, err)
    assert "epoch" not in out and (tmp_path / "m").read_text() == "keep me"


def test_init_from_weights_that_do_not_load_is_one_line(tmp_path, capsys):
    """Before: a corrupt model.pt (UnpicklingError, EOFError), one of another architecture under a
    matching config.json (RuntimeError) or a config.json with too few widths (IndexError) were
    tracebacks."""
    data = _data(tmp_path, train=_frames(2))
    init = _untrained_model(tmp_path / "init")
    small = _untrained_model(tmp_path / "small", ModelConfig(widths=(8, 8, 8, 8), head=8))
    (init / "model.pt").write_bytes((small / "model.pt").read_bytes())
    err = _one_line_error(*_train(capsys, tmp_path, data, tmp_path / "m", "--init-from", str(init))[::2])
    assert "init_from: cannot load" in err and "size mismatch" in err
    for junk in (b"", b"not a checkpoint"):
        (init / "model.pt").write_bytes(junk)
        err = _one_line_error(*_train(capsys, tmp_path, data, tmp_path / "m", "--init-from", str(init))[::2])
        assert "init_from: cannot load" in err
    (init / "config.json").write_text('{"model": {"widths": [16]}}')
    err = _one_line_error(*_train(capsys, tmp_path, data, tmp_path / "m", "--init-from", str(init))[::2])
    assert "init_from: cannot read" in err
    assert not (tmp_path / "m").exists()


def test_init_from_a_path_that_is_not_a_directory_is_refused(tmp_path, capsys):
    """Before: ``--init-from model.pt`` or a mistyped folder silently trained from scratch."""
    data = _data(tmp_path, train=_frames(2))
    init = _untrained_model(tmp_path / "init")
    for wrong in (init / "model.pt", tmp_path / "inti"):
        with pytest.raises(SystemExit) as exc:
            _train(capsys, tmp_path, data, tmp_path / "m", "--init-from", str(wrong))
        assert exc.value.code == 2
        assert "--init-from" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_a_rerun_into_the_same_folder_leaves_no_stale_outputs(tmp_path, capsys):
    """Before: model.onnx and val_metrics.json of an earlier run stayed beside the new model.pt,
    and predict's ``auto`` backend ran the old model.onnx."""
    data = _data(tmp_path, train=_frames(2))
    out = tmp_path / "m"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"an older model")
    (out / "val_metrics.json").write_text("{}")
    rc, _, err = _train(capsys, tmp_path, data, out)
    assert rc == 0, err
    assert {p.name for p in out.iterdir()} == {"model.pt", "config.json"}


# --------------------------------------------------------------------------------------------
# predict


def _predict(capsys, model: Path, data: Path, out: Path, *extra: str) -> tuple[int, str]:
    rc = predict_mod.main(["--model", str(model), "--data", str(data), "--out", str(out), *extra])
    return rc, capsys.readouterr().err.strip()


def test_predict_with_unloadable_model_files_is_one_line(tmp_path, capsys):
    """Before: a corrupt model.onnx (InvalidProtobuf), model.pt (struct.error) or config.json
    (JSONDecodeError, KeyError) were tracebacks."""
    data = _data(tmp_path, test=_frames(2)) / "test.parquet"
    model = _untrained_model(tmp_path / "model")
    (model / "model.onnx").write_bytes(b"junk")
    assert "model.onnx" in _one_line_error(*_predict(capsys, model, data, tmp_path / "p.parquet"))
    (model / "model.onnx").unlink()
    (model / "model.pt").write_bytes(b"junk")
    assert "cannot load the model" in _one_line_error(*_predict(capsys, model, data, tmp_path / "p.parquet"))
    for config in ("{", "{}"):
        (model / "config.json").write_text(config)
        assert "cannot load the model" in _one_line_error(*_predict(capsys, model, data, tmp_path / "p.parquet"))
    assert not (tmp_path / "p.parquet").exists()


@pytest.mark.parametrize("extra", [["--batch-size", "0"], ["--batch-size", "-1"], ["--score-threshold", "nan"],
                                   ["--score-threshold", "2"]])
def test_predict_bad_flags_are_usage_errors(tmp_path, capsys, extra):
    """Before: batch size 0 or below raised ValueError from range()/numpy; a NaN threshold
    silently wrote no detections at all."""
    data = _data(tmp_path, test=_frames(2)) / "test.parquet"
    model = _untrained_model(tmp_path / "model")
    with pytest.raises(SystemExit) as exc:
        _predict(capsys, model, data, tmp_path / "p.parquet", *extra)
    assert exc.value.code == 2 and extra[0] in capsys.readouterr().err
    with pytest.raises(predict_mod.TrainingError):
        predict_mod.predict(model, data, batch_size=0)


def test_predict_out_that_is_a_directory_is_one_line(tmp_path, capsys):
    """Before: pyarrow's IsADirectoryError (a traceback) after all frames were predicted."""
    data = _data(tmp_path, test=_frames(2)) / "test.parquet"
    model = _untrained_model(tmp_path / "model")
    assert "is a directory" in _one_line_error(*_predict(capsys, model, data, tmp_path, "--backend", "torch"))
    assert "cannot write" in _one_line_error(*_predict(capsys, model, data, data / "p.parquet", "--backend", "torch"))


# --------------------------------------------------------------------------------------------
# metrics


def _pred(frames: pa.Table, **kw: object) -> pa.Table:
    row = {"log_id": frames["log_id"][0].as_py(), "frame": frames["frame"][0].as_py(), "cls": "car", "score": 0.9,
           "x1": 2.0, "y1": 2.0, "x2": 14.0, "y2": 12.0, **kw}
    return pa.Table.from_pylist([row], schema=PREDICTIONS_SCHEMA)


@pytest.mark.parametrize("field", ["score", "x1", "frame", "log_id"])
def test_predictions_with_nulls_name_the_column(field):
    """Before: a team's predictor writing a null score/coordinate/frame made evaluate raise
    TypeError (``bad operand type for unary -``), which the evaluate stage printed as is."""
    frames = _frames(2)
    with pytest.raises(ValueError, match=f"predictions: null values in {field} \\(1 rows\\)"):
        evaluate(frames, _pred(frames, **{field: None}))


def test_predictions_missing_a_column_name_it():
    frames = _frames(2)
    with pytest.raises(ValueError, match="missing column\\(s\\) score"):
        evaluate(frames, _pred(frames).drop_columns(["score"]))


def test_ground_truth_without_area_is_not_scored():
    """Before: a NaN ground-truth box was matched by any prediction (AP 1.0 from a corrupt
    label), a null coordinate raised TypeError, and a box with negative size counted in
    ``support`` while COCO ignored it (support 1, map50 null)."""
    for bad in (_box(x1=math.nan), _box(x1=None), _box(x1=20.0, x2=4.0), _box(x2=2.0)):
        frames = _frames(2, [[bad], []])
        m = evaluate(frames, _pred(frames))
        assert m.overall.support == 0 and m.overall.map50 is None, (bad, m.overall)
    frames = _frames(2, [[_box(), _box(x1=math.nan)], []])
    m = evaluate(frames, _pred(frames))
    assert m.overall.support == 1 and m.overall.map50 == pytest.approx(1.0)
