"""The simulated fleet: a week of drive logs with images, sensors, tracks and ground truth.

:func:`drive_week` drives ``n_logs`` logs under the week's :class:`~fleetloop.sim.world.WeekMix`
(one vehicle, one weather and time of day per log), renders every frame to a PNG under
``out_dir/images/<log_id>/<frame:06d>.png``, runs the lidar simulator on the 3D truth, the given
camera :data:`~fleetloop.sim.sensors.Detector` on the images, and the IoU tracker on the camera
detections. It returns fleetloop's :class:`~fleetloop.schema.DriveLogs` (all five streams, valid
against ``fleetloop.schema.STREAMS``) and the ground truth (2D boxes per frame, and 3D).

:func:`render_scenario_set` renders a fixed set of frames for evaluation (stratified over
clear/rain x day/night, half the scenes with green cones) or, with ``stratify=False``, frames
drawn from a mix (a training set shaped like a given week).

Everything is a deterministic function of the seed: scene, image, lidar and timestamp draws
come from separate streams keyed by (seed, week, log), so changing the detector or the lidar
settings never changes the images.

    week = drive_week(1, seed=0, detector=model, n_logs=12, frames_per_log=40,
                      out_dir=Path("out/w01"), start=datetime(2026, 1, 5, tzinfo=timezone.utc))
    write_truth(week.truth, Path("out/w01/truth.parquet"))
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from fleetloop.schema import CALIBRATION, CLASSES, FRAMES, DriveLogs
from fleetloop.sim.render import RenderConfig, Renderer
from fleetloop.sim.sensors import Detector, LidarConfig, camera_table, run_detector, simulate_lidar
from fleetloop.sim.tracker import TrackerConfig, track_camera
from fleetloop.sim.world import Camera, Scene, Snapshot, WeekMix, draw_conditions, make_scene, week_mix

FRAME_NS = 100_000_000  # 10 Hz
_CLASS_NAMES = np.array(CLASSES, dtype=object)

#: Ground-truth 2D boxes (pixels, clipped to the image), one row per visible object per frame.
TRUTH = pa.schema([
    pa.field("log_id", pa.string(), nullable=False),
    pa.field("frame", pa.int32(), nullable=False),
    pa.field("track_id", pa.int64(), nullable=False),  # the object's id, stable within a log
    pa.field("cls", pa.string(), nullable=False),
    pa.field("x1", pa.float32(), nullable=False),
    pa.field("y1", pa.float32(), nullable=False),
    pa.field("x2", pa.float32(), nullable=False),
    pa.field("y2", pa.float32(), nullable=False),
    pa.field("attr", pa.string()),  # "green" for green cones, else null
    pa.field("occlusion", pa.float32(), nullable=False),  # share of the silhouette hidden
    pa.field("depth", pa.float32(), nullable=False),  # metres along the optical axis
])

#: Ground-truth 3D boxes (lidar frame, as LIDAR_DETECTIONS), every object within sensor range.
TRUTH_3D = pa.schema([
    pa.field("log_id", pa.string(), nullable=False),
    pa.field("frame", pa.int32(), nullable=False),
    pa.field("track_id", pa.int64(), nullable=False),
    pa.field("cls", pa.string(), nullable=False),
    pa.field("attr", pa.string()),
    *[pa.field(k, pa.float32(), nullable=False) for k in ("x", "y", "z", "l", "w", "h", "yaw")],
    pa.field("occlusion", pa.float32(), nullable=False),
    pa.field("in_image", pa.bool_(), nullable=False),  # drawn in the camera image
    pa.field("labeled", pa.bool_(), nullable=False),  # has a row in TRUTH
])

#: One row per image of a scenario set.
SCENARIO_FRAMES = pa.schema([
    pa.field("image", pa.int32(), nullable=False),  # index into the images array
    pa.field("log_id", pa.string(), nullable=False),
    pa.field("frame", pa.int32(), nullable=False),
    pa.field("weather", pa.string(), nullable=False),
    pa.field("time_of_day", pa.string(), nullable=False),
    pa.field("place", pa.string(), nullable=False),
    pa.field("green_cones", pa.bool_(), nullable=False),  # a green cone is in the ground truth
    pa.field("n_objects", pa.int32(), nullable=False),
])


class FleetConfig(BaseModel):
    """How the simulated fleet's sensors and software behave."""

    model_config = ConfigDict(frozen=True)

    camera: Camera = Camera()
    render: RenderConfig = RenderConfig()
    lidar: LidarConfig = LidarConfig()
    tracker: TrackerConfig = TrackerConfig()
    score_threshold: float = Field(0.3, ge=0, le=1, description="camera detections below are not logged")
    n_vehicles: int = Field(6, ge=1, le=99)
    png_compress_level: int = Field(1, ge=0, le=9)
    detector_batch: int = Field(64, ge=1)


