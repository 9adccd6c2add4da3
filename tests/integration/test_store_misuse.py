"""The log store with objects fleetloop did not write, against a local directory and a real S3
HTTP server (moto): one foreign or damaged manifest is one clear line naming it, and every other
log is still listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetloop.cli import app
from fleetloop.settings import S3Settings, get_settings
from fleetloop.store.logs import ARRIVALS_PREFIX, LogIntegrityError, list_logs, put_log
from fleetloop.store.objects import LocalStore, S3Store, make_s3_client
from tests.factory_logs import make_log

pytest_plugins = ["tests.fixtures_s3"]


@pytest.fixture(params=["local", "s3"])
def configured(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch):
    """A store and the FLEETLOOP_* environment that makes the CLI use it."""
    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLEETLOOP_STORAGE__LOCAL_ROOT", raising=False)
    if request.param == "local":
        monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
        store = LocalStore(tmp_path / "home" / "store")
    else:
        s3: S3Settings = request.getfixturevalue("s3_settings")
        monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "s3")
        monkeypatch.setenv("FLEETLOOP_STORAGE__S3__BUCKET", s3.bucket)
        monkeypatch.setenv("FLEETLOOP_STORAGE__S3__ENDPOINT_URL", s3.endpoint_url or "")
        store = S3Store(s3.bucket, "", make_s3_client(s3))
    get_settings.cache_clear()
    yield store
    get_settings.cache_clear()


def test_a_foreign_manifest_is_named_in_one_line_and_the_other_logs_are_still_listed(configured) -> None:
    store = configured
    put_log(store, make_log("drive-a", 2), "test")
    put_log(store, make_log("drive-b", 2, seed=1), "test")
    # a foreign object where a manifest belongs, with an arrival entry naming it (a copy tool, a
    # hand edit or another program's writer), and foreign keys beside the index entries
    store.put_bytes("logs/foreign/manifest.json", b"garbage, not JSON")
    store.put_bytes(f"{ARRIVALS_PREFIX}20261206T000000.000000Z_foreign.json", b"{}")
    store.put_bytes(f"{ARRIVALS_PREFIX}README", b"not an entry")

    with pytest.raises(LogIntegrityError) as exc:  # strict by default (mining, drift, the cycle)
        list_logs(store)
    assert "\n" not in str(exc.value)  # one line (pydantic's own text spans lines)
    assert "logs/foreign/manifest.json is not a valid log manifest" in str(exc.value)

    problems: dict[str, str] = {}
    assert [m.log_id for m in list_logs(store, problems=problems)] == ["drive-a", "drive-b"]
    assert list(problems) == ["foreign"] and "logs/foreign/manifest.json" in problems["foreign"]

    res = CliRunner().invoke(app, ["logs", "list", "--json"])
    assert res.exit_code == 1  # partial: the readable logs listed, the exit code says not all were
    assert [m["log_id"] for m in json.loads(res.stdout)] == ["drive-a", "drive-b"]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("not listed foreign: ")
    assert "logs/foreign/manifest.json is not a valid log manifest" in lines[0]

    res = CliRunner().invoke(app, ["logs", "list"], env={"COLUMNS": "200"})
    assert res.exit_code == 1 and "2 logs, 1 not listed (unreadable)" in res.stdout
    assert "drive-a" in res.stdout and "drive-b" in res.stdout


def test_a_manifest_copied_under_another_logs_folder_is_refused_not_served_as_that_log(configured) -> None:
    """``logs/drive-x/manifest.json`` holding drive-a's manifest (a copy or move by hand) used to be
    skipped by the listing without a word, and ``get_log("drive-x")`` returned drive-a's frames."""
    from fleetloop.store.logs import get_log

    store = configured
    put_log(store, make_log("drive-a", 2), "test")
    body = store.get_bytes("logs/drive-a/manifest.json")
    store.put_bytes("logs/drive-x/manifest.json", body)
    store.put_bytes(f"{ARRIVALS_PREFIX}20261206T000000.000000Z_drive-x.json", body)

    with pytest.raises(LogIntegrityError, match=r"manifest logs/drive-x/manifest.json names log 'drive-a', not 'drive-x'"):
        get_log(store, "drive-x")
    problems: dict[str, str] = {}
    assert [m.log_id for m in list_logs(store, problems=problems)] == ["drive-a"]
    assert list(problems) == ["drive-x"] and "names log 'drive-a'" in problems["drive-x"]
    assert get_log(store, "drive-a").log_ids == ["drive-a"]


