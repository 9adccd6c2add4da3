"""The training workspace: where ``dvc repro`` runs the pipeline on a dataset version.

A git + DVC repository (default ``$FLEETLOOP_HOME/train``) that holds the project's ``dvc.yaml``
(copied from the repository root) and, as ``params.yaml``, the params file the retrain validated
(``FLEETLOOP_PARAMS`` or the repository's ``params.yaml``), both copied on every run so the team
edits them in one place, the dataset imported from the dataset registry at its tag (DVC's data-registry pattern:
``dvc import <dataset repo> data -o data/dataset --rev dataset-vN`` the first time, ``dvc update
--rev dataset-vN`` after; the version is recorded in ``data/dataset.dvc`` and ``dvc.lock``), and
an optional ``scenarios/`` folder of fixed evaluation sets, and ``init/``: the production model
to warm-start from (``train.warm_start``; empty for a training from scratch). After a run, the workspace commits
``dvc.lock`` so its history says which dataset and params produced which metrics. DVC runs through
the dataset package's adapter, the one place that calls git and DVC. What a killed run or a hand
leaves is repaired first (the caller holds the workspace's lock): git's stale ``index.lock``, a
``dvc.lock`` DVC cannot read, a ``data/dataset.dvc`` missing or importing from another repository
than the configured dataset (then imported again).
"""

from __future__ import annotations

import contextvars
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

from fleetloop.dataset.config import DatasetConfig, DatasetError, check_dir_path
from fleetloop.dataset.dvc import Repo

PIPELINE_FILES = ("dvc.yaml", "params.yaml")


class TrainingFailed(RuntimeError):
    """``dvc repro`` failed or produced no model / metrics (the message says which stage)."""


class TrainOutcome(BaseModel):
    dataset_version: int
    workspace: Path
    model_dir: Path
    metrics: dict
    seconds: float
    training_seconds: float | None = None
    reproduced: bool  # False: dvc found nothing changed and reused the outputs


def _repo(workspace: Path, dataset: DatasetConfig, timeout_s: float) -> Repo:
    return Repo(workspace, dataset.model_copy(update={"command_timeout_s": timeout_s}))


def _ensure_workspace(repo: Repo) -> None:
    root = repo.root
    try:
        check_dir_path(root, "the training workspace")
    except DatasetError as exc:
        raise TrainingFailed(str(exc)) from None
    # git's index lock left by a run killed during `git add`/`commit`: every later commit would
    # fail (after the training). The caller holds the workspace's lock, so no git of ours runs here.
    (root / ".git" / "index.lock").unlink(missing_ok=True)
    if (root / ".git").is_dir() and (root / ".dvc").is_dir():
        return
    root.mkdir(parents=True, exist_ok=True)
    if not (root / ".git").is_dir():
        repo.git("init", "-q", "-b", "main")
        repo.git("config", "user.name", "fleetloop")
        repo.git("config", "user.email", "fleetloop@localhost")
    if not (root / ".dvc").is_dir():
        repo.dvc("init")
        repo.dvc("config", "core.analytics", "false")
        repo.dvc("config", "core.check_update", "false")
        repo.dvc("config", "cache.type", "reflink,hardlink,copy")
    (root / ".gitignore").write_text("/prepared\n/model\n/init\n")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "Training workspace (fleetloop)")


