"""``fleetloop drift`` on windows too small for the log-level chance check: a window whose
detectors all went silent is a drift, and a check that cannot judge says so instead of
clearing every feature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from fleetloop.cli import app
from fleetloop.drift.chance import chance_check
from fleetloop.ingest.importers.parquet import write_parquet_log
from fleetloop.schema import DriveLogs
from tests.factory_logs import make_log


def _silent(log_id: str, seed: int) -> DriveLogs:
    """A log with frames but no detection and no track: every sensor went quiet."""
    log = make_log(log_id, 30, seed=seed)
    return DriveLogs(frames=log.frames, lidar_detections=log.lidar_detections.slice(0, 0),
                     camera_detections=log.camera_detections.slice(0, 0), tracks=log.tracks.slice(0, 0),
                     calibration=log.calibration)


def _no_nan(text: str) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"summary.json holds {constant}, which is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_three_logs_against_three_cannot_reach_significance_and_the_summary_says_so(tmp_path: Path) -> None:
    """3 logs against 3 can be dealt in 20 ways, the observed split and its mirror two of them: no
    p-value can be below 0.1. The check used to run anyway ("re-dealt 499 times"), so a current
    window whose detectors were all silent (2 detections a frame -> 0) came out as 0 of 9 features
    drifted, exit 0, "no dataset drift"."""
    logs = tmp_path / "logs"
    for i in range(3):
        write_parquet_log(make_log(f"ok-{i}", 30, seed=i), logs)
        write_parquet_log(_silent(f"silent-{i}", 10 + i), logs)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["drift", str(logs), str(logs), "--format", "parquet", "-r", "ok-0,ok-1,ok-2",
                                   "-c", "silent-0,silent-1,silent-2", "--out", str(out), "--json",
                                   "--fail-on-drift"])
    doc = json.loads(res.stdout)
    summary = _no_nan((out / "summary.json").read_text())
    assert summary["chance_check"].startswith("not applied: 3 reference and 3 current log(s) can be dealt in too "
                                              "few ways (20; the smallest p-value is 0.1)"), summary["chance_check"]
    assert summary["significance"] is None
    assert {"n_lidar", "n_camera", "n_track"} <= set(summary["drifted_features"])
    assert summary["dataset_drift"] is True
    assert res.exit_code == 3 and doc["ok"] is False and doc["dataset_drift"] is True


def test_few_ways_to_deal_the_logs_are_each_dealt_once_for_an_exact_p_value() -> None:
    """3 logs against 4 can be dealt in 35 ways; 499 random deals drew each about 14 times, so the
    p-value of the most extreme split wandered around 1/35 (and could cross 0.05). Every way is
    now dealt once: the p-value is exactly 1/35."""
    def frame(log_id: str, count: int) -> pd.DataFrame:
        return pd.DataFrame({"log_id": log_id, "n": np.full(30, count)})

    ref = pd.concat([frame(f"ok-{i}", 2) for i in range(3)], ignore_index=True)
    cur = pd.concat([frame(f"silent-{i}", 0) for i in range(4)], ignore_index=True)
    check = chance_check(ref, cur, ["n"], [])
    assert check.applied and check.p_values["n"] == 1 / 35
    assert "3 reference and 4 current log(s) dealt in every one of their 35 ways" in check.note


def test_an_out_whose_report_names_are_directories_is_refused_before_any_log_is_read(tmp_path: Path) -> None:
    """``--out`` holding a directory named drift_report.html or summary.json passed the check: the
    logs were loaded and compared, then the rename failed ("[Errno 21] Is a directory")."""
    missing = tmp_path / "no-such-logs"  # were the logs read first, this would be the error
    for name in ("drift_report.html", "summary.json"):
        out = tmp_path / f"out-{name}"
        (out / name).mkdir(parents=True)
        res = CliRunner().invoke(app, ["drift", str(missing), str(missing), "--out", str(out), "--json"])
        assert res.exit_code == 1
        doc = json.loads(res.stdout)
        assert doc == {"ok": False, "error": f"drift failed: --out {out}: cannot write: {out / name} exists and "
                                             "is not a file"}


def test_a_failed_write_leaves_no_temporary_file_in_the_out_directory(tmp_path: Path) -> None:
    """A report whose final rename failed left its temporary (``.drift_report.html.tmp``, megabytes;
    ``summary.json.tmp``) in the user's directory."""
    import pytest

    from fleetloop.drift import compute_drift

    rng = np.random.default_rng(0)
    result = compute_drift(pd.DataFrame({"x": rng.normal(0, 1, 200)}), pd.DataFrame({"x": rng.normal(1, 1, 200)}))
    for name in ("drift_report.html", "summary.json"):
        (tmp_path / name).mkdir()
    with pytest.raises(OSError):
        result.save_html(tmp_path / "drift_report.html")
    with pytest.raises(OSError):
        result.summary.save(tmp_path / "summary.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drift_report.html", "summary.json"]
