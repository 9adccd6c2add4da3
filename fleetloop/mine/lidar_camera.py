"""lidar <-> camera, and camera <-> camera: do the sensors see the same objects?

Every lidar box is projected into the image with the log's calibration and associated with the
boxes of every camera stream of its frame (IoU, optimal assignment, one kernel call per stream
for the whole batch); the judged camera stream is associated with every evidence stream too
(see :mod:`fleetloop.mine.streams`). Operating points are per class
(``MiningParams.lidar_class_thresholds``).

Flags (a one-sided object at the operating point means one of the sensors is wrong):
  lidar_only      confident lidar object inside the camera's view and range that no camera stream
                  reporting its class sees (lidar false alarm, or a miss of every camera)
  camera_miss     confident lidar object that an evidence camera stream sees and the judged one
                  does not: two independent sensors against one; it trusts the lidar, so it counts
                  ``sure_floor`` at the operating point rising to full ``sure_margin_logit`` logits
                  above it (:func:`sureness`)
  camera_only     judged camera box inside the lidar's range, no lidar detection at all, no other
                  camera stream agreeing (lidar miss or camera false alarm)
  lidar_miss      judged camera box that an evidence stream confirms, no lidar detection at all
  lidar_weak      camera box (any stream) whose lidar partner scores below the operating point
  stream_only     evidence-stream box of a class the judged camera reports that neither the
                  judged camera nor a confident lidar detection explains (both may have missed it)
  evidence_only   evidence-stream box of a class the judged camera does not report, inside the
                  lidar's range, with no confident lidar detection (a lidar miss, or the evidence
                  stream's false alarm: one source against one)
  class_mismatch  associated objects of different classes (both sensors report both classes)
  geometry        associated, but the boxes overlap less than ``geometry_iou`` (lidar vs judged
                  camera, or judged camera vs an evidence stream)
Flags on objects too small or too far to be labelled count ``small_object_factor`` (with a lidar
partner, its measured range decides; a camera box alone is ranged from its height). So do the
flags that say only the lidar missed a camera box (``lidar_miss``, ``evidence_only``) when the box
is not one object of its class standing on the road: its height in metres, where its bottom edge
meets the road (the log's road height is the median bottom of its confident lidar boxes), over its
class's typical height is outside ``height_ratio`` (a merged or partial box, or something off the
road: not an object the labels would count as missed). A log without a single lidar detection
(one that does not carry the stream, or whose lidar was dead) is not judged against the lidar at
all: its camera boxes would otherwise all read as lidar misses; the run's ``skipped`` names it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logit

from fleetloop.mine.flags import KEY_LIDAR, REF_LIDAR, Flags, object_key
from fleetloop.mine.params import MiningParams
from fleetloop.mine.streams import Association, Side, associate_boxes, substream, take_matched
from fleetloop.perception.batch import Batch
from fleetloop.perception.geometry import ground_range, occlusion_slots, project_columns, visible_share
from fleetloop.schema import CLASSES


def lidar_thresholds(batch: Batch, params: MiningParams) -> np.ndarray:
    """The operating point of every lidar detection (per class)."""
    per_class = np.array([params.lidar_threshold(c) for c in CLASSES] + [params.lidar_score_threshold])
    return per_class[batch.lidar.cls]


def closeness(score: np.ndarray, threshold: np.ndarray, floor: float) -> np.ndarray:
    """How close a sub-threshold score is to the operating point: 1 at it, 0 at ``floor``."""
    return np.clip((score - floor) / np.maximum(threshold - floor, 1e-9), 0.0, 1.0)


def sureness(score: np.ndarray, threshold: np.ndarray, params: MiningParams) -> np.ndarray:
    """How far a detection sits above its operating point, 0 at it and 1 at
    ``sure_margin_logit`` logits above it (scores in (0, 1); a detection far above its operating
    point is rarely a false alarm, whatever the stack)."""
    eps = 1e-6
    s, t = (np.clip(np.asarray(x, np.float64), eps, 1 - eps) for x in (score, threshold))
    return np.clip((logit(s) - logit(t)) / params.sure_margin_logit, 0.0, 1.0)


def size_factor(box_height: np.ndarray, params: MiningParams, range_m: np.ndarray | None = None) -> np.ndarray:
    """Severity factor for a possible error: objects too small (or too far) to be labelled
    count less (NaN height or range, e.g. a log without calibration: unknown, no discount)."""
    h = np.asarray(box_height, np.float64)
    ok = np.isnan(h) | (h >= params.label_min_height_px)
    if range_m is not None:
        r = np.asarray(range_m, np.float64)
        ok &= np.isnan(r) | (r <= params.label_range_m)
    return np.where(ok, 1.0, params.small_object_factor)


def road_height(batch: Batch, confident: np.ndarray) -> np.ndarray:
    """Per log: the road's height in the lidar frame, the median bottom of the log's confident
    lidar boxes (NaN for a log without any)."""
    L = batch.lidar
    out = np.full(len(batch.log_ids), np.nan)
    if not confident.any():
        return out
    log = batch.frame_log[L.g[confident]]
    bottom = (L.cols["z"] - L.cols["h"] / 2)[confident]
    order = np.argsort(log, kind="stable")
    logs, first = np.unique(log[order], return_index=True)
    for k, part in zip(logs, np.split(bottom[order], first[1:]), strict=True):
        out[k] = float(np.median(part))
    return out


@dataclass
class LidarGeometry:
    box: np.ndarray  # (N, 4) float64 projected, clipped image box of every lidar detection
    depth: np.ndarray  # (N,) metres along the optical axis
    visible: np.ndarray  # (N,) share of the 3D box the camera images (geometry.visible_share)
    range_m: np.ndarray  # (N,) bird's-eye-view distance from the sensor


def lidar_geometry(batch: Batch) -> LidarGeometry:
    L = batch.lidar
    c = L.cols
    log = batch.frame_log[L.g]
    M, W, H = np.nan_to_num(batch.M), np.nan_to_num(batch.width), np.nan_to_num(batch.height)
    box, depth, _ = project_columns(c["x"], c["y"], c["z"], c["l"], c["w"], c["h"], c["yaw"], log, M, W, H)
    visible = visible_share(c["x"], c["y"], c["z"], c["l"], c["w"], c["h"], c["yaw"], log, M, W, H)
    calibrated = batch.has_calib[log]
    visible = np.where(calibrated, visible, 0.0)
    box = np.where(calibrated[:, None], box, np.nan).astype(np.float64)
    rng = np.hypot(c["x"], c["y"])
    return LidarGeometry(box, depth.astype(np.float64), visible.astype(np.float64), rng)


@dataclass
class Evidence:
    """What the camera streams say about each lidar detection and each judged camera box."""

    sides: list[Side]
    lidar_assoc: list[Association]  # per side: a = lidar rows (all), b = side rows
    stream_assoc: list[Association]  # per evidence side: a = judged rows, b = evidence rows
    seen_by_camera: np.ndarray  # (N_lidar,) bool: some camera stream reporting its class sees it
    lidar_key_of: list[np.ndarray]  # per side: hypothesis key of every row

    @property
    def judged(self) -> Side | None:
        return self.sides[0] if self.sides else None


def _associate_lidar(batch: Batch, geo: LidarGeometry, side: Side, lid_ok: np.ndarray, gates: np.ndarray) -> Association:
    L = batch.lidar
    l_start, l_idx = substream(L, lid_ok, batch.n_frames)
    a = associate_boxes(l_start, geo.box[l_idx], L.cls[l_idx], side.start, side.boxes, side.cls, gates)
    lidar_match = np.full(len(L), -1, np.int64)
    lidar_iou = np.full(len(L), np.nan)
    lidar_match[l_idx] = a.a_match
    lidar_iou[l_idx] = a.a_q
    cam_match = take_matched(l_idx, a.b_match, -1)
    return Association(lidar_match, lidar_iou, cam_match)


def occlusion(batch: Batch, geo: LidarGeometry, rows_mask: np.ndarray) -> np.ndarray:
    """Per lidar detection: the largest share of its image box covered by a closer detection."""
    L = batch.lidar
    out = np.zeros(len(L))
    valid = rows_mask & np.isfinite(geo.box).all(axis=1)
    occlusion_slots(L.start[:-1], L.start[1:], np.nan_to_num(geo.box), geo.depth, valid, 1.0, out)
    return out


def check_lidar_camera(batch: Batch, geo: LidarGeometry | None, params: MiningParams, flags: Flags,
                       skipped: list[str], sides: list[Side]) -> Evidence | None:
    L = batch.lidar
    if not sides:
        skipped.append("lidar<->camera: no camera detections or camera tracks")
        return None
    if len(L) == 0 or geo is None:
        skipped.append("lidar<->camera: no lidar detections")
        return None
    if not batch.has_calib.any():
        skipped.append("lidar<->camera: no calibration")
        return None
    missing = [batch.log_ids[k] for k in np.flatnonzero(~batch.has_calib)]
    if missing:
        skipped.append(f"lidar<->camera: no usable calibration for logs {missing[:5]}{'...' if len(missing) > 5 else ''}")
    # a log without a single lidar detection does not carry the stream (its file absent) or its
    # lidar was dead: every camera box of it would read as a lidar miss and fill the budget
    has_lidar = np.bincount(batch.frame_log[L.g], minlength=len(batch.log_ids)) > 0
    blind = [batch.log_ids[k] for k in np.flatnonzero(~has_lidar)]
    if blind:
        skipped.append(f"lidar<->camera: no lidar detection at all in logs {blind[:5]}{'...' if len(blind) > 5 else ''} "
                       "(a stream they do not carry, or a dead lidar): their camera boxes are not judged against it")

    J, E = sides[0], sides[1:]
    thr = lidar_thresholds(batch, params)
    confident = L.score >= thr
    lid_ok = (L.score >= params.lidar_min_score) & (geo.visible > 0)
    gates = params.association_gates()
    lassoc = [_associate_lidar(batch, geo, s, lid_ok, gates) for s in sides]
    sassoc: list[Association] = [associate_boxes(J.start, J.boxes, J.cls, s.start, s.boxes, s.cls, gates) for s in E]
    lid_cov = _lidar_cover(batch, params)
    lid_key = object_key(KEY_LIDAR, np.arange(len(L)))
    det_id = L.cols["det_id"]
    box_h = geo.box[:, 3] - geo.box[:, 1]
    lid_factor = size_factor(box_h, params, geo.range_m)
    log_of = batch.frame_log

    # which camera streams see each lidar detection, and which could (they report its class)
    seen_any = np.zeros(len(L), bool)
    seen_ev = np.zeros(len(L), bool)
    cover_any = np.zeros(len(L), bool)
    for si, (s, a) in enumerate(zip(sides, lassoc, strict=True)):
        seen = (a.a_match >= 0) & s.cover[L.cls]
        seen_any |= seen
        cover_any |= s.cover[L.cls]
        if si:
            seen_ev |= seen

    # confident lidar objects the cameras should have seen
    occ = occlusion(batch, geo, lid_ok)
    in_view = ((geo.visible >= params.min_visible) & (geo.depth <= params.camera_range_m)
               & (box_h >= params.min_box_height_px) & (occ < params.occluded_ioa))
    j_seen = lassoc[0].a_match >= 0
    base = confident & in_view
    i = np.flatnonzero(base & J.cover[L.cls] & ~j_seen & seen_ev)
    # camera_miss trusts the lidar: the surer the lidar, the likelier its object is real
    lo = params.sure_floor
    sure = lo + (1 - lo) * sureness(L.score[i], thr[i], params)
    flags.add("camera_miss", L.g[i], lid_factor[i] * sure, lid_key[i], (REF_LIDAR, det_id[i]), cls=L.cls[i])
    i = np.flatnonzero(base & cover_any & ~seen_any)
    flags.add("lidar_only", L.g[i], lid_factor[i], lid_key[i], (REF_LIDAR, det_id[i]), cls=L.cls[i])

    # hypothesis keys of every side's rows: the lidar partner's, else the judged box's, else its own
    keys: list[np.ndarray] = []
    j_key = take_matched(lid_key, lassoc[0].b_match, object_key(J.key_space, J.idx))
    keys.append(j_key)
    for s, la, sa in zip(E, lassoc[1:], sassoc, strict=True):
        own = object_key(s.key_space, s.idx)
        k = take_matched(lid_key, la.b_match, own)
        k = take_matched(j_key, sa.b_match, k)
        keys.append(k)

    # the judged camera's boxes
    a = lassoc[0]
    heights = np.array([params.class_heights_m.get(c, 1.6) for c in CLASSES] + [1.6])

    def camera_range(s: Side) -> np.ndarray:
        h = s.boxes[:, 3] - s.boxes[:, 1]
        return batch.focal[log_of[s.g]] * heights[s.cls] / np.maximum(h, 1.0)

    def in_lidar(s: Side) -> np.ndarray:
        h = s.boxes[:, 3] - s.boxes[:, 1]
        return (lid_cov[s.cls] & (camera_range(s) <= params.lidar_range_m) & (h >= params.min_box_height_px)
                & batch.has_calib[log_of[s.g]] & has_lidar[log_of[s.g]])

    def cam_factor(s: Side, lidar_match: np.ndarray | None = None) -> np.ndarray:
        """size_factor of a side's boxes; with a lidar partner (``lidar_match`` >= 0) the range
        is the lidar's measured one, else it is guessed from the box height."""
        rng = camera_range(s)
        if lidar_match is not None:
            rng = take_matched(geo.range_m, lidar_match, rng)
        return size_factor(s.boxes[:, 3] - s.boxes[:, 1], params, rng)

    road_z = road_height(batch, confident)
    lo_ratio, hi_ratio = params.height_ratio

    def on_road(s: Side) -> np.ndarray:
        """Factor of a box that only the lidar is said to miss: small_object_factor when its
        height in metres at its road point is implausible for its class (module doc); 1 when
        unknown. (Range from the road point / range from the height = metres / class height.)"""
        log = log_of[s.g]
        r = ground_range(batch.M[log], s.boxes, road_z[log]) / camera_range(s)
        return np.where(np.isnan(r) | ((r >= lo_ratio) & (r <= hi_ratio)), 1.0, params.small_object_factor)

    j_fac = cam_factor(J)
    confirmed = np.zeros(len(J), bool)  # an evidence stream has the same box
    for sa in sassoc:
        confirmed |= sa.a_match >= 0
    matched = a.b_match >= 0
    partner = np.maximum(a.b_match, 0)
    jl = in_lidar(J)
    j = np.flatnonzero(jl & ~matched & confirmed)
    flags.add("lidar_miss", J.g[j], j_fac[j] * on_road(J)[j], j_key[j], (J.ref_kind, J.ref_id[j]), cls=J.cls[j])
    j = np.flatnonzero(jl & ~matched & ~confirmed)
    flags.add("camera_only", J.g[j], j_fac[j], j_key[j], (J.ref_kind, J.ref_id[j]), cls=J.cls[j])
    weak = matched & (L.score[partner] < thr[partner]) & lid_cov[J.cls]
    near = closeness(L.score, thr, params.lidar_min_score)
    jp_fac = cam_factor(J, a.b_match)
    j = np.flatnonzero(weak)
    flags.add("lidar_weak", J.g[j], jp_fac[j] * near[partner[j]], j_key[j], (J.ref_kind, J.ref_id[j]), (REF_LIDAR, det_id[partner[j]]), cls=J.cls[j])
    both_cover = J.cover[L.cls[partner]] & lid_cov[J.cls]
    j = np.flatnonzero(matched & both_cover & (L.cls[partner] != J.cls) & confident[partner])
    flags.add("class_mismatch", J.g[j], 1.0, j_key[j], (REF_LIDAR, det_id[partner[j]]), (J.ref_kind, J.ref_id[j]),
              cls=L.cls[partner[j]])
    j = np.flatnonzero(matched & confident[partner] & (a.a_q[partner] < params.geometry_iou))
    flags.add("geometry", J.g[j], jp_fac[j], j_key[j], (REF_LIDAR, det_id[partner[j]]), (J.ref_kind, J.ref_id[j]), cls=J.cls[j])

    # evidence streams' boxes
    for s, la, sa, k in zip(E, lassoc[1:], sassoc, keys[1:], strict=True):
        conf = np.where(np.isfinite(s.score), s.score, 1.0)
        fac = cam_factor(s) * conf
        lm = la.b_match >= 0
        lp = np.maximum(la.b_match, 0)
        weak_l = lm & (L.score[lp] < thr[lp]) & lid_cov[s.cls]
        with_j = sa.b_match >= 0
        # judged camera misaligned with the evidence stream's box of the same object
        jj = np.flatnonzero(sa.a_match >= 0)
        bad = jj[sa.a_q[jj] < params.geometry_iou]
        flags.add("geometry", J.g[bad], j_fac[bad], j_key[bad], (J.ref_kind, J.ref_id[bad]),
                  (s.ref_kind, s.ref_id[sa.a_match[bad]]), cls=J.cls[bad])
        # sub-threshold lidar partner of a box the judged camera does not explain
        e = np.flatnonzero(weak_l & ~with_j)
        lfac = cam_factor(s, la.b_match) * conf
        flags.add("lidar_weak", s.g[e], lfac[e] * near[lp[e]], k[e], (s.ref_kind, s.ref_id[e]), (REF_LIDAR, det_id[lp[e]]), cls=s.cls[e])
        # a box that neither judged sensor explains (no judged box, no confident lidar partner):
        # of a class the judged camera reports, both judged sensors may have missed it; of a
        # class it does not report, only the lidar can be wrong about it (one source against one)
        expl = with_j | (lm & confident[lp])
        j_cov = J.cover[s.cls]
        e = np.flatnonzero(~expl & j_cov)
        flags.add("stream_only", s.g[e], fac[e], k[e], (s.ref_kind, s.ref_id[e]), cls=s.cls[e])
        e = np.flatnonzero(~expl & ~j_cov & in_lidar(s))
        flags.add("evidence_only", s.g[e], fac[e] * on_road(s)[e], k[e], (s.ref_kind, s.ref_id[e]), cls=s.cls[e])

    return Evidence(sides, lassoc, sassoc, seen_any, keys)


def _lidar_cover(batch: Batch, params: MiningParams) -> np.ndarray:
    m = np.zeros(len(CLASSES) + 1, bool)
    if params.lidar_classes is not None:
        m[[CLASSES.index(c) for c in params.lidar_classes]] = True
    else:
        m[np.unique(batch.lidar.cls)] = True
        m[-1] = False
    return m
