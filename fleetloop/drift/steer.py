"""Drift steers mining: the slices that drifted, kept in the store for the next standalone mining
run (within one weekly cycle the boost is passed in memory)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from fleetloop.store import keys
from fleetloop.store.objects import Store

SLICE_BOOST_KEY = keys.DRIFT_SLICE_BOOST


def save_slice_boost(store: Store, boosts: dict[str, float], source: str) -> None:
    """Persist the drifted slices for the next mining run (written by monitor-drift)."""
    store.put_bytes(SLICE_BOOST_KEY, json.dumps({"slice_boost": boosts, "source": source, "at": datetime.now(UTC).isoformat(timespec="seconds")}).encode())


def latest_slice_boost(store: Store) -> dict[str, float]:
    if not store.exists(SLICE_BOOST_KEY):
        return {}
    data = json.loads(store.get_bytes(SLICE_BOOST_KEY))
    return {str(k): float(v) for k, v in data.get("slice_boost", {}).items()}
