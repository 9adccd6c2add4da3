"""``fleetloop registry`` misused as a demanding ML engineer would: every error is one line
(``--json``: ``{"ok": false, "error"}``), exit 2 when nothing was done; a damaged registry object
written by hand is named, and ``list``, ``show`` and ``history`` print what they can still read
around it (exit 1); nothing is half-written.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fleetloop.registry import MetricsError, PromoteParams, Registry
from fleetloop.registry.errors import CorruptRecord
from fleetloop.store.objects import LocalStore

GATE = PromoteParams(floor=0.0)
BASE = "registry/camera/"


def metrics(primary: float | None) -> dict[str, Any]:
    return {"primary": "map50", "overall": {"map50": primary, "support": 100, "frames": 10},
            "per_class": {}, "slices": {"weather=rain": {"map50": primary, "support": 50}}}


def model_dir(root: Path, weights: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(weights)
    (root / "config.json").write_text('{"arch": "tiny"}')
    return root


@pytest.fixture(name="reg")
def registry_fixture(tmp_path: Path) -> Registry:
    """A registry in a local store under ``tmp_path`` (fixture ``reg``)."""
    return Registry(LocalStore(tmp_path / "store"))


@pytest.fixture(name="cli")
def registry_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``fleetloop registry ARGS`` in this process on that store, ``promote: {floor: 0.0}`` (fixture ``cli``)."""
    from fleetloop.settings import get_settings

    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    monkeypatch.setenv("FLEETLOOP_STORAGE__LOCAL_ROOT", str(tmp_path / "store"))
    monkeypatch.setenv("COLUMNS", "200")
    params = tmp_path / "params.yaml"
    params.write_text("promote: {floor: 0.0}\n")
    monkeypatch.setenv("FLEETLOOP_PARAMS", str(params))
    get_settings.cache_clear()
    from fleetloop.cli import app

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, ["registry", *args])

    yield run
    get_settings.cache_clear()


def three_promoted(reg: Registry, tmp_path: Path) -> None:
    """v1, v2, v3 promoted in turn; candidate -> v3 (history: 1, 2, 3 production, 4 candidate)."""
    for i, score in enumerate((0.4, 0.5, 0.6), start=1):
        reg.register(model_dir(tmp_path / f"m{i}", f"w{i}".encode()), metrics(score))
        assert reg.promote(i, GATE).promoted
    reg.set_candidate(3)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ------------------------------------------------------------------ register: files that are not what they say


def test_a_metrics_file_that_is_not_utf8_is_a_metrics_error_naming_it(reg: Registry, tmp_path: Path, cli) -> None:
    bad = tmp_path / "metrics.json"
    bad.write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(MetricsError, match=r"metrics\.json is not JSON: not UTF-8 text"):
        reg.register(model_dir(tmp_path / "m", b"w"), bad)
    r = cli("register", str(tmp_path / "m"), "--metrics", str(bad), "--json")
    assert r.exit_code == 2, r.output
    assert "metrics.json is not JSON" in json.loads(r.stdout)["error"]
    assert "metrics.json" in one_line(r.stderr)
    assert reg.list() == [] and not reg.store.list(BASE + "blobs/")


@pytest.mark.parametrize(("content", "message"), [
    (b"epochs: [1,\n", "params.yaml: line 2, column 1: not valid YAML (or JSON)"),
    (b"\xff\xfe epochs: 3\n", "params.yaml: not valid YAML (or JSON): not UTF-8 text"),
])
def test_a_training_params_file_that_is_not_yaml_is_one_line_naming_it(tmp_path: Path, cli, content: bytes,
                                                                      message: str) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps(metrics(0.5)))
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "params.yaml").write_bytes(content)
    r = cli("register", str(model_dir(tmp_path / "m", b"w")), "--metrics", str(tmp_path / "metrics.json"),
            "--params", str(tmp_path / "train" / "params.yaml"), "--json")
    assert r.exit_code == 2, r.output
    assert message in json.loads(r.stdout)["error"]
    assert message in one_line(r.stderr)
    assert json.loads(cli("list", "--json").stdout) == []


