"""A pydantic ``ValidationError`` as words a person reads on one line.

pydantic's own text spans lines, links to its docs and labels a validator's message "Value
error, ". Every boundary that validates (params files, settings, flow parameters, registry
metrics and lineage) reports its errors through :func:`problems` and :func:`first_problem`, each
adding its own context (the file, the metrics source, the parameter).
"""

from __future__ import annotations

from typing import NamedTuple

from pydantic import ValidationError


class Problem(NamedTuple):
    where: str  # the field's dotted location ("" for the whole object)
    what: str  # the validator's own words

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what


def problems(exc: ValidationError, skip: int = 0) -> list[Problem]:
    """Every problem of ``exc``, its location without the first ``skip`` parts."""
    return [Problem(".".join(str(p) for p in e["loc"][skip:]), str(e["msg"]).removeprefix("Value error, "))
            for e in exc.errors()]


def first_problem(exc: ValidationError, skip: int = 0) -> tuple[Problem, int]:
    """The first problem and how many more there are."""
    found = problems(exc, skip)
    return found[0], len(found) - 1
