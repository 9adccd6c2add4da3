"""Regenerate the expectation suites (``<table>.json`` next to this file) from code.

    python -m fleetloop.ingest.suites.build           # write the files
    python -m fleetloop.ingest.suites.build --check   # exit 1 if the files are stale

Severity (GX's own ``severity`` field) decides what a failure does (see docs/schema.md,
"Validation"): ``critical`` quarantines the log, ``warning`` keeps it and the miner flags the
rows (``meta.flag``). Detector and tracker outputs may be wrong (that is what we mine for), so
an implausible box there is a warning; structure (nulls/NaN, ranges that only a broken writer
produces, keys, calibration, timestamps) is critical. Labels are always strict.

Columns starting with ``_`` are derived by :mod:`fleetloop.ingest.validation` before validation
(vectorised, in Arrow), because GX has no per-group or list-valued expectations:

- ``_pos``: the row's position in the batch table (the index column for failing rows);
- ``_missing``: the names of the row's fields that are missing: null where the schema
  requires a value, or NaN anywhere (null where none is required, e.g. a track's score, is
  fine). Null for a complete row. One expectation instead of one not-null check per column
  (each GX expectation costs a pass over the batch), and the report still names the fields;
- ``_dt_ns`` (frames): timestamp step to the previous frame of the same log in frame order
  (null for a log's first frame);
- ``_calibrated`` (frames): the frame's log has a calibration row;
- ``_frame_known`` (detections, tracks): (log_id, frame) is a row of the frames table;
- calibration: ``_P_len`` / ``_lidar_to_cam_len`` (list lengths, 0 when null),
  ``_P_finite`` / ``_lidar_to_cam_finite``, ``_fx`` / ``_fy`` (P[0, 0], P[1, 1]) and
  ``_rot_err`` (max |R Rᵀ - I| of the lidar->camera rotation).
"""

from __future__ import annotations

import json
import sys
from math import pi
from typing import Any

from fleetloop.ingest.suites import SUITES_DIR, TABLES, suite_path
from fleetloop.schema import CALIBRATION, CAMERA_DETECTIONS, CLASSES, FRAMES, LABELS, LIDAR_DETECTIONS, TRACKS

WEATHER = ["clear", "rain", "fog", "snow", "unknown"]
TIME_OF_DAY = ["day", "night", "dusk", "unknown"]
SENSORS = ["camera", "lidar"]
#: ``camera`` / ``lidar``, optionally ``:<stream name>`` (several trackers of one sensor, e.g. ``camera:ciwt``).
SENSOR_PATTERN = r"^(?:camera|lidar)(?::[A-Za-z0-9._-]{1,64})?$"
TRACK_STATES = ["confirmed", "tentative"]
PIXEL_LIMIT = 10_000.0  # |pixel coordinate| beyond this is a broken writer, not a bad detection
METRE_LIMIT = 1_000.0  # |x|, |y| of a lidar box
HEIGHT_LIMIT = 100.0  # |z| of a lidar box
SIZE_LIMIT = 100.0  # |l|, |w|, |h|
ROTATION_TOLERANCE = 0.01
IMAGE_SIZE_LIMIT = 20_000


def derived_columns(table: str) -> list[str]:
    """The ``_`` columns :mod:`fleetloop.ingest.validation` adds to ``table`` (the suites use them)."""
    return {
        "frames": ["_pos", "_missing", "_dt_ns", "_calibrated"],
        "lidar_detections": ["_pos", "_missing", "_frame_known"],
        "camera_detections": ["_pos", "_missing", "_frame_known"],
        "tracks": ["_pos", "_missing", "_frame_known"],
        "calibration": ["_pos", "_missing", "_P_len", "_lidar_to_cam_len", "_P_finite", "_lidar_to_cam_finite", "_fx", "_fy",
                        "_rot_err"],
        "labels": ["_pos", "_missing"],
    }[table]


def validated_columns(table: str) -> list[str]:
    """The columns of the frame GX sees: the schema's scalar columns plus the derived ones."""
    schema = {"frames": FRAMES, "lidar_detections": LIDAR_DETECTIONS, "camera_detections": CAMERA_DETECTIONS,
              "tracks": TRACKS, "calibration": CALIBRATION, "labels": LABELS}[table]
    scalar = [f.name for f in schema if f.name not in ("P", "lidar_to_cam")]
    return scalar + derived_columns(table)


