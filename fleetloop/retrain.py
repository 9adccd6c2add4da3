"""Retrain → register → gate → promote, as one plain step over a dataset version.

Trains on ``dataset-vN`` in the training workspace (``dvc repro``, :mod:`fleetloop.train.workspace`),
registers the model with its lineage and per-slice metrics (and its ONNX CPU latency when it
has one), makes it the candidate, and runs the promotion gate against production: promoted, or
rejected with one reason per failing slice. Idempotent: a dataset version already trained with
the same training params is not trained again (the registered version is reported). One retrain
per training workspace at a time: a second one waits for the first and reuses its model. With
``train.warm_start`` the candidate starts from the production model's weights.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from fleetloop.dataset.config import DatasetConfig, DatasetError, dataset_config
from fleetloop.params import LoopParams, ParamsError, find_params_file
from fleetloop.registry.api import Registry
from fleetloop.registry.models import Decision, ModelVersion
from fleetloop.settings import Settings
from fleetloop.store.locks import held_or
from fleetloop.store.objects import Store, get_store
from fleetloop.train.workspace import TrainingFailed
from fleetloop.train.workspace import retrain as train_on


class RetrainOutcome(BaseModel):
    dataset_version: int
    model_version: int
    reused: bool = False  # this dataset version and these params were trained before
    promoted: bool
    action: str  # promote | reject | noop
    reasons: list[str] = Field(default_factory=list)
    slices: dict[str, Any] = Field(default_factory=dict)  # the gate's per-slice table
    metrics: dict[str, Any] = Field(default_factory=dict)
    production_before: int | None = None
    production_after: int | None = None
    latency_ms: float | None = None
    train_seconds: float = 0.0


def onnx_latency_ms(model_dir: Path) -> float | None:
    """CPU latency per image of the model's ONNX export, when it has one fleetloop can run."""
    if not (Path(model_dir) / "model.onnx").is_file():
        return None
    try:
        from fleetloop.train.reference.runner import measure_latency

        return round(measure_latency(model_dir, n=30), 4)
    except Exception:  # another trainer's ONNX layout: no latency rather than a failed retrain
        return None


@contextmanager
def _workspace_lock(workspace: Path, timeout_s: float) -> Iterator[None]:
    """Hold the training workspace's lock (a file beside it); :class:`TrainingFailed` naming the
    holder when another retrain keeps it longer than ``timeout_s``."""
    path = workspace.resolve().parent / f".{workspace.name}.lock"
    with held_or(path, timeout_s, lambda pid: TrainingFailed(
            f"another retrain (pid {pid}) has held the training workspace {workspace} for {timeout_s:.0f} s; "
            "try again when it has finished")):
        yield


def _trained(registry: Registry, version: int, params: dict[str, Any]) -> ModelVersion | None:
    for v in reversed(registry.list()):
        if v.lineage.dataset_version == version and v.lineage.params == params:
            return v
    return None


def retrain(
    store: Store,
    dataset: DatasetConfig,
    loop: LoopParams,
    version: int,
    *,
    workspace: Path,
    template: Path,
    scenarios: list[Path] | None = None,
    who: str | None = None,
    why: str = "",
    model: str = "camera",
) -> RetrainOutcome:
    registry = Registry(store, model=model)
    train_params = loop.train.model_dump(mode="json")
    t0 = time.perf_counter()
    timeout_s = loop.train.timeout_s * 2 + 600
    # one retrain per workspace at a time (the weekly cycle and an engineer's `fleetloop retrain`
    # may overlap): the second waits, then finds the first's model registered and reuses it
    with _workspace_lock(Path(workspace), timeout_s + 300):
        existing = _trained(registry, version, train_params)
        if existing is not None:
            mv, reused, latency = existing, True, existing.latency_ms
        else:
            with tempfile.TemporaryDirectory() as tmp:
                init = None
                if loop.train.warm_start and "production" in registry.aliases():
                    init = registry.download("production", Path(tmp) / "production")
                out = train_on(workspace, dataset, version, template=template, init=init, scenarios=scenarios,
                               timeout_s=timeout_s)
            latency = onnx_latency_ms(out.model_dir)
            mv = registry.register(out.model_dir, out.metrics, dataset_version=version, params=train_params,
                                   trainer=loop.train.command, latency_ms=latency,
                                   training_seconds=out.training_seconds)
            reused = False
    seconds = time.perf_counter() - t0
    aliases = registry.aliases()
    if "production" in aliases and aliases["production"].version == mv.version:
        return RetrainOutcome(dataset_version=version, model_version=mv.version, reused=reused, promoted=False,
                              action="noop", reasons=[f"v{mv.version} is already production"],
                              metrics=mv.metrics.model_dump(), production_before=mv.version,
                              production_after=mv.version, latency_ms=latency, train_seconds=round(seconds, 2))
    registry.set_candidate(mv.version, who=who, why=why or f"trained on dataset-v{version}")
    decision: Decision = registry.promote(mv.version, loop.promote, who=who,
                                          why=why or f"trained on dataset-v{version}")
    return RetrainOutcome(
        dataset_version=version, model_version=mv.version, reused=reused, promoted=decision.promoted,
        action=decision.action, reasons=decision.reasons, slices=decision.verdict.details.get("slices", {}),
        metrics=mv.metrics.model_dump(), production_before=decision.production_before,
        production_after=decision.production_after, latency_ms=latency, train_seconds=round(seconds, 2),
    )


def retrain_latest(
    settings: Settings, loop: LoopParams, version: int | None = None, *, who: str, why: str = "",
    on_start: Callable[[int], None] | None = None,
) -> RetrainOutcome:
    """:func:`retrain` where the settings put things: the dataset of ``settings`` at ``version``
    (default: its latest), the workspace ``$FLEETLOOP_HOME/train``, the pipeline beside
    params.yaml, the scenario sets in ``$FLEETLOOP_HOME/scenarios/``. What the CLI and the flow call.
    ``on_start`` hears the dataset version once it is known to exist, before the work."""
    from fleetloop.dataset.versions import history

    cfg = dataset_config(settings)
    known = [v.version for v in history(cfg)]  # the newest manifest's list of every version
    if not known:
        raise DatasetError("the dataset has no version yet: grow it first (fleetloop dataset grow)")
    if version is None:
        version = known[-1]
    if version not in known:
        raise DatasetError(f"no dataset version {version} (dataset-v{version}): it has versions {known[0]}..{known[-1]}")
    found = find_params_file()
    if found is None:
        raise ParamsError("no params.yaml found: run from the fleetloop repository or set FLEETLOOP_PARAMS")
    home = Path(settings.home).resolve()
    if on_start is not None:
        on_start(version)
    return retrain(get_store(settings), cfg, loop, version, workspace=home / "train", template=found.parent,
                   scenarios=sorted((home / "scenarios").glob("*.parquet")), who=who, why=why)
