"""The importers misused (outside review): values a damaged or foreign file holds that must be
refused with a ``LogFormatError`` naming the file, line (or row) and field, quarantining that
log only; real tracker quirks that must still load; and inputs that used to crash the raw
importer (a traceback the guard could only report as "cannot be read")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from fleetloop.ingest.importers import LogFormatError, get_importer, load_logs, load_logs_isolated
from fleetloop.ingest.importers.parquet import write_parquet_log
from tests.factory_logs import P2, make_logs
from tests.unit.test_importers import CALIB_TEXT, CIWT_TEXT, POINTRCNN_TEXT

TRACK = "{f} {id} {t} -1 -1 -1.8 360.7 196.7 446.1 252.5 1.6 1.6 4.0 -5.8 2.2 20.4 -10 {s}"


@pytest.fixture()
def tiny_kitti(tmp_path: Path) -> Path:
    """test_importers' small valid layout: sequences 0000 (5 frames) and 0001 (4 frames)."""
    root = tmp_path / "kitti"
    (root / "seqmap.txt").parent.mkdir(parents=True)
    (root / "seqmap.txt").write_text("0000 empty 000000 000005\n0001 empty 000000 000004\n")
    for seq in ("0000", "0001"):
        for rel, text in (("calib", CALIB_TEXT), ("lidar_det/pointrcnn", POINTRCNN_TEXT), ("camera_trk/ciwt", CIWT_TEXT)):
            (root / rel).mkdir(parents=True, exist_ok=True)
            (root / rel / f"{seq}.txt").write_text(text)
    return root


def _raw(root: Path, fmt: str = "kitti-tracking"):
    """The importer itself, without the guard that turns any crash into a LogFormatError."""
    return get_importer(fmt).inner.load(root)


def _refused(root: Path, bad: str, fmt: str = "kitti-tracking") -> LogFormatError:
    """Loading fails for log ``bad`` alone (the others load) and the raw importer raises a
    LogFormatError too (not another exception). Returns the error of ``bad``."""
    with pytest.raises(LogFormatError) as raw:
        _raw(root, fmt)
    result = load_logs_isolated(root, fmt)
    assert list(result.errors) == [bad], result.errors
    assert bad not in result.logs.log_ids and result.logs.log_ids
    assert str(raw.value) == str(result.errors[bad])  # the batch names the same problem as the log alone
    return result.errors[bad]


def _replace_line(path: Path, text: str, line_no: int, new: str) -> None:
    lines = text.splitlines()
    lines[line_no - 1] = new
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- KITTI: frames


@pytest.mark.parametrize("kind", ["camera_trk/ciwt", "camera_det/det", "lidar_det/pointrcnn"])
def test_a_negative_frame_is_refused_naming_file_line_and_field(tiny_kitti: Path, kind: str) -> None:
    """The report "a camera-tracker line with frame -5 was accepted" does not reproduce: every
    stream refuses it (kept as a regression test, also for a DontCare line, which is dropped)."""
    path = tiny_kitti / kind / "0001.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind.startswith("lidar"):
        _replace_line(path, POINTRCNN_TEXT, 2, "-5,1,300.0,160.0,330.0,230.0,2.0,1.7,0.6,0.8,-4.0,1.7,15.0,0.1,0.2")
        line = 2
    else:
        _replace_line(path, CIWT_TEXT, 4, TRACK.format(f=-5, id=-1, t="DontCare", s=-1))
        line = 4
    err = _refused(tiny_kitti, "0001")
    assert (err.path, err.line, err.field) == (str(path), line, "frame") and "must not be negative" in str(err)


@pytest.mark.parametrize(
    ("kind", "line_no", "new"),
    [
        ("lidar_det/pointrcnn", 3, "7,3,500.0,165.0,540.0,240.0,-0.5,1.7,0.6,1.8,-2.0,1.7,18.0,1.5,1.4"),
        ("camera_trk/ciwt", 2, TRACK.format(f=4, id=0, t="Car", s=0.87)),
        # a line of a type fleetloop drops is still an output of a frame the log does not have
        ("camera_trk/ciwt", 4, TRACK.format(f=9, id=-1, t="DontCare", s=-1)),
    ],
)
def test_outputs_beyond_the_seqmap_count_name_their_file_line_and_field(tiny_kitti: Path, kind: str, line_no: int,
                                                                         new: str) -> None:
    """seqmap.txt gives 0001 four frames (0..3): an output at frame 4 or later is refused naming
    the output's file and line (it named only seqmap.txt, and a DontCare line was dropped
    silently)."""
    path = tiny_kitti / kind / "0001.txt"
    _replace_line(path, POINTRCNN_TEXT if kind.startswith("lidar") else CIWT_TEXT, line_no, new)
    err = _refused(tiny_kitti, "0001")
    assert (err.path, err.line, err.field) == (str(path), line_no, "frame")
    assert "log 0001 has outputs at frame" in str(err) and "but only 4 frames (seqmap.txt, line 2)" in str(err)


