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

from fleetloop.perception.batch import Batch, build_batch
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
from fleetloop.mine.lidar_camera import camera_side, check_lidar_camera, lidar_geometry, size_factor
from fleetloop.mine.params import MiningParams
from fleetloop.mine.ranking import expected_errors, priority, rank, select, smooth
from fleetloop.mine.temporal import check_lidar_temporal, check_tracker_detector, check_tracks
from fleetloop.mine.uncertainty import check_uncertainty
from fleetloop.schema import CLASSES, DriveLogs

__all__ = ["FLAGS_SCHEMA", "FRAMES_SCHEMA", "MiningResult", "compact_frames", "expand_frames", "mine", "mine_shards",
           "rank", "select"]

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


def _hypothesis_keys(batch: Batch, params: MiningParams, cam_match: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Object keys of camera detections and of tracks: shared with the associated lidar detection."""
    cam_keys = object_key(KEY_CAMERA, np.arange(len(batch.camera)))
    track_keys = object_key(KEY_TRACK, np.arange(len(batch.tracks)))
    side, _, _ = camera_side(batch, params)
    if side is not None and cam_match is not None:
        keys = np.where(cam_match >= 0, object_key(KEY_LIDAR, np.maximum(cam_match, 0)), object_key(side.key_space, side.idx))
        if side.key_space == KEY_CAMERA:
            cam_keys[side.idx] = keys
        else:
            track_keys[side.idx] = keys
    return cam_keys, track_keys


def _estimated_objects(batch: Batch, params: MiningParams, cam_match: np.ndarray | None) -> np.ndarray:
    """Objects a labeler will draw in each frame: confident lidar objects plus camera boxes no
    confident lidar detection explains."""
    F = batch.n_frames
    L = batch.lidar
    n = np.bincount(L.g[L.score >= params.lidar_score_threshold], minlength=F)
    side, _, _ = camera_side(batch, params)
    if side is not None:
        g = (batch.camera if side.key_space == KEY_CAMERA else batch.tracks).g[side.idx]
        if cam_match is None:
            extra = np.ones(side.idx.size, bool)
        else:
            extra = (cam_match < 0) | (L.score[np.maximum(cam_match, 0)] < params.lidar_score_threshold)
        n = n + np.bincount(g[extra], minlength=F)
    return n


def _classes_tag(batch: Batch, params: MiningParams) -> pa.Array:
    """Per frame: the classes any sensor reports there, ';'-joined (for class=... slices)."""
    F = batch.n_frames
    bits = np.zeros(F, np.int64)
    L = batch.lidar
    conf = L.score >= params.lidar_score_threshold
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
    boost = np.ones(F)
    for key, factor in params.slice_boost.items():
        name, _, value = key.partition("=")
        if name == "class":
            hit = pc.match_substring_regex(classes, f"(^|;){value}(;|$)").fill_null(False)
        else:
            hit = pc.equal(frames_tags[name], value).fill_null(False)
        boost *= np.where(hit.to_numpy(zero_copy_only=False), factor, 1.0)
    return boost


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


def mine(logs: DriveLogs, params: MiningParams | None = None) -> MiningResult:
    """Run every applicable check over ``logs`` and score each frame (see module doc)."""
    params = params or MiningParams()
    batch = build_batch(logs)
    flags = Flags()
    skipped: list[str] = []
    L = batch.lidar
    sev = params.severities
    has_lidar_tracks = bool(len(batch.tracks)) and bool((batch.tracks.cols["sensor"] == 1).any())
    has_cam_tracks = bool(len(batch.tracks)) and bool((batch.tracks.cols["sensor"] == 0).any())

    # lidar <-> camera
    geo = lidar_geometry(batch) if len(L) else None
    assoc = check_lidar_camera(batch, geo, params, flags, skipped) if geo is not None else None
    if geo is None:
        skipped.append("lidar<->camera: no lidar detections")
    cam_match = assoc.cam_match if assoc is not None else None
    cam_keys, track_keys = _hypothesis_keys(batch, params, cam_match)
    lidar_keys = object_key(KEY_LIDAR, np.arange(len(L)))

    # temporal
    if len(L) and not has_lidar_tracks:
        check_lidar_temporal(batch, params, flags, geo)
    if has_lidar_tracks:
        check_tracks(batch, params, flags, track_keys, sensor=1)
    if has_cam_tracks:
        check_tracks(batch, params, flags, track_keys, sensor=0)
    if not len(batch.tracks) and not len(L):
        skipped.append("temporal: no tracks and no lidar detections")
    elif not has_cam_tracks and len(batch.camera):
        skipped.append("temporal (camera): no camera tracks")  # camera detections are not self-associated

    # tracker <-> detector
    if has_cam_tracks and len(batch.camera):
        C = batch.camera
        box = np.stack([C.cols[c] for c in ("x1", "y1", "x2", "y2")], axis=1).astype(np.float64)
        keep = ~(C.score < params.camera_score_threshold)
        i = np.flatnonzero(keep)
        check_tracker_detector(batch, params, flags, 0, box[i], i, C.g[i], (REF_CAMERA, C.cols["det_id"][i]),
                               cam_keys[i], track_keys)
    else:
        skipped.append("tracker<->detector (camera): " + ("no camera detections" if has_cam_tracks else
                                                          "no camera tracks" if len(batch.camera) else
                                                          "no camera detections and no camera tracks"))
    if has_lidar_tracks and len(L):
        i = np.flatnonzero((L.score >= params.lidar_score_threshold) & (geo.visible > 0))
        check_tracker_detector(batch, params, flags, 1, geo.box[i], i, L.g[i], (REF_LIDAR, L.cols["det_id"][i]),
                               lidar_keys[i], track_keys)
    else:
        skipped.append("tracker<->detector (lidar): " + ("no lidar tracks (lidar detections are self-associated "
                                                         "across frames instead)" if len(L) else "no lidar detections"))

    # uncertainty
    if len(L):
        check_uncertainty(L.g, L.score, params.uncertainty_band, params.lidar_score_threshold,
                          sev.uncertain * size_factor(geo.box[:, 3] - geo.box[:, 1], params),
                          flags, lidar_keys, (REF_LIDAR, L.cols["det_id"]))
    side, _, _ = camera_side(batch, params)
    if side is not None:
        stream = batch.camera if side.key_space == KEY_CAMERA else batch.tracks
        score = stream.score[side.idx]
        if np.isfinite(score).any():
            keys = cam_keys[side.idx] if side.key_space == KEY_CAMERA else track_keys[side.idx]
            center = max(params.camera_score_threshold, params.camera_uncertainty_band[0])
            h = (stream.cols["y2"][side.idx] - stream.cols["y1"][side.idx]).astype(np.float64)
            check_uncertainty(stream.g[side.idx], np.nan_to_num(score, nan=1.0), params.camera_uncertainty_band,
                              center, sev.uncertain * size_factor(h, params), flags, keys, (side.ref_kind, side.ref_id))
        else:
            skipped.append("uncertainty (camera): the camera source reports no confidence")

    # integrity: boxes without a positive size (validation keeps such logs, with a warning)
    check_invalid_boxes(batch, params, flags, lidar_keys, cam_keys, track_keys)

    return _assemble(batch, logs, flags, skipped, params, cam_match)


def check_invalid_boxes(batch: Batch, params: MiningParams, flags: Flags, lidar_keys: np.ndarray,
                        cam_keys: np.ndarray, track_keys: np.ndarray) -> None:
    sev = params.severities.invalid_box
    L = batch.lidar
    if len(L):
        i = np.flatnonzero((L.cols["l"] <= 0) | (L.cols["w"] <= 0) | (L.cols["h"] <= 0))
        flags.add("invalid_box", L.g[i], sev, lidar_keys[i], (REF_LIDAR, L.cols["det_id"][i]))
    for stream, keys, kind, ids in ((batch.camera, cam_keys, REF_CAMERA, "det_id"), (batch.tracks, track_keys, REF_TRACK, "track_id")):
        if len(stream):
            c = stream.cols
            i = np.flatnonzero((c["x2"] <= c["x1"]) | (c["y2"] <= c["y1"]))
            flags.add("invalid_box", stream.g[i], sev, keys[i], (kind, c[ids][i]))


def _assemble(batch: Batch, logs: DriveLogs, flags: Flags, skipped: list[str], params: MiningParams,
              cam_match: np.ndarray | None) -> MiningResult:
    F = batch.n_frames
    cols = flags.columns()
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
    est = _estimated_objects(batch, params, cam_match)
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
    return MiningResult(flags=flags_t, frames=frames_t, skipped=skipped)


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
