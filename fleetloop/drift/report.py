"""Drift between two windows of per-frame features, with Evidently 0.7 (the only module that
imports it; only the new ``Report`` / ``Dataset`` / ``DataDefinition`` API).

Methods are fixed per column type, so a verdict does not change with the window size: numerical
features use the normed Wasserstein distance (``wasserstein``: earth mover's distance divided by
the reference's standard deviation), categorical ones the Jensen-Shannon distance
(``jensenshannon``); both are distances, drift when the value is at or above ``threshold``
(0.1 by default). Evidently's automatic choice would switch from p-value tests to distances at
1,000 reference rows, and a K-S p-value flags every tiny shift on a million rows.

Statistics use every row. The HTML is drawn from at most ``display_sample`` rows per window: when
a window is larger, the statistics come from a lean run on all rows (one ``ValueDrift`` per
column) and the HTML from a second ``DataDriftPreset`` run on a uniform sample, so its numbers
may differ slightly from ``summary.json`` (which is authoritative; ``html_from_sample`` says so).
When both windows fit, one preset run gives both and they agree exactly.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fleetloop.drift.chance import DEFAULT_PERMUTATIONS, DEFAULT_SIGNIFICANCE, chance_check
from fleetloop.drift.features import META_COLUMNS
from fleetloop.drift.summary import (
    DriftSummary,
    FeatureDrift,
    SkippedFeature,
    TestOutcome,
)
from fleetloop.drift.trend import agreement_trend

log = logging.getLogger(__name__)

NUM_METHOD = "wasserstein"
CAT_METHOD = "jensenshannon"
DEFAULT_THRESHOLD = 0.1
DEFAULT_DRIFT_SHARE = 0.5
DEFAULT_DISPLAY_SAMPLE = 50_000
HTML_NAME = "drift_report.html"
SUMMARY_NAME = "summary.json"
#: a browser opens Evidently's self-contained HTML comfortably below this
HTML_LIMIT_BYTES = 10 * 1024 * 1024


class DriftInputError(ValueError):
    """The two windows cannot be compared (empty window, missing or mistyped columns)."""


@dataclass
class DriftResult:
    summary: DriftSummary
    _snapshot: Any  # the Evidently snapshot the HTML is rendered from

    def save_html(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            self._snapshot.save_html(str(tmp))
            tmp.replace(path)
        except BaseException:  # no half-written or orphaned 5 MB temporary left in the user's directory
            tmp.unlink(missing_ok=True)
            raise
        size = path.stat().st_size
        if size > HTML_LIMIT_BYTES:
            log.warning("drift report %s is %.1f MB (over %.0f MB): lower display_sample",
                        path, size / 1e6, HTML_LIMIT_BYTES / 1e6)
        self.summary.report_html = path.name
        self.summary.report_html_bytes = size
        return path

    def html_verdicts(self) -> dict[str, bool]:
        """Per feature, the verdict the HTML report shows: Evidently's, by the threshold alone
        (equal to ``summary``'s ``over_threshold`` unless the HTML was drawn from a sample, when a
        feature near its threshold can differ)."""
        kinds = {name: fd.kind for name, fd in self.summary.features.items()}
        features, _ = _parse(self._snapshot.dict(), [n for n, k in kinds.items() if k == "numerical"],
                             [n for n, k in kinds.items() if k == "categorical"])
        return {name: fd.drifted for name, fd in features.items()}

    def write(self, out_dir: Path | str) -> dict[str, Path]:
        """Write ``drift_report.html`` and ``summary.json`` into ``out_dir``."""
        out_dir = Path(out_dir)
        html = self.save_html(out_dir / HTML_NAME)
        summary = self.summary.save(out_dir / SUMMARY_NAME)
        return {"html": html, "summary": summary}


def feature_columns(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(numerical, categorical) feature columns of a features frame (meta columns excluded)."""
    num, cat = [], []
    for c in df.columns:
        if c in META_COLUMNS:
            continue
        dt = df[c].dtype
        if pd.api.types.is_bool_dtype(dt) or isinstance(dt, pd.CategoricalDtype) or pd.api.types.is_object_dtype(dt) \
                or pd.api.types.is_string_dtype(dt):
            cat.append(c)
        elif pd.api.types.is_numeric_dtype(dt):
            num.append(c)
    return num, cat


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    drift_share: float = DEFAULT_DRIFT_SHARE,
    display_sample: int = DEFAULT_DISPLAY_SAMPLE,
    num_method: str = NUM_METHOD,
    cat_method: str = CAT_METHOD,
    columns: list[str] | None = None,
    trend_tolerance: float = 0.05,
    significance: float = DEFAULT_SIGNIFICANCE,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> DriftResult:
    """Compare ``current`` with ``reference`` (feature frames, one row per frame).

    ``columns``: the features to compare (default: every non-meta column of ``reference``;
    numeric dtypes are numerical, object / category / bool are categorical). A feature drifts
    when its distance is at or over ``threshold`` and, where the frames carry ``log_id``, when
    random deals of the windows' logs are as far apart with probability at most ``significance``
    (:mod:`fleetloop.drift.chance`)."""
    _check_inputs(reference, current, threshold, drift_share, display_sample)
    num_all, cat_all = feature_columns(reference)
    if columns is not None:
        unknown = sorted(set(columns) - set(num_all) - set(cat_all))
        if unknown:
            raise DriftInputError(f"columns {unknown} are not feature columns of the reference window")
        num_all = [c for c in num_all if c in columns]
        cat_all = [c for c in cat_all if c in columns]
    missing = sorted(set(num_all + cat_all) - set(current.columns))
    if missing:
        raise DriftInputError(f"current window lacks feature columns {missing} that the reference has")
    for c in num_all:
        if not pd.api.types.is_numeric_dtype(current[c].dtype):
            raise DriftInputError(f"feature {c!r} is numerical in the reference but {current[c].dtype} in the current window")

    num, cat, skipped = _comparable(reference, current, num_all, cat_all)
    if not num and not cat:
        raise DriftInputError(
            "no feature can be compared: every column is empty in a window or constant in both "
            f"({', '.join(s.name for s in skipped)})"
        )
    ref = _frame(reference, num, cat)
    cur = _frame(current, num, cat)

    os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's usage telemetry
    import evidently

    sampled = len(ref) > display_sample or len(cur) > display_sample
    preset = _preset(num + cat, num_method, cat_method, threshold, drift_share)
    if sampled:
        stats = _run_per_column(ref, cur, num, cat, num_method, cat_method, threshold)
        ref_s = ref.sample(n=min(display_sample, len(ref)), random_state=seed) if len(ref) > display_sample else ref
        cur_s = cur.sample(n=min(display_sample, len(cur)), random_state=seed) if len(cur) > display_sample else cur
        display = _run([preset], ref_s, cur_s, num, cat)
    else:
        stats = display = _run([preset], ref, cur, num, cat)
        ref_s, cur_s = ref, cur

    features, tests = _parse(stats if isinstance(stats, dict) else stats.dict(), num, cat)
    chance = chance_check(reference, current, num, cat, significance=significance, permutations=permutations, seed=seed)
    for name, fd in features.items():
        _describe(fd, reference[name], current[name])
        fd.over_threshold = fd.drifted
        fd.p_value = chance.p_values.get(name)
        if fd.p_value is not None:
            fd.drifted = fd.drifted and fd.p_value <= significance
    drifted = [n for n, f in features.items() if f.drifted]
    share = len(drifted) / len(features)
    dataset_drift = share >= drift_share
    tests.append(
        TestOutcome(
            name="share of drifted features",
            status="fail" if dataset_drift else "pass",
            description=f"{len(drifted)} of {len(features)} features drifted ({share:.3f}); "
            f"fails at {drift_share:.3f} or more"
            + (f" (drifted: at or over the threshold and p <= {significance:g} when the logs are re-dealt)"
               if chance.applied else ""),
        )
    )
    summary = DriftSummary(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        evidently_version=evidently.__version__,
        reference_rows=len(reference),
        current_rows=len(current),
        threshold=threshold,
        drift_share=drift_share,
        significance=significance if chance.applied else None,
        chance_check=chance.note,
        num_method=num_method,
        cat_method=cat_method,
        features=features,
        skipped=skipped,
        n_features=len(features),
        n_drifted=len(drifted),
        share_drifted=share,
        dataset_drift=dataset_drift,
        drifted_features=drifted,
        tests=tests,
        tests_passed=sum(t.status == "pass" for t in tests),
        tests_failed=sum(t.status == "fail" for t in tests),
        agreement_trend=agreement_trend(reference, current, tolerance=trend_tolerance),
        html_sample_rows={"reference": len(ref_s), "current": len(cur_s)},
        html_from_sample=sampled,
    )
    return DriftResult(summary=summary, _snapshot=display)