@pytest.mark.parametrize("track_id", [2**62, -(2**62), 2**63 - 1])
def test_a_track_id_out_of_range_is_refused_by_both_paths(tiny_kitti: Path, track_id: int) -> None:
    """The fast (pyarrow) path read a track id of 2**62 or more (an int64) and loaded it, while the
    diagnostic path refuses it as out of range: which one a file met decided whether it loaded."""
    path = tiny_kitti / "camera_trk/ciwt/0001.txt"
    _replace_line(path, CIWT_TEXT, 2, TRACK.format(f=1, id=track_id, t="Car", s=0.87))
    err = _refused(tiny_kitti, "0001")
    assert (err.path, err.line, err.field) == (str(path), 2, "track_id") and "integer out of range" in str(err)


def test_without_a_seqmap_a_dropped_line_beyond_the_others_changes_nothing(tiny_kitti: Path) -> None:
    """No seqmap: the frame count follows from the outputs of our classes, as before."""
    (tiny_kitti / "seqmap.txt").unlink()
    before = load_logs(tiny_kitti, "kitti-tracking")
    _replace_line(tiny_kitti / "camera_trk" / "ciwt" / "0001.txt", CIWT_TEXT, 4,
                  TRACK.format(f=9, id=-1, t="DontCare", s=-1))
    after = load_logs(tiny_kitti, "kitti-tracking")
    assert after.frames.equals(before.frames) and after.tracks.equals(before.tracks)


def test_real_tracker_quirks_still_load(tiny_kitti: Path) -> None:
    """What real KITTI-format outputs hold is kept, not refused: a box past the image border
    with x2 < x1 (CIWT does it; validation flags it, a warning), a negative or huge confidence
    (clipped to [0, 1]), track id -1 in a detector's file (its track ids are ignored), lidar
    frames beyond the camera's last line (trackers write nothing for frames without tracks),
    PointRCNN's unbounded scores."""
    trk = tiny_kitti / "camera_trk" / "ciwt" / "0001.txt"
    trk.write_text("\n".join([
        "0 0 Car -1 -1 -1.8 1251.1 196.7 1242.0 252.5 1.6 1.6 4.0 -5.8 2.2 20.4 -10 -3",
        "0 1 Car -1 -1 -1.8 100.0 196.7 146.1 252.5 1.6 1.6 4.0 -5.8 2.2 20.4 -10 1e30",
    ]) + "\n")
    det = tiny_kitti / "camera_det" / "det" / "0001.txt"
    det.parent.mkdir(parents=True)
    det.write_text(TRACK.format(f=0, id=-1, t="Car", s=-1) + "\n")
    (tiny_kitti / "lidar_det" / "pointrcnn" / "0001.txt").write_text(
        POINTRCNN_TEXT + "3,2,700.0,170.0,800.0,250.0,40.0,1.5,1.6,3.9,1.0,1.6,20.0,-1.57,-1.6\n")
    logs = load_logs(tiny_kitti, "kitti-tracking", ["0001"])
    t = logs.tracks.to_pylist()
    assert [r["score"] for r in t] == [0.0, 1.0] and t[0]["x2"] < t[0]["x1"]
    assert logs.camera_detections.num_rows == 1 and logs.frames.num_rows == 4
    assert pc.max(logs.lidar_detections["score"]).as_py() == 1.0


# --------------------------------------------------------------------------- KITTI: seqmap


def test_a_seqmap_count_written_with_a_digit_int_refuses_names_its_line(tiny_kitti: Path) -> None:
    """"²" is a digit to str.isdigit, not to int(): it crashed the importer (ValueError)."""
    (tiny_kitti / "seqmap.txt").write_text("0000 empty 000000 000005\n0001 empty 000000 ²\n")
    err = _refused(tiny_kitti, "0001")
    assert (err.path, err.line, err.field) == (str(tiny_kitti / "seqmap.txt"), 2, "n_frames")
    assert "not a whole number" in str(err)