def _expectations(table: str) -> list:
    import great_expectations.expectations as gxe

    def crit(cls, description: str, **kw):
        return cls(severity="critical", description=description, **kw)

    def warn(cls, description: str, flag: str, **kw):
        return cls(severity="warning", description=description, meta={"flag": flag}, **kw)

    def complete():
        return crit(gxe.ExpectColumnValuesToBeNull,
                    "every required field is present and no number is NaN (_missing names the fields that are not)",
                    column="_missing")

    def between(col, lo, hi, description, *, strict_min=False):
        kw = {"column": col}
        if lo is not None:
            kw["min_value"] = lo
        if hi is not None:
            kw["max_value"] = hi
        if strict_min:
            kw["strict_min"] = True
        return crit(gxe.ExpectColumnValuesToBeBetween, description, **kw)

    def columns():
        return crit(gxe.ExpectTableColumnsToMatchSet, f"the {table} table has exactly the schema's columns",
                    column_set=validated_columns(table), exact_match=True)

    def taxonomy():
        return crit(gxe.ExpectColumnValuesToBeInSet, "class is in fleetloop's taxonomy", column="cls",
                    value_set=list(CLASSES))

    def frame_known():
        return crit(gxe.ExpectColumnValuesToBeInSet, "the row's (log_id, frame) is a frame of the frames table (so frame >= 0)",
                    column="_frame_known", value_set=[True])

    def pixels(strict: bool):
        out = [between(c, -PIXEL_LIMIT, PIXEL_LIMIT, f"{c} is a finite pixel coordinate within ±{PIXEL_LIMIT:g}")
               for c in ("x1", "y1", "x2", "y2")]
        for a, b, what in (("x2", "x1", "width"), ("y2", "y1", "height")):
            # "neither": rows with a missing value are compared too (NaN fails), and GX skips a
            # full copy of the batch it makes to drop them
            kw = dict(column_A=a, column_B=b, or_equal=False, ignore_row_if="neither")
            d = f"box has a positive {what} ({a} > {b})"
            out.append(crit(gxe.ExpectColumnPairValuesAToBeGreaterThanB, d, **kw) if strict
                       else warn(gxe.ExpectColumnPairValuesAToBeGreaterThanB, d, "invalid_box", **kw))
        return out

    def score(nullable: bool):
        return [between("score", 0, 1, "score is a confidence in [0, 1]" + (" (or null: none given)" if nullable else ""))]

    if table == "frames":
        return [
            columns(),
            complete(),
            between("frame", 0, None, "frame index is not negative"),
            crit(gxe.ExpectCompoundColumnsToBeUnique, "frame index is unique within its log", column_list=["log_id", "frame"], ignore_row_if="never"),
            between("timestamp_ns", 0, None, "timestamp is UTC nanoseconds since the epoch (not negative)"),
            between("_dt_ns", 0, None, "timestamps strictly increase with the frame index within a log", strict_min=True),
            crit(gxe.ExpectColumnValuesToBeInSet, "the frame's log has a calibration row", column="_calibrated", value_set=[True]),
            warn(gxe.ExpectColumnValuesToBeInSet, "weather tag is one of the known values (or null)", "unknown_tag",
                 column="weather", value_set=WEATHER),
            warn(gxe.ExpectColumnValuesToBeInSet, "time-of-day tag is one of the known values (or null)", "unknown_tag",
                 column="time_of_day", value_set=TIME_OF_DAY),
        ]
    if table == "lidar_detections":
        return [
            columns(),
            complete(),
            between("det_id", 0, None, "det_id is not negative"),
            crit(gxe.ExpectCompoundColumnsToBeUnique, "det_id is unique within its frame", column_list=["log_id", "frame", "det_id"], ignore_row_if="never"),
            frame_known(),
            taxonomy(),
            *score(False),
            *[between(c, -METRE_LIMIT, METRE_LIMIT, f"{c} is a finite position within ±{METRE_LIMIT:g} m") for c in ("x", "y")],
            between("z", -HEIGHT_LIMIT, HEIGHT_LIMIT, f"z is a finite height within ±{HEIGHT_LIMIT:g} m"),
            between("yaw", -2 * pi, 2 * pi, "yaw is a finite angle in [-2π, 2π] radians"),
            *[between(c, -SIZE_LIMIT, SIZE_LIMIT, f"{c} is a finite size within ±{SIZE_LIMIT:g} m") for c in ("l", "w", "h")],
            *[warn(gxe.ExpectColumnValuesToBeBetween, f"box has a positive {c} ({c} > 0)", "invalid_box",
                   column=c, min_value=0, strict_min=True) for c in ("l", "w", "h")],
        ]
    if table == "camera_detections":
        return [
            columns(),
            complete(),
            between("det_id", 0, None, "det_id is not negative"),
            crit(gxe.ExpectCompoundColumnsToBeUnique, "det_id is unique within its frame", column_list=["log_id", "frame", "det_id"], ignore_row_if="never"),
            frame_known(),
            taxonomy(),
            *score(False),
            *pixels(strict=False),
        ]
    if table == "tracks":
        return [
            columns(),
            complete(),
            between("track_id", 0, None, "track_id is not negative"),
            crit(gxe.ExpectCompoundColumnsToBeUnique, "a track appears at most once per frame",
                 column_list=["log_id", "frame", "sensor", "track_id"], ignore_row_if="never"),
            frame_known(),
            taxonomy(),
            crit(gxe.ExpectColumnValuesToMatchRegex, "sensor is camera or lidar, optionally :<stream>", column="sensor",
                 regex=SENSOR_PATTERN),
            crit(gxe.ExpectColumnValuesToBeInSet, "state is confirmed or tentative", column="state", value_set=TRACK_STATES),
            *score(True),
            *pixels(strict=False),
        ]
    if table == "calibration":
        return [
            columns(),
            complete(),
            crit(gxe.ExpectColumnValuesToBeUnique, "one calibration row per log", column="log_id"),
            crit(gxe.ExpectColumnValuesToBeInSet, "P holds 12 values (3x4, row-major)", column="_P_len", value_set=[12]),
            crit(gxe.ExpectColumnValuesToBeInSet, "lidar_to_cam holds 12 values (3x4, row-major)",
                 column="_lidar_to_cam_len", value_set=[12]),
            crit(gxe.ExpectColumnValuesToBeInSet, "every value of P is finite", column="_P_finite", value_set=[True]),
            crit(gxe.ExpectColumnValuesToBeInSet, "every value of lidar_to_cam is finite",
                 column="_lidar_to_cam_finite", value_set=[True]),
            between("_fx", 0, None, "P's focal length fx = P[0, 0] is positive", strict_min=True),
            between("_fy", 0, None, "P's focal length fy = P[1, 1] is positive", strict_min=True),
            between("_rot_err", 0, ROTATION_TOLERANCE,
                    f"lidar_to_cam's 3x3 part is a rotation (max |R Rᵀ - I| ≤ {ROTATION_TOLERANCE})"),
            between("image_width", 1, IMAGE_SIZE_LIMIT, "image width is a positive number of pixels"),
            between("image_height", 1, IMAGE_SIZE_LIMIT, "image height is a positive number of pixels"),
        ]
    if table == "labels":
        return [
            columns(),
            complete(),
            between("frame", 0, None, "frame index is not negative"),
            taxonomy(),
            *pixels(strict=True),
            *[between(c, 0, None, f"{c} is not negative") for c in ("task_id", "annotation_id", "revision")],
        ]
    raise KeyError(table)