# -- helpers ----------------------------------------------------------------------------------

def _check_inputs(reference, current, threshold, drift_share, display_sample) -> None:
    for name, df in (("reference", reference), ("current", current)):
        if not isinstance(df, pd.DataFrame):
            raise DriftInputError(f"{name} window must be a pandas DataFrame of features, got {type(df).__name__}")
        if len(df) == 0:
            raise DriftInputError(f"{name} window is empty (0 frames): nothing to compare; check its logs / time range")
    if not threshold > 0:
        raise DriftInputError(f"threshold must be > 0, got {threshold}")
    if not 0 < drift_share <= 1:
        raise DriftInputError(f"drift_share must be in (0, 1], got {drift_share}")
    if display_sample < 1:
        raise DriftInputError(f"display_sample must be >= 1, got {display_sample}")


def _comparable(reference, current, num, cat) -> tuple[list[str], list[str], list[SkippedFeature]]:
    """Drop columns Evidently cannot or need not compare: empty in a window, or one constant value
    in both windows (no information; it would only dilute the share of drifted features)."""
    skipped: list[SkippedFeature] = []
    keep_num: list[str] = []
    keep_cat: list[str] = []
    for c in num + cat:
        r, k = reference[c], current[c]
        if c in num:
            r = r.replace([np.inf, -np.inf], np.nan)
            k = k.replace([np.inf, -np.inf], np.nan)
        r_valid, k_valid = r.notna(), k.notna()
        if not r_valid.any() or not k_valid.any():
            where = "both windows" if not r_valid.any() and not k_valid.any() else \
                ("the reference window" if not r_valid.any() else "the current window")
            skipped.append(SkippedFeature(name=c, reason=f"no values in {where}"))
            continue
        r_min, r_max = (r.min(), r.max()) if c in num else (None, None)
        if c in num:
            constant = r_min == r_max and k.min() == r_min and k.max() == r_min
        else:
            values = set(r[r_valid].unique()) | set(k[k_valid].unique())
            constant = len(values) == 1
        if constant:
            value = r_min if c in num else next(iter(values))
            value = value.item() if isinstance(value, np.generic) else value
            skipped.append(SkippedFeature(name=c, reason=f"constant ({value!r}) in both windows"))
            continue
        (keep_num if c in num else keep_cat).append(c)
    return keep_num, keep_cat, skipped


