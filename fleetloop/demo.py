"""The main job on the embedded default: the loop shown making a camera model better.

``fleetloop demo`` brings up the local services (Prefect server + UI, Label Studio), then:

- **week 0** (once): the simulated fleet drives a week of mostly clear days; the clear-weather
  frames of some logs form a small labeled seed set (imported as campaign ``seed-w00``); the
  dataset grows to ``dataset-v1``; the reference camera model trains on it (``dvc repro``), is
  registered and promoted because it passes the absolute floor. A fixed evaluation scenario set
  (every weather, time of day and green cones, with exact ground truth) is written once to
  ``$FLEETLOOP_HOME/scenarios/`` and scores every model the same way.
- **each week k** (``--weeks N``, default 3): the fleet drives with the *production* model (its
  ONNX export, through onnxruntime, as a car runs it) → the logs arrive in the store (validated)
  → the ``weekly-cycle`` flow: drift → sync last week's labels → grow → retrain → gate → promote
  → calibrate the miner on the dataset's labels → mine this week (lidar ↔ camera disagreement
  first) → push to Label Studio with the model's boxes as pre-annotations → the simulated
  labeling team answers the tasks through the API → their labels are synced, grown into the
  next dataset version, trained on (``dvc repro``), registered, judged by the gate and promoted
  when better, so each week's row shows what its own labels did. (Real labelers take days: in
  production the next weekly cycle's sync → grow → retrain picks the labels up; in the demo it
  finds nothing new and skips.)

It ends with one row per week: labels spent, dataset version, mAP overall / rain / night /
green cones of the production model, and whether the week's candidate was promoted and why; a
PNG plot of mAP per slice against labels spent; ``--json`` prints the same table. State lives
in ``$FLEETLOOP_HOME/demo/state.json``: a rerun continues with the next week; ``--reset``
starts over (the demo's data, dataset, registry and Label Studio projects are removed).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, field_validator

from fleetloop.settings import Settings, redact

Say = Callable[[str], None]

#: the slices the demo reports (the evaluation scenario set covers each)
SLICES = {"rain": "weather=rain", "night": "time_of_day=night", "green cones": "attr=green"}


class DemoConfig(BaseModel):
    """The simulated world's size. The defaults fit one weekly cycle in a few minutes on 2 cores."""

    seed: int = 0
    logs_per_week: int = Field(12, ge=2, description="drive logs per simulated week")
    frames_per_log: int = Field(40, ge=8)
    seed_logs: int = Field(24, ge=2, description="week-0 logs whose clear-weather frames are the labeled seed set")
    budget: int = Field(120, ge=1, description="frames sent to labeling per week")
    eval_frames: int = Field(480, ge=16, description="frames of the fixed evaluation scenario set")
    epochs: int | None = Field(None, ge=1, description="training epochs (default: params.yaml train.epochs)")
    floor: float | None = Field(None, ge=0, le=1, description="the first model's promotion floor (default: "
                                "params.yaml promote.floor); a short test run trains for seconds and lowers it")
    noise_px: float = Field(1.0, ge=0, description="the simulated labelers' box jitter")


class WeekRow(BaseModel):
    week: int
    iso_week: str
    labels_spent: int  # frames labeled so far (seed set included)
    dataset_version: int
    model_version: int | None = None  # the week's candidate
    promoted: bool = False
    why: str = ""
    production: int | None = None
    map_overall: float | None = None  # of the production model after the week
    map_rain: float | None = None
    map_night: float | None = None
    map_green: float | None = None
    mined: int = 0
    labeled: int = 0  # frames the team labeled this week
    seconds: dict[str, float] = Field(default_factory=dict)


#: the version of ``demo/state.json`` this fleetloop writes; a state of a later version (a newer
#: fleetloop's) is refused, not read in part and overwritten without what it does not know
STATE_VERSION = 1

#: how far back the demo's calendar starts: simulated week 0 is this many weeks before its first run
BACK_WEEKS = 60


class DemoState(BaseModel):
    version: int = STATE_VERSION
    config: DemoConfig
    base_week: str  # the ISO week of simulated week 0
    rows: list[WeekRow] = Field(default_factory=list)
    labels_spent: int = 0

    @field_validator("base_week")
    @classmethod
    def _an_iso_week(cls, v: str) -> str:
        from fleetloop.cycle import week_start

        week_start(v)  # CycleInputError (a ValueError): "invalid week ..."
        return v

    @property
    def next_week(self) -> int:
        return len(self.rows)


class DemoResult(BaseModel):
    rows: list[WeekRow]
    prefect_ui: str
    label_studio: str
    label_studio_login: str
    plot: str | None
    state: str


# --------------------------------------------------------------------------- paths and state


def demo_dir(settings: Settings) -> Path:
    return Path(settings.home).resolve() / "demo"


