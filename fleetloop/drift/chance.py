"""How far two windows differ by chance: a permutation test of each feature's drift score over
whole logs.

The frames of one log are not independent draws: consecutive frames share the scene, the weather,
the traffic. Two weeks of a dozen logs each differ in almost every per-frame feature by more than
the distance threshold (0.1 normed Wasserstein) from the scenes driven alone: two weeks of the
simulated fleet drawn from one and the same mix had 10 to 13 of 13 features over it, so every
week raised a drift alert and steered mining toward whatever happened to differ.

So a feature drifts only when its distance is over the threshold (the size of change worth acting
on) **and** unlikely from the logs alone: the two windows' logs are pooled and dealt at random
into two windows of the same numbers of logs, ``permutations`` times, and the feature's
``p_value`` is the share of those deals (the observed one counted in) whose distance is at least
the observed one. It drifts when ``p_value <= significance``.

The distances are the ones Evidently reports (:mod:`fleetloop.drift.report`), computed here for
every deal at once: per-log histograms on a common grid (every distinct value when there are at
most :data:`GRID` of them, which makes the numerical distance exact, else :data:`GRID` bins of about equal counts),
dealt by one matrix product. ``tests/unit/test_drift_chance.py`` checks the observed values
against Evidently's.

A log present in both windows counts as two units (its frames in each). A window of more than
:data:`MAX_UNITS` logs is dealt in that many random groups of whole logs (groups are exchangeable
too, so the test stays valid, and the matrix product small). When there are at most
``permutations + 1`` ways to deal the logs (7 logs against 4: 330), each way is dealt once and the
p-value is exact. When the logs cannot be dealt in enough ways for the test to reach
``significance`` (the smallest p-value, the observed split's share of the ways, twice that for
windows of as many logs since the mirror deal is as far apart, is over it: 1 log against 1, 2
against 3, 3 against 3), it is not applied and the threshold alone decides, as the summary's
``chance_check`` says.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: most grid points of a numerical feature's histograms (its distinct values when fewer)
GRID = 1024
#: most units per window (beyond, whole logs are grouped at random)
MAX_UNITS = 200
DEFAULT_PERMUTATIONS = 499
DEFAULT_SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class ChanceCheck:
    applied: bool
    note: str  # what was done, for a person (the summary's ``chance_check``)
    p_values: dict[str, float]  # feature -> p-value (empty when not applied)
    observed: dict[str, float] = field(default_factory=dict)  # feature -> its distance, as computed here


def _window_units(log_id: pd.Series, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """Per row, its unit in one window: its log, or, beyond :data:`MAX_UNITS` logs, one of
    :data:`MAX_UNITS` random groups of whole logs (still exchangeable, so the test stays valid;
    the matrix product stays small). Also the numbers of logs and units."""
    index, logs = pd.factorize(log_id.astype(str))
    n_logs = len(logs)
    if n_logs <= MAX_UNITS:
        return index.astype(np.int64), n_logs, n_logs
    group = rng.permutation(n_logs) % MAX_UNITS
    return group[index].astype(np.int64), n_logs, MAX_UNITS


def _units(reference: pd.DataFrame, current: pd.DataFrame,
           rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]] | None:
    """Per row (reference rows first), the index of its (window, unit); the numbers of reference
    and current logs; and of their units. None without a ``log_id`` column."""
    if "log_id" not in reference.columns or "log_id" not in current.columns:
        return None
    r, ref_logs, n_ref = _window_units(reference["log_id"], rng)
    c, cur_logs, n_cur = _window_units(current["log_id"], rng)
    return np.concatenate([r, c + n_ref]), (ref_logs, cur_logs), (n_ref, n_cur)


def _deals(n_ref: int, n_cur: int, permutations: int, rng: np.random.Generator) -> np.ndarray:
    """(permutations + 1, units) 0/1 matrix: row 0 is the observed split, the others random deals
    of the pooled units into ``n_ref`` reference units and the rest; or, when there are at most
    ``permutations + 1`` ways to deal them, every way once (row 0 still the observed split)."""
    n = n_ref + n_cur
    ways = math.comb(n, n_ref)
    if ways <= permutations + 1:  # every deal once (the first is the observed split): an exact p-value
        deals = np.zeros((ways, n))
        for row, chosen in enumerate(itertools.combinations(range(n), n_ref)):
            deals[row, list(chosen)] = 1.0
        return deals
    ranks = np.argsort(rng.random((permutations, n)), axis=1)
    deals = np.zeros((permutations + 1, n))
    deals[0, :n_ref] = 1.0
    np.put_along_axis(deals[1:], ranks[:, :n_ref], 1.0, axis=1)
    return deals


def _wasserstein(values: np.ndarray, unit: np.ndarray, n_units: int, deals: np.ndarray) -> np.ndarray:
    """Normed Wasserstein distance (Evidently's ``wasserstein``: earth mover's distance over the
    reference's standard deviation, at least 0.001) of every deal; NaN where a side has no value."""
    grid, g = np.unique(values, return_inverse=True)
    if len(grid) > GRID:  # GRID bins of about equal counts, each at the mean of its values
        counts = np.bincount(g, minlength=len(grid)).astype(np.float64)
        mid_rank = np.cumsum(counts) - counts / 2
        coarse = np.minimum((mid_rank * GRID / len(values)).astype(np.int64), GRID - 1)
        coarse = np.unique(coarse, return_inverse=True)[1]  # no empty bin
        mass = np.bincount(coarse, weights=counts)
        grid = np.bincount(coarse, weights=counts * grid) / mass
        g = coarse[g]
    hist = np.bincount(unit * len(grid) + g, minlength=n_units * len(grid)).reshape(n_units, len(grid)).astype(np.float64)
    moments = np.stack([np.bincount(unit, minlength=n_units).astype(np.float64),
                        np.bincount(unit, weights=values, minlength=n_units),
                        np.bincount(unit, weights=values * values, minlength=n_units)], axis=1)
    ref_h, cur_h = deals @ hist, (1.0 - deals) @ hist
    ref_n, cur_n = ref_h.sum(axis=1), cur_h.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cdf_gap = np.abs(np.cumsum(ref_h, axis=1) / ref_n[:, None] - np.cumsum(cur_h, axis=1) / cur_n[:, None])
        emd = (cdf_gap[:, :-1] * np.diff(grid)).sum(axis=1)
        n, s1, s2 = (deals @ moments).T
        std = np.sqrt(np.maximum(s2 / n - (s1 / n) ** 2, 0.0))
        out = emd / np.maximum(std, 0.001)
    out[(ref_n == 0) | (cur_n == 0)] = np.nan
    return out


def _jensenshannon(codes: np.ndarray, unit: np.ndarray, n_units: int, deals: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (natural log, as Evidently's ``jensenshannon`` through scipy) of the
    value shares of every deal; NaN where a side has no value."""
    k = int(codes.max()) + 1
    counts = np.bincount(unit * k + codes, minlength=n_units * k).reshape(n_units, k).astype(np.float64)
    ref_c, cur_c = deals @ counts, (1.0 - deals) @ counts
    ref_n, cur_n = ref_c.sum(axis=1), cur_c.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p, q = ref_c / ref_n[:, None], cur_c / cur_n[:, None]
        m = (p + q) / 2

        def kl(a: np.ndarray) -> np.ndarray:
            return np.where(a > 0, a * np.log(a / m), 0.0).sum(axis=1)

        out = np.sqrt(np.maximum((kl(p) + kl(q)) / 2, 0.0))
    out[(ref_n == 0) | (cur_n == 0)] = np.nan
    return out


def chance_check(reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str], categorical: list[str], *,
                 significance: float = DEFAULT_SIGNIFICANCE, permutations: int = DEFAULT_PERMUTATIONS,
                 seed: int = 0) -> ChanceCheck:
    """Each feature's p-value under random deals of the windows' logs (module doc)."""
    if not 0 < significance <= 1:
        raise ValueError(f"significance must be in (0, 1], got {significance}")
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    rng = np.random.default_rng(seed)
    units = _units(reference, current, rng)
    if units is None:
        return ChanceCheck(False, "not applied: the windows have no log_id column; the threshold alone decides", {})
    unit, (ref_logs, cur_logs), (n_ref, n_cur) = units
    logs = f"{ref_logs} reference and {cur_logs} current log(s)" + \
        (f" (in {n_ref} and {n_cur} random groups of whole logs)" if (n_ref, n_cur) != (ref_logs, cur_logs) else "")
    if significance >= 1:
        return ChanceCheck(False, "not applied (significance 1); the threshold alone decides", {})
    # the smallest p-value a deal can give: the observed split's own share of the ways, twice that
    # for windows of as many units (the mirror deal, the windows swapped, is as far apart)
    ways = math.comb(n_ref + n_cur, n_ref)
    smallest = (2 if n_ref == n_cur else 1) / ways
    if smallest > significance:
        return ChanceCheck(False, f"not applied: {logs} can be dealt in too few ways ({ways}; the smallest "
                                  f"p-value is {smallest:.2g}) to reach significance {significance:g}; "
                                  "the threshold alone decides", {})
    deals = _deals(n_ref, n_cur, permutations, rng)
    dealt = f"dealt in every one of their {ways} ways" if len(deals) == ways else f"re-dealt {permutations} times"
    n_units = n_ref + n_cur
    p_values: dict[str, float] = {}
    observed_distance: dict[str, float] = {}
    for name in numerical + categorical:
        column = pd.concat([reference[name], current[name]], ignore_index=True)
        if name in numerical:
            values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
            ok = np.isfinite(values)
            if not ok.any():
                continue
            dist = _wasserstein(values[ok], unit[ok], n_units, deals)
        else:
            ok = column.notna().to_numpy()
            if not ok.any():
                continue
            codes = pd.factorize(column[ok].astype(str))[0].astype(np.int64)
            dist = _jensenshannon(codes, unit[ok], n_units, deals)
        observed, null = dist[0], dist[1:]
        null = null[np.isfinite(null)]
        if not np.isfinite(observed) or not len(null):
            continue
        # at least as large, up to rounding (a deal equal to the observed split counts)
        p_values[name] = float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + len(null)))
        observed_distance[name] = float(observed)
    return ChanceCheck(True, f"{logs} {dealt}; a feature drifts when over the threshold "
                             f"and p <= {significance:g}", p_values, observed_distance)
