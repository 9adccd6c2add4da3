"""A straightforward per-frame numpy/scipy implementation of the same checks (the reference the
vectorised miner's end-to-end CPU time is compared with).

It reads logs with the same importer, then loops over logs and frames: per frame it projects the
lidar boxes (numpy), builds IoU / distance matrices (numpy broadcasting), solves each assignment
with ``scipy.optimize.linear_sum_assignment``, walks the tracks per track id, combines flags per
object by noisy-OR in a dict, and finally ranks the frames. Same parameters and severities as
``fleetloop.mine`` (MiningParams); results agree closely but not bit for bit (see
``agreement`` in mining_speed.py).

    .venv/bin/python benchmarks/naive_mining.py ROOT [--format kitti-tracking] [--out ranked.csv]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleetloop.mine.params import MiningParams

SL = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
SW = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * 0.5
SH = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * 0.5


def project(det: np.ndarray, M: np.ndarray, W: float, H: float):
    """det (n, 7) -> boxes (n, 4), depth (n,), visible (n,)."""
    if len(det) == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0)
    x, y, z, l, w, h, yaw = det.T  # noqa: E741
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    dx, dy = l[:, None] * SL, w[:, None] * SW
    pts = np.stack([x[:, None] + c * dx - s * dy, y[:, None] + s * dx + c * dy, z[:, None] + h[:, None] * SH,
                    np.ones((len(det), 8))], axis=-1)
    uvw = pts @ M.T
    wz = np.maximum(uvw[..., 2], 0.1)
    u, v = uvw[..., 0] / wz, uvw[..., 1] / wz
    full = np.stack([u.min(1), v.min(1), u.max(1), v.max(1)], 1)
    box = np.stack([np.clip(full[:, 0], 0, W), np.clip(full[:, 1], 0, H), np.clip(full[:, 2], 0, W), np.clip(full[:, 3], 0, H)], 1)
    depth = np.c_[x, y, z, np.ones(len(det))] @ M[2]
    area_full = (full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1])
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    visible = np.where((depth > 0.1) & (area_full > 0), area / np.maximum(area_full, 1e-9), 0.0)
    return box, depth, visible


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match(sim: np.ndarray, ok: np.ndarray) -> dict[int, int]:
    """Max-cardinality, max-similarity assignment among admissible pairs: row -> col."""
    if sim.size == 0 or not ok.any():
        return {}
    cost = np.where(ok, -(sim + 1000.0), 0.0)
    r, c = linear_sum_assignment(cost)
    return {int(i): int(j) for i, j in zip(r, c, strict=False) if ok[i, j]}


def size_factor(h: float, p: MiningParams) -> float:
    return 1.0 if h >= p.label_min_height_px else p.small_object_factor


def band(score: float, lo: float, hi: float, center: float) -> float:
    if not (lo <= score <= hi):
        return 0.0
    half = (center - lo) if score < center else (hi - center)
    return 0.5 + 0.5 * (1 - min(abs(score - center) / max(half, 1e-9), 1.0))


def naive_mine(logs, params: MiningParams | None = None) -> pd.DataFrame:
    """Per-frame scores of every frame: log_id, frame, expected_errors, score."""
    p = params or MiningParams()
    sev = p.severities
    lid_all = logs.lidar_detections.to_pandas()
    cam_all = logs.camera_detections.to_pandas() if logs.camera_detections.num_rows else None
    trk_all = logs.tracks.to_pandas()
    cal = logs.calibration.to_pandas().set_index("log_id")
    frames = logs.frames.select(["log_id", "frame"]).to_pandas().sort_values(["log_id", "frame"])
    classes = ["car", "pedestrian", "cyclist", "traffic_cone"]
    cam_src = cam_all if cam_all is not None else trk_all[trk_all.sensor == "camera"]
    cam_cov = set(cam_src.cls.unique())
    lid_cov = set(lid_all.cls.unique())
    heights = {c: p.class_heights_m.get(c, 1.6) for c in classes}
    out = []
    for log_id, fr in frames.groupby("log_id", sort=True):
        row = cal.loc[log_id]
        P = np.array(row["P"]).reshape(3, 4)
        T = np.eye(4)
        T[:3] = np.array(row["lidar_to_cam"]).reshape(3, 4)
        M, W, H, focal = P @ T, float(row["image_width"]), float(row["image_height"]), P[0, 0]
        lid = lid_all[lid_all.log_id == log_id]
        cam = cam_src[cam_src.log_id == log_id]
        trk = trk_all[(trk_all.log_id == log_id) & (trk_all.sensor == "camera")]
        lid_by = {f: g for f, g in lid.groupby("frame")}
        cam_by = {f: g for f, g in cam.groupby("frame")}
        obj_q: dict[tuple, float] = defaultdict(lambda: 1.0)  # (frame, object) -> prod(1 - p)
        empty = lid.iloc[:0]
        proj = {}
        for f in fr.frame:
            d = lid_by.get(f, empty)
            arr = d[["x", "y", "z", "l", "w", "h", "yaw"]].to_numpy(np.float64)
            proj[f] = (d, *project(arr, M, W, H))

        def flag(f, key, s, obj_q=obj_q):
            obj_q[(f, key)] *= 1.0 - s

        for f in fr.frame:
            d, box, depth, vis = proj[f]
            c = cam_by.get(f)
            score = d.score.to_numpy()
            if c is not None and len(c):
                cb = c[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
                sel = np.flatnonzero((score >= p.lidar_min_score) & (vis > 0))
                io = iou(box[sel], cb)
                same = d.cls.to_numpy()[sel][:, None] == c.cls.to_numpy()[None, :]
                m = match(io + 0.05 * same, io >= p.association_iou)
                l2c = {int(sel[i]): j for i, j in m.items()}
                c2l = {j: i for i, j in l2c.items()}
            else:
                cb, l2c, c2l = np.zeros((0, 4)), {}, {}
            for i in range(len(d)):
                h = box[i, 3] - box[i, 1]
                if (score[i] >= p.lidar_score_threshold and i not in l2c and d.cls.iloc[i] in cam_cov
                        and vis[i] >= p.min_visible and depth[i] <= p.camera_range_m and h >= p.min_box_height_px):
                    flag(f, ("l", i), sev.lidar_only)
                u = band(score[i], *p.uncertainty_band, p.lidar_score_threshold)
                if u > 0:
                    flag(f, ("l", i), sev.uncertain * u * size_factor(h, p))
            for j in range(len(cb)):
                h = cb[j, 3] - cb[j, 1]
                cls = c.cls.iloc[j]
                rng = focal * heights.get(cls, 1.6) / max(h, 1.0)
                sf = size_factor(h, p)
                if j not in c2l:
                    if cls in lid_cov and rng <= p.lidar_range_m and h >= p.min_box_height_px:
                        flag(f, ("c", j), sev.camera_only * sf)
                    continue
                i = c2l[j]
                io_ij = iou(box[i:i + 1], cb[j:j + 1])[0, 0]
                if score[i] < p.lidar_score_threshold:
                    if cls in lid_cov:
                        flag(f, ("l", i), sev.lidar_weak * sf)
                    continue
                if d.cls.iloc[i] != cls and d.cls.iloc[i] in cam_cov and cls in lid_cov:
                    flag(f, ("l", i), sev.class_mismatch)
                if io_ij < p.geometry_iou:
                    flag(f, ("l", i), sev.geometry)
        # lidar temporal self-association
        fl = list(fr.frame)
        nxt: dict[tuple, int] = {}
        prv: dict[tuple, int] = {}

        def bev(f0, f1, rows0, rows1, gate, proj=proj):
            d0, d1 = proj[f0][0], proj[f1][0]
            a = d0[["x", "y"]].to_numpy()[rows0]
            b = d1[["x", "y"]].to_numpy()[rows1]
            if len(a) == 0 or len(b) == 0:
                return {}
            scale = p.temporal_gate_m + p.temporal_gate_per_m * np.hypot(a[:, 0], a[:, 1])
            dist = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1]) / scale[:, None]
            same = d0.cls.to_numpy()[rows0][:, None] == d1.cls.to_numpy()[rows1][None, :]
            m = match(-dist + 0.5 * same, dist <= gate)
            return {int(rows0[i]): int(rows1[j]) for i, j in m.items()}

        for k in range(len(fl) - 1):
            f0, f1 = fl[k], fl[k + 1]
            if f1 != f0 + 1:
                continue
            r0 = np.flatnonzero(proj[f0][0].score.to_numpy() >= p.lidar_min_score)
            r1 = np.flatnonzero(proj[f1][0].score.to_numpy() >= p.lidar_min_score)
            for i, j in bev(f0, f1, r0, r1, 1.0).items():
                nxt[(f0, i)] = j
                prv[(f1, j)] = i
        fset = set(fl)
        for f in fl:
            d, box, _, _ = proj[f]
            op = d.score.to_numpy() >= p.lidar_score_threshold
            for i in np.flatnonzero(op):
                if f - 1 in fset and f + 1 in fset and (f, i) not in nxt and (f, i) not in prv:
                    flag(f, ("l", i), sev.isolated)
            if f + 2 not in fset or f + 1 not in fset:
                continue
            d2 = proj[f + 2][0]
            op2 = d2.score.to_numpy() >= p.lidar_score_threshold
            mid_op = proj[f + 1][0].score.to_numpy() >= p.lidar_score_threshold
            ca = np.array([i for i in np.flatnonzero(op) if (f, i) not in nxt or not mid_op[nxt[(f, i)]]], int)
            cc = np.array([j for j in np.flatnonzero(op2) if (f + 2, j) not in prv or not mid_op[prv[(f + 2, j)]]], int)
            for i, j in bev(f, f + 2, ca, cc, 2.0).items():
                mid = nxt.get((f, i), prv.get((f + 2, j), -1))
                key = ("l", mid) if mid >= 0 else ("v", i)
                flag(f + 1, key, sev.flicker * size_factor(box[i, 3] - box[i, 1], p))
        # camera tracks, one track at a time
        first_f, last_f = fl[0], fl[-1]
        ends, begins = defaultdict(list), defaultdict(list)
        for tid, g in trk.groupby("track_id"):
            g = g.sort_values("frame")
            fr_t = g.frame.to_numpy()
            b = g[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
            s, e = fr_t[0], fr_t[-1]
            inner = s > first_f + p.short_track_frames and e < last_f - p.short_track_frames
            if inner and e - s + 1 <= p.short_track_frames:
                for f in fr_t:
                    flag(f, ("t", tid, f), sev.short_track)
            for k in range(1, len(fr_t)):
                step = fr_t[k] - fr_t[k - 1]
                if 1 < step <= p.max_gap_frames + 1:
                    sf = size_factor(b[k - 1, 3] - b[k - 1, 1], p)
                    for f in range(fr_t[k - 1] + 1, fr_t[k]):
                        flag(f, ("g", tid, f), sev.track_gap * sf)
                if step == 1:
                    c0 = (b[k - 1, :2] + b[k - 1, 2:]) / 2
                    c1 = (b[k, :2] + b[k, 2:]) / 2
                    diag = min(np.hypot(*(b[k - 1, 2:] - b[k - 1, :2])), np.hypot(*(b[k, 2:] - b[k, :2])))
                    a0 = max(np.prod(b[k - 1, 2:] - b[k - 1, :2]), 1e-6)
                    a1 = max(np.prod(b[k, 2:] - b[k, :2]), 1e-6)
                    if np.hypot(*(c1 - c0)) / max(diag, 1.0) > p.max_speed_px or max(a0 / a1, a1 / a0) > p.max_size_ratio:
                        flag(fr_t[k], ("t", tid, fr_t[k]), sev.implausible_motion)
            if e < last_f:
                ends[e].append((tid, b[-1], g.cls.iloc[-1]))
            if s > first_f:
                begins[s].append((tid, b[0], g.cls.iloc[0]))
        for f, es in ends.items():
            bs = begins.get(f + 1, [])
            if not bs:
                continue
            io = iou(np.array([e[1] for e in es]), np.array([b[1] for b in bs]))
            for j in match(io, io >= p.temporal_iou).values():
                flag(f + 1, ("t", bs[j][0], f + 1), sev.id_switch)
        # frame scores
        expected = defaultdict(float)
        for (f, _), q in obj_q.items():
            expected[f] += 1.0 - q
        e = np.array([expected.get(f, 0.0) for f in fl])
        sm = e.copy()
        share = p.temporal_smoothing
        for k in range(len(fl)):
            prev_v = e[k - 1] if k > 0 and fl[k - 1] == fl[k] - 1 else e[k]
            next_v = e[k + 1] if k + 1 < len(fl) and fl[k + 1] == fl[k] + 1 else e[k]
            sm[k] = (1 - share) * e[k] + share / 2 * (prev_v + next_v)
        out.append(pd.DataFrame({"log_id": log_id, "frame": fl, "expected_errors": e, "score": sm}))
    res = pd.concat(out, ignore_index=True)
    return res.sort_values(["score", "log_id", "frame"], ascending=[False, True, True], kind="stable")


def main(argv: list[str] | None = None) -> int:
    from fleetloop.ingest.importers import load_logs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--format", default="kitti-tracking")
    ap.add_argument("--camera-tracker", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.process_time()
    opts = {"camera_tracker": args.camera_tracker} if args.camera_tracker else {}
    logs = load_logs(args.root, args.format, **opts)
    t1 = time.process_time()
    ranked = naive_mine(logs)
    t2 = time.process_time()
    if args.out:
        ranked.to_csv(args.out, index=False)
    print(f"naive: {logs.num_frames} frames; cpu load {t1 - t0:.2f}s, checks+rank {t2 - t1:.2f}s "
          f"({logs.num_frames / max(t2 - t1, 1e-9):,.0f} frames/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
