"""A small numpy renderer: camera images of a scene with exact 2D ground truth.

Each frame is drawn as an RGB uint8 image: sky, skyline (per place), road with edge lines and
dashed lane lines that move with the ego vehicle, then the objects far to near (nearer ones
occlude farther ones) as simple shaded silhouettes: cars as boxes with a cabin, windows, wheels
and lamps; pedestrians tall and thin with a head and two legs; cyclists over two wheels; cones
as triangles with a reflective stripe (orange, or green). Then the conditions: rain lowers the
contrast, blurs and adds streaks; night darkens everything except what the headlights and
streetlights reach and the lamps, and adds sensor noise.

Every silhouette fills its object's projected 3D box: the non-background pixels of an object
drawn alone span its ground-truth box to within half a pixel. Ground truth is the projected box
clipped to the image (and, for an object cut by the image border, tightened to the part of the
silhouette inside), for objects above a minimum size and below a maximum occlusion; the box is
amodal (nearer objects do not shrink it) and the occlusion fraction is measured on the drawn
pixels (an id buffer).

    renderer = Renderer(Camera())
    out = renderer.render(scene.states(40).at(0), weather="rain", time_of_day="night",
                          place="suburb", ego_x=0.0, rng=np.random.default_rng(0))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleetloop.sim.world import CAR, CONE, CYCLIST, PEDESTRIAN, PLACES, Camera, Snapshot, project_boxes

ROAD_HALF_WIDTH = 5.25  # metres: three lanes of 3.5 m
LANE_LINES = (1.75, -1.75)  # dashed lines, lidar-frame y
PLAIN = (128.0, 128.0, 128.0)  # the background of RenderConfig(plain=True)
_GLASS = np.array([55.0, 70.0, 92.0])
_TYRE = np.array([24.0, 24.0, 26.0])
_SKIN = np.array([215.0, 170.0, 135.0])
_TROUSERS = np.array([48.0, 48.0, 60.0])
_METAL = np.array([165.0, 165.0, 175.0])
_STRIPE = np.array([238.0, 238.0, 238.0])
_TAIL = np.array([255.0, 45.0, 30.0])
_HEAD = np.array([255.0, 250.0, 215.0])


class RenderConfig(BaseModel):
    """What is drawn and what counts as a visible object."""

    model_config = ConfigDict(frozen=True)

    min_height_px: float = Field(4.0, ge=0, description="smaller boxes are drawn but not ground truth")
    min_width_px: float = Field(2.0, ge=0)
    max_occlusion: float = Field(0.8, ge=0, le=1, description="more hidden objects are not ground truth")
    near_m: float = Field(1.0, gt=0, description="objects with a corner nearer than this are not drawn")
    rain_contrast: float = Field(0.5, gt=0, le=1, description="share of the contrast left in rain")
    rain_streaks: int = Field(140, ge=0, description="rain streaks per frame")
    night_ambient: float = Field(0.12, ge=0, le=1, description="light outside the headlights at night")
    streetlight_ambient: float = Field(0.24, ge=0, le=1, description="night ambient downtown")
    headlight_range_m: float = Field(28.0, gt=0)
    day_noise: float = Field(2.0, ge=0, description="sensor noise std-dev by day (8-bit levels)")
    night_noise: float = Field(9.0, ge=0, description="sensor noise std-dev at night")
    plain: bool = Field(False, description="flat grey background, no lighting, weather or noise (tests)")


@dataclass(frozen=True)
class Rendered:
    """One frame: the image and the ground truth of the objects it shows."""

    image: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray  # (k, 4) float32 x1, y1, x2, y2 pixels, clipped to the image
    rows: np.ndarray  # (k,) int64 rows of the rendered Snapshot
    occlusion: np.ndarray  # (k,) float32 share of the object's silhouette hidden by nearer objects
    depth: np.ndarray  # (k,) float32 metres along the optical axis (box centre)
    occlusion_all: np.ndarray  # (m,) float32 per Snapshot row (0 when not drawn)
    in_image: np.ndarray  # (m,) bool: at least one pixel drawn


@dataclass(frozen=True)
class _Ground:
    """Per-pixel ground geometry below the horizon: distance ahead and lateral offset."""

    row0: int  # first row that sees the ground
    dist: np.ndarray  # (rows,) metres along x from the camera
    lateral: np.ndarray  # (rows, W) lidar-frame y


def _ground(camera: Camera) -> _Ground:
    v = np.arange(camera.height) + 0.5
    row0 = int(np.searchsorted(v - camera.cy, 0.35, side="right"))
    dist = camera.focal * camera.mount_height / (v[row0:] - camera.cy)
    u = np.arange(camera.width) + 0.5
    lateral = -(u[None, :] - camera.cx) * dist[:, None] / camera.focal
    return _Ground(row0, dist, lateral)


def beam(x: np.ndarray, y: np.ndarray, reach: float) -> np.ndarray:
    """Headlight illumination in [0, 1] at lidar-frame ground position (x forward, y left)."""
    x = np.asarray(x, np.float64)
    return np.where(x > 0, np.exp(-((x / reach) ** 2)) * np.exp(-((np.asarray(y) / (1.5 + 0.25 * np.abs(x))) ** 2)), 0.0)


class Renderer:
    """Draws frames for one camera; backgrounds and noise are cached per condition."""

    def __init__(self, camera: Camera | None = None, config: RenderConfig | None = None) -> None:
        self.camera = camera or Camera()
        self.config = config or RenderConfig()
        self._ground = _ground(self.camera)
        self._M = self.camera.projection()
        self._backgrounds: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}
        H, W = self.camera.height, self.camera.width
        self._noise = np.random.default_rng(0x4E01).standard_normal((H + 32, W + 32, 3)).astype(np.float32)
        g = self._ground
        near = np.zeros((g.dist.size, W), bool)
        for y in LANE_LINES:
            half = np.maximum(0.5, self.camera.focal * 0.075 / g.dist)
            near |= np.abs(g.lateral - y) * self.camera.focal / g.dist[:, None] <= half[:, None]
        self._lane_mask = near

    # ----------------------------------------------------------------------------- background
    def _light(self, place: str, time_of_day: str, weather: str) -> float:
        if self.config.plain:
            return 1.0
        if time_of_day == "night":
            return self.config.streetlight_ambient if place == "downtown" else self.config.night_ambient
        return 0.85 if weather == "rain" else 1.0

    def background(self, place: str, weather: str, time_of_day: str) -> tuple[np.ndarray, np.ndarray]:
        """(background, lane-dash colours), both (H, W, 3) float32, cached."""
        key = (place, weather, time_of_day)
        if key not in self._backgrounds:
            self._backgrounds[key] = self._draw_background(*key)
        return self._backgrounds[key]

    def _draw_background(self, place: str, weather: str, time_of_day: str) -> tuple[np.ndarray, np.ndarray]:
        cam, g = self.camera, self._ground
        H, W = cam.height, cam.width
        if self.config.plain:
            flat = np.empty((H, W, 3), np.float32)
            flat[:] = PLAIN
            return flat, flat
        night = time_of_day == "night"
        img = np.empty((H, W, 3), np.float64)
        t = np.clip((np.arange(H) + 0.5) / max(cam.cy, 1.0), 0, 1)[:, None]
        if night:
            top, low = np.array([6.0, 8, 20]), np.array([26.0, 24, 38])
        elif weather == "rain":
            top, low = np.array([140.0, 144, 150]), np.array([178.0, 180, 184])
        else:
            top, low = np.array([95.0, 150, 215]), np.array([190.0, 210, 230])
        img[:] = (top * (1 - t) + low * t)[:, None, :]
        self._skyline(img, place, night)
        ambient = self._light(place, time_of_day, weather)
        lat, dist = np.abs(g.lateral), g.dist[:, None]
        road = np.array([70.0, 71, 76]) if weather == "rain" else np.array([92.0, 92, 96])
        side = {"downtown": [150.0, 147, 140], "suburb": [86.0, 112, 62], "highway": [110.0, 118, 80],
                "industrial": [128.0, 124, 112]}[place]
        ground = np.where((lat < ROAD_HALF_WIDTH)[..., None], road, np.array([125.0, 122, 118]))
        ground = np.where((lat > 7.2)[..., None], np.array(side), ground)
        edge = (np.abs(lat - 5.1) * cam.focal / dist <= np.maximum(0.5, cam.focal * 0.075 / dist))
        ground[edge] = [220.0, 220, 215]
        haze = np.clip(dist / 120.0, 0, 1)[..., None]
        ground = ground * (1 - haze) + low * haze
        dash = np.broadcast_to(np.array([228.0, 228, 222]), ground.shape).copy()
        if night:
            light = ambient + (1 - ambient) * beam(np.broadcast_to(dist, lat.shape), g.lateral, self.config.headlight_range_m)
            ground *= light[..., None]
            dash *= np.minimum(1.0, light * 1.6)[..., None]  # retro-reflective paint
        else:
            ground *= ambient
            dash *= ambient
        img[g.row0:] = ground
        dashes = img.copy()
        dashes[g.row0:] = dash
        return img.astype(np.float32), dashes.astype(np.float32)

    def _skyline(self, img: np.ndarray, place: str, night: bool) -> None:
        """Static silhouettes above the horizon (buildings, trees, hills, sheds)."""
        cam = self.camera
        rng = np.random.default_rng(PLACES.index(place) + 17)
        W, horizon = cam.width, int(cam.cy)
        u = np.arange(W)
        if place == "downtown":
            edges = np.cumsum(rng.integers(8, 22, W))
            heights = rng.integers(6, max(7, horizon - 4), edges.size)[np.searchsorted(edges, u, side="right")]
            colour = np.array([120.0, 110, 105])
        elif place == "suburb":
            heights = (5 + 4 * np.abs(np.sin(u / 5.0 + rng.uniform(0, 6))) + 3 * np.sin(u / 17.0)).astype(int)
            colour = np.array([60.0, 92, 55])
        elif place == "highway":
            heights = (4 + 3 * np.sin(u / 40.0 + rng.uniform(0, 6))).astype(int)
            colour = np.array([120.0, 140, 150])
        else:
            edges = np.cumsum(rng.integers(14, 30, W))
            heights = rng.integers(4, 12, edges.size)[np.searchsorted(edges, u, side="right")]
            colour = np.array([140.0, 135, 125])
        heights = np.clip(heights, 0, horizon)
        rows = np.arange(horizon)[:, None]
        mask = rows >= (horizon - heights)[None, :]
        shade = 0.12 if night else 1.0
        img[:horizon][mask] = colour * shade
        if night and place == "downtown":
            windows = mask & (rng.random(mask.shape) < 0.08)
            img[:horizon][windows] = [200.0, 180, 110]

    # ----------------------------------------------------------------------------- objects
    def _object_light(self, box: np.ndarray, place: str, weather: str, time_of_day: str) -> np.ndarray:
        ambient = self._light(place, time_of_day, weather)
        if self.config.plain or time_of_day != "night":
            return np.full(len(box), ambient)
        return ambient + (1 - ambient) * beam(box[:, 0], box[:, 1], self.config.headlight_range_m)

    def render(
        self,
        snap: Snapshot,
        *,
        weather: str = "clear",
        time_of_day: str = "day",
        place: str = "suburb",
        ego_x: float = 0.0,
        rng: np.random.Generator,
    ) -> Rendered:
        """Draw the objects of one frame (``snap`` holds that frame's rows only)."""
        cam, cfg = self.camera, self.config
        H, W = cam.height, cam.width
        bg, dashes = self.background(place, weather, time_of_day)
        img = bg.copy()
        if not cfg.plain:
            g = self._ground
            on = np.mod(g.dist + cam.forward_offset + ego_x, 6.0) < 3.0
            dash = self._lane_mask & on[:, None]
            img[g.row0:][dash] = dashes[g.row0:][dash]
        m = len(snap)
        box2d, depth, min_depth = project_boxes(snap.box, self._M) if m else (np.zeros((0, 4)), np.zeros(0), np.zeros(0))
        light = self._object_light(snap.box, place, weather, time_of_day) if m else np.zeros(0)
        ids = np.zeros((H, W), np.int32)
        own = np.zeros(m, np.int64)
        extent = np.zeros((m, 4), np.int64)  # pixel extent of each drawn silhouette (c0, r0, c1, r1)
        night = time_of_day == "night" and not cfg.plain
        pix = np.ceil(box2d - 0.5).astype(np.int64)  # pixel (r, c) is inside when its centre is
        vis = np.clip(pix, 0, [W, H, W, H])
        drawable = (min_depth >= cfg.near_m) & (vis[:, 2] > vis[:, 0]) & (vis[:, 3] > vis[:, 1])
        size = pix[:, 2:] - pix[:, :2]
        tiny = (size[:, 0] < 3) | (size[:, 1] < 6)  # too small for a silhouette: a filled box
        order = np.flatnonzero(drawable)
        order = order[np.argsort(-depth[order], kind="stable")]
        for run in np.split(order, np.flatnonzero(np.diff(tiny[order].astype(np.int8))) + 1):
            if run.size and tiny[run[0]]:
                own[run] = _fill(img, ids, run, vis[run], snap.colour[run] * light[run, None])
                extent[run] = vis[run]
                continue
            for i in run.tolist():
                own[i], extent[i] = _draw(img, ids, i + 1, pix[i].tolist(), vis[i].tolist(), int(snap.cls[i]),
                               snap.colour[i], float(light[i]), front=bool(np.cos(snap.box[i, 6]) < 0), night=night)
        seen = np.bincount(ids.ravel(), minlength=m + 1)[1:]
        occ_all = np.where(own > 0, 1.0 - seen / np.maximum(own, 1), 0.0).astype(np.float32)
        # the projected box clipped to the image; where the silhouette stops short of that by a
        # pixel or more (an object cut by the image border shows only part of its shape), the
        # silhouette's pixel extent instead
        clipped = np.where(extent != vis, extent, np.clip(box2d, 0, [W, H, W, H])).astype(np.float32)
        bw, bh = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        keep = (own > 0) & (bh >= cfg.min_height_px) & (bw >= cfg.min_width_px) & (occ_all <= cfg.max_occlusion)
        rows = np.flatnonzero(keep)
        if not cfg.plain:
            self._weather(img, weather, night, rng)
        np.clip(img, 0, 255, out=img)
        return Rendered(image=img.astype(np.uint8), boxes=clipped[rows], rows=rows.astype(np.int64),
                        occlusion=occ_all[rows], depth=depth[rows].astype(np.float32),
                        occlusion_all=occ_all, in_image=own > 0)

    # ----------------------------------------------------------------------------- conditions
    def _weather(self, img: np.ndarray, weather: str, night: bool, rng: np.random.Generator) -> None:
        cfg = self.config
        H, W = self.camera.height, self.camera.width
        if weather == "rain":
            c = cfg.rain_contrast
            img *= c
            img += (1 - c) * (38.0 if night else 150.0)
            blurred = img * 0.5
            blurred[:, 1:] += 0.25 * img[:, :-1]
            blurred[:, :1] += 0.25 * img[:, :1]
            blurred[1:] += 0.25 * img[:-1]
            blurred[:1] += 0.25 * img[:1]
            img[:] = blurred
            n, length = cfg.rain_streaks, 5
            slope = rng.uniform(-0.5, 0.1)
            r0 = rng.integers(0, H - length, n)[:, None] + np.arange(length)
            c0 = (rng.integers(0, W, n)[:, None] + np.round(np.arange(length) * slope).astype(int)) % W
            img[r0, c0] += 22.0 if night else 38.0
        sigma = cfg.night_noise if night else cfg.day_noise
        if sigma > 0:
            oy, ox = rng.integers(0, 32, 2)
            img += sigma * self._noise[oy:oy + H, ox:ox + W]


# --------------------------------------------------------------------------------- silhouettes
def _fill(img: np.ndarray, ids: np.ndarray, rows: np.ndarray, vis: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Fill the visible pixel boxes ``vis`` (k, 4: c0, r0, c1, r1) of several small objects, far
    to near, in one scatter; returns their pixel counts."""
    w, h = vis[:, 2] - vis[:, 0], vis[:, 3] - vis[:, 1]
    n = w * h
    k = np.repeat(np.arange(rows.size), n)
    t = np.arange(k.size) - np.repeat(np.cumsum(n) - n, n)
    r, c = vis[k, 1] + t // w[k], vis[k, 0] + t % w[k]
    img[r, c] = rgb[k]
    ids[r, c] = rows[k] + 1
    return n


def _draw(img: np.ndarray, ids: np.ndarray, obj_id: int, pix: list[int], vis: list[int], cls: int,
          colour: np.ndarray, light: float, *, front: bool, night: bool) -> tuple[int, tuple[int, int, int, int]]:
    """Draw one object's silhouette filling its pixel box ``pix`` (c0, r0, c1, r1, unclipped,
    end exclusive) inside the visible window ``vis`` (the same, clipped to the image); returns
    its pixel count and the pixel extent of what was drawn (c0, r0, c1, r1)."""
    c0, r0, c1, r1 = pix
    cc0, rr0, cc1, rr1 = vis
    mask, part, shade, full_extent = _template(cls, c1 - c0, r1 - r0)
    window = (slice(rr0 - r0, rr1 - r0), slice(cc0 - c0, cc1 - c0))
    m = mask[window]
    rgb = _palette(cls, colour, light, front, night)[part[window][m]] * shade[window][m][:, None]
    img[rr0:rr1, cc0:cc1][m] = rgb
    ids[rr0:rr1, cc0:cc1][m] = obj_id
    if pix == vis:
        x0, y0, x1, y1 = full_extent
        return rgb.shape[0], (c0 + x0, r0 + y0, c0 + x1, r0 + y1)
    if not rgb.shape[0]:
        return 0, (0, 0, 0, 0)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    return rgb.shape[0], (cc0 + int(cols[0]), rr0 + int(rows[0]), cc0 + int(cols[-1]) + 1, rr0 + int(rows[-1]) + 1)


def _palette(cls: int, colour: np.ndarray, light: float, front: bool, night: bool) -> np.ndarray:
    """Colours of a silhouette's parts (see :func:`_template`), lit."""
    if cls == CAR:
        lamp = (_HEAD if front else _TAIL) / (light if night else 1.25)  # lamps glow at night
        pal = [colour, _GLASS, _TYRE, colour * 0.6, lamp]
    elif cls == PEDESTRIAN:
        pal = [colour, _SKIN, colour * 0.8, _TROUSERS]
    elif cls == CYCLIST:
        pal = [colour, _METAL * 0.5, _TROUSERS, _METAL, _TYRE]
    else:
        pal = [colour, _STRIPE * (min(1.0, light * 1.8) / light if night and light > 0 else 1.0), colour * 0.55]
    return np.array(pal) * light


@functools.lru_cache(maxsize=8192)
def _template(cls: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """The silhouette of a class in a w x h pixel box: (mask, part index, shade) read-only, and
    the mask's pixel extent (c0, r0, c1, r1) in the box.

    Pixel (r, c) is sampled at its centre in box-relative coordinates u, v in (0, 1)."""
    u = ((np.arange(w) + 0.5) / w)[None, :]
    v = ((np.arange(h) + 0.5) / h)[:, None]
    if w < 3 or h < 6:  # too small for a silhouette: a filled box
        mask, part = np.ones((h, w), bool), np.zeros((h, w), np.uint8)
    else:
        mask, part = _SHAPES[cls](np.abs(u - 0.5), v, 0.51 / w)
    shade = np.broadcast_to(1.08 - 0.3 * v, (h, w)).astype(np.float32)
    for a in (mask, part, shade):
        a.flags.writeable = False
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask, part, shade, (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _car(au: np.ndarray, v: np.ndarray, narrow: float) -> tuple[np.ndarray, np.ndarray]:
    """Parts: 0 body, 1 glass, 2 tyres, 3 bumper, 4 lamps (a cabin on a wider body)."""
    cabin = (v < 0.4) & (au < 0.36)
    wheel = (v >= 0.84) & (np.abs(au - 0.32) < 0.12)
    mask = cabin | ((v >= 0.4) & (v < 0.84)) | wheel
    part = np.zeros(mask.shape, np.uint8)
    part[np.broadcast_to((v > 0.1) & (v < 0.36) & (au < 0.29), mask.shape)] = 1
    part[np.broadcast_to((v >= 0.74) & (v < 0.84), mask.shape)] = 3
    part[wheel] = 2
    part[np.broadcast_to((v >= 0.48) & (v < 0.6) & (au > 0.36), mask.shape)] = 4
    return mask, part


def _pedestrian(au: np.ndarray, v: np.ndarray, narrow: float) -> tuple[np.ndarray, np.ndarray]:
    """Parts: 0 shirt, 1 head, 2 arms, 3 legs (tall and thin, two legs)."""
    head = (v < 0.17) & (au < max(0.2, narrow))
    torso = np.broadcast_to((v >= 0.17) & (v < 0.56), (v.size, au.size))
    legs = (v >= 0.56) & (np.abs(au - 0.2) < 0.16)
    mask = head | torso | legs
    part = np.zeros(mask.shape, np.uint8)
    part[head] = 1
    part[torso & (au > 0.32)] = 2
    part[legs] = 3
    return mask, part


def _cyclist(au: np.ndarray, v: np.ndarray, narrow: float) -> tuple[np.ndarray, np.ndarray]:
    """Parts: 0 jersey, 1 helmet, 2 legs, 3 frame, 4 tyres (a rider over two wheels)."""
    d = ((au - 0.28) / 0.22) ** 2 + ((v - 0.78) / 0.22) ** 2
    wheels = (d <= 1.0) & (d >= 0.42)
    frame = (v > 0.6) & (v < 0.67) & (au < 0.28)
    rider = (v >= 0.14) & (v < 0.62) & (au < max(0.16, narrow))
    head = (v < 0.14) & (au < max(0.1, narrow))
    leg = (v >= 0.62) & (v < 0.86) & (au < max(0.06, narrow))
    mask = wheels | frame | rider | head | leg
    part = np.zeros(mask.shape, np.uint8)
    part[head] = 1
    part[leg] = 2
    part[frame] = 3
    part[wheels] = 4
    return mask, part


def _cone(au: np.ndarray, v: np.ndarray, narrow: float) -> tuple[np.ndarray, np.ndarray]:
    """Parts: 0 cone, 1 reflective stripe, 2 base plate (a triangle on a plate)."""
    half = np.maximum(0.5 * (0.12 + 0.88 * np.minimum(v / 0.88, 1.0)), narrow)
    body = (au <= half) & (v < 0.88)
    base = np.broadcast_to(v >= 0.88, body.shape)
    mask = body | base
    part = np.zeros(mask.shape, np.uint8)
    part[body & (v > 0.4) & (v < 0.6)] = 1
    part[base] = 2
    return mask, part


_SHAPES = {CAR: _car, PEDESTRIAN: _pedestrian, CYCLIST: _cyclist, CONE: _cone}
