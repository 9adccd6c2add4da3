"""Synthetic camera frames with exact 2D boxes, for tests and benchmarks of the reference model.

Small numpy-drawn road scenes (sky, road, noise) holding cars, pedestrians, cyclists and traffic
cones (a few cones are green: box ``attr`` "green"), under clear/rain/fog weather and day/night
light. Far objects are smaller and higher in the image; near ones are drawn last (they occlude).
The output is a table in the prepared-split layout (``fleetloop.train.metrics.PREPARED_SCHEMA``).

CLI: ``python -m fleetloop.train.reference.synthetic --out DIR [--train N --val N --test N]``
writes ``DIR/{train,val,test}.parquet``.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fleetloop.schema import CLASSES
from fleetloop.train.metrics import PREPARED_SCHEMA

#: (width, height) in pixels of each class at the bottom of the image (nearest).
_NEAR_SIZE = {"car": (46.0, 28.0), "pedestrian": (11.0, 32.0), "cyclist": (19.0, 30.0), "traffic_cone": (10.0, 14.0)}
_CAR_COLOURS = np.array([[200, 30, 30], [30, 60, 200], [230, 230, 230], [25, 25, 30], [160, 160, 170], [220, 200, 40]])
_CLOTHES = np.array([[40, 90, 200], [200, 40, 40], [40, 160, 60], [230, 200, 40], [150, 60, 170], [250, 250, 250]])
_WEATHER = (("clear", 0.6), ("rain", 0.25), ("fog", 0.15))
_TIME = (("day", 0.7), ("night", 0.3))


def _choice(rng: np.random.Generator, options: Sequence[tuple[str, float]]) -> str:
    names = [o[0] for o in options]
    probs = np.array([o[1] for o in options])
    return names[int(rng.choice(len(names), p=probs / probs.sum()))]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    horizon = int(height * rng.uniform(0.3, 0.45))
    img = np.empty((height, width, 3), np.float32)
    t = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None, None]
    sky_top, sky_low = np.array([90, 140, 210], np.float32), np.array([180, 200, 225], np.float32)
    img[:horizon] = sky_top * (1 - t) + sky_low * t
    road = rng.uniform(70, 120)
    img[horizon:] = road
    img[horizon:, :, 1] += rng.uniform(-8, 8)
    lane_x = width // 2 + int(rng.integers(-width // 6, width // 6))
    for y in range(horizon, height, 6):
        img[y:y + 3, lane_x - 1:lane_x + 1] = 210
    img += rng.normal(0.0, 10.0, img.shape).astype(np.float32)
    return img


def _disc(img: np.ndarray, cx: float, cy: float, r: float, colour: np.ndarray) -> None:
    h, w = img.shape[:2]
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, w)
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    mask = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
    img[y0:y1, x0:x1][mask] = colour


def _rect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour: np.ndarray) -> None:
    h, w = img.shape[:2]
    a, b = max(round(x0), 0), min(round(x1), w)
    c, d = max(round(y0), 0), min(round(y1), h)
    if a < b and c < d:
        img[c:d, a:b] = colour


def _draw_car(img: np.ndarray, rng: np.random.Generator, x0: float, y0: float, x1: float, y1: float) -> None:
    w, h = x1 - x0, y1 - y0
    colour = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))] * rng.uniform(0.8, 1.1)
    _rect(img, x0 + 0.2 * w, y0, x1 - 0.2 * w, y0 + 0.45 * h, colour * 0.9)
    _rect(img, x0 + 0.27 * w, y0 + 0.08 * h, x1 - 0.27 * w, y0 + 0.4 * h, np.array([60, 80, 100]))
    _rect(img, x0, y0 + 0.4 * h, x1, y1 - 0.15 * h, colour)
    r = max(0.16 * h, 1.0)
    _disc(img, x0 + 0.22 * w, y1 - r, r, np.array([15, 15, 15]))
    _disc(img, x1 - 0.22 * w, y1 - r, r, np.array([15, 15, 15]))


def _draw_pedestrian(img: np.ndarray, rng: np.random.Generator, x0: float, y0: float, x1: float, y1: float) -> None:
    w, h = x1 - x0, y1 - y0
    clothes = _CLOTHES[rng.integers(len(_CLOTHES))].astype(np.float32)
    _disc(img, (x0 + x1) / 2, y0 + 0.1 * h, max(0.1 * h, 1.0), np.array([225, 180, 140]))
    _rect(img, x0, y0 + 0.2 * h, x1, y0 + 0.6 * h, clothes)
    _rect(img, x0 + 0.1 * w, y0 + 0.6 * h, x0 + 0.45 * w, y1, np.array([40, 40, 70]))
    _rect(img, x1 - 0.45 * w, y0 + 0.6 * h, x1 - 0.1 * w, y1, np.array([40, 40, 70]))


def _draw_cyclist(img: np.ndarray, rng: np.random.Generator, x0: float, y0: float, x1: float, y1: float) -> None:
    w, h = x1 - x0, y1 - y0
    clothes = _CLOTHES[rng.integers(len(_CLOTHES))].astype(np.float32)
    r = max(min(0.25 * w, 0.2 * h), 1.0)
    for cx in (x0 + r, x1 - r):
        _disc(img, cx, y1 - r, r, np.array([20, 20, 20]))
        _disc(img, cx, y1 - r, r * 0.55, np.array([95, 95, 95]))
    _rect(img, x0 + r, y1 - 1.3 * r, x1 - r, y1 - r, np.array([120, 120, 120]))
    _rect(img, x0 + 0.3 * w, y0 + 0.15 * h, x1 - 0.3 * w, y1 - 1.6 * r, clothes)
    _disc(img, (x0 + x1) / 2, y0 + 0.08 * h, max(0.08 * h, 1.0), np.array([240, 240, 60]))


def _draw_cone(img: np.ndarray, green: bool, x0: float, y0: float, x1: float, y1: float) -> None:
    colour = np.array([30, 200, 70]) if green else np.array([255, 120, 10])
    h = y1 - y0
    rows = max(round(h), 1)
    for k in range(rows):
        frac = (k + 0.5) / rows
        half = (x1 - x0) / 2 * max(frac, 0.15)
        cx = (x0 + x1) / 2
        c = np.array([245, 245, 245]) if 0.45 < frac < 0.6 else colour
        _rect(img, cx - half, y0 + k, cx + half, y0 + k + 1, c)


def _weather(img: np.ndarray, rng: np.random.Generator, weather: str, time_of_day: str) -> np.ndarray:
    if weather == "fog":
        img = img * 0.45 + 175 * 0.55
    if weather == "rain":
        img = img * 0.8 + 20
        h, w = img.shape[:2]
        for _ in range(int(w * h / 120)):
            x, y, length = int(rng.integers(w)), int(rng.integers(h)), int(rng.integers(3, 8))
            img[y:y + length, x] = img[y:y + length, x] * 0.4 + 200 * 0.6
    if time_of_day == "night":
        img = img * 0.35 + rng.normal(0.0, 6.0, img.shape)
    return img


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _place(rng: np.random.Generator, cls: str, width: int, height: int) -> tuple[float, float, float, float]:
    bottom = rng.uniform(0.5 * height, height)
    scale = 0.25 + 0.75 * (bottom - 0.5 * height) / (0.5 * height)
    nw, nh = _NEAR_SIZE[cls]
    jitter = rng.uniform(0.85, 1.15)
    w = max(nw * scale * jitter * width / 160.0, 4.0)
    h = max(nh * scale * jitter * height / 96.0, 5.0)
    x0 = rng.uniform(-0.1 * w, width - 0.9 * w)
    return x0, bottom - h, x0 + w, bottom


def render_scene(
    rng: np.random.Generator, width: int = 160, height: int = 96, classes: Sequence[str] = CLASSES,
    weather: str | None = None, time_of_day: str | None = None,
) -> tuple[np.ndarray, list[dict], str, str]:
    """One scene: (uint8 (H, W, 3) image, boxes as PREPARED_SCHEMA dicts, weather, time of day)."""
    weather = weather or _choice(rng, _WEATHER)
    time_of_day = time_of_day or _choice(rng, _TIME)
    img = _background(rng, width, height)
    placed: list[tuple[str, tuple[float, float, float, float]]] = []
    for _ in range(int(rng.integers(1, 7))):
        cls = classes[int(rng.integers(len(classes)))]
        box = _place(rng, cls, width, height)
        if all(_iou(box, other) < 0.2 for _, other in placed):
            placed.append((cls, box))
    placed.sort(key=lambda p: p[1][3])  # far (higher) first, near ones occlude them
    boxes: list[dict] = []
    for cls, (x0, y0, x1, y1) in placed:
        green = cls == "traffic_cone" and rng.random() < 0.15
        if cls == "car":
            _draw_car(img, rng, x0, y0, x1, y1)
        elif cls == "pedestrian":
            _draw_pedestrian(img, rng, x0, y0, x1, y1)
        elif cls == "cyclist":
            _draw_cyclist(img, rng, x0, y0, x1, y1)
        else:
            _draw_cone(img, green, x0, y0, x1, y1)
        boxes.append({"cls": cls, "x1": max(x0, 0.0), "y1": max(y0, 0.0), "x2": min(x1, float(width)),
                      "y2": min(y1, float(height)), "attr": "green" if green else None})
    img = _weather(img, rng, weather, time_of_day)
    return np.clip(img, 0, 255).astype(np.uint8), boxes, weather, time_of_day


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W, 3) image."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def synthetic_split(
    n: int, seed: int = 0, width: int = 160, height: int = 96, classes: Sequence[str] = CLASSES,
    log_id: str | None = None, frames_per_log: int = 100,
) -> pa.Table:
    """``n`` rendered frames as a PREPARED_SCHEMA table (logs of ``frames_per_log`` frames)."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {name: [] for name in PREPARED_SCHEMA.names}
    for i in range(n):
        image, boxes, weather, tod = render_scene(rng, width, height, classes)
        rows["log_id"].append(log_id or f"synth-{seed}-{i // frames_per_log:04d}")
        rows["frame"].append(i % frames_per_log if log_id is None else i)
        rows["image_png"].append(encode_png(image))
        rows["width"].append(width)
        rows["height"].append(height)
        rows["weather"].append(weather)
        rows["time_of_day"].append(tod)
        rows["boxes"].append(boxes)
    return pa.table(rows, schema=PREPARED_SCHEMA)


def write_synthetic(out_dir: str | Path, n_train: int, n_val: int, n_test: int, seed: int = 0,
                    width: int = 160, height: int = 96) -> Path:
    """Write ``train/val/test.parquet`` of synthetic frames (different seeds per split)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for k, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        pq.write_table(synthetic_split(n, seed=seed * 10 + k, width=width, height=height), out / f"{name}.parquet")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=96)
    a = ap.parse_args(argv)
    write_synthetic(a.out, a.train, a.val, a.test, a.seed, a.width, a.height)
    print(f"wrote {a.out}/train|val|test.parquet ({a.train}/{a.val}/{a.test} frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
