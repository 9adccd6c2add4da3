"""``fleetloop mine calibrate`` and the weekly recalibration misused as users do: a params file's
comments and other sections survive, a rerun changes nothing but the fit's time, nothing to fit on
writes nothing, unused logs and labels are named, the file's camera stream is checked, a link is
written through, and the output says which values change and why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from fleetloop.cli import app

runner = CliRunner()
SOURCES = ("calib", "label_02", "lidar_det/pointrcnn", "camera_trk/ciwt", "camera_trk/yolox_sort")


def _copy(kitti_root: Path, dest: Path, *seqs: str) -> Path:
    for src in SOURCES:
        (dest / src).mkdir(parents=True)
        for seq in seqs:
            shutil.copy(kitti_root / src / f"{seq}.txt", dest / src / f"{seq}.txt")
    lines = [line for line in (kitti_root / "seqmap.txt").read_text().splitlines() if line.split()[0] in seqs]
    (dest / "seqmap.txt").write_text("\n".join(lines) + "\n")
    return dest


PARAMS = """# my header
mine:
  camera_stream: yolox_sort   # the yardstick's stream
  # lower for the rainy fleet
  lidar_score_threshold: 0.9
  class_severities: {}   # filled by calibrate
drift:
  threshold: 0.2  # tuned by hand
# the train section
train:
  epochs: 3
