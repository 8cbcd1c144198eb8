"""Plane geometry of regions, vectorised with numpy: ring cleaning and area, the
self-intersection check, clipping to the slide, even-odd rasterisation and the exact
box-intersection test.  Rings are (n, 2) float64 arrays of (x, y) level-0 pixels, open
(the first point is not repeated at the end)."""

from __future__ import annotations

import numpy as np

__all__ = ["boxes_intersect", "clean_ring", "clip_ring", "crossing", "rasterize", "ring_area"]

#: segment pairs compared at once by the self-intersection check (bounds memory)
_PAIRS_PER_BLOCK = 2_000_000


def clean_ring(ring: np.ndarray) -> np.ndarray:
    """The ring without its closing point and without consecutive repeated points."""
    r = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
    if len(r) > 1 and np.array_equal(r[0], r[-1]):
        r = r[:-1]
    if len(r) > 1:
        keep = np.any(r != np.roll(r, 1, axis=0), axis=1)
        keep[0] = True
        r = r[keep]
        if len(r) > 1 and np.array_equal(r[0], r[-1]):
            r = r[:-1]
    return r


def ring_area(ring: np.ndarray) -> float:
    """Unsigned area (shoelace) of an open ring."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _cross(ax, ay, bx, by):
    return ax * by - ay * bx


def crossing(ring: np.ndarray) -> tuple[float, float] | None:
    """A point where two non-adjacent edges of the ring meet (crossing, touching or
    overlapping), or None when the ring is simple.  All edge pairs, in blocks."""
    n = len(ring)
    if n < 4:
        return None
    p, q = ring, np.roll(ring, -1, axis=0)  # edge i: p[i] -> q[i]
    lo, hi = np.minimum(p, q), np.maximum(p, q)
    block = max(1, _PAIRS_PER_BLOCK // n)
    j = np.arange(n)
    for start in range(0, n, block):
        i = np.arange(start, min(n, start + block))[:, None]
        cand = (j[None, :] > i + 1) & ~((i == 0) & (j[None, :] == n - 1))
        cand &= (lo[i, 0] <= hi[None, :, 0]) & (lo[None, :, 0] <= hi[i, 0])
        cand &= (lo[i, 1] <= hi[None, :, 1]) & (lo[None, :, 1] <= hi[i, 1])
        ii, jj = np.nonzero(cand)
        if not len(ii):
            continue
        ii = ii + start
        hit = _segments_meet(p[ii], q[ii], p[jj], q[jj])
        if hit.any():
            k = int(np.flatnonzero(hit)[0])
            a, b, c, d = p[ii[k]], q[ii[k]], p[jj[k]], q[jj[k]]
            den = _cross(*(b - a), *(d - c))
            t = _cross(*(c - a), *(d - c)) / den if den else 0.0
            x, y = a + t * (b - a)
            return float(x), float(y)
    return None


def _segments_meet(a, b, c, d) -> np.ndarray:
    """Do segments a-b and c-d share a point (bounding boxes already overlap)?"""
    d1 = _cross(b[:, 0] - a[:, 0], b[:, 1] - a[:, 1], c[:, 0] - a[:, 0], c[:, 1] - a[:, 1])
    d2 = _cross(b[:, 0] - a[:, 0], b[:, 1] - a[:, 1], d[:, 0] - a[:, 0], d[:, 1] - a[:, 1])
    d3 = _cross(d[:, 0] - c[:, 0], d[:, 1] - c[:, 1], a[:, 0] - c[:, 0], a[:, 1] - c[:, 1])
    d4 = _cross(d[:, 0] - c[:, 0], d[:, 1] - c[:, 1], b[:, 0] - c[:, 0], b[:, 1] - c[:, 1])
    # opposite sides (or on the line) both ways; collinear pairs overlap (bboxes do)
    return (d1 * d2 <= 0) & (d3 * d4 <= 0)


def clip_ring(ring: np.ndarray, width: float, height: float) -> np.ndarray:
    """Sutherland-Hodgman: the part of the ring inside [0, width] x [0, height]."""
    pts = ring
    for axis, limit, keep_below in ((0, 0.0, False), (0, width, True), (1, 0.0, False),
                                    (1, height, True)):
        if not len(pts):
            break
        nxt = np.roll(pts, -1, axis=0)
        inside = pts[:, axis] <= limit if keep_below else pts[:, axis] >= limit
        inside_n = np.roll(inside, -1)
        out = []
        for k in range(len(pts)):  # a ring rarely has more than a few thousand points
            if inside[k]:
                out.append(pts[k])
            if inside[k] != inside_n[k]:
                t = (limit - pts[k, axis]) / (nxt[k, axis] - pts[k, axis])
                out.append(pts[k] + t * (nxt[k] - pts[k]))
        pts = np.asarray(out, dtype=np.float64).reshape(-1, 2)
    return pts


def rasterize(rings: list[np.ndarray], shape: tuple[int, int], scale: tuple[float, float],
              origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Bool (h, w) raster of one polygon (exterior and holes, even-odd rule): pixel
    ``[r, c]`` is inside when its centre ``(ox + (c + 0.5) * sx, oy + (r + 0.5) * sy)``
    is (``origin`` = (oy, ox) level-0 px)."""
    h, w = shape
    sy, sx = scale
    oy, ox = origin
    parity = np.zeros((h, w + 1), dtype=np.int32)
    for ring in rings:
        p, q = ring, np.roll(ring, -1, axis=0)
        y0, y1 = (p[:, 1] - oy) / sy - 0.5, (q[:, 1] - oy) / sy - 0.5  # row r at y = r
        x0, x1 = (p[:, 0] - ox) / sx - 0.5, (q[:, 0] - ox) / sx - 0.5
        ylo, yhi = np.minimum(y0, y1), np.maximum(y0, y1)
        r0 = np.clip(np.ceil(ylo), 0, h).astype(np.int64)  # rows with ylo <= r < yhi
        r1 = np.clip(np.ceil(yhi), 0, h).astype(np.int64)
        n = np.maximum(r1 - r0, 0)
        if not n.sum():
            continue
        edge = np.repeat(np.arange(len(p)), n)
        rows = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n) + r0[edge]
        t = (rows - y0[edge]) / (y1[edge] - y0[edge])
        xs = x0[edge] + t * (x1[edge] - x0[edge])
        cols = np.clip(np.ceil(xs), 0, w).astype(np.int64)  # first column right of it
        np.add.at(parity, (rows, cols), 1)
    return (np.cumsum(parity, axis=1)[:, :w] % 2).astype(bool)


