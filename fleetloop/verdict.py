"""One result type for every check that decides: validation, drift, the promotion gate.

A :class:`Verdict` says whether something passed, why (one human sentence per reason), and the
numbers behind it (``details``: JSON-serialisable). It is what artifacts, the CLI's ``--json``
and the registry record.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # what decided: "validation:frames", "drift", "promotion-gate"
    passed: bool
    reasons: list[str] = Field(default_factory=list)  # why it failed (or, when it passed, what mattered)
    details: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, name: str, failures: list[str], *, passes: list[str] | None = None, **details: Any) -> Verdict:
        """Passed when there are no ``failures``; the reasons are the failures, else ``passes``."""
        return cls(name=name, passed=not failures, reasons=failures or list(passes or []), details=details)
