"""Hard edges of ingest and ``fleetloop mine`` (issue 12): the output file under concurrent
writers and a full disk (defects 2, 8), per-log isolation of every kind of failure (4), the one
log-id rule and distinct quarantine reports (5), and anchor files (7).

Each test fails on the code before the fix. Sources are written by the tests (parquet layout
from ``tests.factory_logs``, a tiny KITTI layout), so nothing here needs the KITTI slice.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fleetloop.cli import app
from fleetloop.ingest.importers import LogFormatError, load_logs_isolated
from fleetloop.ingest.importers.parquet import ParquetImporter, write_parquet_log
from fleetloop.ingest.ingest import ingest
from fleetloop.mine import files as mine_files_module
from fleetloop.mine.files import write_frames
from fleetloop.mine_files import mine_files
from fleetloop.settings import get_settings
from fleetloop.store.logs import get_log, get_manifest, list_logs
from fleetloop.store.objects import LocalStore
from tests.factory_logs import P2, make_log, make_logs

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


# --------------------------------------------------------------------------- helpers


def _frames_table(n: int, tag: str) -> pa.Table:
    """A ranked-frames table of ``n`` rows whose reasons say ``tag`` (to tell writers apart)."""
    return pa.table({
        "log_id": [f"log-{tag}"] * n,
        "frame": pa.array(range(n), pa.int32()),
        "score": pa.array(np.linspace(1, 0, n), pa.float64()),
        "reasons": [f"{tag}:{i}" for i in range(n)],
        "rank": pa.array(range(1, n + 1), pa.int64()),
    })


def _csv_of(table: pa.Table, tmp: Path) -> bytes:
    path = tmp / f"expected-{table.num_rows}.csv"
    write_frames(table, path)
    return path.read_bytes()


def _reports(store_root: Path) -> dict[str, dict]:
    """log_id -> report.json of every quarantine report in a local store."""
    out = {}
    for p in (store_root / "quarantine").glob("*/report.json"):
        report = json.loads(p.read_text())
        out[report["log_id"]] = report
    return out


def _report_paths(report: dict) -> list[str]:
    return [str(f["kwargs"].get("path", "")) for f in report["critical"]] + [str(f.get("detail") or "") for f in report["critical"]]


def _parquet_source(root: Path, ids: list[str]) -> Path:
    write_parquet_log(make_logs(ids, n_frames=8), root)
    return root


class _Proxy:
    """A module stand-in: ``name`` replaced by ``fn``, everything else from ``module``."""

    def __init__(self, module, **replaced) -> None:
        self._module, self._replaced = module, replaced

    def __getattr__(self, name: str):
        return self._replaced.get(name) or getattr(self._module, name)


# --------------------------------------------------------------------------- defect 2 and 8: --out


def test_two_concurrent_writers_of_one_out_never_share_a_temporary_file(tmp_path: Path, monkeypatch) -> None:
    """Both writers open their temporary file before either writes its rows (a barrier): the
    output is then exactly one writer's file, whole, and no temporary file is left."""
    small, big = _frames_table(5, "small"), _frames_table(400, "big")
    expected = {_csv_of(small, tmp_path), _csv_of(big, tmp_path)}
    barrier = threading.Barrier(2, timeout=10)
    real = mine_files_module.pacsv

    def write_csv_after_barrier(*args, **kwargs):
        barrier.wait()
        return real.write_csv(*args, **kwargs)

    monkeypatch.setattr(mine_files_module, "pacsv", _Proxy(real, write_csv=write_csv_after_barrier))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "ranked.csv"
    errors: list[BaseException] = []

    def write(table: pa.Table) -> None:
        try:
            write_frames(table, out)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in (small, big)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert out.read_bytes() in expected  # one writer's file, whole: no extra rows, no torn line
    assert sorted(p.name for p in out_dir.iterdir()) == ["ranked.csv"]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_disk_full_while_writing_out_leaves_no_temporary_file_and_the_old_output(tmp_path: Path, monkeypatch,
                                                                                 suffix: str) -> None:
    out = tmp_path / f"ranked.{suffix}"
    write_frames(_frames_table(3, "old"), out)
    before = out.read_bytes()

    def full_disk(table, where, *args, **kwargs):
        if hasattr(where, "write"):
            where.write(b"partial")
        else:
            Path(where).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    if suffix == "csv":
        monkeypatch.setattr(mine_files_module, "pacsv", _Proxy(mine_files_module.pacsv, write_csv=full_disk))
    else:
        monkeypatch.setattr(mine_files_module, "pq", _Proxy(mine_files_module.pq, write_table=full_disk))
    with pytest.raises((OSError, ValueError), match="No space left"):
        write_frames(_frames_table(50, "new"), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no hidden temporary file
    assert out.read_bytes() == before


def _limit_file_size() -> None:
    """In the child: files may not grow past 2 KiB (writes then fail with EFBIG, like a full disk)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))


def test_mine_out_on_a_full_disk_fails_clearly_and_leaves_no_temporary_file(sample_dir: Path, tmp_path: Path) -> None:
    """A real write failure from the kernel (a file-size limit, as a full disk would fail it):
    ``fleetloop mine`` exits 1 with one line naming --out, and leaves nothing behind."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "fleetloop", "mine", str(sample_dir), "--format", "parquet", "--no-validate", "-q",
         "--out", str(out_dir / "ranked.csv")],
        capture_output=True, text=True, cwd=ROOT, timeout=120, preexec_fn=_limit_file_size,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "ranked.csv" in res.stderr and "Traceback" not in res.stderr
    assert list(out_dir.iterdir()) == []


