"""``fleetloop registry`` used by hand, second review: a model name with a trailing newline, ``show``
of a version whose files left the store, and a ``promote:`` primary metric the slices do not report
(or that is text): each is refused or named, never silently gated away or recorded as a rejection.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleetloop.registry import PromoteParams, Registry
from fleetloop.registry.errors import GateParamsError
from fleetloop.registry.gate import decide
from fleetloop.store.objects import LocalStore
from tests.unit.test_registry_misuse import model_dir, registry_cli, registry_fixture  # noqa: F401 (fixtures cli, reg)

GATE = PromoteParams(floor=0.0)
BASE = "registry/camera/"


def metrics(primary: float | None, rain: float | None = None) -> dict[str, Any]:
    return {"primary": "map50", "overall": {"map50": primary, "support": 100, "frames": 10},
            "per_class": {}, "slices": {"weather=rain": {"map50": primary if rain is None else rain, "support": 50}}}


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ------------------------------------------------------------------ --model


@pytest.mark.parametrize("name", ["camera\n", "cam\n"])
def test_a_model_name_with_a_trailing_newline_is_refused(tmp_path: Path, cli, name: str) -> None:
    """``^...$`` with ``re.match`` let "cam\\n" through: it registered a version under a
    ``registry/cam\\n/`` directory, and ``list --model 'camera\\n'`` listed nothing, exit 0."""
    (tmp_path / "metrics.json").write_text(json.dumps(metrics(0.5)))
    r = cli("register", str(model_dir(tmp_path / "m", b"w")), "--metrics", str(tmp_path / "metrics.json"),
            "--model", name, "--json")
    assert r.exit_code == 2, r.output
    assert json.loads(r.stdout)["error"].startswith("invalid model name")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.json"))
    r = cli("list", "--model", name, "--json")
    assert r.exit_code == 2 and json.loads(r.stdout)["ok"] is False, r.output
    with pytest.raises(ValueError, match="invalid model name"):
        Registry(LocalStore(tmp_path / "store"), model=name)


# ------------------------------------------------------------------ show: files gone from the store


def test_show_names_the_files_missing_from_the_store(reg: Registry, tmp_path: Path, cli) -> None:
    """It showed the version as whole (exit 0) while promote and rollback refuse it."""
    reg.register(model_dir(tmp_path / "m", b"w"), metrics(0.5))
    gone = reg.layout.blob(reg.get(1).files["model.onnx"])
    reg.store.delete(gone)
    r = cli("show", "1", "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["version"] == 1 and list(doc["problems"]) == [gone]
    assert gone in doc["error"] and "model.onnx" in doc["error"]
    assert one_line(r.stderr).startswith(f"damaged: {gone} is missing: version 1's file model.onnx")
    r = cli("show", "1")
    assert r.exit_code == 1, r.output
    assert "model.onnx" in r.stdout and "missing from the store" in r.stdout
    assert "config.json" in r.stdout and r.stdout.count("missing from the store") == 1
    assert cli("show", "1", "--json").exit_code == 1  # read only: nothing was repaired or moved


def test_show_prints_file_names_as_they_are(reg: Registry, tmp_path: Path, cli) -> None:
    """A file name was read as rich markup: ``[bold]x.bin`` was shown as ``x.bin``."""
    mdir = model_dir(tmp_path / "m", b"w")
    (mdir / "[bold]x.bin").write_bytes(b"x")
    reg.register(mdir, metrics(0.5))
    r = cli("show", "1")
    assert r.exit_code == 0, r.output
    assert "[bold]x.bin" in r.stdout


# ------------------------------------------------------------------ promote: a primary metric the gate cannot read


def slices_only_map50(overall: float, rain: float) -> dict[str, Any]:
    return {"primary": "map50", "overall": {"map50": overall, "map": overall, "support": 100},
            "per_class": {"car": {"map50": rain, "support": 80}},
            "slices": {"weather=rain": {"map50": rain, "support": 50}}}


def test_a_primary_metric_the_slices_lack_is_a_params_error_not_an_ungated_promotion(
        reg: Registry, tmp_path: Path, cli) -> None:
    """``promote.primary: map`` is in overall but no slice reports it: every slice was "not gated:
    no value (no objects)" (with 50 and 80 objects), and v2 was promoted over a rain drop of 0.4."""
    reg.register(model_dir(tmp_path / "m1", b"one"), slices_only_map50(0.4, 0.6))
    reg.register(model_dir(tmp_path / "m2", b"two"), slices_only_map50(0.5, 0.2))
    assert reg.promote(1, GATE).promoted
    (tmp_path / "p.yaml").write_text("promote: {floor: 0.0, primary: map}\n")
    r = cli("promote", "2", "--params-file", str(tmp_path / "p.yaml"), "--json")
    assert r.exit_code == 2, r.output
    error = json.loads(r.stdout)["error"]
    assert "promote.primary is 'map'" in error and "slice" in error and "map50" in error, error
    assert error in one_line(r.stderr)
    assert reg.get("production").version == 1 and reg.decisions(2) == []
    assert [m.to_version for m in reg.history()] == [1]
    with pytest.raises(GateParamsError, match=r"no map in slice weather=rain \(they have: map50\)"):
        reg.promote(2, PromoteParams(primary="map", floor=0.0))


