"""The model registry against a local directory and a real S3 HTTP server (moto): versions
claimed create-only, immutable content-addressed files, the promotion gate, aliases moved by
compare-and-swap with a consistent history, races between processes, rollback, and the CLI."""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fleetloop.registry import (
    IntegrityError,
    NoPreviousProduction,
    PromoteParams,
    Registry,
    VersionNotFound,
)
from fleetloop.registry.api import git_revision
from fleetloop.registry.blobs import put_blob
from fleetloop.registry.keys import Layout
from fleetloop.settings import S3Settings, get_settings
from fleetloop.store.objects import LocalStore, S3Store, Store

pytest_plugins = ["tests.fixtures_s3"]

GATE = PromoteParams(primary="map50", min_improvement=0.0, min_support=20, slice_tolerance=0.03, floor=0.2)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    s3: S3Settings = request.getfixturevalue("s3_settings")
    return S3Store.from_settings(s3.model_copy(update={"prefix": "team/a"}))  # picklable: child processes


def metrics(primary: float, rain: float = 0.40, rain_support: int = 120, night: float = 0.5) -> dict[str, Any]:
    return {
        "primary": "map50",
        "overall": {"map50": primary, "support": 812, "frames": 300},
        "per_class": {"car": {"map50": primary, "support": 500}, "traffic_cone": {"map50": None, "support": 0}},
        "slices": {
            "weather=rain": {"map50": rain, "support": rain_support, "frames": 40},
            "time_of_day=night": {"map50": night, "support": 90, "frames": 30},
            "class=car": {"map50": primary, "support": 500, "frames": 280},
            "attr=green": {"map50": None, "support": 0, "frames": 0},
        },
        "evaluated_by": "tests",  # extra keys are tolerated
    }


def model_dir(root: Path, weights: bytes = b"weights-v1", config: str = '{"arch": "tiny"}') -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.pt").write_bytes(weights)
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "config.json").write_text(config)
    return root


def blob_keys(store: Store, model: str = "camera") -> list[str]:
    return store.list(Layout(model).blobs_prefix)


def assert_consistent_chain(reg: Registry, alias: str = "production") -> list:
    """Each move of ``alias`` starts where the previous one ended; the last ends at the alias."""
    moves = reg.history(alias)
    assert moves, "no history"
    assert moves[0].from_version is None
    for prev, nxt in itertools.pairwise(moves):
        assert nxt.from_version == prev.to_version, (prev, nxt)
        assert nxt.prev_seq == prev.seq and nxt.seq > prev.seq
    assert moves[-1].to_version == reg.get(alias).version
    assert reg.aliases()[alias].history_seq == moves[-1].seq
    return moves


# ---------------------------------------------------------------- register, files, lineage


def test_register_stores_an_immutable_card_with_lineage(store: Store, tmp_path: Path) -> None:
    reg = Registry(store)
    mdir = model_dir(tmp_path / "m")
    (tmp_path / "metrics.json").write_text(json.dumps(metrics(0.61)))
    v = reg.register(
        mdir, tmp_path / "metrics.json", dataset_version=7, params={"epochs": 12, "lr": 0.01},
        trainer="tiny-centernet", latency_ms=0.4, training_seconds=118.5,
    )
    assert v.version == 1 and v.model == "camera"
    assert v.files == {
        "model.pt": hashlib.sha256(b"weights-v1").hexdigest(),
        "sub/config.json": hashlib.sha256(b'{"arch": "tiny"}').hexdigest(),
    }
    assert v.lineage.dataset_version == 7 and v.lineage.params == {"epochs": 12, "lr": 0.01}
    assert v.lineage.trainer == "tiny-centernet" and v.lineage.training_seconds == 118.5
    assert v.lineage.code_revision == git_revision()
    assert v.metrics.slices["weather=rain"].value("map50") == 0.40
    assert v.metrics.model_dump()["evaluated_by"] == "tests"
    assert v.latency_ms == 0.4
    again = reg.get(1)
    assert again == v and reg.get("v1") == v and reg.get("1") == v
    assert store.exists("registry/camera/versions/00000001.json")
    # the card is create-only: a second write of version 1 is refused by the store
    assert store.put_if_absent("registry/camera/versions/00000001.json", b"{}") is False
    assert reg.get(1) == v
    with pytest.raises(VersionNotFound, match="no version 2"):
        reg.get(2)
    with pytest.raises(VersionNotFound, match="no production"):
        reg.get("production")


