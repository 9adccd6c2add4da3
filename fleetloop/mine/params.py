"""Mining parameters: what the checks flag, how strongly, and how frames are ranked and selected.

The defaults are meant to hold for any lidar + camera stack whose detectors report confidences
in [0, 1]; none of them is fitted per log. The values that describe *your* stack are the
operating points (``lidar_score_threshold``, ``camera_score_threshold``: the scores above which
a detection is used downstream) and the sensors' useful ranges.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetloop.perception.geometry import class_gates
from fleetloop.schema import CLASSES

SLICE_KEYS = ("weather", "time_of_day", "vehicle", "place", "class")

#: Per-class values, constrained as the scalar fields they override (finite: NaN or inf would
#: silently turn every comparison with them false).
Score = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Iou = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Metres = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def sigmoid(raw: float) -> float:
    """A raw logit-like score (e.g. PointRCNN's) -> fleetloop's [0, 1] score (the importer's mapping)."""
    return 1.0 / (1.0 + math.exp(-raw))


def logit(score: float) -> float:
    """Inverse of :func:`sigmoid`: a fleetloop score back to the raw scale."""
    return math.log(score / (1.0 - score))


#: PointRCNN's per-class operating points on KITTI (raw scores; AB3DMOT's thresholds, the ones the
#: KITTI yardstick uses), in fleetloop's score scale. The lidar stack fleetloop ships defaults for.
POINTRCNN_OPERATING_POINTS = {"car": sigmoid(3.240738), "pedestrian": sigmoid(2.683133), "cyclist": sigmoid(3.645319)}


def _known_classes(v: dict[str, float]) -> dict[str, float]:
    """A per-class mapping whose keys are all classes of the taxonomy."""
    unknown = sorted(set(v) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown classes {unknown}; the taxonomy is {list(CLASSES)}")
    return v


class Severities(BaseModel):
    """Probability that a flag marks a real perception error (one labeling fix).

    Flags on the same object and sensor combine by noisy-OR; a frame's expected number of errors
    is the sum over its objects and sensors. These are priors from the structure of each check,
    in three tiers: evidence of two independent sources against one (a confident object one
    sensor lacks, an isolated confident detection) is high (0.4-0.7); one weak hint on its own
    (a score just under the operating point, a box only an evidence stream reports, a crowd) is
    low (0.05-0.3), because such hints are many and mostly benign. ``fleetloop mine calibrate``
    fits them per class from labels (``MiningParams.class_severities``)."""

    model_config = ConfigDict(extra="forbid")

    # lidar <-> camera
    lidar_only: float = 0.7  # confident lidar object, no camera box (camera miss or lidar false alarm)
    camera_only: float = 0.3  # camera box, no lidar detection at all (lidar miss or camera false alarm)
    lidar_weak: float = 0.25  # camera box whose lidar partner is below the lidar operating point
    class_mismatch: float = 0.5
    geometry: float = 0.5  # associated, but the boxes disagree (IoU below geometry_iou)
    # temporal (self-association or tracker)
    flicker: float = 0.4  # object seen before and after, missing in this frame
    isolated: float = 0.6  # detection with no counterpart in the neighbouring frames
    short_track: float = 0.35
    track_gap: float = 0.6
    id_switch: float = 0.3
    implausible_motion: float = 0.4
    # tracker <-> detector
    track_unsupported: float = 0.5
    detection_unexplained: float = 0.4
    # uncertainty band
    uncertain: float = 0.3
    # integrity
    invalid_box: float = 0.9  # a box with no positive size (validation keeps such logs with a warning)
    # several perception streams (every camera detector/tracker a log carries is evidence)
    camera_miss: float = 0.6  # a confident lidar object another camera stream sees too; the judged camera lacks it
    lidar_miss: float = 0.4  # two camera streams agree on a box, no lidar detection at all
    stream_only: float = 0.1  # only an evidence camera stream sees it: both judged sensors may have missed it
    evidence_only: float = 0.3  # only an evidence stream sees it and the judged camera does not report its class
    weak_persistent: float = 0.05  # lidar detection below the operating point, consistent in both neighbouring frames
    crowd: float = 0.05  # a pedestrian/cyclist among others: misses hide in crowds

    @field_validator("*")
    @classmethod
    def _prob(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError("a severity is a probability in [0, 1)")
        return v


class FittedSeverity(BaseModel):
    """One calibrated value and the counts behind it (written by ``fleetloop mine calibrate``)."""

    model_config = ConfigDict(extra="forbid")

    severity: float = Field(ge=0, lt=1)
    flagged: int = Field(ge=0, description="flags of this reason and class on labelled frames")
    errors: int = Field(ge=0, description="of those, flags that marked a real error under the matching rules")
    prior: float = Field(ge=0, lt=1, description="the default severity the fit was shrunk towards")


class Calibration(BaseModel):
    """Per-class severities fitted from labels: ``fitted[reason][class]``. Values with too few
    flags behind them stay at the default (and are not listed)."""

    model_config = ConfigDict(extra="forbid")

    fitted: dict[str, dict[str, FittedSeverity]] = Field(default_factory=dict)
    source: str = ""  # which labels (dataset version, campaigns, log ids)
    fitted_at: str = ""  # UTC ISO time
    labelled_frames: int = 0
    rules: str = ""  # the matching rules used (see fleetloop.mine.calibrate)
    unexplained_per_frame: float = Field(0.0, ge=0, allow_inf_nan=False,
                                         description="errors on a labelled frame that no flag explains")
    unexplained_per_object: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="... and per labelled object of each class: where the miner is blind")

    @field_validator("fitted")
    @classmethod
    def _known(cls, v: dict[str, dict[str, FittedSeverity]]) -> dict[str, dict[str, FittedSeverity]]:
        for reason, per_class in v.items():
            if reason not in Severities.model_fields:
                raise ValueError(f"unknown flag reason {reason!r}")
            unknown = sorted(set(per_class) - set(CLASSES))
            if unknown:
                raise ValueError(f"{reason}: unknown classes {unknown}")
        return v

    @field_validator("unexplained_per_object")
    @classmethod
    def _known_classes(cls, v: dict[str, float]) -> dict[str, float]:
        return _known_classes(v)


class MiningParams(BaseModel):
    """Everything `mine` / `select` need. Pydantic-validated; JSON round-trips."""

    model_config = ConfigDict(extra="forbid")

    # operating points and the uncertainty band (scores in [0, 1])
    lidar_score_threshold: float = Field(0.95, ge=0, le=1, description="lidar detections at/above this are used downstream")
    camera_score_threshold: float = Field(0.0, ge=0, le=1, description="camera detections at/above this are used downstream")
    lidar_min_score: float = Field(0.3, ge=0, le=1, description="lidar detections below this are ignored as noise")
    lidar_class_thresholds: dict[str, Score] = Field(
        default_factory=lambda: dict(POINTRCNN_OPERATING_POINTS),
        description="per-class lidar operating points (override lidar_score_threshold for those classes); "
                    "defaults: PointRCNN's on KITTI (raw Car 3.24, Pedestrian 2.68, Cyclist 3.65)")
    camera_stream: str | None = Field(None, description="the camera stream whose errors count (e.g. 'yolox_sort' or "
                                      "'camera:yolox_sort'); the others are evidence. None: camera detections if the "
                                      "log has them, else the first camera tracker by name")
    uncertainty_band: tuple[float, float] = (0.9, 0.99)  # lidar scores inside it are "uncertain"
    camera_uncertainty_band: tuple[float, float] = (0.0, 0.5)  # camera scores inside it are "uncertain"

    # lidar <-> camera association
    association_iou: float = Field(0.3, gt=0, le=1, description="min IoU of a projected lidar box and a camera box, "
                                   "and of the judged camera's box and an evidence stream's, to be one object")
    class_association_iou: dict[str, Iou] = Field(
        default_factory=lambda: {"car": 0.4},
        description="per-class association_iou (the class of the lidar detection, or of the judged camera's box). On "
        "KITTI no right pair of a car falls below 0.4 (0 of ~5,100, 1 below 0.45: a confident lidar car or a second "
        "camera's box against the judged camera's box of the same labelled car), while a box overlapping its car less than 0.5 is "
        "a miss and a false alarm by the evaluation's rule; a pedestrian's narrow box loses more IoU to a few pixels "
        "(18 % of right pairs below 0.5), so it keeps association_iou")
    geometry_iou: float = Field(0.5, gt=0, le=1, description="associated pairs below this IoU are flagged")
    min_visible: float = Field(0.25, ge=0, le=1, description="share of a lidar box the camera images (in front of it, inside the "
                               "image) to expect a camera box; KITTI counts partly truncated objects, whose share is often "
                               "0.15-0.5")
    camera_range_m: float = Field(80.0, gt=0, description="beyond this the camera is not expected to see an object")
    lidar_range_m: float = Field(70.0, gt=0, description="beyond this the lidar is not expected to see an object")
    min_box_height_px: float = Field(12.0, ge=0, description="smaller image boxes are not expected on the other sensor")
    label_min_height_px: float = Field(25.0, ge=0, description="objects lower than this in the image are usually not labelled "
                                       "(KITTI's evaluation ignores them)")
    small_object_factor: float = Field(0.1, ge=0, le=1, description="severity factor for a flag on an object the labelling "
                                       "convention ignores (too small or too far): such objects are rarely errors; not 0, "
                                       "because size and range estimates near the limits are uncertain")
    label_range_m: float = Field(50.0, gt=0, description="objects farther than this (bird's-eye view) are usually not "
                                 "labelled (KITTI's evaluation ignores them); flags on them count small_object_factor")
    sure_margin_logit: float = Field(4.0, gt=0, description="a lidar detection this many logits above its class's "
                                     "operating point is a sure object: camera_miss (which trusts the lidar) counts "
                                     "fully on it")
    sure_floor: float = Field(0.25, ge=0, le=1, description="camera_miss factor at the operating point (linear up to "
                              "1 at sure_margin_logit above it)")
    stream_iou: float = Field(0.5, gt=0, le=1, description="min IoU of two camera streams' boxes to be one object")
    occluded_ioa: float = Field(0.5, gt=0, le=1, description="a lidar object whose image box is at least this much covered "
                                "by a closer one is largely occluded (KITTI's level 2, which its evaluation ignores): not "
                                "expected on camera")
    crowd_radius_m: float = Field(3.0, gt=0, description="pedestrians/cyclists closer than this are a crowd")
    crowd_min: int = Field(2, ge=1, description="neighbours within crowd_radius_m that make a crowd")
    class_heights_m: dict[str, Metres] = Field(
        default_factory=lambda: {"car": 1.55, "pedestrian": 1.75, "cyclist": 1.75, "traffic_cone": 0.7},
        description="typical object heights, to range a camera box from its pixel height",
    )
    height_ratio: tuple[float, float] = Field(
        (0.67, 1.5), description="a camera box without a lidar partner is one object of its class standing on the road "
        "when its height in metres where its bottom edge meets the road, over its class's height (class_heights_m), lies "
        "inside this; outside it (a merged or partial box, or something off the road) a flag that only the lidar "
        "missed it (lidar_miss, evidence_only) counts small_object_factor")
    camera_classes: list[str] | None = None  # classes the camera reports; None: those seen in the batch
    lidar_classes: list[str] | None = None  # classes the lidar reports; None: those seen in the batch

    # temporal checks
    temporal_gate_m: float = Field(2.5, gt=0, description="max bird's-eye-view distance between frames for the same object")
    temporal_gate_per_m: float = Field(0.04, ge=0, description="gate grows by this many metres per metre of range")
    class_temporal_gate_m: dict[str, Metres] = Field(
        default_factory=lambda: {"pedestrian": 1.5, "cyclist": 2.0},
        description="per-class temporal gates (override temporal_gate_m: people move less than cars between frames)")
    temporal_iou: float = Field(0.3, gt=0, le=1, description="min IoU of a track's boxes in consecutive frames (id switch)")
    short_track_frames: int = Field(3, ge=1, description="tracks living at most this many frames are flagged")
    max_gap_frames: int = Field(5, ge=1, description="track gaps up to this length are flicker (longer: re-identification)")
    max_speed_px: float = Field(1.5, gt=0, description="max centre shift per frame, in box diagonals, before motion is implausible")
    max_size_ratio: float = Field(2.0, gt=1, description="max box area ratio between consecutive frames of a track")

    # tracker <-> detector
    track_detection_iou: float = Field(0.5, gt=0, le=1)

    severities: Severities = Field(default_factory=Severities)
    class_severities: dict[str, dict[str, float]] = Field(
        default_factory=dict, description='per-class overrides {reason: {class: severity}}, e.g. from calibration')
    calibration: Calibration | None = Field(None, description="what fitted class_severities, with the counts")
    recalibrate: bool = Field(True, description="the weekly cycle refits class_severities on the newest dataset "
                              "version before it mines (fleetloop.recalibrate); false: mine with these values as they are")

    # ranking and selection
    temporal_smoothing: float = Field(0.25, ge=0, le=1, description="share of a frame's expected errors spread to its two "
                                      "neighbours (errors persist from frame to frame; 0: off)")
    cost_exponent: float = Field(0.25, ge=0, le=1, description="score = expected errors / (1 + estimated objects) ** this")
    diversity_window: int = Field(2, ge=0, description="frames of one log within this distance are near-duplicates")
    diversity_similarity: float = Field(0.3, ge=0, le=1, description="how much a selected neighbour discounts a frame")
    budget: int = Field(200, ge=1, description="default labeling budget (frames)")
    slice_boost: dict[str, float] = Field(default_factory=dict, description='e.g. {"weather=rain": 2.0, "class=pedestrian": 1.5}')

    @field_validator("uncertainty_band", "camera_uncertainty_band")
    @classmethod
    def _band(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"an uncertainty band is (low, high) with 0 <= low <= high <= 1, got {v}")
        return v

    @field_validator("height_ratio")
    @classmethod
    def _height_ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0.0 < lo <= 1.0 <= hi:
            raise ValueError(f"height_ratio is (low, high) with 0 < low <= 1 <= high, got {v}")
        return v

    @field_validator("lidar_class_thresholds", "class_temporal_gate_m", "class_association_iou", "class_heights_m")
    @classmethod
    def _per_class(cls, v: dict[str, float]) -> dict[str, float]:
        return _known_classes(v)

    @field_validator("class_severities")
    @classmethod
    def _class_sev(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for reason, per_class in v.items():
            if reason not in Severities.model_fields:
                raise ValueError(f"unknown flag reason {reason!r}; expected one of {sorted(Severities.model_fields)}")
            for c, x in per_class.items():
                if c not in CLASSES:
                    raise ValueError(f"class_severities.{reason}: unknown class {c!r}")
                if not 0.0 <= x < 1.0:
                    raise ValueError(f"class_severities.{reason}.{c}: a severity is a probability in [0, 1)")
        return v

    def association_gates(self) -> np.ndarray:
        """association_iou per class code (CLASSES, then 'other'), for the association kernels."""
        return class_gates(self.association_iou, self.class_association_iou)

    def lidar_threshold(self, cls: str) -> float:
        return self.lidar_class_thresholds.get(cls, self.lidar_score_threshold)

    def severity_table(self) -> dict[str, list[float]]:
        """reason -> severity per class code (CLASSES order, then 'other')."""
        base = self.severities.model_dump()
        return {r: [self.class_severities.get(r, {}).get(c, s) for c in CLASSES] + [s] for r, s in base.items()}

    @field_validator("camera_classes", "lidar_classes")
    @classmethod
    def _classes(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            unknown = sorted(set(v) - set(CLASSES))
            if unknown:
                raise ValueError(f"unknown classes {unknown}; the taxonomy is {list(CLASSES)}")
        return v

    @field_validator("slice_boost")
    @classmethod
    def _boost(cls, v: dict[str, float]) -> dict[str, float]:
        for key, factor in v.items():
            name, sep, value = key.partition("=")
            if not sep or name not in SLICE_KEYS or not value:
                raise ValueError(f"slice_boost key {key!r} must look like 'weather=rain' with a name in {SLICE_KEYS}")
            if name == "class" and value not in CLASSES:
                raise ValueError(f"slice_boost key {key!r}: unknown class {value!r}")
            if not (factor > 0 and math.isfinite(factor)):
                raise ValueError(f"slice_boost {key!r}: the factor must be finite and > 0, got {factor}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MiningParams:
        if self.lidar_min_score > min([self.lidar_score_threshold, *self.lidar_class_thresholds.values()]):
            raise ValueError("lidar_min_score must not exceed lidar_score_threshold or a class threshold")
        return self
