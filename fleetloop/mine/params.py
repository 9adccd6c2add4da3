"""Mining parameters: what the checks flag, how strongly, and how frames are ranked and selected.

The defaults are meant to hold for any lidar + camera stack whose detectors report confidences
in [0, 1]; none of them is fitted per log. The values that describe *your* stack are the
operating points (``lidar_score_threshold``, ``camera_score_threshold``: the scores above which
a detection is used downstream) and the sensors' useful ranges.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetloop.schema import CLASSES

SLICE_KEYS = ("weather", "time_of_day", "vehicle", "place", "class")


class Severities(BaseModel):
    """Probability that a flagged object is a real perception error (one labeling fix).

    Flags on the same object are combined by noisy-OR; a frame's expected number of errors is
    the sum over its objects. These are priors from the structure of each check: a one-sided
    object at the operating point means one of the two sensors is wrong, so its severity is
    high; weak evidence (one uncertain score) is low."""

    model_config = ConfigDict(extra="forbid")

    # lidar <-> camera
    lidar_only: float = 0.7  # confident lidar object, no camera box (camera miss or lidar false alarm)
    camera_only: float = 0.5  # camera box, no lidar detection at all (lidar miss or camera false alarm)
    lidar_weak: float = 0.75  # camera box whose lidar partner is below the lidar operating point
    class_mismatch: float = 0.5
    geometry: float = 0.6  # associated, but the boxes disagree (IoU below geometry_iou)
    # temporal (self-association or tracker)
    flicker: float = 0.6  # object seen before and after, missing in this frame
    isolated: float = 0.35  # detection with no counterpart in the neighbouring frames
    short_track: float = 0.35
    track_gap: float = 0.6
    id_switch: float = 0.3
    implausible_motion: float = 0.4
    # tracker <-> detector
    track_unsupported: float = 0.5
    detection_unexplained: float = 0.4
    # uncertainty band
    uncertain: float = 0.35
    # integrity
    invalid_box: float = 0.9  # a box with no positive size (validation keeps such logs with a warning)

    @field_validator("*")
    @classmethod
    def _prob(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError("a severity is a probability in [0, 1)")
        return v


class MiningParams(BaseModel):
    """Everything `mine` / `select` need. Pydantic-validated; JSON round-trips."""

    model_config = ConfigDict(extra="forbid")

    # operating points and the uncertainty band (scores in [0, 1])
    lidar_score_threshold: float = Field(0.95, ge=0, le=1, description="lidar detections at/above this are used downstream")
    camera_score_threshold: float = Field(0.0, ge=0, le=1, description="camera detections at/above this are used downstream")
    lidar_min_score: float = Field(0.3, ge=0, le=1, description="lidar detections below this are ignored as noise")
    uncertainty_band: tuple[float, float] = (0.9, 0.99)  # lidar scores inside it are "uncertain"
    camera_uncertainty_band: tuple[float, float] = (0.0, 0.5)  # camera scores inside it are "uncertain"

    # lidar <-> camera association
    association_iou: float = Field(0.3, gt=0, le=1, description="min IoU of a projected lidar box and a camera box")
    geometry_iou: float = Field(0.5, gt=0, le=1, description="associated pairs below this IoU are flagged")
    min_visible: float = Field(0.5, ge=0, le=1, description="share of a projected lidar box inside the image to expect a camera box")
    camera_range_m: float = Field(80.0, gt=0, description="beyond this the camera is not expected to see an object")
    lidar_range_m: float = Field(70.0, gt=0, description="beyond this the lidar is not expected to see an object")
    min_box_height_px: float = Field(12.0, ge=0, description="smaller image boxes are not expected on the other sensor")
    label_min_height_px: float = Field(25.0, ge=0, description="objects lower than this in the image are usually not labelled "
                                       "(KITTI's evaluation ignores them)")
    small_object_factor: float = Field(0.5, ge=0, le=1, description="severity factor for a possible miss of such a small object")
    class_heights_m: dict[str, float] = Field(
        default_factory=lambda: {"car": 1.55, "pedestrian": 1.75, "cyclist": 1.75, "traffic_cone": 0.7},
        description="typical object heights, to range a camera box from its pixel height",
    )
    camera_classes: list[str] | None = None  # classes the camera reports; None: those seen in the batch
    lidar_classes: list[str] | None = None  # classes the lidar reports; None: those seen in the batch

    # temporal checks
    temporal_gate_m: float = Field(2.5, gt=0, description="max bird's-eye-view distance between frames for the same object")
    temporal_gate_per_m: float = Field(0.04, ge=0, description="gate grows by this many metres per metre of range")
    temporal_iou: float = Field(0.3, gt=0, le=1, description="min IoU of a track's boxes in consecutive frames (id switch)")
    short_track_frames: int = Field(3, ge=1, description="tracks living at most this many frames are flagged")
    max_gap_frames: int = Field(5, ge=1, description="track gaps up to this length are flicker (longer: re-identification)")
    max_speed_px: float = Field(1.5, gt=0, description="max centre shift per frame, in box diagonals, before motion is implausible")
    max_size_ratio: float = Field(2.0, gt=1, description="max box area ratio between consecutive frames of a track")

    # tracker <-> detector
    track_detection_iou: float = Field(0.5, gt=0, le=1)

    severities: Severities = Field(default_factory=Severities)

    # ranking and selection
    temporal_smoothing: float = Field(0.5, ge=0, le=1, description="share of a frame's expected errors spread to its two "
                                      "neighbours (errors persist from frame to frame; 0: off)")
    cost_exponent: float = Field(0.0, ge=0, le=1, description="score = expected errors / (1 + estimated objects) ** this")
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
            if not factor > 0:
                raise ValueError(f"slice_boost {key!r}: the factor must be > 0, got {factor}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MiningParams:
        if self.lidar_min_score > self.lidar_score_threshold:
            raise ValueError("lidar_min_score must not exceed lidar_score_threshold")
        return self
