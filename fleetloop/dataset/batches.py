"""The on-disk format of growth batches, and folding them into one view of a version.

A version's data is every batch folder up to it, each written once and never rewritten::

    data/batches/b00001/labels-00000.parquet   LABELS rows + ``split``  (frames of shard 0)
    data/batches/b00001/frames-00000.parquet   one row per (log_id, frame) the batch labels
    data/batches/b00001/labels-00001.parquet   (more shards only past ``shard_rows`` frames)

A frame row says what the batch decided for that frame: ``status`` ``labeled`` (boxes in the
labels shard), ``empty`` (verified to hold no object: a negative frame, no label rows) or
``unusable`` (the labeler marked it unusable: a tombstone that removes the frame's earlier labels).

Folding (:func:`materialize`, a pure function over a checked-out directory): for each
(log_id, frame) the latest batch holding it wins, for its frame row and its labels; tombstones are
then dropped. So each (log_id, frame) appears once, with its newest labels.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleetloop.dataset.config import DatasetError
from fleetloop.schema import CLASSES, LABELS

__all__ = [
    "BATCHES_DIR",
    "FRAME_COLUMNS",
    "FRAME_SCHEMA",
    "INDEX_SCHEMA",
    "LABEL_SCHEMA",
    "batch_dirs",
    "batch_name",
    "fold",
    "frame_index",
    "materialize",
    "missing_batches",
    "read_batch",
]

BATCHES_DIR = "data/batches"
_BATCH = re.compile(r"^b(\d{5,})$")

LABEL_SCHEMA = pa.schema([*LABELS, pa.field("split", pa.string(), nullable=False)])

FRAME_SCHEMA = pa.schema(
    [
        pa.field("log_id", pa.string(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # labeled | empty | unusable
        pa.field("objects", pa.int32(), nullable=False),  # label rows of this frame in this batch
        pa.field("weather", pa.string()),
        pa.field("time_of_day", pa.string()),
        pa.field("vehicle", pa.string()),
        pa.field("place", pa.string()),
        pa.field("timestamp_ns", pa.int64()),
        pa.field("image_uri", pa.string()),  # where the image came from
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("campaign", pa.string(), nullable=False),  # lineage of the winning annotation
        pa.field("task_id", pa.int64(), nullable=False),
        pa.field("annotation_id", pa.int64(), nullable=False),
        pa.field("revision", pa.int32(), nullable=False),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("annotator", pa.string()),
        pa.field("image_png", pa.binary()),  # null when the image was missing or with_images is off
    ]
)
#: every frame column but the image (cheap to read: Parquet is columnar)
FRAME_COLUMNS = [f.name for f in FRAME_SCHEMA if f.name != "image_png"]

#: per-frame summary used to compute a version's counts without reading its images
INDEX_SCHEMA = pa.schema(
    [
        pa.field("log_id", pa.string(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("batch", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("weather", pa.string()),
        pa.field("time_of_day", pa.string()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("revision", pa.int32(), nullable=False),
        *[pa.field(f"n_{c}", pa.int32(), nullable=False) for c in CLASSES],
    ]
)


def batch_name(n: int) -> str:
    return f"b{n:05d}"


def _base(root: Path) -> Path:
    root = Path(root)
    return next((b for b in (root / BATCHES_DIR, root / "batches") if b.is_dir()), root)


def missing_batches(root: Path) -> list[str]:
    """Batches whose ``bNNNNN.dvc`` file is there but whose data is not (no folder, or a folder
    without its frames shards): a checkout whose ``dvc pull`` did not finish."""
    base = _base(root)
    if not base.is_dir():
        return []
    missing = []
    for dvc_file in sorted(base.glob("b*.dvc")):
        name = dvc_file.name.removesuffix(".dvc")
        folder = base / name
        if _BATCH.match(name) and not (folder.is_dir() and any(folder.glob("frames-*.parquet"))):
            missing.append(name)
    return missing


def batch_dirs(root: Path) -> list[tuple[int, Path]]:
    """The batch folders of a version, oldest first. ``root`` is a checkout of the dataset
    repository (``root/data/batches/bNNNNN``), its ``data`` folder as ``dvc import … data`` brings
    it (``root/batches/bNNNNN``), or the ``batches`` folder itself."""
    base = _base(root)
    if not base.is_dir():
        return []
    found = []
    for p in base.iterdir():
        m = _BATCH.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _read_shards(folder: Path, kind: str, schema: pa.Schema, columns: list[str] | None) -> pa.Table:
    files = sorted(folder.glob(f"{kind}-*.parquet"))
    names = columns or schema.names
    if not files:
        return pa.schema([schema.field(n) for n in names]).empty_table()
    tables = [pq.read_table(f, columns=names).replace_schema_metadata(None) for f in files]
    return pa.concat_tables(tables).cast(pa.schema([schema.field(n) for n in names]))


def read_batch(folder: Path, *, images: bool = True) -> tuple[pa.Table, pa.Table]:
    """One batch folder's (frames, labels), as written."""
    frames = _read_shards(Path(folder), "frames", FRAME_SCHEMA, None if images else FRAME_COLUMNS)
    labels = _read_shards(Path(folder), "labels", LABEL_SCHEMA, None)
    return frames, labels


