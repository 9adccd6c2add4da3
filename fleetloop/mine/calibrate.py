"""Learning from labels: fit each flag's severity per class so that the frames' expected errors
match the errors the labels show.

    result = calibrate(logs, labels, params)     # logs: the labelled frames' perception outputs
    result.params                                # MiningParams with class_severities + calibration
    result.table                                 # reason, class, flagged, errors, precision, prior, severity

``labels`` is LABELS-like: one row per labelled object, ``log_id, frame, cls, x1, y1, x2, y2``
(image pixels), and optionally

* ``care`` (bool): the object counts (false: an ignore region for its class, e.g. an object too
  small, too occluded or too far for the labelling convention, or a neighbour class such as a van
  for cars); ``dont_care`` (bool): a region where nothing counts (KITTI's DontCare);
  ``camera_ignore_only`` (bool): an ignore label that only the camera's matching uses (KITTI:
  trucks and trams are neighbours of cars for a camera detector, not for the lidar);
* ``x``, ``y`` (metres, the lidar frame): the object's bird's-eye centre. With them the lidar is
  judged as KITTI's evaluation does, by centre distance; without them by 2D IoU of its projected
  boxes.

Every frame of a log that has labels counts as labelled (an object-free frame of a labelled log is
a frame with no objects), unless ``labelled_frames`` says otherwise.

Matching rules (the KITTI evaluation's, which ``../shared/tools/kitti_eval`` also uses), per frame
and class, optimal one-to-one assignment:

* **lidar**: detections at their class's operating point within ``label_range_m`` + 2 m are
  matched to care labels of their class by bird's-eye centre distance within ``BEV_GATE_M`` (car
  2 m, pedestrian 1 m, cyclist 1.5 m); an unmatched detection within ``label_range_m`` is a
  **false alarm** unless it lies within the gate of an ignore label of its class or
  ``DONTCARE_IOA`` inside a dont-care region; an unmatched care label is a **miss**;
* **judged camera**: its boxes (clipped to the image) are matched to care labels of their class
  by 2D IoU >= ``MATCH_IOU``; an unmatched box at least ``label_min_height_px`` high is a false
  alarm unless it overlaps an ignore label (IoU >= ``MATCH_IOU``) or lies inside a dont-care
  region; unmatched care labels of the classes it reports are its misses;
* a detection of any score, or a box of any stream, *points at* the care label of its class it
  matches best (lidar: nearest within the gate; boxes: IoU >= ``MATCH_IOU``).

A frame's **errors** are its lidar misses and false alarms plus the judged camera's. A flag's
object hypothesis (see ``fleetloop.mine.flags``) was **right** when the sensor it accuses is wrong
about that object: the lidar detection is a false alarm or its label a lidar miss; the judged box
is a false alarm or its label a camera miss (for a hypothesis keyed on a lidar detection: the
label it points at is a camera miss, or its judged partner box is a false alarm); flags about an
object missing in the frame are right when the frame has a miss of that sensor and class.

**The fit.** The miner scores a frame by its expected errors, the sum over object hypotheses of
the noisy-OR of their flags (``1 - prod(1 - severity x factor)``). Calibration fits the
severities of every (reason, class) pair with at least ``MIN_FLAGGED`` flags on labelled frames
so that these expected errors, plus errors no flag explains (a rate per frame and one per
labelled object of each class, fitted with them: objects no sensor saw cannot be blamed on the
flags that are there, which would otherwise push every severity up, most of all the flags that
come with crowded frames; the labels give each frame's objects exactly, and a pedestrian brings
far more unexplained errors than a car, so the rate is per class), explain each labelled frame's
error count (Poisson likelihood), each severity shrunk towards its default by a Beta prior worth
``STRENGTH`` flags (mode at the default): a pair flagged a handful of times stays near its
default, and a flag's severity also absorbs the errors that come with it in the same frame (the
frame, not the flag, is what is ranked). The per-flag counts (how often each flag's own hypothesis
was right) are reported with each value, and the fitted rates of errors no flag explains with the
calibration (where the miner is blind).

**Stability.** Labelled frames of one log are not independent (the same scene, the same objects,
frame after frame), so a few logs can pull a severity far from its default by a quirk of their
own. The labelled logs are dealt into up to ``STABILITY_FOLDS`` groups (whole logs,
:func:`log_folds`) and the fit is repeated without each group; a fitted value is kept only when
every refit moves it the same way from the default (:func:`stable_pairs`). The others stay at
their defaults (reported as not stable) and the kept ones are fitted again with them held there.
On KITTI, fitted on some sequences and scored on the others, this turned calibration's small
average loss of cost-lift into a tie (``benchmarks/calibration_holdout.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.optimize import minimize

from fleetloop.mine.flags import (
    _KEY_SHIFT,
    _KIND_SHIFT,
    KEY_CAMERA,
    KEY_LIDAR,
    KEY_TRACK,
    KEY_VIRTUAL,
    KIND_CAMERA,
    REASONS,
    split_kinds,
)
from fleetloop.mine.lidar_camera import lidar_geometry, lidar_thresholds
from fleetloop.mine.params import Calibration, FittedSeverity, MiningParams
from fleetloop.mine.streams import Side
from fleetloop.perception.batch import Batch, build_batch
from fleetloop.perception.geometry import MODE_BEV, MODE_IOU, associate_slots, class_gates, ioa_slots, nearest_slots
from fleetloop.schema import CLASSES, DriveLogs

MATCH_IOU = 0.5
DONTCARE_IOA = 0.5
#: Bird's-eye centre-distance gates per class (KITTI tracking evaluation / AB3DMOT).
BEV_GATE_M = {"car": 2.0, "pedestrian": 1.0, "cyclist": 1.5}
#: Detections up to this much beyond the labelled range may still match a label near its edge.
RANGE_SLACK_M = 2.0
STRENGTH = 20.0
MIN_FLAGGED = 5
#: The labelled logs are dealt into at most this many groups for the stability check.
STABILITY_FOLDS = 5
RULES = (f"KITTI's: lidar by bird's-eye centre distance (gates {BEV_GATE_M} m; 2D IoU >= {MATCH_IOU} of projected "
         f"boxes when labels carry no position), camera by 2D IoU >= {MATCH_IOU}, optimal per frame and class; ignore "
         f"labels and dont-care regions (IoA >= {DONTCARE_IOA}) neither hit nor false alarm. Severities: frame-level "
         f"noisy-OR fit of error counts, Beta prior worth {STRENGTH:g} flags at the default; a fitted value is kept "
         f"only when every refit without one of up to {STABILITY_FOLDS} groups of the labelled logs moves it the same "
         f"way from the default")

TABLE_SCHEMA = pa.schema([("reason", pa.string()), ("class", pa.string()), ("flagged", pa.int64()),
                          ("errors", pa.int64()), ("precision", pa.float64()), ("prior", pa.float64()),
                          ("severity", pa.float64()), ("fitted", pa.bool_()), ("stable", pa.bool_())])

N_CLS = len(CLASSES) + 1  # class codes, the last one "other"


@dataclass
class CalibrationResult:
    params: MiningParams  # the input params with the fitted class_severities and their counts
    table: pa.Table  # TABLE_SCHEMA: one row per (reason, class) that was flagged on labelled frames
    truth: dict[str, int] | None = None  # error totals on the labelled frames (lidar_fn, lidar_fp, camera_fn, camera_fp)
    labelled_logs: list[str] = field(default_factory=list)  # the logs whose frames were judged (the fit's logs)
    unlabelled_logs: list[str] = field(default_factory=list)  # logs given with no label on any of their frames: not used
    #: label rows naming a (log, frame) the logs do not have, not used: their count and a few examples
    unmatched_labels: int = 0
    unmatched_examples: list[str] = field(default_factory=list)
    judged_camera: str | None = None  # the camera stream whose errors count (None: no camera stream)
    skipped: list[str] = field(default_factory=list)  # what the checks skipped or chose, in words (as mining says)


@dataclass
class Truth:
    """The labels' verdict on every logged output of a batch (module doc)."""

    labelled: np.ndarray  # (F,) bool
    frame_errors: np.ndarray  # (F,) lidar misses + false alarms + judged-camera misses + false alarms
    frame_miss: np.ndarray  # (F, 2, N_CLS) misses per frame, sensor (0 lidar, 1 camera) and class
    lidar_err: np.ndarray  # (N_lidar, 2) bool: the lidar / the judged camera is wrong about this detection's object
    side_err: list[np.ndarray]  # per camera side, (n_rows, 2) bool, the same for each box
    totals: dict[str, int]
    care_objects: np.ndarray  # (F, N_CLS) care labels per frame and class (the last column: other classes)


