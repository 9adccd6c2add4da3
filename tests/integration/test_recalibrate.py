"""The weekly cycle's calibration step (fleetloop.recalibrate) over a real dataset version (git +
DVC): the labelled frames come back from the version, their perception outputs from the store,
and the fit is the one `calibrate` gives on the same frames and labels."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from fleetloop.dataset import DatasetConfig, grow
from fleetloop.dataset.params import GrowParams
from fleetloop.ingest.validation import validate_labels
from fleetloop.mine.calibrate import calibrate
from fleetloop.mine.params import MiningParams
from fleetloop.recalibrate import recalibrate
from fleetloop.schema import LABELS, DriveLogs
from fleetloop.sim.sample import generate_fleet
from fleetloop.store.logs import put_log
from fleetloop.store.objects import LocalStore

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _dvc_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


def _deliver(store: LocalStore, campaign: str, truth: pa.Table, frames: list[tuple[str, int]]) -> None:
    """A label shard as `fleetloop label sync` writes it: the ground-truth boxes of ``frames``."""
    rows, manifest = [], []
    by_frame: dict[tuple[str, int], list[dict]] = {}
    for r in truth.to_pylist():
        by_frame.setdefault((r["log_id"], int(r["frame"])), []).append(r)
    for aid, (log_id, frame) in enumerate(frames, start=1):
        boxes = by_frame.get((log_id, frame), [])
        for b in boxes:
            rows.append(dict(log_id=log_id, frame=frame, cls=b["cls"], x1=b["x1"], y1=b["y1"], x2=b["x2"], y2=b["y2"],
                             campaign=campaign, task_id=aid * 10, annotation_id=aid, annotator="lab@x", updated_at=T0,
                             revision=1))
        manifest.append(dict(annotation_id=aid, task_id=aid * 10, updated_at=T0.isoformat(), revision=1,
                             status="labeled" if boxes else "empty", boxes=len(boxes), annotator="lab@x",
                             log_id=log_id, frame=frame))
    table = pa.Table.from_pylist(rows, schema=LABELS).replace_schema_metadata(
        {b"fleetloop_annotations": json.dumps(manifest).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.put_bytes(f"labels/{campaign}/sync-000001.parquet", buf.getvalue())


def test_the_cycle_calibrates_on_the_newest_dataset_version(tmp_path: Path) -> None:
    logs, _, truth = generate_fleet(n_logs=3, n_frames=60, seed=3)
    store = LocalStore(tmp_path / "store")
    for log_id in logs.log_ids:
        put_log(store, DriveLogs(**{n: t.filter(pc.equal(t["log_id"], log_id)) for n, t in logs.tables().items()}),
                source="test")
    config = DatasetConfig(repo_dir=tmp_path / "dataset", dvc_remote_url=str(tmp_path / "remote"),
                           command_timeout_s=300, lock_timeout_s=60)
    params = MiningParams()

    before = recalibrate(store, config, params)
    assert not before.fitted and before.reason == "no dataset version yet" and before.params == params

    labelled = [(log_id, f) for log_id in logs.log_ids[:2] for f in range(60)]  # two logs labelled, the third not
    _deliver(store, "fleetloop-2026-w23", truth, labelled)
    grown = grow(store, config, GrowParams(), validate=validate_labels)
    assert grown.version == 1

    out = recalibrate(store, config, params)
    assert out.fitted, out.reason
    assert out.dataset_version == 1 and out.labelled_frames == len(labelled) and out.logs == 2 and not out.missing_logs
    assert "dataset-v1" in out.params.calibration.source
    # the same fit as calibrate() on those frames and labels
    frames = pa.table({"log_id": [k for k, _ in labelled], "frame": pa.array([f for _, f in labelled], pa.int32())})
    two = DriveLogs(**{n: t.filter(pc.is_in(t["log_id"], value_set=pa.array(logs.log_ids[:2])))
                       for n, t in logs.tables().items()})
    direct = calibrate(two, truth.select(["log_id", "frame", "cls", "x1", "y1", "x2", "y2"]), params, labelled_frames=frames)
    assert out.params.class_severities == direct.params.class_severities
    assert out.table == direct.table.to_pylist()
    # the injected errors are real errors the labels show, and some flags were right about them
    assert sum(out.errors.values()) > 0 and any(r["errors"] > 0 for r in out.table)

    no = params.model_copy(update={"recalibrate": False})
    off = recalibrate(store, config, no)
    assert not off.fitted and off.params == no and "off" in off.reason
