"""The promotion gate: a pure function from two sets of metrics to a :class:`Verdict`.

Rules (``promote:`` in params.yaml, :class:`~fleetloop.registry.params.PromoteParams`):

* **No production yet**: promote iff the candidate's primary metric reaches ``floor``.
* **Otherwise** promote iff all hold:
  - the candidate's primary metric is better than production's by more than ``min_improvement``;
  - no *gated* slice worsens by more than ``slice_tolerance``. A slice is gated when both models
    report it with a value and at least ``min_support`` objects (``support``) on both sides;
    slices below the support, missing on one side, or null (no objects) are shown, not gated;
* and, in both cases, when ``max_latency_ms`` is set, the candidate's measured latency is known and
  within it.

Reasons name each failing slice with its numbers ("weather=rain: map50 0.410 → 0.330 (−0.080 >
tolerance 0.030, 120 objects)"); ``details["slices"]`` is the per-slice table
``{slice: {candidate, production, delta, support, production_support, gated, ok}}``.

"Better" is ``better``'s direction: higher (the default: mAP) or lower (a miss rate, a loss). With
lower, the floor is a bound from above, and ``delta`` (candidate − production) must fall.
"""

from __future__ import annotations

from typing import Any

from fleetloop.registry.models import Metrics
from fleetloop.registry.params import PromoteParams
from fleetloop.verdict import Verdict

GATE_NAME = "promotion-gate"


def _num(x: float) -> str:
    return f"{x:.3f}"


def _signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", "\u2212")


def _gain(delta: float, params: PromoteParams) -> float:
    """How much better a change of ``delta`` (candidate − production) is: itself, or its negative
    when lower is better."""
    return delta if params.better == "higher" else -delta


def _as_metrics(m: Metrics | dict[str, Any]) -> Metrics:
    return m if isinstance(m, Metrics) else Metrics.model_validate(m)


def decide(
    candidate: Metrics | dict[str, Any],
    production: Metrics | dict[str, Any] | None,
    params: PromoteParams | None = None,
    *,
    latency_ms: float | None = None,
) -> Verdict:
    """Should ``candidate`` replace ``production`` (``None``: there is no production yet)?"""
    params = params or PromoteParams()
    cand = _as_metrics(candidate)
    prod = _as_metrics(production) if production is not None else None
    metric = params.primary
    failures: list[str] = []
    passes: list[str] = []
    details: dict[str, Any] = {"metric": metric, "params": params.model_dump(mode="json")}

    c_primary = cand.overall.value(metric)
    details["primary"] = {"candidate": c_primary, "production": None, "delta": None}

    if prod is None:
        details["baseline"] = "floor"
        if c_primary is None:
            failures.append(f"candidate has no overall {metric}: cannot compare it with the floor {_num(params.floor)}")
        elif _gain(c_primary - params.floor, params) < 0:
            where = "below the floor" if params.better == "higher" else "above the floor (lower is better)"
            failures.append(f"{metric} {_num(c_primary)} is {where} {_num(params.floor)} (no production model yet)")
        else:
            passes.append(f"{metric} {_num(c_primary)} reaches the floor {_num(params.floor)} (first production model"
                          + ("" if params.better == "higher" else "; lower is better") + ")")
        details["slices"] = _slice_table(cand, None, params)
    else:
        details["baseline"] = "production"
        p_primary = prod.overall.value(metric)
        details["primary"]["production"] = p_primary
        if c_primary is None:
            failures.append(f"candidate has no overall {metric}")
        elif p_primary is None:
            # production never measured the metric: anything measured is better than nothing
            passes.append(f"{metric} {_num(c_primary)} (production has no {metric})")
        else:
            delta = c_primary - p_primary
            details["primary"]["delta"] = delta
            need = (f"> {_signed(params.min_improvement)}" if params.better == "higher"
                    else f"< {_signed(-params.min_improvement)}, lower is better")
            line = f"{metric} {_num(p_primary)} → {_num(c_primary)} ({_signed(delta)}, needs {need})"
            if _gain(delta, params) > params.min_improvement:
                passes.append(line)
            else:
                failures.append(f"not better: {line}")
        table = _slice_table(cand, prod, params)
        details["slices"] = table
        gated = [name for name, row in table.items() if row["gated"]]
        bad = [name for name in gated if not table[name]["ok"]]
        for name in bad:
            row = table[name]
            failures.append(
                f"{name}: {metric} {_num(row['production'])} → {_num(row['candidate'])} "
                f"({_signed(row['delta'])} > tolerance {_num(params.slice_tolerance)}, {row['support']} objects)"
            )
        if not bad:
            passes.append(
                f"{len(gated)} slice(s) with ≥ {params.min_support} objects gated, "
                f"none {'dropped' if params.better == 'higher' else 'rose'} more than {_num(params.slice_tolerance)}"
            )

    details["latency_ms"] = latency_ms
    if params.max_latency_ms is not None:
        if latency_ms is None:
            failures.append(f"no latency measured, and the budget is {params.max_latency_ms:g} ms")
        elif latency_ms > params.max_latency_ms:
            failures.append(f"latency {latency_ms:.2f} ms exceeds the budget {params.max_latency_ms:g} ms")
        else:
            passes.append(f"latency {latency_ms:.2f} ms within the budget {params.max_latency_ms:g} ms")
    return Verdict.of(GATE_NAME, failures, passes=passes, **details)


def _slice_table(cand: Metrics, prod: Metrics | None, params: PromoteParams) -> dict[str, dict[str, Any]]:
    metric = params.primary
    c_slices = cand.gated_slices()
    p_slices = prod.gated_slices() if prod is not None else {}
    table: dict[str, dict[str, Any]] = {}
    for name in sorted(set(c_slices) | set(p_slices)):
        c, p = c_slices.get(name), p_slices.get(name)
        cv = c.value(metric) if c is not None else None
        pv = p.value(metric) if p is not None else None
        cs = c.support if c is not None else None
        ps = p.support if p is not None else None
        delta = cv - pv if cv is not None and pv is not None else None
        gated = (
            delta is not None
            and cs is not None and ps is not None
            and cs >= params.min_support and ps >= params.min_support
        )
        if prod is None:
            note = "no production to compare with"
        elif c is None or p is None:
            note = "missing in " + ("candidate" if c is None else "production")
        elif metric not in (c.model_extra or {}) or metric not in (p.model_extra or {}):
            note = f"no {metric} in " + ("candidate" if metric not in (c.model_extra or {}) else "production")
        elif cv is None or pv is None:
            note = "no value (no objects)"
        elif not gated:
            note = f"fewer than {params.min_support} objects"
        else:
            note = ""
        ok = not gated or (delta is not None and -_gain(delta, params) <= params.slice_tolerance + 1e-12)
        table[name] = {
            "candidate": cv,
            "production": pv,
            "delta": delta,
            "support": cs,
            "production_support": ps,
            "gated": gated,
            "ok": ok,
            "note": note,
        }
    return table