def _csr(g: np.ndarray, n: int) -> np.ndarray:
    start = np.zeros(n + 1, np.int64)
    if g.size:
        np.cumsum(np.bincount(g, minlength=n), out=start[1:])
    return start


def _label_frames(batch: Batch, log_id: pa.Array | pa.ChunkedArray, frame: np.ndarray) -> np.ndarray:
    """Global frame of every (log_id, frame), -1 when the batch lacks it."""
    code = pc.index_in(log_id, value_set=pa.array(batch.log_ids, pa.string())).to_numpy(zero_copy_only=False)
    code = np.where(np.isnan(code.astype(np.float64)), -1, code).astype(np.int64)
    keys = (batch.frame_log.astype(np.int64) << 32) | batch.frame_no.astype(np.int64)
    key = (code << 32) | np.asarray(frame, np.int64)
    g = np.searchsorted(keys, key)
    ok = (code >= 0) & (g < len(keys)) & (keys[np.minimum(g, len(keys) - 1)] == key)
    return np.where(ok, g, -1)


class _Labels:
    """The labels of the batch's frames, ordered by frame, split by role and class."""

    def __init__(self, batch: Batch, labels: pa.Table, all_labelled: bool = False):
        F = batch.n_frames
        g = _label_frames(batch, labels.column("log_id"), labels.column("frame").to_numpy())
        keep = np.flatnonzero(g >= 0)
        order = keep[np.argsort(g[keep], kind="stable")]
        t = labels.take(pa.array(order))
        self.g = g[order]
        n = t.num_rows
        self.box = np.stack([t.column(c).to_numpy().astype(np.float64) for c in ("x1", "y1", "x2", "y2")], axis=1) \
            if n else np.zeros((0, 4))
        self.cls = (pc.index_in(t.column("cls"), value_set=pa.array(CLASSES)).fill_null(len(CLASSES))
                    .to_numpy(zero_copy_only=False).astype(np.int64)) if n else np.zeros(0, np.int64)

        def flag(name: str, default: bool) -> np.ndarray:
            if name in t.column_names:
                return t.column(name).fill_null(default).to_numpy(zero_copy_only=False).astype(bool)
            return np.full(n, default)

        self.dont_care = flag("dont_care", False)
        self.care = flag("care", True) & ~self.dont_care
        self.ignore = ~self.care & ~self.dont_care
        self.camera_only = flag("camera_ignore_only", False)
        self.has_xy = "x" in t.column_names and "y" in t.column_names and n > 0
        self.xy = (np.stack([t.column("x").to_numpy().astype(np.float64), t.column("y").to_numpy().astype(np.float64)], axis=1)
                   if self.has_xy else np.zeros((n, 2)))
        self.F = F
        logs_with = np.unique(batch.frame_log[self.g]) if n else np.zeros(0, np.int64)
        self.labelled = np.ones(F, bool) if all_labelled else np.isin(batch.frame_log, logs_with)

    def rows(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.flatnonzero(mask)
        return idx, _csr(self.g[idx], self.F)


def _match(a_start, a, b_start, b, mode, gate) -> np.ndarray:
    """Optimal one-to-one per frame: for each ``a`` row the matched ``b`` row (-1 none)."""
    n, m = a.shape[0], b.shape[0]
    a_match, b_match, q = np.full(n, -1, np.int64), np.full(m, -1, np.int64), np.full(n, np.nan)
    if n and m:
        associate_slots(a_start[:-1], a_start[1:], b_start[:-1], b_start[1:], np.ascontiguousarray(a),
                        np.ascontiguousarray(b), np.zeros(n, np.int64), np.zeros(m, np.int64), mode, class_gates(gate), 0.0,
                        a_match, b_match, q)
    return a_match


def _nearest(a_start, a, b_start, b, mode) -> tuple[np.ndarray, np.ndarray]:
    n = a.shape[0]
    q, idx = np.full(n, 0.0 if mode == MODE_IOU else np.inf), np.full(n, -1, np.int64)
    if n and b.shape[0]:
        nearest_slots(a_start[:-1], a_start[1:], b_start[:-1], b_start[1:], np.ascontiguousarray(a),
                      np.ascontiguousarray(b), mode, q, idx)
    return q, idx


def _inside(a_start, a, b_start, b) -> np.ndarray:
    out = np.zeros(a.shape[0])
    if a.shape[0] and b.shape[0]:
        ioa_slots(a_start[:-1], a_start[1:], b_start[:-1], b_start[1:], np.ascontiguousarray(a), np.ascontiguousarray(b), out)
    return out >= DONTCARE_IOA


def judge(batch: Batch, params: MiningParams, labels: pa.Table, sides: list[Side], all_labelled: bool = False) -> Truth:
    """The labels' verdict on the lidar and the judged camera (module doc, "Matching rules").
    ``all_labelled``: every frame of the batch was labelled (its object-free frames too), not only
    the frames of logs that have labels."""
    F = batch.n_frames
    lab = _Labels(batch, labels, all_labelled)
    L = batch.lidar
    lidar_fa = np.zeros(len(L), bool)
    lidar_point = np.full(len(L), -1, np.int64)  # care label each detection points at
    lidar_miss = np.zeros(len(lab.g), bool)
    cam_miss = np.zeros(len(lab.g), bool)
    dc_idx, dc_start = lab.rows(lab.dont_care)
    dc_box = lab.box[dc_idx]
    totals = {"lidar_fn": 0, "lidar_fp": 0, "camera_fn": 0, "camera_fp": 0}
    frame_errors = np.zeros(F, np.int64)

    if len(L):
        thr = lidar_thresholds(batch, params)
        geo = lidar_geometry(batch)
        box = np.nan_to_num(geo.box)
        xy = np.stack([L.cols["x"], L.cols["y"]], axis=1).astype(np.float64)
        rng = np.hypot(xy[:, 0], xy[:, 1])
        for c, name in enumerate(CLASSES):
            gate = BEV_GATE_M.get(name, 2.0)
            mine_c = L.cls == c
            conf = mine_c & (L.score >= thr) & (rng <= params.label_range_m + RANGE_SLACK_M)
            if not lab.has_xy:
                conf &= np.isfinite(geo.box).all(axis=1) & (geo.visible > 0)
            care_i, care_s = lab.rows(lab.care & (lab.cls == c))
            ign_i, ign_s = lab.rows(lab.ignore & ~lab.camera_only & (lab.cls == c))
            d_i, d_s = np.flatnonzero(conf), _csr(L.g[conf], F)
            if lab.has_xy:
                pts = np.c_[xy[d_i], np.full(d_i.size, gate)]
                hit = _match(d_s, pts, care_s, lab.xy[care_i], MODE_BEV, 1.0)
                near_ign = _nearest(d_s, xy[d_i], ign_s, lab.xy[ign_i], MODE_BEV)[0] <= gate
            else:
                hit = _match(d_s, box[d_i], care_s, lab.box[care_i], MODE_IOU, MATCH_IOU)
                near_ign = _nearest(d_s, box[d_i], ign_s, lab.box[ign_i], MODE_IOU)[0] >= MATCH_IOU
            fa = (hit < 0) & (rng[d_i] <= params.label_range_m) & ~near_ign
            fa &= ~_inside(d_s, box[d_i], dc_start, dc_box) | ~np.isfinite(geo.box[d_i]).all(axis=1)
            lidar_fa[d_i] = fa
            matched = np.zeros(care_i.size, bool)
            matched[hit[hit >= 0]] = True
            lidar_miss[care_i[~matched]] = True
            lidar_point[d_i[hit >= 0]] = care_i[hit[hit >= 0]]
            # every other detection of the class points at its nearest care label within the gate
            o_i = np.flatnonzero(mine_c & (L.score >= params.lidar_min_score) & ~conf)
            o_s = _csr(L.g[o_i], F)
            if lab.has_xy:
                dist, near = _nearest(o_s, xy[o_i], care_s, lab.xy[care_i], MODE_BEV)
                ok = near >= 0
                ok[ok] = dist[ok] <= gate
            else:
                q, near = _nearest(o_s, box[o_i], care_s, lab.box[care_i], MODE_IOU)
                ok = (near >= 0) & (q >= MATCH_IOU)
            lidar_point[o_i[ok]] = care_i[near[ok]]
        lidar_fa &= lab.labelled[L.g]

    side_point: list[np.ndarray] = []
    judged_fa = np.zeros(len(sides[0]) if sides else 0, bool)
    for k, s in enumerate(sides):
        W, H = batch.width[batch.frame_log[s.g]], batch.height[batch.frame_log[s.g]]
        box = s.boxes.copy()
        if k == 0:  # the judged stream's boxes, clipped to the image (where its size is known)
            known = np.isfinite(W) & np.isfinite(H)
            box[known, 0::2] = np.clip(box[known, 0::2], 0, (W[known] - 1)[:, None])
            box[known, 1::2] = np.clip(box[known, 1::2], 0, (H[known] - 1)[:, None])
        point = np.full(len(s), -1, np.int64)
        for c in range(len(CLASSES)):
            rows = np.flatnonzero(s.cls == c)
            r_s = _csr(s.g[rows], F)
            care_i, care_s = lab.rows(lab.care & (lab.cls == c))
            if k == 0 and s.cover[c]:
                hit = _match(r_s, box[rows], care_s, lab.box[care_i], MODE_IOU, MATCH_IOU)
                ign_i, ign_s = lab.rows(lab.ignore & (lab.cls == c))
                ign = _nearest(r_s, box[rows], ign_s, lab.box[ign_i], MODE_IOU)[0] >= MATCH_IOU
                h = box[rows, 3] - box[rows, 1]
                fa = (hit < 0) & (h >= params.label_min_height_px) & ~ign & ~_inside(r_s, box[rows], dc_start, dc_box)
                judged_fa[rows] = fa & lab.labelled[s.g[rows]]
                matched = np.zeros(care_i.size, bool)
                matched[hit[hit >= 0]] = True
                cam_miss[care_i[~matched]] = True
                point[rows[hit >= 0]] = care_i[hit[hit >= 0]]
                rest = rows[hit < 0]
            else:
                rest = rows
            q, near = _nearest(_csr(s.g[rest], F), box[rest], care_s, lab.box[care_i], MODE_IOU)
            ok = (near >= 0) & (q >= MATCH_IOU)
            point[rest[ok]] = care_i[near[ok]]
        side_point.append(point)

    frame_miss = np.zeros((F, 2, N_CLS), np.int64)
    np.add.at(frame_miss, (lab.g[lidar_miss], 0, lab.cls[lidar_miss]), 1)
    np.add.at(frame_miss, (lab.g[cam_miss], 1, lab.cls[cam_miss]), 1)
    frame_errors += frame_miss.sum(axis=(1, 2))
    if len(L):
        frame_errors += np.bincount(L.g[lidar_fa], minlength=F)
    if sides:
        frame_errors += np.bincount(sides[0].g[judged_fa], minlength=F)
    totals = {"lidar_fn": int(lidar_miss.sum()), "lidar_fp": int(lidar_fa.sum()), "camera_fn": int(cam_miss.sum()),
              "camera_fp": int(judged_fa.sum())}

    def wrong(point: np.ndarray) -> np.ndarray:
        ok = point >= 0
        if not ok.any():  # also: no label at all among these frames
            return np.zeros((point.size, 2), bool)
        p = np.maximum(point, 0)
        return np.stack([ok & lidar_miss[p], ok & cam_miss[p]], axis=1)

    lidar_err = wrong(lidar_point)
    if len(L):
        lidar_err[:, 0] |= lidar_fa
    side_err = [wrong(pt) for pt in side_point]
    if sides:
        side_err[0][:, 1] |= judged_fa
    care_objects = np.zeros((F, N_CLS), np.int64)
    np.add.at(care_objects, (lab.g[lab.care], lab.cls[lab.care]), 1)
    return Truth(lab.labelled, frame_errors * lab.labelled, frame_miss, lidar_err, side_err, totals, care_objects)


@dataclass
class FlagData:
    """The flags of labelled frames, grouped into object hypotheses (one per sensor)."""

    rc: np.ndarray  # (n_flags,) reason * N_CLS + class code
    factor: np.ndarray  # (n_flags,) the check's severity factor
    obj: np.ndarray  # (n_flags,) object hypothesis index
    obj_g: np.ndarray  # (n_objects,) frame of each hypothesis
    obj_right: np.ndarray  # (n_objects,) bool: the sensor it accuses is wrong about it
    flag: np.ndarray  # (n_flags,) the flag (row of the labelled frames' flags) each entry comes from

    def per_flag(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(rc, right) per original flag: a flag accusing both sensors is right when either is wrong."""
        rc = np.zeros(n, np.int64)
        rc[self.flag] = self.rc
        right = np.zeros(n, bool)
        np.logical_or.at(right, self.flag, self.obj_right[self.obj])
        return rc, right


def flag_data(checked, truth: Truth) -> FlagData:
    """Object hypotheses of the flags on labelled frames and whether each was right (module doc)."""
    cols = checked.flags.columns()
    keep = truth.labelled[cols["g"]] if cols["g"].size else np.zeros(0, bool)
    g0, obj0, fac0 = cols["g"][keep], cols["obj"][keep], cols["severity"][keep].astype(np.float64)
    reason0 = cols["reason"][keep].astype(np.int64)
    cls0 = cols["cls"][keep].astype(np.int64)
    cls0 = np.where(cls0 < 0, N_CLS - 1, np.minimum(cls0, N_CLS - 1))
    rc0 = reason0 * N_CLS + cls0
    # split flags accusing both sensors into two hypotheses (like the ranking does)
    g, obj, fac = split_kinds(g0, obj0, fac0)
    _, _, rc = split_kinds(g0, obj0, rc0.astype(np.float64))
    _, _, flag = split_kinds(g0, obj0, np.arange(g0.size, dtype=np.float64))
    rc, flag = rc.astype(np.int64), flag.astype(np.int64)
    uo, inv = np.unique(obj, return_inverse=True)
    obj_g = np.zeros(uo.size, np.int64)
    obj_g[inv] = g
    kind = (uo >> _KIND_SHIFT) & 3
    space = (uo >> _KEY_SHIFT) & 0x3F
    idx = uo & ((np.int64(1) << _KEY_SHIFT) - 1)
    sensor = np.where(kind == KIND_CAMERA, 1, 0)
    right = np.zeros(uo.size, bool)
    m = space == KEY_LIDAR
    if m.any():
        right[m] = truth.lidar_err[idx[m], sensor[m]]
        ev = checked.evidence
        if ev is not None and ev.lidar_assoc:  # a camera hypothesis on a lidar key: its judged partner box
            partner = ev.lidar_assoc[0].a_match[idx[m]]
            cam = (sensor[m] == 1) & (partner >= 0)
            r = right[m]
            r[cam] |= truth.side_err[0][partner[cam], 1]
            right[m] = r
    for s, err in zip(checked.sides, truth.side_err, strict=True):
        want = KEY_CAMERA if s.key_space == KEY_CAMERA else KEY_TRACK
        m = space == want
        if not m.any() or not len(s):
            continue
        pos = np.full(int(s.idx.max()) + 1, -1, np.int64)
        pos[s.idx] = np.arange(len(s))
        local = np.where(idx[m] < pos.size, pos[np.minimum(idx[m], pos.size - 1)], -1)
        hit = local >= 0
        r = right[m]
        r[hit] = err[local[hit], sensor[m][hit]]
        right[m] = r
    m = space == KEY_VIRTUAL  # an object missing in the frame: a miss of that sensor and class there
    if m.any():
        first_flag = np.zeros(uo.size, np.int64)
        first_flag[inv[::-1]] = np.arange(inv.size)[::-1]
        c = rc[first_flag[m]] % N_CLS
        right[m] = truth.frame_miss[obj_g[m], sensor[m], c] > 0
    return FlagData(rc, fac, inv, obj_g, right, flag)


@dataclass
class SeverityFit:
    severities: np.ndarray  # (n_reasons * N_CLS,): fitted where asked, the defaults elsewhere
    per_frame: float  # errors no flag explains, per labelled frame
    per_object: np.ndarray  # (K,) ... and per object of each kind (column of ``objects``)


def fit_severities(data: FlagData, frame_errors: np.ndarray, labelled: np.ndarray, prior: np.ndarray,
                   fit: np.ndarray, strength: float = STRENGTH, objects: np.ndarray | None = None) -> SeverityFit:
    """MAP severities (module doc, "The fit"). ``prior`` and ``fit`` are (n_reasons * N_CLS,):
    the defaults and which pairs to fit; ``objects`` is (F,) or (F, K): each frame's objects, of
    one kind or of K kinds (classes), each kind with its own rate of errors no flag explains.
    Returns the severities (the defaults where not fitted) and the fitted rates of errors no flag
    explains (zero when nothing was fitted)."""
    frames = np.flatnonzero(labelled)
    F = labelled.size
    n_obj_f = np.zeros((F, 1)) if objects is None else np.asarray(objects, np.float64).reshape(F, -1)
    K = n_obj_f.shape[1]
    if not fit.any() or frames.size == 0:
        return SeverityFit(prior.copy(), 0.0, np.zeros(K))
    y = frame_errors.astype(np.float64)
    pr = np.clip(prior, 1e-3, 0.99)
    a, b = 1.0 + strength * pr, 1.0 + strength * (1.0 - pr)
    n_obj = data.obj_g.size
    n_fit = int(fit.sum())

    def unpack(theta: np.ndarray) -> np.ndarray:
        s = prior.copy()
        s[fit] = 1.0 / (1.0 + np.exp(-np.clip(theta[:n_fit], -20, 20)))
        return np.clip(s, 1e-6, 0.99)

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        s = unpack(theta)
        # errors no flag explains (fitted): a rate per frame and one per object of each kind
        base = float(np.exp(np.clip(theta[n_fit], -12, 6)))
        per_obj = np.exp(np.clip(theta[n_fit + 1:], -12, 6))
        q = np.clip(1.0 - s[data.rc] * data.factor, 1e-9, 1.0)
        log_q = np.bincount(data.obj, weights=np.log(q), minlength=n_obj)
        p = -np.expm1(log_q)
        e = np.bincount(data.obj_g, weights=p, minlength=F)[frames] + base + n_obj_f[frames] @ per_obj
        ll = float((y[frames] * np.log(e) - e).sum())
        lp = float(((a - 1) * np.log(s) + (b - 1) * np.log1p(-s))[fit].sum())
        d_e = np.zeros(F)
        d_e[frames] = y[frames] / e - 1.0
        grad_s = np.bincount(data.rc, weights=d_e[data.obj_g[data.obj]] * data.factor * (1.0 - p)[data.obj] / q,
                             minlength=prior.size)
        grad_s += (a - 1) / s - (b - 1) / (1.0 - s)
        grad_base = float(d_e[frames].sum()) * base
        grad_obj = (d_e[frames] @ n_obj_f[frames]) * per_obj
        return -(ll + lp), -np.concatenate([(grad_s * s * (1.0 - s))[fit], [grad_base], grad_obj])

    base0 = max(float(y[frames].mean()) / 2.0, 0.05)
    theta0 = np.concatenate([np.log(pr[fit] / (1.0 - pr[fit])), [np.log(base0)], np.full(K, np.log(0.01))])
    res = minimize(nll, theta0, jac=True, method="L-BFGS-B")
    rates = np.exp(np.clip(res.x[n_fit:], -12, 6))
    return SeverityFit(unpack(res.x), float(rates[0]), rates[1:])


def log_folds(frame_log: np.ndarray, labelled: np.ndarray, k: int = STABILITY_FOLDS) -> np.ndarray:
    """(F,) the stability group of every labelled frame (-1: not labelled): the labelled logs, in
    batch order, dealt round-robin into ``min(k, logs)`` groups, so a group is whole logs."""
    if not labelled.any():
        return np.full(frame_log.size, -1, np.int64)
    logs, of_log = np.unique(frame_log[labelled], return_inverse=True)
    folds = np.full(frame_log.size, -1, np.int64)
    folds[labelled] = of_log % min(k, logs.size)
    return folds


def stable_pairs(data: FlagData, frame_errors: np.ndarray, folds: np.ndarray, prior: np.ndarray, fit: np.ndarray,
                 severities: np.ndarray, strength: float = STRENGTH, objects: np.ndarray | None = None) -> np.ndarray:
    """(n,) bool: the fitted pairs whose move away from the default every refit without one group
    of labelled logs (``folds``) repeats in direction. With fewer than two groups every fitted pair
    is kept (nothing to compare with)."""
    groups = np.unique(folds[folds >= 0])
    keep = fit.copy()
    if groups.size < 2:
        return keep
    direction = np.sign(severities - prior)
    for g in groups:
        refit = fit_severities(data, frame_errors, (folds >= 0) & (folds != g), prior, fit, strength, objects)
        keep &= np.sign(refit.severities - prior) == direction
    return keep & (direction != 0)


def calibrate(logs: DriveLogs, labels: pa.Table, params: MiningParams | None = None, *, source: str = "",
              labelled_frames: pa.Table | None = None, strength: float = STRENGTH) -> CalibrationResult:
    """Fit each flag's severity per class from labelled frames (see module doc)."""
    from fleetloop.mine.mining import run_checks

    params = params or MiningParams()
    if labelled_frames is not None:
        logs = _only_frames(logs, labelled_frames)
    base = params.model_copy(update={"class_severities": {}, "calibration": None})
    checked = run_checks(logs, base, build_batch(logs))
    truth = judge(checked.batch, base, labels, checked.sides, all_labelled=labelled_frames is not None)
    data = flag_data(checked, truth)
    defaults = base.severity_table()
    prior = np.array([defaults[r] for r in REASONS], np.float64).ravel()  # (n_reasons * N_CLS,)
    n_flags = int(data.flag.max()) + 1 if data.flag.size else 0
    rc_flag, right_flag = data.per_flag(n_flags)
    flagged = np.bincount(rc_flag, minlength=prior.size)
    right_flags = np.bincount(rc_flag, weights=right_flag.astype(np.float64), minlength=prior.size)
    code = np.arange(prior.size)
    fit = (flagged >= MIN_FLAGGED) & (code % N_CLS < len(CLASSES))
    sf = fit_severities(data, truth.frame_errors, truth.labelled, prior, fit, strength, truth.care_objects)
    folds = log_folds(checked.batch.frame_log, truth.labelled)
    stable = stable_pairs(data, truth.frame_errors, folds, prior, fit, sf.severities, strength, truth.care_objects)
    if (fit & ~stable).any():  # the unstable pairs stay at their defaults; the others are fitted again
        sf = fit_severities(data, truth.frame_errors, truth.labelled, prior, stable, strength, truth.care_objects)
    sev = sf.severities
    seen = truth.care_objects[truth.labelled].sum(axis=0)  # a class with no labelled object has no rate
    per_object = {c: round(float(sf.per_object[i]), 4) for i, c in enumerate(CLASSES) if fit.any() and seen[i] > 0}
    rows = []
    fitted: dict[str, dict[str, FittedSeverity]] = {}
    class_sev: dict[str, dict[str, float]] = {}
    for k in np.flatnonzero(flagged):
        reason, c = REASONS[k // N_CLS], int(k % N_CLS)
        if c >= len(CLASSES):
            continue
        n, e = int(flagged[k]), round(right_flags[k])
        value = round(float(sev[k]), 4) if stable[k] else float(prior[k])
        rows.append({"reason": reason, "class": CLASSES[c], "flagged": n, "errors": e, "precision": e / n,
                     "prior": float(prior[k]), "severity": value, "fitted": bool(fit[k]), "stable": bool(stable[k])})
        if stable[k]:
            fitted.setdefault(reason, {})[CLASSES[c]] = FittedSeverity(severity=value, flagged=n, errors=e,
                                                                      prior=float(prior[k]))
            class_sev.setdefault(reason, {})[CLASSES[c]] = value
    rows.sort(key=lambda r: (r["reason"], r["class"]))
    cal = Calibration(fitted=fitted, source=source, fitted_at=datetime.now(UTC).isoformat(timespec="seconds"),
                      labelled_frames=int(truth.labelled.sum()), rules=RULES,
                      unexplained_per_frame=round(sf.per_frame, 4),
                      unexplained_per_object=per_object)
    new = params.model_copy(update={"class_severities": class_sev, "calibration": cal})
    batch = checked.batch
    judged_logs = np.unique(batch.frame_log[truth.labelled]) if truth.labelled.any() else np.zeros(0, np.int64)
    ids = list(batch.log_ids)
    judged_set = set(judged_logs.tolist())
    lost = _label_frames(batch, labels.column("log_id"), labels.column("frame").to_numpy()) < 0 if labels.num_rows \
        else np.zeros(0, bool)
    lost_rows = (labels.select(["log_id", "frame"]).filter(pa.array(lost)).group_by(["log_id", "frame"], use_threads=False)
                 .aggregate([]).slice(0, 3).to_pylist() if lost.any() else [])
    return CalibrationResult(MiningParams.model_validate(new.model_dump()), pa.Table.from_pylist(rows, schema=TABLE_SCHEMA),
                             truth.totals, labelled_logs=[ids[i] for i in judged_logs],
                             unlabelled_logs=[k for i, k in enumerate(ids) if i not in judged_set],
                             unmatched_labels=int(lost.sum()),
                             unmatched_examples=[f"{r['log_id']} frame {r['frame']}" for r in lost_rows],
                             judged_camera=checked.sides[0].name if checked.sides else None,
                             skipped=list(checked.skipped))


def _only_frames(logs: DriveLogs, frames: pa.Table) -> DriveLogs:
    keys = pc.binary_join_element_wise(frames.column("log_id"), pc.cast(frames.column("frame"), pa.string()), "/")

    def sel(t: pa.Table) -> pa.Table:
        if "frame" not in t.column_names:
            return t.filter(pc.is_in(t.column("log_id"), value_set=pc.unique(frames.column("log_id"))))
        k = pc.binary_join_element_wise(t.column("log_id"), pc.cast(t.column("frame"), pa.string()), "/")
        return t.filter(pc.is_in(k, value_set=keys))

    return DriveLogs(**{n: sel(t) for n, t in logs.tables().items()})


def kitti_labels(truth: pa.Table, logs: DriveLogs | None = None, min_height: float = 25.0, max_occluded: int = 1,
                 max_truncated: float = 1.0, max_range_m: float = 50.0) -> pa.Table:
    """LABELS-like rows from :func:`fleetloop.ingest.importers.kitti.read_kitti_truth`, with
    ``care``, ``dont_care`` and ``camera_ignore_only`` set by KITTI's evaluation conventions (the
    yardstick's): a care object is a Car, Pedestrian or Cyclist >= 25 px high, occluded <= 1,
    truncated <= 1, within 50 m; other objects of our classes are ignore regions (trucks and trams
    only for the camera); DontCare boxes are dont-care regions; Misc is dropped. With ``logs`` (their
    calibration), ``x``/``y`` give each object's bird's-eye centre in the lidar frame, so the lidar
    is judged by centre distance."""
    t = truth
    h = pc.subtract(t.column("y2"), t.column("y1"))
    rng = pc.sqrt(pc.add(pc.multiply(t.column("x"), t.column("x")), pc.multiply(t.column("z"), t.column("z"))))
    typ = t.column("kitti_type")
    exact = pc.is_in(typ, value_set=pa.array(["Car", "Pedestrian", "Cyclist"]))
    care = pc.and_(pc.and_(pc.and_(exact, pc.greater_equal(h, min_height)), pc.less_equal(t.column("occluded"), max_occluded)),
                   pc.and_(pc.less_equal(t.column("truncated"), max_truncated), pc.less_equal(rng, max_range_m)))
    dont = pc.equal(typ, "DontCare")
    tram = pc.equal(typ, "Tram")
    cam_only = pc.or_(pc.equal(typ, "Truck"), tram)
    keep = pc.or_(pc.or_(pc.is_valid(t.column("cls")), dont), tram)
    cls = pc.if_else(pc.or_(dont, tram), pa.scalar("car"), t.column("cls"))
    cols = {"log_id": t.column("log_id"), "frame": t.column("frame"), "cls": cls,
            **{c: t.column(c) for c in ("x1", "y1", "x2", "y2")}, "care": care, "dont_care": dont,
            "camera_ignore_only": cam_only}
    if logs is not None and logs.calibration.num_rows:
        cols["x"], cols["y"] = _camera_to_lidar_bev(t, logs)
    out = pa.table(cols)
    return out.filter(keep)


def _camera_to_lidar_bev(t: pa.Table, logs: DriveLogs) -> tuple[pa.Array, pa.Array]:
    """The bird's-eye (x, y) in the lidar frame of KITTI labels' bottom centres (camera frame)."""
    cal = logs.calibration
    ids = cal.column("log_id").to_pylist()
    mats = np.asarray(cal.column("lidar_to_cam").combine_chunks().flatten().to_numpy(), np.float64).reshape(-1, 3, 4)
    inv: dict[str, np.ndarray] = {}
    for i, log_id in enumerate(ids):
        m = np.eye(4)
        m[:3] = mats[i]
        inv[log_id] = np.linalg.inv(m)
    log = t.column("log_id").to_numpy(zero_copy_only=False)
    pts = np.stack([t.column(c).to_numpy().astype(np.float64) for c in ("x", "y", "z")], axis=1)
    pts[:, 1] -= t.column("h").to_numpy().astype(np.float64) / 2  # bottom centre -> centre
    x = np.full(len(log), np.nan)
    y = np.full(len(log), np.nan)
    for log_id, m in inv.items():
        sel = log == log_id
        if sel.any():
            p = pts[sel] @ m[:3, :3].T + m[:3, 3]
            x[sel], y[sel] = p[:, 0], p[:, 1]
    return pa.array(x), pa.array(y)
