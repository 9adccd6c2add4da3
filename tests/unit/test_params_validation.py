"""Params files at the boundary: every per-class value is checked like the scalar it overrides,
and a file that is not UTF-8, not YAML, or a params file without a ``mine:`` section gives one
line naming the file (``fleetloop mine --params``, ``FLEETLOOP_PARAMS``, ``mine calibrate``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from fleetloop.cli import app
from fleetloop.mine.params import Calibration, MiningParams
from fleetloop.params import ParamsError, load_params, mining_params

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
NAN, INF = float("nan"), float("inf")

BAD_MINING = [
    ({"lidar_class_thresholds": {"car": 7}}, "lidar_class_thresholds.car"),
    ({"lidar_class_thresholds": {"car": NAN}}, "lidar_class_thresholds.car"),
    ({"lidar_class_thresholds": {"car": -0.1}}, "lidar_class_thresholds.car"),
    ({"class_temporal_gate_m": {"car": -4}}, "class_temporal_gate_m.car"),
    ({"class_temporal_gate_m": {"car": 0}}, "class_temporal_gate_m.car"),
    ({"class_temporal_gate_m": {"car": NAN}}, "class_temporal_gate_m.car"),
    ({"class_temporal_gate_m": {"car": INF}}, "class_temporal_gate_m.car"),
    ({"class_heights_m": {"car": 0}}, "class_heights_m.car"),
    ({"class_heights_m": {"car": -1.5}}, "class_heights_m.car"),
    ({"class_heights_m": {"car": NAN}}, "class_heights_m.car"),
    ({"class_heights_m": {"car": INF}}, "class_heights_m.car"),
    ({"class_heights_m": {"unicorn": 1}}, "unicorn"),
    ({"class_association_iou": {"car": NAN}}, "class_association_iou.car"),
    ({"class_association_iou": {"car": 0}}, "class_association_iou.car"),
    ({"slice_boost": {"class=car": INF}}, "slice_boost"),
    ({"slice_boost": {"class=car": NAN}}, "slice_boost"),
    ({"height_ratio": (1.5, 0.67)}, "height_ratio"),
    ({"height_ratio": (0, 1.5)}, "height_ratio"),
    ({"height_ratio": (-1, 1.5)}, "height_ratio"),
    ({"height_ratio": (NAN, 1.5)}, "height_ratio"),
    ({"uncertainty_band": (0.99, 0.9)}, "uncertainty_band"),
    ({"class_severities": {"lidar_only": {"car": NAN}}}, "class_severities"),
    ({"severities": {"lidar_only": NAN}}, "severities.lidar_only"),
    ({"calibration": {"unexplained_per_object": {"car": -1}}}, "unexplained_per_object"),
    ({"calibration": {"unexplained_per_object": {"unicorn": 0.1}}}, "unicorn"),
    ({"calibration": {"unexplained_per_frame": INF}}, "unexplained_per_frame"),
]


@pytest.mark.parametrize(("values", "where"), BAD_MINING, ids=[w + "=" + repr(v) for v, w in BAD_MINING])
def test_per_class_and_paired_mining_values_are_checked(values, where) -> None:
    with pytest.raises(ValidationError, match=where.split(".")[-1]):
        MiningParams.model_validate(values)


def test_the_defaults_and_the_repository_params_stay_valid() -> None:
    MiningParams()
    Calibration()
    load_params(ROOT / "params.yaml")
    ok = MiningParams(class_heights_m={"car": 1.4, "traffic_cone": 0.5}, class_temporal_gate_m={"car": 3.0},
                      lidar_class_thresholds={"car": 0.5, "pedestrian": 1.0}, height_ratio=(1.0, 1.0))
    assert ok.class_heights_m["car"] == 1.4


@pytest.mark.parametrize(("values", "where"), BAD_MINING[:12])
def test_a_bad_per_class_value_in_a_params_file_names_the_file_and_field(tmp_path, values, where) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"mine": values}))  # .nan / .inf as YAML spells them
    with pytest.raises(ParamsError) as exc:
        mining_params(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and where.split(".")[0] in msg


@pytest.fixture
def binary(tmp_path) -> Path:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage\x80")
    return path


@pytest.fixture
def unclosed(tmp_path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("mine: [unclosed\n")
    return path


def test_a_params_file_that_is_not_utf8_is_a_params_error_naming_it(binary) -> None:
    for read in (load_params, mining_params):
        with pytest.raises(ParamsError, match="not UTF-8") as exc:
            read(binary)
        assert str(binary) in str(exc.value) and "\n" not in str(exc.value)


def test_a_yaml_syntax_error_is_one_line_with_file_line_column_and_problem(unclosed, tmp_path) -> None:
    for read in (load_params, mining_params):
        with pytest.raises(ParamsError) as exc:
            read(unclosed)
        msg = str(exc.value)
        assert "\n" not in msg
        assert msg.startswith(f"{unclosed}: line 2, column 1: not valid YAML")
        assert "expected ',' or ']'" in msg
    nul = tmp_path / "nul.yaml"
    nul.write_text("a: 1\x00\n")
    with pytest.raises(ParamsError) as exc:
        load_params(nul)
    assert "\n" not in str(exc.value) and str(nul) in str(exc.value)


def test_cli_params_file_errors_are_one_line(binary, unclosed, tmp_path, monkeypatch) -> None:
    """``mine --params`` (exit 2, before any log is read), ``mine calibrate --params-file`` and
    FLEETLOOP_PARAMS for the other commands: the module's error, no traceback, no parser picture."""
    import json

    for path in (binary, unclosed):
        res = runner.invoke(app, ["mine", str(tmp_path / "nologs"), "-o", str(tmp_path / "r.csv"), "--params", str(path)])
        assert res.exit_code == 2 and str(path) in res.output
        assert res.output.strip().count("\n") == 0, res.output
        assert "UnicodeDecodeError" not in res.output
        res = runner.invoke(app, ["mine", str(tmp_path / "nologs"), "--json", "--params", str(path)])
        doc = json.loads(res.stdout)
        assert res.exit_code == 2 and doc["ok"] is False and "\n" not in doc["error"] and str(path) in doc["error"]
        res = runner.invoke(app, ["mine", "calibrate", str(tmp_path / "nologs"), "--params-file", str(path), "--dry-run"])
        assert res.exit_code == 1 and str(path) in res.output and "UnicodeDecodeError" not in res.output
        assert res.output.strip().count("\n") == 0, res.output
        monkeypatch.setenv("FLEETLOOP_PARAMS", str(path))
        res = runner.invoke(app, ["dataset", "grow"])
        assert res.exit_code != 0 and str(path) in res.output and "UnicodeDecodeError" not in res.output
        assert res.output.strip().count("\n") == 0, res.output
        monkeypatch.delenv("FLEETLOOP_PARAMS")


