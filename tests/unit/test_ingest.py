"""``fleetloop ingest`` / ``fleetloop logs list`` through the real CLI on the real KITTI slice:
bad logs are quarantined with a report, the rest of the batch is stored, reruns store nothing twice."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from fleetloop.cli import app
from fleetloop.settings import get_settings


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


@pytest.fixture
def broken_kitti(tmp_path, kitti_root):
    """A scratch copy of the slice (in tmp, never in the repo) with two broken logs."""
    root = tmp_path / "kitti"
    shutil.copytree(kitti_root, root)
    det = root / "lidar_det" / "pointrcnn" / "0006.txt"
    lines = det.read_text().splitlines()
    lines[4] = lines[4].replace(",", ";", 1)  # a line that does not parse
    det.write_text("\n".join(lines) + "\n")
    calib = root / "calib" / "0010.txt"
    calib.write_text("\n".join(line for line in calib.read_text().splitlines() if not line.startswith("Tr_velo_to_cam")))
    return root


def test_ingest_quarantines_bad_logs_and_keeps_the_rest(home, broken_kitti):
    runner = CliRunner()
    first = runner.invoke(app, ["ingest", str(broken_kitti), "--format", "kitti-tracking"])
    assert first.exit_code == 0, first.output
    assert "3 new" in first.output and "2 quarantined" in first.output
    # each quarantined log says why on its own line (the file and line that did not parse), and
    # where the reports are, without opening them
    why = {line.split()[1].rstrip(":"): line for line in first.output.splitlines() if line.strip().startswith("quarantined ")}
    assert sorted(why) == ["0006", "0010"], first.output
    assert "0006.txt" in why["0006"] and "line 5" in why["0006"] and "Tr_velo_to_cam" in why["0010"]
    assert "reports in the store: quarantine/" in first.output

    reports = {p.parent.name: p for p in (home / "store" / "quarantine").glob("*/report.json")}
    assert sorted(reports) == ["0006", "0010"]
    r6 = json.loads(reports["0006"].read_text())
    assert r6["status"] == "quarantined" and "line 5" in json.dumps(r6)
    r10 = json.loads(reports["0010"].read_text())
    assert "Tr_velo_to_cam" in json.dumps(r10)
    assert (reports["0006"].parent / "report.md").read_text().strip()

    listed = runner.invoke(app, ["logs", "list"])
    assert listed.exit_code == 0 and "3 logs" in listed.output
    for log_id in ("0001", "0008", "0012"):
        assert log_id in listed.output

    again = runner.invoke(app, ["ingest", str(broken_kitti), "--format", "kitti-tracking"])
    assert again.exit_code == 0 and "0 new" in again.output and "3 unchanged" in again.output
    assert "3 logs" in runner.invoke(app, ["logs", "list"]).output


def test_ingest_bad_arguments_give_clear_errors(home, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", str(tmp_path), "--format", "nope"])
    assert res.exit_code == 2 and "--format" in res.output
    res = runner.invoke(app, ["ingest", str(tmp_path), "--format", "kitti-tracking"])
    assert res.exit_code == 1 and "calib" in res.output
    res = runner.invoke(app, ["ingest", str(tmp_path / "missing"), "--json"])  # as `fleetloop mine` answers it
    assert res.exit_code == 1 and "does not exist" in json.loads(res.stdout)["error"], res.output


def test_ingest_and_logs_list_print_json_for_machines(home, broken_kitti):
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", str(broken_kitti), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # stdout is the JSON document alone (the spinner goes to stderr)
    assert doc["ok"] is True and sorted(doc["registered"]) == ["0001", "0008", "0012"]
    assert sorted(doc["quarantined"]) == ["0006", "0010"] and doc["conflicts"] == {} and doc["frames"] > 0
    assert sorted(doc["reasons"]) == ["0006", "0010"] and "line 5" in doc["reasons"]["0006"]
    listed = json.loads(runner.invoke(app, ["logs", "list", "--json"]).stdout)
    assert sorted(m["log_id"] for m in listed) == ["0001", "0008", "0012"]
    assert all(m["n_frames"] > 0 and m["sha256"] for m in listed)
    assert json.loads(runner.invoke(app, ["logs", "list", "--json", "--since", "2999-01-01"]).stdout) == []
    res = runner.invoke(app, ["ingest", str(broken_kitti / "calib"), "--json"])  # not a KITTI root
    assert res.exit_code == 1 and json.loads(res.stdout)["ok"] is False and "ingest failed" in res.stderr


def test_ingest_that_stores_nothing_says_so(home, broken_kitti, kitti_root, tmp_path):
    runner = CliRunner()
    # a --log that is not there is a typo: an error, and no quarantine report for a log that does not exist
    res = runner.invoke(app, ["ingest", str(broken_kitti), "--log", "9999", "--json"])
    assert res.exit_code == 1 and "no log '9999'" in json.loads(res.stdout)["error"], res.output
    assert not (home / "store" / "quarantine").exists()
    # the wrong format finds no logs: an error, not "0 new"
    res = runner.invoke(app, ["ingest", str(broken_kitti), "--format", "parquet"])
    assert res.exit_code == 1 and "no logs found" in res.output, res.output
    # a batch whose every log is quarantined stored nothing: exit 1, ok false
    res = runner.invoke(app, ["ingest", str(broken_kitti), "--log", "0006", "--json"])
    doc = json.loads(res.stdout)
    assert res.exit_code == 1 and doc["ok"] is False and list(doc["quarantined"]) == ["0006"], res.output
    # validation's warnings come with the stored logs, as `fleetloop mine` prints them
    res = runner.invoke(app, ["ingest", str(kitti_root), "--json"])
    doc = json.loads(res.stdout)
    assert res.exit_code == 0 and "positive width" in doc["warnings"]["0006"], res.output
    assert all(m.source == f"kitti-tracking:{kitti_root.resolve()}" for m in _stored())


def _stored():
    from fleetloop.store.logs import list_logs
    from fleetloop.store.objects import get_store

    return list_logs(get_store(get_settings()))


def test_a_file_name_that_is_not_utf8_quarantines_its_log_and_the_rest_is_stored(home, kitti_root, tmp_path):
    import os

    root = tmp_path / "kitti"
    shutil.copytree(kitti_root, root)
    bad = os.fsdecode(b"bad\xffname.txt")  # what a Linux file name of arbitrary bytes decodes to
    for sub in ("calib", "lidar_det/pointrcnn", *(f"camera_trk/{d.name}" for d in (root / "camera_trk").iterdir())):
        shutil.copy(root / sub / "0012.txt", root / sub / bad)
    res = CliRunner().invoke(app, ["ingest", str(root), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # one valid JSON document, the undecodable byte escaped
    assert sorted(doc["registered"]) == ["0001", "0006", "0008", "0010", "0012"]
    (log_id, why), = doc["reasons"].items()
    assert log_id.startswith("bad") and "invalid log_id" in why
    report = next((home / "store" / "quarantine").glob("*/report.md"))
    assert "bad" in report.read_text()


def test_a_store_failing_partway_says_which_logs_were_stored_and_a_rerun_stores_the_rest(sample_dir, tmp_path):
    """An S3 endpoint going down mid-ingest used to end in one line, "ingest failed: ... Could not
    connect", without saying what was stored. The failure (outside this machine) is stood in for by
    a local store that refuses every write of the second log."""
    from fleetloop.ingest.ingest import IngestInterrupted, ingest
    from fleetloop.store.logs import list_logs
    from fleetloop.store.objects import LocalStore, StorageError

    ids = sorted(p.name for p in sample_dir.iterdir() if p.is_dir())
    assert len(ids) == 2

    class GoesDown(LocalStore):
        down = False

        def _refuse(self, key: str) -> None:
            if self.down or f"/{ids[1]}/" in f"/{key}":
                self.down = True  # from then on every request fails, as with an endpoint gone
                raise StorageError("s3://fleetloop: Could not connect to the endpoint URL")

        def exists(self, key: str) -> bool:
            if self.down:
                self._refuse(key)
            return super().exists(key)

        def put_bytes(self, key: str, data: bytes) -> None:
            self._refuse(key)
            super().put_bytes(key, data)

        def put_file(self, key: str, path) -> None:
            self._refuse(key)
            super().put_file(key, path)

        def put_if_absent(self, key: str, data: bytes) -> bool:
            self._refuse(key)
            return super().put_if_absent(key, data)

    root = tmp_path / "store"
    with pytest.raises(IngestInterrupted) as caught:
        ingest(GoesDown(root), sample_dir, "parquet")
    message = str(caught.value)
    assert "Could not connect" in message
    assert f"stored before the store failed: 1 log(s) ({ids[0]})" in message
    assert f"not stored: 1 log(s) ({ids[1]})" in message and "run the same command again" in message
    assert caught.value.report.registered == [ids[0]] and caught.value.not_stored == [ids[1]]
    assert [m.log_id for m in list_logs(LocalStore(root))] == [ids[0]]
    again = ingest(LocalStore(root), sample_dir, "parquet")
    assert again.unchanged == [ids[0]] and again.registered == [ids[1]]