def _points_inside(rings: list[np.ndarray], pts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon of (m, 2) points."""
    inside = np.zeros(len(pts), dtype=bool)
    for ring in rings:
        p, q = ring, np.roll(ring, -1, axis=0)
        for k in range(0, len(pts), 4096):
            x, y = pts[k:k + 4096, 0:1], pts[k:k + 4096, 1:2]
            spans = (p[None, :, 1] > y) != (q[None, :, 1] > y)
            with np.errstate(divide="ignore", invalid="ignore"):
                xc = p[None, :, 0] + (y - p[None, :, 1]) * (q[None, :, 0] - p[None, :, 0]) \
                    / (q[None, :, 1] - p[None, :, 1])
            inside[k:k + 4096] ^= (np.count_nonzero(spans & (x < xc), axis=1) % 2).astype(bool)
    return inside


def _edges_hit_boxes(rings: list[np.ndarray], boxes: np.ndarray) -> np.ndarray:
    """Does any edge of the rings meet each box (Liang-Barsky, boxes x edges in blocks)?"""
    p = np.concatenate(rings)
    q = np.concatenate([np.roll(r, -1, axis=0) for r in rings])
    hit = np.zeros(len(boxes), dtype=bool)
    step = max(1, 1_000_000 // max(1, len(p)))
    for k in range(0, len(boxes), step):
        b = boxes[k:k + step, None, :]
        t0 = np.zeros((len(b), len(p)))
        t1 = np.ones((len(b), len(p)))
        ok = np.ones((len(b), len(p)), dtype=bool)
        for axis in (0, 1):
            d = q[None, :, axis] - p[None, :, axis]
            for lim, sign in ((b[..., axis], -1.0), (b[..., axis + 2], 1.0)):
                num = sign * (lim - p[None, :, axis])  # inside when sign * d * t <= num
                den = sign * d
                with np.errstate(divide="ignore", invalid="ignore"):
                    t = num / den
                ok &= ~((den == 0) & (num < 0))
                t1 = np.where(den > 0, np.minimum(t1, t), t1)
                t0 = np.where(den < 0, np.maximum(t0, t), t0)
        hit[k:k + step] = (ok & (t0 <= t1)).any(axis=1)
    return hit


def boxes_intersect(polygons: list[list[np.ndarray]], boxes: np.ndarray) -> np.ndarray:
    """(N,) bool: does each level-0 box ``[x0, y0, x1, y1]`` meet any polygon (an edge
    in the box, or the box inside the polygon)?  Exact."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.zeros(len(boxes), dtype=bool)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    for rings in polygons:
        todo = ~out
        if not todo.any():
            break
        sub = boxes[todo]
        met = _edges_hit_boxes(rings, sub) | _points_inside(rings, centres[todo])
        out[np.flatnonzero(todo)[met]] = True
    return out
