"""Learning from labels: how often did each flag mark a real error, per class?

    result = calibrate(logs, labels, params)     # logs: the labelled frames' perception outputs
    result.params                                # MiningParams with class_severities + calibration
    result.table                                 # reason, class, flagged, errors, severity, prior

``labels`` is LABELS-like: one row per labelled object, ``log_id, frame, cls, x1, y1, x2, y2``
(image pixels); optional columns ``care`` (bool: the object counts; false = an ignore region)
and ``dont_care`` (bool: a region where nothing counts, e.g. KITTI's DontCare). Without them every
label is a care object. Every frame of a log that has labels counts as labelled (an object-free
frame of a labelled log is a frame with no objects), unless ``labelled_frames`` says otherwise.

Matching rules (documented in docs/schema.md, "Calibration"), per frame, optimal one-to-one
assignment on 2D IoU (the kernel the miner uses):

* a lidar detection at its class's operating point, projected into the image, is a **hit** when it
  matches a care label of its class with IoU >= ``MATCH_IOU``; a **false alarm** when it matches
  none and overlaps no ignore label of its class (IoU >= ``MATCH_IOU``) and lies less than
  ``DONTCARE_IOA`` inside every dont-care region;
* likewise a box of the judged camera stream;
* a care label no lidar detection (resp. judged camera box) hits is a **miss** of that sensor
  (camera misses only for classes the judged camera reports);
* a sub-threshold lidar detection or an evidence-stream box *points at* the care label it
  overlaps most (IoU >= ``MATCH_IOU``).

A flag **marked a real error** when the sensor it accuses (``fleetloop.mine.flags.REASON_KIND``)
is wrong about its object: for a lidar-side flag, its lidar detection is a false alarm, or the
label its box points at is a lidar miss; for a camera-side flag, its judged box is a false alarm,
or the label it points at is a camera miss; flags about an object missing in this frame (lidar
flicker, track gaps) count when the frame has a miss of that sensor and class.

Each (reason, class) gets ``severity = (errors + STRENGTH * prior) / (flagged + STRENGTH)``: the
observed precision shrunk towards the default (``prior``), so a handful of flags moves little.
Values with fewer than ``MIN_FLAGGED`` flags are left at the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetloop.mine.flags import KIND_CAMERA, KIND_LIDAR, REASON_KIND, REASONS
from fleetloop.mine.lidar_camera import lidar_geometry, lidar_thresholds
from fleetloop.mine.params import Calibration, FittedSeverity, MiningParams
from fleetloop.mine.streams import associate_boxes, camera_sides
from fleetloop.perception.batch import Batch, build_batch
from fleetloop.schema import CLASSES, DriveLogs

MATCH_IOU = 0.5
DONTCARE_IOA = 0.5
STRENGTH = 10.0
MIN_FLAGGED = 5
RULES = (f"2D IoU >= {MATCH_IOU}, optimal per frame; ignore labels and dont-care regions "
         f"(IoA >= {DONTCARE_IOA}) neither hit nor false alarm; shrinkage {STRENGTH:g} flags towards the default")

TABLE_SCHEMA = pa.schema([("reason", pa.string()), ("class", pa.string()), ("flagged", pa.int64()),
                          ("errors", pa.int64()), ("precision", pa.float64()), ("prior", pa.float64()),
                          ("severity", pa.float64()), ("fitted", pa.bool_())])


@dataclass
class CalibrationResult:
    params: MiningParams  # the input params with the fitted class_severities and their counts
    table: pa.Table  # TABLE_SCHEMA: one row per (reason, class) that was flagged on labelled frames


@dataclass
class _Truth:
    lidar_fa: np.ndarray  # (N_lidar,) confident detection that is a false alarm
    lidar_label: np.ndarray  # (N_lidar,) label row the detection's box points at, -1 none
    cam_fa: dict[str, np.ndarray]  # per side name: judged-camera false alarm (only the judged side)
    cam_label: dict[str, np.ndarray]  # per side name: label row pointed at, -1 none
    label_lidar_miss: np.ndarray  # (N_labels,) care label no confident lidar detection hits
    label_cam_miss: np.ndarray  # (N_labels,) care label the judged camera misses (if it reports the class)
    frame_miss: np.ndarray  # (F, 2, n_classes + 1): misses per frame, sensor (0 lidar, 1 camera), class


def _label_rows(batch: Batch, labels: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Global frame of every label (or -1 when its frame is not in the batch) and its order."""
    log_values = pa.array(batch.log_ids, pa.string())
    code = pc.index_in(labels.column("log_id"), value_set=log_values).to_numpy(zero_copy_only=False)
    code = np.where(np.isnan(code.astype(np.float64)), -1, code).astype(np.int64)
    fno = labels.column("frame").to_numpy().astype(np.int64)
    keys = (batch.frame_log.astype(np.int64) << 32) | batch.frame_no.astype(np.int64)
    key = (code << 32) | fno
    g = np.searchsorted(keys, key)
    ok = (code >= 0) & (g < len(keys)) & (keys[np.minimum(g, len(keys) - 1)] == key)
    return np.where(ok, g, -1), ok


