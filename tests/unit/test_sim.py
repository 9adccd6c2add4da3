"""The simulated fleet: renderer, weekly mix, sensors, tracker and the logs a week produces."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fleetloop.schema import CLASSES, STREAMS
from fleetloop.sim.fleet import TRUTH, TRUTH_3D, drive_week, render_scenario_set, write_truth
from fleetloop.sim.render import PLAIN, RenderConfig, Renderer
from fleetloop.sim.sensors import LidarConfig, camera_table, simulate_lidar
from fleetloop.sim.tracker import IouTracker, TrackerConfig, track_camera
from fleetloop.sim.world import CAR, CONE, CYCLIST, GREEN, ORANGE, PEDESTRIAN, SIZES, Camera, Snapshot, week_mix

START = datetime(2026, 1, 5, tzinfo=UTC)


def snapshot(objects: list[tuple[int, float, float, tuple[float, float, float], bool]]) -> Snapshot:
    """One frame of objects (cls, x, y, colour, green) standing on the road, yaw 0."""
    ground = -Camera().lidar_height
    cls = np.array([o[0] for o in objects], np.int8)
    size = SIZES[cls]
    box = np.column_stack([[o[1] for o in objects], [o[2] for o in objects], ground + size[:, 2] / 2, size,
                           np.zeros(len(objects))])
    return Snapshot(frame=np.zeros(len(objects), np.int32), obj=np.arange(len(objects), dtype=np.int64), cls=cls,
                    green=np.array([o[4] for o in objects]), box=box, colour=np.array([o[3] for o in objects], float))


def drawn_bbox(image: np.ndarray, background: tuple[float, float, float] = PLAIN) -> np.ndarray:
    rows, cols = np.nonzero((image != np.array(background, np.uint8)).any(axis=2))
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], float)


# ------------------------------------------------------------------------------------ renderer
def test_rendering_is_deterministic_for_a_seed():
    a, ta, fa = render_scenario_set(seed=3, n_frames=8)
    b, tb, fb = render_scenario_set(seed=3, n_frames=8)
    c, _, _ = render_scenario_set(seed=4, n_frames=8)
    assert a.shape == (8, 96, 160, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes() and ta.equals(tb) and fa.equals(fb)
    assert a.tobytes() != c.tobytes()


@pytest.mark.parametrize("cls, x, y", [(CAR, 9.0, 0.5), (CAR, 6.0, 3.5), (PEDESTRIAN, 6.0, -1.0),
                                       (CYCLIST, 7.0, 1.5), (CONE, 5.0, 0.3), (CAR, 4.0, -3.6)])
def test_truth_box_is_what_is_drawn(cls, x, y):
    renderer = Renderer(Camera(), RenderConfig(plain=True))
    out = renderer.render(snapshot([(cls, x, y, (200.0, 40.0, 40.0), False)]), rng=np.random.default_rng(0))
    assert out.rows.tolist() == [0] and out.occlusion[0] == 0
    truth = out.boxes[0]
    assert np.all(truth >= 0) and truth[2] <= 160 and truth[3] <= 96  # clipped to the image
    assert np.abs(drawn_bbox(out.image) - truth).max() <= 1.0


def test_cones_are_orange_or_green():
    renderer = Renderer(Camera(), RenderConfig(plain=True))
    mean = {}
    for name, colour in (("orange", ORANGE), ("green", GREEN)):
        out = renderer.render(snapshot([(CONE, 4.0, 0.0, colour, name == "green")]), rng=np.random.default_rng(0))
        px = out.image.reshape(-1, 3)
        px = px[(px != np.array(PLAIN, np.uint8)).any(axis=1)].astype(float)
        mean[name] = np.median(px, axis=0)
    r, g, b = mean["orange"]
    assert r > 180 and r > g + 60 and g > b
    r, g, b = mean["green"]
    assert g > 150 and g > r + 60 and g > b + 60


def test_nearer_objects_occlude_farther_ones():
    renderer = Renderer(Camera(), RenderConfig(plain=True))
    snap = snapshot([(CAR, 20.0, 0.0, (40.0, 60.0, 160.0), False), (PEDESTRIAN, 6.0, 0.3, (200.0, 40.0, 40.0), False)])
    out = renderer.render(snap, rng=np.random.default_rng(0))
    occ = dict(zip(out.rows.tolist(), out.occlusion.tolist(), strict=True))
    assert occ[1] == 0.0 and 0.05 < occ[0] < 0.8
    person = out.boxes[out.rows.tolist().index(1)]
    cx, cy = int(person[0] + person[2]) // 2, int(person[1] + person[3]) // 2
    assert tuple(out.image[cy, cx]) != (40, 60, 160)  # the pedestrian is drawn over the car


def test_night_is_darker_and_rain_has_less_contrast():
    renderer = Renderer()
    snap = snapshot([(CAR, 12.0, 0.0, (175.0, 30.0, 35.0), False), (PEDESTRIAN, 9.0, -4.0, (40.0, 80.0, 170.0), False),
                     (CONE, 7.0, 1.9, ORANGE, False)])

    def image(weather: str, tod: str) -> np.ndarray:
        out = renderer.render(snap, weather=weather, time_of_day=tod, place="suburb", rng=np.random.default_rng(1))
        return out.image.astype(float).mean(axis=2)

    day, night, rain = image("clear", "day"), image("clear", "night"), image("rain", "day")
    assert night.mean() < 0.5 * day.mean()
    assert rain.std() < 0.75 * day.std()


# ------------------------------------------------------------------------------------ weekly mix
def test_weekly_mixes_shift_and_week_zero_is_plain():
    w0 = week_mix(0, seed=0)
    assert w0.green_cones < 0.02 and w0.rain < 0.05 and w0.night < 0.05
    mixes = [week_mix(w, seed=0) for w in range(1, 4)]
    assert mixes[0].rain > 0.4 and mixes[1].night > 0.4 and mixes[2].green_cones > 0.3
    assert len({m.model_dump_json() for m in [w0, *mixes]}) == 4
    assert week_mix(5, seed=0) == week_mix(5, seed=0) and week_mix(5, seed=0) != week_mix(5, seed=1)
    with pytest.raises(ValueError):
        week_mix(-1)


# ------------------------------------------------------------------------------------ sensors
def test_lidar_misses_grow_with_range_and_in_rain():
    n = 4000
    ranges = np.repeat([10.0, 30.0, 50.0], n)
    snap = snapshot([(PEDESTRIAN, float(x), 0.0, (0.0, 0.0, 0.0), False) for x in ranges])
    snap = Snapshot(np.arange(len(snap), dtype=np.int32), snap.obj, snap.cls, snap.green, snap.box, snap.colour)
    cfg = LidarConfig(false_alarms=0.0, rain_false_alarms=0.0)
    occlusion = np.zeros(len(snap))

    def recall(rain: bool) -> np.ndarray:
        t = simulate_lidar("log", snap, occlusion, len(snap), rain=rain, rng=np.random.default_rng(0), cfg=cfg)
        assert t.schema.equals(STREAMS["lidar_detections"])
        seen = np.zeros(len(snap), bool)
        seen[t["frame"].to_numpy()] = True
        return seen.reshape(3, n).mean(axis=1)

    clear, rain = recall(False), recall(True)
    assert clear[0] > 0.9 and clear[0] > clear[1] > clear[2]
    assert np.all(rain < clear)


def test_lidar_sees_through_occlusion_less_and_scores_are_probabilities():
    snap = snapshot([(CAR, 20.0, 0.0, (0.0, 0.0, 0.0), False)] * 2000)
    snap = Snapshot(np.arange(2000, dtype=np.int32), snap.obj, snap.cls, snap.green, snap.box, snap.colour)
    occ = np.r_[np.zeros(1000), np.full(1000, 0.9)]
    t = simulate_lidar("log", snap, occ, 2000, rain=False, rng=np.random.default_rng(0))
    frame = t["frame"].to_numpy()
    assert (frame < 1000).sum() > 1.5 * (frame >= 1000).sum()
    score = t["score"].to_numpy()
    assert score.min() >= 0 and score.max() <= 1


def test_camera_detections_are_thresholded_and_cleaned():
    dets = [np.array([[1, 1, 5, 5, 0.9, 0], [1, 1, 5, 5, 0.2, 1], [5, 5, 1, 1, 0.9, 2]], np.float32),
            np.array([[2, 2, 9, 9, 0.5, 3], [2, 2, 9, 9, 0.8, 7], [0, 0, 3, 3, np.nan, 0]], np.float32),
            np.zeros((0, 6), np.float32)]
    t = camera_table("log", dets, threshold=0.3)
    assert t.schema.equals(STREAMS["camera_detections"])
    assert t["frame"].to_pylist() == [0, 1] and t["cls"].to_pylist() == ["car", "traffic_cone"]
    assert t["det_id"].to_pylist() == [0, 0]


# ------------------------------------------------------------------------------------ tracker
def test_tracker_keeps_an_id_on_a_moving_box_and_starts_anew_after_a_long_gap():
    tracker = IouTracker(TrackerConfig(iou_threshold=0.3, min_hits=2, max_age=3))
    ids, states = [], []
    for f in range(10):
        x = 10.0 + 2.0 * f  # 2 px per frame, a 20 px wide box
        tid, confirmed = tracker.step(f, np.array([[x, 20, x + 20, 40]]))
        ids.append(int(tid[0]))
        states.append(bool(confirmed[0]))
    assert len(set(ids)) == 1 and states[0] is False and all(states[1:])
    # a short gap (2 frames) keeps the id, with the box predicted along its motion
    tid, _ = tracker.step(12, np.array([[34.0, 20, 54, 40]]))
    assert int(tid[0]) == ids[0]
    # a long gap starts a new, tentative track
    tid, confirmed = tracker.step(30, np.array([[70.0, 20, 90, 40]]))
    assert int(tid[0]) != ids[0] and not confirmed[0]


def test_track_camera_rows_follow_the_schema():
    boxes = [np.array([[10 + f, 10, 30 + f, 30, 0.9, 0], [100, 50, 110, 70, 0.8, 1]], np.float32) for f in range(5)]
    tracks = track_camera(camera_table("a", boxes))
    assert tracks.schema.equals(STREAMS["tracks"])
    assert set(tracks["sensor"].to_pylist()) == {"camera"}
    assert pc.count_distinct(tracks["track_id"]).as_py() == 2
    assert tracks.filter(pc.equal(tracks["frame"], 0))["state"].to_pylist() == ["tentative"] * 2
    assert tracks.filter(pc.equal(tracks["frame"], 4))["state"].to_pylist() == ["confirmed"] * 2


# ------------------------------------------------------------------------------------ a week
class NoDetectionsDouble:
    """Test double for the camera model: sees nothing."""

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        return [np.zeros((0, 6), np.float32) for _ in images]


class OracleDetectorDouble:
    """Test double for the camera model: returns the ground truth of each image (looked up by
    the image's bytes), dropping every ``drop_every``-th box."""

    def __init__(self, truth_by_image: dict[bytes, np.ndarray], drop_every: int = 5) -> None:
        self.truth_by_image = truth_by_image
        self.drop_every = drop_every
        self.dropped = 0

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        out = []
        for img in images:
            boxes = self.truth_by_image[hashlib.sha1(img.tobytes()).digest()]
            keep = np.arange(len(boxes)) % self.drop_every != self.drop_every - 1
            self.dropped += int((~keep).sum())
            out.append(boxes[keep])
        return out


def _truth_by_image(week, truth: pa.Table) -> dict[bytes, np.ndarray]:
    index = {}
    for row in week.logs.frames.select(["log_id", "frame", "image_uri"]).to_pylist():
        t = truth.filter(pc.and_(pc.equal(truth["log_id"], row["log_id"]), pc.equal(truth["frame"], row["frame"])))
        cls = np.array([CLASSES.index(c) for c in t["cls"].to_pylist()], np.float32)
        boxes = np.column_stack([t[k].to_numpy() for k in ("x1", "y1", "x2", "y2")] + [np.full(len(t), 0.9), cls])
        img = np.asarray(Image.open(row["image_uri"]).convert("RGB"))
        index[hashlib.sha1(img.tobytes()).digest()] = boxes.astype(np.float32).reshape(-1, 6)
    return index


def test_a_week_produces_valid_tagged_logs(tmp_path: Path):
    kw = dict(seed=7, n_logs=3, frames_per_log=12, start=START)
    first = drive_week(2, detector=NoDetectionsDouble(), out_dir=tmp_path / "a", **kw)
    for name, table in first.logs.tables().items():
        assert table.schema.equals(STREAMS[name]), name
    assert first.truth.schema.equals(TRUTH) and first.truth_3d.schema.equals(TRUTH_3D)
    frames = first.logs.frames
    assert frames.num_rows == 36 and first.logs.calibration.num_rows == 3
    assert all(re.fullmatch(r"w02-veh\d\d-\d{3}", log) for log in first.logs.log_ids)
    for log in first.logs.log_ids:
        f = frames.filter(pc.equal(frames["log_id"], log))
        for tag in ("vehicle", "weather", "time_of_day", "place"):
            assert f[tag].null_count == 0 and pc.count_distinct(f[tag]).as_py() == 1
        assert f["vehicle"][0].as_py() == f"veh-{log[7:9]}"
        assert np.all(np.diff(f["timestamp_ns"].to_numpy()) == 100_000_000)
    ts = frames["timestamp_ns"].to_numpy()
    start_ns = int(START.timestamp()) * 1_000_000_000
    assert ts.min() >= start_ns and ts.max() < start_ns + 7 * 86_400 * 1_000_000_000
    uris = frames["image_uri"].to_pylist()
    assert all(Path(u).is_absolute() and Path(u).is_file() for u in uris)
    assert uris[0].endswith(f"images/{frames['log_id'][0].as_py()}/000000.png")
    assert first.logs.camera_detections.num_rows == 0 and first.logs.lidar_detections.num_rows > 0

    # the same week with an oracle camera: detections are the truth minus the dropped boxes
    oracle = OracleDetectorDouble(_truth_by_image(first, first.truth))
    second = drive_week(2, detector=oracle, out_dir=tmp_path / "b", **kw)
    assert second.truth.equals(first.truth)
    assert second.logs.lidar_detections.equals(first.logs.lidar_detections)
    assert second.logs.camera_detections.num_rows == first.truth.num_rows - oracle.dropped > 0
    tracks = second.logs.tracks
    assert tracks.num_rows == second.logs.camera_detections.num_rows
    assert pc.mean(pc.equal(tracks["state"], "confirmed")).as_py() > 0.5

    path = write_truth(second.truth, tmp_path / "truth.parquet")
    assert pq.read_table(path).equals(second.truth)


def test_truth_boxes_are_the_calibrated_projection_of_the_3d_truth(tmp_path: Path):
    """What mining does with the logged calibration reproduces the 2D truth of whole objects."""
    try:
        from fleetloop.perception.geometry import project_boxes, projection_matrix
    except ImportError:  # before the package move
        from fleetloop.checks.geometry import project_boxes, projection_matrix
    week = drive_week(1, seed=2, detector=NoDetectionsDouble(), n_logs=2, frames_per_log=10,
                      out_dir=tmp_path, start=START)
    cal = week.logs.calibration.to_pylist()
    M = np.stack([projection_matrix(np.array(c["P"]), np.array(c["lidar_to_cam"])) for c in cal])
    index = {c["log_id"]: k for k, c in enumerate(cal)}
    t3 = week.truth_3d.filter(week.truth_3d["labeled"]).to_pandas()
    both = t3.merge(week.truth.to_pandas(), on=["log_id", "frame", "track_id"])
    inside = both[(both.x1 > 1) & (both.y1 > 1) & (both.x2 < 159) & (both.y2 < 95)]
    assert len(inside) > 20
    box, _, _ = project_boxes(inside[["x", "y", "z", "l", "w", "h", "yaw"]].to_numpy(), M, [160] * len(M), [96] * len(M),
                              inside["log_id"].map(index).to_numpy())
    assert np.abs(box - inside[["x1", "y1", "x2", "y2"]].to_numpy()).max() < 1e-3


def test_scenario_set_covers_every_slice():
    images, truth, frames = render_scenario_set(seed=0, n_frames=96)
    assert len(images) == frames.num_rows == 96
    slices = {(r["weather"], r["time_of_day"]) for r in frames.to_pylist()}
    assert slices == {("clear", "day"), ("rain", "day"), ("clear", "night"), ("rain", "night")}
    assert pc.any(frames["green_cones"]).as_py()
    assert set(truth["cls"].to_pylist()) == set(CLASSES)
    assert truth["image"].to_numpy().max() < 96
    green = truth.filter(pc.equal(truth["attr"], "green"))
    assert set(green["cls"].to_pylist()) == {"traffic_cone"}


def test_the_simulated_stacks_mining_profile(tmp_path, monkeypatch) -> None:
    """The demo mines the simulated stack with its own operating point, pixel sizes (scaled from
    params.yaml's KITTI values to the 96-pixel camera) and labeling policy, written into the
    demo's params copy."""
    import yaml

    from fleetloop.demo import DemoConfig, _pipeline_params
    from fleetloop.mine.params import MiningParams
    from fleetloop.settings import Settings
    from fleetloop.sim.render import RenderConfig
    from fleetloop.sim.stack import mine_profile, sim_mining

    profile = mine_profile()
    # what the simulated team labels and the evaluation scores: every ground-truth box the renderer keeps
    assert profile["label_min_height_px"] == RenderConfig().min_height_px == 4.0
    assert profile["min_box_height_px"] == round(12.0 * 96 / 375, 2)
    assert set(profile["lidar_class_thresholds"]) == {"car", "pedestrian", "cyclist", "traffic_cone"}
    p = sim_mining(MiningParams())
    assert p.lidar_class_thresholds["car"] == 0.9 and p.label_min_height_px == profile["label_min_height_px"]
    assert sim_mining(p) == p  # merging twice changes nothing

    import os
    from pathlib import Path

    # the demo points FLEETLOOP_PARAMS at its copy: set here so that monkeypatch restores it after
    monkeypatch.setenv("FLEETLOOP_PARAMS", str(Path(__file__).resolve().parents[2] / "params.yaml"))
    settings = Settings(home=tmp_path)
    for _ in range(2):  # a rerun in the same process reads the demo's copy: the same values
        _pipeline_params(settings, DemoConfig())
        copy = yaml.safe_load(Path(os.environ["FLEETLOOP_PARAMS"]).read_text())
        assert {k: copy["mine"][k] for k in profile} == profile
        assert copy["mine"]["camera_uncertainty_band"] == [0.0, 0.5]  # the rest is params.yaml's


def test_the_label_efficiency_errors_reference_counts_misses_and_false_alarms_by_hand() -> None:
    """benchmarks/label_efficiency.py's 'errors' selection: per frame, the logged camera boxes'
    misses + false alarms against the truth (IoU >= 0.5, same class, one-to-one)."""
    from types import SimpleNamespace

    import pyarrow as pa

    from benchmarks.label_efficiency import select_errors, true_errors

    def boxes(rows: list[tuple[str, int, str, float, float, float, float]]) -> pa.Table:
        cols = list(zip(*rows, strict=True)) if rows else [[]] * 7
        return pa.table({"log_id": pa.array(cols[0], pa.string()), "frame": pa.array(cols[1], pa.int64()),
                         "cls": pa.array(cols[2], pa.string()),
                         **{k: pa.array(v, pa.float64()) for k, v in zip(("x1", "y1", "x2", "y2"), cols[3:], strict=True)}})

    truth = boxes([("a", 0, "car", 0, 0, 10, 10), ("a", 0, "car", 20, 0, 30, 10),  # one hit, one miss
                   ("a", 2, "car", 0, 0, 10, 10)])  # a box shifted to IoU 0.43: a miss and a false alarm
    cam = boxes([("a", 0, "car", 0, 0, 10, 10), ("a", 0, "pedestrian", 20, 0, 30, 10),  # wrong class: a false alarm
                 ("a", 2, "car", 4, 0, 14, 10)])
    frames = pa.table({"log_id": ["a", "a", "a"], "frame": pa.array([0, 1, 2], pa.int64())})
    week = SimpleNamespace(truth=truth, logs=SimpleNamespace(camera_detections=cam, frames=frames))
    assert true_errors(week) == {("a", 0): 2, ("a", 1): 0, ("a", 2): 2}
    import numpy as np

    picked = select_errors(week, 2, np.random.default_rng(0))
    assert sorted(picked) == [("a", 0), ("a", 2)]


def test_the_label_efficiency_mix_counts_the_distinct_green_cones_picked() -> None:
    """benchmarks/label_efficiency.py's per-week mix: shares of rain, night and green-cone frames,
    and how many distinct green cones (log, track) the picked frames hold."""
    from types import SimpleNamespace

    import pyarrow as pa

    from benchmarks.label_efficiency import _mix

    frames = pa.table({"log_id": ["a", "a", "a", "b"], "frame": pa.array([0, 1, 2, 0], pa.int32()),
                       "weather": ["rain", "clear", "clear", "rain"], "time_of_day": ["day", "night", "day", "day"]})
    # cone 7 of log a in frames 0-2, cone 8 of log a in frame 2, cone 7 of log b (another cone) in frame 0
    truth = pa.table({"log_id": ["a", "a", "a", "a", "b", "a"], "frame": pa.array([0, 1, 2, 2, 0, 1], pa.int32()),
                      "track_id": pa.array([7, 7, 7, 8, 7, 9], pa.int64()),
                      "attr": ["green", "green", "green", "green", "green", None]})
    week = SimpleNamespace(logs=SimpleNamespace(frames=frames), truth=truth)
    assert _mix(week, [("a", 0), ("a", 1)]) == {"rain": 0.5, "night": 0.5, "green": 1.0, "green_cones": 1.0}
    assert _mix(week, [("a", 2), ("b", 0)])["green_cones"] == 3.0
    assert _mix(week, [("a", 0), ("a", 1), ("a", 2), ("b", 0)])["green_cones"] == 3.0
    assert _mix(week, []) == {"rain": 0.0, "night": 0.0, "green": 0.0, "green_cones": 0.0}
