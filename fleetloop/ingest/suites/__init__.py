"""Great Expectations suites, one JSON file per table, kept in the repository.

The files are the source of truth at run time (:mod:`fleetloop.ingest.validation` loads them);
:mod:`fleetloop.ingest.suites.build` regenerates them from code (``python -m
fleetloop.ingest.suites.build``) and a test fails when they are stale.
"""

from __future__ import annotations

import json
from pathlib import Path

SUITES_DIR = Path(__file__).resolve().parent

#: The tables with a suite: the five drive-log streams and the labels coming back from labeling.
TABLES = ("frames", "lidar_detections", "camera_detections", "tracks", "calibration", "labels")


def suite_path(table: str) -> Path:
    return SUITES_DIR / f"{table}.json"


def load_suite_dict(table: str) -> dict:
    """The suite of ``table`` as stored (a GX 1.x ``ExpectationSuite`` JSON dict)."""
    if table not in TABLES:
        raise KeyError(f"no suite for table {table!r}; expected one of {TABLES}")
    return json.loads(suite_path(table).read_text())
