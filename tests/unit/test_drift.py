"""Drift monitoring: features with known answers, Evidently drift on a known shift, the summary
schema, the feedback to mining, and the KITTI slice as two "weeks" through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image
from scipy.spatial import distance
from typer.testing import CliRunner

from fleetloop.drift import (
    DriftInputError,
    DriftSummary,
    compute_drift,
    compute_features,
    drifted_slices,
    monitor_drift,
)
from fleetloop.drift.features import NUMERICAL_FEATURES, TAG_FEATURES
from fleetloop.ingest.importers import load_logs
from fleetloop.perception.geometry import project_boxes, projection_matrix
from fleetloop.schema import CALIBRATION, CAMERA_DETECTIONS, FRAMES, LIDAR_DETECTIONS, TRACKS, DriveLogs

WEEK1, WEEK2 = ["0001", "0006"], ["0008", "0010", "0012"]

# -- synthetic feature windows with a known shift ---------------------------------------------


def _shares(n: int, shares: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Exactly these shares of values (shuffled), so the expected distance is exact."""
    values = np.concatenate([np.full(round(n * s), v, dtype=object) for v, s in shares.items()])
    assert len(values) == n
    rng.shuffle(values)
    return values


def windows(n: int = 4000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    def one(shifted: bool) -> pd.DataFrame:
        return pd.DataFrame({
            "log_id": "sim", "frame": np.arange(n),
            "range_m": rng.normal(30.0 + (10.0 if shifted else 0.0), 10.0, n),  # shifted by one std
            "score": rng.normal(0.7, 0.1, n),  # unshifted
            "n_lidar_pedestrian": rng.poisson(3.0 if shifted else 1.0, n),
            "n_lidar_car": rng.poisson(6.0, n),
            "weather": pd.Categorical(_shares(n, {"clear": 0.5, "rain": 0.5} if shifted else {"clear": 0.8, "rain": 0.2}, rng)),
            "place": pd.Categorical(_shares(n, {"a": 0.5, "b": 0.5}, rng)),
        })

    return one(False), one(True)


def test_synthetic_shift_is_found_and_unshifted_is_not():
    ref, cur = windows()
    s = compute_drift(ref, cur).summary
    f = s.features
    assert set(f) == {"range_m", "score", "n_lidar_pedestrian", "n_lidar_car", "weather", "place"}  # meta excluded
    assert f["range_m"].drifted and not f["score"].drifted
    assert f["weather"].drifted and not f["place"].drifted
    assert f["n_lidar_pedestrian"].drifted and not f["n_lidar_car"].drifted
    # the fixed methods, and their values: a one-std mean shift is a normed Wasserstein distance of ~1
    assert {f[c].method for c in ("range_m", "score")} == {"wasserstein"}
    assert f["weather"].method == "jensenshannon"
    assert f["range_m"].score == pytest.approx(1.0, abs=0.1)
    assert f["score"].score < 0.1
    assert f["weather"].score == pytest.approx(distance.jensenshannon([0.8, 0.2], [0.5, 0.5]), abs=1e-9)
    assert f["place"].score == pytest.approx(0.0, abs=1e-9)
    assert f["weather"].reference_shares == pytest.approx({"clear": 0.8, "rain": 0.2})
    assert f["range_m"].current_mean == pytest.approx(cur["range_m"].mean())
    assert s.n_drifted == 3 and s.share_drifted == pytest.approx(0.5)
    assert s.drifted_features == ["range_m", "n_lidar_pedestrian", "weather"]
    assert s.dataset_drift  # 0.5 >= default drift_share 0.5
    assert not compute_drift(ref, cur, drift_share=0.6).summary.dataset_drift
    column_tests = [t for t in s.tests if t.name.startswith("Value Drift")]
    assert len(column_tests) == 6 and sum(t.status == "fail" for t in column_tests) == 3
    assert s.tests[-1].name == "share of drifted features" and s.tests[-1].status == "fail"


def test_statistics_use_every_row_when_the_html_is_sampled():
    ref, cur = windows()
    full = compute_drift(ref, cur).summary
    sampled = compute_drift(ref, cur, display_sample=500).summary
    assert not full.html_from_sample and full.html_sample_rows == {"reference": 4000, "current": 4000}
    assert sampled.html_from_sample and sampled.html_sample_rows == {"reference": 500, "current": 500}
    for name, fd in full.features.items():
        assert sampled.features[name].score == pytest.approx(fd.score, rel=1e-9, abs=1e-12), name
        assert sampled.features[name].drifted == fd.drifted


def test_summary_json_and_html_are_written(tmp_path: Path):
    ref, cur = windows(n=1500)
    result = monitor_drift(ref, cur, tmp_path / "out", display_sample=1000)
    summary_path, html_path = tmp_path / "out" / "summary.json", tmp_path / "out" / "drift_report.html"
    raw = json.loads(summary_path.read_text())
    for key in ("features", "share_drifted", "dataset_drift", "tests", "tests_passed", "tests_failed", "n_features",
                "drifted_features", "skipped", "agreement_trend", "slice_boost", "evidently_version", "threshold"):
        assert key in raw, key
    for fd in raw["features"].values():
        assert {"score", "drifted", "method", "threshold", "kind"} <= set(fd)
        assert isinstance(fd["drifted"], bool)
    assert raw["evidently_version"].startswith("0.7.")
    assert raw["tests_passed"] + raw["tests_failed"] == len(raw["tests"])
    assert DriftSummary.load(summary_path) == result.summary
    assert raw["html_from_sample"] and raw["report_html"] == "drift_report.html"
    size = html_path.stat().st_size
    assert size == raw["report_html_bytes"] and 100_000 < size < 10 * 1024 * 1024
    html = html_path.read_text(encoding="utf-8", errors="replace")
    assert "range_m" in html and "n_lidar_pedestrian" in html
    assert set(raw["slice_boost"]) == {"class=pedestrian", "weather=rain"}


def test_drifted_slices_boosts_what_grew():
    ref, cur = windows()
    s = compute_drift(ref, cur).summary
    slices = drifted_slices(s, cur)
    # rain went from 20 % to 50 % of frames; pedestrians tripled (capped at 3); clear shrank, cars and
    # places did not drift
    assert set(slices) == {"class=pedestrian", "weather=rain"}
    assert slices["weather=rain"] == 2.5 and slices["class=pedestrian"] == pytest.approx(3.0, abs=0.15)
    assert drifted_slices(json.loads(s.model_dump_json()), cur) == slices  # also from summary.json
    assert drifted_slices(s, cur, max_boost=2.0) == {"class=pedestrian": 2.0, "weather=rain": 2.0}
    assert drifted_slices(compute_drift(ref, ref.copy()).summary, ref) == {}
    # the other way round: clear weather comes back (50 % -> 80 %) but is most of the traffic, so it
    # is not steered toward; pedestrians became rarer, which is as much a reason to look
    assert set(drifted_slices(compute_drift(cur, ref).summary, ref)) == {"class=pedestrian"}


def test_the_camera_models_own_counts_do_not_steer_mining():
    """Camera boxes come from the camera model the loop retrains: after a promotion their counts
    drift whatever the traffic did, so only the lidar's counts steer mining toward a class."""
    ref, cur = windows()
    rng = np.random.default_rng(1)
    ref["n_camera_cyclist"] = rng.poisson(0.5, len(ref))
    cur["n_camera_cyclist"] = rng.poisson(3.0, len(cur))  # a new model finds six times as many cyclists
    s = compute_drift(ref, cur).summary
    assert s.features["n_camera_cyclist"].drifted
    assert set(drifted_slices(s, cur)) == {"class=pedestrian", "weather=rain"}


def test_bad_inputs_give_clear_errors():
    ref, cur = windows(n=200)
    with pytest.raises(DriftInputError, match="current window is empty"):
        compute_drift(ref, cur.iloc[:0])
    with pytest.raises(DriftInputError, match="current window is empty"):
        monitor_drift(ref, DriveLogs.empty(), "unused")
    with pytest.raises(DriftInputError, match=r"lacks feature columns \['score'\]"):
        compute_drift(ref, cur.drop(columns="score"))
    with pytest.raises(DriftInputError, match="numerical in the reference"):
        compute_drift(ref, cur.assign(score="high"))
    with pytest.raises(DriftInputError, match="no feature can be compared"):
        compute_drift(ref[["log_id", "frame"]].assign(x=1.0), cur[["log_id", "frame"]].assign(x=1.0))


# -- features on hand-built logs with known answers -------------------------------------------

F = 700.0  # focal length (pixels)
W, H = 1200, 400
# lidar (x forward, y left, z up) -> camera (x right, y down, z forward)
LIDAR_TO_CAM = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0]], float)
P = np.array([[F, 0, W / 2, 0], [0, F, H / 2, 0], [0, 0, 1, 0]], float)


