"""Retrain → register → gate → promote, as one plain step over a dataset version.

Trains on ``dataset-vN`` in the training workspace (``dvc repro``, :mod:`fleetloop.train.workspace`),
registers the model with its lineage and per-slice metrics (and its ONNX CPU latency when it
has one), makes it the candidate, and runs the promotion gate against production: promoted, or
rejected with one reason per failing slice. Idempotent: a dataset version already trained with
the same training params and the same pipeline (dvc.yaml's stages and the evaluation sets:
:func:`pipeline_digest`) from the same starting model (none, or the production version it was
warm-started from) is not trained again (the registered version is reported, and not gated again
against a production that already rejected it); ``force`` trains again anyway (after a change
to the trainer's code, which no digest sees). One retrain per training workspace at a time: a
second one waits for the first and reuses its model. With ``train.warm_start`` the candidate
starts from the production model's weights, so a new production model trains it again.
The workspace trains with exactly the params file that was loaded (``FLEETLOOP_PARAMS``, any
name), copied in as params.yaml, and the repository's dvc.yaml.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
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
    reused: bool = False  # this dataset version was trained before with these params and this pipeline
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


def pipeline_digest(pipeline: Path, scenarios: list[Path] | None = None) -> str | None:
    """What the training pipeline is, as a sha256: ``pipeline`` (dvc.yaml) as parsed (comments,
    layout and key order aside) and the evaluation scenario files, by name and bytes. A model
    registered with another digest was made by another pipeline, so a retrain does not reuse it.
    ``None`` when dvc.yaml cannot be read (the training then names the problem)."""
    try:
        raw = Path(pipeline).read_bytes()
    except OSError:
        return None
    try:
        body = json.dumps(yaml.safe_load(raw), sort_keys=True, default=str).encode()
    except yaml.YAMLError:
        body = raw
    digest = hashlib.sha256(body)
    for path in sorted(scenarios or [], key=lambda p: Path(p).name):
        digest.update(b"\0" + Path(path).name.encode() + b"\0" + hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()


#: Train params that say how a training is run, not what it makes: a change to them alone trains
#: nothing again (dvc.yaml's train stage does not depend on them either).
RUN_CONTROL = frozenset({"timeout_s"})


def _same_training(recorded: dict[str, Any], params: dict[str, Any]) -> bool:
    """Whether train params recorded in a lineage make the same model as ``params``."""
    return ({k: v for k, v in recorded.items() if k not in RUN_CONTROL}
            == {k: v for k, v in params.items() if k not in RUN_CONTROL})


def _made_here(v: ModelVersion, version: int, params: dict[str, Any], pipeline: str | None) -> bool:
    """``v`` was trained on dataset ``version`` with these train params and this pipeline (a
    version registered without a pipeline digest, before it was recorded, is not known to be)."""
    lin = v.lineage
    return (lin.dataset_version == version and _same_training(lin.params, params)
            and pipeline is not None and lin.pipeline == pipeline)


def _made_here_newest_first(registry: Registry, version: int, params: dict[str, Any],
                            pipeline: str | None) -> Iterator[ModelVersion]:
    """The versions trained on dataset ``version`` with these train params and this pipeline, newest first."""
    return (v for v in reversed(registry.list()) if _made_here(v, version, params, pipeline))


def _trained(registry: Registry, version: int, params: dict[str, Any], init: int | None,
             pipeline: str | None) -> ModelVersion | None:
    """The newest version trained on dataset ``version`` with these train params and this
    pipeline, starting from version ``init`` (``None``: from scratch): what this retrain would
    train again."""
    return next((v for v in _made_here_newest_first(registry, version, params, pipeline)
                 if v.lineage.init_version == init), None)


def _snapshot_params(params_file: Path, loop: LoopParams, into: Path) -> Path:
    """A copy of ``params_file`` in ``into``, checked to hold the train params this retrain runs
    with (the file was loaded once already; what the workspace trains with must be what was
    validated and what the registry records)."""
    from fleetloop.params import load_params

    snapshot = into / "params.yaml"
    try:
        shutil.copyfile(params_file, snapshot)
    except OSError as exc:
        raise ParamsError(f"cannot read {params_file}: {exc.strerror or exc}") from None
    if load_params(snapshot).train != loop.train:
        raise ParamsError(f"{params_file}: its train: section changed while the retrain started; run it again")
    return snapshot


def _warm_start_files(registry: Registry, version: int, into: Path) -> Path:
    """The production model's files to warm-start from; :class:`TrainingFailed` naming it and the
    ways out when they cannot be fetched (deleted or corrupt in the store), before any training."""
    from fleetloop.registry.errors import RegistryError
    from fleetloop.store.objects import StorageError

    try:
        return registry.download(version, into)
    except (RegistryError, StorageError) as exc:
        raise TrainingFailed(
            f"cannot warm-start from production v{version} (train.warm_start): its files cannot be fetched: {exc}; "
            "restore them, roll production back (fleetloop registry rollback) or set train.warm_start: false"
        ) from None


def _earlier_rejection(registry: Registry, mv: ModelVersion, production: int | None) -> Decision | None:
    """The gate's last decision on ``mv`` when it rejected it against this same production."""
    decisions = [d for d in registry.decisions(mv.version) if d.action in ("promote", "reject")]
    last = decisions[-1] if decisions else None
    if last is not None and last.action == "reject" and last.production_before == production:
        return last
    return None