def _frame(df: pd.DataFrame, num: list[str], cat: list[str]) -> pd.DataFrame:
    out = df[num].astype(np.float64).replace([np.inf, -np.inf], np.nan)
    for c in cat:
        out[c] = df[c].astype(str).where(df[c].notna(), None)
    return out


def _value_drift(column: str, method: str, threshold: float):
    from evidently.metrics import ValueDrift

    return ValueDrift(column=column, method=method, threshold=threshold)


def _preset(columns, num_method, cat_method, threshold, drift_share):
    from evidently.presets import DataDriftPreset

    return DataDriftPreset(columns=columns, num_method=num_method, cat_method=cat_method,
                           threshold=threshold, drift_share=drift_share)


def _run(metrics: list, ref: pd.DataFrame, cur: pd.DataFrame, num: list[str], cat: list[str]):
    from evidently import DataDefinition, Dataset, Report

    dd = DataDefinition(numerical_columns=num, categorical_columns=cat)
    # Evidently's preset also correlates the numerical columns (np.corrcoef): a column constant
    # in one window (no green cone all week) divides by a zero spread. Those correlations are not
    # read here; numpy's warning would reach the user's terminal on every such run.
    with np.errstate(divide="ignore", invalid="ignore"):
        return Report(metrics, include_tests=True).run(
            current_data=Dataset.from_pandas(cur, data_definition=dd),
            reference_data=Dataset.from_pandas(ref, data_definition=dd),
        )


