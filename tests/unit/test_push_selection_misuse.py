"""What people hand to `fleetloop label push` as a selection: a CSV edited in a spreadsheet, two
selections concatenated, a CSV from another tool. Every input is either read right or refused
with one line naming the file and line (one JSON document with --json, exit 2) before Label
Studio is contacted; never a traceback, never a frame of another log, never an empty campaign."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fleetloop.label.push import SelectionError, read_selection
from tests.unit.test_labeling import unreachable_label_studio  # noqa: F401 (fixture unreachable_ls)

HEADER = "log_id,frame,score,reasons,rank,vehicle,sequence\n"
ROW = "0008,163,2.2,lidar_only:4,1,kitti,0008\n"


@pytest.fixture
def settings(unreachable_ls):
    """A local store and a Label Studio nobody listens on (every test must stop before it)."""
    return unreachable_ls


def _push_json(selection, *extra: str):
    from fleetloop.cli import app

    res = CliRunner().invoke(app, ["label", "push", str(selection), "--campaign", "week-23", "--json", *extra])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 2, res.output
    doc = json.loads(res.stdout)  # exactly one JSON document
    assert doc["ok"] is False
    assert "Label Studio" not in doc["error"]  # refused before any Label Studio call
    return doc["error"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ((HEADER + ROW.replace("kitti", "kitt\xe9")).encode("latin-1"), "line 2: not UTF-8 text (byte 0xe9)"),
        ((HEADER + ROW).encode("utf-16"), "line 1: not UTF-8 text"),
        (b"log_id,frame,score,reasons,log_id\n0008,163,2.2,x,0009\n", "columns ['log_id'] appear more than once"),
        (b"log_id,frame,score,reasons\n,163,2.2,x\n", "line 2: invalid log_id '': empty"),
        (b"log_id,frame,score,reasons\n0008,163,nan,x\n", "line 2: score nan is not a finite number"),
        (b"log_id,frame,score,reasons\n0008,163,inf,x\n", "line 2: score inf is not a finite number"),
        (b"log_id,frame,score,reasons\n0008,1_63,2.2,x\n", "line 2: frame '1_63' is not a whole number"),
        (HEADER.encode(), "no frames selected"),
        (b"log_id,frame,score,reasons,sequence\n0008,163,2.2,x,0009\n", "log_id '0008' and sequence '0009' differ"),
        (b"sequence,frame\n0008,163\n", "KITTI's `sequence` column? name it log_id"),
        ((HEADER + ROW + "frame,log_id,score,reasons,rank,vehicle,sequence\n163,0008,2.2,x,1,kitti,0008\n").encode(),
         "line 3: another header line, with other columns"),
        (HEADER.encode() + b"0008,163,2.2,x,1,kitti,0008\n9,7,1.0,x,2,kitti,9\n",
         "not in"),  # a log id a spreadsheet stripped of its zeros: not in the store (no traceback)
    ],
    ids=["latin1", "utf16", "duplicate-column", "empty-log-id", "nan-score", "inf-score", "underscore-frame",
         "header-only", "sequence-differs", "sequence-only", "other-header", "log-not-in-store"],
)
def test_a_bad_selection_is_one_line_before_label_studio(settings, tmp_path, content, message):
    sel = tmp_path / "sel.csv"
    sel.write_bytes(content)
    error = _push_json(sel)
    assert message in error
    if message == "not in":
        assert "'0008', '9'" in error and "did a spreadsheet turn '0001' into '1'?" in error
    from fleetloop.label import index
    from fleetloop.store.objects import get_store

    assert index.campaigns(get_store(settings)) == []


def test_a_directory_is_not_called_missing(settings, tmp_path):
    (tmp_path / "sel.csv").mkdir()
    assert "sel.csv is a directory, not a CSV file" in _push_json(tmp_path / "sel.csv")


def test_a_store_key_that_is_not_utf8_is_not_called_missing(settings):
    from fleetloop.label.api import selection_rows
    from fleetloop.store.objects import get_store

    store = get_store(settings)
    store.put_bytes("mining/r1/selected.csv", (HEADER + ROW.replace("kitti", "kitt\xe9")).encode("latin-1"))
    with pytest.raises(SelectionError, match=r"mining/r1/selected.csv, line 2: not UTF-8 text"):
        selection_rows("mining/r1/selected.csv", store)


def test_a_spreadsheets_csv_is_read_as_mined(tmp_path):
    """Excel's "CSV UTF-8": a byte-order mark, CRLF, every cell quoted, empty rows at the end,
    a log id with a trailing space."""
    sel = tmp_path / "sel.csv"
    sel.write_bytes(
        b'\xef\xbb\xbf"log_id","frame","score","reasons"\r\n"0008 ","163","2.2","lidar_only:4;uncertain:4"\r\n'
        b'"0012","4","",""\r\n,,,\r\n,,,\r\n'
    )
    rows = read_selection(sel)
    assert [(r["log_id"], r["frame"], r["score"], r["reasons"]) for r in rows] == [
        ("0008", 163, 2.2, "lidar_only:4;uncertain:4"), ("0012", 4, None, "")]


def test_two_concatenated_selections_are_read_as_one(tmp_path):
    """`cat a.csv b.csv`: the second header is not a frame; the line numbers stay the file's."""
    sel = tmp_path / "sel.csv"
    sel.write_text(HEADER + ROW + HEADER + "0012,4,1.0,x,1,kitti,0012\n" + "0012,five,1.0,x,2,kitti,0012\n")
    with pytest.raises(SelectionError, match="line 5: frame 'five' is not a whole number"):
        read_selection(sel)
    sel.write_text(HEADER + ROW + HEADER + "0012,4,1.0,x,1,kitti,0012\n")
    assert [(r["log_id"], r["frame"]) for r in read_selection(sel)] == [("0008", 163), ("0012", 4)]


def test_frames_are_plain_digits(tmp_path):
    sel = tmp_path / "sel.csv"
    sel.write_text("log_id,frame\n0008,\u0661\u0666\u0663\n")  # Arabic-Indic digits: int() reads 163
    with pytest.raises(SelectionError, match=r"line 2: frame .* is not a whole number"):
        read_selection(sel)


def test_a_damaged_stored_log_is_one_line_naming_it(settings, tmp_path):
    """A stored log whose stream was replaced behind the store's back (its hash no longer matches):
    before, `LogIntegrityError` escaped the push command as a traceback (exit 1, no JSON)."""
    from fleetloop.store.logs import put_log
    from fleetloop.store.objects import LocalStore, get_store
    from tests.factory_logs import make_log

    store = get_store(settings)
    put_log(store, make_log("drive-3", seed=3), source="s")
    other = LocalStore(tmp_path / "elsewhere")
    put_log(other, make_log("drive-3", seed=4), source="s")
    (key,) = [k for k in store.list("logs/drive-3/") if k.endswith("/tracks.parquet")]
    (foreign,) = [k for k in other.list("logs/drive-3/") if k.endswith("/tracks.parquet")]
    store.put_bytes(key, other.get_bytes(foreign))
    sel = tmp_path / "sel.csv"
    sel.write_text("log_id,frame,score,reasons\ndrive-3,4,1.0,x\n")
    error = _push_json(sel)
    assert "drive-3" in error and "\n" not in error, error