def test_a_seqmap_saved_with_a_byte_order_mark_declares_its_first_sequence(tiny_kitti: Path) -> None:
    """A byte-order mark made the first line name a sequence '\ufeff0000': a phantom log that
    failed, while 0000 lost its declared count (3 frames from its outputs instead of 5)."""
    (tiny_kitti / "seqmap.txt").write_text("\ufeff0000 empty 000000 000005\r\n0001 empty 000000 000004\r\n")
    assert get_importer("kitti-tracking").list_logs(tiny_kitti) == ["0000", "0001"]
    result = load_logs_isolated(tiny_kitti, "kitti-tracking")
    assert not result.errors and result.logs.log_ids == ["0000", "0001"]
    assert result.logs.frames.num_rows == 9


# --------------------------------------------------------------------------- KITTI: calibration


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ("hello world", "hello", "not a number"),
        ("garbage", "garbage", "without values"),
        ("\udcff\udcfe\x00 junk", None, "not a calibration entry"),  # bytes that are not UTF-8
        ("7.2 0 609.5 44.8", None, "not a calibration entry"),  # numbers without a name (a split line)
        ("P3: 1 2 abc", "P3", "not a number"),  # an entry fleetloop does not use, damaged
        ("P0: " + " ".join(map(str, P2)), "P0", "duplicate calibration entry (first on line 1)"),
        ("R_rect 1 0 0 0 1 0 0 0 1", "R0_rect", "duplicate calibration entry (first on line 3)"),
    ],
)
def test_garbage_and_repeated_entries_in_a_calibration_file_are_refused_naming_the_line(
        tiny_kitti: Path, extra: str, field: str | None, message: str) -> None:
    """Lines that are not entries were skipped, as were damaged or repeated entries of keys
    fleetloop does not use: a calibration file that holds garbage is a damaged file."""
    path = tiny_kitti / "calib" / "0001.txt"
    path.write_text(CALIB_TEXT + extra + "\n", encoding="utf-8", errors="surrogateescape")
    err = _refused(tiny_kitti, "0001")
    assert (err.path, err.line, err.field) == (str(path), 5, field) and message in str(err)


def test_real_calibration_files_still_load(tiny_kitti: Path, kitti_root: Path) -> None:
    """KITTI's own files (P0..P3, Tr_imu_to_velo), the raw tracking names without a colon, blank
    lines, a byte-order mark and CRLF line ends: the same calibration as before."""
    want = load_logs(tiny_kitti, "kitti-tracking", ["0000"]).calibration.to_pylist()[0]
    raw = CALIB_TEXT.replace("R0_rect:", "R_rect").replace("Tr_velo_to_cam:", "Tr_velo_cam")
    text = "\ufeff" + raw.replace("\n", "\r\n\r\n") + "P3: " + " ".join(map(str, P2)) + "\nTr_imu_velo 1 0 0 0 0 1 0 0 0 0 1 0\n"
    (tiny_kitti / "calib" / "0001.txt").write_text(text)
    got = load_logs(tiny_kitti, "kitti-tracking", ["0001"]).calibration.to_pylist()[0]
    assert {k: v for k, v in got.items() if k != "log_id"} == {k: v for k, v in want.items() if k != "log_id"}
    assert load_logs(kitti_root, "kitti-tracking").calibration.num_rows == 5


@pytest.mark.parametrize("cx", [1e308, 1e12])
def test_a_principal_point_that_gives_no_image_size_is_refused_naming_p2(tiny_kitti: Path, cx: float) -> None:
    """An unknown focal length: the image size is twice the principal point. Twice 1e308 is
    infinite (OverflowError) and 2e12 px does not fit the int32 column (ArrowInvalid): both
    crashed the importer."""
    p = list(P2)
    p[0], p[2] = 500.0, cx
    path = tiny_kitti / "calib" / "0001.txt"
    path.write_text(CALIB_TEXT.replace("P2: " + " ".join(map(str, P2)), "P2: " + " ".join(map(str, p))))
    err = _refused(tiny_kitti, "0001")
    assert (err.path, err.line, err.field) == (str(path), 2, "P2") and "gives no image size" in str(err)


# --------------------------------------------------------------------------- parquet


@pytest.fixture()
def pq_root(tmp_path: Path) -> Path:
    root = tmp_path / "pq"
    write_parquet_log(make_logs(["a", "b"]), root)
    return root


def _set_column(root: Path, log: str, stream: str, column: str, values: pa.Array) -> Path:
    path = root / log / f"{stream}.parquet"
    t = pq.read_table(path)
    pq.write_table(t.set_column(t.schema.get_field_index(column), column, values), path)
    return path


