"""Instance models (Mask R-CNN): detections kept as instances, multiple inference merged as sets.

A detector gives each nucleus a soft mask and a score; its maps are not blendable, so it is not
tiled like the U-Net. Instead (Jung et al. 2019):

* **instances from the detector itself**: masks above ``mask_threshold`` are painted in order of
  score, each pixel going to the highest-scoring mask that claims it;
* **multiple inference**: each of the flips/rotations is detected, its masks are turned back, and
  the detection sets are merged: detections are clustered across variants by mask IoU (greedy,
  by score), a cluster found in at least ``min_votes`` variants is kept, its mask is the mean of
  its members' masks and its score their mean score (missing variants count as 0);
* **tiles**: windows of a block tiling are detected on their own and stitched by the ownership
  rule of :mod:`napari_histo.core.tiling` (the slide path's rule), so nothing is cut at seams.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Soft masks ``(N, H, W)`` in [0, 1] and scores ``(N,)`` of one image."""

    masks: np.ndarray
    scores: np.ndarray

    def __post_init__(self):
        self.masks = np.asarray(self.masks, np.float32)
        self.scores = np.asarray(self.scores, np.float32)
        if self.masks.ndim != 3 or len(self.scores) != len(self.masks):
            raise ValueError(f"masks {self.masks.shape} and scores {self.scores.shape} disagree")

    def __len__(self) -> int:
        return len(self.scores)


def paint_by_score(
    det: Detections, score_threshold: float = 0.5, mask_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels and confidence: each pixel to the highest-scoring mask that claims it.

    Ids follow descending score (1 = the most confident nucleus); the confidence of a pixel is
    its nucleus' score times its mask probability (1 on background).
    """
    h, w = det.masks.shape[1:]
    labels = np.zeros((h, w), np.uint32)
    conf = np.ones((h, w), np.float32)
    order = np.argsort(-det.scores, kind="stable")
    next_id = 1
    for i in order:
        s = float(det.scores[i])
        if s < score_threshold:
            continue
        m = (det.masks[i] > mask_threshold) & (labels == 0)
        if not m.any():
            continue
        labels[m] = next_id
        conf[m] = s * det.masks[i][m]
        next_id += 1
    return labels, conf


def invert_detections(det: Detections, k: int, flip: bool) -> Detections:
    """Undo ``rot90(flip(x) if flip else x, k)`` on the masks of a transformed image."""
    masks = np.rot90(det.masks, -k, axes=(1, 2))
    if flip:
        masks = masks[:, :, ::-1]
    return Detections(np.ascontiguousarray(masks), det.scores)


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _iou(a: np.ndarray, box_a, b: np.ndarray, box_b) -> float:
    """IoU of two binary masks, computed on the union of their boxes (0 when they miss)."""
    r0, r1 = min(box_a[0], box_b[0]), max(box_a[1], box_b[1])
    c0, c1 = min(box_a[2], box_b[2]), max(box_a[3], box_b[3])
    if box_a[1] <= box_b[0] or box_b[1] <= box_a[0] or box_a[3] <= box_b[2] or box_b[3] <= box_a[2]:
        return 0.0
    x, y = a[r0:r1, c0:c1], b[r0:r1, c0:c1]
    inter = np.count_nonzero(x & y)
    return inter / max(np.count_nonzero(x | y), 1)


def merge_variants(
    variants: Sequence[Detections],
    iou: float = 0.5,
    min_votes: int | None = None,
    mask_threshold: float = 0.5,
    score_threshold: float = 0.0,
) -> Detections:
    """Merge the detections of several transforms of one image into one set.

    Clusters are grown greedily from the highest score down: a detection joins the cluster whose
    seed mask it overlaps most (IoU >= ``iou``), at most one member per variant. Clusters found
    in fewer than ``min_votes`` variants are dropped (default: a majority, n // 2 + 1); a kept
    cluster's mask is its members' mean mask over all variants (a variant that missed it counts 0)
    and its score the members' mean score weighted the same way. Detections scored under
    ``score_threshold`` take no part.
    """
    n = len(variants)
    if n == 0:
        raise ValueError("no variants to merge")
    min_votes = n // 2 + 1 if min_votes is None else int(min_votes)
    shape = variants[0].masks.shape[1:]
    entries = []  # (score, variant, index, binary mask, box)
    for v, det in enumerate(variants):
        for i in range(len(det)):
            if det.scores[i] < score_threshold:
                continue
            binary = det.masks[i] > mask_threshold
            box = _box(binary)
            if box is not None:
                entries.append((float(det.scores[i]), v, i, binary, box))
    entries.sort(key=lambda e: -e[0])
    clusters: list[list[tuple]] = []
    for e in entries:
        best, best_iou = None, iou
        for c in clusters:
            if any(m[1] == e[1] for m in c):
                continue  # one member per variant
            o = _iou(e[3], e[4], c[0][3], c[0][4])
            if o >= best_iou:
                best, best_iou = c, o
        if best is None:
            clusters.append([e])
        else:
            best.append(e)
    kept = [c for c in clusters if len(c) >= min_votes]
    if not kept:
        return Detections(np.zeros((0, *shape), np.float32), np.zeros(0, np.float32))
    masks = np.stack([sum(variants[m[1]].masks[m[2]] for m in c) / n for c in kept])
    scores = np.array([sum(m[0] for m in c) / n for c in kept], np.float32)
    return Detections(masks, scores)


def detect_with_tta(
    detect: Callable[[np.ndarray], Detections],
    rgb: np.ndarray,
    transforms: Sequence[tuple[int, bool]],
    iou: float = 0.5,
    min_votes: int | None = None,
    score_threshold: float = 0.0,
) -> Detections:
    """Detect on every ``(k, flip)`` transform of ``rgb``, turn the masks back, merge the sets."""
    if len(transforms) == 1 and transforms[0] == (0, False):
        return detect(rgb)
    variants = []
    for k, flip in transforms:
        x = rgb[:, ::-1] if flip else rgb
        x = np.ascontiguousarray(np.rot90(x, k))
        variants.append(invert_detections(detect(x), k, flip))
    return merge_variants(variants, iou, min_votes, score_threshold=score_threshold)
