"""The miner's entry point: run every sanity check on a batch of logs and score its frames.

    result = mine(logs, params)          # flags (one row per flag), frames (one row per frame)
    ranked = rank(result.frames)         # every frame, highest priority first
    picked = select(result.frames, 200)  # a labeling budget, diverse

``mine`` is deterministic and works on whatever streams a log carries: checks that lack their
inputs are skipped and say so in ``result.skipped``. Frame scores do not depend on the other
logs of the batch (except through the inferred sensor class coverage, which
``MiningParams.camera_classes`` / ``lidar_classes`` pin), so shards can be mined separately
and their frames ranked together. :func:`mine_shards` does that, streaming.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetloop.mine.crowd import check_crowds
from fleetloop.mine.flags import (
    KEY_CAMERA,
    KEY_LIDAR,
    KEY_TRACK,
    REASON_CHECK,
    REASONS,
    REF_CAMERA,
    REF_LIDAR,
    REF_TRACK,
    Flags,
    object_key,
    objects_column,
)
from fleetloop.mine.lidar_camera import Evidence, check_lidar_camera, lidar_geometry, lidar_thresholds, size_factor
from fleetloop.mine.params import MiningParams
from fleetloop.mine.ranking import expected_errors, priority, rank, select, select_cost, smooth
from fleetloop.mine.streams import Side, camera_sides
from fleetloop.mine.temporal import check_lidar_temporal, check_tracker_detector, check_tracks
from fleetloop.mine.uncertainty import check_uncertainty
from fleetloop.perception.batch import Batch, build_batch
from fleetloop.schema import CLASSES, DriveLogs

__all__ = ["FLAGS_SCHEMA", "FRAMES_SCHEMA", "Checked", "MiningResult", "compact_frames", "expand_frames", "mine", "mine_shards",
           "rank", "run_checks", "select", "select_cost"]

TAGS = ("vehicle", "weather", "time_of_day", "place")

FLAGS_SCHEMA = pa.schema([
    pa.field("log_id", pa.string(), nullable=False),
    pa.field("frame", pa.int32(), nullable=False),
    pa.field("check", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("severity", pa.float32(), nullable=False),
    pa.field("objects", pa.list_(pa.string()), nullable=False),
])

FRAMES_SCHEMA = pa.schema([
    pa.field("log_id", pa.string(), nullable=False),
    pa.field("frame", pa.int32(), nullable=False),
    pa.field("score", pa.float64(), nullable=False),
    pa.field("reasons", pa.string(), nullable=False),
    pa.field("n_flags", pa.int32(), nullable=False),
    pa.field("expected_errors", pa.float32(), nullable=False),
    pa.field("est_objects", pa.int32(), nullable=False),
    *(pa.field(t, pa.string()) for t in TAGS),
    pa.field("classes", pa.string(), nullable=False),
])


@dataclass
class MiningResult:
    flags: pa.Table  # FLAGS_SCHEMA
    frames: pa.Table  # FRAMES_SCHEMA, in log/frame order (use rank() for priority order)
    skipped: list[str] = field(default_factory=list)
    judged_camera: str | None = None  # the camera stream whose errors count (None: no camera stream)


def _estimated_objects(batch: Batch, params: MiningParams, ev: Evidence | None, thr: np.ndarray) -> np.ndarray:
    """Objects a labeler will draw in each frame: confident lidar objects plus camera boxes (of
    any stream) that no confident lidar detection and no earlier stream's box explains."""
    F = batch.n_frames
    L = batch.lidar
    if len(L):
        rng = np.hypot(L.cols["x"], L.cols["y"])
        n = np.bincount(L.g[(L.score >= thr) & (rng <= params.label_range_m)], minlength=F)
    else:
        n = np.zeros(F, np.int64)
    sides = ev.sides if ev is not None else camera_sides(batch, params)
    for k, side in enumerate(sides):
        extra = (side.boxes[:, 3] - side.boxes[:, 1]) >= params.label_min_height_px
        if ev is not None:
            cm = ev.lidar_assoc[k].b_match
            extra &= (cm < 0) | (L.score[np.maximum(cm, 0)] < thr[np.maximum(cm, 0)])
            if k:
                sa = ev.stream_assoc[k - 1]
                extra &= sa.b_match < 0  # the judged stream's box already counts
        n = n + np.bincount(side.g[extra], minlength=F)
    return n