# --------------------------------------------------------------------------- defect 4: every failure isolated


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "failure",
    [MemoryError(), np.linalg.LinAlgError("Singular matrix"), IsADirectoryError(21, "Is a directory"),
     PermissionError(13, "Permission denied"), RuntimeError("boom"), RecursionError("deep")],
    ids=lambda e: type(e).__name__,
)
def test_any_exception_loading_one_log_quarantines_only_that_log(tmp_path: Path, monkeypatch, failure) -> None:
    source = _parquet_source(tmp_path / "src", ["good-1", "good-2", "bad", "good-3", "good-4"])
    real = ParquetImporter._load_one

    def load_one(d: Path, log_id):
        if d.name == "bad":
            raise failure
        return real(d, log_id)

    monkeypatch.setattr(ParquetImporter, "_load_one", staticmethod(load_one))
    store = LocalStore(tmp_path / "store")
    report = ingest(store, source, "parquet")
    assert sorted(report.registered) == ["good-1", "good-2", "good-3", "good-4"]
    assert list(report.quarantined) == ["bad"]
    (bad,) = _reports(tmp_path / "store").values()
    assert type(failure).__name__ in json.dumps(bad)
    assert any(str(source / "bad") in p for p in _report_paths(bad))  # the report names the file

    # `fleetloop mine` over the same files: the good logs are mined, the bad one is quarantined
    table, mined = mine_files(source, "parquet", validate=False)
    assert sorted(set(table["log_id"].to_pylist())) == ["good-1", "good-2", "good-3", "good-4"]
    assert list(mined.quarantined) == ["bad"] and type(failure).__name__ in mined.quarantined["bad"]


def test_a_bad_log_alone_in_its_shard_is_quarantined_and_mining_goes_on(tmp_path: Path) -> None:
    """``fleetloop mine --shard-logs 1`` (or a last shard of one log): the bad log is quarantined
    like any other, the run is not aborted."""
    source = _parquet_source(tmp_path / "src", ["a", "b", "c"])
    (source / "b" / "calibration.parquet").unlink()
    table, report = mine_files(source, "parquet", validate=False, shard_logs=1)
    assert sorted(set(table["log_id"].to_pylist())) == ["a", "c"]
    assert list(report.quarantined) == ["b"] and "calibration" in report.quarantined["b"]