def test_identical_files_dedupe_and_blobs_are_never_overwritten(store: Store, tmp_path: Path) -> None:
    reg = Registry(store)
    mdir = model_dir(tmp_path / "m")
    v1 = reg.register(mdir, metrics(0.5))
    assert len(blob_keys(store)) == 2
    v2 = reg.register(model_dir(tmp_path / "m2"), metrics(0.5))  # same bytes elsewhere
    assert v2.version == 2 and v2.files == v1.files
    assert len(blob_keys(store)) == 2  # deduped
    v3 = reg.register(model_dir(tmp_path / "m3", weights=b"weights-v3"), metrics(0.6))
    assert len(blob_keys(store)) == 3 and v3.files["sub/config.json"] == v1.files["sub/config.json"]

    layout = Layout("camera")
    digest = v1.files["model.pt"]
    with pytest.raises(IntegrityError, match="refused"):
        put_blob(store, layout, digest, b"other content")  # wrong bytes for that hash
    assert store.put_if_absent(layout.blob(digest), b"other content") is False  # create-only
    assert put_blob(store, layout, digest, b"weights-v1") is False  # same content: already there
    assert store.get_bytes(layout.blob(digest)) == b"weights-v1"

    out = reg.download(1, tmp_path / "out1")
    assert (out / "model.pt").read_bytes() == b"weights-v1"
    assert (out / "sub" / "config.json").read_text() == '{"arch": "tiny"}'
    assert (reg.download(3, tmp_path / "out3") / "model.pt").read_bytes() == b"weights-v3"


def test_download_refuses_a_corrupt_blob(store: Store, tmp_path: Path) -> None:
    reg = Registry(store)
    v = reg.register(model_dir(tmp_path / "m"), metrics(0.5))
    key = Layout("camera").blob(v.files["model.pt"])
    store.put_bytes(key, b"tampered")  # bypassing the registry
    with pytest.raises(IntegrityError, match="corrupt"):
        reg.download(1, tmp_path / "out")
    assert not (tmp_path / "out" / "model.pt").exists()
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name.startswith(".")] == []


def test_register_rejects_bad_input(store: Store, tmp_path: Path) -> None:
    from fleetloop.registry import MetricsError, RegistryError

    reg = Registry(store)
    with pytest.raises(RegistryError, match="does not exist"):
        reg.register(tmp_path / "nope", metrics(0.5))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="no files"):
        reg.register(tmp_path / "empty", metrics(0.5))
    with pytest.raises(MetricsError, match="overall"):
        reg.register(model_dir(tmp_path / "m"), {"primary": "map50"})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MetricsError, match="not JSON"):
        reg.register(model_dir(tmp_path / "m"), tmp_path / "bad.json")
    assert reg.list() == []


# ---------------------------------------------------------------- the gate through the registry


def test_first_model_below_the_floor_is_rejected(store: Store, tmp_path: Path) -> None:
    reg = Registry(store)
    reg.register(model_dir(tmp_path / "m"), metrics(0.15))
    d = reg.promote(1, GATE, who="ci", why="weekly")
    assert not d.promoted and d.action == "reject"
    assert "below the floor" in d.reasons[0]
    assert "production" not in reg.aliases() and reg.history() == []
    assert [x.action for x in reg.decisions(1)] == ["reject"]
    reg.register(model_dir(tmp_path / "m2", weights=b"w2"), metrics(0.25))
    d = reg.promote(2, GATE, who="ci")
    assert d.promoted and d.production_before is None and reg.get("production").version == 2