def _classes_tag(batch: Batch, params: MiningParams) -> pa.Array:
    """Per frame: the classes any sensor reports there, ';'-joined (for class=... slices)."""
    F = batch.n_frames
    bits = np.zeros(F, np.int64)
    L = batch.lidar
    conf = L.score >= lidar_thresholds(batch, params) if len(L) else np.zeros(0, bool)
    for stream, mask in ((L, conf), (batch.camera, None), (batch.tracks, None)):
        if len(stream) == 0:
            continue
        cls = stream.cls if mask is None else stream.cls[mask]
        g = stream.g if mask is None else stream.g[mask]
        ok = cls < len(CLASSES)
        np.bitwise_or.at(bits, g[ok], np.int64(1) << cls[ok])
    names = [";".join(c for k, c in enumerate(CLASSES) if b >> k & 1) for b in range(1 << len(CLASSES))]
    return pa.DictionaryArray.from_arrays(pa.array(bits.astype(np.int32)), pa.array(names)).cast(pa.string())


def _boost(frames_tags: dict[str, pa.Array], classes: pa.Array, params: MiningParams, F: int) -> np.ndarray:
    """Per frame: the largest boost among the slices it is in, times the smallest factor below 1
    (a demoted slice); 1 in none. The largest, not the product: a frame is no more interesting for
    showing four drifted classes than one."""
    up, down = np.ones(F), np.ones(F)
    for key, factor in params.slice_boost.items():
        name, _, value = key.partition("=")
        if name == "class":
            hit = pc.match_substring_regex(classes, f"(^|;){value}(;|$)").fill_null(False)
        else:
            hit = pc.equal(frames_tags[name], value).fill_null(False)
        f = np.where(hit.to_numpy(zero_copy_only=False), factor, 1.0)
        up, down = np.maximum(up, f), np.minimum(down, f)
    return up * down


def _reasons_column(F: int, g: np.ndarray, reason: np.ndarray, severity: np.ndarray) -> pa.Array:
    """Per frame 'reason:count;...' ordered by each reason's total severity (largest first)."""
    R = len(REASONS)
    cell = g * R + reason
    counts = np.bincount(cell, minlength=F * R)
    weight = np.bincount(cell, weights=severity, minlength=F * R)
    nz = np.flatnonzero(counts)
    fg, fr = nz // R, nz % R
    order = np.lexsort((fr, -weight[nz], fg))
    nz, fg, fr = nz[order], fg[order], fr[order]
    names = pa.DictionaryArray.from_arrays(pa.array(fr.astype(np.int32)), pa.array([r + ":" for r in REASONS]))
    items = pc.binary_join_element_wise(names.cast(pa.string()), pc.cast(pa.array(counts[nz]), pa.string()), "")
    offsets = np.zeros(F + 1, np.int32)
    np.cumsum(np.bincount(fg, minlength=F), out=offsets[1:])
    lists = pa.ListArray.from_arrays(pa.array(offsets), items)
    return pc.binary_join(lists, ";")


@dataclass
class Checked:
    """What the checks found, before scoring: the batch, the raw flags (severity factors, not yet
    times the per-class severities), what was skipped, and each frame's estimated objects."""

    batch: Batch
    flags: Flags
    skipped: list[str]
    est_objects: np.ndarray
    sides: list[Side] = field(default_factory=list)  # camera streams, the judged one first
    evidence: Evidence | None = None  # their associations with the lidar and with each other


def mine(logs: DriveLogs, params: MiningParams | None = None) -> MiningResult:
    """Run every applicable check over ``logs`` and score each frame (see module doc)."""
    params = params or MiningParams()
    c = run_checks(logs, params)
    return _assemble(c.batch, logs, c.flags, c.skipped, params, c.est_objects, c.sides[0].name if c.sides else None)