def test_an_unreadable_file_in_the_model_dir_is_one_line_and_nothing_is_registered(
        tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    mdir = model_dir(tmp_path / "m", b"w")
    (tmp_path / "metrics.json").write_text(json.dumps(metrics(0.5)))
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "model.onnx":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    r = cli("register", str(mdir), "--metrics", str(tmp_path / "metrics.json"), "--json")
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    error = json.loads(r.stdout)["error"]
    assert "model.onnx" in error and "Permission denied" in error
    assert "model.onnx" in one_line(r.stderr)
    monkeypatch.setattr(Path, "read_bytes", real)
    assert json.loads(cli("list", "--json").stdout) == []


# ------------------------------------------------------------------ every subcommand's error path, --json


@pytest.mark.parametrize("args", [
    ("promote", "0"), ("promote", "v0"), ("promote", "x1"), ("promote", "9"), ("promote", "candidate"),
    ("show", "0"), ("show", "9"), ("show", "abc"), ("show", "production"),
    ("candidate", "9"), ("candidate", "0"),
    ("rollback",),
    ("history", "--alias", "staging"),
    ("register", "no-such-dir", "--metrics", "no-such.json"),
    ("list", "--model", "Bad Name"),
])
def test_every_error_is_one_line_and_json_ok_false_exit_2(cli, args: tuple[str, ...]) -> None:
    r = cli(*args, "--json")
    assert r.exit_code == 2, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["error"], doc
    assert "Traceback" not in r.output


def test_rollback_with_one_production_and_no_earlier_one(reg: Registry, tmp_path: Path, cli) -> None:
    reg.register(model_dir(tmp_path / "m", b"w"), metrics(0.5))
    assert reg.promote(1, GATE).promoted
    r = cli("rollback", "--json")
    assert r.exit_code == 2 and "no earlier production version" in json.loads(r.stdout)["error"], r.output
    assert reg.get("production").version == 1 and len(reg.history()) == 1


def test_history_of_an_empty_registry_says_so(cli) -> None:
    r = cli("history")
    assert r.exit_code == 0 and "no alias moves yet" in r.stdout, r.output
    r = cli("history", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == []


def test_a_latency_budget_rejects_a_version_without_a_latency_naming_why(reg: Registry, tmp_path: Path, cli) -> None:
    reg.register(model_dir(tmp_path / "m", b"w"), metrics(0.5))
    (tmp_path / "p.yaml").write_text("promote: {floor: 0.0, max_latency_ms: 5}\n")
    r = cli("promote", "1", "--params-file", str(tmp_path / "p.yaml"), "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["promoted"] is False
    assert doc["reasons"] == ["no latency measured, and the budget is 5 ms"]


# ------------------------------------------------------------------ damaged objects written by hand


def test_list_names_a_damaged_alias_and_lists_the_versions(reg: Registry, tmp_path: Path, cli) -> None:
    three_promoted(reg, tmp_path)
    reg.store.put_bytes(BASE + "aliases/candidate.json", b"garbage")
    r = cli("list", "--json")
    assert r.exit_code == 1, r.output
    rows = json.loads(r.stdout)
    assert [(row["version"], row["aliases"]) for row in rows] == [(1, []), (2, []), (3, ["production"])]
    assert one_line(r.stderr).startswith(f"damaged: {BASE}aliases/candidate.json is not a valid alias record")
    r = cli("list")
    assert r.exit_code == 1 and "3 versions" in r.stdout and "aliases/candidate.json" in r.stderr, r.output


def test_an_alias_record_naming_an_impossible_version_is_damaged(reg: Registry, tmp_path: Path, cli) -> None:
    """A hand-edited alias pointing at version -5 was read as valid ("no version -5", or a key
    ``versions/-0000005.json`` nobody wrote); now it is a damaged record like any other."""
    three_promoted(reg, tmp_path)
    state = json.loads(reg.store.get_bytes(BASE + "aliases/candidate.json"))
    reg.store.put_bytes(BASE + "aliases/candidate.json", json.dumps({**state, "version": -5}).encode())
    r = cli("list", "--json")
    assert r.exit_code == 1, r.output
    assert one_line(r.stderr).startswith(f"damaged: {BASE}aliases/candidate.json is not a valid alias record")
    assert [row["aliases"] for row in json.loads(r.stdout)] == [[], [], ["production"]]


def test_list_goes_on_past_a_damaged_index_page_and_card(reg: Registry, tmp_path: Path, cli) -> None:
    three_promoted(reg, tmp_path)
    reg.store.put_bytes(BASE + "index/000000.json", b'{"page": 0, "cards": {"1": {}}}')
    reg.store.put_bytes(BASE + "versions/00000002.json", b'{"model": "camera",')
    with pytest.raises(CorruptRecord):  # the API without problems= still refuses
        reg.list()
    problems: dict[str, str] = {}
    assert [c.version for c in reg.list(problems=problems)] == [1, 3]
    assert sorted(problems) == [BASE + "index/000000.json", BASE + "versions/00000002.json"]
    r = cli("list", "--json")
    assert r.exit_code == 1 and [row["version"] for row in json.loads(r.stdout)] == [1, 3], r.output
    assert len(r.stderr.strip().splitlines()) == 2 and "index/000000.json" in r.stderr


def test_show_names_a_damaged_decision_and_shows_the_version(reg: Registry, tmp_path: Path, cli) -> None:
    three_promoted(reg, tmp_path)
    key = BASE + "versions/00000002/decision-0001.json"
    reg.store.put_bytes(key, b"[]")
    r = cli("show", "2", "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["version"] == 2 and doc["decisions"] == []
    assert key in doc["error"] and list(doc["problems"]) == [key]
    assert one_line(r.stderr).startswith(f"damaged: {key} is not a valid decision")
    r = cli("show", "2")
    assert r.exit_code == 1 and "camera v2" in r.stdout and key in r.stderr, r.output


def test_show_of_a_version_is_not_stopped_by_another_damaged_alias(reg: Registry, tmp_path: Path, cli) -> None:
    three_promoted(reg, tmp_path)
    reg.store.put_bytes(BASE + "aliases/candidate.json", b"{}")
    r = cli("show", "3", "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["version"] == 3 and doc["aliases"] == ["production"] and doc["decision"]["action"] == "promote"
    assert "aliases/candidate.json" in one_line(r.stderr)
    # the alias shown is the damaged one itself: nothing to show (exit 2, as before)
    r = cli("show", "candidate", "--json")
    assert r.exit_code == 2 and "aliases/candidate.json is not a valid" in json.loads(r.stdout)["error"]


def test_history_lists_the_moves_after_a_damaged_entry_and_names_it(reg: Registry, tmp_path: Path, cli) -> None:
    three_promoted(reg, tmp_path)
    reg.store.put_bytes(BASE + "history/00000002.json", b"{")
    with pytest.raises(CorruptRecord):
        reg.history()
    r = cli("history", "--json")
    assert r.exit_code == 1, r.output
    assert [(m["seq"], m["alias"]) for m in json.loads(r.stdout)] == [(3, "production"), (4, "candidate")]
    assert one_line(r.stderr).startswith(f"damaged: {BASE}history/00000002.json is not a valid history entry")
    r = cli("history", "--alias", "candidate", "--json")  # its chain does not pass the damaged entry
    assert r.exit_code == 0 and [m["seq"] for m in json.loads(r.stdout)] == [4], r.output


def test_history_names_a_missing_entry_and_a_damaged_alias(reg: Registry, tmp_path: Path, cli) -> None:
    three_promoted(reg, tmp_path)
    reg.store.delete(BASE + "history/00000001.json")
    reg.store.put_bytes(BASE + "aliases/candidate.json", b"garbage")
    r = cli("history")
    assert r.exit_code == 1, r.output
    assert "history/00000001.json is missing" in r.stderr and "aliases/candidate.json" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 2
    problems: dict[str, str] = {}
    assert [m.seq for m in reg.history(problems=problems)] == [2, 3]


# ------------------------------------------------------------------ two promotions of the same version at once


class _PromoteFirst(LocalStore):
    """A store that, just before our swap of production, lets another writer promote first."""

    def __init__(self, root: Path, other) -> None:
        super().__init__(root)
        self.other, self.fired = other, False

    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        if key.endswith("aliases/production.json") and not self.fired:
            self.fired = True
            self.other()
        return super().put_if_match(key, data, etag)


def test_two_promotions_of_the_same_version_promote_it_once(reg: Registry, tmp_path: Path) -> None:
    reg.register(model_dir(tmp_path / "m1", b"one"), metrics(0.4))
    reg.register(model_dir(tmp_path / "m2", b"two"), metrics(0.5))
    assert reg.promote(1, GATE).promoted
    other: list[Any] = []
    racing = _PromoteFirst(tmp_path / "store", lambda: other.append(reg.promote(2, GATE, who="other")))
    ours = Registry(racing).promote(2, GATE, who="us")
    assert racing.fired and other[0].action == "promote"
    assert ours.action == "noop" and ours.production_after == 2
    assert [d.action for d in reg.decisions(2)] == ["promote"]
    assert [(m.from_version, m.to_version) for m in reg.history("production")] == [(None, 1), (1, 2)]
    assert reg.get("production").version == 2 and reg.rollback().production_after == 1


def test_threads_promoting_the_same_version_leave_one_promotion(reg: Registry, tmp_path: Path) -> None:
    reg.register(model_dir(tmp_path / "m1", b"one"), metrics(0.4))
    reg.register(model_dir(tmp_path / "m2", b"two"), metrics(0.5))
    assert reg.promote(1, GATE).promoted
    start = threading.Barrier(4)
    actions: list[str] = []

    def promote() -> None:
        start.wait()
        actions.append(Registry(LocalStore(tmp_path / "store")).promote(2, GATE).action)

    threads = [threading.Thread(target=promote) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(actions).count("promote") == 1 and set(actions) <= {"promote", "noop"}, actions
    assert [d.action for d in reg.decisions(2)] == ["promote"]
    assert [m.to_version for m in reg.history("production")] == [1, 2]
    assert reg.aliases()["production"].stack == [1]
