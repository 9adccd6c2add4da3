"""``fleetloop mine calibrate`` and the params file it writes, misused as people hand files in: CRLF
line ends and a byte-order mark are kept, a key given twice is refused (the reader keeps the last
one silently, the rewrite dropped the other), a FIFO is refused (the read blocked forever), a
read-only file is not replaced behind its mode, and an edit or another calibration made while the
fit ran is not undone (a lost update): each a one-line error, exit 1, the file as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetloop.cli import app

runner = CliRunner()

PARAMS = """# my header
mine:
  camera_stream: yolox_sort   # the yardstick's stream
  lidar_score_threshold: 0.9
  class_severities: {}   # filled by calibrate
drift:
  threshold: 0.2  # tuned by hand
"""


def _calibrate(root: Path, p: Path, *more: str):
    return runner.invoke(app, ["mine", "calibrate", str(root), "--log", "0012", "--params-file", str(p), *more])


@pytest.mark.kitti
def test_calibrate_keeps_crlf_line_ends_and_a_byte_order_mark(kitti_root, tmp_path):
    from fleetloop.params import load_params

    p = tmp_path / "params.yaml"
    p.write_bytes(("\ufeff" + PARAMS.replace("\n", "\r\n")).encode("utf-8"))
    res = _calibrate(kitti_root, p, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["whole_file"] is False
    raw = p.read_bytes()
    assert raw.startswith("\ufeff".encode())
    lines = raw.decode("utf-8-sig").split("\n")[:-1]
    assert all(line.endswith("\r") for line in lines), [ln for ln in lines if not ln.endswith("\r")][:3]
    kept = [line for line in PARAMS.splitlines() if "class_severities" not in line]
    assert [ln for ln in (x.removesuffix("\r") for x in lines) if ln in kept] == kept
    assert load_params(p).mine.class_severities and load_params(p).drift.threshold == 0.2


@pytest.mark.kitti
@pytest.mark.parametrize("text", [PARAMS + "mine:\n  budget: 10\n",  # a second mine: section
                                  PARAMS.replace("  lidar_score_threshold: 0.9\n",
                                                 "  lidar_score_threshold: 0.9\n  lidar_score_threshold: 0.8\n")])
def test_calibrate_refuses_a_params_file_with_a_key_given_twice(kitti_root, tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    res = _calibrate(kitti_root, p, "--json")
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    key = "mine" if text.count("mine:") == 2 else "lidar_score_threshold"
    assert doc["ok"] is False and f"key '{key}' is given twice" in doc["error"] and "line " in doc["error"], doc
    assert p.read_text() == text and "Traceback" not in res.output


@pytest.mark.kitti
@pytest.mark.parametrize("dry_run", [False, True])
def test_calibrate_refuses_a_params_file_that_is_a_fifo(kitti_root, tmp_path, dry_run):
    fifo = tmp_path / "params.yaml"
    os.mkfifo(fifo)
    cmd = [sys.executable, "-m", "fleetloop", "mine", "calibrate", str(kitti_root), "--log", "0012",
           "--params-file", str(fifo), "--json", *(["--dry-run"] if dry_run else [])]
    try:  # before: the read of the FIFO blocked until a writer came, forever
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("calibrate blocked reading a FIFO as its params file")
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc == {"ok": False, "error": f"calibrate failed: --params-file {fifo}: not a regular file"}
    assert fifo.is_fifo()


@pytest.mark.kitti
def test_calibrate_does_not_replace_a_read_only_params_file(kitti_root, tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(PARAMS)
    p.chmod(0o444)  # the mode itself, so this holds for root too (the rename would replace it)
    res = _calibrate(kitti_root, p, "--json")
    assert res.exit_code == 1, res.output
    assert json.loads(res.stdout) == {"ok": False, "error": f"calibrate failed: --params-file {p}: cannot write: "
                                                            f"{p} is read-only"}
    assert p.read_text() == PARAMS and (p.stat().st_mode & 0o777) == 0o444
    assert _calibrate(kitti_root, p, "--dry-run", "--json").exit_code == 0  # reading it is fine


@pytest.mark.kitti
@pytest.mark.parametrize("existing", [True, False])
def test_calibrate_does_not_undo_an_edit_made_while_it_ran(kitti_root, tmp_path, monkeypatch, existing):
    """A hand edit (or another calibration) while the fit runs: writing the params read before
    the fit would silently put the old values back (before: drift.threshold returned to 0.2)."""
    import fleetloop.mine.calibrate as cal

    p = tmp_path / "params.yaml"
    if existing:
        p.write_text(PARAMS)
    edited = PARAMS.replace("threshold: 0.2", "threshold: 0.3")
    real = cal.calibrate

    def edit_meanwhile(*args, **kwargs):
        p.write_text(edited)
        return real(*args, **kwargs)

    monkeypatch.setattr(cal, "calibrate", edit_meanwhile)
    res = _calibrate(kitti_root, p, "--json")
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and "changed while calibrating" in doc["error"] and "nothing written" in doc["error"]
    assert p.read_text() == edited
