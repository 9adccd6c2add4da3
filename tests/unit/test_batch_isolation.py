"""One bad log never stops a batch, and an unwritable output is found before the work: ``fleetloop
mine --no-validate`` quarantines the logs the miner rejects, ``fleetloop mine calibrate`` and
``fleetloop drift`` load (and drift validates) each log on its own, and ``mine``, ``mine
calibrate`` and ``drift`` check where they will write before they load anything."""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fleetloop.cli import app
from tests.unit.test_query import _stocked_home  # noqa: F401 (fixture: home)

runner = CliRunner()


def _copy_log(root: Path, src: str, dst: str) -> Path:
    """``root/src`` copied to ``root/dst`` with its rows renamed to ``dst``."""
    d = root / dst
    d.mkdir()
    for f in (root / src).glob("*.parquet"):
        t = pq.read_table(f)
        t = t.set_column(t.schema.get_field_index("log_id"), "log_id", pa.array([dst] * t.num_rows, t.schema.field("log_id").type))
        pq.write_table(t, d / f.name)
    return d


def damaged_parquet(sample_dir: Path, tmp_path: Path) -> Path:
    """The two sample logs plus ``b-dupframes`` (frame 0 twice), ``b-nan`` (a NaN lidar x) and
    ``b-garbage`` (a tracks file that is not parquet)."""
    root = tmp_path / "logs"
    shutil.copytree(sample_dir, root)
    d = _copy_log(root, "sample-001", "b-dupframes")
    fr = pq.read_table(d / "frames.parquet")
    pq.write_table(pa.concat_tables([fr.slice(0, 1), fr]), d / "frames.parquet")
    d = _copy_log(root, "sample-001", "b-nan")
    det = pq.read_table(d / "lidar_detections.parquet")
    x = det.column("x").to_pylist()
    x[0] = float("nan")
    det = det.set_column(det.schema.get_field_index("x"), "x", pa.array(x, det.schema.field("x").type))
    pq.write_table(det, d / "lidar_detections.parquet")
    d = _copy_log(root, "sample-000", "b-garbage")
    (d / "tracks.parquet").write_bytes(b"not a parquet file")
    return root


def _rows(path: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="") as fh:
        return sorted((r["log_id"], r["frame"], r["score"]) for r in csv.DictReader(fh))


