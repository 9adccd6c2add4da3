"""The simulated world: a straight road, the objects on it, the camera, and the weekly mix.

A *scene* is one vehicle's drive: the ego vehicle drives along world +x at a constant speed on
a three-lane road (its own lane centred on y = 0, a same-direction lane on the right, an
oncoming lane on the left, parking on the far left, sidewalks beyond). Cars, pedestrians,
cyclists and construction zones of traffic cones (orange, or rarely green) move at constant
velocity. :meth:`Scene.states` gives every object's 3D box in the **lidar frame** (x forward,
y left, z up, metres, box centre, yaw about +z; see docs/schema.md) at every 10 Hz frame.

:class:`Camera` is the pinhole camera on the ego vehicle: ``P`` and ``lidar_to_cam`` exactly as
in the ``CALIBRATION`` table, and :func:`project_boxes` projects lidar boxes to image boxes.

:class:`WeekMix` says how often the rare conditions happen (rain, night, green cones, class
shares); :func:`week_mix` gives a seeded mix per week: week 0 is almost all clear daytime with
almost no green cones; later weeks shift towards rain, night or green cones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleetloop.schema import CLASSES

CAR, PEDESTRIAN, CYCLIST, CONE = (CLASSES.index(c) for c in ("car", "pedestrian", "cyclist", "traffic_cone"))
#: Box size (l, w, h) in metres per class index.
SIZES = np.array([[4.2, 1.8, 1.5], [0.6, 0.6, 1.75], [1.8, 0.6, 1.7], [0.4, 0.4, 0.7]], np.float64)
FRAME_DT = 0.1  # seconds between frames (10 Hz)
PLACES: tuple[str, ...] = ("downtown", "suburb", "highway", "industrial")

ORANGE = (245.0, 112.0, 18.0)
GREEN = (40.0, 190.0, 70.0)
_CAR_COLOURS = np.array([[175, 30, 35], [35, 60, 150], [225, 225, 228], [150, 150, 156], [38, 38, 44],
                         [200, 178, 70], [105, 55, 125], [95, 35, 30], [70, 110, 150]], np.float64)
_CLOTHES = np.array([[190, 40, 45], [40, 80, 170], [230, 230, 230], [60, 60, 66], [140, 45, 140],
                     [40, 135, 160], [215, 190, 70], [120, 90, 60]], np.float64)
_VIEW_X = (-6.0, 90.0)  # lidar-frame x range in which objects are reported (metres)


class Camera(BaseModel):
    """A forward pinhole camera (no distortion) mounted near the lidar."""

    model_config = ConfigDict(frozen=True)

    width: int = Field(160, ge=16, le=4096, description="image width, pixels")
    height: int = Field(96, ge=16, le=4096, description="image height, pixels")
    focal: float = Field(120.0, gt=0, description="focal length, pixels (square pixels)")
    horizon: float = Field(0.42, gt=0, lt=1, description="principal point row as a share of the height")
    mount_height: float = Field(1.6, gt=0, description="camera above the ground, metres")
    lidar_height: float = Field(1.8, gt=0, description="lidar above the ground, metres")
    forward_offset: float = Field(0.3, description="camera ahead of the lidar along x, metres")

    @property
    def cx(self) -> float:
        return self.width / 2.0

    @property
    def cy(self) -> float:
        return self.horizon * self.height

    @property
    def ground_z(self) -> float:
        """The road surface's z in the lidar frame."""
        return -self.lidar_height

    def P(self) -> np.ndarray:
        """3x4 rectified-camera -> pixel projection."""
        return np.array([[self.focal, 0.0, self.cx, 0.0], [0.0, self.focal, self.cy, 0.0], [0.0, 0.0, 1.0, 0.0]])

    def lidar_to_cam(self) -> np.ndarray:
        """3x4 lidar -> camera transform (camera x right, y down, z forward)."""
        R = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
        centre = np.array([self.forward_offset, 0.0, self.mount_height - self.lidar_height])
        return np.hstack([R, (-R @ centre)[:, None]])

    def projection(self) -> np.ndarray:
        """3x4 matrix taking homogeneous lidar points straight to homogeneous pixels."""
        T = np.eye(4)
        T[:3] = self.lidar_to_cam()
        return self.P() @ T


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 7) boxes (x, y, z, l, w, h, yaw) -> (N, 8, 3) corners."""
    b = np.asarray(boxes, np.float64).reshape(-1, 7)
    sl = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
    sw = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * 0.5
    sh = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * 0.5
    c, s = np.cos(b[:, 6:7]), np.sin(b[:, 6:7])
    dx, dy = b[:, 3:4] * sl, b[:, 4:5] * sw
    return np.stack([b[:, 0:1] + c * dx - s * dy, b[:, 1:2] + s * dx + c * dy, b[:, 2:3] + b[:, 5:6] * sh], axis=-1)


def project_boxes(boxes: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project (N, 7) lidar boxes with the 3x4 lidar -> pixel matrix ``M``
    (:meth:`Camera.projection`): (N, 4) unclipped image boxes (x1, y1, x2, y2), the depth of the
    box centre and the smallest corner depth (metres along the optical axis)."""
    corners = box_corners(boxes)
    hom = corners @ M[:, :3].T + M[:, 3]
    depth = hom[..., 2]
    z = np.maximum(depth, 1e-3)
    u, v = hom[..., 0] / z, hom[..., 1] / z
    box2d = np.stack([u.min(1), v.min(1), u.max(1), v.max(1)], axis=1)
    b = np.asarray(boxes, np.float64).reshape(-1, 7)
    centre = b[:, :3] @ M[2, :3] + M[2, 3]
    return box2d, centre, depth.min(1) if depth.size else np.zeros(0)