def test_a_regressing_candidate_is_rejected_naming_the_slice(store: Store, tmp_path: Path) -> None:
    reg = Registry(store)
    reg.register(model_dir(tmp_path / "m1"), metrics(0.61, rain=0.41))
    assert reg.promote(1, GATE, who="ci").promoted
    reg.register(model_dir(tmp_path / "m2", weights=b"w2"), metrics(0.66, rain=0.33))
    d = reg.promote(2, GATE, who="ci", why="weekly retrain")
    assert not d.promoted and d.action == "reject"
    assert d.reasons == ["weather=rain: map50 0.410 → 0.330 (−0.080 > tolerance 0.030, 120 objects)"]
    assert reg.get("production").version == 1
    recorded = reg.decisions(2)
    assert len(recorded) == 1 and recorded[0].number == 1 and recorded[0].verdict.reasons == d.reasons
    assert recorded[0].verdict.details["slices"]["weather=rain"]["ok"] is False
    assert recorded[0].production_before == 1 and recorded[0].who == "ci" and recorded[0].why == "weekly retrain"
    # a small rain slice is not gated; the same model with 10 rain objects passes
    reg.register(model_dir(tmp_path / "m3", weights=b"w3"), metrics(0.66, rain=0.33, rain_support=10))
    assert reg.promote(3, GATE, who="ci").promoted
    assert reg.get(2).version == 2  # the card is untouched by decisions


def test_promoting_production_again_is_a_noop(store: Store, tmp_path: Path) -> None:
    reg = Registry(store)
    reg.register(model_dir(tmp_path / "m"), metrics(0.5))
    assert reg.promote(1, GATE).promoted
    d = reg.promote(1, GATE)
    assert d.action == "noop" and not d.promoted and "already production" in d.reasons[0]
    assert len(reg.history()) == 1 and len(reg.decisions(1)) == 1


def test_latency_budget_uses_the_cards_latency(store: Store, tmp_path: Path) -> None:
    reg = Registry(store)
    reg.register(model_dir(tmp_path / "m"), metrics(0.5), latency_ms=12.0)
    d = reg.promote(1, GATE.model_copy(update={"max_latency_ms": 10.0}))
    assert not d.promoted and "exceeds the budget" in d.reasons[0]


# ---------------------------------------------------------------- aliases, history, rollback


def test_rollback_walks_back_through_production_versions(store: Store, tmp_path: Path) -> None:
    reg = Registry(store)
    for i, score in enumerate((0.5, 0.6, 0.7), start=1):
        reg.register(model_dir(tmp_path / f"m{i}", weights=f"w{i}".encode()), metrics(score))
        assert reg.promote(i, GATE, who="ci").promoted
    d = reg.rollback(who="alice", why="night regressions in the field")
    assert d.action == "rollback" and d.production_before == 3 and d.production_after == 2 and d.version == 2
    assert reg.get("production").version == 2
    assert reg.decisions(2)[-1].action == "rollback"
    assert reg.rollback(who="alice").production_after == 1
    with pytest.raises(NoPreviousProduction, match="no earlier production version"):
        reg.rollback(who="alice")
    moves = assert_consistent_chain(reg)
    assert [(m.from_version, m.to_version, m.kind) for m in moves] == [
        (None, 1, "promote"), (1, 2, "promote"), (2, 3, "promote"), (3, 2, "rollback"), (2, 1, "rollback"),
    ]
    assert moves[3].who == "alice" and moves[3].why == "night regressions in the field"
    # promoting again gates against the rolled-back production and can be rolled back
    assert reg.promote(3, GATE).production_before == 1
    assert reg.rollback().production_after == 1
    assert_consistent_chain(reg)
    assert [m.seq for m in reg.history(limit=2)] == [m.seq for m in reg.history()][-2:]


def test_rollback_without_production_is_a_clear_error(store: Store) -> None:
    with pytest.raises(NoPreviousProduction, match="no production version"):
        Registry(store).rollback()


def test_candidate_alias_and_separate_history(store: Store, tmp_path: Path) -> None:
    reg = Registry(store)
    reg.register(model_dir(tmp_path / "m1"), metrics(0.5))
    reg.register(model_dir(tmp_path / "m2", weights=b"w2"), metrics(0.6))
    assert reg.set_candidate(1, who="ci") is not None
    assert reg.promote("candidate", GATE).promoted
    assert reg.set_candidate(2, who="ci").from_version == 1
    assert reg.set_candidate(2) is None  # already
    assert reg.get("candidate").version == 2
    assert [m.alias for m in reg.history()] == ["candidate", "production", "candidate"]
    assert [m.to_version for m in reg.history("candidate")] == [1, 2]
    assert_consistent_chain(reg, "candidate")
    with pytest.raises(ValueError, match="unknown alias"):
        reg.history("staging")


