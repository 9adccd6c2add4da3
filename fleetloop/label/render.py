"""Task images for logs that carry no camera images, and the model boxes of a frame.

A log without camera images (the KITTI slice) still becomes labeling tasks: the task image is a
rendering of the sensors' boxes at the camera's resolution (lidar detections projected with the
calibration, camera detections, camera tracks), each sensor in its own colour, with a banner
saying it is a rendering and not a camera picture. Box coordinates of the rendering are the
camera's pixel coordinates, so labels drawn on it are in the camera frame.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from fleetloop.schema import DriveLogs, camera_stream_matches

if TYPE_CHECKING:
    from PIL import Image

RENDER_BANNER = "RENDERED FROM SENSOR BOXES - NOT A CAMERA IMAGE"
SENSOR_COLOURS = {"lidar": (0, 200, 255), "camera": (255, 220, 0), "track": (255, 80, 220)}

#: 2D boxes of one source with its sensor name; the columns the predictions and renderings use.
BOX_COLUMNS = ("log_id", "frame", "cls", "score", "x1", "y1", "x2", "y2")


def _corners(x, y, z, length, width, height, yaw) -> np.ndarray:
    """(n, 8, 3) box corners in the lidar frame (x forward, y left, z up; centre, yaw about +z)."""
    sx = np.array([1, 1, -1, -1, 1, 1, -1, -1], np.float64) / 2
    sy = np.array([1, -1, -1, 1, 1, -1, -1, 1], np.float64) / 2
    sz = np.array([1, 1, 1, 1, -1, -1, -1, -1], np.float64) / 2
    dx, dy, dz = length[:, None] * sx, width[:, None] * sy, height[:, None] * sz
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    return np.stack([x[:, None] + c * dx - s * dy, y[:, None] + s * dx + c * dy, z[:, None] + dz], axis=-1)


def project_lidar_boxes(logs: DriveLogs, min_depth: float = 0.1) -> pa.Table:
    """Lidar detections projected into the camera image: one row per detection in front of the
    camera whose projection overlaps the image, with ``x1..y2`` (pixels, clipped to the image),
    plus ``det_id``, ``cls`` and ``score``. Vectorised per log."""
    det = logs.lidar_detections
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("log_id", "frame", "det_id", "cls", "score", "x1", "y1", "x2", "y2")}
    if det.num_rows == 0:
        return _box_table(out, with_det_id=True)
    cal = {r["log_id"]: r for r in logs.calibration.to_pylist()}
    df = det.to_pandas()
    for log_id, g in df.groupby("log_id", sort=True):
        if log_id not in cal:
            continue
        c = cal[log_id]
        P = np.asarray(c["P"], np.float64).reshape(3, 4)
        l2c = np.asarray(c["lidar_to_cam"], np.float64).reshape(3, 4)
        corners = _corners(*(g[k].to_numpy(np.float64) for k in ("x", "y", "z", "l", "w", "h", "yaw")))
        hom = np.concatenate([corners, np.ones((*corners.shape[:2], 1))], axis=-1)  # (n, 8, 4)
        cam = hom @ l2c.T  # (n, 8, 3) rectified camera frame
        front = cam[..., 2] > min_depth
        pix = np.concatenate([cam, np.ones((*cam.shape[:2], 1))], axis=-1) @ P.T
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = pix[..., 0] / pix[..., 2], pix[..., 1] / pix[..., 2]
        u = np.where(front, u, np.nan)
        v = np.where(front, v, np.nan)
        keep = front.any(axis=1)
        with np.errstate(all="ignore"):
            x1, x2 = np.nanmin(u, axis=1), np.nanmax(u, axis=1)
            y1, y2 = np.nanmin(v, axis=1), np.nanmax(v, axis=1)
        w, h = float(c["image_width"]), float(c["image_height"])
        keep &= (x2 > 0) & (x1 < w) & (y2 > 0) & (y1 < h)
        x1, x2 = np.clip(x1, 0, w), np.clip(x2, 0, w)
        y1, y2 = np.clip(y1, 0, h), np.clip(y2, 0, h)
        keep &= (x2 - x1 >= 1) & (y2 - y1 >= 1)
        for k, arr in (("x1", x1), ("y1", y1), ("x2", x2), ("y2", y2)):
            out[k].append(arr[keep])
        for k in ("log_id", "frame", "det_id", "cls", "score"):
            out[k].append(g[k].to_numpy()[keep])
    return _box_table({k: np.concatenate(v) if v else [] for k, v in out.items()}, with_det_id=True)


def _box_table(cols: dict, with_det_id: bool = False) -> pa.Table:
    fields = [pa.field("log_id", pa.string()), pa.field("frame", pa.int32())]
    if with_det_id:
        fields.append(pa.field("det_id", pa.int32()))
    fields += [pa.field("cls", pa.string()), pa.field("score", pa.float32())]
    fields += [pa.field(k, pa.float32()) for k in ("x1", "y1", "x2", "y2")]
    schema = pa.schema(fields)
    return pa.Table.from_pydict(
        {
            f.name: pa.array(
                np.asarray(cols[f.name]).tolist() if f.type == pa.string() else np.asarray(cols[f.name]), f.type
            )
            for f in schema
        },
        schema=schema,
    )


def sensor_boxes(logs: DriveLogs) -> dict[str, pa.Table]:
    """All 2D boxes per sensor: ``lidar`` (projected), ``camera`` (detections), ``track`` (every
    camera tracker's tracks, for the rendering), and each camera tracker's own tracks under its
    stream name (``camera:<tracker>``, the ``sensor`` column), for the pre-annotations."""
    import pyarrow.compute as pc

    tracks = logs.tracks
    out = {
        "lidar": project_lidar_boxes(logs).select(list(BOX_COLUMNS)),
        "camera": logs.camera_detections.select(list(BOX_COLUMNS)),
        "track": tracks.select(list(BOX_COLUMNS)),
    }
    if tracks.num_rows:
        for name in pc.unique(tracks["sensor"]).to_pylist():
            if name.startswith("camera"):
                out[name] = tracks.filter(pc.equal(tracks["sensor"], name)).select(list(BOX_COLUMNS))
    return out


def prediction_source(logs: DriveLogs, log_id: str, camera_stream: str | None = None) -> str | None:
    """Which boxes are "the model's" for a log (a key of :func:`sensor_boxes`): the judged camera
    stream, chosen as the miner chooses it (``MiningParams.camera_stream``: camera detections
    (``camera``) or one tracker (``yolox_sort`` / ``camera:yolox_sort``); None: camera detections
    if the log has any, else its first camera tracker by name). Every other camera stream is
    evidence and never becomes a pre-annotation. Without camera boxes: projected lidar
    detections; None when the log has none of them."""
    import pyarrow.compute as pc

    def of_log(t: pa.Table) -> pa.Table:
        return t.filter(pc.equal(t["log_id"], log_id)) if t.num_rows else t

    streams = []
    if of_log(logs.camera_detections).num_rows:
        streams.append("camera")
    tracks = of_log(logs.tracks)
    if tracks.num_rows:
        streams += sorted(n for n in pc.unique(tracks["sensor"]).to_pylist() if n.startswith("camera"))
    if camera_stream:
        hit = [n for n in streams if camera_stream_matches(n, camera_stream)]
        if hit:
            return hit[0]
    if streams:
        return streams[0]
    return "lidar" if of_log(logs.lidar_detections).num_rows else None


def group_boxes(boxes: dict[str, pa.Table], keys: set[tuple[str, int]]) -> dict[tuple[str, int], dict[str, list[dict]]]:
    """Rows of each sensor's table grouped by (log_id, frame), restricted to ``keys``."""
    out: dict[tuple[str, int], dict[str, list[dict]]] = {k: {s: [] for s in boxes} for k in keys}
    for sensor, table in boxes.items():
        if table.num_rows == 0:
            continue
        for row in table.to_pylist():
            key = (row["log_id"], row["frame"])
            if key in out:
                out[key][sensor].append(row)
    return out


def render_frame(by_sensor: dict[str, list[dict]], width: int, height: int, caption: str = "") -> Image.Image:
    """A camera-sized picture of the sensors' boxes, clearly marked as a rendering."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (int(width), int(height)), (28, 28, 32))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=12)
    big = ImageFont.load_default(size=16)
    # faint ground grid so the picture is not mistaken for an empty camera frame
    for gx in range(0, int(width), 100):
        draw.line([(gx, 0), (gx, height)], fill=(40, 40, 46))
    for gy in range(0, int(height), 100):
        draw.line([(0, gy), (width, gy)], fill=(40, 40, 46))
    for sensor in ("lidar", "track", "camera"):
        colour = SENSOR_COLOURS[sensor]
        for b in by_sensor.get(sensor, []):
            coords = [b["x1"], b["y1"], b["x2"], b["y2"]]
            if not all(math.isfinite(v) for v in coords):
                continue
            (x1, x2), (y1, y2) = sorted(coords[0::2]), sorted(coords[1::2])  # tolerate swapped corners
            draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
            score = b.get("score")
            label = f"{b['cls']}" + (f" {score:.2f}" if score is not None else "")
            draw.text((x1 + 2, max(y1 - 13, 0)), label, fill=colour, font=font)
    draw.rectangle([0, 0, width, 22], fill=(150, 0, 0))
    draw.text((6, 3), RENDER_BANNER, fill=(255, 255, 255), font=big)
    legend = "   ".join(f"{s}: {'projected lidar' if s == 'lidar' else s}" for s in SENSOR_COLOURS)
    x = width - 8 - draw.textlength(legend, font=font)
    for s, colour in SENSOR_COLOURS.items():
        part = f"{'projected lidar' if s == 'lidar' else s}   "
        draw.text((x, 5), part, fill=colour, font=font)
        x += draw.textlength(part, font=font)
    if caption:
        draw.text((6, height - 16), caption, fill=(220, 220, 220), font=font)
    return img


def save_png(img, path: Path) -> Path:
    """Write atomically (a reader never sees half a PNG)."""
    from fleetloop.store.atomic import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: img.save(f, format="PNG", compress_level=1))
    return path
