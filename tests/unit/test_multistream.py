"""Several camera streams, per-class operating points, calibration and the KITTI frame bound,
on hand-built cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fleetloop.ingest.importers import LogFormatError, load_logs
from fleetloop.mine.calibrate import calibrate
from fleetloop.mine.mining import mine
from fleetloop.mine.params import MiningParams
from fleetloop.schema import DriveLogs
from tests.unit.test_mining import BOX, flags_of, image_box, make_logs


def two_streams(judged_boxes, evidence_boxes, lidar, n_frames=3) -> DriveLogs:
    """Tracks of two camera streams: 'camera:a' (judged) and 'camera:b' (evidence)."""
    a = make_logs(n_frames=n_frames, lidar=lidar, tracks=[(f, 1, "car", b) for f, b in judged_boxes])
    b = make_logs(n_frames=n_frames, lidar=lidar, tracks=[(f, 1, "car", bx) for f, bx in evidence_boxes])
    ta = a.tracks.set_column(3, a.tracks.schema.field("sensor"), pa.array(["camera:a"] * a.tracks.num_rows, pa.string()))
    tb = b.tracks.set_column(3, b.tracks.schema.field("sensor"), pa.array(["camera:b"] * b.tracks.num_rows, pa.string()))
    return DriveLogs(**{**a.tables(), "tracks": pa.concat_tables([ta, tb])})


def test_camera_miss_when_lidar_and_the_evidence_stream_agree():
    logs = two_streams([(0, image_box(30.0, 8.0))], [(1, BOX)], [(1, "car", 0.99, 15.0, 0.0)])
    res = mine(logs, MiningParams(camera_stream="a"))
    assert [(f, o) for f, o, _ in flags_of(res, "camera_miss")] == [(1, ["lidar:0"])]
    assert not flags_of(res, "lidar_only")
    # judged the other way round, the same object is seen by the judged stream: no camera miss
    res = mine(logs, MiningParams(camera_stream="b"))
    assert not flags_of(res, "camera_miss")


def test_camera_miss_counts_more_the_surer_the_lidar():
    from fleetloop.mine.params import logit, sigmoid

    p = MiningParams(camera_stream="a")
    thr = p.lidar_threshold("car")
    sev = {}
    for margin in (0.0, 2.0, 4.0, 8.0):
        score = sigmoid(logit(thr) + margin) + 1e-6  # float32 rounding must not drop it below the point
        logs = two_streams([(0, image_box(30.0, 8.0))], [(1, BOX)], [(1, "car", score, 15.0, 0.0)])
        (_, _, s), = flags_of(mine(logs, p), "camera_miss")
        sev[margin] = s
    full = p.severities.camera_miss
    assert sev[0.0] == pytest.approx(full * p.sure_floor, rel=0.02)  # at the operating point
    assert sev[2.0] == pytest.approx(full * (p.sure_floor + (1 - p.sure_floor) * 0.5), rel=0.02)
    assert sev[4.0] == pytest.approx(full, rel=0.02) and sev[8.0] == pytest.approx(full, rel=0.02)


def test_lidar_miss_when_two_cameras_agree_and_the_lidar_has_nothing():
    logs = two_streams([(1, BOX)], [(1, BOX)], [(f, "car", 0.99, 30.0, -8.0) for f in range(3)])
    res = mine(logs, MiningParams(camera_stream="a", lidar_classes=["car"]))
    assert [(f, o) for f, o, _ in flags_of(res, "lidar_miss")] == [(1, ["track:1"])]
    assert not flags_of(res, "camera_only")


def test_stream_only_counts_for_both_judged_sensors():
    logs = two_streams([(0, image_box(30.0, 8.0))], [(1, BOX)], [(0, "car", 0.5, 60.0, -20.0)], n_frames=3)
    p = MiningParams(camera_stream="a", lidar_classes=["car"], temporal_smoothing=0.0)
    res = mine(logs, p)
    assert [f for f, _, _ in flags_of(res, "stream_only")] == [1]
    expected = res.frames.column("expected_errors").to_pylist()[1]
    assert expected == pytest.approx(2 * p.severities.stream_only, rel=1e-5)  # a lidar and a camera hypothesis


def test_evidence_only_for_a_class_the_judged_camera_does_not_report():
    """The judged camera reports cars only; the evidence stream sees a pedestrian the lidar does
    not: a lidar miss or the evidence stream's false alarm (the judged camera cannot have
    missed it), so one lidar hypothesis, never a camera one."""
    ped_box = image_box(12.0, 2.0, (0.8, 0.6, 1.75))
    a = make_logs(n_frames=3, lidar=[(f, "car", 0.99, 30.0, -8.0) for f in range(3)],
                  tracks=[(f, 1, "car", image_box(30.0, -8.0)) for f in range(3)])
    b = make_logs(n_frames=3, lidar=[(f, "car", 0.99, 30.0, -8.0) for f in range(3)],
                  tracks=[(1, 7, "pedestrian", ped_box)] + [(f, 1, "car", image_box(30.0, -8.0)) for f in range(3)])
    ta = a.tracks.set_column(3, a.tracks.schema.field("sensor"), pa.array(["camera:a"] * a.tracks.num_rows, pa.string()))
    tb = b.tracks.set_column(3, b.tracks.schema.field("sensor"), pa.array(["camera:b"] * b.tracks.num_rows, pa.string()))
    logs = DriveLogs(**{**a.tables(), "tracks": pa.concat_tables([ta, tb])})
    p = MiningParams(camera_stream="a", lidar_classes=["car", "pedestrian"], temporal_smoothing=0.0)
    res = mine(logs, p)
    assert [(f, o) for f, o, _ in flags_of(res, "evidence_only")] == [(1, ["track:7"])]
    assert not flags_of(res, "stream_only")
    expected = res.frames.column("expected_errors").to_pylist()
    assert expected[1] == pytest.approx(p.severities.evidence_only, rel=1e-5)  # one (lidar) hypothesis
    # once the judged camera reports pedestrians too, both judged sensors may have missed it
    res = mine(logs, p.model_copy(update={"camera_classes": ["car", "pedestrian"]}))
    assert flags_of(res, "stream_only") and not flags_of(res, "evidence_only")


def _doubled(box: list[float]) -> list[float]:
    """The same box twice as tall, its bottom edge where it was (two objects merged into one box)."""
    x1, y1, x2, y2 = box
    return [x1, 2 * y1 - y2, x2, y2]


def test_a_box_too_tall_for_its_class_on_the_road_is_no_labelled_lidar_miss():
    """lidar_miss and evidence_only say only the lidar missed a camera box. A box twice as tall, in
    metres where its bottom edge meets the road, as its class is not one object standing there:
    small_object_factor; a car-sized box standing on the road counts in full."""
    p = MiningParams(camera_stream="a", lidar_classes=["car"], temporal_smoothing=0.0)
    far_car = [(f, "car", 0.99, 30.0, -8.0) for f in range(3)]  # the road's height comes from the lidar's boxes
    standing = mine(two_streams([(1, BOX)], [(1, BOX)], far_car), p)
    merged = mine(two_streams([(1, _doubled(BOX))], [(1, _doubled(BOX))], far_car), p)
    (_, _, full), = flags_of(standing, "lidar_miss")
    (_, _, low), = flags_of(merged, "lidar_miss")
    assert full == pytest.approx(p.severities.lidar_miss, rel=1e-5)
    assert low == pytest.approx(p.severities.lidar_miss * p.small_object_factor, rel=1e-5)
    # without a confident lidar box there is no road height: no judgement, full severity
    p2 = p.model_copy(update={"lidar_classes": ["car", "pedestrian"]})
    no_road = mine(two_streams([(1, _doubled(BOX))], [(1, _doubled(BOX))], [(0, "pedestrian", 0.31, 30.0, -8.0)]), p2)
    (_, _, s), = flags_of(no_road, "lidar_miss")
    assert s == pytest.approx(p.severities.lidar_miss, rel=1e-5)
    with pytest.raises(ValueError, match="height_ratio"):
        MiningParams(height_ratio=(1.2, 1.5))


def test_per_class_operating_points():
    lidar = [(1, "car", 0.955, 15.0, 0.0)]
    other = image_box(15.0, 6.0)
    logs = make_logs(lidar=lidar, camera=[(1, "car", 0.9, other)])
    assert not flags_of(mine(logs, MiningParams(lidar_class_thresholds={"car": 0.96})), "lidar_only")
    assert flags_of(mine(logs, MiningParams(lidar_class_thresholds={"car": 0.95})), "lidar_only")
    with pytest.raises(ValueError, match="unknown classes"):
        MiningParams(lidar_class_thresholds={"truck": 0.5})


def _shifted(box: list[float], iou: float) -> list[float]:
    """The box moved sideways until it overlaps the original by ``iou``: (w - d) / (w + d) = iou."""
    x1, y1, x2, y2 = box
    d = (x2 - x1) * (1 - iou) / (1 + iou)
    return [x1 + d, y1, x2 + d, y2]


def test_association_gates_are_per_class():
    """A camera box overlapping a confident lidar car's projection by 0.35 is not that car (cars
    associate at 0.4), so each sensor has an object the other lacks; a pedestrian's box at 0.35
    is the pedestrian (pedestrians keep association_iou, 0.3), only misaligned."""
    from tests.unit.test_mining import PED

    p = MiningParams(camera_classes=["car", "pedestrian"], lidar_classes=["car", "pedestrian"])
    assert p.class_association_iou == {"car": 0.4} and p.association_iou == 0.3
    car = make_logs(n_frames=1, lidar=[(0, "car", 0.99, 15.0, 0.0)], camera=[(0, "car", 0.9, _shifted(BOX, 0.35))])
    res = mine(car, p)
    assert [o for _, o, _ in flags_of(res, "lidar_only")] == [["lidar:0"]]
    assert [o for _, o, _ in flags_of(res, "camera_only")] == [["camera:0"]]
    assert not flags_of(res, "geometry")
    # with one gate for every class the same pair is one object whose boxes disagree
    res = mine(car, p.model_copy(update={"class_association_iou": {}}))
    assert not flags_of(res, "lidar_only") and not flags_of(res, "camera_only")
    assert [o for _, o, _ in flags_of(res, "geometry")] == [["lidar:0", "camera:0"]]
    ped_box = image_box(8.0, 0.0, PED)
    ped = make_logs(n_frames=1, lidar=[(0, "pedestrian", 0.99, 8.0, 0.0)],
                    camera=[(0, "pedestrian", 0.9, _shifted(ped_box, 0.35))])
    res = mine(ped, p)
    assert not flags_of(res, "lidar_only") and not flags_of(res, "camera_only")
    assert [o for _, o, _ in flags_of(res, "geometry")] == [["lidar:0", "camera:0"]]
    with pytest.raises(ValueError, match="less than or equal to 1"):
        MiningParams(class_association_iou={"car": 1.5})
    with pytest.raises(ValueError, match="unknown classes"):
        MiningParams(class_association_iou={"truck": 0.5})


def _calibration_fixture(n_logs: int, n_real: int) -> tuple[DriveLogs, pa.Table]:
    """``n_logs`` one-frame logs, each with one confident lidar car the camera lacks (a
    lidar_only flag) and one car both sensors see, which a label confirms. In ``n_real`` logs there
    is nothing at the lidar car (a lidar false alarm: one error); in the others it is an object
    the labelling convention ignores (``care`` false: neither a hit nor a false alarm, no error)."""
    parts, labels = [], []
    other = image_box(15.0, 6.0)
    for k in range(n_logs):
        parts.append(make_logs(n_frames=1, lidar=[(0, "car", 0.995, 15.0, 0.0), (0, "car", 0.995, 15.0, 6.0)],
                               camera=[(0, "car", 0.9, other)],
                               log_id=f"L{k:03d}"))
        labels.append({"log_id": f"L{k:03d}", "frame": 0, "cls": "car", **dict(zip(("x1", "y1", "x2", "y2"), other, strict=True)),
                       "care": True})
        if k >= n_real:
            labels.append({"log_id": f"L{k:03d}", "frame": 0, "cls": "car", **dict(zip(("x1", "y1", "x2", "y2"), BOX, strict=True)),
                           "care": False})
    return DriveLogs.concat(parts), pa.Table.from_pylist(labels)


def test_calibration_recovers_known_flag_precision():
    """lidar_only is right in 3 of 10 frames (and in 60 of 200): the fit moves its severity from
    the default 0.7 towards 0.3, little with 10 flags, almost all the way with 200, and reports
    the counts behind it."""
    logs, labels = _calibration_fixture(10, 3)
    res = calibrate(logs, labels, MiningParams())
    assert res.truth == {"lidar_fn": 0, "lidar_fp": 3, "camera_fn": 0, "camera_fp": 0}
    row = next(r for r in res.table.to_pylist() if r["reason"] == "lidar_only")
    assert (row["flagged"], row["class"], row["errors"], row["fitted"]) == (10, "car", 3, True)
    few = res.params.class_severities["lidar_only"]["car"]
    fitted = res.params.calibration.fitted["lidar_only"]["car"]
    assert (fitted.flagged, fitted.errors, fitted.prior, fitted.severity) == (10, 3, 0.7, few)
    assert 0.3 < few < 0.7
    many = calibrate(*_calibration_fixture(200, 60), MiningParams()).params.class_severities["lidar_only"]["car"]
    assert many < few and many == pytest.approx(0.3, abs=0.06)
    # fewer than MIN_FLAGGED flags: reported, left at the default
    res = calibrate(*_calibration_fixture(4, 1), MiningParams())
    row = next(r for r in res.table.to_pylist() if r["reason"] == "lidar_only")
    assert not row["fitted"] and row["severity"] == 0.7 and "lidar_only" not in res.params.class_severities


def test_calibration_keeps_only_what_every_group_of_labelled_logs_agrees_on():
    """Ten logs, dealt into five groups of two (log_folds). lidar_only is right in every frame of
    eight logs (one frame each) and wrong in every frame of the two logs of one group (six frames
    each): 8 of 20 overall, so the fit moves it down from 0.7, but without that group it is right
    every time and the refit moves it up. A value that hangs on one group of logs is not kept."""
    from fleetloop.mine.calibrate import log_folds

    other = image_box(15.0, 6.0)
    parts, labels = [], []
    for k in range(10):
        wrong = k % 5 == 0
        n = 6 if wrong else 1
        parts.append(make_logs(n_frames=n, lidar=[(f, "car", 0.995, 15.0, y) for f in range(n) for y in (0.0, 6.0)],
                               camera=[(f, "car", 0.9, other) for f in range(n)], log_id=f"L{k:03d}"))
        for f in range(n):
            labels.append({"log_id": f"L{k:03d}", "frame": f, "cls": "car", **dict(zip(("x1", "y1", "x2", "y2"), other, strict=True)),
                           "care": True})
            if wrong:  # an object the convention ignores: the lidar car is no false alarm
                labels.append({"log_id": f"L{k:03d}", "frame": f, "cls": "car",
                               **dict(zip(("x1", "y1", "x2", "y2"), BOX, strict=True)), "care": False})
    logs, labels = DriveLogs.concat(parts), pa.Table.from_pylist(labels)
    res = calibrate(logs, labels, MiningParams())
    row = next(r for r in res.table.to_pylist() if r["reason"] == "lidar_only")
    assert (row["flagged"], row["errors"], row["fitted"], row["stable"]) == (20, 8, True, False)
    assert row["severity"] == 0.7 and "lidar_only" not in res.params.class_severities
    # the same precision spread evenly over the groups is kept
    even = calibrate(*_calibration_fixture(10, 3), MiningParams())
    row = next(r for r in even.table.to_pylist() if r["reason"] == "lidar_only")
    assert row["stable"] and even.params.class_severities["lidar_only"]["car"] < 0.7
    # groups are whole logs, dealt round-robin; unlabelled frames belong to none
    folds = log_folds(np.array([0, 0, 1, 2, 2, 3]), np.array([True, True, True, True, False, False]), k=2)
    assert folds.tolist() == [0, 0, 1, 0, -1, -1]


def test_calibration_judges_the_lidar_by_centre_distance_when_labels_have_positions():
    """A label 1.5 m from the lidar car (inside the 2 m car gate) is a hit by KITTI's rule, even
    where the 2D boxes overlap little; without positions the 2D rule calls it a false alarm."""
    logs = make_logs(n_frames=1, lidar=[(0, "car", 0.995, 15.0, 0.0)], camera=[(0, "car", 0.9, image_box(15.0, 6.0))])
    box = image_box(15.0, 1.5)
    lab = [{"log_id": "L1", "frame": 0, "cls": "car", **dict(zip(("x1", "y1", "x2", "y2"), box, strict=True)),
            "care": True, "x": 15.0, "y": 1.5},
           {"log_id": "L1", "frame": 0, "cls": "car", **dict(zip(("x1", "y1", "x2", "y2"), image_box(15.0, 6.0), strict=True)),
            "care": True, "x": 15.0, "y": 6.0}]
    with_xy = calibrate(logs, pa.Table.from_pylist(lab), MiningParams()).truth
    assert with_xy["lidar_fp"] == 0 and with_xy["lidar_fn"] == 1  # the car at y = 6 m has no lidar detection
    no_xy = calibrate(logs, pa.Table.from_pylist([{k: v for k, v in r.items() if k not in ("x", "y")} for r in lab]),
                      MiningParams()).truth
    assert no_xy["lidar_fp"] == 1 and no_xy["lidar_fn"] == 2



def test_calibration_counts_each_labelled_frames_care_objects_per_class():
    """The fit's nuisance rates use the labels' own object counts: care labels only, per class."""
    from fleetloop.mine.calibrate import judge
    from fleetloop.mine.mining import run_checks
    from fleetloop.perception.batch import build_batch
    from fleetloop.schema import CLASSES

    logs = make_logs(n_frames=2, lidar=[(0, "car", 0.995, 15.0, 0.0)], camera=[(0, "car", 0.9, image_box(15.0, 0.0))])
    lab = [{"log_id": "L1", "frame": f, "cls": c, **dict(zip(("x1", "y1", "x2", "y2"), image_box(15.0, y), strict=True)),
            "care": care} for f, c, y, care in [(0, "car", 0.0, True), (0, "pedestrian", 3.0, True),
                                                (0, "pedestrian", 5.0, False), (1, "pedestrian", 3.0, True)]]
    params = MiningParams()
    checked = run_checks(logs, params, build_batch(logs))
    truth = judge(checked.batch, params, pa.Table.from_pylist(lab), checked.sides)
    car, ped = CLASSES.index("car"), CLASSES.index("pedestrian")
    assert truth.care_objects.shape == (2, len(CLASSES) + 1)
    assert truth.care_objects[0, car] == 1 and truth.care_objects[0, ped] == 1 and truth.care_objects[1, ped] == 1
    assert truth.care_objects.sum() == 3


def test_calibration_on_frames_without_any_label():
    """Labelled frames that hold no object (a dataset version of empty roads) are judged: the
    confident lidar car there is a false alarm. Labels that match none of the logs' frames leave
    nothing labelled and the defaults in place, without failing."""
    logs = make_logs(n_frames=3, lidar=[(0, "car", 0.995, 15.0, 0.0), (1, "pedestrian", 0.5, 10.0, 1.0)],
                     camera=[(0, "car", 0.9, image_box(15.0, 0.0))])
    none = pa.Table.from_pylist([], schema=pa.schema([("log_id", pa.string()), ("frame", pa.int64()), ("cls", pa.string()),
                                                      *((c, pa.float64()) for c in ("x1", "y1", "x2", "y2"))]))
    res = calibrate(logs, none, MiningParams(), labelled_frames=pa.table({"log_id": ["L1", "L1"], "frame": [0, 1]}))
    assert res.truth == {"lidar_fn": 0, "lidar_fp": 1, "camera_fn": 0, "camera_fp": 1}
    assert res.params.calibration is not None and res.params.calibration.labelled_frames == 2
    elsewhere = pa.Table.from_pylist([{"log_id": "L9", "frame": 0, "cls": "car", "x1": 1.0, "y1": 1.0, "x2": 5.0, "y2": 5.0}])
    res = calibrate(logs, elsewhere, MiningParams())
    assert res.params.class_severities == {} and res.params.calibration is not None
    assert res.params.calibration.labelled_frames == 0

CALIB = ("P2: 721.5377 0 609.5593 44.85728 0 721.5377 172.854 0.2163791 0 0 1 0.002745884\n"
         "R0_rect: 1 0 0 0 1 0 0 0 1\nTr_velo_to_cam: 0 -1 0 0 0 0 -1 -0.08 1 0 0 -0.27\n")


def _kitti(tmp_path: Path, line: str) -> Path:
    root = tmp_path / "k"
    (root / "calib").mkdir(parents=True)
    (root / "calib" / "0000.txt").write_text(CALIB)
    (root / "camera_trk" / "t").mkdir(parents=True)
    (root / "camera_trk" / "t" / "0000.txt").write_text("0 1 Car -1 -1 -1 1 2 30 40 -1 -1 -1 -1 -1 -1 -1 0.5\n" + line)
    return root


@pytest.mark.parametrize("frame", [2**32 + 5, 10**12, 10_000_000])
def test_kitti_frame_index_bound(tmp_path: Path, frame: int):
    root = _kitti(tmp_path, f"{frame} 1 Car -1 -1 -1 1 2 30 40 -1 -1 -1 -1 -1 -1 -1 0.5\n")
    with pytest.raises(LogFormatError) as info:
        load_logs(root, "kitti-tracking")
    assert (info.value.line, info.value.field) == (2, "frame") and "beyond the bound" in str(info.value)


def test_kitti_multiple_blanks_parse_on_the_slow_path(tmp_path: Path):
    root = _kitti(tmp_path, "1  1 Car -1 -1 -1 1 2 30 40 -1 -1 -1 -1 -1 -1 -1 0.5\n")
    logs = load_logs(root, "kitti-tracking")
    assert logs.tracks.num_rows == 2 and pc.unique(logs.tracks["sensor"]).to_pylist() == ["camera:t"]


class _Publisher:
    def publish(self, path: Path, key: str) -> str:
        return f"file://{path}"


def _boxes_of(task: dict) -> list[tuple[float, float]]:
    return sorted((round(r["value"]["x"], 1), round(r["value"]["y"], 1)) for r in task["predictions"][0]["result"])


def test_pre_annotations_are_the_judged_streams_boxes_only(tmp_path: Path):
    """Both camera streams are loaded (evidence for the miner), but the tasks' pre-annotations are
    the judged stream's boxes: never both streams' boxes of one car."""
    from fleetloop.label.push import build_tasks
    from fleetloop.label.render import prediction_source

    a_box, b_box = image_box(20.0, 3.0), image_box(30.0, -6.0)
    logs = two_streams([(1, a_box)], [(1, b_box), (1, a_box)], [(1, "car", 0.99, 20.0, 3.0)])
    rows = [{"log_id": "L1", "frame": 1, "score": 1.0, "reasons": "lidar_only:1"}]

    def task(stream):
        tasks, problems = build_tasks(rows, logs, "c1", publisher=_Publisher(), image_dir=tmp_path, model_version="m",
                                      camera_stream=stream)
        assert not problems
        return tasks[0]

    judged_a, judged_b = task("a"), task("camera:b")
    assert judged_a["data"]["prediction_source"] == "camera:a" and len(judged_a["predictions"][0]["result"]) == 1
    assert judged_b["data"]["prediction_source"] == "camera:b" and len(judged_b["predictions"][0]["result"]) == 2
    assert _boxes_of(judged_a)[0] in _boxes_of(judged_b)
    # no stream named: the miner's default, the first camera stream by name
    assert prediction_source(logs, "L1") == "camera:a" and task(None)["data"]["prediction_source"] == "camera:a"
    assert prediction_source(logs, "L1", "nope") == "camera:a"


def test_calibration_does_not_credit_a_flag_with_the_errors_of_crowded_frames():
    """Crowded frames (10 objects) hold 2 errors each whether or not a flag is on them; half of
    them carry a flag that is never right, sparse frames (1 object) have neither. Fitted with a
    per-frame rate only, the flag absorbs the crowd's errors; with the per-object rate it stays
    near its default."""
    import numpy as np

    from fleetloop.mine.calibrate import FlagData, fit_severities

    n_frames, crowded = 200, np.arange(100)
    on = crowded[::2]
    data = FlagData(rc=np.zeros(on.size, np.int64), factor=np.ones(on.size), obj=np.arange(on.size),
                    obj_g=on.astype(np.int64), obj_right=np.zeros(on.size, bool), flag=np.arange(on.size))
    errors, objects = np.zeros(n_frames), np.ones(n_frames)
    errors[crowded], objects[crowded] = 2.0, 10.0
    prior, fit, labelled = np.array([0.05]), np.array([True]), np.ones(n_frames, bool)
    assert fit_severities(data, errors, labelled, prior, fit).severities[0] > 0.3
    assert fit_severities(data, errors, labelled, prior, fit, objects=objects).severities[0] < 0.1


def test_calibration_gives_each_class_its_own_rate_of_errors_no_flag_explains():
    """Frames with two pedestrians hold 2 errors each, frames with four cars none; half of the
    pedestrian frames carry a flag that is never right. One rate per object (any class) cannot
    explain errors that come with the frames holding fewer objects, so the flag absorbs them; a
    rate per class explains them and the flag stays near its default."""
    import numpy as np

    from fleetloop.mine.calibrate import FlagData, fit_severities

    n_frames, peds = 200, np.arange(100)
    on = peds[::2]
    data = FlagData(rc=np.zeros(on.size, np.int64), factor=np.ones(on.size), obj=np.arange(on.size),
                    obj_g=on.astype(np.int64), obj_right=np.zeros(on.size, bool), flag=np.arange(on.size))
    errors = np.zeros(n_frames)
    errors[peds] = 2.0
    per_class = np.zeros((n_frames, 2))  # columns: car, pedestrian
    per_class[peds, 1] = 2.0
    per_class[100:, 0] = 4.0
    prior, fit, labelled = np.array([0.05]), np.array([True]), np.ones(n_frames, bool)
    assert fit_severities(data, errors, labelled, prior, fit, objects=per_class.sum(axis=1)).severities[0] > 0.3
    by_class = fit_severities(data, errors, labelled, prior, fit, objects=per_class)
    assert by_class.severities[0] < 0.1
    assert by_class.per_object[0] < 0.05 and by_class.per_object[1] == pytest.approx(1.0, abs=0.1)  # 2 errors / 2 pedestrians
