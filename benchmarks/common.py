"""Shared by the benchmarks: where the KITTI slice is, and how to make many logs of it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fleetloop.schema import DriveLogs

KITTI = Path(os.environ.get("FLEETLOOP_KITTI_ROOT", ROOT.parent / "shared" / "data" / "kitti-tracking"))


def require_kitti() -> Path:
    if not (KITTI / "calib").is_dir():
        sys.exit(f"KITTI slice not found at {KITTI}: benchmarks need ../shared/data/kitti-tracking "
                 "(or FLEETLOOP_KITTI_ROOT)")
    return KITTI


def replicate_logs(logs: DriveLogs, copies: int) -> DriveLogs:
    """``copies`` copies of every log, log ids suffixed ``-<copy>`` (no Python loop over rows)."""
    out = {}
    for name, t in logs.tables().items():
        n = t.num_rows
        big = t.take(pa.array(np.tile(np.arange(n), copies)))
        rep = pa.array([f"{c:05d}" for c in range(copies)]).take(pa.array(np.repeat(np.arange(copies), n)))
        log_id = pc.binary_join_element_wise(big["log_id"], rep, "-")
        out[name] = big.set_column(big.schema.get_field_index("log_id"), big.schema.field("log_id"), log_id)
    return DriveLogs(**out)
