"""Importers: the real KITTI slice (counts, alignment, geometry), the parquet round trip, and bad
input that must fail with an error naming the file, line and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from fleetloop.ingest.importers import FORMATS, LogFormatError, get_importer, load_logs, load_logs_isolated
from fleetloop.ingest.importers.kitti import KITTI_CLASSES, POINTRCNN_CLASSES, read_kitti_truth
from fleetloop.ingest.importers.parquet import write_parquet_log
from fleetloop.schema import CLASSES, STREAMS, DriveLogs
from tests.factory_logs import P2, make_logs, replace_values

# --------------------------------------------------------------------------- helpers


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def _project_corners(box: np.ndarray, P: np.ndarray, l2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 7) lidar boxes (x, y, z, l, w, h, yaw) -> (N, 4) unclipped pixel boxes and the
    smallest corner depth. Written here from the definitions in docs/schema.md, independently
    of the importer and of fleetloop.perception.geometry."""
    x, y, z, l, w, h, yaw = (box[:, i : i + 1] for i in range(7))  # noqa: E741
    sl = np.array([1, 1, 1, 1, -1, -1, -1, -1]) / 2
    sw = np.array([1, 1, -1, -1, 1, 1, -1, -1]) / 2
    sh = np.array([1, -1, 1, -1, 1, -1, 1, -1]) / 2
    c, s = np.cos(yaw), np.sin(yaw)
    cx = x + c * l * sl - s * w * sw
    cy = y + s * l * sl + c * w * sw
    cz = z + h * sh
    pts = np.stack([cx, cy, cz, np.ones_like(cx)], axis=-1)  # (N, 8, 4)
    cam = pts @ l2c.T  # (N, 8, 3)
    pix = np.concatenate([cam, np.ones((*cam.shape[:2], 1))], axis=-1) @ P.T
    u, v = pix[..., 0] / pix[..., 2], pix[..., 1] / pix[..., 2]
    return np.stack([u.min(1), v.min(1), u.max(1), v.max(1)], axis=1), cam[..., 2].min(1)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


CALIB_TEXT = (
    "P0: " + " ".join(map(str, P2)) + "\n"
    "P2: " + " ".join(map(str, P2)) + "\n"
    "R0_rect: 1 0 0 0 1 0 0 0 1\n"
    "Tr_velo_to_cam: 0 -1 0 0 0 0 -1 -0.08 1 0 0 -0.27\n"
)
POINTRCNN_TEXT = (
    "0,2,700.0,170.0,800.0,250.0,9.5,1.5,1.6,3.9,1.0,1.6,20.0,-1.57,-1.6\n"
    "1,1,300.0,160.0,330.0,230.0,2.0,1.7,0.6,0.8,-4.0,1.7,15.0,0.1,0.2\n"
    "2,3,500.0,165.0,540.0,240.0,-0.5,1.7,0.6,1.8,-2.0,1.7,18.0,1.5,1.4\n"
)
CIWT_TEXT = (
    "1 0 Car -1 -1 -1.8 360.7 196.7 446.1 252.5 1.6 1.6 4.0 -5.8 2.2 20.4 -10 0.56\n"
    "2 0 Car -1 -1 -1.8 361.7 196.7 447.1 252.5 1.6 1.6 4.0 -5.8 2.2 20.4 -10 0.87\n"
    "2 1 Pedestrian -1 -1 -1.8 100.0 150.0 130.0 230.0 1.7 0.6 0.8 -5.8 2.2 20.4 -10 3.0\n"
    "2 -1 DontCare -1 -1 -10 10.0 10.0 20.0 20.0 -1 -1 -1 -1 -1 -1 -10 -1\n"
)


