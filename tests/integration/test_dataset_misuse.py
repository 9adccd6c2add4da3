"""The dataset repository misused or damaged, with real git and DVC: a changed DVC remote, a killed
checkout, a broken manifest, a deleted tag, a dirty work tree, paths that are files, DVC's errors
in one line, and no orphaned child when the process running git or DVC is SIGKILLed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from fleetloop.dataset import DatasetConfig, DatasetError, checkout, history, materialize, status
from fleetloop.dataset.dvc import Repo
from tests.integration.test_dataset import T0, Ann, Fleet, _box, _cli_fleet, _config, _dvc_env, _grow  # noqa: F401 (fixtures)


def _fleet(tmp_path: Path, logs: int = 1) -> Fleet:
    fleet = Fleet(tmp_path)
    for k in range(logs):
        fleet.add_log(f"log-{k}", 4)
    return fleet


def _deliver(fleet: Fleet, n: int) -> None:
    """The n-th delivery: a new revision of frame 0 of log-0 (each makes a version)."""
    fleet.deliver("week-1", [Ann("log-0", 0, 1, n, T0 + timedelta(hours=n), [_box(n)])])


def _grown_once(tmp_path: Path) -> tuple[DatasetConfig, Fleet]:
    """A dataset with version 1 (one delivery of one log) on a local DVC remote, and its fleet."""
    config = _config(tmp_path, str(tmp_path / "dvc-remote"))
    fleet = _fleet(tmp_path)
    _deliver(fleet, 1)
    _grow(fleet, config)
    return config, fleet


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _with_remote(config: DatasetConfig, remote: str) -> DatasetConfig:
    return config.model_copy(update={"dvc_remote_url": remote})


# ------------------------------------------------------------------------------------------ DVC remote


def test_a_changed_dvc_remote_is_refused_not_switched(tmp_path: Path) -> None:
    config = _config(tmp_path, str(tmp_path / "remote-a"))
    fleet = _fleet(tmp_path)
    _deliver(fleet, 1)
    assert _grow(fleet, config).version == 1
    repo = Repo(config.repo_dir, config)
    head = repo.head()
    _deliver(fleet, 2)
    moved = _with_remote(config, str(tmp_path / "remote-b"))
    with pytest.raises(DatasetError) as err:
        _grow(fleet, moved)
    message = str(err.value)
    assert str(tmp_path / "remote-a") in message and str(tmp_path / "remote-b") in message
    assert "does not switch" in message and "\n" not in message
    # nothing committed, nothing pushed to the new remote, no new tag; the old remote still grows
    assert repo.head() == head and not repo.dirty()
    assert repo.dvc_remote_url() == str(tmp_path / "remote-a")
    assert not (tmp_path / "remote-b").exists() and status(config).version == 1
    assert _grow(fleet, config).version == 2
    shutil.rmtree(config.repo_dir)
    assert checkout(1, tmp_path / "v1", config).frames == 1 and checkout(2, tmp_path / "v2", config).frames == 1


def test_before_the_first_version_the_remote_change_is_committed_only_with_it(tmp_path: Path) -> None:
    config = _config(tmp_path, str(tmp_path / "remote-a"))
    fleet = _fleet(tmp_path)
    assert _grow(fleet, config).nothing_new  # creates the repository, remote-a in its config
    repo = Repo(config.repo_dir, config)
    first = repo.head()
    (tmp_path / "afile").write_text("not a directory")
    _deliver(fleet, 1)
    with pytest.raises(DatasetError, match="dvc push"):  # an unwritable remote: the push fails
        _grow(fleet, _with_remote(config, str(tmp_path / "afile" / "remote")))
    assert repo.head() == first and repo.show("HEAD", ".dvc/config") is not None
    assert str(tmp_path / "afile") not in (repo.show("HEAD", ".dvc/config") or b"").decode()
    good = _with_remote(config, str(tmp_path / "remote-c"))
    r = _grow(fleet, good)
    assert r.version == 1 and repo.dvc_remote_url() == str(tmp_path / "remote-c") and not repo.dirty()
    shutil.rmtree(config.repo_dir)
    assert checkout(1, tmp_path / "v1", good).frames == 1


# ------------------------------------------------------------------------------------------ checkout


_KILLED_CHECKOUT = """
import json, os, signal, sys
from pathlib import Path
from fleetloop.dataset.config import DatasetConfig
from fleetloop.dataset.dvc import Repo
from fleetloop.dataset.versions import checkout
Repo.pull = lambda self, *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # killed while pulling the data
a = json.loads(sys.argv[1])
checkout(1, Path(a["to"]), DatasetConfig.model_validate(a["config"]))
"""


def test_a_killed_checkout_leaves_no_directory_that_looks_complete(tmp_path: Path) -> None:
    config, _ = _grown_once(tmp_path)
    to = tmp_path / "co"
    arg = json.dumps({"to": str(to), "config": config.model_dump(mode="json")})
    proc = subprocess.run([sys.executable, "-c", _KILLED_CHECKOUT, arg], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not to.exists()
    assert [p.name for p in tmp_path.glob(".co.checkout-*")]  # the killed one's leftover, hidden
    c = checkout(1, to, config)  # the rerun works, and clears the leftover
    assert c.frames == 1 and materialize(to)[0].num_rows == 1
    assert not list(tmp_path.glob(".co.checkout-*"))
    # a checkout whose batch data is gone is an error naming the batch, not fewer rows
    Repo.discard(to / "data" / "batches" / "b00001")
    with pytest.raises(DatasetError, match=r"b00001 has a \.dvc file but no data"):
        materialize(to)


def test_dvc_errors_are_one_line_that_keeps_the_cause(tmp_path: Path) -> None:
    config, _ = _grown_once(tmp_path)
    shutil.rmtree(tmp_path / "dvc-remote")  # the data is gone from the remote
    shutil.rmtree(config.repo_dir)
    with pytest.raises(DatasetError) as err:
        checkout(1, tmp_path / "co", config)
    message = str(err.value)
    assert "\n" not in message and len(message) < 1000, message
    assert "dvc pull" in message and "Checkout failed" in message and "Missing cache files" in message
    assert "\x1b[" not in message
    assert not (tmp_path / "co").exists()


# ------------------------------------------------------------------------------------------ damaged repository


def test_an_invalid_manifest_is_an_error_naming_the_version(cli_fleet: tuple[Fleet, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fleetloop.cli.dataset import app

    fleet, home = cli_fleet
    fleet.add_log("log-0", 4)
    _deliver(fleet, 1)
    runner = CliRunner()
    assert runner.invoke(app, ["grow"]).exit_code == 0
    repo_dir = home / "dataset"
    manifest = json.loads((repo_dir / "manifest.json").read_text())
    del manifest["created_at"]
    manifest["version"], manifest["tag"] = 2, "dataset-v2"
    (repo_dir / "manifest.json").write_text(json.dumps(manifest))
    _git(repo_dir, "commit", "-qam", "dataset-v2: by hand")
    _git(repo_dir, "tag", "dataset-v2")
    for argv in (["status"], ["history"], ["grow"], ["checkout", "2", "--to", str(tmp_path / "co")]):
        out = runner.invoke(app, argv)
        assert out.exit_code == 2, (argv, out.output)
        assert "dataset-v2" in out.output and "manifest.json" in out.output, (argv, out.output)
        assert "created_at: missing" in out.output and "Traceback" not in out.output, (argv, out.output)


def test_a_deleted_tag_is_listed_as_missing_and_grow_recreates_it(tmp_path: Path) -> None:
    config = _config(tmp_path, str(tmp_path / "dvc-remote"))
    fleet = _fleet(tmp_path)
    for n in (1, 2, 3, 4):
        _deliver(fleet, n)
        assert _grow(fleet, config).version == n
    for where in (config.repo_dir, Path(config.git_remote or "")):
        _git(where, "tag", "-d", "dataset-v2")
    with pytest.raises(DatasetError, match=r"it has versions 1, 3, 4$"):
        checkout(2, tmp_path / "v2", config)
    r = _grow(fleet, config)
    assert r.nothing_new and any("re-created the missing tag dataset-v2" in n for n in r.recovered), r.recovered
    assert any("pushed dataset-v2" in n for n in r.recovered), r.recovered
    assert checkout(2, tmp_path / "v2", config).frames == 1
    assert [h.version for h in history(config)] == [1, 2, 3, 4]


def test_a_dirty_work_tree_is_reported_as_it_is(tmp_path: Path) -> None:
    config, fleet = _grown_once(tmp_path)
    notes = config.repo_dir / "notes.txt"
    notes.write_text("mine")
    r = _grow(fleet, config)
    assert r.nothing_new and not [n for n in r.recovered if "reset" in n or "discarded" in n], r.recovered
    assert notes.read_text() == "mine"  # untracked: left alone
    readme = config.repo_dir / "README.md"
    readme.write_text("edited by hand")
    r = _grow(fleet, config)
    assert any("reset uncommitted changes to README.md" in n for n in r.recovered), r.recovered
    assert not any("notes.txt" in n for n in r.recovered) and readme.read_text() != "edited by hand"


def test_paths_that_are_files_are_named(tmp_path: Path) -> None:
    config, fleet = _grown_once(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(DatasetError, match=re.escape(f"{afile / 'sub'} cannot be a directory: {afile} is a file")):
        checkout(1, afile / "sub", config)
    with pytest.raises(DatasetError, match=re.escape(f"{afile} is a file, not a directory")):
        checkout(1, afile, config)
    on_file = config.model_copy(update={"repo_dir": afile})
    with pytest.raises(DatasetError, match=re.escape(f"the dataset repository {afile} is a file")):
        status(on_file)
    with pytest.raises(DatasetError, match=re.escape(f"the dataset repository {afile} is a file")):
        _grow(fleet, on_file)
    assert afile.read_text() == "x"


# ------------------------------------------------------------------------------------------ orphans


_RUNNER = """
import json, sys
from pathlib import Path
from fleetloop.dataset.config import DatasetConfig
from fleetloop.dataset.dvc import Repo
a = json.loads(sys.argv[1])
child = "import os, time, pathlib; pathlib.Path(%r).write_text(str(os.getpid())); time.sleep(120)" % a["pid"]
Repo(Path(a["cwd"]), DatasetConfig.model_validate(a["config"]))._run([sys.executable, "-c", child], "sleeper")
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_parent_takes_its_git_or_dvc_child_with_it(tmp_path: Path) -> None:
    config = _config(tmp_path, str(tmp_path / "dvc-remote"))
    pid_file = tmp_path / "child.pid"
    arg = json.dumps({"pid": str(pid_file), "cwd": str(tmp_path), "config": config.model_dump(mode="json")})
    parent = subprocess.Popen([sys.executable, "-c", _RUNNER, arg])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = _alive(child)
        if alive:
            os.kill(child, signal.SIGKILL)
        assert not alive, "the child outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