def _state_path(settings: Settings) -> Path:
    return demo_dir(settings) / "state.json"


class DemoStateError(RuntimeError):
    """``demo/state.json`` cannot be read as the demo's state (hand-edited, truncated, ...)."""


def load_state(settings: Settings) -> DemoState | None:
    """The demo's state, None before its first run; :class:`DemoStateError` (one line naming
    the file) when the file is not a demo state."""
    from pydantic import ValidationError

    from fleetloop.problems import first_problem

    path = _state_path(settings)
    if not path.exists():
        return None
    try:
        raw = path.read_bytes()
        version = _version_of(raw)
        if version > STATE_VERSION:
            raise DemoStateError(f"{path} was written by a newer fleetloop (demo state version {version}; this one "
                                 f"reads version {STATE_VERSION}): run the demo with that fleetloop, or start over "
                                 "with `fleetloop demo --reset`")
        state = DemoState.model_validate_json(raw)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            first, more = first_problem(exc)
            why = f"{first.where or 'the document'}: {first.what}" + (f" (and {more} more)" if more else "")
        else:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DemoStateError(f"{path} is not a readable demo state ({why}): restore it, or start over with "
                             "`fleetloop demo --reset`") from None
    weeks = [r.week for r in state.rows]
    if weeks != list(range(len(weeks))):
        raise DemoStateError(f"{path} is not a readable demo state (its rows are weeks {weeks}, not 0, 1, 2, ...): "
                             "restore it, or start over with `fleetloop demo --reset`")
    return state


def _version_of(raw: bytes) -> int:
    """The ``version`` a state document declares (1 when it declares none, or is not one)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return STATE_VERSION  # not JSON: model_validate_json says where
    version = doc.get("version") if isinstance(doc, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else STATE_VERSION


def config_note(started: DemoConfig, asked: DemoConfig) -> str:
    """What a rerun with other world options says: the demo goes on with the options it started
    with, and which of the asked ones it does not use."""
    def shown(v: object) -> str:
        return "default" if v is None else str(v)

    differ = [f"{name} {shown(getattr(started, name))} (not {shown(getattr(asked, name))})"
              for name in DemoConfig.model_fields if getattr(started, name) != getattr(asked, name)]
    return (f"continuing the demo with the configuration it started with: {', '.join(differ)} "
            "(use --reset to change it)")


def _first_week() -> str:
    """The ISO week a new demo's simulated week 0 is: BACK_WEEKS weeks before now."""
    from fleetloop.cycle import iso_week

    return iso_week(datetime.now(UTC) - timedelta(days=7 * BACK_WEEKS))


def check_calendar(state: DemoState | None, weeks: int) -> None:
    """Refuse at once, before anything starts, a run whose last week would not have begun yet
    (the weekly cycle refuses such a week: the run would stop there after hours of weeks):
    :class:`DemoStateError` saying how many weeks still fit."""
    from fleetloop.cycle import week_start

    state = state or DemoState(config=DemoConfig(), base_week=_first_week())
    last = max(state.next_week, 1) + weeks - 1  # week 0 (the bootstrap) is always in the past
    if weeks == 0 or week_start(_week_of(state, last)) <= datetime.now(UTC):
        return
    room = (datetime.now(UTC) - week_start(state.base_week)).days // 7  # the last week that has begun
    fit = max(0, room - max(state.next_week, 1) + 1)
    raise DemoStateError(
        f"--weeks {weeks} would take the demo's calendar past today: week {last} would be {_week_of(state, last)}, "
        f"which has not begun (the demo's week 0 is {state.base_week}); "
        + (f"{fit} more week{'s' if fit != 1 else ''} fit: rerun with --weeks {fit}, or start over with --reset"
           if fit else "no more weeks fit: start over with `fleetloop demo --reset`"))


def _save_state(settings: Settings, state: DemoState) -> None:
    from fleetloop.store.atomic import write_atomic

    path = _state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, state.model_dump_json(indent=2).encode())


def _week_of(state: DemoState, k: int) -> str:
    from fleetloop.cycle import iso_week, week_start

    return iso_week(week_start(state.base_week) + timedelta(days=7 * k))


#: the titles of the Label Studio projects the demo makes (the weekly campaigns)
_DEMO_CAMPAIGN = re.compile(r"fleetloop-\d{4}-w\d{2}")


def _demo_projects(client: Any) -> dict[str, int]:
    """Title -> id of the weekly campaigns' projects fleetloop made in this Label Studio."""
    found: dict[str, int] = {}
    page = 1
    while True:
        body = client.request("GET", "/api/projects", ok=(200, 404),
                              params={"page": page, "page_size": 100, "include": "id,title,description"})
        if not isinstance(body, dict) or "results" not in body:
            return found
        for p in body["results"]:
            title = p.get("title") or ""
            if _DEMO_CAMPAIGN.fullmatch(title) and "fleetloop campaign" in (p.get("description") or ""):
                found[title] = int(p["id"])
        if not body.get("next"):
            return found
        page += 1