def _run_per_column(ref, cur, num, cat, num_method, cat_method, threshold) -> dict:
    """The statistics on every row: one lean report per column on that column alone (Evidently
    copies the whole frame once per drifted column otherwise, which dominates at a million
    rows); their ``dict()`` outputs merged."""
    merged: dict[str, list] = {"metrics": [], "tests": []}
    for c in num + cat:
        is_num = c in num
        snap = _run([_value_drift(c, num_method if is_num else cat_method, threshold)], ref[[c]], cur[[c]],
                    [c] if is_num else [], [] if is_num else [c])
        d = snap.dict()
        merged["metrics"] += d["metrics"]
        merged["tests"] += d["tests"]
    return merged


def _parse(d: dict, num: list[str], cat: list[str]) -> tuple[dict[str, FeatureDrift], list[TestOutcome]]:
    """Per-column results from a snapshot's ``dict()``: ValueDrift metrics (value = the method's
    score, config = method and threshold) and their tests (FAIL = drift detected)."""
    status: dict[str, str] = {}
    tests: list[TestOutcome] = []
    for t in d.get("tests", []):
        params = (t.get("metric_config") or {}).get("params") or {}
        if params.get("type", "").endswith(":ValueDrift"):
            status[params["column"]] = t["status"]
            tests.append(TestOutcome(name=t.get("name", f"drift of {params['column']}"),
                                     status="fail" if t["status"] == "FAIL" else "pass",
                                     description=t.get("description", "")))
    features: dict[str, FeatureDrift] = {}
    for m in d.get("metrics", []):
        cfg = m.get("config") or {}
        if not cfg.get("type", "").endswith(":ValueDrift"):
            continue
        col = cfg["column"]
        if col not in status:
            raise RuntimeError(f"Evidently returned no drift test for column {col!r}; cannot tell its verdict")
        value = m.get("value")
        score = float(value) if value is not None and np.isfinite(value) else None
        features[col] = FeatureDrift(
            name=col, kind="numerical" if col in num else "categorical", method=str(cfg.get("method")),
            threshold=float(cfg["threshold"]), score=score, drifted=status[col] == "FAIL",
        )
    absent = [c for c in num + cat if c not in features]
    if absent:
        raise RuntimeError(f"Evidently returned no drift result for columns {absent}")
    return {c: features[c] for c in num + cat}, tests


def _describe(fd: FeatureDrift, ref: pd.Series, cur: pd.Series) -> None:
    """Window statistics next to the verdict: means (numerical) or value shares (categorical)."""
    if fd.kind == "numerical":
        r = ref.astype(np.float64).replace([np.inf, -np.inf], np.nan)
        c = cur.astype(np.float64).replace([np.inf, -np.inf], np.nan)
        fd.reference_mean = None if r.isna().all() else float(r.mean())
        fd.current_mean = None if c.isna().all() else float(c.mean())
        fd.reference_missing = float(r.isna().mean())
        fd.current_missing = float(c.isna().mean())
    else:
        fd.reference_shares = {str(k): float(v) for k, v in ref.value_counts(normalize=True, dropna=True).items() if v > 0}
        fd.current_shares = {str(k): float(v) for k, v in cur.value_counts(normalize=True, dropna=True).items() if v > 0}
        fd.reference_missing = float(ref.isna().mean())
        fd.current_missing = float(cur.isna().mean())