class WeekMix(BaseModel):
    """How often each condition occurs in a week of drives."""

    model_config = ConfigDict(frozen=True)

    theme: str = Field("baseline", description="what this week shifted towards (for reports)")
    rain: float = Field(0.03, ge=0, le=1, description="share of logs driven in rain")
    night: float = Field(0.03, ge=0, le=1, description="share of logs driven at night")
    green_cones: float = Field(0.01, ge=0, le=1, description="share of construction zones with green cones")
    cars: float = Field(0.55, ge=0, description="relative weight of cars among spawned objects")
    pedestrians: float = Field(0.2, ge=0)
    cyclists: float = Field(0.1, ge=0)
    cones: float = Field(0.15, ge=0)
    density: float = Field(2.2, gt=0, le=20, description="objects per 10 m of road")

    def class_shares(self) -> np.ndarray:
        """Shares of (car, pedestrian, cyclist, traffic_cone), in CLASSES order."""
        w = np.zeros(len(CLASSES))
        w[[CAR, PEDESTRIAN, CYCLIST, CONE]] = [self.cars, self.pedestrians, self.cyclists, self.cones]
        if w.sum() <= 0:
            raise ValueError("a WeekMix needs at least one class with positive weight")
        return w / w.sum()


_THEMES: dict[str, dict[str, tuple[float, float]]] = {
    "rain": {"rain": (0.5, 0.7)},
    "night": {"night": (0.45, 0.65)},
    "green-cones": {"green_cones": (0.35, 0.55), "cones": (0.25, 0.32)},
    "rain-and-night": {"rain": (0.35, 0.45), "night": (0.35, 0.45)},
    "pedestrians": {"pedestrians": (0.3, 0.4), "cyclists": (0.14, 0.2), "green_cones": (0.1, 0.2)},
    "mixed": {"rain": (0.2, 0.35), "night": (0.2, 0.35), "green_cones": (0.2, 0.35)},
}
_FIRST_THEMES = ("rain", "night", "green-cones")  # weeks 1, 2, 3


def week_mix(week: int, seed: int = 0) -> WeekMix:
    """The mix of week ``week`` (0-based), a deterministic function of (week, seed).

    Week 0 is almost all clear daytime with almost no green cones (a model trained on it is weak
    on the rare slices); weeks 1, 2 and 3 shift towards rain, night and green cones; later weeks
    pick a seeded theme. Once green cones have appeared (week 3) they stay at a few percent."""
    if week < 0:
        raise ValueError(f"week must be >= 0, got {week}")
    rng = np.random.default_rng([seed, week, 0x5EED])
    jitter = rng.uniform(0.9, 1.1, 5)
    values: dict[str, float] = {
        "rain": float(rng.uniform(0.01, 0.04)),
        "night": float(rng.uniform(0.01, 0.04)),
        "green_cones": float(rng.uniform(0.0, 0.015)),
        "cars": 0.55 * jitter[0],
        "pedestrians": 0.2 * jitter[1],
        "cyclists": 0.1 * jitter[2],
        "cones": 0.15 * jitter[3],
        "density": 2.2 * jitter[4],
    }
    if week == 0:
        return WeekMix(theme="baseline", **values)
    theme = _FIRST_THEMES[week - 1] if week <= len(_FIRST_THEMES) else str(rng.choice(sorted(_THEMES)))
    if week >= 3:
        values["green_cones"] = max(values["green_cones"], float(rng.uniform(0.05, 0.1)))
    for key, (lo, hi) in _THEMES[theme].items():
        values[key] = float(rng.uniform(lo, hi))
    return WeekMix(theme=theme, **values)


