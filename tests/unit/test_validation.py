"""Validation with Great Expectations: good batches pass, a bad log is quarantined with a report
that names the expectation and the rows while the others go on, severities, suites on file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fleetloop.ingest.importers import LogFormatError, load_logs, load_logs_isolated
from fleetloop.ingest.importers.parquet import write_parquet_log
from fleetloop.ingest.suites import TABLES, load_suite_dict
from fleetloop.ingest.suites.build import stale_suites, validated_columns
from fleetloop.ingest.validation import LogReport, quarantine, validate_labels, validate_logs
from fleetloop.schema import LABELS, STREAMS, DriveLogs
from tests.factory_logs import make_logs, replace_values

LOGS = ["log-a", "log-b", "log-c"]


@pytest.fixture(scope="module")
def good() -> DriveLogs:
    return make_logs(LOGS)


def _only_failure(report: LogReport):
    assert len(report.critical) == 1, [f.description for f in report.critical]
    return report.critical[0]


def test_suites_on_file_are_up_to_date() -> None:
    assert stale_suites() == [], "run: python -m fleetloop.ingest.suites.build"
    for table in TABLES:
        suite = load_suite_dict(table)
        assert suite["name"] == table
        columns = next(e for e in suite["expectations"] if e["type"] == "expect_table_columns_to_match_set")
        assert columns["kwargs"]["column_set"] == validated_columns(table)
        for e in suite["expectations"]:
            assert e["severity"] in ("critical", "warning") and e["description"]
            if e["severity"] == "warning":
                assert e["meta"]["flag"]
    # labels are always strict
    assert {e["severity"] for e in load_suite_dict("labels")["expectations"]} == {"critical"}


def test_good_batch_passes(good: DriveLogs) -> None:
    result = validate_logs(good)
    assert result.ok and result.quarantined == {} and result.warnings == {}
    assert result.good is good
    assert result.flagged_rows().num_rows == 0
    assert result.rows == {name: t.num_rows for name, t in good.tables().items()}


@pytest.mark.parametrize(
    ("table", "column", "rows", "value", "expectation", "failing_column", "sample"),
    [
        ("lidar_detections", "x", [3, 7], float("nan"), "expect_column_values_to_be_null", "_missing", "x"),
        ("tracks", "score", [5], float("nan"), "expect_column_values_to_be_null", "_missing", "score"),
        ("lidar_detections", "z", [2], float("inf"), "expect_column_values_to_be_between", "z", "inf"),
        ("camera_detections", "score", [4], 1.5, "expect_column_values_to_be_between", "score", 1.5),
        ("lidar_detections", "cls", [6], "bus", "expect_column_values_to_be_in_set", "cls", "bus"),
        ("tracks", "cls", [1], None, "expect_column_values_to_be_null", "_missing", "cls"),
        ("tracks", "state", [0], "lost", "expect_column_values_to_be_in_set", "state", "lost"),
        ("frames", "timestamp_ns", [9], 1_700_000_000_000_000_000, "expect_column_values_to_be_between", "_dt_ns", None),
        ("camera_detections", "frame", [11], 999, "expect_column_values_to_be_in_set", "_frame_known", False),
        ("calibration", "image_width", [0], 0, "expect_column_values_to_be_between", "image_width", 0),
    ],
)
def test_one_bad_log_is_quarantined_the_others_pass(
    good, table, column, rows, value, expectation, failing_column, sample
) -> None:
    bad = replace_values(good, table, column, "log-b", rows, value)
    result = validate_logs(bad)
    assert list(result.quarantined) == ["log-b"]
    assert result.good.log_ids == ["log-a", "log-c"]
    for name in STREAMS:  # the good logs come through untouched
        assert result.good.tables()[name].equals(good.select(["log-a", "log-c"]).tables()[name])
    failure = _only_failure(result.quarantined["log-b"])
    assert (failure.table, failure.expectation, failure.columns[0]) == (table, expectation, failing_column)
    assert failure.severity == "critical"
    assert failure.rows == rows and failure.unexpected_count == len(rows)
    frames = getattr(bad, table).filter(pc.equal(getattr(bad, table)["log_id"], "log-b"))
    if "frame" in frames.column_names:
        assert failure.frames == sorted({frames["frame"][r].as_py() for r in rows})
    if sample is not None:
        assert failure.samples[0][failing_column] == sample or failure.samples[0].get(column) == sample


def test_non_monotonic_timestamps_name_the_frame(good: DriveLogs) -> None:
    t0 = good.frames["timestamp_ns"][0].as_py()
    bad = replace_values(good, "frames", "timestamp_ns", "log-c", [12], t0)  # frame 12 jumps back
    report = validate_logs(bad).quarantined["log-c"]
    failure = _only_failure(report)
    assert failure.columns == ["_dt_ns"] and failure.frames == [12] and failure.rows == [12]
    assert failure.samples[0]["timestamp_ns"] == t0 and failure.samples[0]["_dt_ns"] < 0
    assert "strictly increase" in failure.description


def test_duplicate_frames_and_det_ids(good: DriveLogs) -> None:
    bad = replace_values(good, "lidar_detections", "det_id", "log-a", [1], 0)  # frame 0 has det 0 twice
    failure = _only_failure(validate_logs(bad).quarantined["log-a"])
    assert failure.expectation == "expect_compound_columns_to_be_unique" and failure.rows == [0, 1]


def test_missing_calibration_quarantines_the_log(good: DriveLogs) -> None:
    cal = good.calibration.filter(pc.not_equal(good.calibration["log_id"], "log-a"))
    result = validate_logs(DriveLogs(**{**good.tables(), "calibration": cal}))
    assert list(result.quarantined) == ["log-a"]
    failure = _only_failure(result.quarantined["log-a"])
    assert failure.columns == ["_calibrated"] and failure.unexpected_count == 20 and failure.frames == list(range(20))


@pytest.mark.parametrize(
    ("column", "index", "value", "failing_column"),
    [("P", 4, float("nan"), "_P_finite"), ("P", 0, -721.5, "_fx"), ("lidar_to_cam", 0, 3.0, "_rot_err")],
)
def test_bad_calibration_values(good: DriveLogs, column, index, value, failing_column) -> None:
    cal = good.calibration.to_pylist()
    cal[2][column][index] = value
    bad = DriveLogs(**{**good.tables(), "calibration": pa.Table.from_pylist(cal, schema=STREAMS["calibration"])})
    result = validate_logs(bad)
    assert list(result.quarantined) == ["log-c"]
    failure = _only_failure(result.quarantined["log-c"])
    assert failure.columns == [failing_column] and failure.rows == [0]
    shown = failure.samples[0][column]
    assert len(shown) == 12 and (shown[index] == value or (shown[index] == "NaN" and math.isnan(value)))


def test_wrong_schema_is_critical_for_every_log_of_the_table(good: DriveLogs) -> None:
    lidar = good.lidar_detections
    lidar = lidar.set_column(lidar.schema.get_field_index("x"), "x", lidar["x"].cast(pa.float64()))
    result = validate_logs(DriveLogs(**{**good.tables(), "lidar_detections": lidar}))
    assert sorted(result.quarantined) == LOGS and result.good.num_frames == 0
    failure = _only_failure(result.quarantined["log-a"])
    assert failure.expectation == "arrow_schema" and "column 'x' is double, expected float" in failure.detail


def test_invalid_boxes_are_warnings_and_flagged(good: DriveLogs) -> None:
    x1 = good.tracks.filter(pc.equal(good.tracks["log_id"], "log-a"))["x1"][6].as_py()
    bad = replace_values(good, "tracks", "x2", "log-a", [6], x1 - 3)
    bad = replace_values(bad, "lidar_detections", "h", "log-c", [0, 1], 0.0)
    result = validate_logs(bad)
    assert result.quarantined == {} and sorted(result.good.log_ids) == LOGS
    assert sorted(result.warnings) == ["log-a", "log-c"]
    warning = result.warnings["log-a"].warnings[0]
    assert (warning.flag, warning.expectation, warning.rows) == ("invalid_box", "expect_column_pair_values_a_to_be_greater_than_b", [6])
    flagged = result.flagged_rows(flag="invalid_box").to_pylist()
    assert {(r["log_id"], r["table"], r["row"], r["frame"]) for r in flagged} == {
        ("log-a", "tracks", 6, 3), ("log-c", "lidar_detections", 0, 0), ("log-c", "lidar_detections", 1, 0)
    }


def test_labels_are_strict() -> None:
    row = {"log_id": "log-a", "frame": 3, "cls": "car", "x1": 10.0, "y1": 20.0, "x2": 50.0, "y2": 60.0,
           "campaign": "c1", "task_id": 7, "annotation_id": 70, "annotator": None,
           "updated_at": pa.scalar(1_700_000_000_000_000, pa.timestamp("us", tz="UTC")).as_py(), "revision": 1}
    labels = pa.Table.from_pylist([row, {**row, "frame": 4, "x2": 5.0}, {**row, "frame": 5, "cls": "tram"}], schema=LABELS)
    reports = validate_labels(labels)
    assert list(reports) == ["log-a"] and reports["log-a"].quarantined
    found = {(f.expectation, tuple(f.rows)) for f in reports["log-a"].critical}
    assert found == {("expect_column_pair_values_a_to_be_greater_than_b", (1,)), ("expect_column_values_to_be_in_set", (2,))}
    assert validate_labels(labels.slice(0, 1)) == {}


def test_quarantine_report_files(good: DriveLogs, tmp_path: Path) -> None:
    bad = replace_values(good, "lidar_detections", "x", "log-b", [3, 4, 5, 9], float("nan"))
    bad = replace_values(bad, "tracks", "x2", "log-b", [0], 0.0)
    report = validate_logs(bad).quarantined["log-b"]
    where = quarantine(tmp_path, report)
    assert where == str(tmp_path / "quarantine" / "log-b" / "report.md")
    md = Path(where).read_text()
    assert "# Quarantined log `log-b`" in md
    assert "`expect_column_values_to_be_null` on `_missing`" in md
    assert "failing rows: 4; rows 3-5, 9" in md and "frames: 1-2, 4" in md
    assert "## Warnings" in md and "invalid_box" in md
    data = json.loads((tmp_path / "quarantine" / "log-b" / "report.json").read_text())
    assert data["status"] == "quarantined" and data["critical"][0]["rows"] == [3, 4, 5, 9]
    assert data["critical"][0]["samples"][0] == {"row": 3, "frame": 1, "_missing": "x"}
    assert LogReport.model_validate(data) == report


def test_quarantine_into_a_store(good: DriveLogs, tmp_path: Path) -> None:
    storage = pytest.importorskip("fleetloop.store.objects")
    store = storage.LocalStore(tmp_path / "store")
    bad = replace_values(good, "frames", "weather", "log-a", [0], "sunny")  # a warning only
    bad = replace_values(bad, "camera_detections", "cls", "log-a", [2], "truck")
    report = validate_logs(bad).quarantined["log-a"]
    key = quarantine(store, report)
    assert key == "quarantine/log-a/report.md"
    assert "truck" in store.get_bytes(key).decode() and "unknown_tag" in store.get_bytes(key).decode()
    assert json.loads(store.get_bytes("quarantine/log-a/report.json"))["log_id"] == "log-a"


def test_unparseable_log_gets_a_report(tmp_path: Path) -> None:
    write_parquet_log(make_logs(["p", "q"]), tmp_path / "logs")
    path = tmp_path / "logs" / "q" / "frames.parquet"
    path.write_bytes(path.read_bytes()[:100])
    loaded = load_logs_isolated(tmp_path / "logs", "parquet")
    assert loaded.logs.log_ids == ["p"] and isinstance(loaded.errors["q"], LogFormatError)
    report = LogReport.from_format_error("q", loaded.errors["q"])
    md = Path(quarantine(tmp_path / "out", report)).read_text()
    assert "parse" in md and str(path) in md


def test_parquet_nan_is_quarantined_end_to_end(tmp_path: Path) -> None:
    logs = replace_values(make_logs(["p", "q"]), "camera_detections", "y2", "q", [8], float("nan"))
    write_parquet_log(logs, tmp_path)
    result = validate_logs(load_logs(tmp_path, "parquet"))
    assert result.good.log_ids == ["p"]
    failure = _only_failure(result.quarantined["q"])
    assert failure.rows == [8] and failure.samples[0]["_missing"] == "y2"


@pytest.mark.kitti
def test_real_kitti_slice_validates_with_the_known_ciwt_warning(kitti_root: Path) -> None:
    """The slice is real tracker output: it must pass, except CIWT's one box with x1 > x2, which
    is a warning (found here from the raw file, not hard-coded)."""
    inverted = []
    for path in sorted((kitti_root / "camera_trk" / "ciwt").glob("*.txt")):
        for line in path.read_text().splitlines():
            f = line.split()
            if f and f[2] in ("Car", "Pedestrian") and (float(f[8]) <= float(f[6]) or float(f[9]) <= float(f[7])):
                inverted.append((path.stem, int(f[0])))
    assert len(inverted) == 1  # the known quirk: sequence 0006
    logs = load_logs(kitti_root, "kitti-tracking")
    result = validate_logs(logs)
    assert result.quarantined == {} and sorted(result.good.log_ids) == sorted(logs.log_ids)
    assert list(result.warnings) == [inverted[0][0]]
    flagged = result.flagged_rows().to_pylist()
    assert [(r["log_id"], r["table"], r["frame"], r["flag"]) for r in flagged] == [(*inverted[0][:1], "tracks", inverted[0][1], "invalid_box")]
    row = flagged[0]["row"]
    box = logs.select([inverted[0][0]]).tracks.slice(row, 1).to_pylist()[0]
    assert box["x1"] > box["x2"]
    assert result.seconds < 30


def test_many_logs_one_run_per_table(good: DriveLogs) -> None:
    """A batch of 60 logs with three bad ones: exact attribution, nothing else quarantined."""
    many = make_logs([f"L{i:02d}" for i in range(60)], n_frames=10)
    bad = replace_values(many, "lidar_detections", "score", "L07", [1], -0.1)
    bad = replace_values(bad, "tracks", "track_id", "L33", [2, 5], -5)  # frames 1 and 2
    bad = replace_values(bad, "frames", "frame", "L59", [4], 3)  # duplicate frame index
    result = validate_logs(bad)
    assert sorted(result.quarantined) == ["L07", "L33", "L59"]
    assert len(result.good.log_ids) == 57
    assert _only_failure(result.quarantined["L33"]).rows == [2, 5]
    dup = {f.expectation for f in result.quarantined["L59"].critical}
    assert "expect_compound_columns_to_be_unique" in dup
    assert np.isin(["L07", "L33", "L59"], result.good.log_ids).sum() == 0


def _failed_rows(table: str, results: list) -> dict[int, list]:
    """Suite index of each failed expectation -> its failing rows as GX lists them (each row's
    ``_pos`` and the values of the columns the expectation names)."""
    suite = load_suite_dict(table)["expectations"]
    key = [(e["type"], json.dumps(e["kwargs"], sort_keys=True)) for e in suite]
    failed = {}
    for r in results:
        if not r.success:
            cfg = r.expectation_config
            kw = {k: v for k, v in dict(cfg.kwargs).items() if k not in ("result_format", "batch_id")}
            rows = (r.result or {}).get("unexpected_index_list") or []
            # values by repr: a NaN equals itself
            failed[key.index((cfg.type, json.dumps(kw, sort_keys=True)))] = sorted(
                [sorted((k, repr(v)) for k, v in d.items()) for d in rows])
    return failed


def _gx_failures(table: str, prepared: pa.Table, rows: bool = False) -> dict[int, list]:
    """The suite's expectations GX itself fails on the whole of ``prepared`` (every column, the
    whole suite, no screen), with their failing rows when ``rows``."""
    from fleetloop.ingest.validation import _COMPLETE, _for_gx, _runner

    fmt = _COMPLETE if rows else {"result_format": "BOOLEAN_ONLY"}
    res = _runner(table).run(batch_parameters={"dataframe": _for_gx(prepared)}, result_format=fmt)
    return _failed_rows(table, res.results)


def test_the_screen_agrees_with_gx_expectation_by_expectation(good: DriveLogs) -> None:
    """The vectorised screen (fleetloop.ingest.screen) clears exactly what GX passes: on the clean
    batch, with legal nulls, and under random corruption of every column of every table and of
    labels (nulls, NaN, out-of-range, duplicates, unknown values), expectation by expectation; and
    GX run as validation runs it (those expectations only, on the columns they name) lists the
    same failing rows, with the same values, as GX on every column."""
    from fleetloop.ingest.screen import screen
    from fleetloop.ingest.validation import _prepare, _run_suite

    rng = np.random.default_rng(3)
    tracks = good.tracks
    legal_null = tracks.set_column(tracks.schema.get_field_index("score"), "score",
                                   pa.array([None] * 3 + tracks["score"].to_pylist()[3:], pa.float32()))
    cases = [("clean", good, list(good.tables())), ("legal nulls", DriveLogs(**{**good.tables(), "tracks": legal_null}), ["tracks"])]
    pools: dict[str, list] = {"int": [-1, 0, 10**6, None], "float": [-1e5, -0.5, 0.0, 1.5, 1e5, float("nan"), None],
                              "str": ["bogus", "", "camera:", "lidar:x", None]}
    for name, t in good.tables().items():
        for f in t.schema:
            if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type):
                continue
            kind = "int" if pa.types.is_integer(f.type) else "float" if pa.types.is_floating(f.type) else "str"
            for _ in range(3):
                log_id = LOGS[int(rng.integers(len(LOGS)))]
                n = pc.sum(pc.equal(t["log_id"], log_id)).as_py()
                rows = [int(rng.integers(n))]
                pool = pools[kind] + t[f.name].to_pylist()[:5]  # other rows' values: duplicates
                value = pool[int(rng.integers(len(pool)))]
                if f.name == "log_id" and value is None:
                    continue
                try:
                    bad = replace_values(good, name, f.name, log_id, rows, value)
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                    continue
                # frames and calibration feed the other tables' derived columns
                cases.append((f"{name}.{f.name}={value!r}", bad, list(good.tables()) if name == "frames" else [name]))
    row = {"log_id": "log-a", "frame": 3, "cls": "car", "x1": 10.0, "y1": 20.0, "x2": 50.0, "y2": 60.0,
           "campaign": "c1", "task_id": 7, "annotation_id": 70, "annotator": None,
           "updated_at": pa.scalar(1_700_000_000_000_000, pa.timestamp("us", tz="UTC")).as_py(), "revision": 1}
    labels = pa.Table.from_pylist([{**row, "frame": i, "log_id": LOGS[i % 3], "annotation_id": i} for i in range(12)],
                                  schema=LABELS)
    label_cases = [("labels clean", labels)]
    for f in LABELS:
        kind = "int" if pa.types.is_integer(f.type) else "float" if pa.types.is_floating(f.type) else "str"
        if pa.types.is_timestamp(f.type):
            continue
        for _ in range(3):
            values = labels[f.name].to_pylist()
            pool = pools[kind] + values[:3]
            values[int(rng.integers(len(values)))] = pool[int(rng.integers(len(pool)))]
            try:
                bad_labels = labels.set_column(labels.schema.get_field_index(f.name), f, pa.array(values, f.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                continue
            label_cases.append((f"labels.{f.name}", bad_labels))
    runs = [(what, name, _prepare(name, logs.tables()[name], logs)) for what, logs, names in cases for name in names]
    runs += [(what, "labels", _prepare("labels", t, None)) for what, t in label_cases]
    disagreements, failing, patterns = [], 0, set()
    for what, name, prepared in runs:
        want = _gx_failures(name, prepared)
        got = set(screen(load_suite_dict(name), prepared))
        failing += bool(want)
        if got != set(want):
            disagreements.append((what, name, sorted(got), sorted(want)))
        # what validation runs: GX on the screen's expectations and only the columns they name
        # (once per table and set of failed expectations: the full-frame run is the slow part)
        elif want and (name, frozenset(want)) not in patterns:
            patterns.add((name, frozenset(want)))
            if _failed_rows(name, _run_suite(name, prepared)) != _gx_failures(name, prepared, rows=True):
                disagreements.append((what, name, "GX on the narrow frame reports other rows"))
    assert len(runs) > 100 and failing > 40 and len(patterns) > 20  # the corruptions do break expectations
    assert disagreements == []
