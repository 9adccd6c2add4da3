"""Geometry kernels: 3D lidar boxes into the image, 2D IoU, optimal assignment.

Conventions (see fleetloop.schema): lidar boxes are (x, y, z, l, w, h, yaw) in the lidar frame
(x forward, y left, z up, centre of the box, yaw about +z); ``lidar_to_cam`` (3x4) maps lidar
points into the rectified camera frame (z forward) and ``P`` (3x4) maps those to pixels.
Image boxes are (x1, y1, x2, y2) pixels, origin top-left.

Everything here works on whole arrays. The per-frame work (IoU matrices and Hungarian
assignment for every frame of a shard) runs in numba kernels: one call covers every frame, so
there is no per-object or per-frame Python loop on the hot path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fleetloop.schema import CLASSES

#: Points nearer than this (metres along the optical axis) are treated as being on that plane.
MIN_DEPTH = 0.1

# Association cost modes for :func:`associate_slots`.
MODE_IOU = 0  # maximise 2D IoU, gate: IoU >= threshold
MODE_BEV = 1  # minimise bird's-eye-view centre distance / per-row scale, gate: that ratio <= threshold


def projection_matrix(P: np.ndarray, lidar_to_cam: np.ndarray) -> np.ndarray:
    """The 3x4 matrix taking homogeneous lidar points straight to homogeneous pixels."""
    P = np.asarray(P, np.float64).reshape(3, 4)
    T = np.eye(4)
    T[:3] = np.asarray(lidar_to_cam, np.float64).reshape(3, 4)
    return P @ T


def ground_range(M: np.ndarray, boxes: np.ndarray, ground_z: np.ndarray) -> np.ndarray:
    """Bird's-eye range of the point where each image box's bottom centre meets the road.

    ``M`` (n, 3, 4) is each box's lidar -> pixel projection, ``boxes`` (n, 4) x1, y1, x2, y2 and
    ``ground_z`` (n,) the road's height in the lidar frame: the ray through the bottom centre is
    intersected with the plane z = ``ground_z``. NaN where that point is unknown (NaN inputs), or
    behind the sensor (a bottom edge at or above the horizon)."""
    M = np.asarray(M, np.float64)
    boxes = np.asarray(boxes, np.float64)
    z = np.asarray(ground_z, np.float64)
    u = (boxes[:, 0] + boxes[:, 2]) / 2
    v = boxes[:, 3]
    # M @ (X, Y, z, 1) is proportional to (u, v, 1): two linear equations in X, Y
    r0 = M[:, 0] - u[:, None] * M[:, 2]
    r1 = M[:, 1] - v[:, None] * M[:, 2]
    a = np.stack([r0[:, :2], r1[:, :2]], axis=1)
    b = -np.stack([r0[:, 2] * z + r0[:, 3], r1[:, 2] * z + r1[:, 3]], axis=1)
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    ok = np.isfinite(det) & np.isfinite(b).all(axis=1) & (np.abs(det) > 1e-12)
    d = np.where(ok, det, 1.0)
    x = (b[:, 0] * a[:, 1, 1] - a[:, 0, 1] * b[:, 1]) / d
    y = (a[:, 0, 0] * b[:, 1] - b[:, 0] * a[:, 1, 0]) / d
    depth = M[:, 2, 0] * x + M[:, 2, 1] * y + M[:, 2, 2] * z + M[:, 2, 3]
    return np.where(ok & (depth > 0), np.hypot(x, y), np.nan)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 7) boxes (x, y, z, l, w, h, yaw) -> (N, 8, 3) corners in the same frame."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
    sl = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
    sw = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * 0.5
    sh = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * 0.5
    x, y, z, l, w, h, yaw = (boxes[:, i : i + 1] for i in range(7))  # noqa: E741
    c, s = np.cos(yaw), np.sin(yaw)
    dx, dy = l * sl, w * sw
    return np.stack([x + c * dx - s * dy, y + s * dx + c * dy, z + h * sh], axis=-1)


@njit(cache=True, nogil=True)
def _project_kernel(x, y, z, l, w, h, yaw, log_idx, M, width, height, out, depth, visible):  # noqa: E741
    sl = np.array([1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0]) * 0.5
    sw = np.array([1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0]) * 0.5
    sh = np.array([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]) * 0.5
    for i in range(x.shape[0]):
        k = log_idx[i]
        m = M[k]
        c = np.cos(yaw[i])
        s = np.sin(yaw[i])
        # depth of the centre
        xc = float(x[i])
        yc = float(y[i])
        zc = float(z[i])
        depth[i] = m[2, 0] * xc + m[2, 1] * yc + m[2, 2] * zc + m[2, 3]
        u1 = np.inf
        v1 = np.inf
        u2 = -np.inf
        v2 = -np.inf
        for j in range(8):
            dx = l[i] * sl[j]
            dy = w[i] * sw[j]
            px = xc + c * dx - s * dy
            py = yc + s * dx + c * dy
            pz = zc + h[i] * sh[j]
            hw = m[2, 0] * px + m[2, 1] * py + m[2, 2] * pz + m[2, 3]
            if hw < MIN_DEPTH:
                hw = MIN_DEPTH
            u = (m[0, 0] * px + m[0, 1] * py + m[0, 2] * pz + m[0, 3]) / hw
            v = (m[1, 0] * px + m[1, 1] * py + m[1, 2] * pz + m[1, 3]) / hw
            u1 = min(u1, u)
            u2 = max(u2, u)
            v1 = min(v1, v)
            v2 = max(v2, v)
        full = (u2 - u1) * (v2 - v1)
        W = width[k]
        H = height[k]
        cu1 = min(max(u1, 0.0), W)
        cu2 = min(max(u2, 0.0), W)
        cv1 = min(max(v1, 0.0), H)
        cv2 = min(max(v2, 0.0), H)
        out[i, 0] = cu1
        out[i, 1] = cv1
        out[i, 2] = cu2
        out[i, 3] = cv2
        clipped = (cu2 - cu1) * (cv2 - cv1)
        if depth[i] <= MIN_DEPTH or full <= 0.0:
            visible[i] = 0.0
        else:
            visible[i] = clipped / full


@njit(cache=True, nogil=True)
def _visible_kernel(x, y, z, l, w, h, yaw, log_idx, M, width, height, n_side, out):  # noqa: E741
    g = n_side
    for i in range(x.shape[0]):
        m = M[log_idx[i]]
        c = np.cos(yaw[i])
        s = np.sin(yaw[i])
        W = width[log_idx[i]]
        H = height[log_idx[i]]
        # the frustum (in front, inside the image) is convex: all 8 corners in it -> all of the box
        corners_in = 0
        for a in range(2):
            fa = (a - 0.5) * l[i]
            for b in range(2):
                fb = (b - 0.5) * w[i]
                px = x[i] + c * fa - s * fb
                py = y[i] + s * fa + c * fb
                for e in range(2):
                    pz = z[i] + (e - 0.5) * h[i]
                    hw = m[2, 0] * px + m[2, 1] * py + m[2, 2] * pz + m[2, 3]
                    if hw > MIN_DEPTH:
                        u = (m[0, 0] * px + m[0, 1] * py + m[0, 2] * pz + m[0, 3]) / hw
                        v = (m[1, 0] * px + m[1, 1] * py + m[1, 2] * pz + m[1, 3]) / hw
                        if 0.0 <= u <= W and 0.0 <= v <= H:
                            corners_in += 1
        if corners_in == 8:
            out[i] = 1.0
            continue
        inside = 0
        for a in range(g):
            fa = (a / (g - 1) - 0.5) * l[i]
            for b in range(g):
                fb = (b / (g - 1) - 0.5) * w[i]
                px = x[i] + c * fa - s * fb
                py = y[i] + s * fa + c * fb
                for e in range(g):
                    pz = z[i] + (e / (g - 1) - 0.5) * h[i]
                    hw = m[2, 0] * px + m[2, 1] * py + m[2, 2] * pz + m[2, 3]
                    if hw <= MIN_DEPTH:
                        continue
                    u = (m[0, 0] * px + m[0, 1] * py + m[0, 2] * pz + m[0, 3]) / hw
                    v = (m[1, 0] * px + m[1, 1] * py + m[1, 2] * pz + m[1, 3]) / hw
                    if 0.0 <= u <= W and 0.0 <= v <= H:
                        inside += 1
        out[i] = inside / (g * g * g)


def visible_share(x, y, z, l, w, h, yaw, log_idx, M, width, height, n_side: int = 3) -> np.ndarray:  # noqa: E741
    """Share of each 3D box that the camera images: the fraction of an ``n_side``^3 grid of
    points spanning the box (corners, edge and face midpoints, centre for 3) that lie in front
    of the camera and project inside the image. Unlike the share of the projected 2D box inside
    the image, it stays meaningful for a near object partly beside or behind the camera (whose
    corners behind the camera plane blow its projected box up)."""
    out = np.empty(x.shape[0], np.float64)
    _visible_kernel(x, y, z, l, w, h, yaw, np.asarray(log_idx, np.int64), np.asarray(M, np.float64),
                    np.asarray(width, np.float64), np.asarray(height, np.float64), max(int(n_side), 2), out)
    return out


def project_boxes(
    boxes: np.ndarray,
    M: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    log_idx: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project lidar boxes into the image.

    ``boxes`` (N, 7) lidar-frame boxes; ``M`` (K, 3, 4) lidar->pixel matrices (see
    :func:`projection_matrix`), one per log; ``width``/``height`` (K,) image sizes;
    ``log_idx`` (N,) which log each box belongs to (default: all log 0).

    Returns ``(box2d, depth, visible)``: (N, 4) image boxes clipped to the image, the depth of
    the box centre along the optical axis (metres), and the visible fraction of the unclipped
    projected box (0 when behind the camera or outside the image).
    """
    boxes = np.ascontiguousarray(np.asarray(boxes, np.float64).reshape(-1, 7))
    M = np.ascontiguousarray(np.asarray(M, np.float64).reshape(-1, 3, 4))
    n = boxes.shape[0]
    if log_idx is None:
        log_idx = np.zeros(n, np.int64)
    out = np.empty((n, 4), np.float64)
    depth = np.empty(n, np.float64)
    visible = np.empty(n, np.float64)
    x, y, z, bl, bw, bh, yaw = (np.ascontiguousarray(boxes[:, i]) for i in range(7))
    _project_kernel(x, y, z, bl, bw, bh, yaw, np.asarray(log_idx, np.int64), M, np.asarray(width, np.float64),
                    np.asarray(height, np.float64), out, depth, visible)
    return out, depth, visible


