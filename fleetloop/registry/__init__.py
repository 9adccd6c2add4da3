"""Step 6 of the loop: the model registry (versions, aliases, history) and the promotion gate.

* ``api``: :class:`Registry` — register, get, list, download, promote, set_candidate, rollback,
  history, decisions.
* ``gate``: :func:`decide` — the promotion gate, a pure function returning a Verdict.
* ``models``: the stored objects (``ModelVersion``, ``Metrics``, ``AliasState``, ``AliasMove``,
  ``Decision``); ``keys``: the store layout; ``versions``: version claim and index; ``aliases``:
  the alias/history protocol; ``blobs``: content-addressed files; ``errors``.

docs/registry.md describes the layout and why it is safe under concurrent writers.
"""

from fleetloop.registry.api import DEFAULT_MODEL, Registry, load_metrics
from fleetloop.registry.errors import (
    IntegrityError,
    InvalidRegistration,
    MetricsError,
    NoPreviousProduction,
    RegistryConflict,
    RegistryError,
    VersionNotFound,
)
from fleetloop.registry.gate import decide
from fleetloop.registry.models import AliasMove, AliasState, Decision, Lineage, Metrics, ModelVersion, Registration
from fleetloop.registry.params import PromoteParams

__all__ = [
    "DEFAULT_MODEL",
    "AliasMove",
    "AliasState",
    "Decision",
    "IntegrityError",
    "InvalidRegistration",
    "Lineage",
    "Metrics",
    "MetricsError",
    "ModelVersion",
    "NoPreviousProduction",
    "PromoteParams",
    "Registration",
    "Registry",
    "RegistryConflict",
    "RegistryError",
    "VersionNotFound",
    "decide",
    "load_metrics",
]
