"""The dataset repository with real git and DVC: grow, supersede, nothing new, checkout from the
remotes only (local directory and S3 on a real S3-compatible server), and crash safety (grow
SIGKILLed between each pair of its steps, then rerun)."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from fleetloop.dataset import DatasetConfig, DatasetError, checkout, grow, history, materialize, split_of, status
from fleetloop.dataset.dvc import Repo
from fleetloop.dataset.growth import CRASH_ENV, STEPS
from fleetloop.dataset.params import GrowParams
from fleetloop.ingest.validation import validate_labels
from fleetloop.schema import CALIBRATION, FRAMES, LABELS, STREAMS, DriveLogs
from fleetloop.store.logs import put_log
from fleetloop.store.objects import LocalStore

pytest_plugins = ["tests.fixtures_s3"]

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}


@pytest.fixture(autouse=True)
def _dvc_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))  # not /var/tmp
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.delenv(CRASH_ENV, raising=False)


def _png(seed: int, w: int = 8, h: int = 6) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


@dataclass
class Ann:
    log_id: str
    frame: int
    aid: int
    rev: int
    t: datetime
    boxes: list[tuple[str, float, float, float, float]]
    status: str = ""  # default: labeled when boxes, else empty

    def __post_init__(self) -> None:
        self.status = self.status or ("labeled" if self.boxes else "empty")


@dataclass
class Fleet:
    """A store with logs whose images are PNG files, and label shards written as sync writes them."""

    root: Path
    store: LocalStore = field(init=False)
    images: dict[tuple[str, int], bytes] = field(default_factory=dict)
    shards: dict[str, int] = field(default_factory=dict)
    truth: dict[tuple[str, int], Ann] = field(default_factory=dict)  # the newest delivery per frame

    def __post_init__(self) -> None:
        self.store = LocalStore(self.root / "store")

    def add_log(self, log_id: str, n: int, weather: str = "rain", tod: str = "night", *, missing: tuple = ()) -> None:
        img_dir = self.root / "images" / log_id
        img_dir.mkdir(parents=True, exist_ok=True)
        uris = []
        for i in range(n):
            path = img_dir / f"{i:06d}.png"
            if i not in missing:
                data = _png(hash((log_id, i)) % 2**32)
                path.write_bytes(data)
                self.images[(log_id, i)] = data
            uris.append(str(path))
        frames = pa.Table.from_pydict({
            "log_id": [log_id] * n, "frame": pa.array(range(n), pa.int32()),
            "timestamp_ns": [1_700_000_000_000_000_000 + i * 100_000_000 for i in range(n)], "image_uri": uris,
            "vehicle": ["veh-1"] * n, "weather": [weather] * n, "time_of_day": [tod] * n, "place": ["town"] * n,
        }, schema=FRAMES)
        cal = pa.Table.from_pydict({"log_id": [log_id], "P": [[0.0] * 12], "lidar_to_cam": [[0.0] * 12],
                                    "image_width": [8], "image_height": [6]}, schema=CALIBRATION)
        tables = {name: s.empty_table() for name, s in STREAMS.items()}
        tables.update(frames=frames, calibration=cal)
        put_log(self.store, DriveLogs(**tables), source="test")

    def deliver(self, campaign: str, anns: list[Ann]) -> str:
        n = self.shards[campaign] = self.shards.get(campaign, 0) + 1
        rows, manifest = [], []
        for a in anns:
            for cls, x1, y1, x2, y2 in a.boxes:
                rows.append(dict(log_id=a.log_id, frame=a.frame, cls=cls, x1=x1, y1=y1, x2=x2, y2=y2, campaign=campaign,
                                 task_id=a.aid * 10, annotation_id=a.aid, annotator="lab@x", updated_at=a.t,
                                 revision=a.rev))
            manifest.append(dict(annotation_id=a.aid, task_id=a.aid * 10, updated_at=a.t.isoformat(), revision=a.rev,
                                 status=a.status, boxes=len(a.boxes), annotator="lab@x", log_id=a.log_id,
                                 frame=a.frame))
            valid = all(cls in ("car", "pedestrian", "cyclist", "traffic_cone") for cls, *_ in a.boxes)
            old = self.truth.get((a.log_id, a.frame))
            if valid and (old is None or (a.t, a.rev) > (old.t, old.rev)):
                if a.status == "unusable" and old is None:
                    continue
                self.truth[(a.log_id, a.frame)] = a
        # as `fleetloop label sync` writes a shard: LABELS rows, every delivered annotation in the metadata
        table = pa.Table.from_pylist(rows, schema=LABELS) if rows else LABELS.empty_table()
        table = table.replace_schema_metadata({b"fleetloop_annotations": json.dumps(manifest).encode()})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        key = f"labels/{campaign}/sync-{n:06d}.parquet"
        self.store.put_bytes(key, buf.getvalue())
        return key

    def expected(self) -> tuple[set[tuple[str, int]], list[tuple]]:
        frames = {k for k, a in self.truth.items() if a.status != "unusable"}
        labels = sorted((a.log_id, a.frame, a.aid, a.rev, b[0], round(b[1], 3)) for a in self.truth.values()
                        if a.status == "labeled" for b in a.boxes)
        return frames, labels


def _seen(frames: pa.Table, labels: pa.Table) -> tuple[set[tuple[str, int]], list[tuple]]:
    keys = list(zip(frames["log_id"].to_pylist(), frames["frame"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)), "a (log_id, frame) appears twice"
    rows = sorted((r["log_id"], r["frame"], r["annotation_id"], r["revision"], r["cls"], round(r["x1"], 3))
                  for r in labels.select(["log_id", "frame", "annotation_id", "revision", "cls", "x1"]).to_pylist())
    return set(keys), rows


def _box(i: int, cls: str = "car") -> tuple[str, float, float, float, float]:
    return (cls, 1.0 + i, 1.0, 5.0 + i, 4.0)


def _config(tmp_path: Path, remote: str, endpoint: str | None = None) -> DatasetConfig:
    return DatasetConfig(repo_dir=tmp_path / "work" / "dataset", dvc_remote_url=remote, s3_endpoint_url=endpoint,
                         git_remote=str(tmp_path / "origin.git"), command_timeout_s=300, lock_timeout_s=60)


def _aws_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fixtures_s3 points the AWS config files at /dev/null, which DVC's aiobotocore rejects (not a
    regular file): empty files instead."""
    for var in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        path = tmp_path / var.lower()
        path.write_text("")
        monkeypatch.setenv(var, str(path))