def test_a_primary_metric_that_is_text_is_a_params_error_not_a_recorded_rejection(
        reg: Registry, tmp_path: Path, cli) -> None:
    """Text under a non-fraction metric is kept at register; gating on it rejected the version,
    recorded, as "candidate has no overall fps" (it has one: 'fast')."""
    m = metrics(0.5)
    m["overall"]["fps"] = "fast"
    reg.register(model_dir(tmp_path / "m", b"w"), m)
    (tmp_path / "p.yaml").write_text("promote: {floor: 0.0, primary: fps}\n")
    r = cli("promote", "1", "--params-file", str(tmp_path / "p.yaml"), "--json")
    assert r.exit_code == 2, r.output
    error = json.loads(r.stdout)["error"]
    assert "overall fps is 'fast', not a number" in error, error
    assert reg.decisions(1) == [] and reg.history() == []


def test_the_gate_says_which_side_lacks_the_metric_in_a_slice() -> None:
    """A production card whose slice lacks the metric was "no value (no objects)" with 120 objects."""
    prod = {"overall": {"map50": 0.4}, "slices": {"weather=rain": {"ap": 0.4, "support": 120}}}
    cand = {"overall": {"map50": 0.5}, "slices": {"weather=rain": {"map50": 0.1, "support": 120}}}
    row = decide(cand, prod, GATE).details["slices"]["weather=rain"]
    assert not row["gated"] and row["note"] == "no map50 in production"
    row = decide(prod, cand, GATE).details["slices"]["weather=rain"]
    assert row["note"] == "no map50 in candidate"
    null = {"overall": {"map50": 0.5}, "slices": {"weather=rain": {"map50": None, "support": 0}}}
    assert decide(null, cand, GATE).details["slices"]["weather=rain"]["note"] == "no value (no objects)"


# ------------------------------------------------------------------ free text is printed as it is, never as markup


def test_who_why_and_slice_names_are_printed_as_written(reg: Registry, tmp_path: Path, cli) -> None:
    """``--why "night FPs [/]"`` made every later ``history`` and ``show`` of the version fail
    ("fleetloop: MarkupError: closing tag '[/]' ... has nothing to close", exit 1), and
    ``--who "[bold]alice"`` was shown as "alice"."""
    m = metrics(0.5)
    m["slices"]["attr=[bold]wet"] = {"map50": 0.5, "support": 30}
    reg.register(model_dir(tmp_path / "m1", b"one"), metrics(0.4))
    reg.register(model_dir(tmp_path / "m2", b"two"), m)
    assert cli("promote", "1", "--who", "[bold]alice", "--why", "weekly [/] retrain").exit_code == 0
    r = cli("promote", "2")
    assert r.exit_code == 0 and "attr=[bold]wet" in r.stdout, r.output
    r = cli("rollback", "--who", "bob[/]", "--why", "night FPs [/]")
    assert r.exit_code == 0, r.output
    r = cli("history")
    assert r.exit_code == 0, r.output
    for text in ("[bold]alice", "weekly [/] retrain", "bob[/]", "night FPs [/]"):
        assert text in r.stdout, text
    r = cli("show", "1")
    assert r.exit_code == 0, r.output
    assert "rollback by bob[/]" in r.stdout and "production 2 → 1: night FPs [/]" in r.stdout
    r = cli("show", "2")
    assert r.exit_code == 0 and "attr=[bold]wet" in r.stdout, r.output


def test_a_slice_too_small_to_be_gated_may_lack_the_primary_metric(reg: Registry, tmp_path: Path) -> None:
    """Only the slices the gate would compare must report it: a class with no objects may have no value."""
    for i, score in enumerate((0.4, 0.5), start=1):
        m = metrics(score)
        m["per_class"] = {"traffic_cone": {"support": 0}}
        reg.register(model_dir(tmp_path / f"m{i}", f"w{i}".encode()), m)
        assert reg.promote(i, GATE).promoted
    m = metrics(0.6)
    m["per_class"] = {"traffic_cone": {"support": 25}}
    reg.register(model_dir(tmp_path / "m3", b"w3"), m)
    with pytest.raises(GateParamsError, match=r"no map50 in slice class=traffic_cone \(they have: none\)"):
        reg.promote(3, GATE)


def test_a_blob_digest_with_a_trailing_newline_is_no_digest() -> None:
    """A card edited by hand naming ``<hex>\\n``: "$" let it through to a store key with a newline."""
    from fleetloop.registry.keys import Layout

    layout = Layout("camera")
    assert layout.blob("a" * 64).endswith("/blobs/sha256/" + "a" * 64)
    with pytest.raises(ValueError, match="not a sha256 hex digest"):
        layout.blob("a" * 64 + "\n")