@pytest.fixture()
def tiny_kitti(tmp_path: Path) -> Path:
    """A small valid KITTI tracking layout with two sequences, written by the test."""
    root = tmp_path / "kitti"
    _write(root / "seqmap.txt", "0000 empty 000000 000005\n0001 empty 000000 000004\n")
    for seq in ("0000", "0001"):
        _write(root / "calib" / f"{seq}.txt", CALIB_TEXT)
        _write(root / "lidar_det" / "pointrcnn" / f"{seq}.txt", POINTRCNN_TEXT)
        _write(root / "camera_trk" / "ciwt" / f"{seq}.txt", CIWT_TEXT)
    return root


# --------------------------------------------------------------------------- the real KITTI slice


@pytest.fixture(scope="module")
def kitti_logs(kitti_root: Path) -> DriveLogs:
    return load_logs(kitti_root, "kitti-tracking")


@pytest.mark.kitti
def test_kitti_counts_per_stream(kitti_root: Path, kitti_logs: DriveLogs) -> None:
    seqmap = {ln.split()[0]: int(ln.split()[3]) for ln in _lines(kitti_root / "seqmap.txt")}
    assert sorted(kitti_logs.log_ids) == sorted(seqmap)
    per_log = lambda t: {r["values"]: r["counts"] for r in pc.value_counts(t["log_id"]).to_pylist()}  # noqa: E731
    assert per_log(kitti_logs.frames) == seqmap
    lidar = {s: len(_lines(kitti_root / "lidar_det" / "pointrcnn" / f"{s}.txt")) for s in seqmap}
    assert per_log(kitti_logs.lidar_detections) == lidar
    # every camera tracker is its own stream, named in the sensor column
    assert sorted(pc.unique(kitti_logs.tracks["sensor"]).to_pylist()) == ["camera:ciwt", "camera:yolox_sort"]
    for tracker in ("ciwt", "yolox_sort"):
        want = {s: sum(ln.split()[2] in KITTI_CLASSES for ln in _lines(kitti_root / "camera_trk" / tracker / f"{s}.txt"))
                for s in seqmap}
        t = kitti_logs.tracks.filter(pc.equal(kitti_logs.tracks["sensor"], f"camera:{tracker}"))
        assert per_log(t) == want, tracker
    assert kitti_logs.camera_detections.num_rows == 0  # the slice has no per-frame camera detections
    assert kitti_logs.calibration.num_rows == len(seqmap)
    for name, schema in STREAMS.items():
        assert getattr(kitti_logs, name).schema.equals(schema), name


@pytest.mark.kitti
def test_kitti_frames_aligned_and_classes_mapped(kitti_root: Path, kitti_logs: DriveLogs) -> None:
    frames = kitti_logs.frames.to_pandas()
    for log_id, g in frames.groupby("log_id"):
        assert (g["frame"].to_numpy() == np.arange(len(g))).all(), log_id
        assert (np.diff(g["timestamp_ns"].to_numpy()) == 100_000_000).all()
    n = frames.groupby("log_id").size()
    for name in ("lidar_detections", "tracks"):
        t = getattr(kitti_logs, name).to_pandas()
        assert (t["frame"] >= 0).all() and (t["frame"].to_numpy() < n.loc[t["log_id"]].to_numpy()).all(), name
        assert set(t["cls"]) <= set(CLASSES)
    # the lidar file's first rows, line for line (frame, class code, sigmoid of the score)
    raw = [ln.split(",") for ln in _lines(kitti_root / "lidar_det" / "pointrcnn" / "0001.txt")[:50]]
    lid = kitti_logs.lidar_detections.filter(pc.equal(kitti_logs.lidar_detections["log_id"], "0001")).slice(0, 50)
    assert lid["frame"].to_pylist() == [int(r[0]) for r in raw]
    assert lid["cls"].to_pylist() == [POINTRCNN_CLASSES[int(r[1])] for r in raw]
    np.testing.assert_allclose(lid["score"].to_numpy(), 1 / (1 + np.exp(-np.array([float(r[6]) for r in raw]))), rtol=1e-6)
    # CIWT carries confidences (c / (c + 1)); YOLOX-SORT none
    assert pc.min(kitti_logs.tracks["score"]).as_py() > 0 and pc.max(kitti_logs.tracks["score"]).as_py() < 1
    yolox = load_logs(kitti_root, "kitti-tracking", camera_tracker="yolox_sort")
    assert yolox.tracks.num_rows > 0 and yolox.tracks["score"].null_count == yolox.tracks.num_rows


