"""Drift judged against chance over whole logs (``fleetloop.drift.chance``): two weeks of the
simulated fleet drawn from one mix raise no alert, a real shift still drifts, the distances are
Evidently's, and windows with too few logs fall back to the threshold alone, saying so."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fleetloop.drift import compute_drift, compute_features
from fleetloop.drift.chance import MAX_UNITS, chance_check


def logged_windows(n_logs: int = 16, frames: int = 50, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two windows of ``n_logs`` logs each. Every log has its own scene (a random offset shared by
    its frames, as consecutive frames share a scene): ``scene_count`` and ``place`` differ between
    logs but not between windows; ``range_m`` and ``weather`` really shift in the current window."""
    rng = np.random.default_rng(seed)

    def one(window: str, shifted: bool) -> pd.DataFrame:
        parts = []
        for i in range(n_logs):
            scene = rng.normal(0.0, 1.0)
            parts.append(pd.DataFrame({
                "log_id": f"{window}-{i:02d}", "frame": np.arange(frames),
                "scene_count": rng.poisson(np.exp(1.5 + 0.5 * scene), frames),  # log-level noise only
                "range_m": rng.normal(30.0 + (12.0 if shifted else 0.0) + 3.0 * scene, 5.0, frames),
                "weather": np.where(rng.random() < (0.7 if shifted else 0.1), "rain", "clear"),
                "place": rng.choice(["highway", "suburb", "downtown", "industrial", "rural", "port"]),
            }))
        return pd.concat(parts, ignore_index=True)

    return one("ref", False), one("cur", True)


def test_a_real_shift_drifts_and_log_level_noise_does_not():
    ref, cur = logged_windows()
    s = compute_drift(ref, cur, drift_share=0.3).summary
    f = s.features
    assert f["range_m"].drifted and f["range_m"].p_value <= 0.01
    assert f["weather"].drifted and f["weather"].p_value <= 0.05
    # the scenes alone put these over the distance threshold, but re-dealing the logs does as much
    for name in ("scene_count", "place"):
        assert f[name].over_threshold and not f[name].drifted and f[name].p_value > 0.05, (name, f[name])
    assert s.drifted_features == ["range_m", "weather"] and s.dataset_drift
    assert s.significance == 0.05 and "16 reference and 16 current log(s) re-dealt 499 times" in s.chance_check
    assert "p <= 0.05 when the logs are re-dealt" in s.tests[-1].description
    # the verdicts without the check: every feature over the threshold drifts
    loose = compute_drift(ref, cur, drift_share=0.3, significance=1.0).summary
    assert set(loose.drifted_features) == {"range_m", "weather", "scene_count", "place"}
    assert loose.significance is None and "not applied (significance 1)" in loose.chance_check


def test_the_distances_dealt_are_evidentlys():
    """The observed split, computed as every deal is, gives Evidently's own scores: exactly on a
    feature with few distinct values, within the grid's resolution on a continuous one."""
    ref, cur = logged_windows(seed=1)
    s = compute_drift(ref, cur).summary
    check = chance_check(ref, cur, ["scene_count", "range_m"], ["weather", "place"])
    assert check.observed["scene_count"] == pytest.approx(s.features["scene_count"].score, rel=1e-9)
    assert check.observed["weather"] == pytest.approx(s.features["weather"].score, rel=1e-9)
    assert check.observed["place"] == pytest.approx(s.features["place"].score, rel=1e-9, abs=1e-12)
    assert check.observed["range_m"] == pytest.approx(s.features["range_m"].score, rel=0.01)
    assert check.p_values == {name: s.features[name].p_value for name in check.p_values}


def test_two_simulated_weeks_of_one_mix_raise_no_alert():
    """The defect this check fixes: two weeks of 12 logs x 40 frames drawn from one and the same
    mix had 10 to 13 of 13 features over the threshold (a drift alert every week, and mining
    steered toward whatever happened to differ)."""
    pytest.importorskip("PIL")
    import tempfile
    from pathlib import Path

    from fleetloop.sim.fleet import drive_week
    from fleetloop.sim.world import week_mix

    def no_model(images: np.ndarray) -> list[np.ndarray]:
        return [np.zeros((0, 6), np.float32) for _ in range(len(images))]

    mix = week_mix(0, 0)
    with tempfile.TemporaryDirectory() as tmp:
        weeks = [compute_features(drive_week(0, seed=s, detector=no_model, n_logs=12, frames_per_log=40,
                                             out_dir=Path(tmp) / str(s), start=pd.Timestamp("2025-01-06", tz="UTC"),
                                             mix=mix).logs) for s in (11, 12)]
    loose = compute_drift(*weeks, significance=1.0, drift_share=0.2).summary
    assert loose.share_drifted >= 0.6 and loose.dataset_drift  # the scenes alone, judged frame by frame
    s = compute_drift(*weeks, drift_share=0.2).summary
    assert s.n_drifted <= 2 and not s.dataset_drift, s.drifted_features


def test_too_few_logs_fall_back_to_the_threshold_and_say_so():
    ref, cur = logged_windows(n_logs=2)
    s = compute_drift(ref, cur).summary
    assert s.significance is None
    assert s.chance_check.startswith("not applied: 2 reference and 2 current log(s) can be dealt in too few ways")
    assert all(f.p_value is None and f.drifted == f.over_threshold for f in s.features.values())
    no_logs = compute_drift(ref.drop(columns="log_id"), cur.drop(columns="log_id")).summary
    assert "no log_id column" in no_logs.chance_check


def test_many_logs_are_dealt_in_groups_of_whole_logs():
    rng = np.random.default_rng(3)
    n = 300_000
    ref = pd.DataFrame({"log_id": np.char.add("r", (np.arange(n) // 150).astype(str)), "x": rng.poisson(5.0, n),
                        "y": rng.normal(0.0, 1.0, n)})
    cur = pd.DataFrame({"log_id": np.char.add("c", (np.arange(n) // 150).astype(str)), "x": rng.poisson(5.0, n),
                        "y": rng.normal(0.3, 1.0, n)})
    check = chance_check(ref, cur, ["x", "y"], [])
    assert f"2000 reference and 2000 current log(s) (in {MAX_UNITS} and {MAX_UNITS} random groups" in check.note
    assert check.p_values["y"] <= 0.01 and check.p_values["x"] > 0.01


def test_bad_arguments_are_refused():
    ref, cur = logged_windows(n_logs=4)
    with pytest.raises(ValueError, match="significance"):
        chance_check(ref, cur, ["range_m"], [], significance=0)
    with pytest.raises(ValueError, match="permutations"):
        chance_check(ref, cur, ["range_m"], [], permutations=0)