def retrain(
    store: Store,
    dataset: DatasetConfig,
    loop: LoopParams,
    version: int,
    *,
    workspace: Path,
    pipeline: Path,
    params_file: Path,
    scenarios: list[Path] | None = None,
    who: str | None = None,
    why: str = "",
    model: str = "camera",
    progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> RetrainOutcome:
    """Train on ``dataset-v<version>`` with the pipeline ``pipeline`` (dvc.yaml) and exactly the
    params file ``params_file`` (copied into the workspace as params.yaml; its ``train:`` section
    must be ``loop.train``), register, set candidate, gate.

    *Already trained* means: a version on this dataset version with these train params (but
    :data:`RUN_CONTROL`) and this pipeline (:func:`pipeline_digest` of dvc.yaml and the scenario
    sets) that started from the same model (``lineage.init_version``: the production version it was
    warm-started from, or none). So a new production model with ``train.warm_start`` trains the
    candidate again (docs/training.md); production itself, when it was trained on this dataset
    version with these params, is reused (a no-op). A reused version the gate already rejected
    against the current production is not gated again: its earlier decision is reported.
    ``force``: train again even so (``dvc repro --force``: every stage, whatever DVC's cache says),
    register the result as a new version and gate it."""
    registry = Registry(store, model=model)
    train_params = loop.train.model_dump(mode="json")
    t0 = time.perf_counter()
    timeout_s = loop.train.timeout_s * 2 + 600
    # one retrain per workspace at a time (the weekly cycle and an engineer's `fleetloop retrain`
    # may overlap): the second waits, then finds the first's model registered and reuses it
    with _workspace_lock(Path(workspace), timeout_s + 300), tempfile.TemporaryDirectory() as tmp:
        params_copy = _snapshot_params(Path(params_file), loop, Path(tmp))
        production = registry.get("production") if "production" in registry.aliases() else None
        init_version = production.version if loop.train.warm_start and production is not None else None
        digest = pipeline_digest(pipeline, scenarios)
        existing: ModelVersion | None = None
        if not force:
            existing = (production if production is not None and _made_here(production, version, train_params, digest)
                        else _trained(registry, version, train_params, init_version, digest))
        if existing is not None:
            mv, reused, latency = existing, True, existing.latency_ms
        else:
            init = None
            if init_version is not None:
                init = _warm_start_files(registry, init_version, Path(tmp) / "production")
            out = train_on(workspace, dataset, version, pipeline=pipeline, params=params_copy, init=init,
                           scenarios=scenarios, timeout_s=timeout_s, progress=progress, force=force)
            latency = onnx_latency_ms(out.model_dir)
            mv = registry.register(out.model_dir, out.metrics, dataset_version=version, params=train_params,
                                   trainer=loop.train.command, latency_ms=latency,
                                   training_seconds=out.training_seconds, init_version=init_version,
                                   pipeline=digest)
            reused = False
    seconds = time.perf_counter() - t0
    aliases = registry.aliases()
    if "production" in aliases and aliases["production"].version == mv.version:
        return RetrainOutcome(dataset_version=version, model_version=mv.version, reused=reused, promoted=False,
                              action="noop", reasons=[f"v{mv.version} is already production"],
                              metrics=mv.metrics.model_dump(), production_before=mv.version,
                              production_after=mv.version, latency_ms=latency, train_seconds=round(seconds, 2))
    earlier = _earlier_rejection(registry, mv, aliases["production"].version if "production" in aliases else None)
    if reused and earlier is not None:
        decision = earlier  # the same comparison again would only record the same rejection
    else:
        registry.set_candidate(mv.version, who=who, why=why or f"trained on dataset-v{version}")
        decision = registry.promote(mv.version, loop.promote, who=who, why=why or f"trained on dataset-v{version}")
    return RetrainOutcome(
        dataset_version=version, model_version=mv.version, reused=reused, promoted=decision.promoted,
        action=decision.action, reasons=decision.reasons, slices=decision.verdict.details.get("slices", {}),
        metrics=mv.metrics.model_dump(), production_before=decision.production_before,
        production_after=decision.production_after, latency_ms=latency, train_seconds=round(seconds, 2),
    )


def find_pipeline(start: Path | None = None) -> Path | None:
    """The repository's ``dvc.yaml``: the nearest one beside a ``fleetloop`` package from
    ``start`` (default: the working directory) upwards, else the one at the root of this source
    tree (where ``params.yaml`` is found when ``FLEETLOOP_PARAMS`` is not set)."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").is_file() and (d / "fleetloop").is_dir():
            return d / "dvc.yaml"
    packaged = Path(__file__).resolve().parents[1] / "dvc.yaml"
    return packaged if packaged.is_file() else None


def retrain_latest(
    settings: Settings, loop: LoopParams, version: int | None = None, *, who: str, why: str = "",
    on_start: Callable[[int], None] | None = None, progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> RetrainOutcome:
    """:func:`retrain` where the settings put things: the dataset of ``settings`` at ``version``
    (default: its latest), the workspace ``$FLEETLOOP_HOME/train``, the repository's dvc.yaml
    (:func:`find_pipeline`) and the params file ``loop`` was loaded from (``FLEETLOOP_PARAMS``
    or the repository's params.yaml: :func:`~fleetloop.params.find_params_file`), the scenario sets in ``$FLEETLOOP_HOME/scenarios/``. What the CLI and the flow call.
    ``on_start`` hears the dataset version once it is known to exist, before the work;
    ``progress`` the trainer's output lines while it runs; ``force``: train again even when this
    version was trained already (:func:`retrain`)."""
    from fleetloop.dataset.versions import compact, history

    cfg = dataset_config(settings)
    known = [v.version for v in history(cfg)]  # the newest manifest's list of every version
    if not known:
        raise DatasetError("the dataset has no version yet: grow it first (fleetloop dataset grow)")
    if version is None:
        version = known[-1]
    if version not in known:
        raise DatasetError(f"no dataset version {version} (dataset-v{version}): it has versions {compact(known)}")
    found = find_params_file()
    if found is None:
        raise ParamsError("no params.yaml found: run from the fleetloop repository or set FLEETLOOP_PARAMS")
    pipeline = find_pipeline()
    if pipeline is None:
        raise ParamsError("no dvc.yaml (the training pipeline) found: run from the fleetloop repository")
    if on_start is not None:
        on_start(version)
    return retrain(get_store(settings), cfg, loop, version, workspace=Path(settings.home).resolve() / "train",
                   pipeline=pipeline, params_file=found, scenarios=_scenario_sets(settings), who=who, why=why,
                   progress=progress, force=force)


def _scenario_sets(settings: Settings) -> list[Path]:
    """The evaluation scenario sets a retrain scores on: ``$FLEETLOOP_HOME/scenarios/*.parquet``."""
    return sorted((Path(settings.home).resolve() / "scenarios").glob("*.parquet"))


def current_pipeline_digest(settings: Settings) -> str | None:
    """:func:`pipeline_digest` of the pipeline :func:`retrain_latest` would run now: the
    repository's dvc.yaml (:func:`find_pipeline`) and the scenario sets. ``None`` when dvc.yaml is
    not found or cannot be read."""
    pipeline = find_pipeline()
    return None if pipeline is None else pipeline_digest(pipeline, _scenario_sets(settings))


def trained_before(store: Store, loop: LoopParams, version: int, digest: str | None, *,
                   model: str = "camera") -> ModelVersion | None:
    """The newest version registered as trained on ``dataset-v<version>`` with these train params
    (but :data:`RUN_CONTROL`) and the pipeline ``digest`` (:func:`current_pipeline_digest`: the one
    :func:`retrain_latest` would run now), from whatever starting model. The weekly cycle does not
    retrain an unchanged dataset version that has one; after an edit to the train params or the
    pipeline it has none, so the cycle trains once more. ``None`` also when ``digest`` is (dvc.yaml
    not found: the retrain then says so)."""
    if digest is None:
        return None
    return next(_made_here_newest_first(Registry(store, model=model), version, loop.train.model_dump(mode="json"),
                                        digest), None)
