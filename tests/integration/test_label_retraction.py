"""Annotations deleted in Label Studio after they were delivered, against a real server: the sync
retracts them (a tombstone, or the task's newest remaining annotation as the frame's new word),
exactly once, and the dataset grown from the shards no longer trains on the deleted label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fleetloop.dataset.batches import (
    BATCHES_DIR,
    INDEX_SCHEMA,
    batch_dirs,
    batch_name,
    fold,
    frame_index,
    materialize,
    read_batch,
)
from fleetloop.dataset.build import build_batch, list_label_shards, write_batch
from fleetloop.label import api
from fleetloop.label.convert import box_to_result
from fleetloop.label.sync import delivered_manifest, load_watermark, read_labels, sync
from fleetloop.store.objects import get_store
from tests.integration.test_labeling_misuse import _annotate, _push

pytestmark = [pytest.mark.services, pytest.mark.kitti, pytest.mark.timeout(600)]
pytest_plugins = ["tests.fixtures_ls"]

W, H = 1242, 375
CAR = box_to_result("car", 100, 100, 200, 200, W, H)
PEDESTRIAN = box_to_result("pedestrian", 400, 150, 440, 260, W, H)
CONE = box_to_result("traffic_cone", 700, 200, 720, 240, W, H)
RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}


@pytest.fixture(scope="module")
def logs(kitti_root):
    from fleetloop.ingest.importers import load_logs

    return load_logs(kitti_root, format="kitti-tracking", log_ids=["0012"])


def _delete(client, annotation_id: int) -> None:
    client.request("DELETE", f"/api/annotations/{annotation_id}/")


class Dataset:
    """The dataset's growth as ``fleetloop dataset grow`` does it (build a batch from the shards
    not consumed yet against the folded index, write it, fold everything), without git and DVC."""

    def __init__(self, store, root: Path):
        self.store, self.root, self.consumed = store, root, set[str]()

    def _index(self) -> pa.Table:
        parts = []
        for n, folder in batch_dirs(self.root):
            frames, labels = read_batch(folder, images=False)
            tag = pa.field("batch", pa.int32(), nullable=False)
            parts.append(frame_index(frames.append_column(tag, pa.array(np.full(frames.num_rows, n, np.int32))),
                                     labels.append_column(tag, pa.array(np.full(labels.num_rows, n, np.int32)))))
        return fold(pa.concat_tables(parts)) if parts else INDEX_SCHEMA.empty_table()

    def grow(self) -> dict[tuple[str, int], list[str]]:
        """Grow a version; the frames of the folded dataset, each with its labels' classes (sorted)."""
        new = [k for k in list_label_shards(self.store) if k not in self.consumed]
        if new:
            n = len(batch_dirs(self.root)) + 1
            built = build_batch(self.store, new, self._index(), batch=n, ratios=RATIOS, with_images=False,
                                validate=lambda rows: [])
            if built.frames.num_rows:
                write_batch(self.root / BATCHES_DIR / batch_name(n), built, 1000)
            self.consumed.update(new)
        frames, labels = materialize(self.root, images=False)
        out: dict[tuple[str, int], list[str]] = {
            (r["log_id"], r["frame"]): [] for r in frames.select(["log_id", "frame"]).to_pylist()}
        for r in labels.select(["log_id", "frame", "cls"]).to_pylist():
            out[(r["log_id"], r["frame"])].append(r["cls"])
        return {k: sorted(v) for k, v in out.items()}


