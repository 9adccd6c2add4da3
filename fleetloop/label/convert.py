"""Box conversions between fleetloop's pixel boxes and Label Studio's percent rectangles.

Label Studio stores a rectangle as ``x, y, width, height`` in percent of the image's natural
size (``original_width/height``), top-left origin, with an optional ``rotation`` in degrees.
fleetloop's boxes are ``x1, y1, x2, y2`` in pixels (top-left, bottom-right).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fleetloop.label.campaigns import BOX_CONTROL, IMAGE_OBJECT, STATUS_CONTROL, UNUSABLE
from fleetloop.schema import CLASSES

#: tolerance (percent of the image) for rectangles drawn a hair over the border
EDGE_TOLERANCE_PCT = 0.05


def box_to_result(
    cls: str,
    x1: float,
    y1: float,
    x2: float,
    y2: float,
    width: int,
    height: int,
    *,
    score: float | None = None,
    region_id: str | None = None,
) -> dict[str, Any]:
    """A Label Studio ``rectanglelabels`` result item for a pixel box (clipped to the image)."""
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    item: dict[str, Any] = {
        "from_name": BOX_CONTROL,
        "to_name": IMAGE_OBJECT,
        "type": "rectanglelabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {
            "x": 100.0 * x1 / width,
            "y": 100.0 * y1 / height,
            "width": 100.0 * (x2 - x1) / width,
            "height": 100.0 * (y2 - y1) / height,
            "rotation": 0,
            "rectanglelabels": [cls],
        },
    }
    if score is not None:
        item["score"] = float(score)
    if region_id is not None:
        item["id"] = region_id
    return item


@dataclass(frozen=True)
class PixelBox:
    cls: str
    x1: float
    y1: float
    x2: float
    y2: float


class BadRegion(ValueError):
    """A result region that cannot become a label (the message says why)."""


def result_to_box(item: dict[str, Any], width: int | None = None, height: int | None = None) -> PixelBox:
    """Validate one ``rectanglelabels`` region and convert it to pixels.

    ``width``/``height``: the task image's size as pushed; the region's ``original_width/height``
    must agree with it. Raises :class:`BadRegion` for an unknown class, several labels, a rotated
    box, a box outside the image (beyond a small tolerance) or a box with no area.
    """
    v = item.get("value") or {}
    labels = v.get("rectanglelabels") or []
    if len(labels) != 1:
        raise BadRegion(f"region has {len(labels)} labels {labels}; exactly one class is required")
    cls = labels[0]
    if cls not in CLASSES:
        raise BadRegion(f"unknown class {cls!r}; the taxonomy is {list(CLASSES)}")
    try:
        W = positive_size(item.get("original_width") or width)
        H = positive_size(item.get("original_height") or height)
    except (TypeError, ValueError):
        raise BadRegion(
            f"region image size is not a positive number: original_width={item.get('original_width')!r}"
            f" original_height={item.get('original_height')!r}"
        ) from None
    if not W or not H:
        raise BadRegion("region carries no image size (original_width/original_height)")
    if width and height and (width, height) != (W, H):
        raise BadRegion(f"region drawn on a {W}x{H} image but the task image is {width}x{height}")
    try:
        rotation = float(v.get("rotation") or 0.0)
    except (TypeError, ValueError):
        raise BadRegion(f"rotation {v.get('rotation')!r} is not a number") from None
    if not math.isfinite(rotation) or abs(rotation) > 1e-6:
        raise BadRegion(f"rotated box ({v.get('rotation')} degrees): only axis-aligned boxes are labels")
    try:
        x, y, w, h = (float(v[k]) for k in ("x", "y", "width", "height"))
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRegion(f"region value lacks numeric x/y/width/height: {v}") from exc
    if not all(map(math.isfinite, (x, y, w, h))):
        raise BadRegion(f"region value has a non-finite x/y/width/height: {v}")
    tol = EDGE_TOLERANCE_PCT
    if x < -tol or y < -tol or x + w > 100 + tol or y + h > 100 + tol or w < 0 or h < 0:
        raise BadRegion(f"box outside the image: x={x:.2f}% y={y:.2f}% w={w:.2f}% h={h:.2f}% (must stay within 0-100%)")
    x1, y1 = max(x, 0.0) * W / 100.0, max(y, 0.0) * H / 100.0
    x2, y2 = min(x + w, 100.0) * W / 100.0, min(y + h, 100.0) * H / 100.0
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise BadRegion(f"box has no area ({x2 - x1:.2f} x {y2 - y1:.2f} px)")
    return PixelBox(cls, x1, y1, x2, y2)


def positive_size(value: Any) -> int | None:
    """A pixel size: None when absent, else a positive whole number (raises ValueError)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(value)
    n = float(value)
    if not math.isfinite(n) or n <= 0 or n != int(n):
        raise ValueError(value)
    return int(n)


def is_unusable(result: list[dict[str, Any]]) -> bool:
    """The labeler marked the frame as unusable."""
    return any(
        r.get("from_name") == STATUS_CONTROL and UNUSABLE in ((r.get("value") or {}).get("choices") or [])
        for r in result
    )


def unusable_result() -> list[dict[str, Any]]:
    return [{"from_name": STATUS_CONTROL, "to_name": IMAGE_OBJECT, "type": "choices", "value": {"choices": [UNUSABLE]}}]
