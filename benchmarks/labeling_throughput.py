"""Labeling throughput against a real, local Label Studio server.

Measures, on the KITTI slice (../shared/data/kitti-tracking):

* tasks pushed per second: selection -> rendered task image -> batched import with predictions
  (end to end), and the same with one import request per task, for comparison;
* annotations per second of the simulated team (one API call per annotation, like the UI);
* annotations synced per second: paging annotated tasks by id, converting, validating and
  writing label shards (the tasks for this part are imported with their annotations in bulk);
* a second, no-op sync (everything already delivered).

Usage::

    .venv/bin/python benchmarks/labeling_throughput.py [--frames 1000] [--json]
    .venv/bin/python benchmarks/labeling_throughput.py --url http://127.0.0.1:8080 --token <token>

Without --url it starts a throwaway server (fresh data dir in a temp dir) from the Label Studio
venv of ``.fleetloop/`` (installed there on first use) and stops it at the end.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import KITTI

from fleetloop.label.client import LabelStudioClient
from fleetloop.label.convert import box_to_result
from fleetloop.label.push import push
from fleetloop.label.sync import sync
from fleetloop.local import label_studio as server
from fleetloop.sim.labeling_team import TeamConfig, _truth_index, simulate
from fleetloop.store.objects import LocalStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(logs, n: int) -> list[dict]:
    frames = logs.frames.select(["log_id", "frame"]).to_pylist()
    step = max(1, len(frames) // n)
    return [
        {"log_id": f["log_id"], "frame": f["frame"], "score": 1.0 - i / n, "reasons": "lidar_only:car;uncertain"}
        for i, f in enumerate(frames[::step][:n])
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000, help="frames pushed (and annotations synced)")
    ap.add_argument("--single", type=int, default=100, help="frames pushed with one request per task")
    ap.add_argument("--simulated", type=int, default=100, help="tasks answered by the simulated team")
    ap.add_argument("--page-size", type=int, default=100, help="tasks per page when syncing (label sync --page-size)")
    ap.add_argument("--url")
    ap.add_argument("--token")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not (KITTI / "calib").is_dir():
        sys.exit(f"KITTI slice not found at {KITTI} (set FLEETLOOP_KITTI_ROOT)")

    from fleetloop.ingest.importers import load_logs
    from fleetloop.ingest.importers.kitti import read_kitti_truth

    logs = load_logs(KITTI, format="kitti-tracking")
    truth = read_kitti_truth(KITTI)
    tmp = Path(tempfile.mkdtemp(prefix="fleetloop-bench-"))
    home = tmp / "home"
    started = None
    if args.url:
        url, token = args.url, args.token
    else:
        venv = server.install(REPO / ".fleetloop")
        t0 = time.perf_counter()
        started = server.start(home, port=_free_port(), venv=venv, install_if_missing=False)
        url, token = started.url, started.token
        print(f"started Label Studio at {url} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    tag = str(int(time.time()))
    out: dict[str, float | int | str] = {"frames": args.frames}
    try:
        with LabelStudioClient(url, token) as client:
            # 1. push, batched
            rows = _rows(logs, args.frames)
            r = push(rows, logs, f"bench-push-{tag}", client=client, home=home, document_root=home, batch_size=250)
            assert r.created == len(rows) and not r.problems, r
            out["push_tasks"] = r.created
            out["push_requests"] = r.requests
            out["push_seconds"] = r.seconds
            out["push_tasks_per_s"] = round(r.created / r.seconds, 1)
            out["push_build_seconds"] = r.build_seconds
            out["push_import_seconds"] = r.import_seconds
            out["import_tasks_per_s"] = round(r.created / r.import_seconds, 1)
            r2 = push(rows, logs, f"bench-push-{tag}", client=client, home=home, document_root=home)
            out["repush_noop_seconds"] = r2.seconds
            # 2. push, one request per task (what batching avoids)
            single = rows[: args.single]
            r = push(single, logs, f"bench-single-{tag}", client=client, home=home, document_root=home, batch_size=1)
            out["single_request_tasks_per_s"] = round(r.created / r.seconds, 1)
            out["single_request_import_tasks_per_s"] = round(r.created / r.import_seconds, 1)
            # 3. the simulated team (one API call per annotation)
            s = simulate(f"bench-push-{tag}", truth, client=client, team=TeamConfig(noise_px=1.0), limit=args.simulated)
            out["simulated_annotations_per_s"] = round((s.answered + s.unusable) / s.seconds, 1)
            # 4. sync: a campaign whose tasks (the pushed ones' data) arrive with annotations, in bulk
            from fleetloop.label.campaigns import ensure_campaign, find_campaign

            campaign = f"bench-sync-{tag}"
            c = ensure_campaign(client, campaign)
            src = find_campaign(client, f"bench-push-{tag}")
            index = _truth_index(truth)
            annotated = []
            for page in client.iter_tasks(src.project_id, page_size=500, fields="task_only"):
                for t in page:
                    d = dict(t["data"])
                    if "fleetloop_key" in d:  # the task's key names its campaign (sync checks it)
                        d["fleetloop_key"] = campaign + d["fleetloop_key"][len(f"bench-push-{tag}"):]
                    result = [
                        box_to_result(cls, x1, y1, x2, y2, d["image_width"], d["image_height"])
                        for cls, x1, y1, x2, y2 in index.get((d["log_id"], d["frame"]), [])
                    ]
                    annotated.append({"data": d, "annotations": [{"result": result}]})
            for i in range(0, len(annotated), 250):
                client.request("POST", f"/api/projects/{c.project_id}/import", json=annotated[i : i + 250])
            store = LocalStore(tmp / "store")
            r = sync(campaign, client=client, store=store, home=home, page_size=args.page_size)
            assert r.delivered == len(rows) and not r.problems, r
            out["sync_annotations"] = r.delivered
            out["sync_label_rows"] = r.labels
            out["sync_seconds"] = r.seconds
            out["sync_annotations_per_s"] = round(r.delivered / r.seconds, 1)
            out["sync_label_rows_per_s"] = round(r.labels / r.seconds, 1)
            r = sync(campaign, client=client, store=store, home=home, page_size=args.page_size)
            assert r.delivered == 0
            out["resync_noop_seconds"] = r.seconds
    finally:
        if started is not None:
            server.stop(home)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"push   : {out['push_tasks']} tasks in {out['push_seconds']:.2f} s = "
        f"{out['push_tasks_per_s']} tasks/s end to end "
        f"({out['push_build_seconds']:.2f} s rendering images + predictions, {out['push_import_seconds']:.2f} s in "
        f"{out['push_requests']} import requests = {out['import_tasks_per_s']} tasks/s); "
        f"re-push no-op {out['repush_noop_seconds']:.2f} s"
    )
    print(
        f"         one request per task: {out['single_request_tasks_per_s']} tasks/s end to end, "
        f"{out['single_request_import_tasks_per_s']} tasks/s in import requests"
    )
    print(f"team   : {out['simulated_annotations_per_s']} annotations/s (simulated, one API call each)")
    print(
        f"sync   : {out['sync_annotations']} annotations ({out['sync_label_rows']} boxes) "
        f"in {out['sync_seconds']:.2f} s "
        f"= {out['sync_annotations_per_s']} annotations/s, {out['sync_label_rows_per_s']} boxes/s; "
        f"re-sync no-op {out['resync_noop_seconds']:.2f} s"
    )


if __name__ == "__main__":
    main()
