"""The one rule for log ids, applied everywhere a log id enters fleetloop (ingest, mine, store).

A log id names objects in the store (``logs/<log_id>/...``), files on disk and rows in every
table, so it must be a safe path segment: 1 to 128 characters, letters, digits, ``.``, ``_``
and ``-``, starting with a letter or digit, and no ``..`` anywhere.

:func:`report_name` gives every id, valid or not, a file-name-safe name for its quarantine
report: a valid id is its own name; any other id gets ``_id-<readable part>-<hash>``, which
starts with ``_`` (so it never equals a valid id) and carries 128 bits of the id's SHA-256 (so
two different ids never share a report).
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["LOG_ID_PATTERN", "MAX_LOG_ID_LENGTH", "InvalidLogIdError", "check_log_id", "is_valid_log_id", "report_name"]

MAX_LOG_ID_LENGTH = 128
LOG_ID_PATTERN = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_LOG_ID_LENGTH - 1}}}$")
_RULE = f"1-{MAX_LOG_ID_LENGTH} letters, digits, '.', '_' or '-', starting with a letter or digit, no '..'"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class InvalidLogIdError(ValueError):
    """A log id that breaks the rule (the message says which part)."""


def is_valid_log_id(log_id: object) -> bool:
    """Whether ``log_id`` follows the rule (see the module docstring)."""
    # fullmatch: a trailing newline does not pass (``$`` alone would let it)
    return isinstance(log_id, str) and bool(LOG_ID_PATTERN.fullmatch(log_id)) and ".." not in log_id


def check_log_id(log_id: object) -> str:
    """``log_id`` itself when valid; else :class:`InvalidLogIdError` with a one-line reason."""
    if is_valid_log_id(log_id):
        return log_id  # type: ignore[return-value]
    raise InvalidLogIdError(f"invalid log_id {_shown(log_id)}: {_why(log_id)} (rule: {_RULE})")


def report_name(log_id: str) -> str:
    """A file-name-safe name for ``log_id``'s reports, distinct for distinct ids."""
    if is_valid_log_id(log_id):
        return log_id
    raw = str(log_id).encode("utf-8", "surrogatepass")
    readable = _UNSAFE.sub("_", str(log_id))[:40].replace("..", "__") or "_"
    return f"_id-{readable}-{hashlib.sha256(raw).hexdigest()[:32]}"


def _why(log_id: object) -> str:
    if not isinstance(log_id, str):
        return f"not a string ({type(log_id).__name__})"
    if not log_id:
        return "empty"
    if len(log_id) > MAX_LOG_ID_LENGTH:
        return f"{len(log_id)} characters, over {MAX_LOG_ID_LENGTH}"
    if ".." in log_id:
        return "contains '..'"
    if not re.match(r"[A-Za-z0-9]", log_id[0]):
        return f"starts with {log_id[0]!r}"
    bad = sorted(set(_UNSAFE.findall(log_id)))
    return "contains " + ", ".join(repr(c) for c in bad[:5])


def _shown(log_id: object) -> str:
    text = repr(log_id)
    return text if len(text) <= 60 else text[:50] + "...'"
