"""A vectorised first pass of a Great Expectations suite over an Arrow table.

    may_fail = screen(suite_dict, table)    # indices of the suite's expectations that may fail

Most batches are clean, and on a clean batch the suite's verdict is all the validation needs.
This pass evaluates the same suite (the JSON files GX runs, ``fleetloop/ingest/suites``) with
pyarrow compute over the table :mod:`fleetloop.ingest.validation` prepares for GX, with GX's
pandas semantics: column-map expectations skip missing values (null, and NaN as pandas reads it);
``ignore_row_if="never"`` / ``"neither"`` keep them (a missing value there is unexpected).

It only ever errs towards "may fail": an expectation type or argument it does not know, a
``mostly`` below 1, or any doubt sends the suite to GX, which stays the authority and writes the
report (which rows, which values). So a batch this pass clears is one GX would clear, and a batch
with a problem is reported exactly as before (``tests/unit/test_validation.py`` checks the two
agree expectation by expectation).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _values(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dictionary columns as their values (pandas sees categories as the values)."""
    return col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col


def _present(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Where a value is there as pandas sees it: not null and, for floats, not NaN."""
    return pc.invert(pc.is_null(col, nan_is_null=True))


def _all(mask: Any) -> bool:
    return bool(pc.all(mask).as_py() is not False)  # an empty column passes (GX: nothing unexpected)


def _between(t: pa.Table, kw: dict) -> bool:
    col = _values(t[kw["column"]])
    lo, hi = kw.get("min_value"), kw.get("max_value")
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)) or (lo is None and hi is None):
        return False
    col = col.cast(pa.float64(), safe=False)  # numpy compares int64 with a float bound as float64, too
    conds = []
    if lo is not None:
        conds.append(pc.greater(col, lo) if kw.get("strict_min") else pc.greater_equal(col, lo))
    if hi is not None:
        conds.append(pc.less(col, hi) if kw.get("strict_max") else pc.less_equal(col, hi))
    inside = conds[0] if len(conds) == 1 else pc.and_(conds[0], conds[1])
    return _all(pc.or_kleene(pc.invert(_present(col)), inside))


def _uniques(col: pa.ChunkedArray) -> list:
    """Distinct present values (few for the columns sets and patterns are checked on)."""
    vals = _values(col)
    return pc.unique(vals.filter(_present(vals))).to_pylist()


def _in_set(t: pa.Table, kw: dict) -> bool:
    allowed = kw["value_set"]
    return all(v in allowed for v in _uniques(t[kw["column"]]))


def _null(t: pa.Table, kw: dict) -> bool:
    return not pc.any(_present(t[kw["column"]])).as_py()


def _unique(t: pa.Table, kw: dict) -> bool:
    vals = _values(t[kw["column"]])
    vals = vals.filter(_present(vals))
    return len(pc.unique(vals)) == len(vals)


def _compound_unique(t: pa.Table, kw: dict) -> bool:
    if kw.get("ignore_row_if", "all_values_are_missing") != "never":
        return False
    cols = kw["column_list"]
    codes = [c for c in (_codes(t[name]) for name in cols) if c is not None]
    if len(codes) == len(cols):  # keys packed into one int64: a sort instead of a hash group-by
        key, span = np.zeros(len(t), np.int64), 1
        for c in codes:
            lo, hi = (int(c.min()), int(c.max())) if c.size else (0, 0)
            span *= hi - lo + 1
            if span >= 2**62:
                break
            key = key * (hi - lo + 1) + (c - lo)
        else:
            key.sort()
            return not bool((key[1:] == key[:-1]).any())
    sub = pa.table({c: _values(t[c]) for c in cols})  # nulls (pandas: equal to each other) or floats
    return sub.group_by(cols).aggregate([]).num_rows == sub.num_rows


def _codes(col: pa.ChunkedArray) -> np.ndarray | None:
    """int64 codes of an integer or string column with no nulls (equal values, equal codes), else None."""
    if col.null_count:
        return None
    if pa.types.is_integer(col.type):
        return col.to_numpy().astype(np.int64, copy=False)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = col.dictionary_encode()
    if pa.types.is_dictionary(col.type):
        col = col.unify_dictionaries()
        return np.concatenate([c.indices.to_numpy().astype(np.int64) for c in col.chunks]) if col.num_chunks \
            else np.zeros(0, np.int64)
    return None


def _pair_greater(t: pa.Table, kw: dict) -> bool:
    if kw.get("ignore_row_if", "both_values_are_missing") != "neither":
        return False
    a, b = _values(t[kw["column_A"]]), _values(t[kw["column_B"]])
    cmp = pc.greater_equal(a, b) if kw.get("or_equal") else pc.greater(a, b)
    both = pc.and_(_present(a), _present(b))  # "neither": a missing value is unexpected
    return _all(pc.and_kleene(both, cmp).fill_null(False))


def _regex(t: pa.Table, kw: dict) -> bool:
    pattern = re.compile(kw["regex"])  # pandas' str.contains: a search with Python's re
    return all(pattern.search(str(v)) for v in _uniques(t[kw["column"]]))


def _columns(t: pa.Table, kw: dict) -> bool:
    return set(t.column_names) == set(kw["column_set"])  # exact: passes with or without exact_match


_CHECKS: dict[str, Callable[[pa.Table, dict], bool]] = {
    "expect_column_values_to_be_between": _between,
    "expect_column_values_to_be_in_set": _in_set,
    "expect_column_values_to_be_null": _null,
    "expect_column_values_to_be_unique": _unique,
    "expect_compound_columns_to_be_unique": _compound_unique,
    "expect_column_pair_values_a_to_be_greater_than_b": _pair_greater,
    "expect_column_values_to_match_regex": _regex,
    "expect_table_columns_to_match_set": _columns,
}
_KNOWN_KWARGS = {"column", "column_A", "column_B", "column_list", "column_set", "exact_match", "min_value", "max_value",
                 "strict_min", "strict_max", "value_set", "regex", "or_equal", "ignore_row_if"}


def screen(suite: dict, table: pa.Table) -> list[int]:
    """Indices of ``suite["expectations"]`` that may fail on ``table`` (empty: GX would pass them all)."""
    out = []
    for i, e in enumerate(suite["expectations"]):
        check = _CHECKS.get(e.get("type", ""))
        kw = e.get("kwargs", {})
        try:
            ok = (check is not None and set(kw) <= _KNOWN_KWARGS and kw.get("mostly", 1) == 1 and check(table, kw))
        except (KeyError, TypeError, ValueError, pa.ArrowException):
            ok = False  # a missing column or a type the check cannot compare: let GX say what is wrong
        if not ok:
            out.append(i)
    return out