@dataclass(frozen=True)
class SimWeek:
    """One simulated week: the logs as the fleet uploads them, and what really was there."""

    week: int
    mix: WeekMix
    logs: DriveLogs
    truth: pa.Table  # TRUTH
    truth_3d: pa.Table  # TRUTH_3D
    image_dir: Path


@dataclass(frozen=True)
class RenderedLog:
    """A log's images and ground truth, before any sensor model runs."""

    images: np.ndarray  # (n_frames, H, W, 3) uint8
    states: Snapshot  # 3D truth, every frame
    occlusion: np.ndarray  # per states row
    truth: pa.Table  # TRUTH
    truth_3d: pa.Table  # TRUTH_3D


def render_log(log_id: str, scene: Scene, frames: np.ndarray, renderer: Renderer, rng: np.random.Generator) -> RenderedLog:
    """Render the given frames of a scene; truth rows carry ``log_id`` and the frame numbers
    ``0..len(frames)-1`` in order (so a subsampled scene reads as consecutive frames)."""
    cam = renderer.camera
    frames = np.asarray(frames, np.int64)
    states = scene.states(frames)
    images = np.empty((frames.size, cam.height, cam.width, 3), np.uint8)
    occlusion = np.zeros(len(states), np.float32)
    in_image = np.zeros(len(states), bool)
    labeled = np.zeros(len(states), bool)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("frame", "row", "box", "occ", "depth")}
    bounds = np.asarray(np.searchsorted(states.frame, np.r_[frames, np.iinfo(np.int64).max])).tolist()
    for k, f in enumerate(frames.tolist()):
        lo, hi = bounds[k], bounds[k + 1]
        out = renderer.render(states.take(slice(lo, hi)), weather=scene.weather, time_of_day=scene.time_of_day,
                              place=scene.place, ego_x=float(scene.ego_x(f)), rng=rng)
        images[k] = out.image
        occlusion[lo:hi], in_image[lo:hi] = out.occlusion_all, out.in_image
        labeled[lo + out.rows] = True
        cols["frame"].append(np.full(out.rows.size, k, np.int32))
        cols["row"].append(lo + out.rows)
        cols["box"].append(out.boxes)
        cols["occ"].append(out.occlusion)
        cols["depth"].append(out.depth)
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    row = cat["row"].astype(np.int64)
    box = cat["box"].reshape(-1, 4)
    truth = pa.Table.from_pydict({
        "log_id": pa.array([log_id] * row.size, pa.string()),
        "frame": cat["frame"].astype(np.int32),
        "track_id": states.obj[row],
        "cls": pa.array(_CLASS_NAMES[states.cls[row]].tolist(), pa.string()),
        **{k: box[:, j].astype(np.float32) for j, k in enumerate(("x1", "y1", "x2", "y2"))},
        "attr": _attr(states.green[row]),
        "occlusion": cat["occ"].astype(np.float32),
        "depth": cat["depth"].astype(np.float32),
    }, schema=TRUTH)
    frame_no = np.searchsorted(frames, states.frame).astype(np.int32)
    truth_3d = pa.Table.from_pydict({
        "log_id": pa.array([log_id] * len(states), pa.string()),
        "frame": frame_no,
        "track_id": states.obj,
        "cls": pa.array(_CLASS_NAMES[states.cls].tolist(), pa.string()),
        "attr": _attr(states.green),
        **{k: states.box[:, j].astype(np.float32) for j, k in enumerate(("x", "y", "z", "l", "w", "h", "yaw"))},
        "occlusion": occlusion,
        "in_image": in_image,
        "labeled": labeled,
    }, schema=TRUTH_3D)
    renumbered = Snapshot(frame_no, states.obj, states.cls, states.green, states.box, states.colour)
    return RenderedLog(images=images, states=renumbered, occlusion=occlusion, truth=truth, truth_3d=truth_3d)


def _attr(green: np.ndarray) -> pa.Array:
    return pa.array(["green" if g else None for g in green.tolist()], pa.string())


def _rng(seed: int, week: int, log: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, week, log, stream])