def test_a_deleted_annotation_is_retracted_once_and_its_frame_leaves_the_dataset(ls_settings, tmp_path, logs, client):
    wrong, kept = _push(ls_settings, tmp_path, logs, "retract-one", [0, 4])
    a_wrong = _annotate(client, wrong["id"], [CAR])
    a_kept = _annotate(client, kept["id"], [PEDESTRIAN])
    store = get_store(ls_settings)
    home = ls_settings.home
    first = sync("retract-one", client=client, store=store, home=home)
    assert first.delivered == 2 and not first.problems
    dataset = Dataset(store, tmp_path / "dataset")
    assert dataset.grow() == {("0012", 0): ["car"], ("0012", 4): ["pedestrian"]}

    _delete(client, a_wrong)  # a wrong label removed by the labeler
    second = sync("retract-one", client=client, store=store, home=home)
    assert dataset.grow() == {("0012", 4): ["pedestrian"]}  # the frame left the next version
    assert read_labels(store, "retract-one")["annotation_id"].to_pylist() == [a_kept]
    assert len(second.shards) == 1
    tomb = [e for e in delivered_manifest(store, "retract-one") if e["shard"] == second.shards[0]]
    assert [(e["annotation_id"], e["revision"], e["status"], e.get("retracted")) for e in tomb] == [
        (a_wrong, 2, "unusable", True)]
    assert second.retracted == 1 and second.delivered == 0 and second.tasks_deleted == 0 and not second.problems

    # a rerun retracts nothing more, and nothing new reaches the dataset
    third = sync("retract-one", client=client, store=store, home=home)
    assert (third.retracted, third.delivered, third.shards, third.problems) == (0, 0, [], [])
    assert third.already_delivered == 1
    assert dataset.grow() == {("0012", 4): ["pedestrian"]}
    status = api.status("retract-one", ls_settings)
    assert (status["synced"], status["annotations_delivered"], status["annotations_retracted"]) == (1, 1, 1)


def test_a_task_keeps_its_remaining_annotation_when_the_newest_is_deleted(ls_settings, tmp_path, logs, client):
    (task,) = _push(ls_settings, tmp_path, logs, "retract-two", [8])
    older = _annotate(client, task["id"], [CAR])
    newer = _annotate(client, task["id"], [PEDESTRIAN, CONE])
    store = get_store(ls_settings)
    home = ls_settings.home
    assert sync("retract-two", client=client, store=store, home=home).delivered == 2
    dataset = Dataset(store, tmp_path / "dataset")
    assert dataset.grow() == {("0012", 8): ["pedestrian", "traffic_cone"]}  # the newest annotation's word

    _delete(client, newer)
    crashed: list[str] = []

    def crash(key: str) -> None:  # the shard is written, the watermark covering it is not
        crashed.append(key)
        raise RuntimeError("killed after the shard")

    with pytest.raises(RuntimeError, match="killed after the shard"):
        sync("retract-two", client=client, store=store, home=home, on_shard_written=crash)
    rerun = sync("retract-two", client=client, store=store, home=home)
    assert rerun.recovered_shards == crashed and (rerun.retracted, rerun.delivered, rerun.shards) == (0, 0, [])
    deliveries = [(e["annotation_id"], e["status"], e.get("retracted", False)) for e in
                  delivered_manifest(store, "retract-two") if e["shard"] == crashed[0]]
    assert sorted(deliveries) == sorted([(newer, "unusable", True), (older, "labeled", False)])
    assert read_labels(store, "retract-two")["cls"].to_pylist() == ["car"]
    assert dataset.grow() == {("0012", 8): ["car"]}  # the remaining annotation's boxes, not the deleted ones
    wm, _ = load_watermark(store, "retract-two")
    assert wm.delivered[newer].retracted and not wm.delivered[older].retracted

    again = sync("retract-two", client=client, store=store, home=home)
    assert (again.retracted, again.delivered, again.shards) == (0, 0, [])
    assert dataset.grow() == {("0012", 8): ["car"]}

    # the last annotation deleted as well: the frame leaves; a new one brings it back
    _delete(client, older)
    gone = sync("retract-two", client=client, store=store, home=home)
    assert (gone.retracted, gone.delivered) == (1, 0)
    assert dataset.grow() == {}
    _annotate(client, task["id"], [CONE])
    back = sync("retract-two", client=client, store=store, home=home)
    assert (back.retracted, back.delivered) == (0, 1)
    assert dataset.grow() == {("0012", 8): ["traffic_cone"]}