def build_suite_dict(table: str) -> dict:
    """The JSON dict of ``table``'s suite, as it is stored."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=table, expectations=_expectations(table))
    d: dict[str, Any] = suite.to_json_dict()  # its expectations: a list of JSON objects
    d.pop("id", None)
    for e in d["expectations"]:
        e.pop("id", None)
    # no GX version stamp: a patch release would make every file "stale"
    d["meta"] = {"generated_by": "fleetloop/ingest/suites/build.py", "docs": "docs/schema.md#validation"}
    return d


def render(d: dict) -> str:
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def stale_suites() -> list[str]:
    """Tables whose stored suite differs from what the code builds."""
    stale = []
    for table in TABLES:
        path = suite_path(table)
        if not path.exists() or path.read_text() != render(build_suite_dict(table)):
            stale.append(table)
    return stale


def write_suites() -> list[str]:
    for table in TABLES:
        suite_path(table).write_text(render(build_suite_dict(table)))
    return list(TABLES)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--check" in argv:
        stale = stale_suites()
        if stale:
            print(f"stale suites in {SUITES_DIR}: {stale}; run python -m fleetloop.ingest.suites.build")
            return 1
        print("suites up to date")
        return 0
    print("wrote", ", ".join(f"{t}.json" for t in write_suites()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