"""


@pytest.mark.kitti
def test_calibrate_keeps_comments_and_other_sections_and_a_rerun_changes_only_the_time(kitti_root, tmp_path):
    from fleetloop.params import load_params

    root = _copy(kitti_root, tmp_path / "k", "0012")
    p = tmp_path / "params.yaml"
    p.write_text(PARAMS)
    res = runner.invoke(app, ["mine", "calibrate", str(root), "--params-file", str(p), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["whole_file"] is False and set(doc["written_keys"]) == {"class_severities", "calibration"}
    text = p.read_text()
    kept = [line for line in PARAMS.splitlines() if "class_severities" not in line]
    assert [line for line in text.splitlines() if line in kept] == kept  # every other line, in order
    loop = load_params(p)
    assert loop.drift.threshold == 0.2 and loop.train.epochs == 3 and loop.mine.lidar_score_threshold == 0.9
    assert loop.mine.class_severities and loop.mine.calibration is not None
    res = runner.invoke(app, ["mine", "calibrate", str(root), "--params-file", str(p), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["changes"] == []
    diff = [(a, b) for a, b in zip(text.splitlines(), p.read_text().splitlines(), strict=True) if a != b]
    assert all("fitted_at" in a for a, _ in diff)


@pytest.mark.kitti
def test_calibrate_with_no_label_on_any_frame_fails_and_writes_nothing(kitti_root, tmp_path):
    root = _copy(kitti_root, tmp_path / "k", "0006", "0012")
    (root / "label_02" / "0012.txt").write_text("")  # a sequence with no labels at all
    p = tmp_path / "params.yaml"
    p.write_text(PARAMS.replace("{}", "{lidar_only: {car: 0.55}}"))  # an earlier fit, not to be wiped
    before = p.read_bytes()
    res = runner.invoke(app, ["mine", "calibrate", str(root), "--log", "0012", "--params-file", str(p), "--json"])
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and "no label on any frame" in doc["error"] and "nothing written" in doc["error"]
    assert p.read_bytes() == before
    # labels that only name frames the log does not have: the same, and said so
    shifted = root / "label_02" / "0006.txt"
    shifted.write_text("".join(f"{int(line.split()[0]) + 1000} {line.split(' ', 1)[1]}"
                               for line in shifted.read_text().splitlines(keepends=True)))
    res = runner.invoke(app, ["mine", "calibrate", str(root), "--log", "0006", "--params-file", str(p)])
    assert res.exit_code == 1 and "name frames the logs do not have (e.g. 0006 frame 1000" in res.stderr
    assert "Traceback" not in res.output and p.read_bytes() == before


@pytest.mark.kitti
def test_calibrate_names_the_logs_and_labels_it_does_not_use_and_what_changes(kitti_root, tmp_path):
    root = _copy(kitti_root, tmp_path / "k", "0006", "0012")
    (root / "label_02" / "0012.txt").unlink()  # label file missing
    with (root / "label_02" / "0006.txt").open("a") as f:  # a label of a frame that does not exist
        f.write("5000 99 Car 0 0 0 100 100 200 200 1.5 1.6 4 1 1.5 10 0\n")
    p = tmp_path / "params.yaml"
    p.write_text("mine:\n  camera_stream: yolox_sort\n  class_severities:\n    invalid_box:\n      cyclist: 0.2\n")
    res = runner.invoke(app, ["mine", "calibrate", str(root), "--params-file", str(p), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["labelled_logs"] == ["0006"] and doc["unlabelled_logs"] == ["0012"] and doc["unmatched_labels"] == 1
    assert doc["judged_camera"] == "camera:yolox_sort"
    back = [c for c in doc["changes"] if (c["reason"], c["class"]) == ("invalid_box", "cyclist")]
    assert back == [{"reason": "invalid_box", "class": "cyclist", "was": 0.2, "now": 0.9,
                     "why": "not flagged on these labels: the default"}]
    assert all(c["why"] == "fitted" for c in doc["changes"] if c is not back[0])
    res = runner.invoke(app, ["mine", "calibrate", str(root), "--params-file", str(p), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "not used (no label on any of their frames" in res.stderr and "0012" in res.stderr
    assert "1 label row(s) name frames the logs do not have (e.g. 0006 frame 5000)" in res.stderr
    assert f"severities that would change from {p}:" in res.stderr
    assert "invalid_box cyclist: 0.2 -> 0.9 (not flagged on these labels: the default)" in res.stderr
    assert "judged camera stream: camera:yolox_sort" in res.stderr


@pytest.mark.kitti
def test_calibrate_refuses_a_params_file_stream_that_is_not_in_the_layout(kitti_root, tmp_path):
    root = _copy(kitti_root, tmp_path / "k", "0012")
    p = tmp_path / "params.yaml"
    p.write_text("mine:\n  camera_stream: yolo_sort\n")
    res = runner.invoke(app, ["mine", "calibrate", str(root), "--params-file", str(p), "--json"])
    assert res.exit_code == 2, res.output
    error = json.loads(res.stdout)["error"]
    assert "mine.camera_stream 'yolo_sort'" in error and "yolox_sort" in error and "--camera-tracker" in error
    assert p.read_text() == "mine:\n  camera_stream: yolo_sort\n"
    res = runner.invoke(app, ["mine", "calibrate", str(root), "--params-file", str(p), "--camera-tracker", "ciwt",
                              "--dry-run", "--json"])
    assert res.exit_code == 0, res.output  # the option overrides the file's name


@pytest.mark.kitti
def test_calibrate_writes_through_a_link_to_the_params_file(kitti_root, tmp_path):
    from fleetloop.params import load_params

    root = _copy(kitti_root, tmp_path / "k", "0012")
    (tmp_path / "conf").mkdir()
    real = tmp_path / "conf" / "prod.yaml"
    real.write_text(PARAMS)
    link = tmp_path / "params.yaml"
    link.symlink_to(real)
    res = runner.invoke(app, ["mine", "calibrate", str(root), "--params-file", str(link)])
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert load_params(real).mine.class_severities and "# the train section" in real.read_text()


# ---- the weekly recalibration, without a dataset repository: its version and labels given directly


def _store_with_a_log(tmp_path: Path):
    from fleetloop.schema import DriveLogs
    from fleetloop.sim.sample import generate_fleet
    from fleetloop.store.logs import put_log
    from fleetloop.store.objects import LocalStore

    logs, _, truth = generate_fleet(n_logs=1, n_frames=40, seed=3)
    store = LocalStore(tmp_path / "store")
    put_log(store, DriveLogs(**logs.tables()), source="test")
    return store, logs.log_ids[0], truth


def _version(monkeypatch, frames: pa.Table, labels: pa.Table, version: int = 4) -> None:
    import fleetloop.recalibrate as rc

    class _Manifest:
        pass

    m = _Manifest()
    m.version = version  # type: ignore[attr-defined]
    monkeypatch.setattr(rc, "latest_manifest", lambda config: m)
    monkeypatch.setattr(rc, "_version_labels", lambda config, v: (frames, labels))


LABEL_COLS = ["log_id", "frame", "cls", "x1", "y1", "x2", "y2"]


def test_recalibrate_on_a_version_without_labelled_frames_says_so(tmp_path, monkeypatch):
    from fleetloop.mine.params import MiningParams
    from fleetloop.recalibrate import recalibrate

    store, _, truth = _store_with_a_log(tmp_path)
    _version(monkeypatch, pa.table({"log_id": pa.array([], pa.string()), "frame": pa.array([], pa.int32())}),
             truth.select(LABEL_COLS).slice(0, 0))
    params = MiningParams()
    out = recalibrate(store, None, params)  # type: ignore[arg-type]
    assert not out.fitted and out.params == params and out.dataset_version == 4
    assert "has no labelled frame" in out.reason and "store" not in out.reason


def test_recalibrate_that_fits_nothing_keeps_the_input_params_and_counts_only_frames_the_logs_have(tmp_path,
                                                                                                   monkeypatch):
    from fleetloop.mine.params import MiningParams
    from fleetloop.recalibrate import recalibrate

    store, log_id, truth = _store_with_a_log(tmp_path)
    frames = pa.table({"log_id": [log_id, log_id], "frame": pa.array([0, 10_000], pa.int32())})  # one not in the log
    labels = truth.select(LABEL_COLS).filter(pc.and_(pc.equal(truth["log_id"], log_id), pc.equal(truth["frame"], 0)))
    _version(monkeypatch, frames, labels)
    params = MiningParams(class_severities={"lidar_only": {"car": 0.55}})  # an earlier fit (mine calibrate)
    out = recalibrate(store, None, params)  # type: ignore[arg-type]
    assert not out.fitted, out.reason
    assert out.params == params  # "fitted False: the input params, unchanged"
    assert "the params stay as they are" in out.reason
    assert out.labelled_frames == 1 and "1 labelled frames are not in their logs" in out.reason