def _without_mine(tmp_path) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    del data["mine"]
    path = tmp_path / "nomine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_params_file_without_a_mine_section_gives_the_default_mining_params(tmp_path, monkeypatch) -> None:
    """--params reads a params file as FLEETLOOP_PARAMS does: any of the loop's sections makes it
    one, and its mining params are its mine: section or the defaults."""
    nomine = _without_mine(tmp_path)
    assert mining_params(nomine) == MiningParams() == load_params(nomine).mine
    only_train = tmp_path / "train.yaml"
    only_train.write_text("train:\n  epochs: 3\n")
    assert mining_params(only_train) == MiningParams()
    with_mine = tmp_path / "with.yaml"
    with_mine.write_text("drift: {}\nmine:\n  cost_exponent: 1.0\n")
    assert mining_params(with_mine).cost_exponent == 1.0
    # a loop section that is wrong is as wrong through --params as through FLEETLOOP_PARAMS
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("promote:\n  slice_tolerance: -1\n")
    with pytest.raises(ParamsError, match=r"promote\.slice_tolerance"):
        mining_params(wrong)
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text("drift: {}\ncost_exponent: 1.0\n")
    with pytest.raises(ParamsError, match="cost_exponent"):
        mining_params(mixed)
    # mining params alone are still mining params
    bare = tmp_path / "bare.yaml"
    bare.write_text("cost_exponent: 1.0\ncamera_stream: null\n")
    assert mining_params(bare).cost_exponent == 1.0
    assert mining_params(tmp_path / "bare.yaml").camera_stream is None


def test_mine_cli_accepts_a_params_file_without_a_mine_section(tmp_path) -> None:
    nomine = _without_mine(tmp_path)
    res = runner.invoke(app, ["mine", str(tmp_path / "nologs"), "-o", str(tmp_path / "r.csv"), "--params", str(nomine)])
    assert res.exit_code == 1 and "does not exist" in res.output, res.output  # past the params: no logs there


@pytest.mark.parametrize(("text", "line", "key"), [
    ("mine:\n  budget: 5\ndrift:\n  threshold: 0.2\nmine:\n  budget: 10\n", 5, "mine"),  # a second section
    ("mine:\n  budget: 5\n  budget: 10\n", 3, "budget"),
])
def test_a_key_given_twice_is_a_params_error_naming_line_and_key(tmp_path, text, line, key) -> None:
    """Before: YAML kept the last one without a word (a second mine: section replaced the first)."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    for read in (load_params, mining_params):
        with pytest.raises(ParamsError, match=rf"params.yaml: line {line}, column \d+: not valid YAML .*key '{key}' "
                                              "is given twice"):
            read(path)


def test_a_merge_key_may_still_be_overridden(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("mine:\n  <<: {budget: 5, diversity_window: 3}\n  budget: 7\n")
    params = load_params(path)
    assert (params.mine.budget, params.mine.diversity_window) == (7, 3)  # the explicit key wins, as YAML says