def project_columns(x, y, z, l, w, h, yaw, log_idx, M, width, height) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: E741
    """:func:`project_boxes` on separate column arrays (no (N, 7) copy); float32 in, float32 out."""
    n = x.shape[0]
    out = np.empty((n, 4), np.float32)
    depth = np.empty(n, np.float32)
    visible = np.empty(n, np.float32)
    _project_kernel(x, y, z, l, w, h, yaw, log_idx, M, width, height, out, depth, visible)
    return out, depth, visible


@njit(cache=True, nogil=True, inline="always")
def _iou(a, i, b, j) -> float:
    iw = min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0])
    if iw <= 0:
        return 0.0
    ih = min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1])
    if ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1]) + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]) - inter
    return inter / union if union > 0 else 0.0


@njit(cache=True, nogil=True)
def _iou_matrix(a, b, out):
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = _iou(a, i, b, j)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) image boxes -> (N, M) intersection over union."""
    a = np.ascontiguousarray(np.asarray(a, np.float64).reshape(-1, 4))
    b = np.ascontiguousarray(np.asarray(b, np.float64).reshape(-1, 4))
    out = np.zeros((a.shape[0], b.shape[0]), np.float64)
    _iou_matrix(a, b, out)
    return out


@njit(cache=True, nogil=True)
def _hungarian(cost, n, m, u, v, p, way, minv, used, row_to_col):
    """Minimum-cost assignment of n rows to m >= n columns (cost[:n, :m]); O(n^2 m).

    Classic shortest-augmenting-path Hungarian algorithm with potentials; the work arrays are
    passed in (length >= m + 1) so the per-frame calls allocate nothing."""
    for j in range(m + 1):
        v[j] = 0.0
        p[j] = 0
        way[j] = 0
    for i in range(n + 1):
        u[i] = 0.0
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        for j in range(m + 1):
            minv[j] = np.inf
            used[j] = False
        while True:
            used[j0] = True
            i0 = p[j0]
            delta = np.inf
            j1 = 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = cost[i0 - 1, j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j] = cur
                        way[j] = j0
                    if minv[j] < delta:
                        delta = minv[j]
                        j1 = j
            for j in range(m + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while True:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
            if j0 == 0:
                break
    for i in range(n):
        row_to_col[i] = -1
    for j in range(1, m + 1):
        if p[j] != 0:
            row_to_col[p[j] - 1] = j - 1


@njit(cache=True, nogil=True)
def _solve(cost, n, m, work_f, work_i, used, r2c, c2r, sparse):
    """Optimal assignment for an (n, m) cost block, any shape; fills r2c / c2r (-1: none).

    ``sparse``: entries >= 0 mean "no pair" (the caller drops such pairs afterwards), so a row
    whose entries are all >= 0 is left out of the fast path's conflict test."""
    for i in range(n):
        r2c[i] = -1
    for j in range(m):
        c2r[j] = -1
    if n == 0 or m == 0:
        return
    # Fast path: every row's cheapest column is distinct -> that is the optimum.
    distinct = True
    for i in range(n):
        best = 0
        for j in range(1, m):
            if cost[i, j] < cost[i, best]:
                best = j
        if sparse and cost[i, best] >= 0.0:
            continue
        if c2r[best] != -1:
            distinct = False
            break
        c2r[best] = i
        r2c[i] = best
    if distinct:
        return
    for i in range(n):
        r2c[i] = -1
    for j in range(m):
        c2r[j] = -1
    L = max(n, m) + 1
    u = work_f[0, :L]
    v = work_f[1, :L]
    minv = work_f[2, :L]
    p = work_i[0, :L]
    way = work_i[1, :L]
    if n <= m:
        _hungarian(cost, n, m, u, v, p, way, minv, used, r2c)
        for i in range(n):
            if r2c[i] >= 0:
                c2r[r2c[i]] = i
    else:
        t = np.empty((m, n), np.float64)
        for i in range(n):
            for j in range(m):
                t[j, i] = cost[i, j]
        _hungarian(t, m, n, u, v, p, way, minv, used, c2r)
        for j in range(m):
            if c2r[j] >= 0:
                r2c[c2r[j]] = j


