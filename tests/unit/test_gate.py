"""The promotion gate on hand-made metrics: a pure function, no store."""

from __future__ import annotations

from typing import Any

import pytest

from fleetloop.registry.gate import GATE_NAME, decide
from fleetloop.registry.models import Metrics
from fleetloop.registry.params import PromoteParams


def metrics(primary: float | None, **slices: tuple[float | None, int]) -> dict[str, Any]:
    """metrics.json with ``weather__rain=(0.4, 120)`` style slices (``__`` becomes ``=``)."""
    return {
        "primary": "map50",
        "overall": {"map50": primary, "support": 812, "frames": 300},
        "per_class": {},
        "slices": {k.replace("__", "="): {"map50": v, "support": n, "frames": 10} for k, (v, n) in slices.items()},
        "extra_key": {"ignored": True},
    }


P = PromoteParams(primary="map50", min_improvement=0.0, min_support=20, slice_tolerance=0.03, floor=0.2)


def test_first_model_is_promoted_only_at_the_floor() -> None:
    assert decide(metrics(0.25), None, P).passed
    assert decide(metrics(0.20), None, P).passed  # reaching the floor is enough
    v = decide(metrics(0.15), None, P)
    assert v.name == GATE_NAME and not v.passed
    assert "below the floor" in v.reasons[0] and "0.150" in v.reasons[0] and "0.200" in v.reasons[0]
    assert not decide(metrics(None), None, P).passed  # no value: not promoted


def test_improvement_on_primary_promotes() -> None:
    v = decide(metrics(0.66, weather__rain=(0.45, 120)), metrics(0.61, weather__rain=(0.41, 120)), P)
    assert v.passed, v.reasons
    assert v.details["primary"]["delta"] == pytest.approx(0.05)
    assert any("map50 0.610 → 0.660" in r for r in v.reasons)


def test_equal_or_worse_primary_is_rejected_and_min_improvement_applies() -> None:
    assert not decide(metrics(0.61), metrics(0.61), P).passed  # must be strictly better
    assert not decide(metrics(0.60), metrics(0.61), P).passed
    strict = P.model_copy(update={"min_improvement": 0.02})
    v = decide(metrics(0.62), metrics(0.61), strict)
    assert not v.passed and v.reasons[0].startswith("not better")
    assert decide(metrics(0.64), metrics(0.61), strict).passed


def test_slice_regression_beyond_tolerance_is_named_with_numbers() -> None:
    v = decide(
        metrics(0.70, weather__rain=(0.33, 120), time_of_day__night=(0.50, 80)),
        metrics(0.61, weather__rain=(0.41, 120), time_of_day__night=(0.52, 80)),
        P,
    )
    assert not v.passed
    assert v.reasons == ["weather=rain: map50 0.410 → 0.330 (−0.080 > tolerance 0.030, 120 objects)"]
    row = v.details["slices"]["weather=rain"]
    assert row["gated"] and not row["ok"] and row["delta"] == pytest.approx(-0.08) and row["support"] == 120
    night = v.details["slices"]["time_of_day=night"]
    assert night["gated"] and night["ok"]  # -0.02 is within the tolerance


def test_each_failing_slice_gets_a_reason() -> None:
    v = decide(
        metrics(0.70, weather__rain=(0.30, 120), attr__green=(0.10, 40)),
        metrics(0.61, weather__rain=(0.41, 120), attr__green=(0.30, 40)),
        P,
    )
    assert not v.passed
    assert [r.split(":")[0] for r in v.reasons] == ["attr=green", "weather=rain"]


def test_slice_drop_within_tolerance_passes_including_the_boundary() -> None:
    assert decide(metrics(0.70, weather__rain=(0.39, 120)), metrics(0.61, weather__rain=(0.41, 120)), P).passed
    assert decide(metrics(0.70, weather__rain=(0.38, 120)), metrics(0.61, weather__rain=(0.41, 120)), P).passed


def test_low_support_slice_is_not_gated() -> None:
    # a big drop on a slice with few objects on either side does not block
    for cand_n, prod_n in ((5, 120), (120, 5), (19, 19)):
        v = decide(metrics(0.70, weather__rain=(0.10, cand_n)), metrics(0.61, weather__rain=(0.41, prod_n)), P)
        assert v.passed, (cand_n, prod_n, v.reasons)
        row = v.details["slices"]["weather=rain"]
        assert not row["gated"] and row["ok"] and "fewer than 20" in row["note"]
    # exactly min_support is gated
    assert not decide(metrics(0.70, weather__rain=(0.10, 20)), metrics(0.61, weather__rain=(0.41, 20)), P).passed