@pytest.mark.kitti
def test_kitti_lidar_boxes_project_onto_their_2d_columns(kitti_root: Path, kitti_logs: DriveLogs) -> None:
    """PointRCNN's 2D columns are the P2 projection of its 3D box clipped to the image: the
    importer's lidar-frame boxes, projected back with the stored calibration, must reproduce them."""
    errors = []
    for cal in kitti_logs.calibration.to_pylist():
        log_id = cal["log_id"]
        raw = np.array([[float(v) for v in ln.split(",")] for ln in _lines(kitti_root / "lidar_det" / "pointrcnn" / f"{log_id}.txt")])
        raw = raw[np.argsort(raw[:, 0], kind="stable")]
        lid = kitti_logs.lidar_detections.filter(pc.equal(kitti_logs.lidar_detections["log_id"], log_id))
        box = np.stack([lid[c].to_numpy().astype(np.float64) for c in ("x", "y", "z", "l", "w", "h", "yaw")], axis=1)
        P, l2c = np.array(cal["P"]).reshape(3, 4), np.array(cal["lidar_to_cam"]).reshape(3, 4)
        proj, depth = _project_corners(box, P, l2c)
        W, H = cal["image_width"], cal["image_height"]
        clipped = np.stack([np.clip(proj[:, 0], 0, W - 1), np.clip(proj[:, 1], 0, H - 1),
                            np.clip(proj[:, 2], 0, W - 1), np.clip(proj[:, 3], 0, H - 1)], axis=1)
        front = depth > 0.5
        assert front.mean() > 0.9
        errors.append(np.abs(clipped[front] - raw[front, 2:6]).ravel())
    err = np.concatenate(errors)  # measured: median 0.19 px, 90th percentile 0.6 px
    assert np.median(err) < 0.5, np.median(err)
    assert np.percentile(err, 90) < 1.5, np.percentile(err, 90)


@pytest.mark.kitti
def test_kitti_lidar_boxes_with_the_mining_geometry(kitti_root: Path, kitti_logs: DriveLogs) -> None:
    """The same round trip through fleetloop.perception.geometry, which the miner uses: importer and
    geometry agree on the conventions."""
    geometry = pytest.importorskip("fleetloop.perception.geometry")
    cal = kitti_logs.calibration.to_pylist()[1]
    raw = np.array([[float(v) for v in ln.split(",")] for ln in _lines(kitti_root / "lidar_det" / "pointrcnn" / f"{cal['log_id']}.txt")])
    raw = raw[np.argsort(raw[:, 0], kind="stable")]
    lid = kitti_logs.lidar_detections.filter(pc.equal(kitti_logs.lidar_detections["log_id"], cal["log_id"]))
    box = np.stack([lid[c].to_numpy().astype(np.float64) for c in ("x", "y", "z", "l", "w", "h", "yaw")], axis=1)
    M = geometry.projection_matrix(np.array(cal["P"]), np.array(cal["lidar_to_cam"]))
    box2d, depth, _ = geometry.project_boxes(box, M[None], np.array([cal["image_width"]]), np.array([cal["image_height"]]))
    front = depth > 2
    assert np.median(np.abs(box2d[front] - raw[front, 2:6])) < 0.5


@pytest.mark.kitti
def test_kitti_truth(kitti_root: Path) -> None:
    truth = read_kitti_truth(kitti_root)
    assert truth.num_rows == sum(len(_lines(p)) for p in (kitti_root / "label_02").glob("*.txt"))
    cls = truth.to_pandas()
    assert cls.loc[cls["kitti_type"] == "DontCare", "cls"].isna().all()
    assert set(cls["cls"].dropna()) <= set(CLASSES)


