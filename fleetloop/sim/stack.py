"""The simulated fleet's perception stack, as the mining params describe a stack.

params.yaml's ``mine:`` section is written for the stack the yardstick judges (KITTI: PointRCNN's
operating points, 375-pixel-high images). The simulated fleet is a different stack, and the
demo and the label-efficiency benchmark mine it with this profile over params.yaml, as a team
writes its own stack's values into its params.yaml:

* **the judged camera stream is the fleet's own detector** (``camera_stream`` unset: the camera
  detections the production model logs; params.yaml names KITTI's judged tracker, YOLOX-SORT);
* **lidar operating point 0.9** for every class: the simulated lidar scores a true object
  ``sigmoid(2.6 + 1.5 (1 - r / half) - 2.5 occ - 0.4 rain + noise)`` (:mod:`fleetloop.sim.sensors`),
  so an unoccluded object in range scores 0.93-0.98 and PointRCNN's 0.94-0.97 would call a large
  share of true objects "weak" (below the operating point) instead of confident;
* **the band of "uncertain" lidar scores around that operating point**, 0.8-0.93 (KITTI's
  0.9-0.99 straddles PointRCNN's 0.94-0.97): with KITTI's band nearly every simulated lidar
  detection is "uncertain", in every condition, and that flag drowns the disagreements;
* **pixel sizes of this camera and this labeling policy**: the simulated camera is 96 pixels
  high, KITTI's 375, so ``min_box_height_px`` (12) scales by 96 / 375 to 3.1 pixels; and
  ``label_min_height_px`` is the simulated fleet's own labeling policy, not KITTI's 25 pixels
  (scaled: 6.4): the simulated labeling team labels every ground-truth box, and the evaluation
  scores every one, down to the renderer's ``min_height_px`` (4). At KITTI's value nearly every
  simulated object counts as "too small to label" and a camera that misses it is not suspected;
  at the scaled 6.4 more than half of the week-0 model's misses did (measured on a green-cone
  week: the mining score's correlation with the model's true errors per frame rose from 0.67
  to 0.79 at 4 pixels).

What the profile does not set (the severities) the weekly cycle's calibration fits from the labels.
"""

from __future__ import annotations

from typing import Any

from fleetloop.mine.params import MiningParams
from fleetloop.schema import CLASSES
from fleetloop.sim.render import RenderConfig
from fleetloop.sim.world import Camera

KITTI_IMAGE_HEIGHT = 375.0  # the image height params.yaml's pixel values are written for
LIDAR_OPERATING_POINT = 0.9
LIDAR_UNCERTAINTY_BAND = (0.8, 0.93)


def mine_profile(camera: Camera | None = None) -> dict[str, Any]:
    """The ``mine:`` values of the simulated stack, to merge over params.yaml's (``min_box_height_px``:
    the code's KITTI default scaled to the camera; the same values however often it is merged)."""
    scale = (camera or Camera()).height / KITTI_IMAGE_HEIGHT
    kitti = MiningParams()
    return {
        "camera_stream": None,
        "lidar_score_threshold": LIDAR_OPERATING_POINT,
        "lidar_class_thresholds": dict.fromkeys(CLASSES, LIDAR_OPERATING_POINT),
        "uncertainty_band": list(LIDAR_UNCERTAINTY_BAND),
        "label_min_height_px": RenderConfig().min_height_px,
        "min_box_height_px": round(kitti.min_box_height_px * scale, 2),
    }


def sim_mining(base: MiningParams, camera: Camera | None = None) -> MiningParams:
    """``base`` with the simulated stack's values (:func:`mine_profile`)."""
    return MiningParams.model_validate({**base.model_dump(), **mine_profile(camera)})
