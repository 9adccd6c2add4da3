"""The documented layout matches the code: store prefixes, params.yaml, the package tree."""

from __future__ import annotations

from pathlib import Path

import yaml

from fleetloop.params import LoopParams, load_params
from fleetloop.store.keys import LAYOUT

ROOT = Path(__file__).resolve().parents[2]


def test_docs_store_lists_every_prefix() -> None:
    doc = (ROOT / "docs" / "store.md").read_text()
    for prefix, (writer, readers, _what) in LAYOUT.items():
        assert f"| `{prefix}` | {writer} | {readers} |" in doc, f"docs/store.md is stale for {prefix}"


def test_params_yaml_loads_and_spells_out_every_default() -> None:
    # the code's defaults, but for the camera stream the yardstick's stack judges (PointRCNN + YOLOX-SORT)
    loop = load_params(ROOT / "params.yaml")
    assert loop.mine.camera_stream == "yolox_sort"
    assert loop.model_copy(update={"mine": loop.mine.model_copy(update={"camera_stream": None})}) == LoopParams(), \
        "params.yaml differs from the code's defaults"
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(data) == {"mine", "drift", "grow", "train", "promote"}
    for section, model in LoopParams.model_fields.items():
        assert set(data[section]) == set(model.annotation.model_fields), f"params.yaml {section}: keys differ"


def test_params_errors_are_one_line(tmp_path) -> None:
    import pytest

    from fleetloop.params import ParamsError

    bad = tmp_path / "params.yaml"
    bad.write_text("promote:\n  slice_tolerance: -1\n")
    with pytest.raises(ParamsError, match=r"promote.slice_tolerance"):
        load_params(bad)
    bad.write_text("grow: {splits: {train: 0.5, val: 0.1}}\n")
    with pytest.raises(ParamsError, match="splits"):
        load_params(bad)
    bad.write_text(": : :\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_write_params_keeps_the_opening_comments_and_never_leaves_a_half_file(tmp_path, monkeypatch) -> None:
    import os

    import pytest

    from fleetloop.params import ParamsError, write_params

    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text())
    before = target.read_text()
    loop = load_params(target)
    changed = loop.model_copy(update={"promote": loop.promote.model_copy(update={"floor": 0.25})})
    write_params(target, changed)
    text = target.read_text()
    head = [line for line in before.splitlines() if line.startswith("#")]
    assert head and text.splitlines()[: len(head)] == head, "the opening comments are kept"
    assert load_params(target) == changed and yaml.safe_load(text)["mine"] == yaml.safe_load(before)["mine"]

    def no_rename(*_a: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(ParamsError, match=r"params\.yaml: cannot write: .*No space left"):
        write_params(target, loop)
    assert target.read_text() == text and [p.name for p in tmp_path.iterdir()] == ["params.yaml"]
    with pytest.raises(ParamsError, match="cannot write"):
        write_params(tmp_path / "missing" / "params.yaml", loop)


def test_readme_layout_names_the_packages_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    packages = sorted(p.name for p in (ROOT / "fleetloop").iterdir() if (p / "__init__.py").is_file())
    for name in packages:
        assert f"{name}/" in layout, f"README's layout section does not mention fleetloop/{name}/"
