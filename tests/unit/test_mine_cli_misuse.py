"""``fleetloop mine`` (rank) and ``fleetloop sample`` misused: options that would be ignored or
judge another stream than asked, outputs over a directory or over a log's own file, Ctrl-C,
non-finite budgets, a quiet run with a bad log, a sample written over other files. Each is one
line (with ``--json`` one JSON document on stdout) and the documented exit code, nothing lost.

The commands run through the console script's ``main`` (as ``fleetloop`` runs them), so usage
errors too are checked with their JSON and exit code."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from fleetloop.settings import get_settings
from tests.unit.test_cli_mine import _two_tracker_root
from tests.unit.test_query import _stocked_home  # noqa: F401 (fixture: home)


def run_cli(monkeypatch, capsys, *argv: str) -> tuple[int | None, str, str]:
    """Run ``fleetloop ARGV`` as the console script does: (exit code, stdout, stderr). A
    KeyboardInterrupt that escapes the command is returned as code None (never ends the session)."""
    from fleetloop.cli import main

    monkeypatch.setenv("FLEETLOOP_NO_FAST_EXIT", "1")  # main's os._exit must not end pytest
    monkeypatch.setattr(sys, "argv", ["fleetloop-under-test", *argv])
    capsys.readouterr()
    code: int | None
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        code = None
    out, err = capsys.readouterr()
    return code, out, err


def json_error(out: str) -> str:
    """The error of a ``--json`` failure: stdout is exactly one JSON document with ok false."""
    doc = json.loads(out)
    assert doc["ok"] is False and isinstance(doc["error"], str) and "\n" not in doc["error"]
    return doc["error"]


@pytest.fixture
def logs(sample_dir, tmp_path) -> Path:
    """A private copy of the two sample logs (parquet layout), free to damage."""
    src = tmp_path / "logs"
    shutil.copytree(sample_dir, src)
    return src


@pytest.mark.parametrize("query", [["--vehicle", "sim-1"], ["--tag", "weather=rain"], ["--since", "2030-01-01"],
                                   ["--drive-until", "2020-01-01"]])
def test_query_options_without_from_store_are_a_usage_error_not_ignored(logs, tmp_path, monkeypatch, capsys, query):
    """They filter the store's logs only: given with PATH they were ignored and every log of PATH
    was mined (exit 0), as if filtered."""
    out = tmp_path / "r.csv"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", str(logs), "-f", "parquet", "-o", str(out), "--json", *query)
    assert code == 2, stderr
    error = json_error(stdout)
    assert error.startswith("usage:") and query[0] in error and "--from-store" in error
    assert not out.exists()


def test_path_and_from_store_together_are_a_usage_error(home, logs, tmp_path, monkeypatch, capsys):
    """PATH (and --lidar-detector, an option of PATH's KITTI layout) was silently ignored with
    --from-store: the whole store was mined instead."""
    out = tmp_path / "r.csv"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", str(logs), "--from-store", "-o", str(out), "--json")
    assert code == 2, stderr
    assert "not both" in json_error(stdout) and not out.exists()
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", "--from-store", "--lidar-detector", "pointrcnn",
                                   "-o", str(out), "--json")
    assert code == 2, stderr
    assert "--lidar-detector" in json_error(stdout) and not out.exists()


@pytest.mark.parametrize("gone", ["ranked.parquet", "selected.csv", "shards/00000.parquet"])
def test_a_rerun_of_mine_from_store_recomputes_a_run_output_that_is_gone(home, tmp_path, monkeypatch, capsys, gone):
    """A finished run's output deleted from the store (by hand, or a bucket's expiry rule) made
    every rerun of the same query fail for good (``ObjectNotFound``, exit 1): the summary or the
    shard was reused without it."""
    from fleetloop.store.objects import get_store

    out = tmp_path / "r.csv"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", "--from-store", "-o", str(out), "--json", "--budget", "5")
    assert code == 0, stderr
    first, run_key = out.read_bytes(), json.loads(stdout)["run"]
    store = get_store(get_settings())
    store.delete(f"mining/{run_key}/{gone}")
    if gone.startswith("shards/"):
        store.delete(f"mining/{run_key}/summary.json")  # a run that crashed after its shards, before its summary
    out.unlink()
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", "--from-store", "-o", str(out), "--json", "--budget", "5")
    assert code == 0, stderr
    assert json.loads(stdout)["run"] == run_key and out.read_bytes() == first
    assert store.exists(f"mining/{run_key}/{gone}")


def test_out_that_is_a_directory_fails_before_any_work(logs, tmp_path, monkeypatch, capsys):
    """It failed only after loading, validating and mining every log, naming a temporary file."""
    from fleetloop import mine_files

    def never(*args, **kwargs):
        raise AssertionError("mined although --out cannot be written")

    monkeypatch.setattr(mine_files, "mine_files", never)
    out = tmp_path / "ranked.csv"
    out.mkdir()
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", str(logs), "-f", "parquet", "-o", str(out), "--json")
    assert code == 1, stderr
    error = json_error(stdout)
    assert error == f"mine failed: --out {out}: cannot write: {out} is a directory"
    assert ".tmp" not in stderr and out.is_dir()


@pytest.mark.parametrize("log_ids", [[], ["sample-001"]])
def test_out_over_a_logs_own_file_is_refused_and_the_log_kept(logs, monkeypatch, capsys, log_ids):
    """``--out LOGS/sample-000/tracks.parquet`` replaced the log's tracks with the ranking (exit 0):
    the next run quarantined the log. Also when --log mines only another log."""
    target = logs / "sample-000" / "tracks.parquet"
    before = target.read_bytes()
    picked = [a for i in log_ids for a in ("--log", i)]
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", str(logs), "-f", "parquet", "-o", str(target),
                                     "--json", *picked)
    assert code == 1, stderr
    error = json_error(stdout)
    assert "sample-000" in error and "destroy the log" in error
    assert target.read_bytes() == before


def test_a_camera_tracker_the_parquet_logs_lack_is_a_usage_error(logs, tmp_path, monkeypatch, capsys):
    """Another stream was silently judged instead (exit 0), as --camera-tracker on a KITTI layout
    without that tracker never did."""
    out = tmp_path / "r.csv"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", str(logs), "-f", "parquet", "-o", str(out), "--json",
                                     "--no-validate", "--camera-tracker", "yolo_sort")
    assert code == 2, stderr
    error = json_error(stdout)
    assert "'yolo_sort'" in error and "the logs have camera" in error and "nothing written" in error
    assert not out.exists()
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", str(logs), "-f", "parquet", "-o", str(out), "--json",
                                     "--no-validate", "--camera-tracker", "camera")
    assert code == 0, stderr
    assert json.loads(stdout)["judged_camera"] == ["camera"] and out.exists()


def test_a_camera_tracker_the_stored_logs_lack_is_a_usage_error(home, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.csv"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", "--from-store", "-o", str(out), "--json",
                                     "--camera-tracker", "yolo_sort")
    assert code == 2, stderr
    assert "'yolo_sort'" in json_error(stdout) and not out.exists()


def test_a_lidar_detector_the_layout_lacks_is_a_usage_error(tmp_path, monkeypatch, capsys):
    """Every log was quarantined for the same reason, and the run failed with exit 1."""
    root = _two_tracker_root(tmp_path)
    (root / "lidar_det" / "pointrcnn").mkdir(parents=True)
    (root / "lidar_det" / "pointrcnn" / "0000.txt").write_text("")
    out = tmp_path / "r.csv"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", str(root), "-o", str(out), "--json",
                                     "--lidar-detector", "second")
    assert code == 2, stderr
    error = json_error(stdout)
    assert "'second'" in error and "pointrcnn" in error and not out.exists()


def test_a_missing_path_is_named_before_the_camera_tracker(tmp_path, monkeypatch, capsys):
    """It said ``no camera tracker 'ciwt' under MISSING/camera_trk; available: []`` (exit 2)."""
    missing = tmp_path / "nope"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", str(missing), "-o", str(tmp_path / "r.csv"), "--json",
                                     "--camera-tracker", "ciwt")
    assert code == 1, stderr
    assert json_error(stdout) == f"mine failed: log source {missing} does not exist"


@pytest.mark.parametrize("cost", ["inf", "-inf", "nan"])
def test_a_budget_cost_that_is_not_finite_is_a_usage_error(logs, tmp_path, monkeypatch, capsys, cost):
    """``--budget-cost inf`` ran, and its --json summary said budget_cost null."""
    out = tmp_path / "r.csv"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", str(logs), "-f", "parquet", "-o", str(out), "--json",
                                     "--budget-cost", cost)
    assert code == 2, stderr
    assert json_error(stdout).startswith("usage:") and "--budget-cost" in json_error(stdout)
    assert not out.exists()


def test_ctrl_c_is_one_line_and_json_exit_130_and_out_kept(logs, tmp_path, monkeypatch, capsys):
    """It exited 130 with no line and no JSON."""
    from fleetloop import mine_files

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "r.csv"
    out.write_text("an earlier ranking\n")
    monkeypatch.setattr(mine_files, "mine_files", interrupted)
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", str(logs), "-f", "parquet", "-o", str(out), "--json")
    assert code == 130, stderr
    error = json_error(stdout)
    assert error.startswith("mine stopped: interrupted by SIGINT") and "as it was" in error
    assert "interrupted by SIGINT" in stderr and out.read_text() == "an earlier ranking\n"


def test_ctrl_c_of_mine_from_store_is_json_exit_130_and_a_rerun_completes(home, tmp_path, monkeypatch, capsys):
    from fleetloop.mine import run as mining

    real = mining.mine_shard

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "r.csv"
    monkeypatch.setattr(mining, "mine_shard", interrupted)
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", "--from-store", "-o", str(out), "--json")
    assert code == 130, stderr
    assert json_error(stdout).startswith("mine stopped: interrupted by SIGINT") and not out.exists()
    monkeypatch.setattr(mining, "mine_shard", real)
    get_settings.cache_clear()
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", "--from-store", "-o", str(out), "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["ok"] is True and out.exists()


def test_quiet_still_names_a_quarantined_log(logs, tmp_path, monkeypatch, capsys):
    """``-q`` hid the quarantine: the bad log was left out without a word (exit 0)."""
    (logs / "sample-001" / "lidar_detections.parquet").write_bytes(b"not parquet")
    out = tmp_path / "r.csv"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "mine", str(logs), "-f", "parquet", "-o", str(out), "-q")
    assert code == 0 and stdout == "", stderr
    assert "quarantined sample-001" in stderr and "lidar_detections.parquet" in stderr
    assert "wrote" not in stderr  # still no summary
    assert out.exists()


def test_sample_refuses_a_negative_seed_a_file_and_a_directory_of_other_files(tmp_path, monkeypatch, capsys):
    """A negative seed was ``ValueError: expected non-negative integer`` (exit 1), OUT a file
    ``FileExistsError`` and a rerun with fewer logs left the earlier sample's extra logs beside
    an injected_errors.csv that does not list them (exit 0)."""
    out = tmp_path / "s"
    code, _, stderr = run_cli(monkeypatch, capsys, "sample", str(out), "--seed", "-1")
    assert code == 2 and "--seed" in stderr and not out.exists()
    afile = tmp_path / "f"
    afile.write_text("x")
    code, _, stderr = run_cli(monkeypatch, capsys, "sample", str(afile))
    assert code == 1 and f"sample failed: {afile} is not a directory" in stderr
    code, _, stderr = run_cli(monkeypatch, capsys, "sample", str(out), "--logs", "3", "--frames", "10")
    assert code == 0, stderr
    injected = (out / "injected_errors.csv").read_bytes()
    code, _, stderr = run_cli(monkeypatch, capsys, "sample", str(out), "--logs", "2", "--frames", "10")
    assert code == 1 and "sample-002" in stderr
    assert (out / "injected_errors.csv").read_bytes() == injected and (out / "sample-002").is_dir()
    code, _, stderr = run_cli(monkeypatch, capsys, "sample", str(out), "--logs", "3", "--frames", "10")
    assert code == 0, stderr  # a rerun as before: the same sample again
    assert (out / "injected_errors.csv").read_bytes() == injected


def test_the_help_of_mine_rank_and_sample_states_the_exit_codes(monkeypatch, capsys):
    code, stdout, _ = run_cli(monkeypatch, capsys, "mine", "rank", "--help")
    text = " ".join(stdout.replace("│", " ").split())
    assert code == 0 and "Exit 0 when --out was written" in text and "130 when interrupted" in text
    code, stdout, _ = run_cli(monkeypatch, capsys, "sample", "--help")
    assert code == 0 and "Exit 1 when OUT cannot be written" in " ".join(stdout.replace("│", " ").split())