@pytest.mark.parametrize(
    ("stream", "column", "make"),
    [
        ("lidar_detections", "score", lambda n: pa.array(["0.5"] * n)),  # numbers written as text
        ("tracks", "x1", lambda n: pa.array(["12.5"] * n)),
        ("frames", "frame", lambda n: pa.array([str(i) for i in range(n)])),
        ("frames", "frame", lambda n: pa.array([True] * n)),  # every frame 1
        ("tracks", "cls", lambda n: pa.array([1] * n)),  # a class code, not a class
        ("frames", "log_id", lambda n: pa.array([7] * n)),
        ("tracks", "track_id", lambda n: pa.array(np.zeros(n, "datetime64[ns]"))),  # a time is no track id
        ("calibration", "P", lambda n: pa.array([["1"] * 12] * n)),
    ],
)
def test_parquet_columns_of_another_kind_are_refused_naming_the_field(pq_root: Path, stream: str, column: str,
                                                                      make) -> None:
    """A cast converted them (strings parsed as numbers, booleans as 0/1, numbers as text): the
    log loaded with values its writer never meant."""
    n = pq.read_metadata(pq_root / "a" / f"{stream}.parquet").num_rows
    path = _set_column(pq_root, "a", stream, column, make(n))
    err = _refused(pq_root, "a", "parquet")
    assert (err.path, err.field) == (str(path), column) and "does not cast to" in str(err)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_parquet_timestamps_are_read_in_nanoseconds(pq_root: Path, unit: str) -> None:
    """``timestamp_ns`` stored as an Arrow timestamp: its count was taken as nanoseconds whatever
    its unit (microseconds read 1000x too small)."""
    want = pq.read_table(pq_root / "a" / "frames.parquet")["timestamp_ns"]
    per = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
    stored = pc.divide(want, per).cast(pa.int64()).cast(pa.timestamp(unit, tz="UTC"))
    _set_column(pq_root, "a", "frames", "timestamp_ns", stored)
    got = load_logs(pq_root, "parquet", ["a"]).frames["timestamp_ns"]
    assert got.type == pa.int64()
    assert got.to_pylist() == [v * per for v in stored.cast(pa.int64()).to_pylist()]


def test_parquet_casts_within_a_kind_still_load(pq_root: Path) -> None:
    """Wider or other encodings of the right kind load as before: float64 scores, int64 frames,
    dictionary and large strings, variable-size lists of 12 numbers, an extra column."""
    t = pq.read_table(pq_root / "a" / "lidar_detections.parquet")
    want = load_logs(pq_root, "parquet", ["a"])
    t = (t.set_column(t.schema.get_field_index("score"), "score", t["score"].cast(pa.float64()))
          .set_column(t.schema.get_field_index("frame"), "frame", t["frame"].cast(pa.int64()))
          .set_column(t.schema.get_field_index("cls"), "cls", t["cls"].dictionary_encode())
          .set_column(t.schema.get_field_index("log_id"), "log_id", t["log_id"].cast(pa.large_string()))
          .append_column("extra", pa.array(np.ones(t.num_rows))))
    pq.write_table(t, pq_root / "a" / "lidar_detections.parquet")
    c = pq.read_table(pq_root / "a" / "calibration.parquet")
    c = c.set_column(c.schema.get_field_index("P"), "P", c["P"].cast(pa.list_(pa.float32())))
    pq.write_table(c, pq_root / "a" / "calibration.parquet")
    got = load_logs(pq_root, "parquet", ["a"])
    assert got.lidar_detections.equals(want.lidar_detections)
    np.testing.assert_allclose(np.array(got.calibration["P"].to_pylist()), np.array(want.calibration["P"].to_pylist()),
                               rtol=1e-6)


def test_parquet_repeated_columns(pq_root: Path) -> None:
    """An extra column given twice is ignored like any extra column; a column of the schema given
    twice is refused naming it (both failed as 'not a readable parquet file' with the whole
    schema in the message)."""
    path = pq_root / "a" / "tracks.parquet"
    t = pq.read_table(path)
    ones = pa.array(np.ones(t.num_rows))
    pq.write_table(t.append_column("note", ones).append_column("note", ones), path)
    assert load_logs(pq_root, "parquet").log_ids == ["a", "b"]
    pq.write_table(t.append_column("score", ones.cast(pa.float32())), path)
    err = _refused(pq_root, "a", "parquet")
    assert (err.path, err.field) == (str(path), "score") and "given 2 times" in str(err) and "\n" not in str(err)