def _epoch_ns(t: datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def _log_start_ns(start_ns: int, log: int, n_logs: int, night: bool, rng: np.random.Generator) -> int:
    """Logs spread over the 7 days after ``start``: daytime drives 08-17 h, night drives 20-24 h
    (hours counted from ``start``)."""
    day = log * 7 // n_logs
    hour = int(rng.integers(20, 24)) if night else int(rng.integers(8, 17))
    seconds = ((day * 24 + hour) * 60 + int(rng.integers(0, 60))) * 60 + int(rng.integers(0, 60))
    return start_ns + seconds * 1_000_000_000


def drive_week(
    week: int,
    *,
    seed: int,
    detector: Detector,
    n_logs: int = 12,
    frames_per_log: int = 40,
    out_dir: Path,
    start: datetime,
    config: FleetConfig | None = None,
    mix: WeekMix | None = None,
) -> SimWeek:
    """Drive, sense, detect and track one week of the simulated fleet.

    Log ids are ``w{week:02d}-veh{v:02d}-{i:03d}``; every FRAMES row carries the log's tags
    (vehicle ``veh-NN``, weather, time of day, place) and the PNG's absolute path. ``mix``
    defaults to :func:`~fleetloop.sim.world.week_mix` ``(week, seed)``."""
    if n_logs < 1 or frames_per_log < 1:
        raise ValueError("a week needs at least one log of at least one frame")
    config = config or FleetConfig()
    mix = mix or week_mix(week, seed)
    renderer = Renderer(config.camera, config.render)
    image_dir = Path(out_dir).resolve() / "images"
    start_ns = _epoch_ns(start)
    parts: list[DriveLogs] = []
    truths, truths_3d = [], []
    for i in range(n_logs):
        vehicle = i % config.n_vehicles + 1
        log_id = f"w{week:02d}-veh{vehicle:02d}-{i:03d}"
        scene_rng = _rng(seed, week, i, 0)
        weather, tod, place = draw_conditions(scene_rng, mix)
        scene = make_scene(scene_rng, mix, frames_per_log, weather=weather, time_of_day=tod, place=place,
                           camera=config.camera)
        log = render_log(log_id, scene, np.arange(frames_per_log), renderer, _rng(seed, week, i, 1))
        uris = _write_images(log.images, image_dir / log_id, config.png_compress_level)
        t0 = _log_start_ns(start_ns, i, n_logs, tod == "night", _rng(seed, week, i, 3))
        tags = {"vehicle": f"veh-{vehicle:02d}", "weather": weather, "time_of_day": tod, "place": place}
        parts.append(_log_streams(log_id, log, uris, t0, tags, detector, config, _rng(seed, week, i, 2), scene))
        truths.append(log.truth)
        truths_3d.append(log.truth_3d)
    return SimWeek(week=week, mix=mix, logs=DriveLogs.concat(parts), truth=pa.concat_tables(truths),
                   truth_3d=pa.concat_tables(truths_3d), image_dir=image_dir)


def _write_images(images: np.ndarray, folder: Path, compress_level: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for k, img in enumerate(images):
        path = folder / f"{k:06d}.png"
        Image.fromarray(img).save(path, compress_level=compress_level)
        uris.append(str(path))
    return uris


def _log_streams(log_id: str, log: RenderedLog, uris: list[str], t0_ns: int, tags: dict[str, str],
                 detector: Detector, config: FleetConfig, rng: np.random.Generator, scene: Scene) -> DriveLogs:
    n = len(uris)
    frame = np.arange(n, dtype=np.int32)
    frames = pa.Table.from_pydict({
        "log_id": pa.array([log_id] * n, pa.string()), "frame": frame,
        "timestamp_ns": t0_ns + frame.astype(np.int64) * FRAME_NS, "image_uri": uris,
        **{k: [v] * n for k, v in tags.items()},
    }, schema=FRAMES)
    lidar = simulate_lidar(log_id, log.states, log.occlusion, n, rain=scene.weather == "rain", rng=rng,
                           ground_z=config.camera.ground_z, cfg=config.lidar)
    raw = run_detector(detector, log.images, batch_size=config.detector_batch)
    camera = camera_table(log_id, raw, threshold=config.score_threshold)
    cam = config.camera
    calibration = pa.Table.from_pydict({
        "log_id": [log_id], "P": [cam.P().ravel().tolist()], "lidar_to_cam": [cam.lidar_to_cam().ravel().tolist()],
        "image_width": [cam.width], "image_height": [cam.height],
    }, schema=CALIBRATION)
    return DriveLogs(frames=frames, lidar_detections=lidar, camera_detections=camera,
                     tracks=track_camera(camera, config.tracker), calibration=calibration)


def write_truth(truth: pa.Table, path: Path | str) -> Path:
    """Write a truth table (TRUTH, TRUTH_3D or a scenario set's) to Parquet; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(truth, tmp)
    tmp.replace(path)
    return path


def eval_mix() -> WeekMix:
    """The mix of the evaluation set: every condition and class common."""
    return WeekMix(theme="evaluation", rain=0.5, night=0.5, green_cones=0.5, cars=0.45, pedestrians=0.22,
                   cyclists=0.13, cones=0.2, density=2.2)


_SLICES = (("clear", "day"), ("rain", "day"), ("clear", "night"), ("rain", "night"))


def render_scenario_set(
    seed: int,
    n_frames: int,
    mix: WeekMix | None = None,
    *,
    stratify: bool = True,
    frames_per_scene: int = 4,
    stride: int = 5,
    prefix: str = "eval",
    config: FleetConfig | None = None,
) -> tuple[np.ndarray, pa.Table, pa.Table]:
    """``n_frames`` images with ground truth: (images (N, H, W, 3) uint8, truth, frames).

    Frames come from short scenes (``frames_per_scene`` frames ``stride`` apart, log ids
    ``{prefix}-{seed}-{k:05d}``). With ``stratify`` (the held-out evaluation set) scenes cycle
    through clear/rain x day/night, and every other group of four forces green cones (all cone
    zones green, cones common); otherwise conditions and cone colours are drawn from ``mix``.
    ``mix`` (default :func:`eval_mix`) sets the class shares and density. The truth table is
    TRUTH plus ``image`` (the index into the images); ``frames`` is SCENARIO_FRAMES."""
    if n_frames < 0 or frames_per_scene < 1 or stride < 1:
        raise ValueError("n_frames >= 0, frames_per_scene >= 1 and stride >= 1 are required")
    config = config or FleetConfig()
    mix = mix or eval_mix()
    renderer = Renderer(config.camera, config.render)
    cam = config.camera
    images = np.empty((n_frames, cam.height, cam.width, 3), np.uint8)
    truths, metas = [], []
    done, k = 0, 0
    while done < n_frames:
        count = min(frames_per_scene, n_frames - done)
        rng = _rng(seed, 1_000_003, k, 0)
        scene_mix = mix
        if stratify:
            weather, tod = _SLICES[k % 4]
            place = str(rng.choice(["downtown", "suburb", "highway", "industrial"]))
            green = (k // 4) % 2 == 1
            scene_mix = mix.model_copy(update={"green_cones": 1.0 if green else 0.0,
                                               "cones": max(mix.cones, 0.3) if green else mix.cones})
        else:
            weather, tod, place = draw_conditions(rng, mix)
        frames = np.arange(count) * stride
        scene = make_scene(rng, scene_mix, int(frames[-1]) + 1, weather=weather, time_of_day=tod, place=place,
                           camera=cam)
        log_id = f"{prefix}-{seed}-{k:05d}"
        log = render_log(log_id, scene, frames, renderer, _rng(seed, 1_000_003, k, 1))
        images[done:done + count] = log.images
        truth = log.truth
        image_idx = (done + truth["frame"].to_numpy()).astype(np.int32)
        truths.append(truth.append_column(pa.field("image", pa.int32(), nullable=False), pa.array(image_idx)))
        green_frames = np.unique(truth["frame"].to_numpy()[truth["attr"].is_valid().to_numpy(zero_copy_only=False)])
        counts = np.bincount(truth["frame"].to_numpy(), minlength=count)
        metas.append(pa.Table.from_pydict({
            "image": np.arange(done, done + count, dtype=np.int32),
            "log_id": [log_id] * count, "frame": np.arange(count, dtype=np.int32),
            "weather": [weather] * count, "time_of_day": [tod] * count, "place": [place] * count,
            "green_cones": np.isin(np.arange(count), green_frames),
            "n_objects": counts.astype(np.int32),
        }, schema=SCENARIO_FRAMES))
        done += count
        k += 1
    truth_schema = TRUTH.append(pa.field("image", pa.int32(), nullable=False))
    truth = pa.concat_tables(truths) if truths else truth_schema.empty_table()
    meta = pa.concat_tables(metas) if metas else SCENARIO_FRAMES.empty_table()
    return images, truth, meta
