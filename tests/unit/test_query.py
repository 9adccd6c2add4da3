"""``LogQuery`` / ``select_logs`` (fleetloop/store/query.py) on a local store, and
``fleetloop mine --from-store`` with a query through the real CLI."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from fleetloop.cli import app
from fleetloop.schema import DriveLogs
from fleetloop.settings import get_settings
from fleetloop.store.logs import list_logs, put_log
from fleetloop.store.objects import LocalStore
from fleetloop.store.query import LogQuery, LogQueryError, select_logs
from tests.factory_logs import make_log

T0 = datetime(2025, 3, 4, 8, 0, tzinfo=UTC)  # a Tuesday
NS = 1_000_000_000


def tagged_log(log_id: str, *, vehicle: str, weather: list[str], drive_start: datetime, seed: int = 0) -> DriveLogs:
    """A factory log whose frames carry ``weather[i]`` and start at ``drive_start`` (10 Hz)."""
    n = len(weather)
    log = make_log(log_id, n_frames=n, seed=seed)
    fr = log.frames
    start_ns = int(drive_start.timestamp()) * NS
    fr = fr.set_column(fr.schema.get_field_index("timestamp_ns"), "timestamp_ns",
                       pa.array([start_ns + i * 100_000_000 for i in range(n)], pa.int64()))
    fr = fr.set_column(fr.schema.get_field_index("vehicle"), "vehicle", pa.array([vehicle] * n, pa.string()))
    fr = fr.set_column(fr.schema.get_field_index("weather"), "weather", pa.array(weather, pa.string()))
    return DriveLogs(**{**log.tables(), "frames": fr})


def stock(store) -> None:
    """Four logs: arrivals a day apart, two vehicles, rain in some frames of some logs."""
    logs = [
        ("mon-7-dry", "7", ["clear"] * 6, T0 - timedelta(days=1)),
        ("tue-7-rain", "7", ["clear", "clear", "rain", "rain", "clear", "clear"], T0),
        ("tue-9-rain", "9", ["rain"] * 6, T0 + timedelta(hours=3)),
        ("wed-7-fog", "7", ["fog"] * 6, T0 + timedelta(days=1)),
    ]
    for i, (log_id, vehicle, weather, when) in enumerate(logs):
        put_log(store, tagged_log(log_id, vehicle=vehicle, weather=weather, drive_start=when, seed=i), "test",
                arrived_at=when + timedelta(hours=1))


@pytest.fixture
def store(tmp_path):
    s = LocalStore(tmp_path / "store")
    stock(s)
    return s


def ids(store, **query) -> list[str]:
    return select_logs(list_logs(store), LogQuery(**query), store)


def test_query_validation_and_description():
    q = LogQuery(since="2025-03-04", until="2025-03-05T00:00:00+02:00", vehicle="7", tags=["weather=rain"])
    assert q.since == datetime(2025, 3, 4, tzinfo=UTC)  # naive times are UTC
    assert q.until == datetime(2025, 3, 4, 22, tzinfo=UTC)  # aware ones converted
    assert q.tag_sets == {"weather": {"rain"}, "vehicle": {"7"}} and q.needs_content
    assert "vehicle=7" in q.describe() and LogQuery().describe() == "all logs"
    assert not LogQuery(since=T0, log_ids=["a"]).needs_content
    for bad, match in [({"tags": ["rain"]}, "must look like"), ({"tags": ["colour=red"]}, "must look like"),
                       ({"tags": ["weather="]}, "must look like"), ({"since": T0, "until": T0}, "until must be after"),
                       ({"drive_since": T0, "drive_until": T0 - timedelta(1)}, "drive_until must be after"),
                       ({"vehicle": ""}, "at least 1"), ({"colour": "red"}, "Extra inputs")]:
        with pytest.raises(ValidationError, match=match):
            LogQuery(**bad)


def test_arrival_window_is_half_open(store):
    arrived_tue = T0 + timedelta(hours=1)
    assert ids(store) == ["mon-7-dry", "tue-7-rain", "tue-9-rain", "wed-7-fog"]
    assert ids(store, since=arrived_tue) == ["tue-7-rain", "tue-9-rain", "wed-7-fog"]  # since inclusive
    assert ids(store, until=arrived_tue) == ["mon-7-dry"]  # until exclusive
    assert ids(store, since=T0, until=T0 + timedelta(days=1)) == ["tue-7-rain", "tue-9-rain"]


def test_vehicle_tags_and_drive_window(store):
    assert ids(store, vehicle="7") == ["mon-7-dry", "tue-7-rain", "wed-7-fog"]
    # "the rainy drives from Tuesday on vehicle 7": some frame is rainy, the drive overlaps Tuesday
    tuesday = {"drive_since": datetime(2025, 3, 4, tzinfo=UTC), "drive_until": datetime(2025, 3, 5, tzinfo=UTC)}
    assert ids(store, vehicle="7", tags=["weather=rain"], **tuesday) == ["tue-7-rain"]
    assert ids(store, tags=["weather=rain"], **tuesday) == ["tue-7-rain", "tue-9-rain"]
    # several values of one name: any of them; several names: one frame must hold them all
    assert ids(store, tags=["weather=rain", "weather=fog"]) == ["tue-7-rain", "tue-9-rain", "wed-7-fog"]
    assert ids(store, tags=["weather=rain", "vehicle=9"]) == ["tue-9-rain"]
    assert ids(store, tags=["weather=snow"]) == []
    # a drive that ends before the window, or starts at/after its end, is out
    assert ids(store, drive_until=T0) == ["mon-7-dry"]
    assert ids(store, drive_since=T0 + timedelta(days=1)) == ["wed-7-fog"]


def test_log_ids_and_content_queries_need_the_store(store):
    assert ids(store, log_ids=["wed-7-fog", "mon-7-dry"]) == ["mon-7-dry", "wed-7-fog"]  # store order
    with pytest.raises(LogQueryError, match=r"not in the store: \['nope'\]"):
        ids(store, log_ids=["mon-7-dry", "nope"])
    with pytest.raises(LogQueryError, match="pass the store"):
        select_logs(list_logs(store), LogQuery(tags=["weather=rain"]))
    assert select_logs(list_logs(store), LogQuery(since=T0)) == ["tue-7-rain", "tue-9-rain", "wed-7-fog"]


@pytest.fixture(name="home")
def _stocked_home(tmp_path, monkeypatch):
    """A fleetloop home whose local store holds the stocked logs of :func:`stock`."""
    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    get_settings.cache_clear()
    from fleetloop.store.objects import get_store

    stock(get_store(get_settings()))
    yield tmp_path / "home"
    get_settings.cache_clear()


def test_cli_mine_from_store_with_a_query(home, tmp_path):
    runner = CliRunner()
    out = tmp_path / "rainy.csv"
    res = runner.invoke(app, ["mine", "--from-store", "--vehicle", "7", "--tag", "weather=rain", "--drive-since",
                              "2025-03-04", "--drive-until", "2025-03-05", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["log_id"] for r in rows} == {"tue-7-rain"} and len(rows) == 6  # every frame of the one log, ranked
    assert [int(r["rank"]) for r in rows] == list(range(1, 7))
    assert "from 1 logs matching" in res.output and "weather=rain" in res.output

    picked = tmp_path / "picked.csv"
    res = runner.invoke(app, ["mine", "--from-store", "--tag", "weather=rain", "--budget", "3", "--out", str(picked)])
    assert res.exit_code == 0, res.output
    with open(picked, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {r["log_id"] for r in rows} <= {"tue-7-rain", "tue-9-rain"}


def test_cli_mine_from_store_rejects_bad_queries_and_empty_answers(home, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["mine", "--from-store", "--tag", "colour=red", "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "bad query" in res.output and "must look like" in res.output
    res = runner.invoke(app, ["mine", "--from-store", "--since", "2025-03-05", "--until", "2025-03-04",
                              "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "until must be after since" in res.output
    res = runner.invoke(app, ["mine", "--from-store", "--tag", "weather=snow", "--out", str(tmp_path / "x.csv"),
                              "--json"])
    assert res.exit_code == 1
    # the store is named: a mistyped FLEETLOOP_HOME reads as an empty store
    assert json.loads(res.stdout)["error"].startswith(
        f"no stored logs match (tags=['weather=snow']) in the store {(home / 'store').resolve()}")
    res = runner.invoke(app, ["mine", "--from-store", "--log", "nope", "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 1 and "not in the store" in res.output
    assert not (tmp_path / "x.csv").exists()