def run_checks(logs: DriveLogs, params: MiningParams | None = None, batch: Batch | None = None) -> Checked:
    """Every applicable check over ``logs`` (``batch``: ``build_batch(logs)`` when given)."""
    params = params or MiningParams()
    batch = batch if batch is not None else build_batch(logs)
    flags = Flags()
    skipped: list[str] = []
    L = batch.lidar
    T = batch.tracks
    lidar_track_rows = np.flatnonzero(T.cols["sensor"] == 1) if len(T) else np.zeros(0, np.int64)
    sides = camera_sides(batch, params, skipped)
    judged = sides[0] if sides else None

    # lidar <-> camera streams
    geo = lidar_geometry(batch) if len(L) else None
    ev = check_lidar_camera(batch, geo, params, flags, skipped, sides) if geo is not None else None
    if geo is None:
        skipped.append("lidar<->camera: no lidar detections")
    thr = lidar_thresholds(batch, params) if len(L) else np.zeros(0)
    lidar_keys = object_key(KEY_LIDAR, np.arange(len(L)))
    cam_keys = object_key(KEY_CAMERA, np.arange(len(batch.camera)))
    track_keys = object_key(KEY_TRACK, np.arange(len(T)))
    if ev is not None:
        for side, keys in zip(ev.sides, ev.lidar_key_of, strict=True):
            (cam_keys if side.key_space == KEY_CAMERA else track_keys)[side.idx] = keys

    # temporal
    if geo is not None and not lidar_track_rows.size:  # geo: exactly when there are lidar detections
        check_lidar_temporal(batch, params, flags, geo, ev.seen_by_camera if ev is not None else None)
    if lidar_track_rows.size:
        check_tracks(batch, params, flags, track_keys, lidar_track_rows)
    judged_tracks = judged is not None and judged.key_space == KEY_TRACK
    if judged is not None and judged_tracks:
        check_tracks(batch, params, flags, track_keys, judged.idx)
    if not len(T) and not len(L):
        skipped.append("temporal: no tracks and no lidar detections")
    elif not judged_tracks and len(batch.camera):
        skipped.append("temporal (camera): no camera tracks")  # camera detections are not self-associated

    # tracker <-> detector
    cam_track_rows = np.flatnonzero(T.cols["sensor"] == 0) if len(T) else np.zeros(0, np.int64)
    if cam_track_rows.size and len(batch.camera):
        C = batch.camera
        box = np.stack([C.cols[c] for c in ("x1", "y1", "x2", "y2")], axis=1).astype(np.float64)
        keep = ~(C.score < params.camera_score_threshold)
        i = np.flatnonzero(keep)
        rows = sides[1].idx if len(sides) > 1 and sides[1].key_space == KEY_TRACK else cam_track_rows
        check_tracker_detector(batch, params, flags, rows, box[i], C.g[i], (REF_CAMERA, C.cols["det_id"][i]),
                               cam_keys[i], track_keys)
    else:
        skipped.append("tracker<->detector (camera): " + ("no camera detections" if cam_track_rows.size else
                                                          "no camera tracks" if len(batch.camera) else
                                                          "no camera detections and no camera tracks"))
    if lidar_track_rows.size and geo is not None:
        i = np.flatnonzero((L.score >= thr) & (geo.visible > 0))
        check_tracker_detector(batch, params, flags, lidar_track_rows, geo.box[i], L.g[i],
                               (REF_LIDAR, L.cols["det_id"][i]), lidar_keys[i], track_keys)
    else:
        skipped.append("tracker<->detector (lidar): " + ("no lidar tracks (lidar detections are self-associated "
                                                         "across frames instead)" if len(L) else "no lidar detections"))

    # uncertainty
    if geo is not None:
        box_h = geo.box[:, 3] - geo.box[:, 1]
        # only detections the stack uses can be false alarms; one just below its operating point
        # is a possible miss, which lidar_weak and weak_persistent judge with corroboration
        used = L.score >= thr
        check_uncertainty(L.g, L.score, params.uncertainty_band, thr, size_factor(box_h, params, geo.range_m) * used,
                          flags, lidar_keys, (REF_LIDAR, L.cols["det_id"]), L.cls)
        check_crowds(batch, params, flags, box_h)
    if judged is not None:
        if judged.has_scores:
            keys = (cam_keys if judged.key_space == KEY_CAMERA else track_keys)[judged.idx]
            center = max(params.camera_score_threshold, params.camera_uncertainty_band[0])
            h = judged.boxes[:, 3] - judged.boxes[:, 1]
            check_uncertainty(judged.g, np.nan_to_num(judged.score, nan=1.0), params.camera_uncertainty_band,
                              center, size_factor(h, params), flags, keys, (judged.ref_kind, judged.ref_id), judged.cls)
        else:
            skipped.append("uncertainty (camera): the camera source reports no confidence")

    # integrity: boxes without a positive size (validation keeps such logs, with a warning)
    check_invalid_boxes(batch, params, flags, lidar_keys, cam_keys, track_keys)

    return Checked(batch, flags, skipped, _estimated_objects(batch, params, ev, thr), sides, ev)


def check_invalid_boxes(batch: Batch, params: MiningParams, flags: Flags, lidar_keys: np.ndarray,
                        cam_keys: np.ndarray, track_keys: np.ndarray) -> None:
    L = batch.lidar
    if len(L):
        i = np.flatnonzero((L.cols["l"] <= 0) | (L.cols["w"] <= 0) | (L.cols["h"] <= 0))
        flags.add("invalid_box", L.g[i], 1.0, lidar_keys[i], (REF_LIDAR, L.cols["det_id"][i]), cls=L.cls[i])
    for stream, keys, kind, ids in ((batch.camera, cam_keys, REF_CAMERA, "det_id"), (batch.tracks, track_keys, REF_TRACK, "track_id")):
        if len(stream):
            c = stream.cols
            i = np.flatnonzero((c["x2"] <= c["x1"]) | (c["y2"] <= c["y1"]))
            flags.add("invalid_box", stream.g[i], 1.0, keys[i], (kind, c[ids][i]), cls=stream.cls[i])