@pytest.mark.kitti
def test_kitti_parquet_round_trip_equal(kitti_logs: DriveLogs, tmp_path: Path) -> None:
    dirs = write_parquet_log(kitti_logs, tmp_path)
    assert sorted(d.name for d in dirs) == sorted(kitti_logs.log_ids)
    back = load_logs(tmp_path, "parquet")
    for name in STREAMS:
        assert back.tables()[name].equals(kitti_logs.tables()[name]), name
    one = load_logs(tmp_path / "0006", "parquet")  # a single log directory
    assert one.log_ids == ["0006"] and one.tracks.equals(kitti_logs.select(["0006"]).tracks)


# --------------------------------------------------------------------------- layouts written by the tests


def test_tiny_kitti_loads(tiny_kitti: Path) -> None:
    logs = load_logs(tiny_kitti, "kitti-tracking")
    assert logs.log_ids == ["0000", "0001"]
    assert logs.frames.num_rows == 9 and logs.lidar_detections.num_rows == 6
    assert logs.tracks.num_rows == 6  # DontCare dropped
    assert logs.tracks["cls"].to_pylist()[:3] == ["car", "car", "pedestrian"]
    np.testing.assert_allclose(logs.tracks["score"].to_numpy()[:3], [0.56 / 1.56, 0.87 / 1.87, 3 / 4], rtol=1e-6)
    # bottom-centre camera box (1.0, 1.6, 20.0), h 1.5 -> centre (1.0, 0.85, 20.0) in the camera
    # frame; this calibration maps lidar (X, Y, Z) to camera (-Y, -Z - 0.08, X - 0.27), so the
    # centre is lidar (20.0 + 0.27, -1.0, -0.85 - 0.08)
    row = logs.lidar_detections.slice(0, 1).to_pylist()[0]
    assert (row["x"], row["y"], row["z"]) == pytest.approx((20.27, -1.0, -0.93), abs=1e-4)
    assert row["yaw"] == pytest.approx(1.57 - np.pi / 2, abs=1e-5)


def test_parquet_round_trip_synthetic(tmp_path: Path) -> None:
    logs = make_logs(["a", "b", "c"])
    write_parquet_log(logs, tmp_path)
    back = load_logs(tmp_path, "parquet", ["a", "c"])
    assert back.log_ids == ["a", "c"]
    for name in STREAMS:
        assert back.tables()[name].equals(logs.select(["a", "c"]).tables()[name]), name


def test_parquet_nan_values_load_and_are_left_to_validation(tmp_path: Path) -> None:
    logs = replace_values(make_logs(["a"]), "lidar_detections", "x", "a", [3], float("nan"))
    write_parquet_log(logs, tmp_path)
    back = load_logs(tmp_path, "parquet")
    assert np.isnan(back.lidar_detections["x"].to_numpy()[3])


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown log format 'nuscenes'"):
        load_logs(".", "nuscenes")
    assert set(FORMATS) == {"kitti-tracking", "parquet"}
    assert get_importer("parquet").name == "parquet"


def test_missing_source_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_logs(tmp_path / "nope", "kitti-tracking")
    with pytest.raises(LogFormatError, match="no calib/ directory"):
        load_logs(tmp_path, "kitti-tracking")


def _error(root: Path, **kw) -> LogFormatError:
    with pytest.raises(LogFormatError) as info:
        load_logs(root, "kitti-tracking", **kw)
    return info.value