def _csr(g: np.ndarray, n: int) -> np.ndarray:
    start = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(g, minlength=n), out=start[1:])
    return start


def _match(start_a, box_a, cls_a, start_l, box_l, cls_l) -> np.ndarray:
    a = associate_boxes(start_a, box_a, cls_a, start_l, box_l, cls_l, MATCH_IOU, class_bonus=0.0)
    return a.a_match


def _truth(batch: Batch, params: MiningParams, labels: pa.Table) -> tuple[_Truth, np.ndarray]:
    F = batch.n_frames
    g, ok = _label_rows(batch, labels)
    order = np.argsort(np.where(ok, g, F), kind="stable")[: int(ok.sum())]
    lab = labels.take(pa.array(order))
    lg = g[order]
    n_lab = lab.num_rows
    lbox = np.stack([lab.column(c).to_numpy().astype(np.float64) for c in ("x1", "y1", "x2", "y2")], axis=1)
    lcls = pc.index_in(lab.column("cls"), value_set=pa.array(CLASSES)).fill_null(len(CLASSES)).to_numpy().astype(np.int64)
    care = lab.column("care").to_numpy(zero_copy_only=False).astype(bool) if "care" in lab.column_names else np.ones(n_lab, bool)
    dc = (lab.column("dont_care").to_numpy(zero_copy_only=False).astype(bool) if "dont_care" in lab.column_names
          else np.zeros(n_lab, bool))
    care &= ~dc
    ign = ~care & ~dc
    cidx, iidx, didx = np.flatnonzero(care), np.flatnonzero(ign), np.flatnonzero(dc)
    c_start, i_start, d_start = _csr(lg[cidx], F), _csr(lg[iidx], F), _csr(lg[didx], F)
    logs_with_labels = np.unique(batch.frame_log[lg]) if n_lab else np.zeros(0, np.int64)
    labelled = np.isin(batch.frame_log, logs_with_labels)

    def judge(start, box, cls) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (hit label row or -1, false alarm, pointed label row or -1)."""
        hit = _match(start, box, cls, c_start, lbox[cidx], lcls[cidx])
        hit = np.where(hit >= 0, cidx[np.maximum(hit, 0)], -1)
        ig = _match(start, box, cls, i_start, lbox[iidx], lcls[iidx]) if iidx.size else np.full(len(box), -1)
        inside = _in_dont_care(start, box, d_start, lbox[didx]) if didx.size else np.zeros(len(box), bool)
        fa = (hit < 0) & (ig < 0) & ~inside
        return hit, fa, hit

    L = batch.lidar
    thr = lidar_thresholds(batch, params) if len(L) else np.zeros(0)
    lidar_fa = np.zeros(len(L), bool)
    lidar_label = np.full(len(L), -1, np.int64)
    label_lidar_miss = care.copy()
    if len(L):
        geo = lidar_geometry(batch)
        ok_box = np.isfinite(geo.box).all(axis=1) & (geo.visible > 0)
        conf = ok_box & (L.score >= thr)
        ci = np.flatnonzero(conf)
        hit, fa, _ = judge(_csr(L.g[ci], F), np.nan_to_num(geo.box[ci]), L.cls[ci])
        lidar_fa[ci] = fa & labelled[L.g[ci]]
        lidar_label[ci] = hit
        label_lidar_miss[hit[hit >= 0]] = False
        wi = np.flatnonzero(ok_box & ~conf)  # sub-threshold: which label does it point at?
        whit = _match(_csr(L.g[wi], F), np.nan_to_num(geo.box[wi]), L.cls[wi], c_start, lbox[cidx], lcls[cidx])
        lidar_label[wi] = np.where(whit >= 0, cidx[np.maximum(whit, 0)], -1)
    sides = camera_sides(batch, params)
    cam_fa: dict[str, np.ndarray] = {}
    cam_label: dict[str, np.ndarray] = {}
    label_cam_miss = np.zeros(n_lab, bool)
    for k, s in enumerate(sides):
        hit, fa, _ = judge(s.start, s.boxes, s.cls)
        cam_label[s.name] = hit
        cam_fa[s.name] = fa & labelled[s.g] if k == 0 else np.zeros(len(s), bool)
        if k == 0:
            label_cam_miss = care & s.cover[lcls]
            label_cam_miss[hit[hit >= 0]] = False
    frame_miss = np.zeros((F, 2, len(CLASSES) + 1), np.int64)
    np.add.at(frame_miss, (lg[label_lidar_miss], 0, lcls[label_lidar_miss]), 1)
    np.add.at(frame_miss, (lg[label_cam_miss], 1, lcls[label_cam_miss]), 1)
    return _Truth(lidar_fa, lidar_label, cam_fa, cam_label, label_lidar_miss, label_cam_miss, frame_miss), labelled


def _in_dont_care(start: np.ndarray, box: np.ndarray, d_start: np.ndarray, dbox: np.ndarray) -> np.ndarray:
    """Boxes lying at least DONTCARE_IOA inside a dont-care region of their frame."""
    from fleetloop.perception.geometry import ioa_slots

    out = np.zeros(len(box))
    ioa_slots(start[:-1], start[1:], d_start[:-1], d_start[1:], np.ascontiguousarray(box), np.ascontiguousarray(dbox), out)
    return out >= DONTCARE_IOA


def flag_outcomes(logs: DriveLogs, labels: pa.Table, params: MiningParams) -> pa.Table:
    """Every flag the miner raises on labelled frames, with ``error`` (bool): did it mark a real
    error under the matching rules (module doc)? Columns: log_id, frame, reason, class, error."""
    from fleetloop.mine.mining import mine

    batch = build_batch(logs)
    truth, labelled = _truth(batch, params, labels)
    res = mine(logs, params)
    fl = res.flags
    if fl.num_rows == 0:
        return pa.table({"log_id": [], "frame": [], "reason": [], "class": [], "error": []})
    g, _ = _label_rows(batch, fl.select(["log_id", "frame"]))
    reason = pc.index_in(fl.column("reason"), value_set=pa.array(REASONS)).to_numpy().astype(np.int64)
    kind = np.array([REASON_KIND[r] for r in REASONS])[reason]
    first = pc.list_element(fl.column("objects"), 0)
    parts = pc.split_pattern(first, ":")
    ref_kind = pc.list_element(parts, 0).to_numpy(zero_copy_only=False)
    ref_id = pc.cast(pc.list_element(parts, 1), pa.int64()).to_numpy()
    lab_err = truth.label_lidar_miss.astype(np.int64), truth.label_cam_miss.astype(np.int64)
    n = fl.num_rows
    err = np.zeros(n, bool)
    cls = np.full(n, len(CLASSES), np.int64)
    L = batch.lidar
    # lidar references: row of (frame, det_id)
    is_l = ref_kind == "lidar"
    if is_l.any() and len(L):
        row = L.start[g[is_l]] + ref_id[is_l]  # det_id is the row's index within its frame
        row = np.minimum(row, len(L) - 1)
        lab = truth.lidar_label[row]
        lk = kind[is_l]
        e = np.where(lk != KIND_CAMERA, truth.lidar_fa[row] | ((lab >= 0) & (lab_err[0][np.maximum(lab, 0)] > 0)), False)
        e |= np.where(lk != KIND_LIDAR, (lab >= 0) & (lab_err[1][np.maximum(lab, 0)] > 0), False)
        err[is_l] = e
        cls[is_l] = L.cls[row]
    # camera / track references: the judged side first, then the evidence streams
    sides = camera_sides(batch, params)
    for k, s in enumerate(sides):
        want = "camera" if s.key_space == 2 else "track"
        m = (ref_kind == want) & ~is_l
        if not m.any():
            continue
        # (frame, ref id) -> row of this side
        key_side = (s.g << 24) | (s.ref_id & 0xFFFFFF)
        order = np.argsort(key_side, kind="stable")
        key_flag = (g[m] << 24) | (ref_id[m] & 0xFFFFFF)
        pos = np.searchsorted(key_side[order], key_flag)
        pos = np.minimum(pos, len(order) - 1)
        found = key_side[order][pos] == key_flag
        row = order[pos]
        lab = truth.cam_label[s.name][row]
        fk = kind[m]
        e = np.zeros(int(m.sum()), bool)
        if k == 0:
            e |= np.where(fk != KIND_LIDAR, truth.cam_fa[s.name][row], False)
        e |= np.where(fk != KIND_CAMERA, (lab >= 0) & (lab_err[0][np.maximum(lab, 0)] > 0), False)
        e |= np.where(fk != KIND_LIDAR, (lab >= 0) & (lab_err[1][np.maximum(lab, 0)] > 0), False)
        idx = np.flatnonzero(m)[found]
        err[idx] = e[found]
        cls[idx] = s.cls[row[found]]
        is_l = is_l | np.isin(np.arange(n), idx)
    # references to an object missing in this frame: a miss of that sensor in the frame
    rest = ~is_l & np.isin(ref_kind, ["lidar_prev", "track"])
    if rest.any():
        sensor = np.where(kind[rest] == KIND_CAMERA, 1, 0)
        err[rest] = truth.frame_miss[g[rest], sensor].sum(axis=1) > 0
    keep = labelled[g]
    cls_names = pa.array([*CLASSES, None], pa.string()).take(pa.array(cls))
    return pa.table({"log_id": fl.column("log_id"), "frame": fl.column("frame"), "reason": fl.column("reason"),
                     "class": cls_names, "error": pa.array(err)}).filter(pa.array(keep))


def calibrate(logs: DriveLogs, labels: pa.Table, params: MiningParams | None = None, *, source: str = "",
              labelled_frames: pa.Table | None = None) -> CalibrationResult:
    """Fit each flag's severity per class from labelled frames (see module doc)."""
    params = params or MiningParams()
    if labelled_frames is not None:
        logs = _only_frames(logs, labelled_frames)
    out = flag_outcomes(logs, labels, params)
    defaults = params.model_copy(update={"class_severities": {}, "calibration": None}).severity_table()
    table = out.group_by(["reason", "class"]).aggregate([("error", "count"), ("error", "sum")])
    rows = []
    fitted: dict[str, dict[str, FittedSeverity]] = {}
    class_sev: dict[str, dict[str, float]] = {}
    for r in table.to_pylist():
        reason, c, n, k = r["reason"], r["class"], int(r["error_count"]), int(r["error_sum"] or 0)
        if c is None:
            continue
        prior = defaults[reason][CLASSES.index(c)]
        sev = min((k + STRENGTH * prior) / (n + STRENGTH), 0.99)
        ok = n >= MIN_FLAGGED
        rows.append({"reason": reason, "class": c, "flagged": n, "errors": k, "precision": k / n if n else 0.0,
                     "prior": prior, "severity": round(sev, 4) if ok else prior, "fitted": ok})
        if ok:
            fitted.setdefault(reason, {})[c] = FittedSeverity(severity=round(sev, 4), flagged=n, errors=k, prior=prior)
            class_sev.setdefault(reason, {})[c] = round(sev, 4)
    rows.sort(key=lambda r: (r["reason"], r["class"]))
    cal = Calibration(fitted=fitted, source=source, fitted_at=datetime.now(UTC).isoformat(timespec="seconds"),
                      labelled_frames=int(pc.count_distinct(pc.binary_join_element_wise(
                          out.column("log_id"), pc.cast(out.column("frame"), pa.string()), "/")).as_py())
                      if out.num_rows else 0, rules=RULES)
    new = params.model_copy(update={"class_severities": class_sev, "calibration": cal})
    return CalibrationResult(MiningParams.model_validate(new.model_dump()), pa.Table.from_pylist(rows, schema=TABLE_SCHEMA))


