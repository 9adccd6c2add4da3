"""``fleetloop sample`` and ``fleetloop mine`` end to end, through the real CLI."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fleetloop.cli import app
from tests.unit.test_multistream import CALIB

runner = CliRunner()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


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


def test_mine_reads_params_yaml_mine_section_like_the_flow(sample_dir, tmp_path, monkeypatch):
    """Without --params, ``fleetloop mine`` uses params.yaml's mine: section (where ``mine
    calibrate`` writes); --params takes a whole params file or the mining params alone."""
    import json

    def scores(*extra: str) -> tuple[dict, list[float]]:
        out = tmp_path / "r.csv"
        res = runner.invoke(app, ["mine", str(sample_dir), "-f", "parquet", "-o", str(out), "--no-validate", "--json", *extra])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        return doc, [float(r["score"]) for r in read_csv(out)]

    monkeypatch.delenv("FLEETLOOP_PARAMS", raising=False)
    default_doc, default = scores()
    assert default_doc["params"].endswith("params.yaml")  # the repository's (the defaults, judging YOLOX-SORT)
    whole = tmp_path / "params.yaml"
    whole.write_text("mine:\n  cost_exponent: 1.0\ntrain:\n  epochs: 3\n")
    monkeypatch.setenv("FLEETLOOP_PARAMS", str(whole))
    doc, from_env = scores()
    assert doc["params"] == str(whole) and from_env != default
    monkeypatch.delenv("FLEETLOOP_PARAMS")
    alone = tmp_path / "mine.json"
    alone.write_text('{"cost_exponent": 1.0}')
    for file in (whole, alone):
        doc, given = scores("--params", str(file))
        assert doc["params"] == str(file) and given == from_env
    bad = tmp_path / "bad.yaml"
    bad.write_text("mine:\n  cost_exponent: [1]\n")
    res = runner.invoke(app, ["mine", str(sample_dir), "-f", "parquet", "--params", str(bad), "--json"])
    assert res.exit_code == 2 and "cost_exponent" in json.loads(res.stdout)["error"]


def _two_tracker_root(tmp_path):
    """A one-frame KITTI layout with both of KITTI's camera trackers (one car box each)."""
    root = tmp_path / "k"
    (root / "calib").mkdir(parents=True)
    (root / "calib" / "0000.txt").write_text(CALIB)
    for tracker in ("ciwt", "yolox_sort"):
        (root / "camera_trk" / tracker).mkdir(parents=True)
        (root / "camera_trk" / tracker / "0000.txt").write_text("0 1 Car -1 -1 -1 1 2 30 40 -1 -1 -1 -1 -1 -1 -1 0.5\n")
    return root


def test_mine_names_the_kitti_trackers_when_the_judged_one_is_missing(tmp_path):
    """A typo in --camera-tracker is an error naming the trackers there, not a silent fallback
    to another stream."""
    root = _two_tracker_root(tmp_path)
    res = runner.invoke(app, ["mine", str(root), "--camera-tracker", "yolo_sort", "-o", str(tmp_path / "r.csv")])
    assert res.exit_code == 2 and "yolo_sort" in res.output and "yolox_sort" in res.output
    assert not (tmp_path / "r.csv").exists()
    res = runner.invoke(app, ["mine", "calibrate", str(root), "--camera-tracker", "yolo_sort", "--dry-run"])
    assert res.exit_code == 2 and "yolox_sort" in res.output
    for name in ("yolox_sort", "camera:ciwt"):
        res = runner.invoke(app, ["mine", str(root), "--camera-tracker", name, "-o", str(tmp_path / "r.csv"), "-q"])
        assert res.exit_code == 0, res.output