def test_models_are_separate(store: Store, tmp_path: Path) -> None:
    cam, lidar = Registry(store, "camera"), Registry(store, model="lidar")
    cam.register(model_dir(tmp_path / "m"), metrics(0.5))
    assert lidar.register(model_dir(tmp_path / "m"), metrics(0.5)).version == 1
    assert [v.version for v in cam.list()] == [1] and [v.model for v in lidar.list()] == ["lidar"]
    with pytest.raises(ValueError, match="invalid model name"):
        Registry(store, "../x")


# ---------------------------------------------------------------- the index


def test_list_finds_versions_the_index_lags_behind_and_the_next_writer_indexes_them(
    store: Store, tmp_path: Path
) -> None:
    reg, layout = Registry(store), Layout("camera")
    for i in range(3):
        reg.register(model_dir(tmp_path / f"m{i}", weights=f"w{i}".encode()), metrics(0.5), code_revision="r")
    # a writer that died after claiming version 4 and before indexing it
    crashed = reg.get(3).model_copy(update={"version": 4})
    assert store.put_if_absent(layout.card(4), crashed.model_dump_json().encode())
    assert [v.version for v in reg.list()] == [1, 2, 3, 4]
    assert [v.version for v in reg.list(limit=2)] == [3, 4]
    v5 = reg.register(model_dir(tmp_path / "m5", weights=b"w5"), metrics(0.6), code_revision="r")
    assert v5.version == 5  # version 4 was taken: claimed the next one, never overwrote it
    page = json.loads(store.get_bytes(layout.index_page(0)))
    assert sorted(int(k) for k in page["cards"]) == [1, 2, 3, 4, 5]
    # a missing index is rebuilt by the next writer; list still sees everything meanwhile
    store.delete(layout.index_page(0))
    assert [v.version for v in reg.list()] == [1, 2, 3, 4, 5]
    assert reg.register(model_dir(tmp_path / "m6", weights=b"w6"), metrics(0.6), code_revision="r").version == 6
    page = json.loads(store.get_bytes(layout.index_page(0)))
    assert sorted(int(k) for k in page["cards"]) == [1, 2, 3, 4, 5, 6]