def test_an_older_annotation_deleted_leaves_the_newest_as_the_word(ls_settings, tmp_path, logs, client):
    (task,) = _push(ls_settings, tmp_path, logs, "retract-older", [12])
    older = _annotate(client, task["id"], [CAR])
    newer = _annotate(client, task["id"], [PEDESTRIAN])
    store = get_store(ls_settings)
    home = ls_settings.home
    assert sync("retract-older", client=client, store=store, home=home).delivered == 2
    dataset = Dataset(store, tmp_path / "dataset")
    assert dataset.grow() == {("0012", 12): ["pedestrian"]}
    _delete(client, older)
    report = sync("retract-older", client=client, store=store, home=home)
    assert read_labels(store, "retract-older")["annotation_id"].to_pylist() == [newer]
    assert dataset.grow() == {("0012", 12): ["pedestrian"]}
    assert report.retracted == 1 and not report.problems


def test_a_deleted_annotation_replaced_before_the_sync(ls_settings, tmp_path, logs, client):
    """The labeler deletes the wrong annotation and labels the task again before the next sync:
    the new annotation is the frame's word."""
    (task,) = _push(ls_settings, tmp_path, logs, "retract-relabel", [16])
    first = _annotate(client, task["id"], [CAR])
    store = get_store(ls_settings)
    home = ls_settings.home
    assert sync("retract-relabel", client=client, store=store, home=home).delivered == 1
    dataset = Dataset(store, tmp_path / "dataset")
    assert dataset.grow() == {("0012", 16): ["car"]}
    _delete(client, first)
    _annotate(client, task["id"], [CONE, PEDESTRIAN])
    report = sync("retract-relabel", client=client, store=store, home=home)
    assert sorted(read_labels(store, "retract-relabel")["cls"].to_pylist()) == ["pedestrian", "traffic_cone"]
    assert dataset.grow() == {("0012", 16): ["pedestrian", "traffic_cone"]}
    assert (report.retracted, report.delivered) == (1, 1)


def test_a_deleted_task_is_reported_once_and_not_retracted(ls_settings, tmp_path, logs, client):
    """Deleting a task is cleanup (the frame was labeled): its delivered label stays."""
    (task,) = _push(ls_settings, tmp_path, logs, "retract-task", [20])
    _annotate(client, task["id"], [CAR])
    store = get_store(ls_settings)
    home = ls_settings.home
    assert sync("retract-task", client=client, store=store, home=home).delivered == 1
    client.request("DELETE", f"/api/tasks/{task['id']}/")
    report = sync("retract-task", client=client, store=store, home=home)
    assert (report.tasks_deleted, report.retracted, report.delivered, report.shards) == (1, 0, 0, [])
    again = sync("retract-task", client=client, store=store, home=home)
    assert (again.tasks_deleted, again.retracted) == (0, 0)
    dataset = Dataset(store, tmp_path / "dataset")
    assert dataset.grow() == {("0012", 20): ["car"]}


def test_a_sync_that_only_retracts_says_so_among_the_open_campaigns(capsys):
    """`fleetloop label sync` (every open campaign) printed only campaigns that delivered or
    rejected something: a sync whose only work was a retraction printed nothing about it."""
    from fleetloop.cli import label as cli_label
    from fleetloop.label.sync import SyncReport

    cli_label._print_sync_report(SyncReport(campaign="c", project_id=1, retracted=2), brief=True)
    cli_label._print_sync_report(SyncReport(campaign="d", project_id=1, tasks_deleted=1), brief=True)
    out = " ".join(capsys.readouterr().out.split())
    assert "campaign c:" in out and "2 retracted (deleted in Label Studio)" in out
    assert "campaign d:" in out and "1 tasks deleted in Label Studio (their labels kept)" in out