def _only_frames(logs: DriveLogs, frames: pa.Table) -> DriveLogs:
    keys = pc.binary_join_element_wise(frames.column("log_id"), pc.cast(frames.column("frame"), pa.string()), "/")

    def sel(t: pa.Table) -> pa.Table:
        if "frame" not in t.column_names:
            return t.filter(pc.is_in(t.column("log_id"), value_set=pc.unique(frames.column("log_id"))))
        k = pc.binary_join_element_wise(t.column("log_id"), pc.cast(t.column("frame"), pa.string()), "/")
        return t.filter(pc.is_in(k, value_set=keys))

    return DriveLogs(**{n: sel(t) for n, t in logs.tables().items()})


def kitti_labels(truth: pa.Table, min_height: float = 25.0, max_occluded: int = 1, max_truncated: float = 1.0,
                 max_range_m: float = 50.0) -> pa.Table:
    """LABELS-like rows from :func:`fleetloop.ingest.importers.kitti.read_kitti_truth`, with
    ``care`` and ``dont_care`` set by KITTI's evaluation conventions (the yardstick's): a care
    object is >= 25 px high, occluded <= 1, truncated <= 1, within 50 m; other objects of our
    classes are ignore regions; DontCare boxes are dont-care regions; Misc/Tram are dropped."""
    t = truth
    h = pc.subtract(t.column("y2"), t.column("y1"))
    rng = pc.sqrt(pc.add(pc.multiply(t.column("x"), t.column("x")), pc.multiply(t.column("z"), t.column("z"))))
    typ = t.column("kitti_type")
    exact = pc.is_in(typ, value_set=pa.array(["Car", "Pedestrian", "Cyclist"]))
    care = pc.and_(pc.and_(pc.and_(exact, pc.greater_equal(h, min_height)), pc.less_equal(t.column("occluded"), max_occluded)),
                   pc.and_(pc.less_equal(t.column("truncated"), max_truncated), pc.less_equal(rng, max_range_m)))
    dont = pc.equal(typ, "DontCare")
    keep = pc.or_(pc.is_valid(t.column("cls")), dont)
    cls = pc.if_else(dont, pa.scalar("car"), t.column("cls"))
    out = pa.table({"log_id": t.column("log_id"), "frame": t.column("frame"), "cls": cls,
                    **{c: t.column(c) for c in ("x1", "y1", "x2", "y2")}, "care": care, "dont_care": dont})
    return out.filter(keep)
