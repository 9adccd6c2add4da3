"""fleetloop.train.metrics against pycocotools called directly on the restricted subsets."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("pycocotools")

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fleetloop.schema import CLASSES
from fleetloop.train.metrics import (
    PREDICTIONS_SCHEMA,
    PREPARED_SCHEMA,
    evaluate,
    read_metrics,
    write_metrics,
)


def _box(cls, x1, y1, x2, y2, attr=None):
    return {"cls": cls, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "attr": attr}


# (frame, weather, time_of_day, boxes)
FRAMES = [
    (0, "clear", "day", [_box("car", 10, 10, 50, 40), _box("pedestrian", 60, 10, 70, 40)]),
    (1, "rain", "night", [_box("car", 0, 0, 30, 20), _box("traffic_cone", 100, 50, 110, 62, "green"),
                          _box("traffic_cone", 120, 50, 130, 62)]),
    (2, "rain", "day", [_box("cyclist", 20, 20, 40, 60), _box("car", 50, 50, 90, 80),
                        _box("traffic_cone", 140, 50, 150, 62, "green")]),
    (3, "clear", "night", []),
    (4, "fog", "day", []),
]

# (frame, cls, score, box): hits, misses (no prediction), false positives, a low-IoU one
PREDICTIONS = [
    (0, "car", 0.9, (11, 10, 50, 41)),  # hit
    (0, "car", 0.8, (100, 10, 120, 30)),  # false positive
    (0, "pedestrian", 0.3, (60, 35, 70, 70)),  # IoU < 0.5 with the pedestrian: false positive
    (1, "car", 0.7, (2, 1, 31, 21)),  # hit
    (1, "traffic_cone", 0.6, (100, 50, 110, 61)),  # hit (green cone)
    (1, "traffic_cone", 0.95, (120, 50, 130, 62)),  # hit (plain cone: ignored in attr=green)
    (1, "traffic_cone", 0.2, (10, 60, 20, 70)),  # false positive
    (2, "cyclist", 0.5, (20, 22, 40, 60)),  # hit; the car of frame 2 and its green cone are missed
    (2, "car", 0.85, (0, 0, 10, 10)),  # false positive
    (3, "car", 0.4, (5, 5, 25, 25)),  # false positive on an empty frame
]


def _frames_table() -> pa.Table:
    return pa.table({
        "log_id": ["log-a"] * len(FRAMES),
        "frame": [f for f, *_ in FRAMES],
        "image_png": [b""] * len(FRAMES),
        "width": [160] * len(FRAMES),
        "height": [96] * len(FRAMES),
        "weather": [w for _, w, _, _ in FRAMES],
        "time_of_day": [t for _, _, t, _ in FRAMES],
        "boxes": [b for *_, b in FRAMES],
    }, schema=PREPARED_SCHEMA)


def _predictions_table(preds) -> pa.Table:
    return pa.table({
        "log_id": ["log-a"] * len(preds),
        "frame": [p[0] for p in preds],
        "cls": [p[1] for p in preds],
        "score": [p[2] for p in preds],
        "x1": [p[3][0] for p in preds], "y1": [p[3][1] for p in preds],
        "x2": [p[3][2] for p in preds], "y2": [p[3][3] for p in preds],
    }, schema=PREDICTIONS_SCHEMA)


def _direct_map(frames, preds, keep_frame=lambda f: True, classes=CLASSES, crowd=lambda b: False):
    """mAP@0.5 computed with pycocotools directly on the restricted images and classes."""
    cat = {c: 10 + i for i, c in enumerate(CLASSES)}  # ids independent of the module's
    img = {f: 100 + f for f, *_ in frames}
    anns = []
    for f, _, _, boxes in frames:
        for b in boxes:
            w, h = b["x2"] - b["x1"], b["y2"] - b["y1"]
            anns.append({"id": len(anns) + 1, "image_id": img[f], "category_id": cat[b["cls"]],
                         "bbox": [b["x1"], b["y1"], w, h], "area": w * h, "iscrowd": int(crowd(b))})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in img.values()],
                      "categories": [{"id": i} for i in cat.values()], "annotations": anns}
        gt.createIndex()
        results = [{"image_id": img[f], "category_id": cat[c], "score": s,
                    "bbox": [x1, y1, x2 - x1, y2 - y1]} for f, c, s, (x1, y1, x2, y2) in preds]
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = [img[f] for f, *_ in frames if keep_frame(f)]
        ev.params.catIds = [cat[c] for c in classes]
        ev.params.iouThrs = np.array([0.5])
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.params.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    aps = []
    for k in range(len(classes)):
        p = ev.eval["precision"][0, :, k, 0, -1]
        if (p > -1).any():
            aps.append(float(np.mean(p)))
    return float(np.mean(aps)) if aps else None


def _by(key):
    index = {"weather": 1, "time_of_day": 2}[key]
    return lambda value: (lambda f: FRAMES[f][index] == value)


@pytest.fixture(scope="module")
def metrics():
    return evaluate(_frames_table(), _predictions_table(PREDICTIONS))


def test_overall_and_per_class_match_pycocotools(metrics):
    assert metrics.overall.map50 == pytest.approx(_direct_map(FRAMES, PREDICTIONS))
    assert 0.0 < metrics.overall.map50 < 1.0
    assert metrics.overall.support == 8
    assert metrics.overall.frames == 5
    for c in CLASSES:
        assert metrics.per_class[c].map50 == pytest.approx(_direct_map(FRAMES, PREDICTIONS, classes=[c]))
        assert metrics.slices[f"class={c}"].map50 == metrics.per_class[c].map50
    assert {c: s.support for c, s in metrics.per_class.items()} == {
        "car": 3, "pedestrian": 1, "cyclist": 1, "traffic_cone": 3}
    assert metrics.per_class["pedestrian"].map50 == 0.0  # its only prediction misses
    assert metrics.per_class["cyclist"].map50 == pytest.approx(1.0)
    assert metrics.slices["class=car"].frames == 3


@pytest.mark.parametrize("key,value,support,frames", [
    ("weather", "clear", 2, 2), ("weather", "rain", 6, 2),
    ("time_of_day", "day", 5, 3), ("time_of_day", "night", 3, 2),
])
def test_frame_slices_match_pycocotools(metrics, key, value, support, frames):
    s = metrics.slices[f"{key}={value}"]
    assert s.map50 == pytest.approx(_direct_map(FRAMES, PREDICTIONS, keep_frame=_by(key)(value)))
    assert (s.support, s.frames) == (support, frames)


def test_slice_without_objects_is_null(metrics):
    fog = metrics.slices["weather=fog"]
    assert (fog.map50, fog.support, fog.frames) == (None, 0, 1)


def test_attr_slice_ignores_boxes_without_the_attr(metrics):
    s = metrics.slices["attr=green"]
    expected = _direct_map(FRAMES, PREDICTIONS, classes=["traffic_cone"],
                           crowd=lambda b: b["cls"] == "traffic_cone" and b["attr"] != "green")
    assert s.map50 == pytest.approx(expected)
    assert (s.support, s.frames) == (2, 2)
    # the confident detection on the plain cone counts in the class slice, not in the attr slice
    assert s.map50 != pytest.approx(metrics.per_class["traffic_cone"].map50)


def test_perfect_predictions_score_one():
    perfect = [(f, b["cls"], 0.9, (b["x1"], b["y1"], b["x2"], b["y2"])) for f, _, _, boxes in FRAMES for b in boxes]
    m = evaluate(_frames_table(), _predictions_table(perfect))
    assert m.overall.map50 == pytest.approx(1.0)
    for name, s in m.slices.items():
        assert s.map50 == (pytest.approx(1.0) if s.support else None), name


def test_no_predictions_score_zero():
    m = evaluate(_frames_table(), _predictions_table([]))
    assert m.overall.map50 == 0.0
    assert all(s.map50 == 0.0 for s in m.per_class.values())
    assert m.slices["attr=green"].map50 == 0.0


def test_unknown_frames_and_classes_are_dropped(metrics):
    extra = [*PREDICTIONS, (9, "car", 0.99, (10, 10, 50, 40))]
    table = pa.concat_tables([
        _predictions_table(extra),
        pa.table({"log_id": ["log-a"], "frame": [0], "cls": ["truck"], "score": [0.99], "x1": [10.0], "y1": [10.0],
                  "x2": [50.0], "y2": [40.0]}, schema=PREDICTIONS_SCHEMA),
    ])
    assert evaluate(_frames_table(), table) == metrics


def test_empty_frames_table():
    m = evaluate(_frames_table().slice(0, 0), _predictions_table([]))
    assert m.overall.map50 is None and m.overall.frames == 0


def test_json_layout_and_round_trip(metrics, tmp_path):
    path = write_metrics(metrics, tmp_path / "m" / "metrics.json")
    data = json.loads(path.read_text())
    assert list(data) == ["primary", "overall", "per_class", "slices"]
    assert data["primary"] == "map50"
    assert list(data["overall"]) == ["map50", "support", "frames"]
    assert list(data["per_class"]) == list(CLASSES)
    assert list(data["per_class"]["car"]) == ["map50", "support"]
    assert {"weather=rain", "time_of_day=night", "class=car", "attr=green"} <= set(data["slices"])
    assert data["slices"]["weather=fog"]["map50"] is None
    assert read_metrics(path) == metrics