@pytest.mark.parametrize(
    ("line_no", "replacement", "field", "message"),
    [
        (2, "1,1,300.0,160.0,330.0,230.0,abc,1.7,0.6,0.8,-4.0,1.7,15.0,0.1,0.2", "score", "not a number: 'abc'"),
        (2, "1,1,300.0,160.0,330.0,230.0,2.0,1.7,0.6", "l", "expected at least 15 comma-separated fields, found 9"),
        (3, "2,3,500.0,165.0,540.0,240.0,-0.5,1.7,0.6,1.8,nan,1.7,18.0,1.5,1.4", "x", "not a finite number: 'nan'"),
        (3, "2,3,500.0,165.0,540.0,240.0,-0.5,1.7,inf,1.8,-2.0,1.7,18.0,1.5,1.4", "w", "not a finite number: 'inf'"),
        (1, "-1,2,700.0,170.0,800.0,250.0,9.5,1.5,1.6,3.9,1.0,1.6,20.0,-1.57,-1.6", "frame", "must not be negative"),
        (1, "0.5,2,700.0,170.0,800.0,250.0,9.5,1.5,1.6,3.9,1.0,1.6,20.0,-1.57,-1.6", "frame", "not an integer"),
        (2, "1,7,300.0,160.0,330.0,230.0,2.0,1.7,0.6,0.8,-4.0,1.7,15.0,0.1,0.2", "type", "unknown code '7'"),
        (2, "1,1,300.0,160.0,330.0,,2.0,1.7,0.6,0.8,-4.0,1.7,15.0,0.1,0.2", "y2", "not a number: ''"),
    ],
)
def test_corrupt_lidar_line_names_file_line_field(tiny_kitti: Path, line_no, replacement, field, message) -> None:
    path = tiny_kitti / "lidar_det" / "pointrcnn" / "0001.txt"
    lines = POINTRCNN_TEXT.splitlines()
    lines[line_no - 1] = replacement
    path.write_text("\n".join(lines) + "\n")
    err = _error(tiny_kitti)
    assert (err.path, err.line, err.field) == (str(path), line_no, field)
    assert message in str(err) and f"line {line_no}" in str(err) and str(path) in str(err)


@pytest.mark.parametrize(
    ("line_no", "replacement", "field", "message"),
    [
        (2, "2 0 Bus -1 -1 -1.8 361.7 196.7 447.1 252.5 1.6 1.6 4.0 -5.8 2.2 20.4 -10 0.87", "type", "unknown value 'Bus'"),
        (3, "2 1 Pedestrian -1 -1 -1.8 100.0 150.0 130.0", "y2", "expected at least 10 space-separated fields, found 9"),
        (3, "2 1 Pedestrian -1 -1 -1.8 100.0 150.0 130.0 230.0 1.7 0.6 0.8 -5.8 2.2 20.4 -10", "score",
         "expected 18 fields (as on most lines), found 17"),
        (1, "1 0.5 Car -1 -1 -1.8 360.7 196.7 446.1 252.5 1.6 1.6 4.0 -5.8 2.2 20.4 -10 0.56", "track_id", "not an integer"),
        (1, "1 0 Car -1 -1 -1.8 360.7 NaN 446.1 252.5 1.6 1.6 4.0 -5.8 2.2 20.4 -10 0.56", "y1", "not a finite number"),
    ],
)
def test_corrupt_tracker_line_names_file_line_field(tiny_kitti: Path, line_no, replacement, field, message) -> None:
    path = tiny_kitti / "camera_trk" / "ciwt" / "0000.txt"
    lines = CIWT_TEXT.splitlines()
    lines[line_no - 1] = replacement
    path.write_text("\n".join(lines) + "\n")
    err = _error(tiny_kitti)
    assert (err.path, err.line, err.field) == (str(path), line_no, field)
    assert message in str(err)


def test_missing_calibration_file(tiny_kitti: Path) -> None:
    """Outputs without their calibration: the sequence is listed and fails naming the file."""
    (tiny_kitti / "lidar_det" / "pointrcnn" / "0002.txt").write_text(POINTRCNN_TEXT)
    assert "0002" in get_importer("kitti-tracking").list_logs(tiny_kitti)
    with pytest.raises(LogFormatError, match="calibration file is missing") as info:
        load_logs(tiny_kitti, "kitti-tracking", ["0000", "0002"])
    assert info.value.path == str(tiny_kitti / "calib" / "0002.txt")


