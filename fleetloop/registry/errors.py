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
