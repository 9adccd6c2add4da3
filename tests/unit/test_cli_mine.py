"""``fleetloop sample`` and ``fleetloop mine`` end to end, through the real CLI."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fleetloop.cli import app

runner = CliRunner()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    res = runner.invoke(app, ["sample", str(out), "--logs", "2", "--frames", "60"])
    assert res.exit_code == 0, res.output
    return out


def test_sample_then_mine_every_frame_ranked(sample_dir, tmp_path):
    out = tmp_path / "ranked.csv"
    res = runner.invoke(app, ["mine", str(sample_dir), "--format", "parquet", "--out", str(out), "--no-validate"])
    assert res.exit_code == 0, res.output
    rows = read_csv(out)
    assert list(rows[0])[:4] == ["log_id", "frame", "score", "reasons"]
    assert len(rows) == 120  # every frame
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {r["log_id"] for r in rows} == {"sample-000", "sample-001"}
    assert all(r["frame"].isdigit() for r in rows)
    assert rows[0]["reasons"]  # the top frame says why


def test_mine_with_budget_writes_the_selection_as_parquet(sample_dir, tmp_path):
    out = tmp_path / "picked.parquet"
    res = runner.invoke(app, ["mine", str(sample_dir), "-f", "parquet", "-o", str(out), "--budget", "7", "--no-validate"])
    assert res.exit_code == 0, res.output
    t = pq.read_table(out)
    assert t.num_rows == 7
    assert t.column("rank").to_pylist() == list(range(1, 8))
    assert t.column_names[:4] == ["log_id", "frame", "score", "reasons"]


def test_mine_validates_and_quarantines_a_corrupt_log(sample_dir, tmp_path):
    src = tmp_path / "logs"
    shutil.copytree(sample_dir, src)
    (src / "sample-001" / "lidar_detections.parquet").write_bytes(b"not parquet")
    out = tmp_path / "ranked.csv"
    res = runner.invoke(app, ["mine", str(src), "-f", "parquet", "-o", str(out), "--shard-logs", "2"])
    assert res.exit_code == 0, res.output
    assert "quarantined sample-001" in res.output and "lidar_detections.parquet" in res.output
    assert "validation: great-expectations" in res.output
    assert {r["log_id"] for r in read_csv(out)} == {"sample-000"}


def test_mine_bad_arguments_are_clear_errors(sample_dir, tmp_path):
    res = runner.invoke(app, ["mine", str(sample_dir), "-f", "parquet", "-o", str(tmp_path / "x.json")])
    assert res.exit_code == 1 and "must end in .csv or .parquet" in res.output
    res = runner.invoke(app, ["mine", str(tmp_path / "nope"), "-o", str(tmp_path / "x.csv")])
    assert res.exit_code == 1 and "does not exist" in res.output
    res = runner.invoke(app, ["mine", str(sample_dir), "-f", "nope"])
    assert res.exit_code == 2
    bad = tmp_path / "p.json"
    bad.write_text('{"lidar_score_threshold": 3}')
    res = runner.invoke(app, ["mine", str(sample_dir), "-f", "parquet", "--params", str(bad)])
    assert res.exit_code == 2 and "lidar_score_threshold" in res.output


@pytest.mark.kitti
def test_mine_kitti_csv(kitti_root, tmp_path):
    out = tmp_path / "ranked.csv"
    res = runner.invoke(app, ["mine", str(kitti_root), "--format", "kitti-tracking", "--out", str(out), "--no-validate",
                              "--camera-tracker", "yolox_sort", "-q"])
    assert res.exit_code == 0, res.output
    rows = read_csv(out)
    assert len(rows) == 1479
    assert {r["log_id"] for r in rows} == {"0001", "0006", "0008", "0010", "0012"}
    assert float(rows[0]["score"]) >= float(rows[-1]["score"])
