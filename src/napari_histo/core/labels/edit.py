"""Editing operations on instance labels that napari's paint/fill/erase tools lack for nuclei work."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from ..errors import HistoError


def next_free_label(labels: np.ndarray) -> int:
    """The smallest id greater than every id in use."""
    return int(np.max(labels, initial=0)) + 1


def delete_label(labels: np.ndarray, label: int) -> np.ndarray:
    """A copy of ``labels`` without nucleus ``label``."""
    if label == 0:
        raise HistoError("there is no nucleus under the cursor (background)")
    out = np.array(labels, copy=True)
    out[out == label] = 0
    return out


def merge_labels(labels: np.ndarray, keep: int, other: int) -> np.ndarray:
    """A copy where nucleus ``other`` becomes part of ``keep``."""
    if keep == 0 or other == 0:
        raise HistoError("merge needs two nuclei; one of the points is on background")
    if keep == other:
        raise HistoError("both points are on the same nucleus")
    out = np.array(labels, copy=True)
    out[out == other] = keep
    return out


def split_label(
    labels: np.ndarray, line: Sequence[Sequence[float]]
) -> tuple[np.ndarray, list[int]]:
    """Cut the nucleus crossed by a drawn line into pieces; returns the labels and the new ids.

    The line (a polyline of (row, col) points) must cross exactly one nucleus from background
    to background, or at least cut it into two or more parts. Line pixels go to the nearest piece,
    so no gap is left; the largest piece keeps the original id.
    """
    from scipy import ndimage
    from skimage.draw import line as draw_line

    pts = np.round(np.asarray(line, dtype=float)[:, -2:]).astype(int)
    if len(pts) < 2:
        raise HistoError("draw a line of at least two points across the nucleus to split")
    cut = np.zeros(labels.shape, bool)
    h, w = labels.shape
    for (r0, c0), (r1, c1) in itertools.pairwise(pts):
        rr, cc = draw_line(r0, c0, r1, c1)
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        cut[rr[ok], cc[ok]] = True
    # 4-connected cut pixels can leak diagonally: thicken to an 8-connected barrier.
    cut |= ndimage.binary_dilation(cut, structure=np.array([[0, 0, 0], [0, 1, 1], [0, 0, 0]], bool))
    hit = np.unique(labels[cut])
    hit = hit[hit != 0]
    if hit.size != 1:
        raise HistoError(f"the line must cross exactly one nucleus (it crosses {hit.size})")
    target = int(hit[0])
    # The rest works in the nucleus's bounding box (every piece lies inside it, so the nearest
    # piece of a line pixel is found there too): milliseconds on a whole slide region or tile.
    box = ndimage.find_objects((labels == target).astype(np.uint8))[0]
    mask, cut = labels[box] == target, cut[box]
    parts, n = ndimage.label(mask & ~cut)
    if n < 2:
        raise HistoError(
            "the line does not cut the nucleus in two: draw it from background to background"
        )
    sizes = ndimage.sum(mask, parts, range(1, n + 1))
    order = np.argsort(sizes)[::-1] + 1
    out = np.array(labels, copy=True)
    sub = out[box]  # a view: writing it writes out
    new_ids = []
    next_id = next_free_label(labels)
    for rank, part in enumerate(order):
        if rank == 0:
            continue
        sub[parts == part] = next_id
        new_ids.append(next_id)
        next_id += 1
    # Line pixels inside the nucleus join their nearest piece.
    gap = mask & cut
    pieces = np.where(mask & ~cut, sub, 0)
    _, (ri, ci) = ndimage.distance_transform_edt(pieces == 0, return_indices=True)
    sub[gap] = pieces[ri[gap], ci[gap]]
    return out, new_ids
