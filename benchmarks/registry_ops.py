"""Registry operations as the registry grows: register, promote, list, get, history.

Fills a fresh registry to 10, 100 and 1,000 versions (each version a new 32 KB weights file, a
config and full per-slice metrics) and at each size times every operation (median ms of
``--repeats`` runs) and counts its store requests. ``register`` and ``promote`` must not grow
with the number of versions; ``list`` reads one index page per 100 versions (it returns them
all), ``list --limit 20`` a constant two.

    .venv/bin/python benchmarks/registry_ops.py                       # local store, ~30 s
    .venv/bin/python benchmarks/registry_ops.py --store s3            # moto S3 server in-process
    .venv/bin/python benchmarks/registry_ops.py --sizes 10,100,1000 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fleetloop.registry import PromoteParams, Registry
from fleetloop.store.objects import LocalStore, S3Store, Store


class CountingStore(Store):
    """Delegates to ``inner`` and counts requests."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.location = inner.location
        self.requests = 0

    def _n(self) -> None:
        self.requests += 1

    def put_bytes(self, key: str, data: bytes) -> None:
        self._n()
        self.inner.put_bytes(key, data)

    def get_bytes(self, key: str) -> bytes:
        self._n()
        return self.inner.get_bytes(key)

    def put_file(self, key: str, path: Path) -> None:
        self._n()
        self.inner.put_file(key, path)

    def get_file(self, key: str, path: Path) -> Path:
        self._n()
        return self.inner.get_file(key, path)

    def exists(self, key: str) -> bool:
        self._n()
        return self.inner.exists(key)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> list[str]:
        self._n()
        return self.inner.list(prefix, start_after=start_after)

    def delete(self, key: str) -> None:
        self._n()
        self.inner.delete(key)

    def url_for(self, key: str, expires: int = 3600) -> str:
        return self.inner.url_for(key, expires)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._n()
        return self.inner.put_if_absent(key, data)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        self._n()
        return self.inner.get_versioned(key)

    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        self._n()
        return self.inner.put_if_match(key, data, etag)


def metrics(score: float) -> dict[str, Any]:
    slices = {f"{k}={v}": {"map50": score - 0.1, "support": 120, "frames": 40}
              for k, vs in (("weather", ("clear", "rain", "fog")), ("time_of_day", ("day", "night")),
                            ("attr", ("green", "orange"))) for v in vs}
    classes = ("car", "pedestrian", "cyclist", "traffic_cone")
    slices.update({f"class={c}": {"map50": score, "support": 200, "frames": 100} for c in classes})
    return {"primary": "map50", "overall": {"map50": score, "support": 812, "frames": 300},
            "per_class": {c: {"map50": score, "support": 200} for c in classes}, "slices": slices}


class Bench:
    def __init__(self, store: Store, work: Path) -> None:
        self.counting = CountingStore(store)
        self.reg = Registry(self.counting)
        self.work = work
        self.n = 0
        self.params = PromoteParams(min_improvement=0.0, slice_tolerance=0.03, floor=0.2)

    def register(self) -> int:
        self.n += 1
        d = self.work / "model"
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.pt").write_bytes(os.urandom(32 * 1024))
        (d / "config.json").write_text('{"arch": "tiny-centernet", "input": [96, 96]}')
        card = self.reg.register(d, metrics(0.3 + 0.0002 * self.n), dataset_version=self.n, params={"epochs": 12},
                                 trainer="bench", training_seconds=120.0, code_revision="bench")
        return card.version

    def timed(self, fn: Callable[[], Any], repeats: int) -> tuple[float, float, float]:
        """(median wall ms, median CPU ms of this process, store requests per call)."""
        wall, cpu = [], []
        before = self.counting.requests
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        return statistics.median(wall), statistics.median(cpu), (self.counting.requests - before) / repeats


def measure(b: Bench, size: int, repeats: int) -> dict[str, Any]:
    """Time every operation once the registry holds ``size - repeats`` versions (``register``
    brings it to ``size``)."""
    reg = b.reg
    row: dict[str, Any] = {"versions": size}
    row["register"] = b.timed(b.register, repeats)
    newest = iter(range(size - repeats + 1, size + 1))  # each better than the one before
    row["promote"] = b.timed(lambda: reg.promote(next(newest), b.params, who="bench"), repeats)
    row["promote (no-op)"] = b.timed(lambda: reg.promote(size, b.params, who="bench"), repeats)
    row["list (all)"] = b.timed(reg.list, repeats)
    row["list --limit 20"] = b.timed(lambda: reg.list(limit=20), repeats)
    row["get production"] = b.timed(lambda: reg.get("production"), repeats)
    row["history --limit 20"] = b.timed(lambda: reg.history(limit=20), repeats)
    assert len(reg.list()) == size and reg.get("production").version == size
    return row


def run(store: Store, sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        b = Bench(store, Path(tmp))
        fill_start = time.perf_counter()
        for size in sizes:
            while b.n < size - repeats:
                b.register()
            rows.append(measure(b, size, repeats) | {"fill_s": time.perf_counter() - fill_start})
    return rows


def print_table(rows: list[dict[str, Any]], backend: str) -> None:
    ops = [k for k in rows[0] if k not in ("versions", "fill_s")]
    sizes = [f"{r['versions']:,} versions" for r in rows]
    head = f"{'operation (' + backend + ')':<22}" + "".join(f"{s:>26}" for s in sizes)
    print(head)
    print(f"{'':<22}" + "".join(f"{'wall ms':>10}{'cpu ms':>8}{'req':>8}" for _ in rows))
    print("-" * len(head))
    for op in ops:
        print(f"{op:<22}" + "".join(f"{r[op][0]:>10.1f}{r[op][1]:>8.1f}{r[op][2]:>8.0f}" for r in rows))
    print(f"filled to {rows[-1]['versions']:,} versions in {rows[-1]['fill_s']:.1f} s "
          f"({rows[-1]['fill_s'] / rows[-1]['versions'] * 1000:.1f} ms per version incl. timed ops)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", choices=["local", "s3"], default="local")
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if args.store == "local":
        with tempfile.TemporaryDirectory() as tmp:
            print_table(run(LocalStore(Path(tmp) / "store"), sizes, args.repeats), "local")
        return
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null",
                 "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}.items():
        os.environ[k] = v
    import logging

    from moto.server import ThreadedMotoServer

    from fleetloop.settings import S3Settings

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's per-request log lines
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        s3 = S3Settings(bucket="bench", endpoint_url=f"http://127.0.0.1:{server.get_host_and_port()[1]}")
        store = S3Store.from_settings(s3)
        store.ensure_bucket()
        print_table(run(store, sizes, args.repeats), "moto S3")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
