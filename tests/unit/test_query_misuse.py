"""The log query (``fleetloop logs list`` and ``fleetloop mine --from-store``) misused: a date
that is a bare number, a time out of range once in UTC, an option given twice, ``--vehicle``
against a ``vehicle=`` tag, tag values in another case or with spaces, a tag with two ``=``, an
empty window. Each is one line (with ``--json`` one JSON document on stdout, ok false) and exit
2, never a silent wrong answer; the help says what a date alone means.

The commands run through the console script's ``main`` (as ``fleetloop`` runs them)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from fleetloop.store.query import LogQuery
from tests.unit.test_mine_cli_misuse import json_error, run_cli
from tests.unit.test_query import _stocked_home  # noqa: F401 (fixture: home)

# the stocked logs (tests/unit/test_query.py): vehicle 7 drove mon-7-dry, tue-7-rain, wed-7-fog;
# vehicle 9 tue-9-rain; rain in some frames of tue-7-rain and all of tue-9-rain
VEHICLE_7 = ["mon-7-dry", "tue-7-rain", "wed-7-fog"]
RAINY = ["tue-7-rain", "tue-9-rain"]


def listed(monkeypatch, capsys, *query: str) -> list[str]:
    code, out, err = run_cli(monkeypatch, capsys, "logs", "list", *query, "--json")
    assert code == 0, (out, err)
    return [m["log_id"] for m in json.loads(out)]


def bad_query(monkeypatch, capsys, *argv: str) -> str:
    """The one-line error of a refused query: exit 2, one JSON document, one stderr line."""
    code, out, err = run_cli(monkeypatch, capsys, *argv, "--json")
    assert code == 2, (out, err)
    error = json_error(out)
    assert error.startswith("bad query: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    return error


def both_commands(tmp_path, *query: str) -> list[tuple[str, ...]]:
    return [("logs", "list", *query), ("mine", "--from-store", *query, "--out", str(tmp_path / "x.csv"))]


@pytest.mark.parametrize("when", ["20250304", "1741046400", "1741046400.5", "-5"])
def test_a_time_that_is_a_bare_number_is_a_bad_query_not_seconds_since_1970(home, tmp_path, monkeypatch, capsys,
                                                                            when):
    # before: --since 20250304 was read as 1970-08-23 (every log listed); a typed date gone wrong
    for argv in both_commands(tmp_path, "--since", when):
        assert "is a number, not a date" in bad_query(monkeypatch, capsys, *argv)
    with pytest.raises(ValidationError, match="is a number"):
        LogQuery(drive_until=int(float(when)))
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize(("option", "when"), [("--since", "9999-12-31T23:59:59-01:00"),
                                              ("--until", "0001-01-01T00:00:00+01:00"),
                                              ("--drive-until", "0001-01-01T00:30:00+01:00")])
def test_a_time_out_of_range_in_utc_is_a_bad_query_not_an_overflow(home, tmp_path, monkeypatch, capsys, option, when):
    # before: "fleetloop: OverflowError: date value out of range", exit 1
    for argv in both_commands(tmp_path, option, when):
        assert "out of range in UTC" in bad_query(monkeypatch, capsys, *argv)


@pytest.mark.parametrize("twice", [["--since", "2025-03-04", "--since", "2025-03-05"],
                                   ["--until", "2025-03-05", "--until", "2025-03-06"],
                                   ["--drive-since", "2025-03-04", "--drive-since", "2025-03-05"],
                                   ["--vehicle", "7", "--vehicle", "9"]])
def test_an_option_given_twice_is_refused_not_the_last_one_kept(home, tmp_path, monkeypatch, capsys, twice):
    # before: the last one was the query, silently (--vehicle 7 --vehicle 9 listed vehicle 9's logs)
    for argv in both_commands(tmp_path, *twice):
        error = bad_query(monkeypatch, capsys, *argv)
        assert "given 2 times" in error and twice[1] in error and twice[3] in error
    assert not (tmp_path / "x.csv").exists()


def test_vehicle_and_vehicle_tags_are_anded_as_documented(home, tmp_path, monkeypatch, capsys):
    # before: --vehicle 9 --tag vehicle=7 listed the logs of both vehicles (an OR)
    for argv in both_commands(tmp_path, "--vehicle", "9", "--tag", "vehicle=7"):
        assert "cannot both hold" in bad_query(monkeypatch, capsys, *argv)
    assert listed(monkeypatch, capsys, "--vehicle", "7", "--tag", "vehicle=7", "--tag", "vehicle=9") == VEHICLE_7


def test_tag_values_and_vehicles_match_ignoring_case_and_spaces(home, monkeypatch, capsys):
    # before: each of these matched nothing, exit 0 ("0 logs match"), though the logs are rainy / vehicle 7
    assert listed(monkeypatch, capsys, "--tag", "weather=Rain") == RAINY
    assert listed(monkeypatch, capsys, "--tag", " Weather = RAIN ") == RAINY
    assert listed(monkeypatch, capsys, "--vehicle", " 7") == VEHICLE_7
    assert listed(monkeypatch, capsys, "--tag", "weather=rain", "--tag", "VEHICLE=9") == ["tue-9-rain"]
    assert LogQuery(tags=[" Weather = rain"]).tags == ["weather=rain"]
    assert "at least 1 character" in bad_query(monkeypatch, capsys, "logs", "list", "--vehicle", "  ")


@pytest.mark.parametrize("tag", ["weather=rain=fog", "weather==rain"])
def test_a_tag_with_two_equals_signs_is_a_bad_query(home, tmp_path, monkeypatch, capsys, tag):
    # before: read as weather with the value "rain=fog": nothing matched, exit 0
    for argv in both_commands(tmp_path, "--tag", tag):
        assert "must look like 'weather=rain'" in bad_query(monkeypatch, capsys, *argv)


def test_an_empty_window_names_both_ends_and_what_a_date_alone_means(home, tmp_path, monkeypatch, capsys):
    # before: "until must be after since": with two dates of the same day, which is not obvious
    for argv in both_commands(tmp_path, "--since", "2025-03-04", "--until", "2025-03-04"):
        error = bad_query(monkeypatch, capsys, *argv)
        assert "until must be after since" in error and "2025-03-04 00:00:00+00:00" in error and "midnight" in error
    error = bad_query(monkeypatch, capsys, "logs", "list", "--drive-since", "2025-03-05T00:00:00Z",
                      "--drive-until", "2025-03-05T00:30:00+01:00")
    assert "drive_until must be after drive_since" in error and "2025-03-04 23:30:00+00:00" in error


def test_the_help_says_what_a_date_alone_and_a_zone_mean(monkeypatch, capsys):
    # before: "Only logs that arrived before this time." (is --until 2026-11-24 the 24th or not?)
    for argv in (["logs", "list", "--help"], ["mine", "rank", "--help"]):
        monkeypatch.setenv("COLUMNS", "400")
        code, out, _ = run_cli(monkeypatch, capsys, *argv)
        assert code == 0
        text = " ".join(out.split())
        assert "--until 2026-11-24 leaves out the 24th" in text, text
        assert "UTC unless it names a zone" in text and "ignoring case" in text


@pytest.mark.parametrize("log_id", ["", "../x", "a b"])
def test_a_log_id_that_is_no_log_id_is_a_bad_query_not_a_missing_log(home, tmp_path, monkeypatch, capsys, log_id):
    # before: `logs not in the store: ['']`, exit 1, as if a stored log had gone
    for argv in both_commands(tmp_path, "--log", "mon-7-dry", "--log", log_id):
        assert f"invalid log_id {log_id!r}" in bad_query(monkeypatch, capsys, *argv)
    assert not (tmp_path / "x.csv").exists()
