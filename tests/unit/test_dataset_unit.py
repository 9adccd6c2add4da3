"""The dataset's pure parts, without git or DVC: splits by log, config derivation, folding batches,
counts, label validation mapping, batch building from label shards."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetloop.dataset.batches import FRAME_SCHEMA, INDEX_SCHEMA, LABEL_SCHEMA, fold, frame_index, materialize
from fleetloop.dataset.build import ANNOTATIONS_META, _as_png, _invalid_rows, build_batch, list_label_shards
from fleetloop.dataset.config import dataset_config
from fleetloop.dataset.manifest import compute_counts
from fleetloop.dataset.params import GrowParams
from fleetloop.dataset.splits import SPLITS, split_of, split_position
from fleetloop.schema import LABELS
from fleetloop.settings import S3Settings, Settings, StorageSettings
from fleetloop.store.objects import LocalStore

RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}
T0 = datetime(2026, 6, 1, tzinfo=UTC)


# ------------------------------------------------------------------------------------------ splits


@given(st.text(min_size=1, max_size=60))
@settings(max_examples=200, deadline=None)
def test_split_is_a_stable_function_of_the_log_id(log_id: str) -> None:
    s = split_of(log_id, RATIOS)
    assert s in SPLITS and s == split_of(log_id, dict(RATIOS))
    assert 0.0 <= split_position(log_id) < 1.0
    u = split_position(log_id)
    assert s == ("train" if u < 0.7 else "val" if u < 0.85 else "test")


def test_split_shares_follow_the_ratios_and_empty_splits_get_nothing() -> None:
    ids = [f"drive-{i:05d}" for i in range(20_000)]
    counts = {s: 0 for s in SPLITS}
    for i in ids:
        counts[split_of(i, RATIOS)] += 1
    for s, r in RATIOS.items():
        assert abs(counts[s] / len(ids) - r) < 0.015, counts
    only_train = {"train": 1.0, "val": 0.0, "test": 0.0}
    assert {split_of(i, only_train) for i in ids[:2000]} == {"train"}
    # the rule is pinned: changing it would move every log of every existing dataset
    assert split_position("log-a") == int.from_bytes(__import__("hashlib").sha256(b"log-a").digest()[:8], "big") / 2**64


# ------------------------------------------------------------------------------------------ config


def test_dataset_config_defaults_follow_the_storage_backend(tmp_path: Path) -> None:
    local = dataset_config(Settings(home=tmp_path))
    assert local.repo_dir == tmp_path.resolve() / "dataset"
    assert local.dvc_remote_url == str(tmp_path.resolve() / "dvc-remote")
    assert (local.git_remote, local.s3_endpoint_url) == (None, None)
    assert local.lock_file == tmp_path.resolve() / ".dataset.lock"

    s3 = Settings(home=tmp_path, storage=StorageSettings(
        backend="s3", s3=S3Settings(bucket="fleet", prefix="prod/", endpoint_url="http://127.0.0.1:9000")))
    c = dataset_config(s3)
    assert (c.dvc_remote_url, c.s3_endpoint_url, c.remote_is_s3) == ("s3://fleet/prod/dvc", "http://127.0.0.1:9000",
                                                                     True)
    bare = Settings(home=tmp_path, storage=StorageSettings(backend="s3", s3=S3Settings(bucket="b")))
    assert dataset_config(bare).dvc_remote_url == "s3://b/dvc"


def test_grow_params_rare_share() -> None:
    assert GrowParams().rare_share == 0.05
    with pytest.raises(ValueError):
        GrowParams(rare_share=2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_grow_params_refuse_split_ratios_that_are_not_finite(bad: float) -> None:
    # NaN compares false with everything: it passed the >= 0 and sum checks and reached manifest.json as null
    with pytest.raises(ValueError, match="finite"):
        GrowParams(splits={"train": bad, "val": 0.5, "test": 0.5})
    with pytest.raises(ValueError, match="finite"):
        GrowParams(splits={"train": 0.5, "val": bad, "test": 0.5})


def test_a_failing_commands_output_becomes_one_line_that_keeps_the_cause() -> None:
    from fleetloop.dataset.dvc import _tail

    out = "\n".join(["WARNING: Some of the cache files do not exist neither locally nor on remote. Missing cache files:",
                      *[f"md5: {i:032x}.dir" for i in range(25)],
                      "ERROR: failed to pull data from the cloud - Checkout failed for following targets:",
                      "data/batches/b00001", "Is your cache up to date?",
                      "<\x1b[36mhttps://error.dvc.org/missing-files\x1b[39m>"])
    line = _tail(out)
    assert "\n" not in line and "\x1b" not in line and len(line) < 1000
    assert line.startswith("ERROR: failed to pull data from the cloud - Checkout failed for following targets: "
                           "data/batches/b00001; WARNING: Some of the cache files")
    assert line.endswith("(+27 more lines)")
    assert _tail("fatal: repository 'x' does not exist\n") == "fatal: repository 'x' does not exist"
    assert _tail("hint: a\nerror: failed to push some refs to 'https://u:secret@h/r'\nhint: b") == \
        "error: failed to push some refs to 'https://***@h/r' (+2 more lines)"
    assert _tail("") == ""


def test_versions_are_listed_compactly() -> None:
    from fleetloop.dataset.versions import compact

    assert compact([1, *range(3, 29)]) == "1, 3..28"
    assert compact([1, 2, 4, 6, 7, 8]) == "1, 2, 4, 6..8"
    assert compact([5]) == "5" and compact([]) == ""


# ------------------------------------------------------------------------------------------ folding


def _frame(log_id: str, frame: int, status: str, objects: int, t: datetime, png: bytes | None = b"png") -> dict:
    return dict(log_id=log_id, frame=frame, split=split_of(log_id, RATIOS), status=status, objects=objects,
                weather="rain", time_of_day="night", vehicle="v", place="p", timestamp_ns=0, image_uri="x", width=8,
                height=6, campaign="c", task_id=1, annotation_id=1, revision=1, updated_at=t, annotator=None,
                image_png=png)


def _label(log_id: str, frame: int, cls: str, x1: float, t: datetime, aid: int = 1, rev: int = 1) -> dict:
    return dict(log_id=log_id, frame=frame, cls=cls, x1=x1, y1=1.0, x2=x1 + 5, y2=5.0, campaign="c", task_id=1,
                annotation_id=aid, annotator=None, updated_at=t, revision=rev, split=split_of(log_id, RATIOS))


def _write_batch(root: Path, n: int, frames: list[dict], labels: list[dict]) -> None:
    d = root / "data" / "batches" / f"b{n:05d}"
    d.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(frames, schema=FRAME_SCHEMA), d / "frames-00000.parquet")
    pq.write_table(pa.Table.from_pylist(labels, schema=LABEL_SCHEMA), d / "labels-00000.parquet")


def test_materialize_keeps_each_frame_once_with_its_latest_labels(tmp_path: Path) -> None:
    t1 = T0 + timedelta(days=1)
    _write_batch(tmp_path, 1, [_frame("a", 0, "labeled", 2, T0), _frame("a", 1, "labeled", 1, T0),
                               _frame("b", 0, "empty", 0, T0)],
                 [_label("a", 0, "car", 1, T0), _label("a", 0, "pedestrian", 2, T0), _label("a", 1, "car", 3, T0)])
    _write_batch(tmp_path, 2, [_frame("a", 0, "labeled", 1, t1, b"new"), _frame("a", 1, "unusable", 0, t1, None)],
                 [_label("a", 0, "cyclist", 9, t1, rev=2)])
    frames, labels = materialize(tmp_path)
    assert list(zip(frames["log_id"].to_pylist(), frames["frame"].to_pylist(), frames["batch"].to_pylist(),
                    strict=True)) == [("a", 0, 2), ("b", 0, 1)]
    assert frames["image_png"].to_pylist() == [b"new", b"png"]
    assert labels.select(["log_id", "frame", "cls", "revision", "batch"]).to_pylist() == [
        {"log_id": "a", "frame": 0, "cls": "cyclist", "revision": 2, "batch": 2}]
    lean, _ = materialize(tmp_path, images=False)
    assert "image_png" not in lean.column_names and lean.num_rows == 2
    imported, _ = materialize(tmp_path / "data", images=False)  # as `dvc import <repo> data` lays it out
    assert imported.equals(lean)
    empty_frames, empty_labels = materialize(tmp_path / "nothing")
    assert empty_frames.num_rows == 0 and empty_labels.num_rows == 0


def test_materialize_refuses_a_batch_whose_data_is_missing(tmp_path: Path) -> None:
    from fleetloop.dataset.config import DatasetError

    _write_batch(tmp_path, 1, [_frame("a", 0, "labeled", 1, T0)], [_label("a", 0, "car", 1, T0)])
    base = tmp_path / "data" / "batches"
    for n in (1, 2, 3):
        (base / f"b{n:05d}.dvc").write_text("outs: []\n")
    (base / "b00003").mkdir()  # a folder dvc pull left empty
    with pytest.raises(DatasetError, match=r"batches b00002, b00003 have a \.dvc file but no data"):
        materialize(tmp_path)
    with pytest.raises(DatasetError, match="b00002"):
        materialize(tmp_path / "data")


def test_counts_from_the_index_per_split_class_and_slice() -> None:
    frames = pa.Table.from_pylist([_frame("a", 0, "labeled", 2, T0), _frame("a", 1, "empty", 0, T0),
                                   _frame("b", 0, "labeled", 21, T0), _frame("b", 1, "unusable", 0, T0)],
                                  schema=FRAME_SCHEMA).drop_columns(["image_png"])
    frames = frames.set_column(frames.schema.get_field_index("weather"), "weather",
                               pa.array(["rain", "rain", None, "clear"]))
    frames = frames.append_column(pa.field("batch", pa.int32(), nullable=False), pa.array([1, 1, 1, 1], pa.int32()))
    labels = [_label("a", 0, "car", 1, T0), _label("a", 0, "traffic_cone", 2, T0)]
    labels += [_label("b", 0, "car", i, T0) for i in range(20)] + [_label("b", 0, "pedestrian", 1, T0)]
    lab = pa.Table.from_pylist(labels, schema=LABEL_SCHEMA)
    lab = lab.append_column(pa.field("batch", pa.int32(), nullable=False), pa.array([1] * lab.num_rows, pa.int32()))
    index = frame_index(frames, lab)
    assert index.schema == INDEX_SCHEMA and index["n_car"].to_pylist() == [1, 0, 20, 0]
    c = compute_counts(index, rare_share=0.05)
    assert (c["frames"], c["objects"], c["logs"]) == (3, 23, 2)  # the unusable frame does not count
    assert c["classes"]["car"].model_dump() == {"frames": 2, "objects": 21}
    assert c["rare_classes"] == ["pedestrian", "traffic_cone"]  # 1 of 23 objects each
    assert c["slices"]["weather=rain"].model_dump() == {"frames": 2, "objects": 2}
    assert c["slices"]["weather=unknown"].model_dump() == {"frames": 1, "objects": 21}
    assert c["slices"]["rare"].model_dump() == {"frames": 2, "objects": 2}
    assert sum(s.frames for s in c["splits"].values()) == 3
    assert compute_counts(INDEX_SCHEMA.empty_table(), 0.05)["frames"] == 0


def test_fold_keeps_the_highest_batch() -> None:
    t = pa.table({"log_id": ["a", "a", "b", "a"], "frame": pa.array([0, 0, 0, 1], pa.int32()),
                  "batch": pa.array([1, 3, 2, 2], pa.int32())})
    assert fold(t).to_pylist() == [{"log_id": "a", "frame": 0, "batch": 3}, {"log_id": "a", "frame": 1, "batch": 2},
                                   {"log_id": "b", "frame": 0, "batch": 2}]


# ------------------------------------------------------------------------------------------ validation mapping


def test_invalid_rows_map_per_log_positions_back_to_the_table() -> None:
    rows = pa.table({"log_id": ["a", "b", "a", "a", "b"]})
    fail = SimpleNamespace(rows=[1], unexpected_count=1, description="class is in fleetloop's taxonomy")
    bad, why = _invalid_rows(rows, {"a": SimpleNamespace(critical=[fail], warnings=[])})
    assert bad.tolist() == [False, False, True, False, False] and why == {2: ["class is in fleetloop's taxonomy"]}
    truncated = SimpleNamespace(rows=[0], unexpected_count=5, description="too many")
    bad, _ = _invalid_rows(rows, {"b": SimpleNamespace(critical=[truncated], warnings=[])})
    assert bad.tolist() == [False, True, False, False, True]  # more failures than listed: the whole log
    table_level = SimpleNamespace(rows=[], unexpected_count=0, description="columns")
    bad, _ = _invalid_rows(rows, {"<unknown>": SimpleNamespace(critical=[table_level], warnings=[])})
    assert bad.all()


def test_images_are_kept_as_png() -> None:
    from PIL import Image

    img = Image.fromarray(np.zeros((6, 9, 3), np.uint8))
    png, jpg = io.BytesIO(), io.BytesIO()
    img.save(png, format="PNG")
    img.save(jpg, format="JPEG")
    assert _as_png(png.getvalue()) == (png.getvalue(), 9, 6)
    data, w, h = _as_png(jpg.getvalue())
    assert data[:4] == b"\x89PNG" and (w, h) == (9, 6)


# ------------------------------------------------------------------------------------------ building a batch


def test_label_shard_contract_matches_the_labeling_sync() -> None:
    from fleetloop.label import sync

    assert sync.MANIFEST_KEY == ANNOTATIONS_META
    store = SimpleNamespace(list=lambda prefix: [sync._shard_key("week-1", 3), "labels/week-1/watermark.json"])
    assert list_label_shards(store) == ["labels/week-1/sync-000003.parquet"]


def _shard(store: LocalStore, campaign: str, n: int, anns: list[tuple]) -> str:
    """anns: (log_id, frame, annotation_id, revision, updated_at, classes, status)."""
    rows, entries = [], []
    for log_id, frame, aid, rev, t, classes, status in anns:
        rows += [dict(log_id=log_id, frame=frame, cls=c, x1=1.0, y1=1.0, x2=4.0, y2=4.0, campaign=campaign,
                      task_id=aid, annotation_id=aid, annotator=None, updated_at=t, revision=rev) for c in classes]
        entries.append(dict(annotation_id=aid, task_id=aid, updated_at=t.isoformat(), revision=rev, status=status,
                            boxes=len(classes), annotator=None, log_id=log_id, frame=frame))
    table = pa.Table.from_pylist(rows, schema=LABELS).replace_schema_metadata(
        {ANNOTATIONS_META: json.dumps(entries).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    key = f"labels/{campaign}/sync-{n:06d}.parquet"
    store.put_bytes(key, buf.getvalue())
    return key


def test_build_batch_takes_the_newest_word_per_frame(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    t1, t2 = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    keys = [
        _shard(store, "w1", 1, [("a", 0, 1, 1, T0, ["car"], "labeled"), ("a", 1, 2, 1, T0, ["car"], "labeled"),
                                ("a", 2, 3, 1, T0, [], "unusable")]),
        _shard(store, "w1", 2, [("a", 0, 1, 2, t2, ["cyclist", "car"], "labeled")]),
        # another campaign, same annotation id, older than w1's revision 2 of frame a/0
        _shard(store, "w2", 1, [("a", 0, 1, 1, t1, ["pedestrian"], "labeled"), ("b", 0, 9, 1, t1, [], "empty")]),
    ]
    # the dataset already holds frame a/1 labeled later than this delivery: stale
    index = pa.Table.from_pylist([dict(log_id="a", frame=1, batch=1, split="train", status="labeled", weather=None,
                                       time_of_day=None, updated_at=t2, revision=1, n_car=1, n_pedestrian=0,
                                       n_cyclist=0, n_traffic_cone=0)], schema=INDEX_SCHEMA)
    built = build_batch(store, keys, index, batch=2, ratios=RATIOS, with_images=True, validate=lambda rows: {})
    frames = built.frames.select(["log_id", "frame", "status", "campaign", "revision", "objects"]).to_pylist()
    assert frames == [
        {"log_id": "a", "frame": 0, "status": "labeled", "campaign": "w1", "revision": 2, "objects": 2},
        {"log_id": "b", "frame": 0, "status": "empty", "campaign": "w2", "revision": 1, "objects": 0},
    ]
    assert sorted(built.labels["cls"].to_pylist()) == ["car", "cyclist"]
    assert [p.kind for p in built.problems].count("stale") == 1
    assert {p.kind for p in built.problems} >= {"unknown_frame"}  # logs a and b are not in the store
    assert (built.negatives, built.removed, built.superseded, built.deliveries) == (1, 0, 0, 6)
    assert built.shard_deliveries == dict(zip(keys, [3, 1, 2], strict=True))
    assert built.campaigns == ["w1", "w2"]


def test_a_validator_that_only_returns_messages_is_bisected_to_the_failing_annotations(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    anns = [("a", i, i + 1, 1, T0, ["car", "truck" if i in (3, 11) else "car"], "labeled") for i in range(16)]
    keys = [_shard(store, "w1", 1, anns)]
    calls = []

    def messages(rows: pa.Table) -> list[str]:  # like fleetloop.ingest.validation.label_failures
        calls.append(rows.num_rows)
        bad = [c for c in rows["cls"].to_pylist() if c not in ("car", "pedestrian", "cyclist", "traffic_cone")]
        return [f"class is in fleetloop's taxonomy ({len(bad)} rows)"] if bad else []

    built = build_batch(store, keys, INDEX_SCHEMA.empty_table(), batch=1, ratios=RATIOS, with_images=False,
                        validate=messages)
    invalid = sorted(p.frame for p in built.problems if p.kind == "invalid_labels")
    assert invalid == [3, 11] and built.frames.num_rows == 14 and built.labels.num_rows == 28
    assert len(calls) < 16  # bisection, not one call per annotation