def test_mine_without_validation_quarantines_the_logs_the_miner_rejects(sample_dir, tmp_path):
    root = damaged_parquet(sample_dir, tmp_path)
    out = tmp_path / "ranked.csv"
    res = runner.invoke(app, ["mine", str(root), "-f", "parquet", "--no-validate", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] is True and doc["logs"] == 2 and doc["validation"] == "off"
    q = doc["quarantined"]
    assert set(q) == {"b-dupframes", "b-nan", "b-garbage"}
    assert "duplicate frame 0 in log b-dupframes" in q["b-dupframes"]
    assert "not a finite number" in q["b-nan"]
    # the good logs are mined as they are alone (the shard's fallback mines them one by one)
    alone = tmp_path / "alone.csv"
    res = runner.invoke(app, ["mine", str(sample_dir), "-f", "parquet", "--no-validate", "--out", str(alone)])
    assert res.exit_code == 0, res.output
    assert _rows(out) == _rows(alone)
    # people get the same: a line per quarantined log, exit 0
    res = runner.invoke(app, ["mine", str(root), "-f", "parquet", "--no-validate", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "quarantined b-dupframes: frames: duplicate frame 0" in res.stderr


def test_mine_without_validation_fails_clearly_when_every_log_is_rejected(sample_dir, tmp_path):
    root = damaged_parquet(sample_dir, tmp_path)
    res = runner.invoke(app, ["mine", str(root), "-f", "parquet", "--no-validate", "--out", str(tmp_path / "x.csv"),
                              "--log", "b-dupframes", "--log", "b-nan"])
    assert res.exit_code == 1
    assert "no logs to mine: all 2 logs were quarantined" in res.stderr
    assert not (tmp_path / "x.csv").exists()


def test_drift_leaves_out_unparseable_and_invalid_logs(sample_dir, tmp_path):
    root = damaged_parquet(sample_dir, tmp_path)
    out = tmp_path / "drift"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = runner.invoke(app, ["drift", str(root), str(root), "-f", "parquet", "-r", "sample-001,b-garbage",
                                  "-c", "sample-000,b-nan", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] is True
    assert set(doc["quarantined"]["reference"]) == {"b-garbage"}
    assert "tracks.parquet" in doc["quarantined"]["reference"]["b-garbage"]
    assert set(doc["quarantined"]["current"]) == {"b-nan"}
    assert "NaN" in doc["quarantined"]["current"]["b-nan"]
    assert doc["reference_rows"] == 60 and doc["current_rows"] == 60  # only the good logs compared
    # the NaN log never reached the features, and numpy's noise (Evidently correlating a constant
    # column of a small window) stays off stderr
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert "quarantined (current) b-nan" in res.stderr
    # a window left with no log is an error, with the reasons
    res = runner.invoke(app, ["drift", str(root), str(root), "-f", "parquet", "-r", "sample-001",
                              "-c", "b-nan,b-dupframes", "--out", str(tmp_path / "drift2")])
    assert res.exit_code == 1
    assert "drift failed: current window" in res.stderr and "all 2 quarantined" in res.stderr
    # a requested log that is not there is an error, not a skip
    res = runner.invoke(app, ["drift", str(root), str(root), "-f", "parquet", "-r", "sample-001",
                              "-c", "nope", "--out", str(tmp_path / "drift3")])
    assert res.exit_code == 1 and "no log 'nope' here" in res.stderr


def test_drift_out_that_is_a_file_is_a_clear_error_before_loading(tmp_path):
    afile = tmp_path / "report"
    afile.write_text("x")
    for args in ([], ["--json"]):
        res = runner.invoke(app, ["drift", str(tmp_path / "nope"), str(tmp_path / "nope"), "--out", str(afile), *args])
        assert res.exit_code == 1, res.output
        assert isinstance(res.exception, SystemExit)
        assert f"drift failed: --out {afile}: cannot write: {afile} exists and is not a directory" in res.stderr
    res = runner.invoke(app, ["drift", str(tmp_path / "nope"), str(tmp_path / "nope"), "--out", str(afile / "sub")])
    assert res.exit_code == 1 and "is not a directory" in res.stderr


@pytest.fixture
def unwritable(monkeypatch, tmp_path):
    """A directory that refuses new files (as a read-only mount would, even for root)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if Path(kwargs.get("dir") or ".").resolve() == ro.resolve():
            raise PermissionError(13, "Permission denied", str(ro))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return ro


def _no_work(monkeypatch):
    import fleetloop.mine.calibrate
    import fleetloop.mine_files

    def boom(*args, **kwargs):
        raise AssertionError("the work ran before the output was checked")

    monkeypatch.setattr(fleetloop.mine_files, "mine_files", boom)
    monkeypatch.setattr(fleetloop.mine.calibrate, "calibrate", boom)


def test_mine_checks_the_output_directory_before_mining(sample_dir, tmp_path, monkeypatch, unwritable):
    _no_work(monkeypatch)
    res = runner.invoke(app, ["mine", str(sample_dir), "-f", "parquet", "--out", str(unwritable / "x.csv"), "--json"])
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit)
    error = json.loads(res.stdout)["error"]
    assert error.startswith(f"mine failed: --out {unwritable / 'x.csv'}: cannot write: directory {unwritable} is not writable")
    res = runner.invoke(app, ["drift", str(sample_dir), str(sample_dir), "-f", "parquet", "--out", str(unwritable / "d")])
    assert res.exit_code == 1 and "not writable" in res.stderr and not (unwritable / "d").exists()


def test_mine_calibrate_checks_the_params_file_directory_first(tmp_path, monkeypatch, unwritable):
    _no_work(monkeypatch)
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["mine", "calibrate", str(empty), "--params-file", str(tmp_path / "missing" / "p.yaml")])
    assert res.exit_code == 1
    assert f"calibrate failed: --params-file {tmp_path / 'missing' / 'p.yaml'}: cannot write: directory " \
           f"{tmp_path / 'missing'} does not exist" in res.stderr
    res = runner.invoke(app, ["mine", "calibrate", str(empty), "--params-file", str(unwritable / "p.yaml"), "--json"])
    assert res.exit_code == 1 and "is not writable" in json.loads(res.stdout)["error"]


def test_mine_from_store_checks_out_before_mining_and_reports_write_errors(home, tmp_path, monkeypatch, unwritable):
    import fleetloop.mine.run

    def boom(*args, **kwargs):
        raise AssertionError("mined before --out was checked")

    with monkeypatch.context() as m:
        m.setattr(fleetloop.mine.run, "plan_mining", boom)
        for out, why in ((tmp_path / "nowhere" / "x.csv", "does not exist"), (tmp_path / "x.txt", "must end in .csv"),
                         (unwritable / "x.csv", "is not writable")):
            res = runner.invoke(app, ["mine", "--from-store", "--out", str(out), "--json"])
            assert res.exit_code == 1, res.output
            assert isinstance(res.exception, SystemExit)
            doc = json.loads(res.stdout)
            assert doc["ok"] is False and doc["error"].startswith(f"mine failed: --out {out}") and why in doc["error"]
    # a write that fails after the check (the disk filled up meanwhile) is the same one-line error
    import fleetloop.mine.files

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fleetloop.mine.files, "write_atomic", full)
    res = runner.invoke(app, ["mine", "--from-store", "--out", str(tmp_path / "x.csv"), "--json"])
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit)
    assert "No space left on device" in json.loads(res.stdout)["error"]


KITTI_SOURCES = ("calib", "label_02", "lidar_det/pointrcnn", "camera_trk/ciwt", "camera_trk/yolox_sort")


def kitti_with_a_bad_copy(kitti_root: Path, dest: Path, good: str = "0012", bad: str = "0101") -> Path:
    """KITTI sequence ``good`` plus a copy of it, ``bad``, whose calibration lacks P2."""
    for src in KITTI_SOURCES:
        (dest / src).mkdir(parents=True)
        for seq in (good, bad):
            shutil.copy(kitti_root / src / f"{good}.txt", dest / src / f"{seq}.txt")
    calib = dest / "calib" / f"{bad}.txt"
    calib.write_text("".join(line for line in calib.read_text().splitlines(keepends=True) if not line.startswith("P2")))
    seqmap = [line for line in (kitti_root / "seqmap.txt").read_text().splitlines() if line.startswith(good)]
    (dest / "seqmap.txt").write_text(f"{seqmap[0]}\n{seqmap[0].replace(good, bad, 1)}\n")
    return dest


@pytest.mark.kitti
def test_mine_calibrate_goes_on_without_the_log_that_does_not_load(kitti_root, tmp_path):
    root = kitti_with_a_bad_copy(kitti_root, tmp_path / "kitti")
    res = runner.invoke(app, ["mine", "calibrate", str(root), "--params-file", str(tmp_path / "p.yaml"), "--dry-run",
                              "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert list(doc["quarantined"]) == ["0101"] and "field 'P2': missing calibration entry" in doc["quarantined"]["0101"]
    assert doc["rows"]
    res = runner.invoke(app, ["mine", "calibrate", str(root), "--params-file", str(tmp_path / "p.yaml")])
    assert res.exit_code == 0, res.output
    assert "quarantined 0101 (not used):" in res.stderr and (tmp_path / "p.yaml").is_file()
    # a log id that is not there is still an error; no log that loads is an error
    res = runner.invoke(app, ["mine", "calibrate", str(root), "--log", "0999", "--dry-run"])
    assert res.exit_code == 1 and "logs not found: ['0999']" in res.stderr
    res = runner.invoke(app, ["mine", "calibrate", str(root), "--log", "0101", "--dry-run"])
    assert res.exit_code == 1 and "no labelled log loads" in res.stderr and "missing calibration entry" in res.stderr


@pytest.mark.kitti
def test_drift_of_kitti_goes_on_without_the_log_that_does_not_load(kitti_root, tmp_path):
    root = kitti_with_a_bad_copy(kitti_root, tmp_path / "kitti")
    res = runner.invoke(app, ["drift", str(root), str(kitti_root), "-c", "0010", "--out", str(tmp_path / "d"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert list(doc["quarantined"]["reference"]) == ["0101"] and doc["quarantined"]["current"] == {}
    assert doc["reference_rows"] == 78  # sequence 0012 alone


def test_mine_from_store_leaves_out_a_damaged_log_naming_it_and_a_rerun_mines_it_once_repaired(home, tmp_path):
    """A stored log whose stream was deleted by hand used to fail the whole ``mine --from-store``
    run (and the mine flow) with a LogIntegrityError; a foreign object where a manifest belongs
    failed the listing. Now each is named, the other logs are mined, and the run is not marked
    done: once the log is repaired, the same command mines it."""
    from fleetloop.settings import get_settings
    from fleetloop.store.logs import get_manifest
    from fleetloop.store.objects import get_store

    st = get_store(get_settings())
    stream = f"logs/tue-9-rain/{get_manifest(st, 'tue-9-rain').sha256}/tracks.parquet"
    saved = st.get_bytes(stream)
    st.delete(stream)  # a stream deleted by hand
    st.put_bytes("logs/foreign/manifest.json", b"not a manifest")
    st.put_bytes("index/arrivals/20250305T000000.000000Z_foreign.json", b"{}")
    out = tmp_path / "all.csv"
    res = runner.invoke(app, ["mine", "--from-store", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert sorted(doc["unreadable"]) == ["foreign", "tue-9-rain"] and "tracks.parquet" in doc["unreadable"]["tue-9-rain"]
    with open(out, newline="") as fh:
        assert {r["log_id"] for r in csv.DictReader(fh)} == {"mon-7-dry", "tue-7-rain", "wed-7-fog"}
    assert "left out tue-9-rain" in res.stderr and "left out foreign" in res.stderr
    # repaired (the stream restored, the foreign objects removed): the same command mines it
    st.put_bytes(stream, saved)
    st.delete("logs/foreign/manifest.json")
    st.delete("index/arrivals/20250305T000000.000000Z_foreign.json")
    res = runner.invoke(app, ["mine", "--from-store", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["unreadable"] == {}
    with open(out, newline="") as fh:
        assert {r["log_id"] for r in csv.DictReader(fh)} == {"mon-7-dry", "tue-7-rain", "tue-9-rain", "wed-7-fog"}