@dataclass(frozen=True)
class Actors:
    """The objects of one scene, in world coordinates at t = 0 (x along the road, y left)."""

    cls: np.ndarray  # (n,) int8 index into CLASSES
    green: np.ndarray  # (n,) bool, green cone
    size: np.ndarray  # (n, 3) l, w, h metres
    x: np.ndarray  # (n,) metres
    y: np.ndarray
    vx: np.ndarray  # (n,) metres / second
    vy: np.ndarray
    yaw: np.ndarray  # (n,) radians
    colour: np.ndarray  # (n, 3) float RGB of the body / clothes / cone

    def __len__(self) -> int:
        return int(self.cls.size)


@dataclass(frozen=True)
class Snapshot:
    """Objects at one or more frames, one row per (frame, object), ordered by frame then object."""

    frame: np.ndarray  # (m,) int32
    obj: np.ndarray  # (m,) int64 object index in the scene (a stable track id)
    cls: np.ndarray  # (m,) int8
    green: np.ndarray  # (m,) bool
    box: np.ndarray  # (m, 7) float64 lidar-frame x, y, z, l, w, h, yaw
    colour: np.ndarray  # (m, 3) float64

    def __len__(self) -> int:
        return int(self.frame.size)

    def take(self, idx: np.ndarray | slice) -> Snapshot:
        return Snapshot(self.frame[idx], self.obj[idx], self.cls[idx], self.green[idx], self.box[idx], self.colour[idx])

    def at(self, frame: int) -> Snapshot:
        """The rows of one frame (``frame`` must be sorted, as :meth:`Scene.states` returns it)."""
        lo, hi = np.searchsorted(self.frame, [frame, frame + 1])
        return self.take(slice(int(lo), int(hi)))


@dataclass(frozen=True)
class Scene:
    """One drive: the actors, the ego speed and the conditions (constant for the drive)."""

    actors: Actors
    ego_speed: float  # metres / second along +x
    weather: str
    time_of_day: str
    place: str
    lidar_height: float = 1.8

    def ego_x(self, frame: int | np.ndarray) -> np.ndarray:
        return np.asarray(frame, np.float64) * FRAME_DT * self.ego_speed

    def states(self, frames: np.ndarray | int) -> Snapshot:
        """Lidar-frame boxes of every object within view range at the given frames."""
        f = np.arange(frames) if isinstance(frames, int | np.integer) else np.asarray(frames)
        a = self.actors
        t = f[:, None] * FRAME_DT
        X = a.x[None, :] + a.vx[None, :] * t - self.ego_x(f)[:, None]
        Y = a.y[None, :] + a.vy[None, :] * t
        fi, oi = np.nonzero((_VIEW_X[0] < X) & (_VIEW_X[1] > X))
        size = a.size[oi]
        z = -self.lidar_height + size[:, 2] / 2
        box = np.column_stack([X[fi, oi], Y[fi, oi], z, size, a.yaw[oi]])
        return Snapshot(f[fi].astype(np.int32), oi.astype(np.int64), a.cls[oi], a.green[oi], box, a.colour[oi])


def draw_conditions(rng: np.random.Generator, mix: WeekMix) -> tuple[str, str, str]:
    """(weather, time_of_day, place) of one log, drawn from the mix."""
    weather = "rain" if rng.random() < mix.rain else "clear"
    tod = "night" if rng.random() < mix.night else "day"
    return weather, tod, str(rng.choice(PLACES))


