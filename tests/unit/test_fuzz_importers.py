"""Fuzzing the KITTI and Parquet importers (issue 12): whatever the files hold, ``load`` returns
parsed logs or raises :class:`LogFormatError` naming a file under the source, never another
exception. The raw importers are fuzzed (not only the guard around them), so a crash the guard
would have to catch is a failure here.

Fixed budget, reproducible: hypothesis derandomized (the same examples every run), no example
database, no deadline; a few seconds in all. Inputs are mostly-valid files with mutations
(a field replaced by a hostile token, fields dropped or added, lines duplicated, binary junk),
so the parsers' deep paths are reached, not only their first check.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetloop.ingest.importers import LogFormatError, get_importer, load_logs_isolated
from fleetloop.mine.mining import mine
from fleetloop.perception.batch import MiningInputError
from fleetloop.schema import STREAMS, DriveLogs
from tests.factory_logs import P2, make_log

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_PARQUET = settings(FUZZ, max_examples=100)  # each example writes and reads ~10 parquet files


def _check(root: Path, fmt: str) -> None:
    """The contract, on the raw importer and through isolated loading."""
    importer = get_importer(fmt)
    importer = getattr(importer, "inner", importer)  # the importer itself, without the guard
    try:
        logs = importer.load(root)
    except LogFormatError as exc:
        named = Path(exc.path)
        assert named == root or root in named.parents, f"the error names {named}, not a file under {root}"
    else:
        assert isinstance(logs, DriveLogs)
        for name, schema in STREAMS.items():
            assert getattr(logs, name).schema.equals(schema), name
    loaded = load_logs_isolated(root, fmt)
    assert set(loaded.logs.log_ids) | set(loaded.errors) == set(importer.list_logs(root))
    if loaded.logs.num_frames:  # what loads can be mined, or is refused with a clear error
        try:
            res = mine(loaded.logs)
        except MiningInputError:
            pass
        else:
            assert res.frames.num_rows == loaded.logs.num_frames


# --------------------------------------------------------------------------- KITTI text files

HOSTILE = st.sampled_from([
    "", "nan", "NaN", "inf", "-inf", "1e400", "-1", "-0", "0.5", "4294967301", "1000000000000", "9" * 30,
    "0x10", "1,5", "9.5.3", "abc", "Car", "DontCare", "é", "\x00", "\t", "  ", "1e-400", "+3", "3.", ".3",
])
NUMBER = st.one_of(st.integers(-3, 40).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr), HOSTILE)

POINTRCNN_LINE = "{f},2,700.0,170.0,800.0,250.0,9.5,1.5,1.6,3.9,1.0,1.6,20.0,-1.57,-1.6"
TRACKING_LINE = "{f} 0 Car -1 -1 -1.8 360.7 196.7 446.1 252.5 1.6 1.6 4.0 -5.8 2.2 20.4 -10 0.56"
CALIB_LINES = [
    "P2: " + " ".join(map(str, P2)),
    "R0_rect: 1 0 0 0 1 0 0 0 1",
    "Tr_velo_to_cam: 0 -1 0 0 0 0 -1 -0.08 1 0 0 -0.27",
]


@st.composite
def _lines(draw, template: str, sep: str, n_max: int = 6) -> str:
    """A few valid lines of ``template``, then mutated: a field replaced, dropped or added, a
    line duplicated, separators and line ends varied."""
    lines = [template.format(f=draw(st.integers(0, 8))).split(sep) for _ in range(draw(st.integers(0, n_max)))]
    for _ in range(draw(st.integers(0, 3))):
        if not lines:
            break
        fields = lines[draw(st.integers(0, len(lines) - 1))]
        action = draw(st.sampled_from(["replace", "replace", "drop", "add", "duplicate"]))
        i = draw(st.one_of(st.just(0), st.just(1), st.integers(0, max(0, len(fields) - 1))))  # frame, id: often
        if action == "replace" and fields:
            fields[i] = draw(NUMBER)
        elif action == "drop" and fields:
            del fields[i]
        elif action == "add":
            fields.insert(i, draw(NUMBER))
        else:
            lines.append(list(fields))
    joiner = draw(st.sampled_from([sep, sep, sep + " ", "  " if sep == " " else sep, "\t" if sep == " " else sep]))
    end = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    text = end.join(joiner.join(f) for f in lines) + draw(st.sampled_from(["", end, end + end]))
    return text


FILE = st.one_of(st.none(), st.binary(max_size=64).map(lambda b: b.decode("latin-1")))


@st.composite
def _calibration(draw) -> str:
    lines = [line.split() for line in CALIB_LINES]
    for _ in range(draw(st.integers(0, 3))):
        fields = lines[draw(st.integers(0, len(lines) - 1))]
        action = draw(st.sampled_from(["replace", "drop", "add", "duplicate", "rename", "zero"]))
        i = draw(st.integers(0, len(fields) - 1))
        if action == "zero":  # a singular matrix
            fields[1:] = ["0"] * (len(fields) - 1)
        elif action == "replace":
            fields[i] = draw(NUMBER)
        elif action == "drop" and len(fields) > 1:
            del fields[i]
        elif action == "add":
            fields.append(draw(NUMBER))
        elif action == "duplicate":
            lines.append(list(fields))
        else:
            fields[0] = draw(st.sampled_from(["P2", "P2:", "R_rect", "Tr_velo_cam", "P0:", "X:", "P2:1.0", ""]))
    return "\n".join(" ".join(f) for f in lines) + "\n"


@st.composite
def kitti_layouts(draw) -> dict[str, str | None]:
    """Relative path -> text (None: absent) for sequence 0000 (fuzzed) and 0001 (valid)."""
    files: dict[str, str | None] = {
        "calib/0000.txt": draw(st.one_of(_calibration(), FILE)),
        "lidar_det/pointrcnn/0000.txt": draw(st.one_of(_lines(POINTRCNN_LINE, ","), FILE)),
        "camera_trk/ciwt/0000.txt": draw(st.one_of(_lines(TRACKING_LINE, " "), FILE)),
        "calib/0001.txt": "\n".join(CALIB_LINES) + "\n",
        "lidar_det/pointrcnn/0001.txt": POINTRCNN_LINE.format(f=1) + "\n",
        "camera_trk/ciwt/0001.txt": TRACKING_LINE.format(f=2) + "\n",
    }
    if draw(st.booleans()):
        n = draw(st.one_of(st.integers(0, 12).map(str), HOSTILE))
        files["seqmap.txt"] = draw(st.sampled_from([
            f"0000 empty 000000 {n}\n0001 empty 000000 000004\n",
            f"0000 empty 000000 {n}\n",
            f"0000 empty {n}\n0001 empty 000000 000004\n",
        ]))
    return files


def _write_tree(root: Path, files: dict[str, str | None]) -> None:
    for rel, text in files.items():
        if text is None:
            continue
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", errors="surrogateescape")


@FUZZ
@given(files=kitti_layouts())
def test_fuzz_kitti_importer(files: dict[str, str | None]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "kitti"
        root.mkdir()
        _write_tree(root, files)
        _check(root, "kitti-tracking")


# --------------------------------------------------------------------------- Parquet tables

_BASE = make_log("fz", n_frames=4, seed=7)
HOSTILE_ARRAYS = {
    "int64_huge": lambda n: pa.array([2**32 + 5] * n, pa.int64()),
    "uint64": lambda n: pa.array([2**63] * n, pa.uint64()),
    "negative": lambda n: pa.array([-1] * n, pa.int64()),
    "float_nan": lambda n: pa.array([float("nan")] * n, pa.float64()),
    "float_frac": lambda n: pa.array([0.5] * n, pa.float64()),
    "nulls": lambda n: pa.nulls(n, pa.int32()),
    "strings": lambda n: pa.array(["x"] * n, pa.string()),
    "binary": lambda n: pa.array([b"\xff"] * n, pa.binary()),
    "bools": lambda n: pa.array([True] * n, pa.bool_()),
    "list": lambda n: pa.array([[1.0, 2.0]] * n, pa.list_(pa.float64())),
    "struct": lambda n: pa.array([{"a": 1}] * n, pa.struct([("a", pa.int64())])),
    "dictionary": lambda n: pa.array(["fz"] * n).dictionary_encode(),
    "timestamp": lambda n: pa.array([0] * n, pa.timestamp("ns")),
    "other_log": lambda n: pa.array(["other"] * n, pa.string()),
    "empty_string": lambda n: pa.array([""] * n, pa.string()),
}


@st.composite
def parquet_logs(draw) -> dict[str, bytes | None]:
    """Stream name -> parquet bytes (None: absent) for log ``fz``, with one or two mutations."""
    tables: dict[str, pa.Table | None] = dict(_BASE.tables())
    raw: dict[str, bytes] = {}
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from(sorted(STREAMS)))
        t = tables.get(name)
        action = draw(st.sampled_from(["column", "drop_column", "extra_column", "empty", "absent", "slice",
                                       "junk", "truncate", "duplicate_rows"]))
        if action == "absent":
            tables[name] = None
        elif t is None:
            continue
        elif action == "column":
            i = draw(st.integers(0, t.num_columns - 1))
            kind = draw(st.sampled_from(sorted(HOSTILE_ARRAYS)))
            tables[name] = t.set_column(i, t.schema.field(i).name, HOSTILE_ARRAYS[kind](t.num_rows))
        elif action == "drop_column":
            tables[name] = t.remove_column(draw(st.integers(0, t.num_columns - 1)))
        elif action == "extra_column":
            tables[name] = t.append_column("extra", pa.array(np.arange(t.num_rows)))
        elif action == "empty":
            tables[name] = t.slice(0, 0)
        elif action == "slice":
            tables[name] = t.slice(draw(st.integers(0, t.num_rows)), draw(st.integers(0, t.num_rows)))
        elif action == "duplicate_rows":
            tables[name] = pa.concat_tables([t, t])
        elif action == "junk":
            raw[name] = draw(st.binary(max_size=64))
        else:  # truncate
            raw[name] = _parquet(t)[: draw(st.integers(0, 200))]
    return {name: raw.get(name, _parquet(t) if t is not None else None) for name, t in tables.items()}


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


_GOOD = {name: _parquet(t) for name, t in make_log("ok", n_frames=3).tables().items()}  # a valid neighbour log


@FUZZ_PARQUET
@given(streams=parquet_logs())
def test_fuzz_parquet_importer(streams: dict[str, bytes | None]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pq"
        for name, data in streams.items():
            if data is not None:
                (root / "fz").mkdir(parents=True, exist_ok=True)
                (root / "fz" / f"{name}.parquet").write_bytes(data)
        good = root / "ok"
        good.mkdir(parents=True)
        for name, data in _GOOD.items():
            (good / f"{name}.parquet").write_bytes(data)
        _check(root, "parquet")