def test_mine_judges_the_stream_params_yaml_names_and_says_which(tmp_path, monkeypatch):
    """params.yaml names the yardstick's judged tracker (YOLOX-SORT), so ``fleetloop mine`` on KITTI
    judges it without --camera-tracker; the summary says which stream was judged, and a run that
    names none among several trackers says that it took the first by name."""
    import json

    root = _two_tracker_root(tmp_path)
    monkeypatch.delenv("FLEETLOOP_PARAMS", raising=False)
    res = runner.invoke(app, ["mine", str(root), "-o", str(tmp_path / "r.csv"), "--no-validate", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["judged_camera"] == ["camera:yolox_sort"] and not any("first of" in s for s in doc["skipped"])
    res = runner.invoke(app, ["mine", str(root), "-o", str(tmp_path / "r.csv"), "--no-validate"])
    assert "judged camera stream: camera:yolox_sort" in res.output
    unnamed = tmp_path / "p.yaml"
    unnamed.write_text("camera_stream: null\n")
    res = runner.invoke(app, ["mine", str(root), "-o", str(tmp_path / "r.csv"), "--no-validate", "--json", "--params", str(unnamed)])
    doc = json.loads(res.stdout)
    assert doc["judged_camera"] == ["camera:ciwt"]
    assert any("judging camera:ciwt, the first of ['camera:ciwt', 'camera:yolox_sort'] by name" in s for s in doc["skipped"])


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
    assert all(r["sequence"] == r["log_id"] for r in rows)  # KITTI's column name, for the yardstick


@pytest.mark.kitti
def test_the_readme_mine_command_is_scored_by_the_yardstick_as_it_is(kitti_root, tmp_path, monkeypatch):
    """The README's plain command (params.yaml, no --camera-tracker) writes a CSV the yardstick's
    score.py reads without conversion, and it scores what benchmarks/README.md reports."""
    import subprocess
    import sys

    from benchmarks.mining_quality import YARDSTICK

    if not (YARDSTICK / "score.py").exists():
        pytest.skip("the yardstick (../shared/tools/kitti_eval) is not available")
    monkeypatch.delenv("FLEETLOOP_PARAMS", raising=False)
    out, truth = tmp_path / "ranked.csv", tmp_path / "truth.csv"
    res = runner.invoke(app, ["mine", str(kitti_root), "--format", "kitti-tracking", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    subprocess.run([sys.executable, str(YARDSTICK / "truth.py"), "--data", str(kitti_root), "--out", str(truth)],
                   check=True, capture_output=True)
    scored = subprocess.run([sys.executable, str(YARDSTICK / "score.py"), "--ranking", str(out), "--truth", str(truth),
                             "--min-lift", "3.0", "--min-clift", "2.2", "--at", "10%"], capture_output=True, text=True)
    assert scored.returncode == 0, scored.stdout + scored.stderr


def test_select_cost_takes_errors_per_unit_of_cost_until_the_budget():
    """Hand-computed: per unit of cost (1 + estimated objects) A = 3/1, B = 6/4, C = 2/2, D = 5/10."""
    import pyarrow as pa

    from fleetloop.mine.params import MiningParams
    from fleetloop.mine.ranking import select_cost

    p = MiningParams(diversity_window=0)
    errors, est = [3.0, 6.0, 2.0, 5.0], [0, 3, 1, 9]
    frames = pa.table({"log_id": ["A", "B", "C", "D"], "frame": pa.array([0, 0, 0, 0], pa.int32()),
                       "score": [e / (1 + n) ** p.cost_exponent for e, n in zip(errors, est, strict=True)],
                       "est_objects": pa.array(est, pa.int32())})
    picked = select_cost(frames, 7, p)
    assert picked.column("log_id").to_pylist() == ["A", "B", "C"]
    assert picked.column("cost").to_pylist() == [1.0, 4.0, 2.0] and picked.column("rank").to_pylist() == [1, 2, 3]
    assert select_cost(frames, 6, p).column("log_id").to_pylist() == ["A", "B"]  # C would overspend: stop
    assert select_cost(frames, 0.5, p).num_rows == 0
    with pytest.raises(ValueError, match="budget_cost must be > 0"):
        select_cost(frames, 0, p)
    # by frames (select) the big frames come first instead: B (score 4.24) before A (3.0)
    from fleetloop.mine.ranking import select

    assert select(frames, 2, p).column("log_id").to_pylist() == ["B", "A"]


def test_mine_with_budget_cost(sample_dir, tmp_path):
    out = tmp_path / "picked.csv"
    res = runner.invoke(app, ["mine", str(sample_dir), "-f", "parquet", "-o", str(out), "--budget-cost", "40",
                              "--no-validate"])
    assert res.exit_code == 0, res.output
    assert "cost budget 40" in res.output
    rows = read_csv(out)
    assert rows and sum(float(r["cost"]) for r in rows) <= 40
    assert all(float(r["cost"]) == 1 + int(r["est_objects"]) for r in rows)
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    res = runner.invoke(app, ["mine", str(sample_dir), "-f", "parquet", "-o", str(out), "--budget-cost", "40",
                              "--budget", "3"])
    assert res.exit_code == 2 and "not both" in res.output


@pytest.mark.kitti
def test_mine_calibrate_writes_fitted_severities_and_the_blind_spots(kitti_root, tmp_path):
    from fleetloop.params import load_params

    params_file = tmp_path / "params.yaml"
    res = runner.invoke(app, ["mine", "calibrate", str(kitti_root), "--camera-tracker", "yolox_sort", "--log", "0006",
                              "--log", "0010", "--params-file", str(params_file), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "errors no flag explains" in res.output and not params_file.exists()
    assert "…" not in res.stdout and "camera_miss " in res.stdout  # 80 columns: no name or number cut short
    res = runner.invoke(app, ["mine", "calibrate", str(kitti_root), "--camera-tracker", "yolox_sort", "--log", "0006",
                              "--log", "0010", "--params-file", str(params_file)])
    assert res.exit_code == 0, res.output
    mine = load_params(params_file).mine
    assert mine.class_severities and mine.calibration is not None
    assert mine.calibration.labelled_frames == 270 + 294  # every frame of both sequences
    assert set(mine.calibration.unexplained_per_object) >= {"car"}
    assert all(v >= 0 for v in mine.calibration.unexplained_per_object.values())
    res = runner.invoke(app, ["mine", "calibrate", str(kitti_root), "--log", "0006", "--params-file",
                              str(tmp_path / "missing" / "params.yaml"), "--json"])
    assert res.exit_code == 1 and "calibrate failed" in res.stdout and "cannot write" in res.stdout


def test_mine_json_summary_names_quarantined_and_warned_logs(sample_dir, tmp_path):
    """``--json`` prints the run's summary for machines; a log with a validation warning (an
    inverted tracker box) is mined and named, a corrupt one is quarantined, both in the summary."""
    import json

    import pyarrow as pa

    src = tmp_path / "logs"
    shutil.copytree(sample_dir, src)
    tracks = pq.read_table(src / "sample-000" / "tracks.parquet")
    x1 = tracks["x1"].to_pylist()
    x2 = [x1[0] - 2.0, *tracks["x2"].to_pylist()[1:]]  # the first box inverted
    tracks = tracks.set_column(tracks.schema.get_field_index("x2"), tracks.schema.field("x2"),
                               pa.array(x2, tracks.schema.field("x2").type))
    pq.write_table(tracks, src / "sample-000" / "tracks.parquet")
    (src / "sample-001" / "frames.parquet").write_bytes(b"not parquet")
    out = tmp_path / "ranked.csv"
    res = runner.invoke(app, ["mine", str(src), "-f", "parquet", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["ok"] and summary["out"] == str(out) and summary["logs"] == 1 and summary["frames"] == 60
    assert list(summary["quarantined"]) == ["sample-001"] and "frames.parquet" in summary["quarantined"]["sample-001"]
    assert list(summary["warnings"]) == ["sample-000"]
    assert summary["warnings"]["sample-000"].startswith("tracks: 1 row fails")
    assert summary["warnings"]["sample-000"].endswith("(flagged invalid_box)")
    assert summary["validation"] == "great-expectations" and set(summary["cpu_seconds"]) >= {"load", "validate", "mine"}
    assert {r["log_id"] for r in read_csv(out)} == {"sample-000"}  # the warned log is mined

    res = runner.invoke(app, ["mine", str(src), "-f", "parquet", "-o", str(out)])  # the same, for people
    assert res.exit_code == 0 and "warning sample-000" in res.output and "quarantined sample-001" in res.output

    res = runner.invoke(app, ["mine", str(tmp_path / "nope"), "-o", str(out), "--json"])
    failed = json.loads(res.stdout)
    assert res.exit_code == 1 and failed["ok"] is False and "does not exist" in failed["error"]


def test_warnings_and_quarantines_for_people_are_grouped_by_reason_and_capped():
    """136 copies of KITTI's one inverted CIWT box are one line, not 136; more than ``most``
    distinct reasons end in a count (``--json`` keeps every log)."""
    from fleetloop.cli.mine import grouped

    same = {f"{k:04d}0006": "tracks: 1 row fails 'x2 > x1'" for k in range(136)}
    assert grouped(same, "warning", " (mined)") == [
        "  warning 136 logs (00000006, 00010006, 00020006, ...) (mined): tracks: 1 row fails 'x2 > x1'"]
    assert grouped({"a": "bad [x]"}, "quarantined", "") == ["  quarantined a: bad \\[x]"]  # literal, not markup
    many = {f"log{k}": f"reason {k}" for k in range(12)} | {"log12": "reason 0"}
    lines = grouped(many, "quarantined", "", most=10)
    assert len(lines) == 11 and lines[0] == "  quarantined 2 logs (log0, log12): reason 0"
    assert lines[-1] == "  quarantined ... and 2 more logs for 2 other reasons (--json lists every log)"
