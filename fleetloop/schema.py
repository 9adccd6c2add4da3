"""The drive-log data model: one pyarrow table per stream.

Every table carries ``log_id`` (string) and ``frame`` (int32, 0-based index within the log),
so a batch of many logs is just the concatenation of their tables. Units, coordinate frames
and the class taxonomy are documented in ``docs/schema.md`` (the one place for them).

A :class:`DriveLogs` bundles the tables of one or more logs. Streams a log does not carry are
empty tables with the right schema (never ``None``), so checks can ask ``len(t) == 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import pyarrow as pa
import pyarrow.compute as pc

#: fleetloop's class taxonomy (lower-case). Importers map source classes onto it.
CLASSES: tuple[str, ...] = ("car", "pedestrian", "cyclist", "traffic_cone")

_key = [pa.field("log_id", pa.string(), nullable=False), pa.field("frame", pa.int32(), nullable=False)]

FRAMES = pa.schema(
    [
        *_key,
        pa.field("timestamp_ns", pa.int64(), nullable=False),  # UTC nanoseconds since epoch
        pa.field("image_uri", pa.string()),  # camera image reference, null when not logged
        pa.field("vehicle", pa.string()),
        pa.field("weather", pa.string()),  # clear | rain | fog | snow | unknown
        pa.field("time_of_day", pa.string()),  # day | night | dusk | unknown
        pa.field("place", pa.string()),
    ]
)

# 3D boxes in the LIDAR frame: x forward, y left, z up (metres); (x, y, z) is the box centre;
# l along heading, w across, h up; yaw (radians) about +z, 0 = +x.
LIDAR_DETECTIONS = pa.schema(
    [
        *_key,
        pa.field("det_id", pa.int32(), nullable=False),  # index within (log, frame)
        pa.field("cls", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),  # confidence in [0, 1]
        pa.field("x", pa.float32(), nullable=False),
        pa.field("y", pa.float32(), nullable=False),
        pa.field("z", pa.float32(), nullable=False),
        pa.field("l", pa.float32(), nullable=False),
        pa.field("w", pa.float32(), nullable=False),
        pa.field("h", pa.float32(), nullable=False),
        pa.field("yaw", pa.float32(), nullable=False),
    ]
)

# 2D boxes in camera image pixels: (x1, y1) top-left, (x2, y2) bottom-right, origin top-left.
CAMERA_DETECTIONS = pa.schema(
    [
        *_key,
        pa.field("det_id", pa.int32(), nullable=False),
        pa.field("cls", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),  # confidence in [0, 1]
        pa.field("x1", pa.float32(), nullable=False),
        pa.field("y1", pa.float32(), nullable=False),
        pa.field("x2", pa.float32(), nullable=False),
        pa.field("y2", pa.float32(), nullable=False),
    ]
)

# Tracker output. ``sensor`` says which sensor's tracker produced it ("camera" or "lidar");
# boxes are 2D image pixels as above. ``score`` is null when the tracker gives no confidence.
TRACKS = pa.schema(
    [
        *_key,
        pa.field("track_id", pa.int64(), nullable=False),
        pa.field("sensor", pa.string(), nullable=False),
        pa.field("cls", pa.string(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("state", pa.string(), nullable=False),  # confirmed | tentative
        pa.field("x1", pa.float32(), nullable=False),
        pa.field("y1", pa.float32(), nullable=False),
        pa.field("x2", pa.float32(), nullable=False),
        pa.field("y2", pa.float32(), nullable=False),
    ]
)

# One row per log. ``P`` (3x4, row-major) projects homogeneous points of the rectified camera
# frame to pixels; ``lidar_to_cam`` (3x4, row-major) maps lidar-frame points to the rectified
# camera frame (rectification already folded in). Image size in pixels.
CALIBRATION = pa.schema(
    [
        pa.field("log_id", pa.string(), nullable=False),
        pa.field("P", pa.list_(pa.float64(), 12), nullable=False),
        pa.field("lidar_to_cam", pa.list_(pa.float64(), 12), nullable=False),
        pa.field("image_width", pa.int32(), nullable=False),
        pa.field("image_height", pa.int32(), nullable=False),
    ]
)

# Verified labels coming back from labeling, with lineage. Boxes in image pixels.
LABELS = pa.schema(
    [
        *_key,
        pa.field("cls", pa.string(), nullable=False),
        pa.field("x1", pa.float32(), nullable=False),
        pa.field("y1", pa.float32(), nullable=False),
        pa.field("x2", pa.float32(), nullable=False),
        pa.field("y2", pa.float32(), nullable=False),
        pa.field("campaign", pa.string(), nullable=False),
        pa.field("task_id", pa.int64(), nullable=False),
        pa.field("annotation_id", pa.int64(), nullable=False),
        pa.field("annotator", pa.string()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("revision", pa.int32(), nullable=False),
    ]
)

STREAMS: dict[str, pa.Schema] = {
    "frames": FRAMES,
    "lidar_detections": LIDAR_DETECTIONS,
    "camera_detections": CAMERA_DETECTIONS,
    "tracks": TRACKS,
    "calibration": CALIBRATION,
}


@dataclass(frozen=True)
class DriveLogs:
    """The tables of one or more drive logs (each table concatenates all logs)."""

    frames: pa.Table
    lidar_detections: pa.Table
    camera_detections: pa.Table
    tracks: pa.Table
    calibration: pa.Table

    @classmethod
    def empty(cls) -> DriveLogs:
        return cls(**{name: schema.empty_table() for name, schema in STREAMS.items()})

    def tables(self) -> dict[str, pa.Table]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def log_ids(self) -> list[str]:
        return pc.unique(self.frames["log_id"]).to_pylist()

    @property
    def num_frames(self) -> int:
        return self.frames.num_rows

    def select(self, log_ids: list[str] | set[str]) -> DriveLogs:
        """Only the rows of the given logs."""
        keep = pa.array(sorted(log_ids), pa.string())
        return DriveLogs(
            **{
                name: t.filter(pc.is_in(t["log_id"], value_set=keep))
                for name, t in self.tables().items()
            }
        )

    @staticmethod
    def concat(parts: list[DriveLogs]) -> DriveLogs:
        if not parts:
            return DriveLogs.empty()
        return DriveLogs(
            **{
                name: pa.concat_tables([getattr(p, name) for p in parts]).combine_chunks()
                for name in STREAMS
            }
        )


def camera_stream_matches(name: str, wanted: str) -> bool:
    """``wanted`` (``yolox_sort`` or ``camera:yolox_sort``, as ``mine.camera_stream`` and
    ``--camera-tracker`` name it) is the camera stream ``name`` (``camera:yolox_sort``)."""
    return name == wanted or name == f"camera:{wanted}" or name.split(":", 1)[-1] == wanted