def reset(settings: Settings, say: Say) -> None:
    """Remove what the demo made: its Label Studio projects, the store, the dataset and its
    remote, the training workspace, the scenario sets, the demo's files. Services stay up.

    The projects are those the store's campaign index names and, in the home's own local Label
    Studio (the demo's alone), every weekly campaign project fleetloop made there: with part of
    the home deleted by hand (the store), the index is gone, and a project left behind would be
    found again by the rerun's week of the same name, its old tasks and labels mixed in."""
    from fleetloop.label import index
    from fleetloop.local.label_studio import read_state

    home = Path(settings.home).resolve()
    from fleetloop.store.objects import get_store

    store = get_store(settings)
    names = [r.name for r in index.campaigns(store)]
    local = read_state(home)
    own = bool(local and settings.label_studio.url
               and settings.label_studio.url.rstrip("/") == local.url.rstrip("/"))
    deleted = 0
    if (names or own) and settings.label_studio.url and settings.label_studio.token:
        from fleetloop.label.api import client_for
        from fleetloop.label.campaigns import find_campaign

        with client_for(settings) as client:
            projects = _demo_projects(client) if own else {}
            for name in names:
                c = find_campaign(client, name)
                if c is not None:
                    projects[name] = c.project_id
            for project_id in projects.values():
                client.request("DELETE", f"/api/projects/{project_id}", ok=(204, 404))
            deleted = len(projects)
    for sub in ("store", "dataset", "dvc-remote", "train", "scenarios", "demo", "labeling", "locks"):
        shutil.rmtree(home / sub, ignore_errors=True)
    for lock in home.glob(".dataset*.lock"):
        lock.unlink(missing_ok=True)
    demo_dir(settings).mkdir()  # the home stays the demo's (see _claim_home), whatever a store elsewhere still holds
    say(f"reset: removed the demo's state under {home} and {deleted} Label Studio projects")


# --------------------------------------------------------------------------- the simulated world


def _no_model(images: np.ndarray) -> list[np.ndarray]:
    """Before the first model exists, the fleet's camera reports nothing."""
    return [np.zeros((0, 6), np.float32) for _ in range(len(images))]


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_scenarios(path: Path, seed: int, n_frames: int) -> Path:
    """The fixed evaluation set in the prepared layout (docs/training.md), ground truth with
    attributes (``attr="green"`` for green cones)."""
    from fleetloop.sim.fleet import render_scenario_set
    from fleetloop.train.metrics import PREPARED_SCHEMA

    images, truth, frames = render_scenario_set(seed, n_frames)
    boxes: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in truth.select(["log_id", "frame", "cls", "x1", "y1", "x2", "y2", "attr"]).to_pylist():
        boxes.setdefault((r["log_id"], int(r["frame"])), []).append(
            {k: r[k] for k in ("cls", "x1", "y1", "x2", "y2", "attr")})
    meta = frames.to_pylist()
    table = pa.table({
        "log_id": [m["log_id"] for m in meta],
        "frame": pa.array([int(m["frame"]) for m in meta], pa.int64()),
        "image_png": [_png(images[m["image"]]) for m in meta],
        "width": pa.array([images.shape[2]] * len(meta), pa.int32()),
        "height": pa.array([images.shape[1]] * len(meta), pa.int32()),
        "weather": [m["weather"] for m in meta],
        "time_of_day": [m["time_of_day"] for m in meta],
        "boxes": pa.array([boxes.get((m["log_id"], int(m["frame"])), []) for m in meta],
                          PREPARED_SCHEMA.field("boxes").type),
    }, schema=PREPARED_SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)  # a run interrupted while writing leaves no half-written set behind (later runs reuse it)
    return path


def _drive(settings: Settings, state: DemoState, k: int, detector: Callable[[np.ndarray], list[np.ndarray]],
           n_logs: int) -> tuple[Any, Path]:
    """Simulated week ``k``: logs (parquet layout) and ground truth under the demo folder."""
    from fleetloop.cycle import cycle_window
    from fleetloop.ingest.importers.parquet import write_parquet_log
    from fleetloop.sim.fleet import drive_week, write_truth

    out = demo_dir(settings) / "fleet" / f"w{k:02d}"
    shutil.rmtree(out, ignore_errors=True)
    window = cycle_window(_week_of(state, k))
    week = drive_week(k, seed=state.config.seed, detector=detector, n_logs=n_logs,
                      frames_per_log=state.config.frames_per_log, out_dir=out, start=window.start)
    write_parquet_log(week.logs, out / "logs")
    write_truth(week.truth, out / "truth.parquet")
    return week, out


