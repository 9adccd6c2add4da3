"""What a new registry version is registered with is checked at the write boundary (version
cards are create-only): impossible metrics and lineage are refused with one line, nothing is
written; cards stored before the checks still load; ``show`` says "unknown" for what is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fleetloop.cli import app
from fleetloop.registry import MetricsError, Registry, RegistryError
from fleetloop.registry.errors import InvalidRegistration
from fleetloop.registry.keys import Layout
from fleetloop.registry.models import Metrics, metric_value_problem
from fleetloop.settings import get_settings
from fleetloop.store.objects import LocalStore

runner = CliRunner()


def metrics(primary: float | None = 0.5, **overall: Any) -> dict[str, Any]:
    return {
        "primary": "map50",
        "overall": {"map50": primary, "support": 812, "frames": 300, **overall},
        "per_class": {"car": {"map50": 0.5, "support": 500}, "traffic_cone": {"map50": None, "support": 0}},
        "slices": {"weather=rain": {"map50": 0.4, "support": 120, "frames": 40}},
        "evaluated_by": "tests",
    }


def model_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.pt").write_bytes(b"weights")
    return root


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(LocalStore(tmp_path / "store"))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"overall": {"map50": 7.5, "support": 5}}, "overall: map50 is 7.5: it is a fraction, within [0, 1]"),
        ({"overall": {"map50": 0.5, "support": -5}}, "overall.support: a count cannot be negative, got -5"),
        ({"overall": {"map50": 0.5, "support": 5, "frames": -1}}, "overall.frames: a count cannot be negative"),
        ({"overall": {"map50": float("inf"), "support": 5}}, "map50 is inf: a metric value is a finite number"),
        ({"overall": {"map50": float("nan"), "support": 5}}, "map50 is nan"),
        ({"overall": {"map50": -0.1, "support": 5}}, "map50 is -0.1"),
        ({"overall": {"map50": 0.5, "ap50": 1.2, "support": 5}}, "ap50 is 1.2"),
        ({"overall": {"map50": 0.5, "recall": "high", "support": 5}}, "recall is 'high': a metric value is a number"),
        ({"overall": {"map50": 0.5, "loss": float("-inf"), "support": 5}}, "loss is -inf"),
        ({"primary": "nosuch"}, "primary metric 'nosuch' is not in overall (its metrics: map50)"),
        ({"slices": {"weather=rain": {"map50": 1.5, "support": 10}}}, "slices.weather=rain: map50 is 1.5"),
        ({"per_class": {"car": {"map50": 0.5, "support": -1}}}, "per_class.car.support: a count cannot be negative"),
    ],
)
def test_impossible_metrics_are_refused_and_nothing_is_written(reg: Registry, tmp_path: Path, bad, message) -> None:
    with pytest.raises(MetricsError) as err:
        reg.register(model_dir(tmp_path / "m"), {**metrics(), **bad})
    assert message in str(err.value) and "\n" not in str(err.value)
    assert reg.store.list("registry/") == []  # no blob, no card: nothing half-written
    assert reg.list() == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset_version": -3}, "dataset_version -3: Input should be greater than or equal to 1"),
        ({"dataset_version": 0}, "dataset_version 0"),
        ({"latency_ms": -5.0}, "latency_ms -5.0: Input should be greater than or equal to 0"),
        ({"latency_ms": float("inf")}, "latency_ms inf: Input should be a finite number"),
        ({"training_seconds": float("nan")}, "training_seconds nan: Input should be a finite number"),
        ({"training_seconds": -1.0}, "training_seconds -1.0"),
    ],
)
def test_impossible_lineage_is_refused_and_nothing_is_written(reg: Registry, tmp_path: Path, kwargs, message) -> None:
    with pytest.raises(InvalidRegistration) as err:
        reg.register(model_dir(tmp_path / "m"), metrics(), **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, RegistryError)
    assert reg.store.list("registry/") == []


def test_possible_values_are_accepted(reg: Registry, tmp_path: Path) -> None:
    ok = metrics(1.0, loss=12.5, fps=300, ap_small=0.0, note="kept")  # non-fraction metrics only finite
    ok["slices"]["time_of_day=night"] = {"map50": None, "support": 0, "frames": 0}  # nothing to measure: null
    v = reg.register(model_dir(tmp_path / "m"), ok, dataset_version=1, latency_ms=0.0, training_seconds=0.0,
                     code_revision="r")
    assert v.primary_value() == 1.0 and v.lineage.dataset_version == 1
    # a primary metric that is null (no ground truth evaluated) registers; the gate rejects it
    v2 = reg.register(model_dir(tmp_path / "m2"), metrics(None), code_revision="r")
    assert v2.primary_value() is None
    assert not reg.promote(v2.version).promoted


def test_the_checks_are_the_write_boundary_only() -> None:
    """Reading (an old card, the gate) stays lenient: only a context-checked registration refuses."""
    m = Metrics.model_validate({"primary": "nosuch", "overall": {"map50": 7.5, "support": -5}})
    assert m.overall.support == -5
    assert metric_value_problem("map50", 0.5) is None and metric_value_problem("latency", 1e6) is None
    assert metric_value_problem("precision", 1.01) is not None


def test_a_bad_card_stored_before_the_checks_still_lists_and_shows(reg: Registry, tmp_path: Path) -> None:
    good = reg.register(model_dir(tmp_path / "m"), metrics(), code_revision="r")
    old = json.loads(good.model_dump_json())
    old.update(version=2, latency_ms=-5.0)
    old["lineage"].update(dataset_version=-3, training_seconds=None, trainer=None)
    old["metrics"].update(primary="nosuch")
    old["metrics"]["overall"].update(map50=7.5, support=-5)
    assert reg.store.put_if_absent(Layout("camera").card(2), json.dumps(old).encode())
    assert [c.version for c in reg.list()] == [1, 2]
    assert reg.get(2).metrics.overall.support == -5


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("file_content", "options", "message"),
    [
        ('{"primary":"map50","overall":{"map50":7.5,"support":-5}}', [], "overall.support: a count cannot be negative"),
        ('{"primary":"map50","overall":{"map50":7.5,"support":5}}', [], "map50 is 7.5"),
        ('{"primary":"nosuch","overall":{"map50":0.5,"support":5}}', [], "primary metric 'nosuch' is not in overall"),
        ('{"primary":"map50","overall":{"map50":Infinity,"support":5}}', ["--json"], "map50 is inf"),
        ('{"primary":"map50","overall":{"map50":0.5,"support":5}}', ["--dataset", "-3"], "dataset_version -3"),
        ('{"primary":"map50","overall":{"map50":0.5,"support":5}}', ["--latency-ms", "-5"], "latency_ms -5.0"),
        ('{"primary":"map50","overall":{"map50":0.5,"support":5}}', ["--training-seconds", "nan"],
         "training_seconds nan"),
    ],
)
def test_cli_register_refuses_with_one_line_and_exit_2(home: Path, tmp_path: Path, file_content, options,
                                                       message) -> None:
    (tmp_path / "metrics.json").write_text(file_content)
    args = ["registry", "register", str(model_dir(tmp_path / "m")), "--metrics", str(tmp_path / "metrics.json")]
    result = runner.invoke(app, [*args, *options])
    assert result.exit_code == 2, result.output
    assert message in result.output
    if "--json" in options:
        doc = json.loads(result.stdout)  # valid JSON (no bare Infinity)
        assert doc["ok"] is False and message in doc["error"]
    listed = runner.invoke(app, ["registry", "list", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []


def test_show_says_unknown_for_unknown_lineage(home: Path, tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps(metrics()))
    mdir = str(model_dir(tmp_path / "m"))
    assert runner.invoke(app, ["registry", "register", mdir, "--metrics", str(tmp_path / "metrics.json")]).exit_code == 0
    assert runner.invoke(app, ["registry", "promote", "1"]).exit_code == 0
    out = runner.invoke(app, ["registry", "show", "production"]).output
    assert "None" not in out
    assert "trainer unknown" in out and "training unknown" in out and "dataset unknown" in out
    assert runner.invoke(app, ["registry", "register", mdir, "--metrics", str(tmp_path / "metrics.json"),
                               "--trainer", "tiny", "--training-seconds", "118.5", "--dataset", "3"]).exit_code == 0
    out = runner.invoke(app, ["registry", "show", "2"]).output
    assert "trainer tiny" in out and "training 118.5 s" in out and "dataset 3" in out
