"""``fleetloop ingest`` misused as real users and fleets do, through the real CLI on scratch copies
of the KITTI slice (in tmp, never in the repo): every bad input is one clear line naming the file
and line, one bad log never stops the batch, nothing stored is lost, reruns are safe, and
``--json`` is always one JSON document on stdout."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetloop.cli import app
from fleetloop.settings import get_settings

SMALL = ("0010", "0012")  # the two shortest sequences of the slice


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    monkeypatch.delenv("FLEETLOOP_STORAGE__LOCAL_ROOT", raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


@pytest.fixture
def kitti(tmp_path: Path, kitti_root: Path) -> Path:
    """A scratch copy of two sequences of the slice, with their seqmap lines."""
    root = tmp_path / "kitti"
    for kind in ("calib", "lidar_det/pointrcnn", "camera_trk/ciwt", "camera_trk/yolox_sort"):
        (root / kind).mkdir(parents=True)
        for seq in SMALL:
            shutil.copy(kitti_root / kind / f"{seq}.txt", root / kind / f"{seq}.txt")
    lines = (kitti_root / "seqmap.txt").read_text().splitlines()
    (root / "seqmap.txt").write_text("".join(f"{line}\n" for line in lines if line.split()[0] in SMALL))
    return root


def _ingest(*args: str) -> tuple[int, dict]:
    res = CliRunner().invoke(app, ["ingest", *args, "--json"])
    assert "Traceback" not in res.stdout
    return res.exit_code, json.loads(res.stdout)  # valid JSON on stdout, whatever happened


def test_bytes_that_are_not_utf8_quarantine_their_log_naming_the_line(home: Path, kitti: Path) -> None:
    path = kitti / "camera_trk" / "ciwt" / "0012.txt"
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b" Car ", b" Ca\xffr ", 1)  # a flipped byte in a type field
    path.write_bytes(b"\n".join(lines))

    code, out = _ingest(str(kitti))
    assert code == 0 and out["ok"] is True
    assert out["registered"] == ["0010"] and list(out["quarantined"]) == ["0012"]
    why = out["reasons"]["0012"]
    assert "ciwt/0012.txt, line 3, field 'type'" in why, why  # was: "cannot be read: ArrowInvalid: Invalid UTF8 payload"


def test_a_sequence_the_seqmap_names_but_whose_files_are_gone_is_quarantined(home: Path, kitti: Path) -> None:
    with (kitti / "seqmap.txt").open("a") as fh:
        fh.write("0099 empty 000000 000010\n")  # the upload lost every file of 0099

    code, out = _ingest(str(kitti))
    assert code == 0 and sorted(out["registered"]) == list(SMALL)
    assert list(out["quarantined"]) == ["0099"]  # was: silently not there
    why = out["reasons"]["0099"]
    assert "seqmap.txt, line 3" in why and "has no files" in why, why


def test_hidden_directories_beside_the_sources_are_not_sources(home: Path, kitti: Path) -> None:
    # a notebook's checkpoint folder sorts before "pointrcnn": it must not become the lidar source
    (kitti / "lidar_det" / ".ipynb_checkpoints").mkdir()
    (kitti / "camera_trk" / ".ipynb_checkpoints").mkdir()
    shutil.copy(kitti / "calib" / "0012.txt", kitti / "calib" / "._0012.txt")  # a macOS resource fork

    code, out = _ingest(str(kitti))
    assert code == 0 and sorted(out["registered"]) == list(SMALL) and not out["quarantined"]

    from fleetloop.store.logs import get_log
    from fleetloop.store.objects import get_store

    stored = get_log(get_store(get_settings()), "0012")
    assert stored.lidar_detections.num_rows > 0  # was: 0, every log stored without its lidar


def test_a_fixed_log_ingested_again_is_no_longer_quarantined(home: Path, kitti: Path) -> None:
    calib = kitti / "calib" / "0012.txt"
    good = calib.read_text()
    calib.write_text(good.replace("P2:", "P2: 1 2 3\nX:", 1))
    code, out = _ingest(str(kitti))
    assert code == 0 and list(out["quarantined"]) == ["0012"]
    assert (home / "store" / "quarantine" / "0012" / "report.json").is_file()

    calib.write_text(good)  # fixed at the source, ingested again
    code, out = _ingest(str(kitti))
    assert code == 0 and out["registered"] == ["0012"] and out["unchanged"] == ["0010"]
    assert not (home / "store" / "quarantine" / "0012").exists()  # was: the stale report stayed


def test_one_logs_keys_blocked_in_a_store_that_answers_stop_only_that_log(home: Path, kitti: Path) -> None:
    """A foreign object in the way of one log's keys used to stop the batch as if the store were
    down (the logs after it not stored); the store still answers, so only that log fails."""
    (home / "store" / "logs").mkdir(parents=True)
    (home / "store" / "logs" / "0010").write_text("not a folder")  # a foreign object blocks 0010's keys

    code, out = _ingest(str(kitti))
    assert code == 1 and out["ok"] is False
    assert out["registered"] == ["0012"] and list(out["failed"]) == ["0010"]
    assert "logs/0010" in out["failed"]["0010"]
    res = CliRunner().invoke(app, ["ingest", str(kitti)], env={"COLUMNS": "200"})
    assert res.exit_code == 1 and "1 failed" in res.stdout and "not stored 0010: " in res.stdout

    (home / "store" / "logs" / "0010").unlink()
    code, out = _ingest(str(kitti))  # the rerun stores the rest, nothing twice
    assert code == 0 and out["registered"] == ["0010"] and out["unchanged"] == ["0012"]


def test_a_source_that_is_a_symlink_loop_is_one_clear_line(home: Path, tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    res = CliRunner().invoke(app, ["ingest", str(loop), "--json"])
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert out["ok"] is False and out["error"].startswith(f"ingest failed: {loop}"), out  # was: "RuntimeError: ..."
