"""Train/validation/test splits by log: a stable function of the log id.

``split_of(log_id, ratios)`` hashes the log id (SHA-256; the first 8 bytes as an integer divided
by 2**64 give a number uniform in [0, 1)) and cuts [0, 1) into ``train``, ``val``, ``test`` by the
cumulative ratios, in that order. The split therefore depends on nothing but the log id and the
ratios: adding data never moves a frame, and every frame of a log lands in the log's split.

The ratios are fixed when a dataset is created (its manifest records them); changing them later
would move logs between splits, so :func:`fleetloop.dataset.growth.grow` keeps the dataset's own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Literal

import pyarrow as pa

__all__ = ["SPLITS", "Split", "split_of", "split_position", "splits_of"]

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


def split_position(log_id: str) -> float:
    """The log's place in [0, 1): SHA-256 of the UTF-8 log id, first 8 bytes big-endian / 2**64."""
    digest = hashlib.sha256(log_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(log_id: str, ratios: Mapping[str, float]) -> Split:
    """``train``, ``val`` or ``test`` for this log under ``ratios`` (shares summing to 1)."""
    u = split_position(log_id)
    edge = 0.0
    for name in SPLITS:
        edge += float(ratios.get(name, 0.0))
        if u < edge:
            return name
    # Rounding can leave the cumulative sum a hair under 1: the last split with a share takes it.
    return next(name for name in reversed(SPLITS) if ratios.get(name, 0.0) > 0)


def splits_of(log_ids: pa.Array | pa.ChunkedArray, ratios: Mapping[str, float]) -> pa.Array:
    """``split_of`` for a column of log ids (hashing each distinct id once)."""
    values = log_ids.to_pylist()
    cache = {v: split_of(v, ratios) for v in set(values)}
    return pa.array([cache[v] for v in values], pa.string())