# A tiny KITTI tracking layout (two good sequences plus the broken one of each case).
CALIB = (
    "P2: " + " ".join(map(str, P2)) + "\n"
    "R0_rect: 1 0 0 0 1 0 0 0 1\n"
    "Tr_velo_to_cam: 0 -1 0 0 0 0 -1 -0.08 1 0 0 -0.27\n"
)
POINTRCNN = "0,2,700.0,170.0,800.0,250.0,9.5,1.5,1.6,3.9,1.0,1.6,20.0,-1.57,-1.6\n1,1,300.0,160.0,330.0,230.0,2.0,1.7,0.6,0.8,-4.0,1.7,15.0,0.1,0.2\n"
CIWT = "0 0 Car -1 -1 -1.8 360.7 196.7 446.1 252.5 1.6 1.6 4.0 -5.8 2.2 20.4 -10 0.56\n1 0 Car -1 -1 -1.8 361.7 196.7 447.1 252.5 1.6 1.6 4.0 -5.8 2.2 20.4 -10 0.87\n"


def _kitti(root: Path, seqs: list[str], seqmap: bool = True) -> Path:
    for d in ("calib", "lidar_det/pointrcnn", "camera_trk/ciwt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for seq in seqs:
        (root / "calib" / f"{seq}.txt").write_text(CALIB)
        (root / "lidar_det" / "pointrcnn" / f"{seq}.txt").write_text(POINTRCNN)
        (root / "camera_trk" / "ciwt" / f"{seq}.txt").write_text(CIWT)
    if seqmap:
        (root / "seqmap.txt").write_text("".join(f"{s} empty 000000 000004\n" for s in seqs))
    return root


def _singular_calibration(root: Path) -> Path:
    path = root / "calib" / "0002.txt"
    path.write_text(CALIB.replace("R0_rect: 1 0 0 0 1 0 0 0 1", "R0_rect: 0 0 0 0 0 0 0 0 0"))
    return path


def _tracker_file_is_a_directory(root: Path) -> Path:
    path = root / "lidar_det" / "pointrcnn" / "0002.txt"
    path.unlink()
    path.mkdir()
    return path


def _huge_frame_index_without_seqmap(root: Path) -> Path:
    (root / "seqmap.txt").unlink()
    path = root / "camera_trk" / "ciwt" / "0002.txt"
    path.write_text(CIWT + CIWT.splitlines()[0].replace("0 0 Car", "1000000000000 0 Car", 1) + "\n")
    return path


@pytest.mark.parametrize(
    "breakage",
    [_singular_calibration, _tracker_file_is_a_directory, _huge_frame_index_without_seqmap],
    ids=lambda f: f.__name__.strip("_"),
)
def test_one_broken_kitti_log_is_quarantined_naming_the_file_and_the_batch_goes_on(tmp_path: Path, breakage) -> None:
    root = _kitti(tmp_path / "kitti", ["0000", "0001", "0002", "0003", "0004"])
    path = breakage(root)
    store = LocalStore(tmp_path / "store")
    report = ingest(store, root, "kitti-tracking")
    assert sorted(report.registered) == ["0000", "0001", "0003", "0004"]
    assert list(report.quarantined) == ["0002"]
    bad = _reports(tmp_path / "store")["0002"]
    assert any(str(path.parent) in p for p in _report_paths(bad)), bad  # names the file (or its directory)


# --------------------------------------------------------------------------- defect 5: log ids

BAD_IDS = ["-lead", "a b", "a..b", "é", "x" * 200]


def test_invalid_log_ids_are_quarantined_and_the_rest_of_the_batch_is_stored(tmp_path: Path) -> None:
    """Bad ids sort first, in the middle and last: whatever the order, every good log is stored
    and every bad id gets its own report."""
    good = ["0-good", "m-good", "z-good"]
    source = _parquet_source(tmp_path / "src", good + BAD_IDS)
    store = LocalStore(tmp_path / "store")
    report = ingest(store, source, "parquet")
    assert sorted(report.registered) == good
    assert sorted(report.quarantined) == sorted(BAD_IDS)
    assert sorted(m.log_id for m in list_logs(store)) == good
    reports = _reports(tmp_path / "store")
    assert sorted(reports) == sorted(BAD_IDS)  # one report per id: none overwrote another
    for log_id in BAD_IDS:
        assert "invalid log_id" in json.dumps(reports[log_id])
    assert len(set(report.quarantined.values())) == len(BAD_IDS)


def test_reports_of_distinct_ids_are_distinct(tmp_path: Path) -> None:
    """``a b`` and ``a_b`` (and ``a/b``, ``a.b``) never overwrite each other's report."""
    from fleetloop.ingest.validation import LogReport, quarantine

    store = LocalStore(tmp_path / "store")
    ids = ["a b", "a_b", "a/b", "a.b", "A_B", "a\nb"]
    keys = [quarantine(store, LogReport(log_id=i, status="quarantined")) for i in ids]
    assert len(set(keys)) == len(ids)
    for log_id, key in zip(ids, keys, strict=True):
        assert json.loads(store.get_bytes(key.replace("report.md", "report.json")))["log_id"] == log_id
    assert keys[1] == "quarantine/a_b/report.md"  # a valid id is its own, readable name


def test_mine_quarantines_invalid_log_ids_instead_of_mining_them(tmp_path: Path) -> None:
    source = _parquet_source(tmp_path / "src", ["0-good", "z-good", *BAD_IDS])
    table, report = mine_files(source, "parquet", validate=False)
    assert sorted(set(table["log_id"].to_pylist())) == ["0-good", "z-good"]
    assert sorted(report.quarantined) == sorted(BAD_IDS)
    assert all("invalid log_id" in why for why in report.quarantined.values())


def test_the_log_id_rule() -> None:
    from fleetloop.store.ids import InvalidLogIdError, check_log_id, report_name

    for ok in ("0001", "drive-2024.05_06", "A" * 128):
        assert check_log_id(ok) == ok and report_name(ok) == ok
    for bad, why in [("", "empty"), ("-x", "starts with '-'"), (".x", "starts with '.'"), ("a..b", "'..'"),
                     ("a b", "' '"), ("a/b", "'/'"), ("é", "starts with"), ("A" * 129, "129 characters"),
                     ("a\n", "'\\n'")]:
        with pytest.raises(InvalidLogIdError, match="invalid log_id") as info:
            check_log_id(bad)
        assert why in str(info.value) and "\n" not in str(info.value)
        name = report_name(bad)
        assert name.startswith("_id-") and len(name) < 100 and "/" not in name and ".." not in name


# --------------------------------------------------------------------------- defect 7: anchor files


def _no_frames_file(log: Path) -> str:
    (log / "frames.parquet").unlink()
    return "required stream 'frames' is missing"


def _frames_without_rows(log: Path) -> str:
    t = pq.read_table(log / "frames.parquet")
    pq.write_table(t.slice(0, 0), log / "frames.parquet")
    return "no frames"


def _frames_zero_bytes(log: Path) -> str:
    (log / "frames.parquet").write_bytes(b"")
    return "frames.parquet"


def _frames_looping_link(log: Path) -> str:
    (log / "frames.parquet").unlink()
    (log / "frames.parquet").symlink_to("frames.parquet")
    return "frames.parquet"


def _optional_stream_looping_link(log: Path) -> str:
    (log / "tracks.parquet").unlink()
    (log / "tracks.parquet").symlink_to("tracks.parquet")
    return "tracks.parquet"


def _optional_stream_is_a_directory(log: Path) -> str:
    (log / "tracks.parquet").unlink()
    (log / "tracks.parquet").mkdir()
    pq.write_table(make_log("b", 8).tracks, log / "tracks.parquet" / "part-0.parquet")
    return "tracks.parquet"


@pytest.mark.parametrize(
    "breakage",
    [_no_frames_file, _frames_without_rows, _frames_zero_bytes, _frames_looping_link, _optional_stream_looping_link,
     _optional_stream_is_a_directory],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_log_missing_an_anchor_or_with_an_unreadable_stream_is_quarantined(tmp_path: Path, breakage) -> None:
    """Never silently skipped, never stored without the stream: quarantined with a message."""
    source = _parquet_source(tmp_path / "src", ["a", "b", "c"])
    message = breakage(source / "b")
    store = LocalStore(tmp_path / "store")
    report = ingest(store, source, "parquet")
    assert sorted(report.registered) == ["a", "c"]
    assert list(report.quarantined) == ["b"], report
    assert get_manifest(store, "b") is None
    assert message in json.dumps(_reports(tmp_path / "store")["b"])


def test_mine_over_zero_good_logs_fails_instead_of_writing_an_empty_file(tmp_path: Path) -> None:
    source = _parquet_source(tmp_path / "src", ["a", "b"])
    for log in ("a", "b"):
        (source / log / "calibration.parquet").unlink()
    out = tmp_path / "ranked.csv"
    res = runner.invoke(app, ["mine", str(source), "--format", "parquet", "--out", str(out), "--no-validate", "-q"])
    assert res.exit_code != 0, res.output
    assert "no" in res.output.lower() and "log" in res.output.lower()
    assert not out.exists()


def test_missing_calibration_file_quarantines_the_log(tmp_path: Path) -> None:
    """Outputs of a sequence without its calibration file: reported, not silently ignored."""
    root = _kitti(tmp_path / "kitti", ["0000", "0001"])
    (root / "calib" / "0001.txt").unlink()
    result = load_logs_isolated(root, "kitti-tracking")
    assert result.logs.log_ids == ["0000"]
    assert list(result.errors) == ["0001"]
    assert "calib" in str(result.errors["0001"]) and "0001" in str(result.errors["0001"])


def test_one_bad_seqmap_line_quarantines_only_its_log(tmp_path: Path) -> None:
    root = _kitti(tmp_path / "kitti", ["0000", "0001", "0002"])
    (root / "seqmap.txt").write_text("0000 empty 000000 000004\n0001 empty 000000 four\n0002 empty 000000 000004\n")
    result = load_logs_isolated(root, "kitti-tracking")
    assert result.logs.log_ids == ["0000", "0002"]
    assert list(result.errors) == ["0001"]
    assert result.errors["0001"].path.endswith("seqmap.txt") and result.errors["0001"].line == 2


def test_a_duplicate_calibration_entry_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    root = _kitti(tmp_path / "kitti", ["0000", "0001"])
    path = root / "calib" / "0001.txt"
    path.write_text(CALIB + "P2: " + " ".join(map(str, P2)).replace("721.5377", "700.0") + "\n")
    result = load_logs_isolated(root, "kitti-tracking")
    assert list(result.errors) == ["0001"]
    err = result.errors["0001"]
    assert isinstance(err, LogFormatError)
    assert (err.path, err.line, err.field) == (str(path), 4, "P2")
    assert "duplicate" in str(err).lower()


def test_an_unreadable_kitti_stream_quarantines_the_log_instead_of_storing_it_without(tmp_path: Path) -> None:
    root = _kitti(tmp_path / "kitti", ["0000", "0001"])
    path = root / "camera_trk" / "ciwt" / "0001.txt"
    path.unlink()
    path.symlink_to(path.name)  # points at itself: every open fails with ELOOP
    store = LocalStore(tmp_path / "store")
    report = ingest(store, root, "kitti-tracking")
    assert report.registered == ["0000"] and list(report.quarantined) == ["0001"]
    assert get_manifest(store, "0001") is None
    assert get_log(store, "0000").tracks.num_rows == 2
