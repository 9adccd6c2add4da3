"""The registry's errors: each message says what is wrong and, where it helps, what to do."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """Base of every registry error (the CLI prints it as one line, exit 2)."""


class VersionNotFound(RegistryError, LookupError):
    """No such version, or the alias points nowhere yet."""


class NoPreviousProduction(RegistryError):
    """Rollback asked for, but production has no earlier production version to go back to."""


class IntegrityError(RegistryError):
    """A stored file does not hash to what its version card says, or a blob write was refused."""


class MetricsError(RegistryError, ValueError):
    """metrics.json is missing, not JSON, or not in the evaluate stage's format."""


class InvalidRegistration(RegistryError, ValueError):
    """A new version's lineage or latency is impossible (a dataset version below 1, a negative
    or non-finite time): nothing is registered."""


class RegistryConflict(RegistryError):
    """Too many concurrent writers won the same compare-and-swap in a row: retry later."""


class CorruptRecord(RegistryError, ValueError):
    """A registry object (version card, alias, history entry, decision, index page) is not
    valid JSON of its kind: the message names the object's key."""


class MissingFiles(IntegrityError):
    """A version's card names a file (blob) the store no longer holds: it cannot become production."""


class GateParamsError(RegistryError, ValueError):
    """The ``promote:`` params do not fit the version (e.g. ``primary`` names a metric its
    metrics do not have): a usage error, nothing is recorded."""