def _grow(fleet: Fleet, config: DatasetConfig, **kw):
    return grow(fleet.store, config, GrowParams(**kw), validate=validate_labels)


# ------------------------------------------------------------------------------------------ three versions


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_three_versions_then_checkout_from_the_remotes_only(backend: str, tmp_path: Path, request) -> None:
    if backend == "s3":
        s3_server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
        _aws_files(tmp_path, request.getfixturevalue("monkeypatch"))
        config = _config(tmp_path, f"s3://{bucket}/fleet/dvc", s3_server.endpoint_url)
    else:
        config = _config(tmp_path, str(tmp_path / "dvc-remote"))
    fleet = Fleet(tmp_path)
    fleet.add_log("log-a", 6, "rain", "night")
    fleet.add_log("log-b", 4, "clear", "day")
    assert status(config).version == 0

    # v1: labeled frames of two logs and a verified-empty (negative) frame
    fleet.deliver("week-1", [Ann("log-a", i, 100 + i, 1, T0, [_box(i), _box(i, "pedestrian")]) for i in range(5)]
                  + [Ann("log-b", 0, 200, 1, T0, [])])
    r1 = _grow(fleet, config)
    assert (r1.created, r1.version, r1.tag, r1.frames_added, r1.objects_added, r1.negatives) == \
        (True, 1, "dataset-v1", 6, 10, 1)
    expected_v1 = fleet.expected()

    # nothing new -> no version
    again = _grow(fleet, config)
    assert (again.created, again.nothing_new, again.version) == (False, True, 1)
    assert again.message == "nothing new (dataset-v1)"

    # v2: another campaign; one annotation with a class outside the taxonomy is reported and left out
    fleet.add_log("log-c", 3, "clear", "night")
    fleet.deliver("week-2", [Ann("log-c", 0, 300, 1, T0 + timedelta(days=7), [_box(0, "cyclist")]),
                             Ann("log-c", 1, 301, 1, T0 + timedelta(days=7), [_box(1, "truck"), _box(2)]),
                             Ann("log-b", 1, 302, 1, T0 + timedelta(days=7), [_box(3, "traffic_cone")])])
    r2 = _grow(fleet, config)
    assert (r2.version, r2.frames_added, r2.invalid) == (2, 2, 1)
    bad = [p for p in r2.problems if p.kind == "invalid_labels"]
    assert bad[0].annotation_id == 301 and "taxonomy" in bad[0].message

    # v3: a revised annotation supersedes v1's; a frame marked unusable leaves; a missing image is kept, reported;
    # another campaign reusing the same annotation id (ids are per campaign) is a different annotation
    fleet.add_log("log-d", 2, "rain", "day", missing=(1,))
    fleet.deliver("week-1", [Ann("log-a", 0, 100, 2, T0 + timedelta(days=8), [_box(7, "cyclist")]),
                             Ann("log-a", 1, 101, 2, T0 + timedelta(days=8), [], status="unusable"),
                             Ann("log-d", 1, 400, 1, T0 + timedelta(days=8), [_box(1)])])
    fleet.deliver("vendor", [Ann("log-d", 0, 100, 2, T0 + timedelta(days=8), [_box(2), _box(4)])])
    r3 = _grow(fleet, config)
    assert (r3.version, r3.frames_added, r3.superseded, r3.removed, r3.missing_images) == (3, 4, 2, 1, 1)
    expected_v3 = fleet.expected()
    assert [h.version for h in history(config)] == [1, 2, 3]
    assert history(config)[1].campaigns == ["week-2"]
    st = status(config)
    assert (st.version, st.tag, st.frames, st.pending) == (3, "dataset-v3", len(expected_v3[0]), False)
    assert sum(s.frames for s in st.splits.values()) == st.frames

    # a machine with nothing but the remotes: no working repository, no store
    shutil.rmtree(config.repo_dir)
    shutil.rmtree(tmp_path / "store")
    c1 = checkout(1, tmp_path / "v1", config)
    assert (c1.version, c1.frames, c1.batches) == (1, 6, 1)
    frames, labels = materialize(tmp_path / "v1")
    assert _seen(frames, labels) == expected_v1
    for row in frames.select(["log_id", "frame", "image_png", "split", "width"]).to_pylist():
        assert row["image_png"] == fleet.images[(row["log_id"], row["frame"])]  # the bytes, verified
        assert row["split"] == split_of(row["log_id"], RATIOS) and row["width"] == 8

    c3 = checkout(3, tmp_path / "v3", config)
    frames, labels = materialize(tmp_path / "v3")
    assert _seen(frames, labels) == expected_v3
    a0 = labels.filter(pc.and_(pc.equal(labels["frame"], 0), pc.equal(labels["log_id"], "log-a")))
    assert a0["cls"].to_pylist() == ["cyclist"] and a0["revision"].to_pylist() == [2]
    missing = frames.filter(pc.equal(frames["log_id"], "log-d")).to_pylist()
    assert [(r["frame"], r["image_png"] is None) for r in missing] == [(0, False), (1, True)]
    assert c3.frames == frames.num_rows
    # splits never move: every frame of a log sits in the log's split in every version
    assert all(s == split_of(i, RATIOS) for i, s in zip(frames["log_id"].to_pylist(), frames["split"].to_pylist(),
                                                         strict=True))
    manifest = json.loads((tmp_path / "v3" / "manifest.json").read_text())
    assert [b["campaigns"] for b in manifest["batches"]] == [["week-1"], ["week-2"], ["vendor", "week-1"]]
    assert manifest["batches"][0]["label_shards"] == ["labels/week-1/sync-000001.parquet"]
    assert manifest["slices"]["weather=rain"]["frames"] == sum(1 for k in expected_v3[0] if k[0] in ("log-a", "log-d"))
    assert "rare" in manifest["slices"] and manifest["batches"][0]["mining_runs"] == []
    assert sorted(p.name for p in (tmp_path / "v3" / "data" / "batches" / "b00001").iterdir()) == \
        ["frames-00000.parquet", "labels-00000.parquet"]

    if backend == "local":  # the data-registry pattern the training pipeline uses: dvc import, then update
        ws = Repo(tmp_path / "train-ws", config)
        ws.root.mkdir()
        ws.git("init", "-q")
        ws.dvc("init")
        (ws.root / "data").mkdir()
        ws.dvc("import", config.git_remote, "data", "-o", "data/dataset", "--rev", "dataset-v1")
        assert _seen(*materialize(ws.root / "data" / "dataset")) == expected_v1
        ws.dvc("update", "--rev", "dataset-v3", "data/dataset.dvc")
        assert _seen(*materialize(ws.root / "data" / "dataset")) == expected_v3

    with pytest.raises(DatasetError, match="not an empty directory"):
        checkout(1, tmp_path / "v3", config)
    with pytest.raises(DatasetError, match="no dataset version 9"):
        checkout(9, tmp_path / "v9", config)

    # the working repository comes back from the git remote and grows on
    fleet2 = Fleet(tmp_path / "again")
    fleet2.store = LocalStore(tmp_path / "store2")
    fleet2.add_log("log-e", 2)
    fleet2.deliver("week-3", [Ann("log-e", 0, 500, 1, T0 + timedelta(days=14), [_box(0)])])
    r4 = _grow(fleet2, config)
    assert r4.version == 4 and any("cloned" in note for note in r4.recovered)
    assert r4.frames == len(expected_v3[0]) + 1


