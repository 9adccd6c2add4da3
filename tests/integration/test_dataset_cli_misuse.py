"""``fleetloop dataset`` as people use it by hand, with real git and DVC (outside review): a working
repository moved off ``main`` by hand, a checkout into the dataset repository itself, a checkout
whose data was deleted from the DVC remote, and a label for a log no longer in the store."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import timedelta
from pathlib import Path

from typer.testing import CliRunner

from fleetloop.cli.dataset import app
from fleetloop.dataset import DatasetConfig
from fleetloop.dataset.dvc import Repo
from tests.integration.test_dataset import T0, Ann, Fleet, _box, _cli_fleet, _dvc_env  # noqa: F401 (fixtures)

runner = CliRunner()


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "advice.detachedHead=false", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def _deliver(fleet: Fleet, n: int) -> None:
    """The n-th delivery: a new revision of frame 0 of log-0 (each makes a version)."""
    fleet.deliver("week-1", [Ann("log-0", 0, 1, n, T0 + timedelta(hours=n), [_box(n)])])


def _versions(fleet: Fleet, n: int) -> None:
    fleet.add_log("log-0", 4)
    for k in range(1, n + 1):
        _deliver(fleet, k)
        out = runner.invoke(app, ["grow"])
        assert out.exit_code == 0 and f"dataset-v{k}" in out.stdout, out.output


def _refused(argv: list[str]) -> str:
    """The error of a command that must fail: exit 2, one JSON document ``{ok: false}`` on stdout."""
    out = runner.invoke(app, [*argv, "--json"])
    assert out.exit_code == 2, (argv, out.output)
    doc = json.loads(out.stdout)
    assert doc["ok"] is False and "\n" not in doc["error"] and "Traceback" not in out.output, out.output
    return str(doc["error"])


def _state(repo_dir: Path) -> tuple[str, str, str]:
    return (_git(repo_dir, "rev-parse", "HEAD"), _git(repo_dir, "log", "--all", "--format=%H"),
            _git(repo_dir, "show-ref", "--tags"))


def test_grow_refuses_a_repository_moved_off_main_by_hand(cli_fleet: tuple[Fleet, Path]) -> None:
    fleet, home = cli_fleet
    _versions(fleet, 2)
    repo_dir = home / "dataset"
    _deliver(fleet, 3)
    # an old version looked at in the working repository (a detached HEAD), then a branch of one's own
    _git(repo_dir, "checkout", "-q", "dataset-v1")
    before = _state(repo_dir)
    error = _refused(["grow"])
    assert f"{repo_dir.resolve()} is not on branch main (HEAD is detached at " in error, error
    assert "`git checkout main`" in error, error
    assert _state(repo_dir) == before and (repo_dir / "data" / "batches" / "b00002").is_dir()  # nothing changed
    _git(repo_dir, "checkout", "-q", "-b", "mine")
    error = _refused(["grow"])
    assert "is not on branch main (it is on branch mine)" in error, error
    assert _state(repo_dir)[1:] == before[1:]
    # back on main, the delivery becomes version 3 (the shards of versions 2 and 3 were not taken again)
    _git(repo_dir, "checkout", "-q", "main")
    out = runner.invoke(app, ["grow", "--json"])
    assert out.exit_code == 0, out.output
    grown = json.loads(out.stdout)
    assert (grown["version"], grown["frames_added"], len(grown["label_shards"])) == (3, 1, 1), grown


def test_checkout_into_the_dataset_repository_is_refused(cli_fleet: tuple[Fleet, Path]) -> None:
    fleet, home = cli_fleet
    _versions(fleet, 1)
    repo_dir = (home / "dataset").resolve()
    for inside in (repo_dir / "data" / "batches" / "b00009", repo_dir / "v1"):
        error = _refused(["checkout", "1", "--to", str(inside)])
        assert error == (f"{inside} is inside the dataset repository {repo_dir}: check out outside it (grow resets "
                         "that work tree and removes batch folders it did not commit)"), error
        assert not inside.exists() and not list(inside.parent.glob(f".{inside.name}.checkout-*"))
    assert _git(repo_dir, "status", "--porcelain") == ""


def _remote_object(remote: Path, md5: str) -> Path:
    return remote / "files" / "md5" / md5[:2] / md5[2:]


def test_checkout_of_data_deleted_from_the_dvc_remote_names_the_batch_and_the_repair(
        cli_fleet: tuple[Fleet, Path], tmp_path: Path) -> None:
    fleet, home = cli_fleet
    _versions(fleet, 2)
    repo_dir, remote = (home / "dataset").resolve(), (home / "dvc-remote").resolve()
    listing_md5 = re.search(r"md5: ([0-9a-f]{32})\.dir", (repo_dir / "data/batches/b00002.dvc").read_text())
    assert listing_md5
    listing = _remote_object(remote, listing_md5.group(1) + ".dir")
    first_file = json.loads(listing.read_text())[0]["md5"]
    _remote_object(remote, first_file).unlink()  # one file of batch 2 is gone from the remote
    to = tmp_path / "v2"
    error = _refused(["checkout", "2", "--to", str(to)])
    assert error.startswith(f"dataset-v2's data is missing from the DVC remote {remote}: batch b00002 (1 of 2; "), error
    assert f"the working repository {repo_dir}" in error and "`dvc push data/batches/b00002.dvc` there" in error
    assert f"delete files/md5/{listing_md5.group(1)[:2]}/{listing_md5.group(1)[2:]}.dir from the remote" in error
    assert ".checkout-" not in error and not to.exists(), error  # not the removed temporary directory
    assert json.loads(runner.invoke(app, ["checkout", "1", "--to", str(tmp_path / "v1"), "--json"]).stdout)["ok"]
    listing.unlink()  # the listing gone too: DVC words it otherwise, the answer is the same
    error = _refused(["checkout", "2", "--to", str(to)])
    assert "batch b00002 (1 of 2; " in error and "Missing cache files" in error, error
    # the repair as the message words it works
    config = DatasetConfig(repo_dir=repo_dir, dvc_remote_url=str(remote))
    Repo(repo_dir, config).dvc("push", "data/batches/b00002.dvc")
    out = runner.invoke(app, ["checkout", "2", "--to", str(to), "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["version"] == 2, out.output


def test_grow_names_a_label_whose_log_was_deleted_without_frame_none(cli_fleet: tuple[Fleet, Path]) -> None:
    fleet, _ = cli_fleet
    _versions(fleet, 1)
    fleet.deliver("week-2", [Ann("log-gone", 1, 77, 1, T0 + timedelta(days=1), [_box(7)])])  # no such log
    out = runner.invoke(app, ["grow"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.stdout.split())
    assert "unknown_frame log-gone: log log-gone is not in the store" in text, text
    assert "frame None" not in text, text


def test_a_tag_made_or_moved_by_hand_is_named_with_the_repair(cli_fleet: tuple[Fleet, Path], tmp_path: Path) -> None:
    fleet, home = cli_fleet
    _versions(fleet, 2)
    repo_dir = (home / "dataset").resolve()
    _git(repo_dir, "tag", "dataset-v3")  # by hand, on version 2's commit
    _deliver(fleet, 3)
    head = _git(repo_dir, "rev-parse", "HEAD")
    made = (f"the tag dataset-v3 in {repo_dir} points at a commit that holds version 2's manifest, not version 3's "
            "(a tag made or moved by hand?): delete it (`git tag -d dataset-v3` there")
    for argv in (["status"], ["history"], ["grow"], ["checkout", "3", "--to", str(tmp_path / "v3")]):
        error = _refused(argv)
        assert error.startswith(made), (argv, error)
    assert _git(repo_dir, "rev-parse", "HEAD") == head and not (tmp_path / "v3").exists()  # grow committed nothing
    _git(repo_dir, "tag", "-d", "dataset-v3")
    out = runner.invoke(app, ["grow", "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["version"] == 3, out.output
    # an older version's tag moved onto another commit: named before any data is pulled; grow re-creates it
    _git(repo_dir, "tag", "-f", "dataset-v1", "dataset-v3")
    error = _refused(["checkout", "1", "--to", str(tmp_path / "v1")])
    assert error.startswith("the tag dataset-v1 in ") and "holds version 3's manifest, not version 1's" in error, error
    _git(repo_dir, "tag", "-d", "dataset-v1")
    assert runner.invoke(app, ["grow"]).exit_code == 0
    out = runner.invoke(app, ["checkout", "1", "--to", str(tmp_path / "v1"), "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["version"] == 1, out.output