def test_null_slice_metrics_are_shown_not_gated() -> None:
    v = decide(
        metrics(0.70, attr__green=(None, 0), weather__rain=(0.45, 120)),
        metrics(0.61, attr__green=(0.5, 30), weather__rain=(None, 0)),
        P,
    )
    assert v.passed, v.reasons
    assert v.details["slices"]["attr=green"] == {
        "candidate": None, "production": 0.5, "delta": None, "support": 0, "production_support": 30,
        "gated": False, "ok": True, "note": "no value (no objects)",
    }


def test_slice_missing_on_one_side_is_not_gated() -> None:
    v = decide(metrics(0.70, weather__snow=(0.2, 100)), metrics(0.61, weather__rain=(0.41, 120)), P)
    assert v.passed
    assert v.details["slices"]["weather=snow"]["note"] == "missing in production"
    assert v.details["slices"]["weather=rain"]["note"] == "missing in candidate"


def test_per_class_metrics_are_gated_as_class_slices_unless_already_sliced() -> None:
    cand = metrics(0.70)
    prod = metrics(0.61)
    cand["per_class"] = {"cyclist": {"map50": 0.2, "support": 50}}
    prod["per_class"] = {"cyclist": {"map50": 0.5, "support": 50}}
    v = decide(cand, prod, P)
    assert not v.passed and v.reasons[0].startswith("class=cyclist: map50 0.500 → 0.200")
    cand["slices"]["class=cyclist"] = {"map50": 0.5, "support": 50}  # the slice wins over per_class
    prod["slices"]["class=cyclist"] = {"map50": 0.5, "support": 50}
    assert decide(cand, prod, P).passed


def test_lower_is_better_turns_the_floor_the_improvement_and_the_slices_around() -> None:
    """A primary metric that improves downwards (a miss rate): before ``better``, a candidate
    that missed more was promoted and one that missed less was rejected."""
    low = P.model_copy(update={"better": "lower", "floor": 0.3, "min_improvement": 0.01})
    assert decide(metrics(0.25), None, low).passed
    assert decide(metrics(0.30), None, low).passed  # at the bound is enough
    first = decide(metrics(0.35), None, low)
    assert not first.passed and "above the floor (lower is better) 0.300" in first.reasons[0]
    better = decide(metrics(0.20), metrics(0.25), low)
    assert better.passed, better.reasons
    assert any("0.250 → 0.200 (−0.050, needs < −0.010, lower is better)" in r for r in better.reasons)
    assert not decide(metrics(0.245), metrics(0.25), low).passed  # better, but not by more than 0.01
    worse = decide(metrics(0.30), metrics(0.25), low)
    assert not worse.passed and worse.reasons[0].startswith("not better")
    v = decide(metrics(0.20, weather__rain=(0.44, 120), time_of_day__night=(0.31, 80)),
               metrics(0.25, weather__rain=(0.40, 120), time_of_day__night=(0.30, 80)), low)
    assert v.reasons == ["weather=rain: map50 0.400 → 0.440 (+0.040 > tolerance 0.030, 120 objects)"]
    assert v.details["slices"]["time_of_day=night"]["ok"]  # rose 0.01: within the tolerance
    with pytest.raises(ValueError, match="higher"):
        PromoteParams(better="down")


def test_latency_budget() -> None:
    budget = P.model_copy(update={"max_latency_ms": 5.0})
    assert decide(metrics(0.7), metrics(0.6), budget, latency_ms=4.0).passed
    v = decide(metrics(0.7), metrics(0.6), budget, latency_ms=6.5)
    assert not v.passed and v.reasons == ["latency 6.50 ms exceeds the budget 5 ms"]
    v = decide(metrics(0.7), metrics(0.6), budget)
    assert not v.passed and "no latency measured" in v.reasons[0]
    assert not decide(metrics(0.5), None, budget, latency_ms=9.0).passed  # the first model too
    assert decide(metrics(0.7), metrics(0.6), P, latency_ms=1e6).passed  # no budget: not checked


def test_primary_is_the_params_metric_and_metrics_tolerate_extra_keys() -> None:
    cand = {"overall": {"map50": 0.5, "map": 0.40, "support": 10}, "slices": {}, "anything": [1, 2]}
    prod = {"overall": {"map50": 0.6, "map": 0.35, "support": 10}}
    assert decide(cand, prod, PromoteParams(primary="map")).passed
    assert not decide(cand, prod, PromoteParams(primary="map50")).passed
    m = Metrics.model_validate(cand)
    assert m.model_dump()["anything"] == [1, 2]  # kept when stored
    v = decide(cand, prod, PromoteParams(primary="recall"))
    assert not v.passed and "no overall recall" in v.reasons[0]


def test_details_are_json_serialisable() -> None:
    import json

    v = decide(metrics(0.7, weather__rain=(0.3, 120)), metrics(0.6, weather__rain=(0.4, 120)), P, latency_ms=2.0)
    json.dumps(v.model_dump(mode="json"))
    assert set(v.details) >= {"metric", "params", "primary", "slices", "baseline", "latency_ms"}
