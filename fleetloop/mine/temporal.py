"""Temporal consistency: objects should persist from frame to frame.

Two sources of time:
* a tracker stream (``tracks``): track-level checks on it — gaps (flicker), very short tracks,
  identity switches (a track ends and another starts on the same spot), implausible motion;
* a sensor without a tracker stream (here: lidar detections): the check associates that
  sensor's detections itself between neighbouring frames (bird's-eye view, optimal assignment
  with a range-dependent gate) and flags flicker (seen at t-1 and t+1, missing or below the
  operating point at t), isolated confident detections (no counterpart before or after and no
  camera stream seeing them: likely false alarms) and detections below the operating point that
  persist in both neighbouring frames (likely real objects the operating point misses).
Gates are per class (people move less than cars between frames).

All of it is whole-array work: sorting, diffs and one association kernel call per relation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetloop.mine.flags import KEY_LIDAR, KEY_VIRTUAL, REF_LIDAR, REF_LIDAR_PREV, REF_TRACK, Flags, object_key
from fleetloop.mine.lidar_camera import LidarGeometry, closeness, lidar_thresholds, size_factor
from fleetloop.mine.params import MiningParams
from fleetloop.mine.streams import substream, take_matched
from fleetloop.perception.batch import Batch
from fleetloop.perception.geometry import MODE_BEV, MODE_IOU, associate_slots, class_gates
from fleetloop.schema import CLASSES


@dataclass
class LidarLinks:
    prev: np.ndarray  # (N,) index of the same object at t-1, -1 none
    next: np.ndarray  # (N,) index at t+1, -1 none


def _csr(g: np.ndarray, n_frames: int) -> np.ndarray:
    start = np.zeros(n_frames + 1, np.int64)
    if g.size:
        np.cumsum(np.bincount(g, minlength=n_frames), out=start[1:])
    return start


def _link(batch: Batch, rows_a: np.ndarray, rows_b: np.ndarray, step: int, gate: float, pts: np.ndarray,
          cls: np.ndarray) -> np.ndarray:
    """Associate lidar rows ``rows_a`` of frame g with rows ``rows_b`` of frame g + step (same
    log, consecutive frame indices), bird's-eye view. Returns, per row of ``rows_a``, the matched
    lidar row or -1. Both row lists must be ordered by frame."""
    F = batch.n_frames
    L = batch.lidar
    nxt = batch.next_frame()
    target = nxt
    for _ in range(step - 1):
        target = np.where(target >= 0, nxt[np.maximum(target, 0)], -1)
    a_start = _csr(L.g[rows_a], F)
    b_start = _csr(L.g[rows_b], F)
    has = target >= 0
    t = np.maximum(target, 0)
    bs = np.where(has, b_start[t], 0)
    be = np.where(has, b_start[t + 1], 0)
    fwd = np.full(rows_a.size, -1, np.int64)
    bwd = np.full(rows_b.size, -1, np.int64)
    q = np.full(rows_a.size, np.nan)
    associate_slots(a_start[:-1], a_start[1:], bs, be, np.ascontiguousarray(pts[rows_a]),
                    np.ascontiguousarray(pts[rows_b]), cls[rows_a], cls[rows_b], MODE_BEV, class_gates(gate), 0.5, fwd, bwd, q)
    return take_matched(rows_b, fwd, -1)


def check_lidar_temporal(batch: Batch, params: MiningParams, flags: Flags, geo: LidarGeometry,
                         seen_by_camera: np.ndarray | None = None) -> LidarLinks:
    """Self-association of lidar detections across neighbouring frames."""
    L = batch.lidar
    F = batch.n_frames
    n = len(L)
    keep = np.flatnonzero(L.score >= params.lidar_min_score)
    x, y = L.cols["x"].astype(np.float64), L.cols["y"].astype(np.float64)
    rng = np.hypot(x, y)
    gate = np.array([params.class_temporal_gate_m.get(c, params.temporal_gate_m) for c in CLASSES]
                    + [params.temporal_gate_m])[L.cls]
    scale = gate + params.temporal_gate_per_m * rng
    pts = np.stack([x, y, scale], axis=1)
    nxt = np.full(n, -1, np.int64)
    prev = np.full(n, -1, np.int64)
    nxt[keep] = _link(batch, keep, keep, 1, 1.0, pts, L.cls)
    m = nxt >= 0
    prev[nxt[m]] = np.flatnonzero(m)

    thr = lidar_thresholds(batch, params)
    op = L.score >= thr
    g = L.g
    nf = batch.next_frame()
    has_next = nf[g] >= 0
    pf = np.full(F, -1, np.int64)
    pf[nf[nf >= 0]] = np.flatnonzero(nf >= 0)
    has_prev = pf[g] >= 0
    key = object_key(KEY_LIDAR, np.arange(n))
    det_id = L.cols["det_id"]
    factor = size_factor(geo.box[:, 3] - geo.box[:, 1], params, rng)

    # isolated: a confident detection that nothing explains before or after, nor any camera
    iso = op & has_prev & has_next & (prev < 0) & (nxt < 0)
    if seen_by_camera is not None:
        iso &= ~seen_by_camera
    i = np.flatnonzero(iso)
    flags.add("isolated", g[i], factor[i], key[i], (REF_LIDAR, det_id[i]), cls=L.cls[i])

    # below the operating point, yet the same object in both neighbouring frames
    wp = ~op & (L.score >= params.lidar_min_score) & (prev >= 0) & (nxt >= 0)
    i = np.flatnonzero(wp)
    near = closeness(L.score[i], thr[i], params.lidar_min_score)
    flags.add("weak_persistent", g[i], factor[i] * near, key[i], (REF_LIDAR, det_id[i]), cls=L.cls[i])

    # flicker: a at t-1 and c at t+1 are one confident object, but at t it is missing or weak.
    # Only confident detections whose next (resp. previous) link is missing or weak can take part.
    weak_next = (nxt < 0) | ~op[np.maximum(nxt, 0)]
    weak_prev = (prev < 0) | ~op[np.maximum(prev, 0)]
    cand_a = np.flatnonzero(op & weak_next & has_next)
    cand_c = np.flatnonzero(op & weak_prev & has_prev)
    link = _link(batch, cand_a, cand_c, 2, 2.0, pts, L.cls)  # t-1 -> t+1: the gate doubles
    ok = link >= 0
    a, c = cand_a[ok], link[ok]
    mid_a, mid_c = nxt[a], prev[c]
    t = nf[g[a]]
    mid = np.where(mid_a >= 0, mid_a, mid_c)
    obj = take_matched(key, mid, object_key(KEY_VIRTUAL, a))
    ref = (np.where(mid >= 0, REF_LIDAR, REF_LIDAR_PREV).astype(np.int8),
           take_matched(det_id, mid, det_id[a]))
    flags.add("flicker", t, factor[a], obj, ref, cls=L.cls[a])
    return LidarLinks(prev, nxt)


def check_tracks(batch: Batch, params: MiningParams, flags: Flags, hyp_key: np.ndarray, rows: np.ndarray) -> int:
    """Track-level checks on the track rows ``rows`` of one stream (one tracker). ``hyp_key``
    gives the object key of every track row (shared with an associated detection). Returns the
    number of track rows checked."""
    T = batch.tracks
    rows = np.asarray(rows, np.int64)
    if rows.size == 0:
        return 0
    tid = T.cols["track_id"][rows]
    log = batch.frame_log[T.g[rows]]
    order = np.lexsort((T.g[rows], tid, log))
    r = rows[order]
    tid, log = tid[order], log[order]
    g = T.g[r]
    fno = batch.frame_no[g].astype(np.int64)
    same = np.zeros(r.size, bool)
    same[1:] = (tid[1:] == tid[:-1]) & (log[1:] == log[:-1])
    first = ~same
    track_no = np.cumsum(first) - 1
    t_first = np.flatnonzero(first)
    t_last = np.r_[t_first[1:] - 1, r.size - 1]
    log_first = batch.frame_no[batch.log_start[:-1]].astype(np.int64)
    log_last = batch.frame_no[batch.log_start[1:] - 1].astype(np.int64)
    starts_f = fno[t_first]
    ends_f = fno[t_last]
    span = ends_f - starts_f + 1
    tlog = log[t_first]
    inner = (starts_f > log_first[tlog] + params.short_track_frames) & (ends_f < log_last[tlog] - params.short_track_frames)
    ref_id = T.cols["track_id"]

    # very short tracks (born and dead within a few frames, away from the log's ends)
    short = inner & (span <= params.short_track_frames)
    i = np.flatnonzero(short[track_no])
    flags.add("short_track", g[i], 1.0, hyp_key[r[i]], (REF_TRACK, ref_id[r[i]]), cls=T.cls[r[i]])

    # gaps: the track is missing for 1..max_gap frames (flicker); one flag per missing frame
    step = np.zeros(r.size, np.int64)
    step[1:] = fno[1:] - fno[:-1]
    gap_rows = np.flatnonzero(same & (step > 1) & (step - 1 <= params.max_gap_frames))
    n_missing = step[gap_rows] - 1
    before = np.repeat(gap_rows - 1, n_missing)
    offs = np.arange(n_missing.sum()) - np.repeat(np.cumsum(n_missing) - n_missing, n_missing) + 1
    miss_g = g[before] + offs  # frames are contiguous in g within a log when frame numbers are
    ok = (miss_g < batch.n_frames) & (batch.frame_log[np.minimum(miss_g, batch.n_frames - 1)] == log[before])
    ok &= batch.frame_no[np.minimum(miss_g, batch.n_frames - 1)] == fno[before] + offs
    before, miss_g, offs = before[ok], miss_g[ok], offs[ok]
    vkey = object_key(KEY_VIRTUAL, (np.int64(1) << 36) | (r[before] * 8 + np.minimum(offs, 7)))
    tb = r[before]
    small = size_factor((T.cols["y2"][tb] - T.cols["y1"][tb]).astype(np.float64), params)
    flags.add("track_gap", miss_g, small, vkey, (REF_TRACK, ref_id[tb]), cls=T.cls[tb])

    # implausible motion between consecutive frames of a track
    box = np.stack([T.cols[c][r] for c in ("x1", "y1", "x2", "y2")], axis=1).astype(np.float64)
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    diag = np.hypot(w, h)
    area = np.maximum(w * h, 1e-6)
    cons = np.flatnonzero(same & (step == 1))
    shift = np.hypot(cx[cons] - cx[cons - 1], cy[cons] - cy[cons - 1]) / np.maximum(np.minimum(diag[cons], diag[cons - 1]), 1.0)
    ratio = np.maximum(area[cons] / area[cons - 1], area[cons - 1] / area[cons])
    bad = cons[(shift > params.max_speed_px) | (ratio > params.max_size_ratio)]
    flags.add("implausible_motion", g[bad], 1.0, hyp_key[r[bad]], (REF_TRACK, ref_id[r[bad]]), cls=T.cls[r[bad]])

    # identity switches: a track ends at t, another starts at t+1 on the same spot
    ends = t_last[(ends_f < log_last[tlog])]
    begins = t_first[(starts_f > log_first[tlog])]
    F = batch.n_frames
    nf = batch.next_frame()
    e_start = np.zeros(F + 1, np.int64)
    np.cumsum(np.bincount(g[ends], minlength=F), out=e_start[1:])
    b_start = np.zeros(F + 1, np.int64)
    np.cumsum(np.bincount(g[begins], minlength=F), out=b_start[1:])
    # ends/begins are sorted by track, not frame: order them by frame for the CSR layout
    ends = ends[np.argsort(g[ends], kind="stable")]
    begins = begins[np.argsort(g[begins], kind="stable")]
    has = nf >= 0
    tgt = np.maximum(nf, 0)
    bs = np.where(has, b_start[tgt], 0)
    be = np.where(has, b_start[tgt + 1], 0)
    em = np.full(ends.size, -1, np.int64)
    bm = np.full(begins.size, -1, np.int64)
    q = np.full(ends.size, np.nan)
    cls = T.cls[r]
    associate_slots(e_start[:-1], e_start[1:], bs, be, np.ascontiguousarray(box[ends]), np.ascontiguousarray(box[begins]),
                    cls[ends], cls[begins], MODE_IOU, class_gates(params.temporal_iou), 0.0, em, bm, q)
    k = np.flatnonzero(em >= 0)
    newer = begins[em[k]]
    flags.add("id_switch", g[newer], 1.0, hyp_key[r[newer]], (REF_TRACK, ref_id[r[newer]]),
              (REF_TRACK, ref_id[r[ends[k]]]), cls=T.cls[r[newer]])
    return int(rows.size)


def check_tracker_detector(batch: Batch, params: MiningParams, flags: Flags, track_rows: np.ndarray, det_box: np.ndarray,
                           det_g: np.ndarray, det_ref: tuple[int, np.ndarray],
                           det_key: np.ndarray, track_key: np.ndarray) -> None:
    """Tracks of one sensor against that sensor's detections, frame by frame (image IoU).

    ``det_box``/``det_g``/``det_ref``/``det_key`` describe the detections to compare with
    (rows ordered by frame); confirmed tracks with no detection are unsupported, detections no
    track explains are unexplained."""
    T = batch.tracks
    F = batch.n_frames
    mask = np.zeros(len(T), bool)
    mask[track_rows] = True
    t_start, t_idx = substream(T, mask, F)
    d_start = np.zeros(F + 1, np.int64)
    np.cumsum(np.bincount(det_g, minlength=F), out=d_start[1:])
    tbox = np.stack([T.cols[c][t_idx] for c in ("x1", "y1", "x2", "y2")], axis=1).astype(np.float64)
    tm = np.full(t_idx.size, -1, np.int64)
    dm = np.full(det_g.size, -1, np.int64)
    q = np.full(t_idx.size, np.nan)
    associate_slots(t_start[:-1], t_start[1:], d_start[:-1], d_start[1:], tbox, np.ascontiguousarray(det_box),
                    T.cls[t_idx], np.full(det_g.size, -1, np.int64),
                    MODE_IOU, class_gates(params.track_detection_iou), 0.0, tm, dm, q)
    i = np.flatnonzero((tm < 0) & (T.cols["confirmed"][t_idx] == 1))
    flags.add("track_unsupported", T.g[t_idx[i]], 1.0, track_key[t_idx[i]],
              (REF_TRACK, T.cols["track_id"][t_idx[i]]), cls=T.cls[t_idx[i]])
    j = np.flatnonzero(dm < 0)
    flags.add("detection_unexplained", det_g[j], 1.0, det_key[j], (det_ref[0], det_ref[1][j]))
