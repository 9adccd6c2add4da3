"""A small simulated world for the weekly cycles of the production profile.

Two cycle weeks, ``weeks[0]`` (last ISO week) and ``weeks[1]`` (this one). Simulated week 0
arrives in the reference window of ``weeks[0]``: its clear-day frames are imported as the seed
labels (campaign ``seed-w00``) and grown into ``dataset-v1`` (git repository in
``$FLEETLOOP_HOME/dataset``, data pushed to the DVC remote on S3). Simulated week 1 arrives in the
window ``weeks[0]`` covers, week 2 in the window of ``weeks[1]``. Everything goes into the S3
store, as from a workstation pointed at the deployment (infra/README.md, "Point fleetloop at it").

Training is shortened through a copy of ``params.yaml`` (``FLEETLOOP_PARAMS``): a few epochs, no
warm start and no absolute floor, so a cycle's retrain takes seconds and its model is promoted.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow.compute as pc
import yaml

from fleetloop.cycle import Window, cycle_window, iso_week, reference_window
from fleetloop.dataset.config import dataset_config
from fleetloop.dataset.growth import grow
from fleetloop.ingest.importers.parquet import write_parquet_log
from fleetloop.ingest.ingest import ingest
from fleetloop.ingest.validation import label_failures
from fleetloop.label.sync import import_labels
from fleetloop.params import find_params_file, load_params
from fleetloop.settings import Settings
from fleetloop.sim.fleet import SimWeek, drive_week
from fleetloop.store.objects import Store, get_store

SEED_LOGS, WEEK_LOGS, FRAMES_PER_LOG, EPOCHS = 6, 4, 16, 3


@dataclass(frozen=True)
class World:
    weeks: tuple[str, str]  # the ISO weeks of the two cycles
    settings: Settings
    store: Store
    week_logs: dict[str, list[str]]  # the logs each cycle covers
    seed_frames: int
    dataset_tag: str


def settings_from(env: dict[str, str]) -> Settings:
    """The settings a `fleetloop` process with ``env`` reads (and nothing of this process's)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLOOP_")}
    with mock.patch.dict(os.environ, clean | {k: v for k, v in env.items() if k.startswith("FLEETLOOP_")},
                         clear=True):
        return Settings(_env_file=None)


def pipeline_params(target: Path) -> Path:
    """A copy of params.yaml (and dvc.yaml beside it) with a short training and no floor."""
    found = find_params_file(Path(__file__))
    assert found is not None
    data = yaml.safe_load(found.read_text()) or {}
    data.setdefault("train", {})["epochs"] = EPOCHS
    data["train"]["warm_start"] = False
    data.setdefault("promote", {})["floor"] = 0.0
    target.mkdir(parents=True, exist_ok=True)
    (target / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copyfile(found.parent / "dvc.yaml", target / "dvc.yaml")
    return target / "params.yaml"


def _no_model(images: np.ndarray) -> list[np.ndarray]:
    return [np.zeros((0, 6), np.float32) for _ in range(len(images))]


def build(env: dict[str, str], out: Path, seed: int = 0) -> World:
    """Drive, ingest, seed-label and grow as described in the module doc; ``env`` is the
    deployment's (the worker's) environment, with ``FLEETLOOP_PARAMS`` set."""
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if k.startswith("AWS_") or k == "FLEETLOOP_PARAMS"}):
        return _build(env, out, seed)


def _drive_and_ingest(store: Store, k: int, n_logs: int, window: Window, out: Path, seed: int) -> tuple[SimWeek, list[str]]:
    """Simulated week ``k`` driven and ingested, arriving in the middle of ``window``."""
    week = drive_week(k, seed=seed, detector=_no_model, n_logs=n_logs, frames_per_log=FRAMES_PER_LOG,
                      out_dir=out / f"w{k:02d}", start=window.start)
    write_parquet_log(week.logs, out / f"w{k:02d}" / "logs")
    report = ingest(store, out / f"w{k:02d}" / "logs", "parquet", arrived_at=window.start + (window.end - window.start) / 2)
    assert len(report.registered) == n_logs, report
    return week, sorted(report.registered)


def _build(env: dict[str, str], out: Path, seed: int) -> World:
    settings = settings_from(env)
    store = get_store(settings)
    weeks = (iso_week(datetime.now(UTC) - timedelta(days=7)), iso_week(datetime.now(UTC)))

    w0, _ = _drive_and_ingest(store, 0, SEED_LOGS, reference_window(weeks[0]), out, seed)
    f = w0.logs.frames
    clear = f.filter(pc.and_(pc.equal(f["weather"], "clear"), pc.equal(f["time_of_day"], "day")))
    frames = list(zip(clear["log_id"].to_pylist(), clear["frame"].to_pylist(), strict=True))
    if not frames:  # a week-0 mix without a clear day: take every frame
        frames = list(zip(f["log_id"].to_pylist(), f["frame"].to_pylist(), strict=True))
    import_labels(store, "seed-w00", w0.truth, frames, home=Path(settings.home), annotator="seed set",
                  validate=label_failures)
    grown = grow(store, dataset_config(settings), load_params().grow, validate=label_failures)
    assert grown.version == 1 and grown.tag, grown

    _, logs1 = _drive_and_ingest(store, 1, WEEK_LOGS, cycle_window(weeks[0]), out, seed)
    _, logs2 = _drive_and_ingest(store, 2, WEEK_LOGS, cycle_window(weeks[1]), out, seed)
    return World(weeks=weeks, settings=settings, store=store, week_logs={weeks[0]: logs1, weeks[1]: logs2},
                 seed_frames=len(frames), dataset_tag=grown.tag)