def _arrival(state: DemoState, k: int) -> datetime:
    """Logs of simulated week k arrive in the window the cycle of week k covers."""
    from fleetloop.cycle import cycle_window

    w = cycle_window(_week_of(state, k))
    return w.start + (w.end - w.start) / 2


# --------------------------------------------------------------------------- the loop


def _pipeline_params(settings: Settings, config: DemoConfig) -> None:
    """The demo runs with its own copy of params.yaml + dvc.yaml: the ``mine:`` section describes
    the simulated stack (:func:`fleetloop.sim.stack.mine_profile`: its lidar operating point and
    camera size), and ``--epochs`` or a floor change the training and promotion sections."""
    import yaml

    from fleetloop.params import find_params_file
    from fleetloop.sim.stack import mine_profile

    found = find_params_file()
    if found is None:
        raise RuntimeError("no params.yaml found: run the demo from the fleetloop repository")
    target = demo_dir(settings) / "pipeline"
    target.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(found.read_text()) or {}  # (already the demo's copy on a rerun in one process)
    data["mine"] = {**data.get("mine", {}), **mine_profile()}
    if config.epochs is not None:
        data.setdefault("train", {})["epochs"] = config.epochs
    if config.floor is not None:
        data.setdefault("promote", {})["floor"] = config.floor
    (target / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    if found.parent.resolve() != target.resolve():
        shutil.copyfile(found.parent / "dvc.yaml", target / "dvc.yaml")
    os.environ["FLEETLOOP_PARAMS"] = str(target / "params.yaml")


def _production_metrics(settings: Settings) -> tuple[int | None, dict[str, Any]]:
    from fleetloop.registry.api import Registry
    from fleetloop.registry.errors import VersionNotFound
    from fleetloop.store.objects import get_store

    try:
        v = Registry(get_store(settings)).get("production")
    except VersionNotFound:
        return None, {}
    return v.version, v.metrics.model_dump()


def _fill_metrics(row: WeekRow, production: int | None, metrics: dict[str, Any]) -> None:
    row.production = production
    row.map_overall = (metrics.get("overall") or {}).get("map50")
    slices = metrics.get("slices") or {}
    row.map_rain = (slices.get(SLICES["rain"]) or {}).get("map50")
    row.map_night = (slices.get(SLICES["night"]) or {}).get("map50")
    row.map_green = (slices.get(SLICES["green cones"]) or {}).get("map50")


def _detector(settings: Settings) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The production model as the cars run it: its ONNX export through onnxruntime."""
    from fleetloop.registry.api import Registry
    from fleetloop.store.objects import get_store
    from fleetloop.train.reference.runner import OnnxDetector

    reg = Registry(get_store(settings))
    v = reg.get("production")
    target = demo_dir(settings) / "models" / f"v{v.version}"
    if not (target / "model.onnx").is_file():
        reg.download(v.version, target)
    det = OnnxDetector(target)
    return det.detect


@contextmanager
def _timed(t: dict[str, float], stage: str) -> Iterator[None]:
    """Record the wall seconds of the block as ``t[stage]`` (the per-stage times of a week's row)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        t[stage] = time.perf_counter() - t0


def bootstrap(settings: Settings, state: DemoState, say: Say) -> WeekRow:
    """Week 0: seed labels, dataset-v1, the first model trained, registered and promoted."""
    from fleetloop.flows.dataset import grow_dataset
    from fleetloop.flows.train import retrain_flow
    from fleetloop.ingest.ingest import ingest
    from fleetloop.ingest.validation import label_failures
    from fleetloop.label.sync import import_labels
    from fleetloop.store.objects import get_store

    c = state.config
    t: dict[str, float] = {}
    with _timed(t, "drive+ingest"):
        scen = Path(settings.home).resolve() / "scenarios" / "eval.parquet"
        if not scen.is_file():
            write_scenarios(scen, c.seed + 1000, c.eval_frames)
            say(f"week 0: fixed evaluation scenario set, {c.eval_frames} frames (clear/rain x day/night, green cones)")
        week, out = _drive(settings, state, 0, _no_model, c.seed_logs)
        store = get_store(settings)
        rep = ingest(store, out / "logs", "parquet", arrived_at=_arrival(state, 0))
    f = week.logs.frames
    clear = f.filter(pc.and_(pc.equal(f["weather"], "clear"), pc.equal(f["time_of_day"], "day")))
    frames = list(zip(clear["log_id"].to_pylist(), clear["frame"].to_pylist(), strict=True))
    seed = import_labels(store, "seed-w00", week.truth, frames, home=Path(settings.home), annotator="seed set",
                         validate=label_failures)
    say(f"week 0: {len(rep.registered)} logs ingested; seed set of {len(frames)} clear-weather frames "
        f"({seed.labels} boxes) imported as campaign seed-w00")
    with _timed(t, "grow"):
        grown = grow_dataset()
    say(f"week 0: {grown.tag or f'dataset-v{grown.version}'} with {grown.frames} frames; training the first model")
    with _timed(t, "retrain"):
        out_r = retrain_flow(dataset_version=grown.version, why="week 0: the first model")
    state.labels_spent += len(frames)
    row = WeekRow(week=0, iso_week=state.base_week, labels_spent=state.labels_spent, dataset_version=grown.version,
                  model_version=out_r.model_version, promoted=out_r.promoted,
                  why="; ".join(out_r.reasons[:2]), labeled=len(frames), seconds={k: round(v, 1) for k, v in t.items()})
    _fill_metrics(row, *_production_metrics(settings))
    if row.production is None:
        raise RuntimeError(f"the first model was not promoted: {row.why} (train longer: --epochs)")
    return row


def run_week(settings: Settings, state: DemoState, k: int, say: Say) -> WeekRow:
    """One simulated week: drive with the production model, ingest, the weekly cycle, labeling."""
    from fleetloop.cycle import campaign_name, week_start
    from fleetloop.flows.mine import ingest_logs
    from fleetloop.flows.weekly import weekly_cycle
    from fleetloop.label.api import client_for
    from fleetloop.sim.labeling_team import TeamConfig, simulate

    c = state.config
    iso = _week_of(state, k)
    if week_start(iso) > datetime.now(UTC):  # the weekly cycle refuses a week that has not begun
        raise DemoStateError(f"the demo's calendar has reached today: week {k} would be {iso}, which has not begun "
                             "(the demo starts 60 weeks back); start over with --reset")
    t: dict[str, float] = {}
    with _timed(t, "drive"):
        week, out = _drive(settings, state, k, _detector(settings), c.logs_per_week)
    say(f"week {k} ({iso}): the fleet drove {week.logs.num_frames} frames ({week.mix.theme}: "
        f"rain {week.mix.rain:.0%}, night {week.mix.night:.0%}, green cones {week.mix.green_cones:.0%})")
    with _timed(t, "ingest"):
        ingested = ingest_logs(str(out / "logs"), "parquet", arrived_at=_arrival(state, k))
    say(f"week {k}: {len(ingested.registered)} logs ingested, {len(ingested.quarantined)} quarantined; "
        "weekly cycle: drift -> sync -> grow -> retrain -> promote -> calibrate -> mine -> push")
    with _timed(t, "cycle"):
        record = weekly_cycle(week=iso, budget=c.budget)
    for name, step in record.steps.items():
        say(f"  {name}: {step.status} - {step.reason}")
        t[f"cycle.{name}"] = step.seconds
    campaign = campaign_name(iso)
    labeled = 0
    pushed = bool(record.steps.get("push") and record.steps["push"].status == "ran")
    with _timed(t, "labeling"):
        if pushed:  # the team answers the tasks still open
            with client_for(settings) as client:
                before = _answered(client, campaign)  # > 0 when an interrupted run of this week got this far
                team = simulate(campaign, week.truth, client=client,
                                team=TeamConfig(noise_px=c.noise_px, seed=c.seed + k))
            labeled = before + team.answered
            say(f"week {k}: the labeling team answered {team.answered} tasks of {campaign} ({team.boxes} boxes)"
                + (f"; {before} were answered before the interruption" if before else ""))
    state.labels_spent += labeled
    grow = record.steps.get("grow")
    retrain = record.steps.get("retrain")
    row = WeekRow(week=k, iso_week=iso, labels_spent=state.labels_spent,
                  dataset_version=int((grow.details if grow else {}).get("version", 0)),
                  mined=int((record.steps["mine"].details if "mine" in record.steps else {}).get("selected", 0)),
                  labeled=labeled)
    if retrain is not None and retrain.status == "ran":
        row.model_version = retrain.details.get("model_version")
        row.promoted = bool(retrain.details.get("promoted"))
        row.why = _why(row.promoted, retrain.details.get("reasons", []))
    elif retrain is not None:
        row.why = retrain.reason
    if pushed:  # also when a rerun of the week finds the tasks already answered: sync delivers what is new
        _train_on_labels(settings, row, campaign, k, t, say, before=state.rows[-1].dataset_version if state.rows else 0)
    row.seconds = {k2: round(v, 1) for k2, v in t.items()}
    _fill_metrics(row, *_production_metrics(settings))
    return row


def _why(promoted: bool, reasons: list[str]) -> str:
    """A week's row: "promoted", or the gate's first two reasons."""
    return "promoted" if promoted else "; ".join(reasons[:2])


def _answered(client: Any, campaign: str) -> int:
    """Tasks of ``campaign`` that already have an annotation (a rerun of an interrupted week
    finds its team's answers there)."""
    from fleetloop.label.campaigns import find_campaign

    c = find_campaign(client, campaign)
    if c is None:
        return 0
    return sum((task.get("total_annotations") or 0) > 0
               for page in client.iter_tasks(c.project_id, page_size=100, fields="all") for task in page)


def _train_on_labels(settings: Settings, row: WeekRow, campaign: str, k: int, t: dict[str, float], say: Say,
                     *, before: int) -> None:
    """The simulated team labels within the week, so the week ends as the issue's loop does:
    sync its labels → a new dataset version → ``dvc repro`` → registry → gate → promotion (the
    same flows the weekly cycle chains; its next run finds nothing new to sync).

    ``before`` is the dataset version the previous week ended with. A rerun of a week that was
    interrupted after its labels grew the dataset finds nothing new to sync or grow: the version
    that interrupted run made is still the week's, and is trained on unless a model already was."""
    from fleetloop.flows.dataset import grow_dataset
    from fleetloop.flows.label import label_sync
    from fleetloop.flows.train import retrain_flow

    with _timed(t, "sync"):
        synced = label_sync(campaign=campaign)
    with _timed(t, "grow"):
        grown = grow_dataset()
    resumed = grown.nothing_new and grown.version > max(before, row.dataset_version)
    say(f"week {k}: {synced.delivered} annotations of {campaign} synced; "
        + (f"dataset-v{grown.version} holds them (grown before the interruption)" if resumed else
           f"dataset-v{grown.version} stays (nothing new)" if grown.nothing_new else
           f"{grown.tag or f'dataset-v{grown.version}'}: +{grown.frames_added} frames ({grown.frames} in all); retraining"))
    if (grown.nothing_new and not resumed) or grown.version < 1:
        return
    row.dataset_version = grown.version
    if resumed:
        from fleetloop.registry.api import Registry
        from fleetloop.store.objects import get_store

        done = Registry(get_store(settings)).trained_on(grown.version)
        if done is not None:  # trained (and judged) before the interruption
            row.model_version = done
            row.promoted = _production_metrics(settings)[0] == done
            row.why = f"v{done} was trained on dataset-v{grown.version} before the interruption"
            say(f"week {k}: model v{done} on dataset-v{grown.version} was trained before the interruption")
            return
        say(f"week {k}: retraining on dataset-v{grown.version}")
    with _timed(t, "retrain"):
        out = retrain_flow(dataset_version=grown.version, why=f"demo week {k}: {campaign}'s labels")
    row.model_version = out.model_version
    row.promoted = out.promoted
    row.why = _why(out.promoted, out.reasons)
    say(f"week {k}: model v{out.model_version} on dataset-v{grown.version}: "
        + ("promoted" if out.promoted else f"{out.action}: {'; '.join(out.reasons[:2])}"))


def plot(rows: list[WeekRow], path: Path) -> Path:
    """mAP per slice of the production model against labels spent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    x = [r.labels_spent for r in rows]
    for label, attr, style in (("overall", "map_overall", "-o"), ("rain", "map_rain", "-s"),
                               ("night", "map_night", "-^"), ("green cones", "map_green", "-d")):
        y = [getattr(r, attr) if getattr(r, attr) is not None else np.nan for r in rows]
        ax.plot(x, y, style, label=label)
    for r in rows:
        ax.annotate(f"w{r.week}", (r.labels_spent, r.map_overall or 0), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)
    ax.set_xlabel("frames labeled (seed set included)")
    ax.set_ylabel("mAP@0.5 of the production model")
    top = max([v for r in rows for v in (r.map_overall, r.map_rain, r.map_night, r.map_green) if v is not None] or [0.5])
    ax.set_ylim(0, min(1.0, top * 1.25 + 0.05))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("fleetloop demo: the production model, week by week")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _publish(rows: list[WeekRow], png: Path) -> None:
    from prefect.artifacts import create_markdown_artifact

    def f(x: float | None) -> str:
        return "" if x is None else f"{x:.3f}"

    table = "\n".join(f"| {r.week} | {r.iso_week} | {r.labels_spent} | v{r.dataset_version} | "
                      f"{'v' + str(r.production) if r.production else ''} | {f(r.map_overall)} | {f(r.map_rain)} | "
                      f"{f(r.map_night)} | {f(r.map_green)} | {'yes' if r.promoted else 'no'} | {r.why} |" for r in rows)
    create_markdown_artifact(key="demo-progress", description="mAP per slice against labels spent", markdown=f"""# fleetloop demo

| week | ISO week | labels spent | dataset | production | mAP | rain | night | green cones | promoted | why |
|---|---|---|---|---|---|---|---|---|---|---|
{table}

Plot of mAP per slice against labels spent: [{png.name}]({png.as_uri()}) (`{png}`)
""")


class DemoBusy(RuntimeError):
    """Another ``fleetloop demo`` is running on the same home."""


@contextmanager
def _one_demo(settings: Settings) -> Iterator[None]:
    """One demo per home at a time (a lock file at its root, which ``--reset`` keeps): a second
    ``fleetloop demo`` would drive, label and train the same weeks again beside the first and
    race it for the demo's state, so it stops at once, naming the one that runs."""
    from fleetloop.store.locks import held_or

    home = Path(settings.home).resolve()
    with held_or(home / ".demo.lock", 0, lambda pid: DemoBusy(
            f"another `fleetloop demo` (pid {pid}) is running on {home}: wait for it to finish (a rerun then "
            "continues with the next week) or stop it")):
        yield


class DemoHomeError(RuntimeError):
    """The home (``FLEETLOOP_HOME``) is not a directory the demo can write in."""


def _usable_home(settings: Settings) -> None:
    """The home exists as a directory the demo can write in (made when missing), or
    :class:`DemoHomeError` naming it and why."""
    home = Path(settings.home).resolve()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = ("it is a file" if home.is_file() else
               "a parent of it is a file" if isinstance(exc, FileExistsError | NotADirectoryError) else
               exc.strerror or str(exc))
        raise DemoHomeError(f"the demo's home {home} (FLEETLOOP_HOME) cannot be used: {why}") from None
    if not os.access(home, os.W_OK | os.X_OK):
        raise DemoHomeError(f"the demo's home {home} (FLEETLOOP_HOME) is not writable by this user")


def _claim_home(settings: Settings) -> None:
    """The demo works in a home of its own: one it made before (``demo/`` in it) or one that holds
    no fleetloop data yet, which it then marks as its own (``demo/``, made before anything else).
    A home whose store holds logs, campaigns or models, or whose dataset repository exists, is
    someone's real fleet: the demo would mix simulated logs, labels and models into it, and
    ``--reset`` would delete its campaigns' Label Studio projects and its local store and dataset.
    :class:`DemoHomeError` names what is there, before anything starts or is deleted."""
    from fleetloop.dataset.config import dataset_config
    from fleetloop.dataset.versions import compact, published
    from fleetloop.store import keys
    from fleetloop.store.objects import get_store

    home = Path(settings.home).resolve()
    if demo_dir(settings).is_dir():
        return
    found: list[str] = []
    cfg = dataset_config(settings)
    repo = Path(cfg.repo_dir).expanduser()
    if repo.is_dir() and any(repo.iterdir()):
        try:
            versions = published(cfg)
        except Exception:  # a repository git cannot read: not the demo's to write into
            versions = None
        if versions is None:
            found.append(f"a directory that is not a dataset repository fleetloop can read ({repo})")
        elif versions:  # (a repository without a version, as a `dataset grow` that found nothing leaves, holds no data)
            found.append(f"a dataset repository with versions {compact(versions)} ({repo})")
    try:
        store = get_store(settings)
        held = [what for prefix, what in ((keys.CAMPAIGNS, "labeling campaigns"), (keys.REGISTRY, "registered models"),
                                          (keys.ARRIVALS, "logs")) if store.list(prefix)]
    except Exception as exc:
        raise DemoHomeError(f"the demo's home {home} (FLEETLOOP_HOME): its store cannot be checked for data the "
                            f"demo did not make: {redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__}"
                            ) from None
    if held:
        found.insert(0, f"a store ({redact(store.location)}) with {', '.join(held)}")
    if found:
        raise DemoHomeError(
            f"the demo's home {home} (FLEETLOOP_HOME) holds fleetloop data the demo did not make: "
            f"{'; '.join(found)}. The demo would mix simulated logs, labels and models into it (and --reset would "
            "delete them): give the demo a home of its own, e.g. FLEETLOOP_HOME=.fleetloop-demo fleetloop demo")
    demo_dir(settings).mkdir(parents=True, exist_ok=True)


class DemoInterrupted(KeyboardInterrupt):
    """The demo was stopped by SIGINT (Ctrl-C) or SIGTERM; the message says which week a rerun
    redoes. ``signal`` is the signal's number."""

    def __init__(self, message: str, signal: int) -> None:
        super().__init__(message)
        self.signal = signal


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the demo is (as Ctrl-C raises KeyboardInterrupt)."""


@contextmanager
def _interruptible(progress: dict[str, Any], home: Path) -> Iterator[None]:
    """SIGTERM stops the demo as Ctrl-C does (Python's default would end it on the spot, with
    its training subprocess left running); on the way out, whatever the demo started that is
    still running (``dvc repro`` and its training process, re-parented here: this process is
    their subreaper) is stopped, the local services excepted (they stay up for the rerun).
    KeyboardInterrupt leaves as :class:`DemoInterrupted` naming the week a rerun redoes."""
    import signal
    import threading

    import psutil

    from fleetloop.local import process

    def terminated(signum: int, _frame: Any) -> None:
        raise _Terminated(signum)

    main = threading.current_thread() is threading.main_thread()
    before = {p.pid for p in process.descendants(psutil.Process())}  # not the demo's (a test runner's servers)
    previous = signal.signal(signal.SIGTERM, terminated) if main else None
    try:
        with process.subreaper():
            try:
                yield
            except BaseException:
                _stop_leftovers(home, before)
                raise
    except KeyboardInterrupt as exc:
        sig = signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT
        week = progress.get("week")
        where = (f" during week {week}: a rerun of `fleetloop demo` redoes week {week}" if week is not None
                 else ": a rerun of `fleetloop demo` continues where it left off")
        raise DemoInterrupted(f"interrupted by {sig.name}{where} (the local services stay up; "
                              "`fleetloop services down` stops them)", int(sig)) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _stop_leftovers(home: Path, before: set[int]) -> None:
    """Stop this process's descendants that the demo started, except the local services (the
    process groups their state files under ``<home>/services`` record, also one still starting)."""
    import contextlib
    import os

    import psutil

    from fleetloop.local import process
    from fleetloop.local.server import services_home

    keep: set[int] = set()
    for path in services_home(home).glob("*/state.json"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            pid = json.loads(path.read_text()).get("pid")
            if isinstance(pid, int):
                keep.add(pid)
    for p in process.descendants(psutil.Process()):
        with contextlib.suppress(psutil.Error, OSError, RuntimeError):
            if p.pid in before or p.pid in keep or os.getpgid(p.pid) in keep or not p.is_running():
                continue
            process.stop_tree(p.pid, create_time=p.create_time(), steps=process.WORKER_STOP)


def run_demo(settings: Settings, config: DemoConfig, *, weeks: int = 3, reset_first: bool = False,
             say: Say = print) -> DemoResult:
    """Bring the services up, bootstrap week 0 when needed, run ``weeks`` more weeks (one demo
    per home at a time: :class:`DemoBusy` otherwise). SIGINT or SIGTERM end it with
    :class:`DemoInterrupted` and nothing it started left running but the services; the
    interrupted week is redone by the next run. A home it cannot use, a state it cannot read,
    more weeks than the calendar has left and a home holding fleetloop data the demo did not make
    stop it before anything starts."""
    _usable_home(settings)
    with _one_demo(settings):
        check_calendar(None if reset_first else load_state(settings), weeks)
        _claim_home(settings)
        progress: dict[str, Any] = {}
        with _interruptible(progress, Path(settings.home).resolve()):
            return _run_demo(settings, config, weeks=weeks, reset_first=reset_first, say=say, progress=progress)


def _run_demo(settings: Settings, config: DemoConfig, *, weeks: int, reset_first: bool, say: Say,
              progress: dict[str, Any]) -> DemoResult:
    from fleetloop.local import services
    from fleetloop.local.connect import resolve_settings
    from fleetloop.local.label_studio import read_state

    say("Starting the local services (the first run installs Label Studio: 1-2 minutes)")
    for st in services.up(settings):
        if not st.healthy:
            raise RuntimeError(f"{st.name} is not healthy at {st.url}: {st.detail} (log: {st.log})")
        say(f"  {st.name}: {st.url}")
    api_url = services.ensure_prefect_env(settings) or ""
    from prefect import flow  # after ensure_prefect_env: Prefect reads its API URL when imported

    settings = resolve_settings(settings)
    if reset_first:
        reset(settings, say)
    state = load_state(settings)
    if state is not None and state.config != config:
        say(config_note(state.config, config))
        config = state.config
    if state is None:
        state = DemoState(config=config, base_week=_first_week())
    _pipeline_params(settings, state.config)

    @flow(name="demo", log_prints=True)
    def demo_flow() -> list[WeekRow]:
        if state.next_week == 0:
            progress["week"] = 0
            state.rows.append(bootstrap(settings, state, say))
            _save_state(settings, state)
        target = len(state.rows) + weeks
        while len(state.rows) < target:
            progress["week"] = state.next_week
            state.rows.append(run_week(settings, state, state.next_week, say))
            _save_state(settings, state)
        progress["week"] = None
        png = plot(state.rows, demo_dir(settings) / "report" / "map_vs_labels.png")
        _publish(state.rows, png)
        return state.rows

    if api_url:  # Prefect may have been imported (and its settings read) before the server was up
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            demo_flow()
    else:
        demo_flow()
    ls = read_state(settings.home)
    png = demo_dir(settings) / "report" / "map_vs_labels.png"
    return DemoResult(
        rows=state.rows, prefect_ui=api_url.removesuffix("/api"),
        label_studio=redact(ls.url if ls else settings.label_studio.url or ""),
        label_studio_login=(f"{ls.username} / {ls.password}" if ls else "(your Label Studio account)"),
        plot=str(png) if png.is_file() else None, state=str(_state_path(settings)),
    )


def rows_json(result: DemoResult) -> str:
    return json.dumps(result.model_dump(mode="json"), indent=2)
