"""The campaign index and labels imported from outside Label Studio, on a local store."""

from __future__ import annotations

import pyarrow as pa

from fleetloop.label import index
from fleetloop.label.sync import import_labels, read_labels
from fleetloop.store.objects import LocalStore


def test_campaigns_open_until_every_task_is_synced(tmp_path) -> None:
    store = LocalStore(tmp_path / "store")
    first = index.register(store, "fleetloop-2026-w48")
    assert first.state == "open" and index.register(store, "fleetloop-2026-w48").created_at == first.created_at
    index.register(store, "fleetloop-2026-w49")
    assert [r.name for r in index.campaigns(store, "open")] == ["fleetloop-2026-w48", "fleetloop-2026-w49"]
    assert index.update(store, "fleetloop-2026-w48", tasks=10, synced=9).state == "open"
    done = index.update(store, "fleetloop-2026-w48", tasks=10, synced=10)
    assert done.state == "complete" and done.completed_at
    assert [r.name for r in index.campaigns(store, "open")] == ["fleetloop-2026-w49"]
    assert index.update(store, "fleetloop-2026-w48", tasks=12, synced=10).state == "open"  # re-pushed: reopens
    assert index.update(store, "fleetloop-2026-w49", tasks=0, synced=0).state == "open"  # no task is not done


def test_imported_labels_are_delivered_once_with_empty_frames(tmp_path) -> None:
    store = LocalStore(tmp_path / "store")
    boxes = pa.table({"log_id": ["a", "a", "b"], "frame": [0, 0, 3], "cls": ["car", "pedestrian", "car"],
                      "x1": [1.0, 5.0, 2.0], "y1": [1.0, 5.0, 2.0], "x2": [9.0, 8.0, 7.0], "y2": [9.0, 20.0, 7.0]})
    frames = [("a", 0), ("b", 3), ("b", 4)]  # b/4 was looked at and holds nothing
    report = import_labels(store, "seed", boxes, frames, home=tmp_path, annotator="seed-set")
    assert (report.delivered, report.labels, report.empty) == (3, 3, 1)
    labels = read_labels(store, "seed")
    assert labels.num_rows == 3 and set(labels["campaign"].to_pylist()) == {"seed"}
    again = import_labels(store, "seed", boxes, frames, home=tmp_path, annotator="seed-set")
    assert again.delivered == 0 and read_labels(store, "seed").num_rows == 3


def test_imported_labels_failing_the_validator_are_held_back(tmp_path) -> None:
    store = LocalStore(tmp_path / "store")
    boxes = pa.table({"log_id": ["a", "b"], "frame": [0, 0], "cls": ["car", "car"],
                      "x1": [1.0, 9.0], "y1": [1.0, 1.0], "x2": [9.0, 2.0], "y2": [9.0, 9.0]})

    def validate(t: pa.Table) -> list[str]:
        bad = [r for r in t.to_pylist() if r["x2"] <= r["x1"]]
        return [f"{r['log_id']}/{r['frame']}: x2 <= x1" for r in bad]

    report = import_labels(store, "seed", boxes, [("a", 0), ("b", 0)], home=tmp_path, annotator="s", validate=validate)
    assert report.delivered == 1 and len(report.problems) == 1 and report.problems[0].log_id == "b"
    assert read_labels(store, "seed")["log_id"].to_pylist() == ["a"]


def test_the_labels_suite_speaks_through_verdicts() -> None:
    from fleetloop.ingest.validation import label_failures, validate_labels
    from fleetloop.schema import LABELS

    now = __import__("datetime").datetime(2026, 12, 1, tzinfo=__import__("datetime").UTC)
    row = {"log_id": "a", "frame": 0, "cls": "car", "x1": 1.0, "y1": 1.0, "x2": 9.0, "y2": 9.0, "campaign": "c",
           "task_id": 1, "annotation_id": 1, "annotator": "x", "updated_at": now, "revision": 1}
    good = pa.Table.from_pylist([row], schema=LABELS)
    assert label_failures(good) == []
    bad = pa.Table.from_pylist([{**row, "cls": "dragon"}], schema=LABELS)
    failures = label_failures(bad)
    assert failures and failures[0].startswith("log a: labels:")
    verdict = validate_labels(bad)["a"].verdict()
    assert verdict.name == "validation:a" and not verdict.passed and verdict.reasons

