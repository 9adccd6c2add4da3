"""The registry refuses what it cannot stand behind, with one line naming the problem:

- a version whose files were deleted from the store cannot become production (promote, or
  rollback to it): the missing file is named, exit 2, nothing recorded;
- a corrupt registry object (card, alias, history entry, decision, index page) is a registry
  error naming its key, exit 2 from the CLI;
- ``promote.primary`` must be a metric name, and a metric the candidate does not have at all is a
  params error (exit 2, nothing recorded); a null primary value is still a gate rejection;
- version refs are exactly ``N``, ``vN`` or an alias name (no `` 1``, ``01``, ``V1``, ``١``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fleetloop.registry import PromoteParams, Registry, VersionNotFound
from fleetloop.registry.errors import CorruptRecord, GateParamsError, MissingFiles
from fleetloop.store.objects import LocalStore

GATE = PromoteParams(floor=0.0)


def metrics(primary: float | None) -> dict[str, Any]:
    return {"primary": "map50", "overall": {"map50": primary, "support": 100, "frames": 10},
            "per_class": {}, "slices": {}}


def model_dir(root: Path, weights: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(weights)
    (root / "config.json").write_text('{"arch": "tiny"}')
    return root


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(LocalStore(tmp_path / "store"))


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from fleetloop.settings import get_settings

    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    monkeypatch.setenv("FLEETLOOP_STORAGE__LOCAL_ROOT", str(tmp_path / "store"))
    params = tmp_path / "params.yaml"
    params.write_text("promote: {floor: 0.0}\n")
    monkeypatch.setenv("FLEETLOOP_PARAMS", str(params))
    get_settings.cache_clear()
    from fleetloop.cli.registry import app

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, list(args))

    yield run
    get_settings.cache_clear()


def two_versions(reg: Registry, tmp_path: Path) -> None:
    reg.register(model_dir(tmp_path / "m1", b"one"), metrics(0.5))
    reg.register(model_dir(tmp_path / "m2", b"two"), metrics(0.6))


# ------------------------------------------------------------------ 2. missing blobs


def test_promote_refuses_a_version_whose_files_are_gone(reg: Registry, tmp_path: Path, cli) -> None:
    two_versions(reg, tmp_path)
    assert reg.promote(1, GATE).promoted
    gone = reg.layout.blob(reg.get(2).files["model.onnx"])
    reg.store.delete(gone)
    history = reg.history()
    with pytest.raises(MissingFiles, match=f"version 2 .* its file model.onnx \\({gone}\\) is missing"):
        reg.promote(2, GATE)
    r = cli("promote", "2", "--json")
    assert r.exit_code == 2 and "model.onnx" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
    assert reg.get("production").version == 1 and reg.decisions(2) == [] and reg.history() == history


def test_rollback_refuses_a_target_whose_files_are_gone(reg: Registry, tmp_path: Path, cli) -> None:
    two_versions(reg, tmp_path)
    assert reg.promote(1, GATE).promoted and reg.promote(2, GATE).promoted
    reg.store.delete(reg.layout.blob(reg.get(1).files["config.json"]))
    history = reg.history()
    r = cli("rollback", "--json")
    assert r.exit_code == 2 and "version 1" in r.stderr and "config.json" in r.stderr, r.output
    assert reg.get("production").version == 2 and reg.decisions(1)[-1].action == "promote"
    assert reg.history() == history


# ------------------------------------------------------------------ 3. corrupt objects


@pytest.mark.parametrize(
    ("key", "body", "call", "kind"),
    [
        ("versions/00000002.json", b'{"model": "camera", "version": 2,\n\x00', lambda r: r.get(2), "version card"),
        ("aliases/production.json", b"garbage", lambda r: r.aliases(), "alias record"),
        ("aliases/production.json", b'{"alias": "production"}', lambda r: r.get("production"), "alias record"),
        ("index/000000.json", b'{"page": 0, "cards": {"1": {', lambda r: r.register(
            model_dir(Path(r.store.root).parent / "m3", b"three"), metrics(0.7)), "index page"),
        ("index/000000.json", b'{"page": 0, "cards": {"1": {', lambda r: r.list(), "index page"),
        ("history/00000001.json", b"{", lambda r: r.history(), "history entry"),
        ("versions/00000001/decision-0001.json", b"[]", lambda r: r.decisions(1), "decision"),
    ],
)
def test_a_corrupt_object_is_named(reg: Registry, tmp_path: Path, key: str, body: bytes, call, kind: str) -> None:
    two_versions(reg, tmp_path)
    reg.promote(1, GATE)
    full = f"registry/camera/{key}"
    assert reg.store.exists(full)
    reg.store.put_bytes(full, body)
    with pytest.raises(CorruptRecord) as err:
        call(reg)
    assert str(err.value).startswith(f"{full} is not a valid {kind}: "), err.value
    assert "\n" not in str(err.value)


def test_the_cli_names_the_corrupt_object_and_exits_2(reg: Registry, tmp_path: Path, cli) -> None:
    two_versions(reg, tmp_path)
    reg.promote(1, GATE)
    reg.store.put_bytes("registry/camera/aliases/production.json", b"garbage")
    reg.store.put_bytes("registry/camera/versions/00000002.json", b'{"model": "camera",\n\x00')
    for args, key in ((("show", "production"), "aliases/production.json"), (("show", "2", "--json"), "versions/00000002.json"),
                      (("promote", "1"), "aliases/production.json")):
        r = cli(*args)
        assert r.exit_code == 2, r.output
        assert f"registry/camera/{key} is not a valid" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ 4. the primary metric


@pytest.mark.parametrize("primary", ["", " ", "map 50"])
def test_primary_must_be_a_metric_name(primary: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="is not a metric name"):
        PromoteParams(primary=primary)


def test_a_primary_metric_the_candidate_lacks_is_a_params_error_not_a_rejection(reg: Registry, tmp_path: Path,
                                                                              cli) -> None:
    two_versions(reg, tmp_path)
    with pytest.raises(GateParamsError, match=r"promote\.primary is 'nosuchmetric'.*they have: map50"):
        reg.promote(1, PromoteParams(primary="nosuchmetric", floor=0.0))
    (tmp_path / "p.yaml").write_text("promote: {primary: nosuchmetric}\n")
    r = cli("promote", "2", "--params-file", str(tmp_path / "p.yaml"), "--json")
    assert r.exit_code == 2 and "nosuchmetric" in json.loads(r.stdout)["error"], r.output
    assert reg.decisions(1) == [] and reg.decisions(2) == [] and reg.history() == []


def test_a_null_primary_value_is_still_rejected_by_the_gate(reg: Registry, tmp_path: Path) -> None:
    reg.register(model_dir(tmp_path / "m", b"w"), metrics(None))
    d = reg.promote(1, GATE)
    assert d.action == "reject" and not d.promoted and len(reg.decisions(1)) == 1


# ------------------------------------------------------------------ 6. version refs


@pytest.mark.parametrize("ref", [" 1", "1 ", "01", "V1", "v01", "١", "+1", "0", "v", "1_0", "²"])
def test_only_n_vn_and_aliases_are_version_refs(reg: Registry, tmp_path: Path, ref: str, cli) -> None:
    two_versions(reg, tmp_path)
    with pytest.raises(VersionNotFound, match="is not a version number"):
        reg.get(ref)
    r = cli("show", ref)
    assert r.exit_code == 2 and "is not a version number" in r.stderr, r.output


@pytest.mark.parametrize(("ref", "version"), [("1", 1), ("v2", 2), (2, 2)])
def test_n_and_vn_resolve(reg: Registry, tmp_path: Path, ref, version: int) -> None:
    two_versions(reg, tmp_path)
    assert reg.get(ref).version == version