def test_a_manifest_the_store_cannot_read_is_named_and_the_other_logs_are_still_listed(tmp_path: Path, monkeypatch) -> None:
    """An I/O error on one manifest (here a symbolic-link loop, which root cannot read either)
    used to abort the whole listing with a StorageError, so one damaged file hid every log."""
    from fleetloop.store.objects import StorageError

    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    monkeypatch.delenv("FLEETLOOP_STORAGE__LOCAL_ROOT", raising=False)
    get_settings.cache_clear()
    store = LocalStore(tmp_path / "home" / "store")
    put_log(store, make_log("drive-a", 2), "test")
    put_log(store, make_log("drive-b", 2, seed=1), "test")
    manifest = tmp_path / "home" / "store" / "logs" / "drive-b" / "manifest.json"
    manifest.unlink()
    manifest.symlink_to(manifest)  # reading it fails with ELOOP

    with pytest.raises(StorageError):  # strict by default
        list_logs(store)
    problems: dict[str, str] = {}
    assert [m.log_id for m in list_logs(store, problems=problems)] == ["drive-a"]
    assert list(problems) == ["drive-b"] and "logs/drive-b/manifest.json" in problems["drive-b"]
    res = CliRunner().invoke(app, ["logs", "list", "--json"])
    assert res.exit_code == 1 and [m["log_id"] for m in json.loads(res.stdout)] == ["drive-a"]
    assert res.stderr.startswith("not listed drive-b: ")
    get_settings.cache_clear()


def test_logs_list_takes_the_query_mine_from_store_takes(configured) -> None:
    from tests.factory_logs import replace_values

    store = configured
    put_log(store, make_log("rainy", 3), "test")
    clear = replace_values(make_log("sunny", 3, seed=1), "frames", "weather", "sunny", [0, 1, 2], "clear")
    put_log(store, replace_values(clear, "frames", "vehicle", "sunny", [0, 1, 2], "veh-7"), "test")

    def listed(*args: str) -> list[str]:
        res = CliRunner().invoke(app, ["logs", "list", "--json", *args])
        assert res.exit_code == 0, res.output
        return [m["log_id"] for m in json.loads(res.stdout)]

    assert listed() == ["rainy", "sunny"]
    assert listed("--tag", "weather=rain") == ["rainy"]
    assert listed("--tag", "weather=clear", "--vehicle", "veh-7") == ["sunny"]
    assert listed("--vehicle", "veh-1", "--tag", "weather=clear") == []
    assert listed("--log", "sunny") == ["sunny"]
    res = CliRunner().invoke(app, ["logs", "list", "--log", "sunny", "--log", "nowhere"])
    assert res.exit_code == 1 and "logs not in the store: ['nowhere']" in res.stderr
    assert listed("--until", "2000-01-01") == []
    assert listed("--drive-since", "2023-11-14T22:13:20", "--drive-until", "2023-11-14T22:13:21") == ["rainy", "sunny"]
    res = CliRunner().invoke(app, ["logs", "list", "--tag", "weather"], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and "bad query" in res.stderr and "weather=rain" in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1
    res = CliRunner().invoke(app, ["logs", "list", "--tag", "weather=rain"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "1 logs match (tags=['weather=rain'])" in res.stdout


def test_a_damaged_log_is_named_only_by_listings_and_runs_that_cover_it(configured) -> None:
    """A damaged manifest used to be reported by every listing from before its arrival on, so a
    weekly cycle of an earlier week was never done, and mining named logs ``log_ids`` -> one
    damaged log among the wanted ones failed the whole run as "not in the store"."""
    from datetime import UTC, datetime

    from fleetloop.mine.params import MiningParams
    from fleetloop.mine.run import plan_mining

    store = configured
    t = [datetime(2026, 11, d, 12, tzinfo=UTC) for d in (2, 10, 20)]
    for i, (log_id, at) in enumerate(zip(("early", "middle", "late"), t, strict=True)):
        put_log(store, make_log(log_id, 2, seed=i), "test", arrived_at=at)
    store.put_bytes("logs/late/manifest.json", b"garbage")
    store.put_bytes("logs/middle/manifest.json", store.get_bytes("logs/middle/manifest.json")[:-7])

    problems: dict[str, str] = {}
    listed = list_logs(store, problems=problems, until=datetime(2026, 11, 15, tzinfo=UTC))
    assert [m.log_id for m in listed] == ["early"] and list(problems) == ["middle"]  # "late" arrived after
    run = plan_mining(store, MiningParams(), 10, log_ids=["early", "middle"])
    assert run.log_ids == ["early"] and list(run.unlisted) == ["middle"]  # named, not "not in the store"
    run = plan_mining(store, MiningParams(), 10, log_ids=["early"])
    assert run.log_ids == ["early"] and run.unlisted == {}  # the others' damage is not this run's