# ------------------------------------------------------------------------------------------ crash safety

# The killed grow is the real one with real git and DVC; only the labels suite is left out of it (its
# deliveries are all valid, and importing Great Expectations takes seconds per process on a busy machine).
_CRASHING_GROW = """
import json, sys
from pathlib import Path
from fleetloop.dataset.config import DatasetConfig
from fleetloop.dataset.growth import grow
from fleetloop.dataset.params import GrowParams
from fleetloop.store.objects import LocalStore
a = json.loads(sys.argv[1])
grow(LocalStore(Path(a["store"])), DatasetConfig.model_validate(a["config"]), GrowParams(), validate=lambda rows: {})
"""


def test_grow_killed_between_each_pair_of_steps_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path, str(tmp_path / "dvc-remote"))
    fleet = Fleet(tmp_path)
    fleet.add_log("log-a", 40, "rain", "night")
    fleet.add_log("log-b", 40, "clear", "day")
    fleet.deliver("week-1", [Ann("log-a", 0, 1, 1, T0, [_box(0)])])
    assert _grow(fleet, config).version == 1
    snapshots = {1: fleet.expected()}
    arg = json.dumps({"store": str(fleet.store.root), "config": config.model_dump(mode="json")})
    aid = 10
    for k, step in enumerate(STEPS):
        t = T0 + timedelta(hours=k + 1)
        anns = [Ann("log-b", k * 3 + j, aid + j, 1, t, [_box(j)] * (j % 2) ) for j in range(3)]
        anns.append(Ann("log-a", 0, 1, k + 2, t, [_box(k + 1, "pedestrian")]))  # a new revision each time
        aid += 3
        fleet.deliver("week-1" if k % 2 else "week-2", anns)
        proc = subprocess.run([sys.executable, "-c", _CRASHING_GROW, arg], env={**_env(), CRASH_ENV: step},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, (step, proc.stderr[-2000:])
        r = _grow(fleet, config)  # resumes or cleans up, then grows what is still unconsumed
        version = k + 2
        assert r.version == version, (step, r)
        assert r.recovered, step
        if STEPS.index(step) < STEPS.index("committed"):  # undone, then rebuilt from the unconsumed shards
            assert r.created and any("uncommitted" in note for note in r.recovered), (step, r.recovered)
        else:  # finished: tagged after re-verifying the push, or the tag pushed to the git remote
            assert not r.created and r.nothing_new, (step, r)
            assert any(("tagged" if step != "tagged" else "pushed") in note for note in r.recovered), r.recovered
        assert not Repo(config.repo_dir, config).dirty()
        snapshots[version] = fleet.expected()
        assert status(config).version == version and not status(config).pending
        assert sorted(h.version for h in history(config)) == list(range(1, version + 1))
    # every tag checks out from the remotes alone and holds exactly what was delivered up to it
    shutil.rmtree(config.repo_dir)
    for version, expected in snapshots.items():
        checkout(version, tmp_path / f"v{version}", config)
        assert _seen(*materialize(tmp_path / f"v{version}")) == expected, version


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != CRASH_ENV}


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture(name="cli_fleet")
def _cli_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Fleet, Path]]:
    """A fleet delivering into the store the CLI uses (``FLEETLOOP_HOME`` in ``tmp_path``, local
    store), and that home."""
    from fleetloop.settings import get_settings

    home = tmp_path / "home"
    monkeypatch.setenv("FLEETLOOP_HOME", str(home))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    get_settings.cache_clear()
    fleet = Fleet(tmp_path)
    fleet.store = LocalStore(home / "store")
    yield fleet, home
    get_settings.cache_clear()