def test_a_bad_seqmap_line_fails_only_the_sequence_it_names(tiny_kitti: Path) -> None:
    (tiny_kitti / "seqmap.txt").write_text("0000 empty 000000 000005\n0001 empty 000000 four\n")
    assert load_logs(tiny_kitti, "kitti-tracking", ["0000"]).log_ids == ["0000"]
    with pytest.raises(LogFormatError, match="not a whole number") as info:
        load_logs(tiny_kitti, "kitti-tracking", ["0001"])
    assert (info.value.path, info.value.line, info.value.field) == (str(tiny_kitti / "seqmap.txt"), 2, "n_frames")
    result = load_logs_isolated(tiny_kitti, "kitti-tracking")
    assert result.logs.log_ids == ["0000"] and list(result.errors) == ["0001"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("0000 empty 000000 000005\n0001 empty 000000 000004\n0001 empty 000000 000009\n", 3, "second line for sequence"),
        ("0000 empty 000000 000005\n0001 empty 000000\n", 2, "found 3 fields"),
        ("0000 empty 000000 000005\n0001 empty 000000 000004\n0001 empty 000000 9999999999\n", 3, "beyond the bound"),
    ],
)
def test_seqmap_errors_name_the_line_and_stay_with_their_sequence(tiny_kitti: Path, text: str, line: int,
                                                                  message: str) -> None:
    (tiny_kitti / "seqmap.txt").write_text(text)
    result = load_logs_isolated(tiny_kitti, "kitti-tracking")
    assert result.logs.log_ids == ["0000"] and list(result.errors) == ["0001"]
    err = result.errors["0001"]
    assert (err.path, err.line) == (str(tiny_kitti / "seqmap.txt"), line) and message in str(err)


def test_a_seqmap_line_naming_no_sequence_is_an_error_for_every_sequence(tiny_kitti: Path) -> None:
    (tiny_kitti / "seqmap.txt").write_text("0000 empty 000000 000005\n0001 empty 000000 000004\nzz9 empty 0 x\n")
    result = load_logs_isolated(tiny_kitti, "kitti-tracking")
    assert sorted(result.errors) == ["0000", "0001"]
    assert all(e.line == 3 and "concerns every sequence" in str(e) for e in result.errors.values())


def test_a_looping_link_in_place_of_a_stream_fails_the_log(tiny_kitti: Path) -> None:
    path = tiny_kitti / "camera_trk" / "ciwt" / "0001.txt"
    path.unlink()
    path.symlink_to(path.name)
    result = load_logs_isolated(tiny_kitti, "kitti-tracking")
    assert result.logs.log_ids == ["0000"] and list(result.errors) == ["0001"]
    assert result.errors["0001"].path == str(path)


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        (CALIB_TEXT.replace("P2:", "P9:"), None, "P2", "missing calibration entry"),
        (CALIB_TEXT.replace("R0_rect: 1 0 0 0 1 0 0 0 1", "R0_rect: 1 0 0 0 1 0 0 0"), 3, "R0_rect", "expected 9 numbers, found 8"),
        (CALIB_TEXT.replace("R0_rect: 1 0 0", "R0_rect: 1 nan 0"), 3, "R0_rect", "finite"),
        (CALIB_TEXT.replace("Tr_velo_to_cam: 0 -1", "Tr_velo_to_cam: 0 x"), 4, "Tr_velo_to_cam", "not a number"),
    ],
)
def test_bad_calibration(tiny_kitti: Path, text, line, field, message) -> None:
    path = tiny_kitti / "calib" / "0001.txt"
    path.write_text(text)
    err = _error(tiny_kitti)
    assert (err.path, err.line, err.field) == (str(path), line, field)
    assert message in str(err)


