"""Segmentation metrics of instance labels: pixel Dice, AJI, object F1, panoptic quality.

Every metric takes ``truth`` and ``pred`` integer instance-label images of the same shape
(0 = background) and works from one sparse contingency table of the two (``np.unique`` of pair
codes), never from per-object passes over the image. numpy only.

Empty images: a score is 1.0 when both images are empty (nothing to find, nothing found) and 0.0
when only one is; precision with no prediction and recall with no truth are 1.0 (vacuous).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np


@dataclass
class _Table:
    """Sparse overlaps: areas of truth and pred objects, and their non-zero intersections."""

    t_area: np.ndarray  # (n_t,)
    p_area: np.ndarray  # (n_p,)
    ti: np.ndarray  # (k,) truth object index of each overlapping pair
    pi: np.ndarray  # (k,) pred object index
    inter: np.ndarray  # (k,) intersection in pixels

    @property
    def iou(self) -> np.ndarray:
        union = self.t_area[self.ti] + self.p_area[self.pi] - self.inter
        return self.inter / union


def _check(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and pred {pred.shape} differ in shape")
    return truth.ravel(), pred.ravel()


def _table(truth: np.ndarray, pred: np.ndarray) -> _Table:
    t, p = _check(truth, pred)
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    # Index 0 is background when present; shift so that objects are 0..n-1 and background -1.
    t_off = 1 if t_ids.size and t_ids[0] == 0 else 0
    p_off = 1 if p_ids.size and p_ids[0] == 0 else 0
    t_area = np.bincount(t_inv, minlength=t_ids.size)[t_off:]
    p_area = np.bincount(p_inv, minlength=p_ids.size)[p_off:]
    both = (t_inv >= t_off) & (p_inv >= p_off)
    codes = (t_inv[both] - t_off).astype(np.int64) * max(p_area.size, 1) + (p_inv[both] - p_off)
    pair, inter = np.unique(codes, return_counts=True)
    n_p = max(p_area.size, 1)
    return _Table(t_area, p_area, pair // n_p, pair % n_p, inter)


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Pixel Dice of the foregrounds ``2 |T & P| / (|T| + |P|)``; 1.0 when both are empty."""
    t, p = _check(truth, pred)
    t, p = t > 0, p > 0
    denom = int(t.sum()) + int(p.sum())
    return 1.0 if denom == 0 else 2.0 * int((t & p).sum()) / denom


def aggregated_jaccard_index(truth: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017).

    Each truth object is paired with the prediction of highest IoU with it (if any overlaps);
    ``AJI = sum |G & S| / (sum |G | S| + area of predictions paired with no truth)``. As in the
    original, one prediction may pair with several truth objects. 1.0 when both are empty.
    """
    tab = _table(truth, pred)
    if tab.t_area.size == 0 and tab.p_area.size == 0:
        return 1.0
    inter_sum = 0
    union_sum = int(tab.t_area.sum())
    used = np.zeros(tab.p_area.size, bool)
    if tab.inter.size:
        order = np.lexsort((-tab.iou, tab.ti))
        first = np.ones(order.size, bool)
        first[1:] = tab.ti[order][1:] != tab.ti[order][:-1]
        best = order[first]
        pi, inter = tab.pi[best], tab.inter[best]
        inter_sum = int(inter.sum())
        # |G u S| = |G| + |S| - |G n S|; the |G| of every truth object is already counted.
        union_sum += int((tab.p_area[pi] - inter).sum())
        used[pi] = True
    union_sum += int(tab.p_area[~used].sum())
    return inter_sum / union_sum if union_sum else 1.0


def _matches(tab: _Table, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of matched pairs (into the table) at IoU > ``iou``; one-to-one."""
    ious = tab.iou
    cand = np.nonzero(ious > iou)[0]
    if iou >= 0.5 or cand.size == 0:
        return cand, ious[cand]
    from scipy.optimize import linear_sum_assignment

    ut, rt = np.unique(tab.ti[cand], return_inverse=True)
    up, rp = np.unique(tab.pi[cand], return_inverse=True)
    m = np.zeros((ut.size, up.size))
    m[rt, rp] = ious[cand]
    rows, cols = linear_sum_assignment(m, maximize=True)
    lookup = {(r, c): k for k, r, c in zip(cand, rt, rp, strict=True)}
    keep = np.array([lookup[rc] for rc in zip(rows, cols, strict=True) if (rc in lookup)], int)
    return keep, ious[keep]


