"""Projection, IoU and optimal assignment against hand-computed cases (and scipy / real KITTI)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from fleetloop.perception.geometry import (
    MODE_BEV,
    MODE_IOU,
    associate_slots,
    box_corners,
    class_gates,
    ground_range,
    iou_matrix,
    linear_assignment,
    project_boxes,
    projection_matrix,
    visible_share,
)

# A camera looking along lidar +x: camera x = -lidar y, camera y = -lidar z, camera z = lidar x.
L2C = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
F, CX, CY = 900.0, 600.0, 200.0
P = np.array([[F, 0.0, CX, 0.0], [0.0, F, CY, 0.0], [0.0, 0.0, 1.0, 0.0]])
M = projection_matrix(P, L2C)[None]


def test_box_corners_follow_yaw():
    c = box_corners([[0, 0, 0, 4, 2, 1, np.pi / 2]])[0]
    # rotated 90 degrees: length now runs along y
    assert np.allclose(np.sort(np.unique(np.round(c[:, 0], 6))), [-1, 1])
    assert np.allclose(np.sort(np.unique(np.round(c[:, 1], 6))), [-2, 2])
    assert np.allclose(np.sort(np.unique(np.round(c[:, 2], 6))), [-0.5, 0.5])


def test_projection_of_a_cube_straight_ahead():
    # a 2 m cube centred 10 m ahead: the near face (x = 9 m) spans +-1 m -> +-F/9 px
    box, depth, vis = project_boxes([[10, 0, 0, 2, 2, 2, 0]], M, [1200], [400])
    assert np.allclose(box[0], [CX - F / 9, CY - F / 9, CX + F / 9, CY + F / 9])
    assert depth[0] == pytest.approx(10.0)
    assert vis[0] == pytest.approx(1.0)


def test_projection_with_yaw_and_offset():
    # l=4, w=2, yaw=90 deg: 2 m deep (x 9..11), 4 m wide (y -2..2); 1 m to the left -> y 3..-1
    box, _, _ = project_boxes([[10, 1, 0, 4, 2, 2, np.pi / 2]], M, [1200], [400])
    # u = CX - F * y / x, extremes on the near face x = 9
    assert np.allclose(box[0], [CX - F * 3 / 9, CY - F / 9, CX + F * 1 / 9, CY + F / 9])


def test_projection_clips_to_the_image_and_reports_the_visible_share():
    # same cube, image only 650 px wide: x from 500 to 650 of 500..700 -> 3/4 visible
    box, _, vis = project_boxes([[10, 0, 0, 2, 2, 2, 0]], M, [650], [400])
    assert box[0, 2] == pytest.approx(650.0)
    assert vis[0] == pytest.approx(0.75)


def test_ground_range_of_a_box_bottom_by_hand():
    # road 1.5 m below the sensor; the point (10, -2) on it: camera (2, 1.5, 10) -> u = CX + F * 2 / 10,
    # v = CY + F * 1.5 / 10; a box standing there has that point as its bottom centre
    u, v = CX + F * 0.2, CY + F * 0.15
    boxes = np.array([[u - 20, v - 100, u + 20, v],   # standing on the road at (10, -2)
                      [u - 20, CY - 60, u + 20, CY - 10],  # bottom edge above the horizon: no road point
                      [u - 20, v - 100, u + 20, v]])
    Ms = np.repeat(M, 3, axis=0)
    Ms[2] = np.nan  # no calibration
    r = ground_range(Ms, boxes, np.full(3, -1.5))
    assert r[0] == pytest.approx(np.hypot(10.0, 2.0))
    assert np.isnan(r[1]) and np.isnan(r[2])
    # the same box on a road 3 m below the sensor is twice as far
    assert ground_range(M, boxes[:1], np.array([-3.0]))[0] == pytest.approx(np.hypot(20.0, 4.0))


def test_projection_behind_the_camera_is_invisible():
    _, depth, vis = project_boxes([[-10, 0, 0, 2, 2, 2, 0]], M, [1200], [400])
    assert depth[0] < 0
    assert vis[0] == 0.0


def _visible(box, width=1200, height=400):
    cols = [np.array([v], np.float64) for v in box]
    return visible_share(*cols, np.zeros(1, np.int64), M, np.array([width], float), np.array([height], float))[0]


def test_visible_share_counts_the_imaged_part_of_the_3d_box():
    # the cube straight ahead is whole in view; with the image cut at u = 600 (the centre
    # column), the grid's columns at y = +1 and y = 0 project to u <= 600, y = -1 beyond: 2 of 3
    assert _visible([10, 0, 0, 2, 2, 2, 0]) == pytest.approx(1.0)
    assert _visible([10, 0, 0, 2, 2, 2, 0], width=600) == pytest.approx(2 / 3)
    assert _visible([-10, 0, 0, 2, 2, 2, 0]) == 0.0  # behind the camera


def test_visible_share_of_a_near_object_beside_the_camera_is_its_imaged_part():
    """A car 1-5 m ahead, 0.6-2.4 m to the side: its projected 2D box blows up far beyond the
    image (in-image share ~0.07) while the camera images a good part of it. By hand on the 3x3x3
    grid (x 1, 3, 5; y 0.6, 1.5, 2.4; z -0.75, 0, 0.75): u = 600 - 900 y / x is inside when
    y / x <= 2/3, v = 200 - 900 z / x when |z| / x <= 2/9: 1 point at x = 1, 2 at x = 3, 9 at x = 5."""
    box = [3.0, 1.5, 0.0, 4.0, 1.8, 1.5, 0.0]
    _, _, vis2d = project_boxes([box], M, [1200], [400])
    assert vis2d[0] == pytest.approx(492 * 400 / ((492 + 1560) * 1350), rel=1e-3)
    assert _visible(box) == pytest.approx(12 / 27)


def test_projection_uses_each_boxes_own_log():
    M2 = np.concatenate([M, projection_matrix(P * np.array([[2], [2], [1]]), L2C)[None]])
    box, _, _ = project_boxes([[10, 0, 0, 2, 2, 2, 0]] * 2, M2, [5000, 5000], [5000, 5000], log_idx=[0, 1])
    assert box[1, 2] - 2 * CX == pytest.approx(2 * (box[0, 2] - CX))  # u = 2 (F X / Z + CX)


def test_iou_hand_cases():
    a = np.array([[0, 0, 2, 2], [0, 0, 4, 4], [0, 0, 1, 1]], float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]], float)
    iou = iou_matrix(a, b)
    assert iou[0, 0] == pytest.approx(1 / 7)  # overlap 1, union 4 + 4 - 1
    assert iou[0, 1] == pytest.approx(1.0)
    assert iou[1, 0] == pytest.approx(4 / 16)  # contained
    assert iou[2, 2] == 0.0
    assert iou_matrix(a, np.zeros((0, 4))).shape == (3, 0)


def test_assignment_hand_case():
    cost = np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]], float)
    rows, cols = linear_assignment(cost)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]
    assert cost[rows, cols].sum() == 5


def test_assignment_rectangular_and_against_scipy():
    rows, cols = linear_assignment(np.array([[1.0, 5.0], [2.0, 1.0], [0.5, 3.0]]))
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=False)) == [(1, 1), (2, 0)]
    rng = np.random.default_rng(7)
    for _ in range(200):
        n, m = rng.integers(1, 9, 2)
        cost = rng.random((n, m))
        if rng.random() < 0.3:
            cost = np.round(cost, 1)  # ties
        r, c = linear_assignment(cost)
        r2, c2 = linear_sum_assignment(cost)
        assert len(r) == min(n, m)
        assert cost[r, c].sum() == pytest.approx(cost[r2, c2].sum())


def test_assignment_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        linear_assignment(np.array([[np.nan, 1.0]]))


def _slots(a_counts, b_counts):
    a = np.r_[0, np.cumsum(a_counts)]
    b = np.r_[0, np.cumsum(b_counts)]
    return a[:-1], a[1:], b[:-1], b[1:]


def test_associate_slots_is_optimal_not_greedy_and_gated():
    # frame 0: greedy would give A0-B0 (IoU 7/13) and leave A1 alone; optimal matches both.
    a = np.array([[0, 0, 10, 10], [7, 0, 17, 10], [0, 0, 10, 10]], float)
    b = np.array([[3, 0, 13, 10], [-4, 0, 6, 10], [50, 50, 60, 60]], float)
    iou = iou_matrix(a[:2], b[:2])
    assert iou[0, 0] > iou[0, 1] and iou[1, 0] > 0.3 and iou[1, 1] < 0.3
    a_start, a_end, b_start, b_end = _slots([2, 1], [2, 1])
    am, bm, q = np.empty(3, np.int64), np.empty(3, np.int64), np.empty(3)
    cls = np.zeros(3, np.int64)
    associate_slots(a_start, a_end, b_start, b_end, a, b, cls, cls, MODE_IOU, class_gates(0.3), 0.0, am, bm, q)
    assert am.tolist() == [1, 0, -1]  # frame 1: no pair above the gate
    assert bm.tolist() == [1, 0, -1]
    assert q[0] == pytest.approx(iou[0, 1]) and np.isnan(q[2])


def test_associate_slots_gates_by_the_class_of_the_a_row():
    from fleetloop.schema import CLASSES

    car, ped = CLASSES.index("car"), CLASSES.index("pedestrian")
    a = np.array([[0, 0, 10, 10], [100, 0, 110, 10]], float)
    b = np.array([[3.5, 0, 13.5, 10], [103.5, 0, 113.5, 10]], float)  # IoU 6.5 / 13.5 = 0.48 each
    a_start, a_end, b_start, b_end = _slots([2], [2])
    am, bm, q = np.empty(2, np.int64), np.empty(2, np.int64), np.empty(2)
    gates = class_gates(0.3, {"car": 0.5})
    assert gates.tolist() == [0.5 if c == "car" else 0.3 for c in CLASSES] + [0.3]
    cls = np.array([car, ped])
    associate_slots(a_start, a_end, b_start, b_end, a, b, cls, cls, MODE_IOU, gates, 0.0, am, bm, q)
    assert am.tolist() == [-1, 1] and bm.tolist() == [-1, 1]


def test_associate_slots_bev_gate_scales_per_row():
    a = np.array([[10.0, 0.0, 1.0], [40.0, 0.0, 3.0]])  # (x, y, gate scale)
    b = np.array([[11.5, 0.0, 0.0], [42.0, 0.0, 0.0]])
    a_start, a_end, b_start, b_end = _slots([2], [2])
    am, bm, q = np.empty(2, np.int64), np.empty(2, np.int64), np.empty(2)
    cls = np.zeros(2, np.int64)
    associate_slots(a_start, a_end, b_start, b_end, a, b, cls, cls, MODE_BEV, class_gates(1.0), 0.0, am, bm, q)
    assert am.tolist() == [-1, 1]  # 1.5 m > 1 m gate; 2 m < 3 m gate
    assert q[1] == pytest.approx(2 / 3)


def test_projection_matches_pointrcnn_2d_boxes_on_kitti(kitti_root):
    """The PointRCNN files carry the P2 projection of each 3D box: ours must agree."""
    import pandas as pd

    from fleetloop.ingest.importers import load_logs
    from fleetloop.mine.lidar_camera import lidar_geometry
    from fleetloop.perception.batch import build_batch

    logs = load_logs(kitti_root, "kitti-tracking", ["0006"])
    geo = lidar_geometry(build_batch(logs))
    raw = pd.read_csv(kitti_root / "lidar_det" / "pointrcnn" / "0006.txt", header=None).sort_values(0, kind="stable")
    err = np.abs(geo.box - raw[[2, 3, 4, 5]].to_numpy())
    assert np.percentile(err, 99) < 3.0  # pixels
    assert np.median(err) < 0.5