def _fill(folder: Path, source: Path | None) -> None:
    """``folder`` holds exactly ``source``'s files (or only ``.keep``), so DVC sees its change."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / ".keep").touch()
    if source is not None:
        for path in sorted(Path(source).rglob("*")):
            if path.is_file():
                target = folder / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)


def _dataset_source(dataset: DatasetConfig) -> str:
    return dataset.git_remote or str(Path(dataset.repo_dir).resolve())


def _imported_from(dvcfile: Path) -> str | None:
    """The repository ``data/dataset.dvc`` imports from (None: no such file, or not one DVC can read)."""
    import yaml

    try:
        data = yaml.safe_load(dvcfile.read_text())
        url = data["deps"][0]["repo"]["url"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, IndexError, TypeError):
        return None
    return url if isinstance(url, str) else None


def _lock_readable(lock: Path) -> bool:
    """``dvc.lock`` is missing or has the shape DVC writes (``stages:`` of mappings); a file edited
    by hand into something else makes every DVC command in the workspace fail."""
    import yaml

    if not lock.exists():
        return True
    try:
        data = yaml.safe_load(lock.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    stages = data.get("stages", {}) if isinstance(data, dict) else None
    return isinstance(stages, dict) and all(isinstance(k, str) and isinstance(v, dict) for k, v in stages.items())


def _repair_lock(repo: Repo) -> None:
    """A damaged ``dvc.lock`` is replaced by the one last committed (or removed: the stages run again)."""
    lock = repo.root / "dvc.lock"
    if _lock_readable(lock):
        return
    lock.unlink()
    if repo.git("cat-file", "-e", "HEAD:dvc.lock", check=False).returncode == 0:
        repo.git("checkout", "-q", "HEAD", "--", "dvc.lock")
        if not _lock_readable(lock):
            lock.unlink()


@contextmanager
def _progress(show: Callable[[str], None] | None) -> Iterator[None]:
    """While ``dvc repro`` runs (its output captured), pass the lines the stages' commands write
    (the trainer's epochs) to ``show`` as they come: the stages append them to a file named in
    the environment (:data:`fleetloop.train.stages.PROGRESS_ENV`)."""
    if show is None:
        yield
        return
    from fleetloop.train.stages import PROGRESS_ENV

    fd, name = tempfile.mkstemp(prefix="fleetloop-train-", suffix=".log")
    os.close(fd)
    done = threading.Event()

    def follow() -> None:
        with open(name, errors="replace") as f:
            while True:
                finished = done.is_set()  # read once more after the last stage has written
                for line in f:
                    if line.strip():
                        show(line.rstrip("\n"))
                if finished:
                    return
                done.wait(0.5)

    before = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = name
    # in a copy of the caller's context: ``show`` may log to a Prefect run, whose API (the run
    # context, temporary settings) lives in context variables a bare thread would not see
    thread = threading.Thread(target=contextvars.copy_context().run, args=(follow,), name="train-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)
        if before is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = before
        Path(name).unlink(missing_ok=True)


def retrain(
    workspace: Path,
    dataset: DatasetConfig,
    version: int,
    *,
    pipeline: Path,
    params: Path,
    init: Path | None = None,
    scenarios: list[Path] | None = None,
    timeout_s: float = 3600.0,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> TrainOutcome:
    """Train and evaluate on ``dataset-v<version>``: import/update the dataset, ``dvc repro``,
    commit the lock. Stages that did not change are not rerun (DVC's own cache). ``pipeline``
    is the project's ``dvc.yaml``; ``params`` the params file to train with (any name, anywhere:
    it is copied in as ``params.yaml``, the file the stages and ``dvc.lock`` read). ``progress``
    hears the output lines of the trainer and the predictor while they run. ``force``: run every
    stage, changed or not (``dvc repro --force``)."""
    t0 = time.perf_counter()
    workspace = Path(workspace).resolve()
    sources = dict(zip(PIPELINE_FILES, (Path(pipeline), Path(params)), strict=True))
    for name, src in sources.items():
        if not src.is_file():
            what = "the training pipeline" if name == "dvc.yaml" else "the params file to train with"
            raise TrainingFailed(f"{src} is not a file: it should be {what}")
    repo = _repo(workspace, dataset, timeout_s)
    _ensure_workspace(repo)
    for name, src in sources.items():
        shutil.copyfile(src, workspace / name)
    _fill(workspace / "init", init)  # the production model to warm-start from (empty: from scratch)
    scen = workspace / "scenarios"
    scen.mkdir(exist_ok=True)
    (scen / ".keep").touch()
    for path in scenarios or []:
        target = scen / Path(path).name
        if not target.exists() or target.read_bytes() != Path(path).read_bytes():
            shutil.copyfile(path, target)
    _repair_lock(repo)
    tag = f"dataset-v{version}"
    source, dvcfile = _dataset_source(dataset), workspace / "data" / "dataset.dvc"
    if _imported_from(dvcfile) == source:
        repo.dvc("update", "--rev", tag, "data/dataset.dvc")
    else:
        # the first import, or one to make again: data/dataset.dvc removed, damaged, left out by an
        # interrupted import, or naming another repository than the configured one (moved or gone)
        dvcfile.unlink(missing_ok=True)
        stale = workspace / "data" / "dataset"  # a copy of the dataset registry's files
        if stale.is_dir() and not stale.is_symlink():
            Repo.discard(stale)
        elif stale.exists() or stale.is_symlink():
            stale.unlink()
        (workspace / "data").mkdir(exist_ok=True)
        repo.dvc("import", source, "data", "-o", "data/dataset", "--rev", tag)
    lock_before = (workspace / "dvc.lock").read_bytes() if (workspace / "dvc.lock").is_file() else b""
    env_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    os.environ["PATH"] = env_path  # the stages' `python -m ...` must be this interpreter's
    try:
        with _progress(progress):
            repo.dvc("repro", *(["--force"] if force else []))
    except Exception as exc:
        raise TrainingFailed(f"dvc repro on {tag} failed: {exc}") from exc
    model_dir, metrics_file = workspace / "model", workspace / "metrics.json"
    if not model_dir.is_dir() or not metrics_file.is_file():
        raise TrainingFailed(f"dvc repro on {tag} left no model/ or metrics.json in {workspace}")
    reproduced = lock_before != (workspace / "dvc.lock").read_bytes()
    repo.git("add", "-A")
    if repo.git("diff", "--cached", "--quiet", check=False).returncode != 0:
        repo.git("commit", "-q", "-m", f"retrain on {tag}")
    training = model_dir / "training.json"
    return TrainOutcome(
        dataset_version=version, workspace=workspace, model_dir=model_dir,
        metrics=json.loads(metrics_file.read_text()), seconds=round(time.perf_counter() - t0, 2),
        training_seconds=json.loads(training.read_text()).get("seconds") if training.is_file() else None,
        reproduced=reproduced,
    )