def changed_regions(truth: np.ndarray, pred: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Where corrected labels ``truth`` differ from a model's ``pred``: a boolean mask.

    Foreground added or erased, plus every whole object (of either image) with no partner at
    IoU > ``iou``: nuclei the model missed, merged, split or invented.
    """
    t, p = np.asarray(truth), np.asarray(pred)
    tab = _table(t, p)
    matched_t = np.zeros(tab.t_area.size, bool)
    matched_p = np.zeros(tab.p_area.size, bool)
    keep, _ = _matches(tab, iou)
    matched_t[tab.ti[keep]] = True
    matched_p[tab.pi[keep]] = True
    out = (t > 0) != (p > 0)
    for lab, matched in ((t, matched_t), (p, matched_p)):
        ids = np.unique(lab)
        ids = ids[ids != 0]
        if ids.size and not matched.all():
            out |= np.isin(lab, ids[~matched])
    return out


def object_f1(truth: np.ndarray, pred: np.ndarray, iou: float = 0.5) -> dict[str, float]:
    """Object-level detection F1: a prediction is a true positive when it matches a truth object
    with IoU > ``iou`` (one-to-one; optimal assignment below 0.5, where matches can conflict).

    Returns
    -------
    dict with ``f1``, ``precision``, ``recall`` (floats) and ``tp``, ``fp``, ``fn`` (ints).
    """
    tab = _table(truth, pred)
    tp = int(_matches(tab, iou)[0].size)
    fp, fn = int(tab.p_area.size) - tp, int(tab.t_area.size) - tp
    return {
        "f1": 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0,
        "precision": tp / (tp + fp) if (tp + fp) else 1.0,
        "recall": tp / (tp + fn) if (tp + fn) else 1.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def panoptic_quality(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Panoptic quality (Kirillov et al. 2019) of one class: ``PQ = DQ x SQ``.

    Matches are pairs with IoU > 0.5 (unique by construction); ``DQ = TP / (TP + FP/2 + FN/2)``,
    ``SQ`` = mean IoU of the matches (0 without matches). All 1.0 when both images are empty.
    """
    tab = _table(truth, pred)
    if tab.t_area.size == 0 and tab.p_area.size == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0}
    _, ious = _matches(tab, 0.5)
    tp = ious.size
    fp, fn = tab.p_area.size - tp, tab.t_area.size - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(ious.mean()) if tp else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq}


def evaluate(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``dice``, ``aji``, ``f1`` (IoU > 0.5), ``precision``, ``recall``, ``pq``, ``dq``, ``sq``."""
    f1 = object_f1(truth, pred)
    return {
        "dice": dice(truth, pred),
        "aji": aggregated_jaccard_index(truth, pred),
        "f1": f1["f1"],
        "precision": f1["precision"],
        "recall": f1["recall"],
        **panoptic_quality(truth, pred),
    }


#: The keys of :func:`evaluate`, in its order.
METRICS = ("dice", "aji", "f1", "precision", "recall", "pq", "dq", "sq")


def score_images(
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    predict: Callable[[np.ndarray], np.ndarray],
    digits: int | None = None,
) -> dict[str, dict[str, float]]:
    """Per-image :func:`evaluate` of ``predict(image)`` against each ``(name, image, truth)``.

    Each row also counts the objects (``n_pred``, ``n_true``); ``digits`` rounds the metrics.
    """
    per = {}
    for name, img, truth in pairs:
        pred = np.asarray(predict(img))
        row = {k: float(v) for k, v in evaluate(truth, pred).items()}
        if digits is not None:
            row = {k: round(v, digits) for k, v in row.items()}
        row["n_pred"] = int(np.count_nonzero(np.unique(pred)))
        row["n_true"] = int(np.count_nonzero(np.unique(truth)))
        per[name] = row
    return per


def mean_scores(
    per: dict[str, dict[str, float]], keys: Iterable[str] = METRICS, digits: int | None = None
) -> dict[str, float]:
    """The mean over images of each of ``keys`` (of :func:`score_images` rows)."""
    rows = list(per.values())
    out = {k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in keys}
    return out if digits is None else {k: round(v, digits) for k, v in out.items()}
