"""Frame priority and budgeted, diverse selection.

Priority of a frame = expected number of real perception errors in it, per unit of labeling
cost:

* each flag says "this sensor is wrong about this object with probability ``severity``";
  flags on one object and sensor combine by noisy-OR (``1 - prod(1 - p)``), so three weak
  hints on one object do not count as three errors;
* the frame's expected errors are the sum over its objects and the judged sensors (an object
  that both the lidar and the judged camera missed is two errors);
* labeling a frame costs about 1 + its number of objects, so the expected errors are divided by
  ``(1 + estimated objects) ** cost_exponent`` (0: ignore cost, 1: errors per unit cost);
* ``slice_boost`` multiplies frames of drifted slices (set by the drift monitor).

Selection under a budget is greedy on that priority with diversity: once a frame is taken,
frames of the same log within ``diversity_window`` are discounted by ``diversity_similarity``
each time, so a run of near-identical consecutive frames cannot eat the budget. The budget is
a number of frames (:func:`select`) or a labelling cost (:func:`select_cost`: frames are taken
by expected errors per unit of estimated cost, 1 + estimated objects, until the cost is spent).
"""

from __future__ import annotations

import heapq

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetloop.mine.params import MiningParams


def object_probabilities(g: np.ndarray, obj: np.ndarray, severity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noisy-OR of the flags of each object: returns (frame of each object, P(object is wrong))."""
    if obj.size == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    # object keys are unique across the batch and each object lives in one frame
    order = np.argsort(obj, kind="stable")
    so = obj[order]
    first = np.ones(so.size, bool)
    first[1:] = so[1:] != so[:-1]
    inv = np.empty(so.size, np.int64)
    inv[order] = np.cumsum(first) - 1
    n_obj = int(first.sum())
    log_q = np.bincount(inv, weights=np.log1p(-np.minimum(severity.astype(np.float64), 0.999999)), minlength=n_obj)
    return g[order][first], -np.expm1(log_q)


def expected_errors(n_frames: int, g: np.ndarray, obj: np.ndarray, severity: np.ndarray) -> np.ndarray:
    """Per frame: the sum over objects and judged sensors of P(that sensor is wrong about it)."""
    from fleetloop.mine.flags import split_kinds

    g, obj, severity = split_kinds(g, obj, severity)
    og, p = object_probabilities(g, obj, severity)
    return np.bincount(og, weights=p, minlength=n_frames)


def smooth(values: np.ndarray, frame_log: np.ndarray, frame_no: np.ndarray, share: float) -> np.ndarray:
    """Keep ``1 - share`` of each frame's value and give ``share / 2`` to each of its neighbours
    (same log, consecutive frame index). At a log's ends the frame keeps the missing half."""
    if share <= 0 or values.size == 0:
        return values.astype(np.float64)
    v = values.astype(np.float64)
    link = np.zeros(v.size, bool)  # frame i and i + 1 are neighbours
    link[:-1] = (frame_log[1:] == frame_log[:-1]) & (frame_no[1:] == frame_no[:-1] + 1)
    prev_v = np.where(np.r_[False, link[:-1]], np.r_[0.0, v[:-1]], v)
    next_v = np.where(link, np.r_[v[1:], 0.0], v)
    return (1.0 - share) * v + share / 2.0 * (prev_v + next_v)


def priority(expected: np.ndarray, est_objects: np.ndarray, boost: np.ndarray, params: MiningParams) -> np.ndarray:
    return expected / np.power(1.0 + est_objects, params.cost_exponent) * boost


def rank(frames: pa.Table) -> pa.Table:
    """Frames sorted by score, highest first (ties: log_id, then frame, ascending)."""
    if frames.num_rows == 0:
        return frames
    return frames.sort_by([("score", "descending"), ("log_id", "ascending"), ("frame", "ascending")])


def frame_cost(frames: pa.Table) -> np.ndarray:
    """Estimated labelling cost of each frame: 1 + its estimated objects."""
    if "est_objects" not in frames.column_names:
        return np.ones(frames.num_rows)
    return 1.0 + frames.column("est_objects").to_numpy(zero_copy_only=False).astype(np.float64)


def select_cost(frames: pa.Table, budget_cost: float, params: MiningParams | None = None) -> pa.Table:
    """Pick frames by expected errors per unit of estimated labelling cost (1 + estimated
    objects), with diversity, until their summed cost would exceed ``budget_cost``.

    Same output as :func:`select`, plus a ``cost`` column."""
    params = params or MiningParams()
    if not budget_cost > 0:
        raise ValueError(f"budget_cost must be > 0, got {budget_cost}")
    cost = frame_cost(frames)
    # score = errors / cost ** a (times boosts): per unit of cost = score / cost ** (1 - a)
    per_cost = frames.column("score").to_numpy(zero_copy_only=False).astype(np.float64) / cost ** (1.0 - params.cost_exponent)
    t = frames.append_column("_cost", pa.array(cost)).set_column(
        frames.column_names.index("score"), "score", pa.array(per_cost))
    out = select(t, None, params, cost_budget=budget_cost)
    i = out.column_names.index("_cost")
    return out.set_column(i, "cost", out.column(i))


def select(frames: pa.Table, budget: int | None = None, params: MiningParams | None = None, *,
           cost_budget: float | None = None) -> pa.Table:
    """Pick ``budget`` frames greedily by score with temporal diversity (see module doc).

    Returns the picked rows in pick order, with a ``rank`` column (1 = label first) and
    ``selected_score`` (the score after the diversity discount at the time of the pick).
    With ``cost_budget`` (and a ``_cost`` column) picks stop before the summed cost exceeds it."""
    params = params or MiningParams()
    budget = params.budget if budget is None else budget
    if cost_budget is not None:
        budget = frames.num_rows
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    n = frames.num_rows
    if n == 0 or budget == 0:
        empty = frames.slice(0, 0)
        return empty.append_column("rank", pa.array([], pa.int64())).append_column("selected_score", pa.array([], pa.float64()))
    ranked = rank(frames)
    score = ranked.column("score").to_numpy().astype(np.float64)
    cost = ranked.column("_cost").to_numpy() if cost_budget is not None else None
    spent = 0.0
    log_codes = pc.dictionary_encode(ranked.column("log_id")).combine_chunks()
    log = log_codes.indices.to_numpy().astype(np.int64)
    frame = ranked.column("frame").to_numpy().astype(np.int64)
    window, sim = params.diversity_window, params.diversity_similarity
    # neighbours of a row: same log, |frame difference| <= window. Position lookup by (log, frame).
    key = (log << 32) | frame
    by_key = np.argsort(key, kind="stable")
    sorted_keys = key[by_key]
    hits = np.zeros(n, np.int64)  # how many selected neighbours each row has
    taken = np.zeros(n, bool)
    demoted: list[tuple[float, int, int]] = []  # heap of (-discounted score, row, hits when pushed)
    picks: list[int] = []
    picked_scores: list[float] = []
    ptr = 0  # next row in score order that has not been discounted
    while len(picks) < budget:
        while ptr < n and (taken[ptr] or hits[ptr] > 0):
            ptr += 1
        while demoted and (taken[demoted[0][1]] or demoted[0][2] != hits[demoted[0][1]]):
            heapq.heappop(demoted)
        if ptr >= n and not demoted:
            break
        if demoted and (ptr >= n or (-demoted[0][0], -demoted[0][1]) > (score[ptr], -ptr)):
            neg, i, _ = heapq.heappop(demoted)
            value = -neg
        else:
            i, value = ptr, score[ptr]
        if cost is not None:
            if spent + cost[i] > cost_budget:
                break
            spent += cost[i]
        taken[i] = True
        picks.append(i)
        picked_scores.append(value)
        if window > 0 and sim > 0:
            lo = np.searchsorted(sorted_keys, key[i] - window)
            hi = np.searchsorted(sorted_keys, key[i] + window, side="right")
            nb = by_key[lo:hi]
            nb = nb[(log[nb] == log[i]) & ~taken[nb]]
            hits[nb] += 1
            for j in nb.tolist():
                heapq.heappush(demoted, (-score[j] * (1.0 - sim) ** hits[j], j, int(hits[j])))
    out = ranked.take(pa.array(picks, pa.int64()))
    out = out.append_column("rank", pa.array(np.arange(1, len(picks) + 1), pa.int64()))
    return out.append_column("selected_score", pa.array(picked_scores, pa.float64()))
