"""Cost of one dataset growth step as the dataset grows from 1k to 100k labeled frames.

The dataset is grown with big batches to 1k, 10k and 100k labeled frames; at each size one fixed
batch (``--batch``, 500 frames by default) is grown and measured: wall time per step of
``fleetloop.dataset.grow`` (collect = read shards + labels suite + images, then dvc add, dvc push,
git commit/tag/push) and the bytes it moved: bytes added to the DVC remote (a local directory,
or S3 objects on an in-process moto server with ``--s3``) and to the bare git remote. The cost of
a step should follow the batch, not the dataset.

Synthetic fleet: logs of 1,000 frames with tiny PNG images (a few hundred distinct 16x12 PNG
files referenced by many frames), 1-3 boxes per frame, label shards written as ``fleetloop label
sync`` writes them (5,000 annotations per shard).

Usage::

    .venv/bin/python benchmarks/dataset_growth.py [--batch 500] [--sizes 1000,10000,100000] [--s3] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fleetloop.dataset.config import DatasetConfig
from fleetloop.dataset.growth import grow
from fleetloop.dataset.params import GrowParams
from fleetloop.ingest.validation import validate_labels
from fleetloop.schema import CALIBRATION, CLASSES, FRAMES, LABELS, STREAMS, DriveLogs
from fleetloop.store.logs import put_log
from fleetloop.store.objects import LocalStore

FRAMES_PER_LOG = 1000
ANNOTATIONS_PER_SHARD = 5000
T0 = datetime(2026, 1, 5, tzinfo=UTC)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


class Fleet:
    """Synthetic logs and label shards in a LocalStore."""

    def __init__(self, root: Path, images: int = 256) -> None:
        from PIL import Image

        self.store = LocalStore(root / "store")
        self.image_dir = root / "images"
        self.image_dir.mkdir(parents=True)
        rng = np.random.default_rng(0)
        self.images = []
        for i in range(images):
            path = self.image_dir / f"{i:04d}.png"
            Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(path)
            self.images.append(str(path))
        self.logs = 0
        self.next_frame = 0  # frames labeled so far (log = frame // FRAMES_PER_LOG)
        self.shards = 0
        self.aid = 0
        self.rng = np.random.default_rng(1)

    def _ensure_logs(self, upto_frame: int) -> None:
        while self.logs * FRAMES_PER_LOG < upto_frame:
            log_id = f"drive-{self.logs:05d}"
            n = FRAMES_PER_LOG
            frames = pa.Table.from_pydict({
                "log_id": [log_id] * n, "frame": pa.array(np.arange(n, dtype=np.int32)),
                "timestamp_ns": np.arange(n, dtype=np.int64) * 100_000_000,
                "image_uri": [self.images[(self.logs * n + i) % len(self.images)] for i in range(n)],
                "vehicle": ["veh-1"] * n, "weather": [("clear", "rain", "fog")[self.logs % 3]] * n,
                "time_of_day": [("day", "night")[self.logs % 2]] * n, "place": ["sim"] * n,
            }, schema=FRAMES)
            cal = pa.Table.from_pydict({"log_id": [log_id], "P": [[0.0] * 12], "lidar_to_cam": [[0.0] * 12],
                                        "image_width": [16], "image_height": [12]}, schema=CALIBRATION)
            tables = {name: s.empty_table() for name, s in STREAMS.items()}
            tables.update(frames=frames, calibration=cal)
            put_log(self.store, DriveLogs(**tables), source="benchmark")
            self.logs += 1

    def label(self, n_frames: int, campaign: str, t: datetime) -> None:
        """Deliver labels for the next ``n_frames`` frames (new frames: the dataset grows by n)."""
        start = self.next_frame
        self._ensure_logs(start + n_frames)
        for lo in range(start, start + n_frames, ANNOTATIONS_PER_SHARD):
            hi = min(lo + ANNOTATIONS_PER_SHARD, start + n_frames)
            g = np.arange(lo, hi)
            boxes = self.rng.integers(1, 4, len(g))
            rows_frame = np.repeat(g, boxes)
            k = len(rows_frame)
            x1 = self.rng.uniform(0, 10, k).astype(np.float32)
            y1 = self.rng.uniform(0, 6, k).astype(np.float32)
            aids = self.aid + 1 + (rows_frame - lo)
            rows = pa.table({
                "log_id": pa.array([f"drive-{f // FRAMES_PER_LOG:05d}" for f in rows_frame]),
                "frame": pa.array((rows_frame % FRAMES_PER_LOG).astype(np.int32)),
                "cls": pa.array(np.array(CLASSES, dtype=object)[self.rng.integers(0, len(CLASSES), k)].tolist()),
                "x1": x1, "y1": y1, "x2": x1 + 4, "y2": y1 + 4,
                "campaign": pa.array([campaign] * k), "task_id": aids, "annotation_id": aids,
                "annotator": pa.array(["bench"] * k), "updated_at": pa.array([t] * k, pa.timestamp("us", tz="UTC")),
                "revision": pa.array(np.ones(k, np.int32)),
            }).cast(LABELS)
            entries = [{"annotation_id": int(self.aid + 1 + i), "task_id": int(self.aid + 1 + i),
                        "updated_at": t.isoformat(), "revision": 1, "status": "labeled", "boxes": int(b),
                        "annotator": "bench", "log_id": f"drive-{f // FRAMES_PER_LOG:05d}",
                        "frame": int(f % FRAMES_PER_LOG)} for i, (f, b) in enumerate(zip(g, boxes, strict=True))]
            table = rows.replace_schema_metadata({b"fleetloop_annotations": json.dumps(entries).encode()})
            buf = io.BytesIO()
            pq.write_table(table, buf)
            self.shards += 1
            self.store.put_bytes(f"labels/{campaign}/sync-{self.shards:06d}.parquet", buf.getvalue())
            self.aid += len(g)
        self.next_frame += n_frames


def _remote_bytes(config: DatasetConfig, s3_client) -> int:
    if s3_client is None:
        return _dir_bytes(Path(config.dvc_remote_url))
    bucket, _, prefix = config.dvc_remote_url.removeprefix("s3://").partition("/")
    total = 0
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        total += sum(o["Size"] for o in page.get("Contents", []))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=500, help="frames in the measured growth step")
    ap.add_argument("--sizes", default="1000,10000,100000", help="dataset sizes (labeled frames) to measure at")
    ap.add_argument("--s3", action="store_true", help="DVC remote on S3 (an in-process moto server)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")

    with tempfile.TemporaryDirectory(prefix="fleetloop-growth-") as tmp:
        root = Path(tmp)
        os.environ["DVC_SITE_CACHE_DIR"] = str(root / "dvc-site-cache")
        server = s3_client = None
        if args.s3:
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

            for k, v in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                         "AWS_DEFAULT_REGION": "us-east-1"}.items():
                os.environ[k] = v
            for var in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
                (root / var).write_text("")
                os.environ[var] = str(root / var)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
            import boto3

            s3_client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            s3_client.create_bucket(Bucket="bench")
            config = DatasetConfig(repo_dir=root / "dataset", dvc_remote_url="s3://bench/dvc", s3_endpoint_url=endpoint,
                                   git_remote=str(root / "origin.git"))
        else:
            config = DatasetConfig(repo_dir=root / "dataset", dvc_remote_url=str(root / "dvc-remote"),
                                   git_remote=str(root / "origin.git"))
        fleet = Fleet(root)
        params = GrowParams()
        t = T0
        rows = []
        try:
            for size in sizes:
                fill = size - fleet.next_frame
                if fill > 0:
                    t += timedelta(days=1)
                    fleet.label(fill, f"fill-{size}", t)
                    t_fill = time.perf_counter()
                    r = grow(fleet.store, config, params, validate=validate_labels)
                    print(f"  grew to {r.frames:,} frames with one batch of {fill:,} in "
                          f"{time.perf_counter() - t_fill:.1f} s", file=sys.stderr)
                t += timedelta(days=1)
                fleet.label(args.batch, f"step-{size}", t)
                dvc0, git0 = _remote_bytes(config, s3_client), _dir_bytes(Path(config.git_remote))
                t_step = time.perf_counter()
                r = grow(fleet.store, config, params, validate=validate_labels)
                seconds = time.perf_counter() - t_step
                s = r.step_seconds
                rows.append({
                    "dataset_frames": size, "batch_frames": r.frames_added, "objects": r.objects_added,
                    "seconds": round(seconds, 2), "collect_s": s.get("collect", 0.0),
                    "dvc_add_s": s.get("added", 0.0), "dvc_push_s": s.get("pushed", 0.0),
                    "git_s": round(sum(s.get(k, 0.0) for k in ("staged", "committed", "indexed", "tagged",
                                                                 "published")), 3),
                    "dvc_bytes_pushed": _remote_bytes(config, s3_client) - dvc0,
                    "git_bytes_pushed": _dir_bytes(Path(config.git_remote)) - git0,
                    "version": r.version,
                })
                print(f"  measured at {size:,}: {rows[-1]}", file=sys.stderr)
        finally:
            if server is not None:
                server.stop()

    if args.json:
        print(json.dumps({"remote": "s3 (moto)" if args.s3 else "local directory", "rows": rows}, indent=2))
        return
    print(f"\nDVC remote: {'S3 (moto, in-process)' if args.s3 else 'local directory'}; "
          f"growth step of {args.batch} new frames")
    head = f"{'dataset frames':>15} {'step s':>7} {'collect':>8} {'dvc add':>8} {'dvc push':>9} {'git':>6} " \
           f"{'DVC bytes':>11} {'git bytes':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['dataset_frames']:>15,} {r['seconds']:>7.2f} {r['collect_s']:>8.2f} {r['dvc_add_s']:>8.2f} "
              f"{r['dvc_push_s']:>9.2f} {r['git_s']:>6.2f} {r['dvc_bytes_pushed']:>11,} {r['git_bytes_pushed']:>10,}")


if __name__ == "__main__":
    main()