def test_raw_tracking_calibration_names(tiny_kitti: Path) -> None:
    """The raw KITTI tracking calib files say ``R_rect`` / ``Tr_velo_cam`` without a colon."""
    raw = CALIB_TEXT.replace("R0_rect:", "R_rect").replace("Tr_velo_to_cam:", "Tr_velo_cam")
    (tiny_kitti / "calib" / "0001.txt").write_text(raw)
    logs = load_logs(tiny_kitti, "kitti-tracking")
    a, b = logs.calibration.to_pylist()
    assert a["lidar_to_cam"] == b["lidar_to_cam"] and a["P"] == b["P"]


def test_outputs_beyond_seqmap_and_empty_files(tiny_kitti: Path) -> None:
    (tiny_kitti / "camera_trk" / "ciwt" / "0001.txt").write_text("\n\n")  # blank lines only: no tracks
    (tiny_kitti / "lidar_det" / "pointrcnn" / "0000.txt").write_text("")
    logs = load_logs(tiny_kitti, "kitti-tracking")
    assert pc.unique(logs.tracks["log_id"]).to_pylist() == ["0000"]
    assert pc.unique(logs.lidar_detections["log_id"]).to_pylist() == ["0001"]
    (tiny_kitti / "seqmap.txt").write_text("0000 empty 000000 000002\n0001 empty 000000 000004\n")
    with pytest.raises(LogFormatError, match="log 0000 has outputs at frame 2 but only 2 frames"):
        load_logs(tiny_kitti, "kitti-tracking")


def test_isolated_loading_keeps_the_good_logs(tiny_kitti: Path) -> None:
    path = tiny_kitti / "lidar_det" / "pointrcnn" / "0001.txt"
    path.write_text(POINTRCNN_TEXT.replace("9.5", "9,5", 1))  # a decimal comma: one field too many
    with pytest.raises(LogFormatError):
        load_logs(tiny_kitti, "kitti-tracking")  # all-or-nothing
    result = load_logs_isolated(tiny_kitti, "kitti-tracking")
    assert result.logs.log_ids == ["0000"]
    assert list(result.errors) == ["0001"]
    err = result.errors["0001"]
    assert err.path == str(path) and err.line == 1


# --------------------------------------------------------------------------- bad parquet


@pytest.fixture()
def parquet_root(tmp_path: Path) -> Path:
    root = tmp_path / "pq"
    write_parquet_log(make_logs(["a", "b"]), root)
    return root


def test_truncated_parquet(parquet_root: Path) -> None:
    path = parquet_root / "b" / "tracks.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LogFormatError, match="not a readable parquet file") as info:
        load_logs(parquet_root, "parquet")
    assert info.value.path == str(path)
    result = load_logs_isolated(parquet_root, "parquet")
    assert result.logs.log_ids == ["a"] and list(result.errors) == ["b"]


def test_parquet_missing_required_stream_and_column(parquet_root: Path) -> None:
    (parquet_root / "a" / "calibration.parquet").unlink()
    with pytest.raises(LogFormatError, match="required stream 'calibration' is missing"):
        load_logs(parquet_root, "parquet", ["a"])
    t = pq.read_table(parquet_root / "b" / "lidar_detections.parquet").drop_columns(["yaw"])
    pq.write_table(t, parquet_root / "b" / "lidar_detections.parquet")
    with pytest.raises(LogFormatError) as info:
        load_logs(parquet_root, "parquet", ["b"])
    assert info.value.field == "yaw" and "missing column" in str(info.value)


def test_parquet_optional_stream_absent_and_extra_columns_ignored(parquet_root: Path) -> None:
    (parquet_root / "b" / "tracks.parquet").unlink()  # the log does not carry tracks
    t = pq.read_table(parquet_root / "b" / "frames.parquet")
    pq.write_table(t.append_column("speed_mps", pa.array(np.ones(t.num_rows))), parquet_root / "b" / "frames.parquet")
    shutil.copy(parquet_root / "a" / "frames.parquet", parquet_root / "a" / "notes.parquet")  # not a stream: ignored
    logs = load_logs(parquet_root, "parquet")
    assert logs.log_ids == ["a", "b"]
    assert pc.unique(logs.tracks["log_id"]).to_pylist() == ["a"]
    assert logs.frames.schema.equals(STREAMS["frames"])


