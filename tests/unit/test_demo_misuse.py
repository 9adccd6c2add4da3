"""``fleetloop demo`` misused as a first-time user would: every refusal is one clear line (with
``--json`` also ``{"ok": false, "error": ...}`` on stdout), comes before anything starts, and
leaves the demo's state as it was. No services start here: reaching them fails the test."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from fleetloop.cli import app
from fleetloop.settings import get_settings

runner = CliRunner()


class _ServicesWouldStart(RuntimeError):
    pass


@pytest.fixture
def home(tmp_path, monkeypatch):
    from fleetloop.local import services

    def up(*_a, **_k):
        raise _ServicesWouldStart("services would start")

    monkeypatch.setattr(services, "up", up)  # a refusal comes before the services; nothing starts here
    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    for k in ("FLEETLOOP_LABEL_STUDIO__URL", "FLEETLOOP_LABEL_STUDIO__TOKEN", "FLEETLOOP_PREFECT__API_URL",
              "PREFECT_API_URL", "FLEETLOOP_PARAMS"):
        monkeypatch.delenv(k, raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def _error(res, code: int = 1) -> str:
    """The refusal: exit ``code``, one JSON document on stdout, the same one line on stderr."""
    assert res.exit_code == code, (res.stdout, res.stderr)
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and set(doc) == {"ok", "error"}
    assert "\n" not in doc["error"] and "Traceback" not in res.stderr
    assert "services would start" not in doc["error"], "it should have stopped before the services"
    return doc["error"]


def _state(home, doc) -> bytes:
    path = home / "demo" / "state.json"
    path.parent.mkdir(parents=True)
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    path.write_bytes(raw)
    return raw


def _rows(n: int, base_week: str) -> list[dict]:
    from fleetloop.cycle import iso_week, week_start

    return [{"week": k, "iso_week": iso_week(week_start(base_week) + timedelta(days=7 * k)), "labels_spent": 100 + k,
             "dataset_version": k + 1} for k in range(n)]


def _weeks_ago(n: int) -> str:
    from fleetloop.cycle import iso_week

    return iso_week(datetime.now(UTC) - timedelta(days=7 * n))


def test_invalid_settings_are_named_in_one_line_with_exit_2(home, monkeypatch):
    monkeypatch.setenv("FLEETLOOP_PREFECT__PORT", "abc")
    get_settings.cache_clear()
    error = _error(runner.invoke(app, ["demo", "--json"]), 2)
    assert error.startswith("demo failed: invalid settings (FLEETLOOP_* environment or .env): prefect.port:")
    assert "pydantic.dev" not in error


@pytest.mark.parametrize("where", ["home", "parent"])
def test_a_home_that_cannot_be_a_directory_is_named_as_fleetloop_home(home, monkeypatch, where):
    blocker = home.parent / "blocker"
    blocker.write_text("a file")
    target = blocker if where == "home" else blocker / "sub" / "home"
    monkeypatch.setenv("FLEETLOOP_HOME", str(target))
    get_settings.cache_clear()
    error = _error(runner.invoke(app, ["demo", "--json"]))
    assert f"the demo's home {target} (FLEETLOOP_HOME) cannot be used" in error
    assert error.endswith("it is a file" if where == "home" else "a parent of it is a file")
    assert blocker.read_text() == "a file"


@pytest.mark.parametrize("raw, needle", [
    (b'{"config": {', "Invalid JSON"),
    (b"", "Invalid JSON"),
    (b"\xff\xfe not json", "Invalid JSON"),
    (b'{"a": 1}', "config: Field required"),
    (b"[1, 2]", "Input should be an object"),
    (b'{"config": {"logs_per_week": 1}, "base_week": "2025-W01"}', "config.logs_per_week"),
    (b'{"config": {}, "base_week": "last tuesday"}', "base_week: invalid week 'last tuesday'"),
    (b'{"config": {}, "base_week": "2025-W01", "rows": [{"week": 1, "iso_week": "2025-W02", "labels_spent": 0, '
     b'"dataset_version": 1}]}', "its rows are weeks [1]"),
])
def test_a_damaged_state_stops_the_demo_before_anything_starts_and_is_kept(home, raw, needle):
    _state(home, raw)
    error = _error(runner.invoke(app, ["demo", "--json"]))
    assert "is not a readable demo state" in error and needle in error and "--reset" in error
    assert (home / "demo" / "state.json").read_bytes() == raw  # nothing lost
    assert not (home / "services").exists()


def test_a_state_written_by_a_newer_fleetloop_is_refused_not_overwritten(home):
    raw = _state(home, {"version": 2, "config": {}, "base_week": _weeks_ago(60), "rows": _rows(1, _weeks_ago(60)),
                        "labels_spent": 101, "what_version_2_knows": {"keep": True}})
    error = _error(runner.invoke(app, ["demo", "--json"]))
    assert "was written by a newer fleetloop (demo state version 2; this one reads version 1)" in error
    assert "--reset" in error
    assert (home / "demo" / "state.json").read_bytes() == raw


def test_a_state_directory_in_place_of_the_file_is_named(home):
    (home / "demo" / "state.json").mkdir(parents=True)
    assert "Is a directory" in _error(runner.invoke(app, ["demo", "--json"]))


def test_more_weeks_than_the_calendar_has_left_are_refused_at_once_saying_how_many_fit(home):
    """The demo's week 0 is 60 weeks before its first run; a rerun asking for weeks that have not
    begun would otherwise run every week up to today (hours) and only then stop."""
    from fleetloop.demo import DemoState, check_calendar

    base = _weeks_ago(60)
    raw = _state(home, {"config": {}, "base_week": base, "rows": _rows(55, base), "labels_spent": 154})
    error = _error(runner.invoke(app, ["demo", "--weeks", "10", "--json"]))
    assert error.startswith("demo failed: --weeks 10 would take the demo's calendar past today: week 64 would be ")
    assert "6 more weeks fit: rerun with --weeks 6, or start over with --reset" in error
    assert (home / "demo" / "state.json").read_bytes() == raw
    assert not (home / "services").exists()

    state = DemoState.model_validate_json(raw)
    check_calendar(state, 6)  # weeks 55..60: week 60 is this week, which has begun
    check_calendar(state, 0)  # nothing to run: the table again
    with pytest.raises(Exception, match="no more weeks fit"):
        check_calendar(state.model_copy(update={"rows": state.rows + [state.rows[0]] * 6}), 1)
    check_calendar(None, 52)  # a new demo: its 52 weeks at most always fit
    # --reset starts over: the old calendar does not count
    assert "services would start" in runner.invoke(app, ["demo", "--reset", "--weeks", "10", "--json"]).stdout


def test_ctrl_c_while_the_demo_loads_is_an_interruption_in_json(home, monkeypatch):
    """Ctrl-C during the command's first second (its imports) was click's "Aborted!", exit 1,
    and no JSON on stdout."""
    import importlib.abc

    class Interrupt(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "fleetloop.demo":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "fleetloop.demo")
    monkeypatch.setattr(sys, "meta_path", [Interrupt(), *sys.meta_path])
    error = _error(runner.invoke(app, ["demo", "--json"]), 130)
    assert error == "demo stopped: interrupted by SIGINT before it started anything"


def test_ctrl_c_while_the_services_start_names_the_rerun(home, monkeypatch):
    from fleetloop.local import services

    def up(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(services, "up", up)
    error = _error(runner.invoke(app, ["demo", "--json"]), 130)
    assert error.startswith("demo stopped: interrupted by SIGINT: a rerun of `fleetloop demo` continues")


@pytest.mark.parametrize("argv, needle", [
    (["demo", "--weeks", "-1", "--json"], "Invalid value for '--weeks'"),
    (["demo", "--weeks", "53", "--json"], "Input should be less than or equal to 52"),
    (["demo", "--weeks", "many", "--json"], "Invalid value for '--weeks'"),
    (["demo", "--budget", "0", "--json"], "Invalid value for '--budget'"),
])
def test_bad_options_are_usage_errors_in_json(home, monkeypatch, capsys, argv, needle):
    from fleetloop.cli import main

    monkeypatch.setattr(sys, "argv", ["fleetloop", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    out, _ = capsys.readouterr()
    doc = json.loads(out)
    assert doc["ok"] is False and doc["error"].startswith("usage: ") and needle in doc["error"]
    assert not home.exists()


def test_a_rerun_with_other_world_options_says_which_it_does_not_use():
    from fleetloop.demo import DemoConfig, config_note

    note = config_note(DemoConfig(), DemoConfig(logs_per_week=6, epochs=2))
    assert note == ("continuing the demo with the configuration it started with: logs_per_week 12 (not 6), "
                    "epochs default (not 2) (use --reset to change it)")


def _a_log_in_the_store(home) -> None:
    from fleetloop.store.logs import put_log
    from fleetloop.store.objects import get_store
    from tests.factory_logs import make_log

    put_log(get_store(get_settings()), make_log("fleet-log", 2), "test")


def _a_campaign_in_the_store(home) -> None:
    from fleetloop.store.objects import get_store

    get_store(get_settings()).put_bytes("labeling/campaigns/fleetloop-2026-w40.json", b'{"name": "fleetloop-2026-w40"}')


def _a_model_in_the_store(home) -> None:
    from fleetloop.store.objects import get_store

    get_store(get_settings()).put_bytes("registry/camera-detector/aliases/production.json", b'{"version": 3}')


def _a_dataset_repository(home) -> None:
    import subprocess

    res = runner.invoke(app, ["dataset", "grow", "--json"])  # nothing to grow from: an empty repository
    assert res.exit_code == 0, res.output
    subprocess.run(["git", "tag", "dataset-v1"], cwd=home / "dataset", check=True)


def _a_directory_in_the_datasets_place(home) -> None:
    (home / "dataset" / ".git").mkdir(parents=True)


@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.parametrize("data, needle", [
    (_a_log_in_the_store, "a store ({store}) with logs"),
    (_a_campaign_in_the_store, "a store ({store}) with labeling campaigns"),
    (_a_model_in_the_store, "a store ({store}) with registered models"),
    (_a_dataset_repository, "a dataset repository with versions 1 ({home}/dataset)"),
    (_a_directory_in_the_datasets_place, "a directory that is not a dataset repository fleetloop can read "
                                         "({home}/dataset)"),
])
def test_a_home_holding_a_real_fleets_data_is_refused_and_reset_deletes_nothing(home, data, needle, reset):
    """A user's FLEETLOOP_HOME holding their fleet: the demo would have ingested simulated logs,
    labels and a simulated production model into it, and --reset would have deleted its store,
    dataset and campaigns' projects."""
    data(home)
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    error = _error(runner.invoke(app, ["demo", "--json", *(["--reset"] if reset else [])]))
    assert error.startswith(f"demo failed: the demo's home {home} (FLEETLOOP_HOME) holds fleetloop data the demo "
                            "did not make: ")
    assert needle.format(store=home / "store", home=home) in error
    assert error.endswith("give the demo a home of its own, e.g. FLEETLOOP_HOME=.fleetloop-demo fleetloop demo")
    after = sorted(p.relative_to(home) for p in home.rglob("*") if p.name != ".demo.lock")
    assert after == before and not (home / "demo").exists()


def test_a_home_the_demo_made_or_an_empty_one_is_the_demos(home):
    started = "demo failed: _ServicesWouldStart: services would start"
    res = runner.invoke(app, ["demo", "--json"])  # a fresh home: claimed, then the services would start
    assert json.loads(res.stdout)["error"] == started
    assert (home / "demo").is_dir()
    _a_log_in_the_store(home)  # its own simulated logs do not make it foreign on the rerun
    for argv in (["demo", "--json"], ["demo", "--json", "--reset"]):
        assert json.loads(runner.invoke(app, argv).stdout)["error"] == started


def test_a_dataset_repository_without_a_version_is_no_data(home):
    """`fleetloop dataset grow` with nothing to grow makes the repository (git + DVC, no version):
    a user who tried it first in the default home must still be able to run the demo there."""
    started = "demo failed: _ServicesWouldStart: services would start"
    res = runner.invoke(app, ["dataset", "grow", "--json"])
    assert res.exit_code == 0 and (home / "dataset" / ".git").is_dir(), res.output
    for argv in (["demo", "--json"], ["demo", "--json", "--reset"]):
        assert json.loads(runner.invoke(app, argv).stdout)["error"] == started
