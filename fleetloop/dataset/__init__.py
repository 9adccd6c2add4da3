"""Step 4 of the loop: the DVC-versioned labeled dataset (grow, splits by log, manifest, lineage).

Public API (docs/dataset.md has the layout and the guarantees)::

    dataset_config(settings) -> DatasetConfig
    grow(store, config, params, *, validate, now=None) -> GrowResult
    status(config) -> DatasetStatus ; history(config) -> list[VersionInfo]
    checkout(version, to_dir, config) -> CheckoutResult ; materialize(dir) -> (frames, labels)
    split_of(log_id, ratios) -> "train" | "val" | "test"
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Lazy: fleetloop.params imports fleetloop.dataset.params, which must not pull pyarrow and git in.
_EXPORTS = {
    "materialize": "batches",
    "CheckoutResult": "versions", "DatasetStatus": "versions", "checkout": "versions", "history": "versions",
    "status": "versions",
    "DatasetConfig": "config", "DatasetError": "config", "dataset_config": "config",
    "GrowResult": "growth", "grow": "growth",
    "Manifest": "manifest", "VersionInfo": "manifest",
    "split_of": "splits",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"fleetloop.dataset.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'fleetloop.dataset' has no attribute {name!r}")


__all__ = [
    "CheckoutResult",
    "DatasetConfig",
    "DatasetError",
    "DatasetStatus",
    "GrowResult",
    "Manifest",
    "VersionInfo",
    "checkout",
    "dataset_config",
    "grow",
    "history",
    "materialize",
    "split_of",
    "status",
]