def test_parquet_wrong_type_and_foreign_rows(parquet_root: Path) -> None:
    t = pq.read_table(parquet_root / "a" / "frames.parquet")
    bad = t.set_column(t.schema.get_field_index("frame"), "frame", pa.array(np.arange(t.num_rows) + 0.5))
    pq.write_table(bad, parquet_root / "a" / "frames.parquet")
    with pytest.raises(LogFormatError) as info:
        load_logs(parquet_root, "parquet", ["a"])
    assert info.value.field == "frame" and "does not cast to int32" in str(info.value)
    t2 = pq.read_table(parquet_root / "b" / "tracks.parquet")
    ids = t2["log_id"].to_pylist()
    ids[4] = "a"
    pq.write_table(t2.set_column(0, "log_id", pa.array(ids)), parquet_root / "b" / "tracks.parquet")
    with pytest.raises(LogFormatError) as info:
        load_logs(parquet_root, "parquet", ["b"])
    assert (info.value.row, info.value.field) == (4, "log_id")
    assert "row of log 'a' in the directory of log 'b'" in str(info.value)


def test_parquet_not_a_log_directory(tmp_path: Path) -> None:
    with pytest.raises(LogFormatError, match="no logs found"):
        load_logs(tmp_path, "parquet")
    f = _write(tmp_path / "file.txt", "x")
    with pytest.raises(LogFormatError, match="not a directory"):
        load_logs(f, "parquet")


def _log_by_log(root: Path, ids: list[str]) -> DriveLogs:
    from fleetloop.ingest.importers.kitti import KittiTrackingImporter

    imp = KittiTrackingImporter()
    seqmap, _, _ = imp._seqmap(root)
    lidar = next(iter(imp._sources(root, "lidar_det", None)), None)
    trackers = imp._sources(root, "camera_trk", None, every=True)
    camera = next(iter(imp._sources(root, "camera_det", None)), None)
    return DriveLogs.concat([imp._load_one(root, s, seqmap.get(s), lidar, trackers, camera) for s in ids])


def _assert_same(a: DriveLogs, b: DriveLogs) -> None:
    for name, t in a.tables().items():
        assert t.schema.equals(getattr(b, name).schema), name
        assert t.equals(getattr(b, name)), name


def test_batched_load_equals_log_by_log(tiny_kitti: Path) -> None:
    """Several logs are parsed kind by kind in one call each; the result is exactly the log-by-log
    one, also when a file forces the careful path (a blank line) or a log lacks a stream."""
    (tiny_kitti / "camera_det" / "det").mkdir(parents=True)
    _write(tiny_kitti / "camera_det" / "det" / "0000.txt", CIWT_TEXT)
    _write(tiny_kitti / "calib" / "0002.txt", CALIB_TEXT)  # a third log: no seqmap line, lidar only
    _write(tiny_kitti / "lidar_det" / "pointrcnn" / "0002.txt", POINTRCNN_TEXT)
    ids = ["0000", "0001", "0002"]
    batched = load_logs(tiny_kitti, "kitti-tracking", ids)
    _assert_same(batched, _log_by_log(tiny_kitti, ids))
    assert batched.camera_detections.num_rows and batched.lidar_detections.num_rows
    path = tiny_kitti / "camera_trk" / "ciwt" / "0001.txt"
    path.write_text(CIWT_TEXT.replace("\n", "\n\n", 1))  # a blank line: read file by file
    _assert_same(load_logs(tiny_kitti, "kitti-tracking", ids), _log_by_log(tiny_kitti, ids))


@pytest.mark.kitti
def test_batched_load_equals_log_by_log_on_kitti(kitti_root: Path) -> None:
    ids = ["0001", "0006", "0008", "0010", "0012"]
    _assert_same(load_logs(kitti_root, "kitti-tracking", ids), _log_by_log(kitti_root, ids))
