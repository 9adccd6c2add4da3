"""The sanity checks: one synthetic case per flag, ranking/selection, bad input, real KITTI."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fleetloop.mine.mining import FLAGS_SCHEMA, FRAMES_SCHEMA, mine, rank, select
from fleetloop.mine.params import MiningParams
from fleetloop.perception.batch import MiningInputError
from fleetloop.perception.geometry import project_boxes, projection_matrix
from fleetloop.schema import CALIBRATION, CAMERA_DETECTIONS, FRAMES, LIDAR_DETECTIONS, TRACKS, DriveLogs
from fleetloop.sim.sample import HEIGHT, LIDAR_TO_CAM, P2, WIDTH, generate_sample

CAR = (4.2, 1.7, 1.5)
PED = (0.8, 0.6, 1.75)


def image_box(x: float, y: float, dims=CAR) -> list[float]:
    """The camera box that exactly matches a lidar box at (x, y)."""
    l, w, h = dims  # noqa: E741
    box, _, _ = project_boxes([[x, y, -1.73 + h / 2, l, w, h, 0.0]], projection_matrix(P2, LIDAR_TO_CAM)[None],
                              [WIDTH], [HEIGHT])
    return box[0].tolist()


def make_logs(n_frames: int = 3, lidar=(), camera=(), tracks=(), log_id: str = "L1", calibrated: bool = True,
              weather: str = "clear") -> DriveLogs:
    """lidar: (frame, cls, score, x, y); camera: (frame, cls, score, box); tracks: (frame, track_id, cls, box)."""
    f = list(range(n_frames))
    frames = pa.Table.from_pydict({
        "log_id": [log_id] * n_frames, "frame": f, "timestamp_ns": [i * 100_000_000 for i in f],
        "image_uri": [None] * n_frames, "vehicle": ["v"] * n_frames, "weather": [weather] * n_frames,
        "time_of_day": ["day"] * n_frames, "place": ["p"] * n_frames}, schema=FRAMES)

    def det_ids(fr):
        seen: dict[int, int] = {}
        out = []
        for x in fr:
            out.append(seen.get(x, 0))
            seen[x] = seen.get(x, 0) + 1
        return out

    lidar = sorted(lidar, key=lambda r: r[0])
    dims = [PED if r[1] == "pedestrian" else CAR for r in lidar]
    lid = pa.Table.from_pydict({
        "log_id": [log_id] * len(lidar), "frame": [r[0] for r in lidar], "det_id": det_ids([r[0] for r in lidar]),
        "cls": [r[1] for r in lidar], "score": [r[2] for r in lidar], "x": [r[3] for r in lidar], "y": [r[4] for r in lidar],
        "z": [-1.73 + d[2] / 2 for d in dims], "l": [d[0] for d in dims], "w": [d[1] for d in dims],
        "h": [d[2] for d in dims], "yaw": [0.0] * len(lidar)}, schema=LIDAR_DETECTIONS)
    camera = sorted(camera, key=lambda r: r[0])
    cam = pa.Table.from_pydict({
        "log_id": [log_id] * len(camera), "frame": [r[0] for r in camera], "det_id": det_ids([r[0] for r in camera]),
        "cls": [r[1] for r in camera], "score": [r[2] for r in camera],
        **{k: [r[3][i] for r in camera] for i, k in enumerate(["x1", "y1", "x2", "y2"])}}, schema=CAMERA_DETECTIONS)
    tracks = sorted(tracks, key=lambda r: (r[0], r[1]))
    trk = pa.Table.from_pydict({
        "log_id": [log_id] * len(tracks), "frame": [r[0] for r in tracks], "track_id": [r[1] for r in tracks],
        "sensor": ["camera"] * len(tracks), "cls": [r[2] for r in tracks], "score": [None] * len(tracks),
        "state": ["confirmed"] * len(tracks),
        **{k: [r[3][i] for r in tracks] for i, k in enumerate(["x1", "y1", "x2", "y2"])}}, schema=TRACKS)
    cal = pa.Table.from_pydict({"log_id": [log_id], "P": [P2.tolist()], "lidar_to_cam": [LIDAR_TO_CAM.tolist()],
                                "image_width": [WIDTH], "image_height": [HEIGHT]}, schema=CALIBRATION)
    return DriveLogs(frames=frames, lidar_detections=lid, camera_detections=cam, tracks=trk,
                     calibration=cal if calibrated else CALIBRATION.empty_table())


def flags_of(result, reason: str) -> list[tuple[int, list[str], float]]:
    t = result.flags.to_pydict()
    return [(f, o, s) for f, r, o, s in zip(t["frame"], t["reason"], t["objects"], t["severity"], strict=False) if r == reason]


BOX = image_box(15.0, 0.0)


# ------------------------------------------------------------------ lidar <-> camera


def test_lidar_only_when_the_camera_loses_a_confident_object():
    logs = make_logs(lidar=[(f, "car", 0.99, 15.0, 0.0) for f in range(3)], camera=[(0, "car", 0.9, BOX), (2, "car", 0.9, BOX)])
    res = mine(logs)
    assert [(f, o) for f, o, _ in flags_of(res, "lidar_only")] == [(1, ["lidar:0"])]
    assert res.flags.schema == FLAGS_SCHEMA and res.frames.schema == FRAMES_SCHEMA
    assert res.frames.to_pydict()["reasons"][1].startswith("lidar_only:1")


def test_camera_only_and_lidar_flicker_when_the_lidar_drops_a_frame():
    logs = make_logs(lidar=[(0, "car", 0.99, 15.0, 0.0), (2, "car", 0.99, 14.0, 0.0)],
                     camera=[(f, "car", 0.9, image_box(15.0 - 0.5 * f, 0.0)) for f in range(3)])
    res = mine(logs)
    assert [(f, o) for f, o, _ in flags_of(res, "camera_only")] == [(1, ["camera:0"])]
    assert [(f, o) for f, o, _ in flags_of(res, "flicker")] == [(1, ["lidar_prev:0"])]
    # both flags are about the same missing object in frame 1, yet counted as two hypotheses
    assert res.frames.column("n_flags").to_pylist()[1] >= 2


def test_a_log_without_any_lidar_detection_is_not_judged_against_the_lidar():
    """Mined beside a log that has lidar, a log whose lidar stream is absent (its file missing)
    or dead would read as the lidar missing every object it has: camera_only on every frame,
    filling the budget. Its camera boxes are not judged against a lidar, and the run says so."""
    seen = make_logs(lidar=[(f, "car", 0.99, 15.0, 0.0) for f in range(3)],
                     camera=[(f, "car", 0.9, BOX) for f in range(3)], log_id="with-lidar")
    blind = make_logs(camera=[(f, "car", 0.9, BOX) for f in range(3)], log_id="no-lidar")
    res = mine(DriveLogs.concat([seen, blind]))
    for reason in ("camera_only", "lidar_miss", "lidar_only", "camera_miss"):
        assert not flags_of(res, reason), reason
    assert any("no lidar detection at all in logs ['no-lidar']" in note for note in res.skipped)
    # the log with lidar is still judged: the camera losing its car in frame 1 is flagged
    gap = make_logs(lidar=[(f, "car", 0.99, 15.0, 0.0) for f in range(3)],
                    camera=[(0, "car", 0.9, BOX), (2, "car", 0.9, BOX)], log_id="with-lidar")
    res = mine(DriveLogs.concat([gap, blind]))
    assert [(f, o) for f, o, _ in flags_of(res, "lidar_only")] == [(1, ["lidar:0"])]


def test_lidar_weak_when_the_lidar_partner_is_below_the_operating_point():
    res = mine(make_logs(n_frames=1, lidar=[(0, "car", 0.6, 15.0, 0.0)], camera=[(0, "car", 0.9, BOX)]))
    assert [(f, o) for f, o, _ in flags_of(res, "lidar_weak")] == [(0, ["camera:0", "lidar:0"])]
    assert not flags_of(res, "lidar_only") and not flags_of(res, "camera_only")


def test_class_mismatch_and_geometry():
    params = MiningParams(camera_classes=["car", "pedestrian"], lidar_classes=["car", "pedestrian"])
    res = mine(make_logs(n_frames=1, lidar=[(0, "car", 0.99, 15.0, 0.0)], camera=[(0, "pedestrian", 0.9, BOX)]), params)
    assert [(f, o) for f, o, _ in flags_of(res, "class_mismatch")] == [(0, ["lidar:0", "camera:0"])]
    x1, y1, x2, y2 = BOX
    shifted = [x1 + 0.35 * (x2 - x1), y1, x2 + 0.35 * (x2 - x1), y2]  # IoU = 0.65 / 1.35 ~ 0.48
    res = mine(make_logs(n_frames=1, lidar=[(0, "car", 0.99, 15.0, 0.0)], camera=[(0, "car", 0.9, shifted)]))
    assert [f for f, _, _ in flags_of(res, "geometry")] == [0]
    assert not flags_of(res, "lidar_only")


def test_objects_outside_the_other_sensors_view_are_not_one_sided():
    # a pedestrian lidar box, but the camera in this batch only ever reports cars
    res = mine(make_logs(n_frames=1, lidar=[(0, "pedestrian", 0.99, 10.0, 0.0), (0, "car", 0.99, 15.0, -6.0)],
                         camera=[(0, "car", 0.9, image_box(15.0, -6.0))]))
    assert not flags_of(res, "lidar_only")
    # a lidar box far beyond the camera's range
    res = mine(make_logs(n_frames=1, lidar=[(0, "car", 0.99, 95.0, 0.0), (0, "car", 0.99, 15.0, 0.0)],
                         camera=[(0, "car", 0.9, BOX)]))
    assert not flags_of(res, "lidar_only")


# ------------------------------------------------------------------ temporal


def test_isolated_confident_lidar_detection():
    """An isolated confident detection that no neighbouring frame and no camera stream supports
    is a likely false alarm; one that a camera sees is not isolated."""
    res = mine(make_logs(lidar=[(1, "car", 0.99, 15.0, 0.0)], camera=[(1, "car", 0.9, image_box(15.0, 6.0))]))
    assert [(f, o) for f, o, _ in flags_of(res, "isolated")] == [(1, ["lidar:0"])]
    res = mine(make_logs(lidar=[(1, "car", 0.99, 15.0, 0.0)], camera=[(1, "car", 0.9, BOX)]))
    assert not flags_of(res, "isolated")


def _track_rows(track_id, frames, box=BOX, cls="car"):
    return [(f, track_id, cls, box) for f in frames]


def test_track_checks_short_gap_switch_and_motion():
    far = [BOX[0] + 500, BOX[1], BOX[2] + 500, BOX[3]]
    tracks = (_track_rows(1, range(0, 6)) + _track_rows(2, range(6, 20))  # 1 -> 2 on the same spot: switch at 6
              + _track_rows(3, [9, 10], image_box(30.0, 5.0))  # short track in the middle of the log
              + _track_rows(4, [0, 1, 2, 3, 5, 6, 7], image_box(25.0, -5.0))  # gap at frame 4
              + [(f, 5, "car", BOX if f < 15 else far) for f in range(10, 20)])  # jumps 500 px at 15
    res = mine(make_logs(n_frames=20, tracks=tracks))
    assert [(f, o) for f, o, _ in flags_of(res, "id_switch")] == [(6, ["track:2", "track:1"])]
    assert sorted({f for f, _, _ in flags_of(res, "short_track")}) == [9, 10]
    assert [(f, o) for f, o, _ in flags_of(res, "track_gap")] == [(4, ["track:4"])]
    assert [(f, o) for f, o, _ in flags_of(res, "implausible_motion")] == [(15, ["track:5"])]
    assert any("tracker<->detector (camera): no camera detections" in s for s in res.skipped)


def test_tracker_detector():
    tracks = _track_rows(1, range(3)) + _track_rows(2, range(3), image_box(25.0, -5.0))
    camera = [(f, "car", 0.9, BOX) for f in range(3)] + [(1, "car", 0.9, image_box(30.0, 6.0))]
    res = mine(make_logs(tracks=tracks, camera=camera))
    assert sorted(f for f, _, _ in flags_of(res, "track_unsupported")) == [0, 1, 2]
    assert [(f, o) for f, o, _ in flags_of(res, "detection_unexplained")] == [(1, ["camera:1"])]


# ------------------------------------------------------------------ uncertainty and integrity


def test_uncertainty_band_peaks_at_the_operating_point():
    p = MiningParams(lidar_class_thresholds={})  # one operating point for every class: 0.95
    res = mine(make_logs(n_frames=1, lidar=[(0, "car", 0.951, 15.0, 0.0), (0, "car", 0.999, 15.0, 5.0),
                                            (0, "car", 0.985, 30.0, -5.0), (0, "car", 0.93, 30.0, 5.0)]), p)
    sev = {o[0]: s for _, o, s in flags_of(res, "uncertain")}
    assert sev["lidar:0"] == pytest.approx(p.severities.uncertain, rel=0.02)
    assert "lidar:1" not in sev  # outside the band
    assert 0 < sev["lidar:2"] < sev["lidar:0"]
    # below its operating point a detection is not used downstream: it cannot be a false alarm
    assert "lidar:3" not in sev


def test_invalid_boxes_are_flagged():
    res = mine(make_logs(n_frames=1, camera=[(0, "car", 0.9, [100, 100, 90, 150])]))
    assert [(f, o) for f, o, _ in flags_of(res, "invalid_box")] == [(0, ["camera:0"])]


# ------------------------------------------------------------------ missing inputs, bad inputs


def test_checks_without_their_inputs_are_skipped_and_say_so():
    res = mine(make_logs(lidar=[(f, "car", 0.99, 15.0, 0.0) for f in range(3)]))
    assert any(s.startswith("lidar<->camera: no camera") for s in res.skipped)
    assert res.frames.num_rows == 3
    res = mine(make_logs(lidar=[(1, "car", 0.99, 15.0, 0.0)], camera=[(1, "car", 0.9, BOX)], calibrated=False))
    assert any("lidar<->camera: no calibration" in s for s in res.skipped)
    assert flags_of(res, "isolated")  # the other checks still run


def test_missing_calibration_of_one_log_skips_only_that_log():
    a = make_logs(lidar=[(f, "car", 0.99, 15.0, 0.0) for f in range(3)], camera=[(0, "car", 0.9, BOX)], log_id="A")
    b = make_logs(lidar=[(f, "car", 0.99, 15.0, 0.0) for f in range(3)], camera=[(0, "car", 0.9, BOX)], log_id="B",
                  calibrated=False)
    res = mine(DriveLogs.concat([a, b]))
    assert any("no usable calibration for logs ['B']" in s for s in res.skipped)
    logs_flagged = {r for r, reason in zip(res.flags.column("log_id").to_pylist(), res.flags.column("reason").to_pylist(), strict=False)
                    if reason == "lidar_only"}
    assert logs_flagged == {"A"}


def test_nan_and_unknown_frames_are_clear_errors():
    logs = make_logs(lidar=[(0, "car", 0.99, 15.0, 0.0)])
    bad = logs.lidar_detections.set_column(5, "x", pa.array([np.nan], pa.float32()))
    with pytest.raises(MiningInputError, match=r"lidar_detections: column 'x' is not a finite number .* row 0 \(log 'L1', frame 0\)"):
        mine(DriveLogs(**{**logs.tables(), "lidar_detections": bad}))
    ghost = logs.lidar_detections.set_column(1, "frame", pa.array([7], pa.int32()))
    with pytest.raises(MiningInputError, match=r"frame 7.*not in the frames table"):
        mine(DriveLogs(**{**logs.tables(), "lidar_detections": ghost}))
    with pytest.raises(MiningInputError, match="no frames"):
        mine(DriveLogs.empty())


# ------------------------------------------------------------------ scoring, ranking, selection


def test_noisy_or_per_object_and_cost():
    # one object with two flags (lidar_only + uncertain) is less than two objects with one flag each
    p = MiningParams(temporal_smoothing=0.0)
    one = mine(make_logs(n_frames=1, lidar=[(0, "car", 0.95, 15.0, 0.0)], camera=[(0, "car", 0.9, image_box(15.0, 6.0))]), p)
    e = one.frames.column("expected_errors").to_pylist()[0]
    s = p.severities
    assert e == pytest.approx(1 - (1 - s.lidar_only) * (1 - s.uncertain) + s.camera_only * 0, abs=0.51)
    assert e < s.lidar_only + s.uncertain + s.camera_only


def test_results_are_deterministic_and_shard_invariant():
    logs, _ = generate_sample(n_logs=3, n_frames=60, seed=3)
    params = MiningParams(camera_classes=["car", "pedestrian", "cyclist"], lidar_classes=["car", "pedestrian", "cyclist"])
    a, b = mine(logs, params), mine(logs, params)
    assert a.flags.equals(b.flags) and a.frames.equals(b.frames)
    alone = mine(logs.select(["sample-001"]), params).frames
    together = a.frames.filter(pa.compute.equal(a.frames["log_id"], "sample-001"))
    assert alone.column("score").to_pylist() == together.column("score").to_pylist()


def test_rank_and_select_with_diversity():
    logs, _ = generate_sample(n_logs=2, n_frames=80, seed=1)
    frames = mine(logs).frames
    ranked = rank(frames)
    s = ranked.column("score").to_numpy()
    assert np.all(s[:-1] >= s[1:]) and ranked.num_rows == frames.num_rows
    # a run of identical consecutive frames must not eat the budget
    run = pa.table({"log_id": ["A"] * 10 + ["B"], "frame": pa.array([*list(range(10)), 0], pa.int32()),
                    "score": [5.0] * 10 + [4.0]})
    params = MiningParams(diversity_window=2, diversity_similarity=0.5)
    picked = select(run, 3, params).to_pydict()
    assert picked["log_id"] == ["A", "A", "A"] and picked["frame"] == [0, 3, 6]  # never two within the window
    assert picked["rank"] == [1, 2, 3]
    short_run = run.slice(7)  # A7, A8, A9 then B0: the discounted neighbours fall behind B
    assert select(short_run, 2, params).column("log_id").to_pylist() == ["A", "B"]
    assert select(run, 3, MiningParams(diversity_window=0)).column("frame").to_pylist() == [0, 1, 2]
    assert select(frames, 10_000).num_rows == frames.num_rows


def test_slice_boost_prefers_drifted_slices():
    other = image_box(15.0, 6.0)  # the camera sees something else: the lidar object is isolated and one-sided
    a = make_logs(lidar=[(1, "car", 0.99, 15.0, 0.0)], camera=[(1, "car", 0.9, other)], log_id="dry", weather="clear")
    b = make_logs(lidar=[(1, "car", 0.99, 15.0, 0.0)], camera=[(1, "car", 0.9, other)], log_id="wet", weather="rain")
    logs = DriveLogs.concat([a, b])
    top = rank(mine(logs, MiningParams(slice_boost={"weather=rain": 2.0})).frames).to_pydict()
    assert top["log_id"][0] == "wet"
    with pytest.raises(ValueError, match="slice_boost key"):
        MiningParams(slice_boost={"rain": 2.0})


def test_a_frame_in_several_boosted_slices_gets_the_largest_boost_not_the_product():
    other = image_box(15.0, 6.0)
    logs = make_logs(lidar=[(1, "car", 0.99, 15.0, 0.0)], camera=[(1, "car", 0.9, other)], weather="rain")
    plain = mine(logs).frames.column("score").to_pylist()[1]
    assert plain > 0

    def boosted(boost: dict[str, float]) -> float:
        return mine(logs, MiningParams(slice_boost=boost)).frames.column("score").to_pylist()[1] / plain

    assert boosted({"weather=rain": 2.0, "class=car": 3.0}) == pytest.approx(3.0, rel=1e-6)
    assert boosted({"weather=rain": 2.0, "class=pedestrian": 3.0}) == pytest.approx(2.0, rel=1e-6)  # not in that slice
    assert boosted({"weather=rain": 2.0, "place=p": 0.5}) == pytest.approx(1.0, rel=1e-6)  # a demoted slice still counts


def test_generated_sample_ranks_injected_errors_first():
    logs, injected = generate_sample(n_logs=3, n_frames=150, seed=0)
    ranked = rank(mine(logs).frames).to_pydict()
    bad = set(zip(injected.column("log_id").to_pylist(), injected.column("frame").to_pylist(), strict=False))
    hit = [(lg, f) in bad for lg, f in zip(ranked["log_id"], ranked["frame"], strict=False)]
    top = hit[: len(hit) // 10]
    assert np.mean(top) >= 0.9 > np.mean(hit)


# ------------------------------------------------------------------ real data


@pytest.mark.kitti
def test_kitti_ranking_under_the_yardstick(kitti_root):
    """Judged by ../shared/tools/kitti_eval (YOLOX-SORT the judged stream): the default beats the
    reference ranker and the simple baselines, and holds the figures reported in
    benchmarks/README.md (a regression guard a little below them: 3.01 / 2.46 meet the issue's
    3.0 / 2.2 by one error, and this guards against losing more than a few)."""
    from benchmarks.mining_quality import YARDSTICK, evaluate_yardstick

    if not (YARDSTICK / "score.py").exists():
        pytest.skip("the yardstick (../shared/tools/kitti_eval) is not available")
    rep = evaluate_yardstick(kitti_root, "yolox_sort", MiningParams())
    r = rep["rankers"]
    m = r["fleetloop"]
    assert m["lift@10%"] >= 2.9 and m["cost-lift@10%"] >= 2.2, m
    for other in ("reference", "low confidence", "number of detections", "equal-weight disagreement", "random"):
        assert m["lift@10%"] > r[other]["lift@10%"] and m["cost-lift@10%"] > r[other]["cost-lift@10%"], other
    assert "tracker<->detector (camera): no camera detections" in rep["skipped"]
    # the breakdown by kind of error: the lidar's misses per class add up to the yardstick's own count
    tot = rep["error_totals"]
    assert tot["lidar_fn"] == rep["errors"]["lidar_fn"] == sum(tot[f"lidar_fn {c}"] for c in ("car", "pedestrian", "cyclist"))
    assert set(rep["error_types"]) == {"fleetloop", "low confidence", "number of detections", "reference", "oracle (true errors)"}
    # within each sequence, ranking by the true errors is the ceiling of every ranker
    assert sorted(rep["sequences"]) == ["0001", "0006", "0008", "0010", "0012"]
    for row in rep["sequences"].values():
        assert all(row["oracle (true errors)"]["errors"] >= m["errors"] - 1e-9 for m in row.values())


def test_sequence_lifts_rank_each_sequence_among_itself() -> None:
    from benchmarks.mining_quality import sequence_lifts

    keys = [("a", i) for i in range(10)] + [("b", i) for i in range(10)]
    errors = np.r_[np.zeros(9), 2.0, 1.0, np.zeros(9)]
    score = np.r_[np.arange(10.0), -np.arange(10.0) - 100]  # a's best frame first; b's frames all below a's
    ped = {"Pedestrian": {("b", 0): 1, ("b", 5): 1}}
    out = sequence_lifts({"x": score}, errors, ped, keys)
    assert out["a"]["x"]["errors"] == pytest.approx(2.0 / 0.2)  # the top 1 of 10 holds both of a's errors
    assert out["b"]["x"]["errors"] == pytest.approx(1.0 / 0.1)  # ranked among b alone, its first frame is on top
    assert out["b"]["x"]["lidar_fn pedestrian"] == pytest.approx(1.0 / 0.2)
    assert np.isnan(out["a"]["x"]["lidar_fn pedestrian"])


def test_lift_at_scores_ties_by_expectation_like_the_yardstick() -> None:
    from benchmarks.mining_quality import lift_at

    values = np.array([3.0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    assert lift_at(np.zeros(10), values) == pytest.approx(1.0)  # a constant score is random order
    assert lift_at(-np.arange(10.0), values) == pytest.approx(3.0 / 0.4)  # top 1 of 10 holds 3 of 4 errors
    assert lift_at(np.r_[1.0, 1.0, np.zeros(8)], values, p=0.1) == pytest.approx(1.5 / 0.4)  # half of a two-way tie


@pytest.mark.kitti
def test_kitti_every_check_family_fires(kitti_root):
    from fleetloop.ingest.importers import load_logs

    logs = load_logs(kitti_root, "kitti-tracking", camera_tracker="yolox_sort")
    res = mine(logs)
    reasons = set(res.flags.column("reason").to_pylist())
    assert {"lidar_only", "camera_only", "lidar_weak", "geometry", "flicker", "isolated", "short_track",
            "uncertain"} <= reasons
    assert any("the camera source reports no confidence" in s for s in res.skipped)
    assert res.frames.num_rows == logs.num_frames
    assert set(res.frames.column("log_id").to_pylist()) == {"0001", "0006", "0008", "0010", "0012"}


def test_the_mining_run_key_ignores_when_the_calibration_was_fitted(tmp_path) -> None:
    """The weekly cycle refits the severities before every mining run: a rerun with the same fit
    (only its timestamp differs) must reuse the run, not mine the week again; other severities do not."""
    from fleetloop.mine.params import Calibration, MiningParams
    from fleetloop.mine.run import plan_mining
    from fleetloop.store.objects import LocalStore

    store = LocalStore(tmp_path)
    fit = {"uncertain": {"car": 0.2}}
    a = MiningParams(class_severities=fit, calibration=Calibration(fitted={}, source="dataset-v3", fitted_at="2026-12-01T03:00:00"))
    b = a.model_copy(update={"calibration": Calibration(fitted={}, source="dataset-v3", fitted_at="2026-12-08T03:00:00")})
    c = a.model_copy(update={"class_severities": {"uncertain": {"car": 0.3}}})
    keys = [plan_mining(store, p, 10, log_ids=[]).key for p in (a, b, c)]
    assert keys[0] == keys[1] != keys[2]


def test_a_stack_that_logs_only_confident_detections_is_mined():
    """No detection below the operating point in the whole batch (a stack that logs only what it
    uses): the temporal checks have nothing to link to and must say nothing, not fail."""
    res = mine(make_logs(n_frames=2, lidar=[(0, "car", 0.995, 15.0, 0.0)]), MiningParams())
    assert res.frames.num_rows == 2
    res = mine(make_logs(n_frames=2, lidar=[(0, "car", 0.995, 15.0, 0.0), (1, "car", 0.5, 15.0, 0.0)]), MiningParams())
    assert res.frames.num_rows == 2


def test_every_small_combination_of_streams_is_mined():
    """Each of two frames with no / a confident / a weak / a discarded (below ``lidar_min_score``)
    lidar car or pedestrian and no / a car / a pedestrian camera box: mining completes and scores
    every frame."""
    import itertools

    lidar_opts = [None, ("car", 0.995), ("car", 0.5), ("car", 0.1), ("pedestrian", 0.99), ("pedestrian", 0.4)]
    camera_opts = [None, ("car", 0.9), ("pedestrian", 0.8)]
    for ls in itertools.product(lidar_opts, repeat=2):
        for cs in itertools.product(camera_opts, repeat=2):
            lidar = [(f, *v, 15.0 + f * 0.3, 0.0) for f, v in enumerate(ls) if v]
            camera = [(f, v[0], v[1], image_box(15.0 + f * 0.3, 0.0)) for f, v in enumerate(cs) if v]
            res = mine(make_logs(n_frames=2, lidar=lidar, camera=camera), MiningParams())
            assert res.frames.num_rows == 2, (lidar, camera)


def test_random_small_batches_are_mined_selected_and_calibrated():
    """Seeded random logs of 1-6 frames: detections of every class at any score and position,
    camera boxes and tracks of up to two named streams, a few labels. Mining scores every frame,
    selection and calibration complete (each found a crash on an empty subset before)."""

    from fleetloop.mine.calibrate import calibrate

    rng = np.random.default_rng(7)
    classes = ["car", "pedestrian", "cyclist", "traffic_cone"]

    def box() -> list[float]:
        return image_box(float(rng.uniform(3, 90)), float(rng.uniform(-10, 10)))

    for _ in range(300):
        nf = int(rng.integers(1, 7))
        lidar = [(int(rng.integers(0, nf)), classes[rng.integers(0, 4)], float(rng.choice([0.2, 0.5, 0.9, 0.95, 0.999])),
                  float(rng.uniform(2, 90)), float(rng.uniform(-15, 15))) for _ in range(int(rng.integers(0, 6)))]
        camera = [(int(rng.integers(0, nf)), classes[rng.integers(0, 4)], float(rng.uniform(0, 1)), box())
                  for _ in range(int(rng.integers(0, 5)))]
        tracks = list({(int(f), int(t)): (int(f), int(t), classes[rng.integers(0, 4)], box())
                       for f, t in zip(rng.integers(0, nf, 5), rng.integers(1, 4, 5), strict=True)}.values())
        logs = make_logs(n_frames=nf, lidar=lidar, camera=camera, tracks=tracks[: int(rng.integers(0, 6))])
        if logs.tracks.num_rows and rng.random() < 0.5:
            sensors = pa.array(["camera:a" if rng.random() < 0.5 else "camera:b" for _ in range(logs.tracks.num_rows)])
            logs = DriveLogs(**{**logs.tables(), "tracks": logs.tracks.set_column(
                logs.tracks.schema.get_field_index("sensor"), "sensor", sensors)})
        params = MiningParams(camera_stream="camera:a" if rng.random() < 0.3 else None)
        res = mine(logs, params)
        assert res.frames.num_rows == nf, (lidar, camera, tracks)
        select(res.frames, int(rng.integers(1, 4)), params)
        labels = pa.Table.from_pylist([{"log_id": "L1", "frame": int(rng.integers(0, nf)), "cls": classes[rng.integers(0, 3)],
                                        **dict(zip(("x1", "y1", "x2", "y2"), box(), strict=True))}
                                       for _ in range(int(rng.integers(1, 6)))])
        calibrate(logs, labels, params)