def test_cli_grow_status_history_checkout(cli_fleet: tuple[Fleet, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fleetloop.cli.dataset import app

    fleet, home = cli_fleet
    fleet.add_log("log-a", 3)
    runner = CliRunner()
    empty = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert (empty["version"], empty["tag"], empty["repo"]) == (0, None, str(home.resolve() / "dataset"))
    none = runner.invoke(app, ["history"])  # before, an empty table and nothing said
    assert none.exit_code == 0 and "no version yet" in none.stdout and "fleetloop dataset grow" in none.stdout
    assert json.loads(runner.invoke(app, ["history", "--json"]).stdout) == []

    fleet.deliver("week-1", [Ann("log-a", i, i + 1, 1, T0, [_box(i)]) for i in range(3)])
    out = runner.invoke(app, ["grow", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["version"] == 1
    out = runner.invoke(app, ["grow"])
    assert out.exit_code == 0 and "nothing new (dataset-v1)" in out.stdout

    st = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert {k: st[k] for k in ("version", "tag", "frames", "objects")} == \
        {"version": 1, "tag": "dataset-v1", "frames": 3, "objects": 3}
    assert st["remote"] == str(home.resolve() / "dvc-remote") and set(st["splits"]) == {"train", "val", "test"}
    hist = json.loads(runner.invoke(app, ["history", "--json"]).stdout)
    assert [(h["version"], h["tag"], h["frames"], h["batches"], h["campaigns"]) for h in hist] == \
        [(1, "dataset-v1", 3, 1, ["week-1"])]

    out = runner.invoke(app, ["checkout", "1", "--to", str(tmp_path / "co"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) | {"tag": None} == {"ok": True, "version": 1, "frames": 3, "path": str(tmp_path / "co"),
                                                      "tag": None, "objects": 3, "batches": 1}
    out = runner.invoke(app, ["checkout", "1", "--to", str(tmp_path / "co")])
    assert out.exit_code == 2 and "not an empty directory" in out.output and "Traceback" not in out.output


def test_concurrent_grows_are_serialised(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    config = _config(tmp_path, str(tmp_path / "dvc-remote"))
    fleet = Fleet(tmp_path)
    fleet.add_log("log-a", 4)
    fleet.deliver("week-1", [Ann("log-a", i, i + 1, 1, T0, [_box(i)]) for i in range(4)])
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: _grow(fleet, config), range(3)))
    assert sorted(r.created for r in results) == [False, False, True]  # one version, the others see it
    assert {r.version for r in results} == {1} and status(config).frames == 4