def _lane_positions(rng: np.random.Generator, n: int, lo: float, hi: float, gap: float) -> np.ndarray:
    """``n`` sorted positions in [lo, hi] at least ``gap`` apart (fewer if they do not fit)."""
    n = int(min(n, max(0, (hi - lo) // gap)))
    return lo + np.sort(rng.uniform(0, hi - lo - n * gap, n)) + gap * np.arange(n)


def _cars(rng: np.random.Generator, n: int, length: float, ego_speed: float, place: str) -> dict[str, np.ndarray]:
    # lanes: (y, speed range, share); the oncoming lane drives towards -x, parked cars stand still
    lanes = [(0.0, (ego_speed - 1.0, ego_speed + 2.0), 0.2), (-3.5, (ego_speed - 3.0, ego_speed + 3.0), 0.3),
             (3.5, (-14.0, -8.0), 0.3), (6.6, (0.0, 0.0), 0.0 if place == "highway" else 0.2)]
    share = np.array([s for _, _, s in lanes])
    counts = rng.multinomial(n, share / share.sum())
    parts = []
    for (y, (vlo, vhi), _), k in zip(lanes, counts, strict=True):
        lo = 10.0 if y == 0.0 else 4.0  # nothing parked in the ego's bumper
        x = _lane_positions(rng, k, lo, length, 8.0)
        v = np.full(x.size, rng.uniform(vlo, vhi))
        parts.append((x, np.full(x.size, y) + rng.normal(0, 0.15, x.size), v, np.zeros(x.size)))
    return _stack(parts)


def _pedestrians(rng: np.random.Generator, n: int, length: float) -> dict[str, np.ndarray]:
    side = rng.choice([-1.0, 1.0], n)
    x = rng.uniform(3.0, length, n)
    y = side * rng.uniform(7.5, 9.8, n)
    vx = rng.choice([-1.0, 1.0], n) * rng.uniform(0.8, 1.6, n)
    vy = np.zeros(n)
    kind = rng.random(n)
    vx[kind < 0.2] = 0.0  # standing
    crossing = kind > 0.88
    y[crossing] = side[crossing] * 7.4
    vx[crossing] = 0.0
    vy[crossing] = -side[crossing] * rng.uniform(1.0, 1.6, int(crossing.sum()))
    return _stack([(x, y, vx, vy)])


def _cyclists(rng: np.random.Generator, n: int, length: float) -> dict[str, np.ndarray]:
    oncoming = rng.random(n) < 0.3
    x = rng.uniform(4.0, length, n)
    y = np.where(oncoming, 4.9, -4.9) + rng.normal(0, 0.15, n)
    vx = np.where(oncoming, -1.0, 1.0) * rng.uniform(3.0, 6.0, n)
    return _stack([(x, y, vx, np.zeros(n))])


def _cones(rng: np.random.Generator, n: int, length: float, green_share: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Construction zones of 4-8 cones in a line; each zone is all green or all orange."""
    parts, green = [], []
    for _ in range(int(np.ceil(n / 6))):
        k = int(rng.integers(4, 9))
        x = rng.uniform(6.0, max(7.0, length - 10.0)) + np.arange(k) * rng.uniform(2.5, 4.0)
        y = np.full(k, rng.choice([1.9, -1.9, -5.4])) + rng.normal(0, 0.05, k)
        parts.append((x, y, np.zeros(k), np.zeros(k)))
        green.append(np.full(k, rng.random() < green_share))
    return _stack(parts), np.concatenate(green) if green else np.zeros(0, bool)


def _stack(parts: Sequence[tuple[np.ndarray, ...]]) -> dict[str, np.ndarray]:
    cols = [np.concatenate([p[i] for p in parts]) if parts else np.zeros(0) for i in range(4)]
    return dict(zip(("x", "y", "vx", "vy"), cols, strict=True))


def make_scene(
    rng: np.random.Generator,
    mix: WeekMix,
    n_frames: int,
    *,
    weather: str,
    time_of_day: str,
    place: str,
    camera: Camera | None = None,
) -> Scene:
    """A scene long enough for ``n_frames`` frames, objects drawn from the mix."""
    camera = camera or Camera()
    ego_speed = float(rng.uniform(6.0, 12.0))
    length = ego_speed * FRAME_DT * n_frames + 90.0
    counts = rng.poisson(mix.density * length / 10.0 * mix.class_shares())
    groups = {
        CAR: _cars(rng, counts[CAR], length, ego_speed, place),
        PEDESTRIAN: _pedestrians(rng, counts[PEDESTRIAN], length),
        CYCLIST: _cyclists(rng, counts[CYCLIST], length),
    }
    cone_cols, cone_green = _cones(rng, counts[CONE], length, mix.green_cones)
    groups[CONE] = cone_cols
    cls = np.concatenate([np.full(g["x"].size, c, np.int8) for c, g in groups.items()])
    col = {k: np.concatenate([g[k] for g in groups.values()]) for k in ("x", "y", "vx", "vy")}
    n = cls.size
    green = np.zeros(n, bool)
    green[cls == CONE] = cone_green
    moving = (col["vx"] != 0) | (col["vy"] != 0)
    yaw = np.where(moving, np.arctan2(col["vy"], col["vx"]), rng.choice([0.0, np.pi], n))
    size = SIZES[cls] * rng.uniform(0.92, 1.08, (n, 1))
    colour = np.where((cls == CAR)[:, None], _CAR_COLOURS[rng.integers(0, len(_CAR_COLOURS), n)],
                      _CLOTHES[rng.integers(0, len(_CLOTHES), n)])
    colour = np.clip(colour + rng.normal(0, 8, (n, 3)), 0, 255)
    colour[cls == CONE] = np.where(green[cls == CONE, None], GREEN, ORANGE)
    actors = Actors(cls=cls, green=green, size=size, x=col["x"], y=col["y"], vx=col["vx"], vy=col["vy"],
                    yaw=yaw, colour=colour)
    return Scene(actors=actors, ego_speed=ego_speed, weather=weather, time_of_day=time_of_day, place=place,
                 lidar_height=camera.lidar_height)
