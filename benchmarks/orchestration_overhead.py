"""Wall time of the ``mine`` flow through Prefect + Dask against the same functions called
directly, on >= 200,000 frames (the KITTI slice replicated into a local store).

    .venv/bin/python benchmarks/orchestration_overhead.py [--frames 200000] [--frames-per-shard 50000]

Both sides read the logs from a store, mine them by shard, rank, select and write the outputs;
each side has its own copy of the store so neither reuses the other's outputs. The flow runs
against a real Prefect API (Prefect's test harness: a server process on loopback).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import replicate_logs, require_kitti

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--frames-per-shard", type=int, default=50_000)
    ap.add_argument("--budget", type=int, default=500)
    args = ap.parse_args()

    from fleetloop.ingest.importers import load_logs
    from fleetloop.mine import run as mining
    from fleetloop.mine.params import MiningParams
    from fleetloop.settings import get_settings
    from fleetloop.store.logs import put_log
    from fleetloop.store.objects import LocalStore

    base = load_logs(require_kitti(), "kitti-tracking")
    copies = math.ceil(args.frames / base.num_frames)
    logs = replicate_logs(base, copies)
    tmp = Path(tempfile.mkdtemp(prefix="fleetloop-overhead-"))
    try:
        t0 = time.perf_counter()
        direct_root, flow_root = tmp / "direct", tmp / "flow"
        store = LocalStore(direct_root)
        for log_id in logs.log_ids:
            put_log(store, logs.select([log_id]), source="benchmark")
        shutil.copytree(direct_root, flow_root)
        print(f"{logs.num_frames:,} frames in {len(logs.log_ids)} logs stored in {time.perf_counter() - t0:.1f} s")

        params = MiningParams()
        # warm both paths once on a small store so neither pays one-off imports/JIT in the figure
        warm = LocalStore(tmp / "warm")
        put_log(warm, base.select(["0012"]), source="warm")
        mining.mine_direct(warm, params, 10)

        t0 = time.perf_counter()
        direct = mining.mine_direct(store, params, args.budget, frames_per_shard=args.frames_per_shard)
        t_direct = time.perf_counter() - t0

        from prefect.testing.utilities import prefect_test_harness

        os.environ["FLEETLOOP_STORAGE__LOCAL_ROOT"] = str(flow_root)
        os.environ["FLEETLOOP_HOME"] = str(tmp / "home")
        get_settings.cache_clear()
        with prefect_test_harness(server_startup_timeout=60):
            from fleetloop.flows.mine import mine

            t0 = time.perf_counter()
            summary = mine(budget=args.budget, params=params, frames_per_shard=args.frames_per_shard)
            t_flow = time.perf_counter() - t0
        assert summary.frames == direct.frames and summary.selected == direct.selected and not summary.reused
        shards = math.ceil(direct.frames / args.frames_per_shard)
        print(f"shards: ~{shards} of {args.frames_per_shard:,} frames; cores: {os.cpu_count()}")
        print(f"direct (plain functions): {t_direct:6.2f} s")
        print(f"flow (Prefect + Dask):    {t_flow:6.2f} s")
        print(f"ratio flow/direct:        {t_flow / t_direct:6.2f}  (target < 1.15)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