class CountingStore(LocalStore):
    """A local store that counts requests by kind."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: dict[str, int] = {}

    def _count(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1

    def reset(self) -> None:
        self.calls = {}

    def get_bytes(self, key: str) -> bytes:
        self._count("get")
        return super().get_bytes(key)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        self._count("get")
        return super().get_versioned(key)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> list[str]:
        self._count("list")
        return super().list(prefix, start_after=start_after)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._count("put")
        return super().put_if_absent(key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        self._count("put")
        return super().put_if_match(key, data, etag)

    def exists(self, key: str) -> bool:
        self._count("head")
        return super().exists(key)


def test_requests_per_operation_do_not_grow_with_the_number_of_versions(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    reg = Registry(store)
    mdir = model_dir(tmp_path / "m")
    costs: dict[int, dict[str, int]] = {}
    for n in (5, 250):
        while len(reg.list()) < n - 1:
            reg.register(mdir, metrics(0.3), code_revision="r")
        store.reset()
        reg.register(mdir, metrics(0.3 + n / 1000), code_revision="r")
        register_calls = sum(store.calls.values())
        store.reset()
        reg.promote(n, GATE)
        promote_calls = sum(store.calls.values())
        store.reset()
        assert len(reg.list()) == n
        list_calls = dict(store.calls)
        store.reset()
        assert len(reg.list(limit=10)) == 10 or n < 10
        costs[n] = {"register": register_calls, "promote": promote_calls,
                    "list": sum(list_calls.values()), "list10": sum(store.calls.values())}
    assert costs[250]["register"] == costs[5]["register"], costs
    assert costs[250]["promote"] <= costs[5]["promote"] + 1, costs  # +1: the rollback stack's first entry
    assert costs[250]["list"] <= 2 + 3, costs  # 3 index pages, 2 listings
    assert costs[250]["list10"] <= 2 + 2, costs


# ---------------------------------------------------------------- forced interleavings


class Interfering(Store):
    """Delegates to ``inner``; the first write to a key ending in ``trigger`` first runs
    ``interfere()`` (another writer acting between our read and our write)."""

    def __init__(self, inner: Store, trigger: str, interfere: Any) -> None:
        self.inner, self.trigger, self.interfere = inner, trigger, interfere
        self.location = inner.location
        self.fired = False

    def _maybe(self, key: str) -> None:
        if not self.fired and key.endswith(self.trigger):
            self.fired = True
            self.interfere()

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._maybe(key)
        return self.inner.put_if_absent(key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        self._maybe(key)
        return self.inner.put_if_match(key, data, etag)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.inner.put_bytes(key, data)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(key, path)

    def get_file(self, key: str, path: Path) -> Path:
        return self.inner.get_file(key, path)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> list[str]:
        return self.inner.list(prefix, start_after=start_after)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def url_for(self, key: str, expires: int = 3600) -> str:
        return self.inner.url_for(key, expires)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        return self.inner.get_versioned(key)


def test_a_promotion_that_loses_the_swap_regates_against_the_winner(store: Store, tmp_path: Path) -> None:
    mdir = model_dir(tmp_path / "m")
    base = Registry(store)
    for score in (0.5, 0.7, 0.6):
        base.register(mdir, metrics(score), code_revision="r")
    assert base.promote(1, GATE).promoted
    # between our read of production (1) and our swap, another writer promotes version 2
    racing = Interfering(store, "aliases/production.json", lambda: base.promote(2, GATE, who="other"))
    d = Registry(racing).promote(3, GATE, who="us")
    assert racing.fired
    assert d.action == "reject" and d.production_before == 2  # 0.6 beat 1, not 2
    assert d.reasons[0].startswith("not better: map50 0.700 → 0.600")
    moves = assert_consistent_chain(base)
    assert [(m.from_version, m.to_version) for m in moves] == [(None, 1), (1, 2)]
    # our claimed history entry stayed behind as an orphan, off the chain
    layout = Layout("camera")
    seqs = [layout.history_seq_of(k) for k in store.list(layout.history_prefix)]
    orphans = set(seqs) - {m.seq for m in moves}
    assert len(orphans) == 1
    orphan = json.loads(store.get_bytes(layout.history(orphans.pop())))
    assert (orphan["from"], orphan["to"], orphan["who"]) == (1, 3, "us")
    assert base.promote(3, GATE).action == "reject"  # and nothing else changed
    assert base.get("production").version == 2


def test_a_version_claimed_by_another_writer_is_skipped_and_indexed(store: Store, tmp_path: Path) -> None:
    base = Registry(store)
    base.register(model_dir(tmp_path / "m"), metrics(0.5), code_revision="r")
    other = model_dir(tmp_path / "other", weights=b"other")
    racing = Interfering(store, "versions/00000002.json",
                         lambda: base.register(other, metrics(0.9), trainer="other", code_revision="r"))
    v = Registry(racing).register(model_dir(tmp_path / "ours", weights=b"ours"), metrics(0.6), trainer="us")
    assert racing.fired and v.version == 3
    assert base.get(2).lineage.trainer == "other" and base.get(3).lineage.trainer == "us"
    assert [c.version for c in base.list()] == [1, 2, 3]


# ---------------------------------------------------------------- races between processes


def _register_worker(store: Store, mdir: str, writer: int, n: int, barrier: Any, out: Any) -> None:
    reg = Registry(store)
    barrier.wait()
    got = []
    for i in range(n):
        v = reg.register(Path(mdir), metrics(0.5), params={"writer": writer, "i": i}, code_revision="r")
        got.append((v.version, writer, i))
    out.put(got)


def _promote_worker(store: Store, versions: list[int], barrier: Any, out: Any) -> None:
    reg = Registry(store)
    barrier.wait()
    out.put([(v, (d := reg.promote(v, GATE, who=f"proc-{versions[0]}")).action, d.history_seq) for v in versions])


def _run_processes(target: Any, args_list: list[tuple]) -> list[Any]:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(len(args_list)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, out)) for args in args_list]
    for p in procs:
        p.start()
    results = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_two_processes_registering_at_once_get_distinct_versions(store: Store, tmp_path: Path) -> None:
    mdir = model_dir(tmp_path / "m")
    results = _run_processes(_register_worker, [(store, str(mdir), w, 5) for w in (0, 1)])
    claimed = sorted(x for r in results for x in r)
    assert [v for v, _, _ in claimed] == list(range(1, 11))  # distinct, none lost, no gaps
    reg = Registry(store)
    for version, writer, i in claimed:  # each card is the one its writer wrote
        assert reg.get(version).lineage.params == {"writer": writer, "i": i}
    assert [v.version for v in reg.list()] == list(range(1, 11))
    page = json.loads(store.get_bytes(Layout("camera").index_page(0)))
    assert sorted(int(k) for k in page["cards"]) == list(range(1, 11))  # the index holds them all


def test_two_processes_promoting_at_once_leave_one_production_and_a_consistent_history(
    store: Store, tmp_path: Path
) -> None:
    reg = Registry(store)
    mdir = model_dir(tmp_path / "m")
    for v in range(1, 12):  # each version better than the one before
        reg.register(mdir, metrics(0.3 + 0.03 * v), code_revision="r")
    assert reg.promote(1, GATE).promoted
    results = _run_processes(_promote_worker, [(store, [2, 4, 6, 8, 10]), (store, [3, 5, 7, 9, 11])])
    outcomes = [x for r in results for x in r]
    promoted = sorted(seq for _, action, seq in outcomes if action == "promote")
    assert reg.get("production").version == 11  # the best one, whatever the interleaving
    moves = assert_consistent_chain(reg)
    assert [m.seq for m in moves[1:]] == promoted  # every promotion is in the history, once
    assert all(m.kind == "promote" for m in moves)
    # rejected ones lost to a better production that won meanwhile, and say so
    for v, action, _ in outcomes:
        decisions = reg.decisions(v)
        assert [d.action for d in decisions] == [action]
        if action == "reject":
            assert decisions[0].reasons[0].startswith("not better")
    # history entries off the chain are only lost swaps: never the alias's state
    layout = Layout("camera")
    on_chain = {m.seq for m in moves}
    for key in store.list(layout.history_prefix):
        seq = layout.history_seq_of(key)
        if seq not in on_chain:
            orphan = json.loads(store.get_bytes(key))
            assert orphan["alias"] == "production"


def test_racing_promotions_of_two_versions_over_the_same_production(store: Store, tmp_path: Path) -> None:
    """Both pass the gate against version 1; one swap wins first, the other re-gates against it."""
    reg = Registry(store)
    mdir = model_dir(tmp_path / "m")
    for score in (0.5, 0.6, 0.6):  # 2 and 3 are equally good: only one of them can be production
        reg.register(mdir, metrics(score), code_revision="r")
    assert reg.promote(1, GATE).promoted
    results = _run_processes(_promote_worker, [(store, [2]), (store, [3])])
    actions = sorted(action for r in results for _, action, _ in r)
    assert actions == ["promote", "reject"]
    moves = assert_consistent_chain(reg)
    assert len(moves) == 2 and moves[1].from_version == 1
    assert reg.get("production").version == moves[1].to_version


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def cli_env(request: pytest.FixtureRequest, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The CLI's settings pointed at the same store as ``store``; gate params from a file."""
    if isinstance(store, S3Store):
        s3: S3Settings = request.getfixturevalue("s3_settings").model_copy(update={"prefix": "team/a"})
        monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "s3")
        monkeypatch.setenv("FLEETLOOP_STORAGE__S3__BUCKET", s3.bucket)
        monkeypatch.setenv("FLEETLOOP_STORAGE__S3__PREFIX", s3.prefix)
        monkeypatch.setenv("FLEETLOOP_STORAGE__S3__ENDPOINT_URL", s3.endpoint_url)
    else:
        monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
        monkeypatch.setenv("FLEETLOOP_STORAGE__LOCAL_ROOT", str(store.root))
    params = tmp_path / "params.yaml"
    params.write_text("promote: {primary: map50, min_improvement: 0.0, min_support: 20, slice_tolerance: 0.03, "
                      "floor: 0.2}\n")
    monkeypatch.setenv("FLEETLOOP_PARAMS", str(params))
    monkeypatch.setenv("FLEETLOOP_ACTOR", "cli-test")
    get_settings.cache_clear()
    yield store
    get_settings.cache_clear()


