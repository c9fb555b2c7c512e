"""Simplifying many polygon outlines at once (Douglas-Peucker, vectorized across rings)."""

from __future__ import annotations

import numpy as np


def simplify_rings(rings: list[np.ndarray], tolerance: float) -> list[np.ndarray]:
    """Douglas-Peucker simplification of every (K, 2) ring in ``rings``, all rings at once.

    The same rule as ``skimage.measure.approximate_polygon`` (a point's distance to a chord is
    its perpendicular distance where it projects inside the chord, else the distance to the
    nearer end; the farthest point past ``tolerance`` splits the chord), so the same vertices
    up to ties between equally distant points. That function loops over chords in Python
    (about 1 ms a nucleus); here each round splits every ring's open chords together, so a
    slide block of thousands of nuclei takes a few array passes per level of splitting.
    """
    if tolerance <= 0 or not rings:
        return list(rings)
    sizes = np.array([len(r) for r in rings])
    ends = np.cumsum(sizes)
    starts = ends - sizes
    pts = np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1, 2) for r in rings])
    keep = np.zeros(len(pts), bool)
    nonempty = sizes > 0
    keep[starts[nonempty]] = True
    keep[ends[nonempty] - 1] = True
    seg_a, seg_b = starts[sizes > 2], ends[sizes > 2] - 1
    while seg_a.size:
        inner = seg_b - seg_a - 1
        owner = np.repeat(np.arange(seg_a.size), inner)
        first = np.cumsum(inner) - inner
        idx = np.arange(owner.size) - first[owner] + seg_a[owner] + 1
        a, b, p = pts[seg_a[owner]], pts[seg_b[owner]], pts[idx]
        d = _chord_distance(p, a, b)
        best = np.full(seg_a.size, -1.0)
        np.maximum.at(best, owner, d)
        # the first point reaching the maximum, as np.argmax takes it
        cand = np.where(d == best[owner], idx, np.iinfo(np.int64).max)
        split = np.full(seg_a.size, np.iinfo(np.int64).max)
        np.minimum.at(split, owner, cand)
        go = best > tolerance
        keep[split[go]] = True
        seg_a, seg_b, split = seg_a[go], seg_b[go], split[go]
        seg_a, seg_b = np.concatenate([seg_a, split]), np.concatenate([split, seg_b])
        more = seg_b - seg_a > 1
        seg_a, seg_b = seg_a[more], seg_b[more]
    return [pts[s:e][keep[s:e]] for s, e in zip(starts, ends, strict=True)]


def _chord_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points ``p`` to chords ``a``-``b`` (row by row), as approximate_polygon has it."""
    dr, dc = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    angle = -np.arctan2(dr, dc)
    sin, cos = np.sin(angle), np.cos(angle)
    offset = a[:, 1] * sin + a[:, 0] * cos
    dr0, dc0 = p[:, 0] - a[:, 0], p[:, 1] - a[:, 1]
    dr1, dc1 = p[:, 0] - b[:, 0], p[:, 1] - b[:, 1]
    perp = (dr0 * dr + dc0 * dc > 0) & (-dr1 * dr - dc1 * dc > 0)
    return np.where(
        perp,
        np.abs(p[:, 0] * cos + p[:, 1] * sin - offset),
        np.minimum(np.sqrt(dc0**2 + dr0**2), np.sqrt(dc1**2 + dr1**2)),
    )
