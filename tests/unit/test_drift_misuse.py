"""``fleetloop drift``, the drift step and ``fleetloop logs list`` used the wrong way: each misuse is
one clear line (``--json``: one JSON object starting with "ok"), found before the slow work, and
nothing is silently widened or dropped."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fleetloop.cli import app
from fleetloop.settings import get_settings
from fleetloop.store.logs import list_logs, put_log
from fleetloop.store.objects import LocalStore, StorageError
from tests.factory_logs import make_log


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty fleetloop home on the local backend; yields its store."""
    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    monkeypatch.delenv("FLEETLOOP_STORAGE__LOCAL_ROOT", raising=False)
    get_settings.cache_clear()
    from fleetloop.store.objects import get_store

    yield get_store(get_settings())
    get_settings.cache_clear()


def _json(res) -> dict:
    doc = json.loads(res.stdout)
    assert next(iter(doc)) == "ok", res.stdout
    return doc


def _script(argv: list[str], monkeypatch, capsys) -> tuple[int, dict, str]:
    """Run the ``fleetloop`` console script (``main()``: usage errors answered in JSON too);
    (exit code, the JSON document on stdout, stderr)."""
    import sys

    from fleetloop.cli import main

    monkeypatch.setattr(sys, "argv", ["fleetloop", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert next(iter(doc)) == "ok", out
    return exc.value.code, doc, err


# ------------------------------------------------------------------------ fleetloop drift: usage


@pytest.mark.parametrize("option", ["--reference-logs", "--current-logs"])
def test_a_log_list_naming_no_id_is_a_usage_error_not_every_log(tmp_path: Path, option: str, monkeypatch,
                                                                capsys) -> None:
    """``-r ""`` (an empty shell variable) used to mean "every log in the directory"."""
    code, doc, _ = _script(["drift", str(tmp_path), str(tmp_path), option, " , ", "--out", str(tmp_path / "o"), "--json"],
                           monkeypatch, capsys)
    assert code == 2
    assert doc["ok"] is False and option in doc["error"] and "names no log id" in doc["error"]


@pytest.mark.parametrize("args, named", [(["--threshold", "0"], "--threshold"), (["--drift-share", "1.5"], "--drift-share"),
                                         (["--display-sample", "0"], "--display-sample")])
def test_impossible_numbers_are_usage_errors_before_any_log_is_read(tmp_path: Path, args, named, monkeypatch,
                                                                    capsys) -> None:
    missing = tmp_path / "no-such-logs"  # were the logs read first, this would be the error
    code, doc, _ = _script(["drift", str(missing), str(missing), *args, "--out", str(tmp_path / "o"), "--json"],
                           monkeypatch, capsys)
    assert code == 2
    assert doc["ok"] is False and named in doc["error"] and "no-such-logs" not in doc["error"]


def test_shared_logs_are_named_and_the_output_says_which_features_drifted_and_why_others_were_not_compared(
        sample_dir: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["drift", str(sample_dir), str(sample_dir), "--format", "parquet",
                                   "--reference-logs", "sample-000", "--out", str(tmp_path / "o")],
                             env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "warning: the reference and current windows share 1 log (sample-000)" in out
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["drifted_features"]  # the two simulated logs differ
    assert f"features drifted ({summary['share_drifted']:.0%}): {summary['drifted_features'][0]}" in out
    for skipped in summary["skipped"]:  # each skipped feature with its reason
        assert skipped["reason"] in out and skipped["name"] in out
    assert "(no values in both windows)" in out


# ------------------------------------------------------------------------ the drift step


def test_windows_with_nothing_comparable_are_a_skipped_step_not_a_crash(tmp_path: Path) -> None:
    """One identical frame in both windows: every feature is constant. The step used to raise
    (failing the monitor-drift flow and the weekly cycle's drift step on every rerun)."""
    from fleetloop.drift.compare import compare
    from fleetloop.drift.params import DriftParams

    st = LocalStore(tmp_path / "store")
    with np.errstate(all="ignore"):
        outcome = compare(st, make_log("a", 1), make_log("a", 1), DriftParams(), stamp="t")
    assert outcome.status == "skipped" and outcome.verdict is None
    assert outcome.headline().startswith("nothing to compare: no feature can be compared")
    assert outcome.reference_logs == ["a"] and outcome.current_logs == ["a"]
    assert st.list("drift/") == []  # no half report


def test_the_drift_flows_windows_include_a_log_arriving_at_their_very_start(tmp_path: Path) -> None:
    from fleetloop.cycle import cycle_window, reference_window, window_manifests

    st = LocalStore(tmp_path / "store")
    week = "2026-W49"
    ref_w, cur_w = reference_window(week), cycle_window(week)
    put_log(st, make_log("ref-first", 2), "test", arrived_at=ref_w.start)
    put_log(st, make_log("ref-last", 2, seed=1), "test", arrived_at=ref_w.end - timedelta(microseconds=1))
    put_log(st, make_log("cur-first", 2, seed=2), "test", arrived_at=cur_w.start)
    put_log(st, make_log("too-late", 2, seed=3), "test", arrived_at=cur_w.end)
    put_log(st, make_log("too-early", 2, seed=4), "test", arrived_at=ref_w.start - timedelta(microseconds=1))
    current, reference = ([m.log_id for m in ms] for ms in window_manifests(st, week))
    assert reference == ["ref-first", "ref-last"]
    assert current == ["cur-first"]


# ------------------------------------------------------------------------ fleetloop logs list


def test_logs_list_since_is_at_or_after_as_its_help_says(home) -> None:
    t = datetime(2026, 11, 23, 8, 0, 0, 123456, tzinfo=UTC)
    put_log(home, make_log("at-since", 2), "test", arrived_at=t)
    put_log(home, make_log("before", 2, seed=1), "test", arrived_at=t - timedelta(microseconds=1))
    runner = CliRunner()
    for since in ("2026-11-23T08:00:00.123456Z", "2026-11-23T09:00:00.123456+01:00", "2026-11-23 08:00:00.123456"):
        res = runner.invoke(app, ["logs", "list", "--since", since, "--json"])
        assert res.exit_code == 0, res.output
        assert [m["log_id"] for m in json.loads(res.stdout)] == ["at-since"], since
    res = runner.invoke(app, ["logs", "list", "--since", "2026-11-23", "--json"])  # a date: from its midnight (UTC)
    assert [m["log_id"] for m in json.loads(res.stdout)] == ["before", "at-since"]
    res = runner.invoke(app, ["logs", "list", "--since", "2026-11-24", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout) == []
    # the store's own cursor stays strictly after
    assert [m.log_id for m in list_logs(home, since=t)] == []
    # the mine flow's plain `since` ("logs that arrived at or after") too
    from fleetloop.mine.params import MiningParams
    from fleetloop.mine.run import plan_mining

    assert plan_mining(home, MiningParams(), None, since=t).log_ids == ["at-since"]


def test_a_local_store_root_that_is_a_file_is_an_error_not_an_empty_store(home, tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "not-a-dir"
    root.write_text("x")
    with pytest.raises(StorageError, match="root is not a directory"):
        LocalStore(root).list("index/arrivals/")
    monkeypatch.setenv("FLEETLOOP_STORAGE__LOCAL_ROOT", str(root))
    get_settings.cache_clear()
    res = CliRunner().invoke(app, ["logs", "list", "--json"])
    assert res.exit_code == 1
    doc = _json(res)
    assert doc["ok"] is False and str(root) in doc["error"] and "not a directory" in doc["error"]


def test_the_drift_step_leaves_out_a_damaged_log_naming_it_and_refuses_unknown_ids(tmp_path: Path) -> None:
    """A log of the window whose stream was deleted by hand used to fail the whole drift step;
    now it is left out and named, and the other logs are compared. A given id that is not in the
    store stays an error."""
    from fleetloop.cycle import cycle_window, reference_window
    from fleetloop.drift.compare import DriftOutcome
    from fleetloop.flows.drift import drift_inputs
    from fleetloop.store.logs import LogNotFoundError

    st = LocalStore(tmp_path / "store")
    week = "2026-W49"
    ref_w, cur_w = reference_window(week), cycle_window(week)
    put_log(st, make_log("ref-1", 3), "test", arrived_at=ref_w.start + timedelta(hours=1))
    damaged = put_log(st, make_log("ref-2", 3, seed=1), "test", arrived_at=ref_w.start + timedelta(hours=2))
    put_log(st, make_log("cur-1", 3, seed=2), "test", arrived_at=cur_w.start + timedelta(hours=1))
    st.delete(f"logs/ref-2/{damaged.sha256}/tracks.parquet")  # a stream deleted by hand
    st.put_bytes("logs/foreign/manifest.json", b"not a manifest")  # a foreign object where a manifest belongs
    st.put_bytes(f"index/arrivals/{(cur_w.start + timedelta(hours=2)).strftime('%Y%m%dT%H%M%S.%fZ')}_foreign.json", b"{}")

    ref, cur, unreadable = drift_inputs(st, week, None, None)
    assert ref.log_ids == ["ref-1"] and cur.log_ids == ["cur-1"]
    assert sorted(unreadable) == ["foreign", "ref-2"]
    assert "tracks.parquet" in unreadable["ref-2"] and "logs/foreign/manifest.json" in unreadable["foreign"]
    assert not any("\n" in why for why in unreadable.values())
    outcome = DriftOutcome(status="skipped", reason="nothing to compare", unreadable_logs=unreadable)
    assert outcome.headline() == "nothing to compare; 2 unreadable logs left out (foreign, ref-2)"

    with pytest.raises(LogNotFoundError, match=r"logs not in the store .*: nope"):
        drift_inputs(st, week, ["cur-1"], ["nope"])


def test_json_ok_is_false_when_fail_on_drift_exits_3(sample_dir: Path, tmp_path: Path) -> None:
    """The --json contract: "ok" is true when the command exits 0. A drift that --fail-on-drift
    turns into exit 3 used to print "ok": true."""
    res = CliRunner().invoke(app, ["drift", str(sample_dir), str(sample_dir), "--format", "parquet", "-r", "sample-000",
                                   "-c", "sample-001", "--fail-on-drift", "--out", str(tmp_path / "o"), "--json"])
    doc = _json(res)
    assert doc["dataset_drift"] is True  # the two simulated logs differ
    assert res.exit_code == 3 and doc["ok"] is False and doc["warnings"] == []