def _cli(*args: str) -> Any:
    from fleetloop.cli.registry import app

    return CliRunner().invoke(app, list(args))


def test_cli_register_promote_reject_rollback_show_list_history(cli_env: Store, tmp_path: Path) -> None:
    m1 = model_dir(tmp_path / "m1")
    (tmp_path / "m1.json").write_text(json.dumps(metrics(0.61, rain=0.41)))
    (tmp_path / "m2.json").write_text(json.dumps(metrics(0.66, rain=0.33, night=0.40)))
    (tmp_path / "m3.json").write_text(json.dumps(metrics(0.70, rain=0.45)))
    (tmp_path / "train.yaml").write_text("epochs: 12\nlr: 0.01\n")

    r = _cli("register", str(m1), "--metrics", str(tmp_path / "m1.json"), "--dataset", "3",
             "--params", str(tmp_path / "train.yaml"), "--trainer", "tiny", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["version"] == 1 and out["lineage"]["dataset_version"] == 3
    assert out["lineage"]["params"] == {"epochs": 12, "lr": 0.01}

    r = _cli("promote", "1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["promoted"] is True

    for name in ("m2", "m3"):
        r = _cli("register", str(model_dir(tmp_path / name, weights=name.encode())), "--metrics",
                 str(tmp_path / f"{name}.json"), "--candidate", "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["candidate"] is True
    r = _cli("candidate", "3", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"ok": True, "candidate": 3, "moved": False, "history_seq": None}

    r = _cli("promote", "2", "--json", "--why", "weekly")
    assert r.exit_code == 1, r.output
    out = json.loads(r.stdout)
    assert out["promoted"] is False and out["production"] == 1
    assert [x.split(":")[0] for x in out["reasons"]] == ["time_of_day=night", "weather=rain"]
    assert "0.410 → 0.330" in out["reasons"][1]
    assert out["verdict"]["details"]["slices"]["weather=rain"]["ok"] is False

    r = _cli("promote", "2")  # the human form says the same
    assert r.exit_code == 1 and "weather=rain" in r.stdout and "rejected" in r.stdout

    r = _cli("promote", "candidate", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["production_before"] == 1
    r = _cli("promote", "3", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["already_production"] is True

    r = _cli("show", "production", "--json")
    assert r.exit_code == 0, r.output
    show = json.loads(r.stdout)
    assert show["version"] == 3 and show["aliases"] == ["production", "candidate"]
    assert show["metrics"]["slices"]["weather=rain"]["map50"] == 0.45
    assert show["lineage"]["code_revision"] == git_revision()
    assert show["decision"]["action"] == "promote" and show["decision"]["who"] == "cli-test"
    r = _cli("show", "2", "--json")
    assert json.loads(r.stdout)["decision"]["action"] == "reject"

    r = _cli("rollback", "--json", "--why", "bad at night")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) | {"when": None} == json.loads(r.stdout) | {
        "rolled_back": True, "from": 3, "to": 1, "production": 1, "when": None,
    }
    r = _cli("rollback", "--json")
    assert r.exit_code == 2 and "no earlier production version" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    r = _cli("list", "--json")
    rows = json.loads(r.stdout)
    assert [row["version"] for row in rows] == [1, 2, 3] and rows[0]["aliases"] == ["production"]
    assert rows[2]["aliases"] == ["candidate"]
    assert rows[0]["value"] == 0.61 and rows[0]["dataset_version"] == 3
    assert _cli("list").exit_code == 0

    r = _cli("history", "--json")
    moves = json.loads(r.stdout)
    assert [(m["alias"], m["from"], m["to"], m["kind"]) for m in moves] == [
        ("production", None, 1, "promote"), ("candidate", None, 2, "set"), ("candidate", 2, 3, "set"),
        ("production", 1, 3, "promote"), ("production", 3, 1, "rollback"),
    ]
    assert moves[-1]["who"] == "cli-test" and moves[-1]["why"] == "bad at night"
    assert _cli("history").exit_code == 0 and _cli("show", "1").exit_code == 0


def test_cli_errors_are_one_line_exit_2(cli_env: Store, tmp_path: Path) -> None:
    for args, needle in (
        (("promote", "7", "--json"), "no version 7"),
        (("show", "production", "--json"), "no production version"),
        (("show", "latest"), "not a version number"),
        (("register", str(tmp_path / "missing"), "--metrics", str(tmp_path / "x.json")), "cannot read"),
        (("list", "--model", "Bad Name"), "invalid model name"),
    ):
        r = _cli(*args)
        assert r.exit_code == 2, (args, r.output)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.output
