"""The simulated fleet's perception stack, as the mining params describe a stack.

params.yaml's ``mine:`` section is written for the stack the yardstick judges (KITTI: PointRCNN's
operating points, 375-pixel-high images). The simulated fleet is a different stack, and the
demo and the label-efficiency benchmark mine it with this profile over params.yaml, as a team
writes its own stack's values into its params.yaml:

* **lidar operating point 0.9** for every class: the simulated lidar scores a true object
  ``sigmoid(2.6 + 1.5 (1 - r / half) - 2.5 occ - 0.4 rain + noise)`` (:mod:`fleetloop.sim.sensors`),
  so an unoccluded object in range scores 0.93-0.98 and PointRCNN's 0.94-0.97 would call a large
  share of true objects "weak" (below the operating point) instead of confident;
* **the band of "uncertain" lidar scores around that operating point**, 0.8-0.93 (KITTI's
  0.9-0.99 straddles PointRCNN's 0.94-0.97): with KITTI's band nearly every simulated lidar
  detection is "uncertain", in every condition, and that flag drowns the disagreements;
* **pixel sizes scaled to the camera**: the simulated camera is 96 pixels high, KITTI's 375, so
  ``label_min_height_px`` (25 on KITTI) and ``min_box_height_px`` (12) scale by 96 / 375 to 6.4
  and 3.1 pixels; at KITTI's values nearly every simulated object counts as "too small to
  label" and a camera that misses it is not suspected.

What the profile does not set (the severities) the weekly cycle's calibration fits from the labels.
"""

from __future__ import annotations

from typing import Any

from fleetloop.mine.params import MiningParams
from fleetloop.schema import CLASSES
from fleetloop.sim.world import Camera

KITTI_IMAGE_HEIGHT = 375.0  # the image height params.yaml's pixel values are written for
LIDAR_OPERATING_POINT = 0.9
LIDAR_UNCERTAINTY_BAND = (0.8, 0.93)


def mine_profile(camera: Camera | None = None) -> dict[str, Any]:
    """The ``mine:`` values of the simulated stack, to merge over params.yaml's (the pixel sizes:
    the code's KITTI defaults, scaled to the camera; the same values however often it is merged)."""
    scale = (camera or Camera()).height / KITTI_IMAGE_HEIGHT
    kitti = MiningParams()
    return {
        "lidar_score_threshold": LIDAR_OPERATING_POINT,
        "lidar_class_thresholds": dict.fromkeys(CLASSES, LIDAR_OPERATING_POINT),
        "uncertainty_band": list(LIDAR_UNCERTAINTY_BAND),
        "label_min_height_px": round(kitti.label_min_height_px * scale, 2),
        "min_box_height_px": round(kitti.min_box_height_px * scale, 2),
    }


def sim_mining(base: MiningParams, camera: Camera | None = None) -> MiningParams:
    """``base`` with the simulated stack's values (:func:`mine_profile`)."""
    return MiningParams.model_validate({**base.model_dump(), **mine_profile(camera)})