def severity_matrix(params: MiningParams) -> np.ndarray:
    """(n_reasons, n_classes + 1) severity of every reason per class code."""
    table = params.severity_table()
    return np.array([table[r] for r in REASONS], np.float64)


def _assemble(batch: Batch, logs: DriveLogs, flags: Flags, skipped: list[str], params: MiningParams,
              est: np.ndarray, judged_camera: str | None) -> MiningResult:
    F = batch.n_frames
    cols = flags.columns(severity_matrix(params))
    g = cols["g"]
    log_ids = pa.array(batch.log_ids, pa.string())
    log_col = pa.DictionaryArray.from_arrays(pa.array(batch.frame_log[g].astype(np.int32)), log_ids).cast(pa.string())
    reason_names = pa.array(list(REASONS), pa.string())
    check_names = pa.array([REASON_CHECK[r] for r in REASONS], pa.string())
    rcodes = pa.array(cols["reason"].astype(np.int32))
    flags_t = pa.Table.from_arrays(
        [log_col, pa.array(batch.frame_no[g], pa.int32()),
         pa.DictionaryArray.from_arrays(rcodes, check_names).cast(pa.string()),
         pa.DictionaryArray.from_arrays(rcodes, reason_names).cast(pa.string()),
         pa.array(cols["severity"], pa.float32()), objects_column(cols)],
        schema=FLAGS_SCHEMA,
    )

    expected = expected_errors(F, g, cols["obj"], cols["severity"])
    tags = _frame_tags(batch, logs)
    classes = _classes_tag(batch, params)
    boost = _boost(tags, classes, params, F)
    score = priority(smooth(expected, batch.frame_log, batch.frame_no, params.temporal_smoothing), est, boost, params)
    frame_log = pa.DictionaryArray.from_arrays(pa.array(batch.frame_log.astype(np.int32)), log_ids).cast(pa.string())
    frames_t = pa.Table.from_arrays(
        [frame_log, pa.array(batch.frame_no, pa.int32()), pa.array(np.round(score, 9), pa.float64()),
         _reasons_column(F, g, cols["reason"].astype(np.int64), cols["severity"].astype(np.float64)),
         pa.array(np.bincount(g, minlength=F).astype(np.int32)), pa.array(expected.astype(np.float32)),
         pa.array(est.astype(np.int32)), *(tags[t] for t in TAGS), classes],
        schema=FRAMES_SCHEMA,
    )
    return MiningResult(flags=flags_t, frames=frames_t, skipped=skipped, judged_camera=judged_camera)


def _frame_tags(batch: Batch, logs: DriveLogs) -> dict[str, pa.Array]:
    """Tag columns of logs.frames, in the batch's frame order."""
    fr = logs.frames
    code = pc.index_in(fr.column("log_id"), value_set=pa.array(batch.log_ids, pa.string())).to_numpy(zero_copy_only=False)
    key = (code.astype(np.int64) << 32) | fr.column("frame").to_numpy().astype(np.int64)
    order = np.argsort(key, kind="stable")
    take = pa.array(order)
    return {t: (fr.column(t).take(take).combine_chunks() if t in fr.column_names else pa.nulls(batch.n_frames, pa.string()))
            for t in TAGS}


_COMPACT = ("reasons", *TAGS, "classes")


def compact_frames(frames: pa.Table) -> pa.Table:
    """Dictionary-encode the repetitive string columns (reasons, tags): a few bytes per frame
    while many shards' frames wait to be ranked together. :func:`expand_frames` undoes it."""
    for name in _COMPACT:
        if name in frames.column_names and not pa.types.is_dictionary(frames.schema.field(name).type):
            i = frames.column_names.index(name)
            frames = frames.set_column(i, name, pc.dictionary_encode(frames.column(name)))
    return frames


def expand_frames(frames: pa.Table) -> pa.Table:
    for name in _COMPACT:
        if name in frames.column_names and pa.types.is_dictionary(frames.schema.field(name).type):
            i = frames.column_names.index(name)
            frames = frames.set_column(i, name, frames.column(name).cast(pa.string()))
    return frames


def mine_shards(shards: Iterable[DriveLogs], params: MiningParams | None = None) -> Iterator[MiningResult]:
    """Mine shard after shard (a shard = a group of whole logs); memory stays that of one shard."""
    params = params or MiningParams()
    for logs in shards:
        yield mine(logs, params)