def linear_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost assignment of a dense (n, m) cost matrix, like
    ``scipy.optimize.linear_sum_assignment``: returns (rows, cols) of the assigned pairs."""
    cost = np.ascontiguousarray(np.asarray(cost, np.float64))
    if cost.ndim != 2:
        raise ValueError(f"cost must be 2-D, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("cost matrix contains NaN or infinite entries")
    n, m = cost.shape
    L = max(n, m) + 1
    r2c = np.empty(n, np.int64)
    c2r = np.empty(m, np.int64)
    _solve(cost, n, m, np.zeros((3, L)), np.zeros((2, L), np.int64), np.zeros(L, np.bool_), r2c, c2r, False)
    rows = np.flatnonzero(r2c >= 0)
    return rows, r2c[rows]


@njit(cache=True, nogil=True)
def _pair_score(mode, a, i, b, j, a_cls, b_cls, class_bonus):
    """Similarity of a pair (higher is better) and the raw quantity (IoU or distance)."""
    if mode == MODE_IOU:
        q = _iou(a, i, b, j)
        sim = q
    else:
        dx = a[i, 0] - b[j, 0]
        dy = a[i, 1] - b[j, 1]
        q = np.sqrt(dx * dx + dy * dy) / a[i, 2]
        sim = -q
    if a_cls[i] == b_cls[j]:
        sim += class_bonus
    return sim, q


def class_gates(gate: float, per_class: dict[str, float] | None = None) -> np.ndarray:
    """The ``gates`` argument of :func:`associate_slots`: ``gate`` for every class code (CLASSES,
    then 'other'), ``per_class`` overriding it by class name."""
    per_class = per_class or {}
    return np.array([per_class.get(c, gate) for c in CLASSES] + [gate], np.float64)


@njit(cache=True, nogil=True)
def associate_slots(
    a_start, a_end, b_start, b_end, a, b, a_cls, b_cls, mode, gates, class_bonus,
    a_match, b_match, a_q,
):
    """Optimal one-to-one association inside every slot (a slot is usually one frame).

    For slot s the rows ``a[a_start[s]:a_end[s]]`` are matched to ``b[b_start[s]:b_end[s]]``.
    ``gates`` holds the gate of each class code (:func:`class_gates`); the ``a`` row's class picks
    it. ``mode`` MODE_IOU: ``a``/``b`` are (N, 4) image boxes, pairs need IoU >= the gate, the sum
    of IoU is maximised. MODE_BEV: ``a`` holds (x, y, scale) and ``b`` (x, y) in their first columns;
    pairs need distance / scale <= the gate (scaled per row), the sum of those is minimised. Same-class pairs get
    ``class_bonus`` added to their similarity (ties and near-ties go to the same class).

    Writes global indices into ``a_match`` (-1: unmatched; the index into ``b``) and
    ``b_match``, and the pair's IoU / distance into ``a_q`` (NaN when unmatched). Rows of a slot
    must not be shared with another slot (each row belongs to one slot).
    """
    n_slots = a_start.shape[0]
    max_n = 1
    max_m = 1
    for s in range(n_slots):
        max_n = max(max_n, a_end[s] - a_start[s])
        max_m = max(max_m, b_end[s] - b_start[s])
    L = max(max_n, max_m) + 1
    cost = np.empty((max_n, max_m), np.float64)
    quant = np.empty((max_n, max_m), np.float64)
    work_f = np.empty((3, L), np.float64)
    work_i = np.empty((2, L), np.int64)
    used = np.empty(L, np.bool_)
    r2c = np.empty(max_n, np.int64)
    c2r = np.empty(max_m, np.int64)
    for s in range(n_slots):
        a0 = a_start[s]
        n = a_end[s] - a0
        b0 = b_start[s]
        m = b_end[s] - b0
        for i in range(n):
            a_match[a0 + i] = -1
            a_q[a0 + i] = np.nan
        for j in range(m):
            b_match[b0 + j] = -1
        if n == 0 or m == 0:
            continue
        any_ok = False
        for i in range(n):
            gate = gates[a_cls[a0 + i]]
            for j in range(m):
                sim, q = _pair_score(mode, a, a0 + i, b, b0 + j, a_cls, b_cls, class_bonus)
                quant[i, j] = q
                ok = q >= gate if mode == MODE_IOU else q <= gate
                if ok:
                    any_ok = True
                    # shift so every admissible pair is strictly better than "no pair" (0)
                    cost[i, j] = -(sim + 1000.0) if mode == MODE_BEV else -(sim + 1.0)
                else:
                    cost[i, j] = 0.0
        if not any_ok:
            continue
        _solve(cost, n, m, work_f, work_i, used, r2c, c2r, True)
        for i in range(n):
            j = r2c[i]
            if j >= 0 and cost[i, j] < 0.0:
                a_match[a0 + i] = b0 + j
                b_match[b0 + j] = a0 + i
                a_q[a0 + i] = quant[i, j]


@njit(cache=True, nogil=True)
def occlusion_slots(start, end, box, depth, valid, margin, out):
    """Per slot (frame) ``start[s]:end[s]``: for every valid row, the largest share of its image
    box covered by the box of a valid row closer to the camera by more than ``margin`` metres
    (0 when none). Rows outside ``valid`` get 0."""
    for s in range(start.shape[0]):
        for i in range(start[s], end[s]):
            out[i] = 0.0
            if not valid[i]:
                continue
            area = (box[i, 2] - box[i, 0]) * (box[i, 3] - box[i, 1])
            if area <= 0:
                continue
            for j in range(start[s], end[s]):
                if j == i or not valid[j] or depth[j] >= depth[i] - margin:
                    continue
                iw = min(box[i, 2], box[j, 2]) - max(box[i, 0], box[j, 0])
                ih = min(box[i, 3], box[j, 3]) - max(box[i, 1], box[j, 1])
                if iw > 0 and ih > 0:
                    out[i] = max(out[i], iw * ih / area)


@njit(cache=True, nogil=True)
def neighbour_slots(start, end, x, y, member, radius, out):
    """Per slot (frame): for every member row, how many other member rows lie within ``radius``
    (bird's-eye view); 0 for the other rows."""
    r2 = radius * radius
    for s in range(start.shape[0]):
        for i in range(start[s], end[s]):
            out[i] = 0
            if not member[i]:
                continue
            for j in range(start[s], end[s]):
                if j != i and member[j]:
                    dx = x[i] - x[j]
                    dy = y[i] - y[j]
                    if dx * dx + dy * dy <= r2:
                        out[i] += 1


@njit(cache=True, nogil=True)
def ioa_slots(a_start, a_end, b_start, b_end, a, b, out):
    """Per slot (frame): for every box of ``a``, the largest share of its area inside a box of
    ``b`` of the same slot (intersection over the ``a`` box's area; 0 when none)."""
    for s in range(a_start.shape[0]):
        for i in range(a_start[s], a_end[s]):
            out[i] = 0.0
            area = (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1])
            if area <= 0:
                continue
            for j in range(b_start[s], b_end[s]):
                iw = min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0])
                ih = min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1])
                if iw > 0 and ih > 0:
                    out[i] = max(out[i], iw * ih / area)


@njit(cache=True, nogil=True)
def nearest_slots(a_start, a_end, b_start, b_end, a, b, mode, out_q, out_idx):
    """Per slot (frame): for every row of ``a`` its best partner among the rows of ``b`` of the
    same slot, not one-to-one. ``mode`` MODE_IOU: (N, 4) boxes, the largest IoU; MODE_BEV: the
    first two columns are bird's-eye (x, y), the smallest distance. Writes the quantity into
    ``out_q`` (0 IoU / +inf distance when the slot has no ``b`` row) and the global index of the
    partner into ``out_idx`` (-1 none)."""
    for s in range(a_start.shape[0]):
        for i in range(a_start[s], a_end[s]):
            best = 0.0 if mode == MODE_IOU else np.inf
            arg = -1
            for j in range(b_start[s], b_end[s]):
                if mode == MODE_IOU:
                    q = _iou(a, i, b, j)
                    if q > best:
                        best = q
                        arg = j
                else:
                    dx = a[i, 0] - b[j, 0]
                    dy = a[i, 1] - b[j, 1]
                    q = np.sqrt(dx * dx + dy * dy)
                    if q < best:
                        best = q
                        arg = j
            out_q[i] = best
            out_idx[i] = arg