def _with_batch(t: pa.Table, n: int) -> pa.Table:
    return t.append_column(pa.field("batch", pa.int32(), nullable=False), pa.array(np.full(t.num_rows, n, np.int32)))


def fold(frames: pa.Table) -> pa.Table:
    """Keep, for each (log_id, frame), the row of the highest ``batch`` (the latest word on it).
    Rows come back sorted by (log_id, frame)."""
    if frames.num_rows == 0:
        return frames
    order = pc.sort_indices(frames, sort_keys=[("log_id", "ascending"), ("frame", "ascending"),
                                               ("batch", "descending")])
    t = frames.take(order)
    log_id = t["log_id"].combine_chunks()
    frame = t["frame"].combine_chunks()
    first = np.ones(t.num_rows, bool)
    if t.num_rows > 1:
        same = pc.and_(pc.equal(log_id[1:], log_id[:-1]), pc.equal(frame[1:], frame[:-1]))
        first[1:] = ~same.to_numpy(zero_copy_only=False)
    return t.filter(pa.array(first))


def _keys(t: pa.Table, with_batch: bool) -> pa.Table:
    cols = ["log_id", "frame", "batch"] if with_batch else ["log_id", "frame"]
    return t.select(cols)


def materialize(root: Path, *, images: bool = True) -> tuple[pa.Table, pa.Table]:
    """All batches of a checked-out version folded into ``(frames, labels)``. ``root``: a checkout
    (``data/batches/`` inside) or the ``data`` folder ``dvc import`` brings (``batches/`` inside).

    Each (log_id, frame) appears once in ``frames`` (the latest batch's row, with a ``batch``
    column); ``labels`` holds exactly that batch's label rows for it. Frames whose latest word is
    ``unusable`` are left out, with their labels. ``images=False`` skips the image column.
    Pure: reads ``root/data/batches`` only, writes nothing. :class:`DatasetError` naming the
    batches whose ``.dvc`` file is there without their data (``dvc pull`` them first).
    """
    missing = missing_batches(root)
    if missing:
        raise DatasetError(f"{Path(root)}: batch{'es' if len(missing) > 1 else ''} {', '.join(missing)} "
                           f"{'have' if len(missing) > 1 else 'has'} a .dvc file but no data "
                           "(run `dvc pull` there, or check the version out again)")
    frame_parts, label_parts = [], []
    for n, folder in batch_dirs(root):
        f, lab = read_batch(folder, images=images)
        frame_parts.append(_with_batch(f, n))
        label_parts.append(_with_batch(lab, n))
    frame_schema = _with_batch(FRAME_SCHEMA.empty_table() if images
                               else FRAME_SCHEMA.empty_table().select(FRAME_COLUMNS), 0).schema
    label_schema = _with_batch(LABEL_SCHEMA.empty_table(), 0).schema
    frames = pa.concat_tables(frame_parts) if frame_parts else frame_schema.empty_table()
    labels = pa.concat_tables(label_parts) if label_parts else label_schema.empty_table()
    frames = fold(frames)
    frames = frames.filter(pc.not_equal(frames["status"], "unusable")) if frames.num_rows else frames
    if labels.num_rows:
        winners = _keys(frames, True)
        labels = labels.join(winners, keys=["log_id", "frame", "batch"], join_type="inner")
        labels = labels.select(label_schema.names).cast(label_schema)
        labels = labels.take(pc.sort_indices(labels, sort_keys=[("log_id", "ascending"), ("frame", "ascending"),
                                                                ("annotation_id", "ascending")]))
    return frames.combine_chunks(), labels.combine_chunks()


def frame_index(frames: pa.Table, labels: pa.Table) -> pa.Table:
    """The :data:`INDEX_SCHEMA` rows of frame rows carrying a ``batch`` column, class counts taken
    from ``labels`` rows of the same (log_id, frame, batch)."""
    keys = ["log_id", "frame", "batch"]
    base = frames.select([*keys, "split", "status", "weather", "time_of_day", "updated_at", "revision"])
    base = base.append_column("_row", pa.array(np.arange(base.num_rows, dtype=np.int64)))
    if labels.num_rows:
        per = labels.select([*keys, "cls"]).group_by([*keys, "cls"]).aggregate([([], "count_all")])
        for c in CLASSES:
            part = per.filter(pc.equal(per["cls"], c)).select([*keys, "count_all"])
            part = part.rename_columns([*keys, f"n_{c}"])
            base = base.join(part, keys=keys, join_type="left outer")
    base = base.take(pc.sort_indices(base, sort_keys=[("_row", "ascending")]))
    cols = {name: base[name] for name in INDEX_SCHEMA.names if name in base.column_names}
    for c in CLASSES:
        name = f"n_{c}"
        if name in base.column_names:
            cols[name] = pc.fill_null(base[name], 0)
        else:
            cols[name] = pa.array(np.zeros(base.num_rows, np.int32))
    return pa.table({name: cols[name] for name in INDEX_SCHEMA.names}).cast(INDEX_SCHEMA)