def _table(schema: pa.Schema, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()


def hand_logs(tmp_path: Path) -> DriveLogs:
    """One log, 4 frames. Lidar boxes at known places; camera detections that do / do not overlap
    their projection; two images of known brightness and contrast."""
    Image.fromarray(np.full((40, 60), 64, np.uint8)).save(tmp_path / "grey.png")  # 64/255
    half = np.zeros((40, 60), np.uint8)
    half[:, 30:] = 255
    Image.fromarray(half).save(tmp_path / "half.png")  # mean 0.5, std 0.5
    frames = [
        {"log_id": "L", "frame": i, "timestamp_ns": 1_764_547_200 * 10**9 + i * 10**8 + (86_400 * 10**9 if i == 3 else 0),
         "image_uri": uri, "vehicle": "v1", "weather": w, "time_of_day": "day", "place": None}
        for i, (uri, w) in enumerate([("grey.png", "rain"), (str(tmp_path / "half.png"), "clear"), (None, "rain"),
                                      ("missing.png", None)])
    ]
    box = dict(z=0.0, l=4.0, w=2.0, h=1.5, yaw=0.0)
    lidar = [
        {"log_id": "L", "frame": 0, "det_id": 0, "cls": "car", "score": 0.9, "x": 20.0, "y": 0.0, **box},
        {"log_id": "L", "frame": 0, "det_id": 1, "cls": "pedestrian", "score": 0.3, "x": 15.0, "y": 2.0, **box},  # low score
        {"log_id": "L", "frame": 1, "det_id": 0, "cls": "car", "score": 0.8, "x": 30.0, "y": 0.0, **box},
        {"log_id": "L", "frame": 1, "det_id": 1, "cls": "car", "score": 0.6, "x": 30.0, "y": 40.0, **box},  # out of view
        {"log_id": "L", "frame": 2, "det_id": 0, "cls": "cyclist", "score": 0.7, "x": -10.0, "y": 0.0, **box},  # behind
    ]
    M = projection_matrix(P, LIDAR_TO_CAM)
    b2d, _, _ = project_boxes(np.array([[20.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0], [30.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]]),
                              M[None], np.array([W]), np.array([H]))
    x1, y1, x2, y2 = (float(v) for v in b2d[0])
    u1, v1, u2, v2 = (float(v) for v in b2d[1])  # the car 30 m ahead
    camera = [
        {"log_id": "L", "frame": 0, "det_id": 0, "cls": "car", "score": 0.8, "x1": x1, "y1": y1, "x2": x2, "y2": y2},
        {"log_id": "L", "frame": 0, "det_id": 1, "cls": "car", "score": 0.4, "x1": 0.0, "y1": 0.0, "x2": 50.0, "y2": 50.0},
        {"log_id": "L", "frame": 1, "det_id": 0, "cls": "car", "score": 0.6, "x1": 0.0, "y1": 0.0, "x2": 50.0, "y2": 50.0},
    ]
    tracks = [  # confirmed camera tracks: one supported by a detection, one not
        {"log_id": "L", "frame": 0, "track_id": 1, "sensor": "camera", "cls": "car", "score": None, "state": "confirmed",
         "x1": x1 + 1, "y1": y1, "x2": x2 + 1, "y2": y2},
        {"log_id": "L", "frame": 1, "track_id": 2, "sensor": "camera", "cls": "car", "score": 0.5, "state": "confirmed",
         "x1": 600.0, "y1": 200.0, "x2": 700.0, "y2": 300.0},
        {"log_id": "L", "frame": 1, "track_id": 3, "sensor": "camera", "cls": "car", "score": 0.7, "state": "tentative",
         "x1": 600.0, "y1": 200.0, "x2": 700.0, "y2": 300.0},
        {"log_id": "L", "frame": 1, "track_id": 4, "sensor": "lidar", "cls": "car", "score": 0.7, "state": "confirmed",
         "x1": u1, "y1": v1, "x2": u2, "y2": v2},  # supported by the projected lidar detection
    ]
    calib = [{"log_id": "L", "P": P.ravel().tolist(), "lidar_to_cam": LIDAR_TO_CAM.ravel().tolist(),
              "image_width": W, "image_height": H}]
    return DriveLogs(frames=_table(FRAMES, frames), lidar_detections=_table(LIDAR_DETECTIONS, lidar),
                     camera_detections=_table(CAMERA_DETECTIONS, camera), tracks=_table(TRACKS, tracks),
                     calibration=_table(CALIBRATION, calib))


def test_features_have_known_values(tmp_path: Path):
    f = compute_features(hand_logs(tmp_path), image_root=tmp_path)
    assert len(f) == 4 and list(f["frame"]) == [0, 1, 2, 3]
    assert list(f["n_lidar"]) == [2, 2, 1, 0]
    assert list(f["n_lidar_car"]) == [1, 2, 0, 0] and list(f["n_lidar_pedestrian"]) == [1, 0, 0, 0]
    assert list(f["n_camera_car"]) == [2, 1, 0, 0] and list(f["n_track"]) == [1, 3, 0, 0]
    assert f["lidar_score_mean"].tolist()[:3] == pytest.approx([0.6, 0.7, 0.7])
    assert f["lidar_score_min"].tolist()[:3] == pytest.approx([0.3, 0.6, 0.7])
    assert f["camera_score_min"].tolist()[:2] == pytest.approx([0.4, 0.6])
    assert np.isnan(f["track_score_mean"][0]) and f["track_score_mean"][1] == pytest.approx(0.6 + 0.1 / 3)  # null ignored
    assert f["lidar_range_mean"][0] == pytest.approx((20.0 + np.hypot(15, 2)) / 2)
    assert f["lidar_range_max"][1] == pytest.approx(np.hypot(30, 40))
    # frame 0: the confident in-view car is confirmed (the low-score pedestrian is not asked);
    # frame 1: the in-view car has no camera box on it, the y=40 m car is outside the image;
    # frame 2: the only box is behind the camera -> no box in view -> NaN
    agree = f["lidar_camera_agreement"].tolist()
    assert agree[:2] == [1.0, 0.0] and np.isnan(agree[2]) and np.isnan(agree[3])
    # confirmed tracks: frame 0's camera track is supported by the camera detection; in frame 1 the
    # camera track is not, the lidar track is (by the projected lidar box), the tentative one does
    # not count
    td = f["tracker_detector_agreement"].tolist()
    assert td[:2] == [1.0, 0.5] and np.isnan(td[2])
    assert f["image_brightness"][0] == pytest.approx(64 / 255, abs=1e-4) and f["image_contrast"][0] == pytest.approx(0, abs=1e-6)
    assert f["image_brightness"][1] == pytest.approx(0.5, abs=0.01) and f["image_contrast"][1] == pytest.approx(0.5, abs=0.01)
    assert np.isnan(f["image_brightness"][2]) and np.isnan(f["image_brightness"][3])  # no image / unreadable
    assert list(f["weather"]) == ["rain", "clear", "rain", "unknown"] and set(f["place"]) == {"unknown"}
    assert list(f["day"]) == ["2025-12-01"] * 3 + ["2025-12-02"]


def test_features_of_empty_logs():
    f = compute_features(DriveLogs.empty())
    assert len(f) == 0 and set(NUMERICAL_FEATURES) | set(TAG_FEATURES) <= set(f.columns)


# -- the real KITTI slice -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def kitti_features(kitti_root: Path) -> pd.DataFrame:
    return compute_features(load_logs(kitti_root, "kitti-tracking"))


@pytest.mark.kitti
def test_kitti_features(kitti_root: Path, kitti_features: pd.DataFrame):
    logs = load_logs(kitti_root, "kitti-tracking")
    f = kitti_features
    assert len(f) == logs.num_frames == 1479
    assert f["n_lidar"].sum() == logs.lidar_detections.num_rows
    assert f["n_track"].sum() == logs.tracks.num_rows and f["n_camera"].sum() == 0
    agree = f["lidar_camera_agreement"].dropna()
    assert len(agree) > 0.9 * len(f) and agree.between(0, 1).all()
    # real sensors mostly agree but not always (cyclists, far and occluded objects)
    assert 0.2 < agree.mean() < 0.9
    assert f["tracker_detector_agreement"].isna().all()  # no camera detector output in the slice
    assert (f["lidar_range_max"].dropna() >= f["lidar_range_mean"].dropna()).all()
    assert f["image_brightness"].isna().all()


@pytest.mark.kitti
def test_projection_matches_the_detectors_own_image_boxes(kitti_root: Path):
    """The PointRCNN files carry the P2 projection of each 3D box (clipped to the image): our
    projection of the imported lidar-frame boxes must reproduce it."""
    import pyarrow.compute as pc

    from fleetloop.drift.features import _keys, _project_lidar

    logs = load_logs(kitti_root, "kitti-tracking", log_ids=["0006"])
    raw = pd.read_csv(kitti_root / "lidar_det" / "pointrcnn" / "0006.txt", header=None).sort_values(0, kind="stable")
    lid = logs.lidar_detections
    proj = _project_lidar(logs, lid, _keys(lid, pc.unique(logs.frames["log_id"])) >> 32, pc.unique(logs.frames["log_id"]))
    ours, theirs = proj["box"].astype(float), raw[[2, 3, 4, 5]].to_numpy(float)
    inter = (np.clip(np.minimum(ours[:, 2], theirs[:, 2]) - np.maximum(ours[:, 0], theirs[:, 0]), 0, None)
             * np.clip(np.minimum(ours[:, 3], theirs[:, 3]) - np.maximum(ours[:, 1], theirs[:, 1]), 0, None))
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    iou = inter / (area(ours) + area(theirs) - inter)
    inside = proj["visible"] >= 0.99
    assert inside.sum() > 500
    assert np.percentile(iou[inside], 5) > 0.9


@pytest.mark.kitti
def test_kitti_two_weeks_through_the_cli(kitti_root: Path, tmp_path: Path):
    from fleetloop.cli import app

    out = tmp_path / "drift"
    k = str(kitti_root)
    res = CliRunner().invoke(app, ["drift", k, k, "--format", "kitti-tracking", "--out", str(out),
                                   "--reference-logs", ",".join(WEEK1), "--current-logs", WEEK2[0],
                                   "--current-logs", ",".join(WEEK2[1:])])
    assert res.exit_code == 0, res.output
    assert "features drifted" in res.output and "lidar_camera_agreement" in res.output
    s = DriftSummary.load(out / "summary.json")
    logs = load_logs(kitti_root, "kitti-tracking")
    frames = logs.frames.to_pandas()
    assert s.reference_rows == frames["log_id"].isin(WEEK1).sum()
    assert s.current_rows == frames["log_id"].isin(WEEK2).sum()
    assert {"n_lidar_car", "lidar_range_mean", "lidar_camera_agreement", "lidar_score_mean"} <= set(s.features)
    skipped = {k.name: k.reason for k in s.skipped}
    assert skipped["image_brightness"] == "no values in both windows"
    assert skipped["weather"].startswith("constant")  # KITTI carries no tags
    assert s.n_drifted == sum(f.drifted for f in s.features.values())
    assert s.share_drifted == pytest.approx(s.n_drifted / s.n_features)
    for f in s.features.values():  # the verdicts follow the fixed distance methods
        assert f.method == "wasserstein" and f.drifted == (f.score >= s.threshold)
    trend = {t.feature: t for t in s.agreement_trend}["lidar_camera_agreement"]
    assert 0 <= trend.current_mean <= 1 and 0 <= trend.reference_mean <= 1
    assert sum(d.frames for d in trend.current_by_day) == s.current_rows
    assert all(k.startswith("class=") and v > 1 for k, v in s.slice_boost.items())
    html = out / "drift_report.html"
    assert html.stat().st_size < 10 * 1024 * 1024 and not s.html_from_sample
    as_json = CliRunner().invoke(app, ["drift", k, k, "--out", str(tmp_path / "drift2"), "--reference-logs",
                                       ",".join(WEEK1), "--current-logs", ",".join(WEEK2), "--json"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is True and doc["n_drifted"] == s.n_drifted and doc["slice_boost"] == s.slice_boost
    assert Path(doc["report"]).is_file() and Path(doc["summary_json"]).is_file()


def test_cli_reports_bad_input(tmp_path: Path):
    from fleetloop.cli import app

    res = CliRunner().invoke(app, ["drift", str(tmp_path / "nope"), str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert res.exit_code == 1
    assert "drift failed" in res.output and "does not exist" in res.output
    res = CliRunner().invoke(app, ["drift", str(tmp_path / "nope"), str(tmp_path / "nope"), "--out", str(tmp_path), "--json"])
    assert res.exit_code == 1 and json.loads(res.stdout) == {"ok": False, "error": json.loads(res.stdout)["error"]}
    assert json.loads(res.stdout)["error"].startswith("drift failed: ")


def test_a_drift_alert_reads_as_news_with_where_mining_is_steered_not_as_a_failure() -> None:
    from fleetloop.drift.compare import DriftOutcome
    from fleetloop.verdict import Verdict

    alert = DriftOutcome(status="compared", verdict=Verdict.of("drift", ["3 of 10 features drifted (30% ≥ 30%): weather"]),
                         slice_boost={"weather=rain": 2.54, "time_of_day=night": 1.5})
    assert alert.headline() == ("drift alert: 3 of 10 features drifted (30% ≥ 30%): weather; "
                                "mining steered toward time_of_day=night x1.5, weather=rain x2.5")
    calm = DriftOutcome(status="compared", verdict=Verdict.of("drift", [], passes=["1 of 10 features drifted"]))
    assert calm.headline() == "no drift alert (1 of 10 features drifted)"
    skipped = DriftOutcome(status="skipped", reason="nothing to compare")
    assert skipped.headline() == "nothing to compare"
    assert "FAILED" not in alert.headline()


def test_a_constant_feature_prints_no_numpy_warning():
    """A feature constant in a window (no green cone all week: a count of 0 on every frame) made
    Evidently's correlation step divide by a zero spread, and every demo run printed numpy's
    'invalid value encountered in divide' on the user's terminal."""
    import warnings

    ref, cur = windows(n=400)
    cur["n_lidar_car"] = 0  # green cones appear in the reference week only
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        s = compute_drift(ref, cur).summary
    assert s.features["range_m"].drifted and s.features["n_lidar_car"].drifted  # the cars vanished: drift all the same
