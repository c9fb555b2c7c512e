"""Instance-segmentation metrics on hand-made cases with known values and on real tiles."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_histo.core.io import read_labels
from napari_histo.core.seg import metrics


def square_pair(shift: int) -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((20, 30), np.int32)
    pred = np.zeros((20, 30), np.int32)
    truth[5:15, 5:15] = 3
    pred[5:15, 5 + shift : 15 + shift] = 8
    return truth, pred


def test_shifted_squares():
    truth, pred = square_pair(2)  # overlap 10x8 = 80, union 120
    assert metrics.dice(truth, pred) == pytest.approx(0.8)
    assert metrics.aggregated_jaccard_index(truth, pred) == pytest.approx(80 / 120)
    f1 = metrics.object_f1(truth, pred)
    assert (f1["tp"], f1["fp"], f1["fn"], f1["f1"]) == (1, 0, 0, 1.0)
    pq = metrics.panoptic_quality(truth, pred)
    assert pq == pytest.approx({"pq": 2 / 3, "dq": 1.0, "sq": 2 / 3})

    truth, pred = square_pair(4)  # overlap 60, union 140: IoU 0.43 is not a match
    assert metrics.aggregated_jaccard_index(truth, pred) == pytest.approx(60 / 140)
    f1 = metrics.object_f1(truth, pred)
    assert (f1["tp"], f1["fp"], f1["fn"], f1["f1"]) == (0, 1, 1, 0.0)
    assert metrics.object_f1(truth, pred, iou=0.4)["tp"] == 1
    assert metrics.panoptic_quality(truth, pred) == {"pq": 0.0, "dq": 0.0, "sq": 0.0}


def aji_case(with_s3: bool = True) -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((20, 40), np.int32)
    truth[0:10, 0:10] = 1  # G1, 100 px
    truth[0:10, 12:17] = 2  # G2, 50 px
    pred = np.zeros_like(truth)
    pred[0:10, 2:15] = 5  # S1, 130 px: 80 on G1 (IoU 80/150), 30 on G2 (IoU 30/150)
    if with_s3:
        pred[0:10, 15:20] = 6  # S3, 50 px: 20 on G2 (IoU 20/80, G2's best)
    pred[15:20, 30:36] = 7  # S2, 30 px, a false positive
    return truth, pred


def test_aji_worked_example():
    truth, pred = aji_case()
    # C = 80 + 20; U = |G1 u S1| + |G2 u S3| + |S2| = 150 + 80 + 30
    assert metrics.aggregated_jaccard_index(truth, pred) == pytest.approx(100 / 260)
    f1 = metrics.object_f1(truth, pred)
    assert (f1["tp"], f1["fp"], f1["fn"]) == (1, 2, 1)
    assert f1["precision"] == pytest.approx(1 / 3) and f1["recall"] == pytest.approx(0.5)
    assert f1["f1"] == pytest.approx(0.4)
    pq = metrics.panoptic_quality(truth, pred)
    assert pq["dq"] == pytest.approx(1 / 2.5) and pq["sq"] == pytest.approx(80 / 150)
    assert pq["pq"] == pytest.approx(0.4 * 80 / 150)


def test_aji_counts_a_merging_prediction_twice():
    truth, pred = aji_case(with_s3=False)
    # S1 is the best match of both G1 and G2: C = 80 + 30; U = 150 + 150 + 30.
    assert metrics.aggregated_jaccard_index(truth, pred) == pytest.approx(110 / 330)


def test_f1_below_half_uses_one_to_one_assignment():
    truth = np.zeros((10, 30), np.int32)
    truth[:, 0:10] = 1
    truth[:, 10:20] = 2
    pred = np.zeros_like(truth)
    pred[:, 5:15] = 1  # IoU 50/150 with each truth object
    f1 = metrics.object_f1(truth, pred, iou=0.3)
    assert (f1["tp"], f1["fp"], f1["fn"]) == (1, 0, 1)


def test_empty_conventions():
    empty = np.zeros((8, 8), np.int32)
    one = empty.copy()
    one[2:5, 2:5] = 4
    assert metrics.evaluate(empty, empty) == {
        "dice": 1.0,
        "aji": 1.0,
        "f1": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "pq": 1.0,
        "dq": 1.0,
        "sq": 1.0,
    }
    for truth, pred in ((empty, one), (one, empty)):
        scores = metrics.evaluate(truth, pred)
        assert all(np.isfinite(v) for v in scores.values())
        assert scores["dice"] == scores["aji"] == scores["f1"] == scores["pq"] == 0.0
    assert metrics.object_f1(empty, one)["recall"] == 1.0
    assert metrics.object_f1(one, empty)["precision"] == 1.0
    assert metrics.evaluate(one, one)["aji"] == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.dice(one, one[:4])


def reference_aji(truth: np.ndarray, pred: np.ndarray) -> float:
    """Kumar et al.'s AJI as the object loop they describe."""
    inter = union = 0
    used = set()
    for g in np.unique(truth[truth > 0]):
        gm = truth == g
        best, best_iou = None, -1.0
        for s in np.unique(pred[gm & (pred > 0)]):
            sm = pred == s
            iou = (gm & sm).sum() / (gm | sm).sum()
            if iou > best_iou:
                best, best_iou = s, iou
        if best is None:
            union += gm.sum()
            continue
        sm = pred == best
        inter += (gm & sm).sum()
        union += (gm | sm).sum()
        used.add(best)
    for s in np.unique(pred[pred > 0]):
        if s not in used:
            union += (pred == s).sum()
    return inter / union


@pytest.fixture(scope="module")
def tile(monuseg):
    return read_labels(sorted((monuseg / "masks").glob("*.tif"))[3])


def perturbed(labels: np.ndarray) -> np.ndarray:
    """A plausible prediction: shifted, eroded, some nuclei dropped, some merged, ids shuffled."""
    pred = np.roll(labels, (2, -1), axis=(0, 1)).astype(np.int64)
    pred = np.where(ndi.grey_erosion(pred, size=3) == pred, pred, 0)
    pred[np.isin(pred, np.arange(0, pred.max(), 7))] = 0
    pred[np.isin(pred, np.arange(3, pred.max(), 11))] = 3
    rng = np.random.default_rng(1)
    perm = np.concatenate([[0], rng.permutation(int(pred.max())) + 1000])
    return perm[pred]


def test_metrics_match_object_loops_on_a_real_crop(tile):
    truth = tile[:250, :250]
    pred = perturbed(truth)
    aji = metrics.aggregated_jaccard_index(truth, pred)
    assert 0.3 < aji < 0.9
    assert aji == pytest.approx(reference_aji(truth, pred), rel=1e-12)
    f1 = metrics.object_f1(truth, pred)
    ious = []
    for g in np.unique(truth[truth > 0]):
        gm = truth == g
        for s in np.unique(pred[gm & (pred > 0)]):
            sm = pred == s
            iou = (gm & sm).sum() / (gm | sm).sum()
            if iou > 0.5:
                ious.append(iou)
    assert f1["tp"] == len(ious)
    assert f1["fn"] == len(np.unique(truth)) - 1 - len(ious)
    assert metrics.panoptic_quality(truth, pred)["sq"] == pytest.approx(np.mean(ious))


def test_evaluate_whole_tile_is_fast(tile):
    pred = perturbed(tile)
    start = time.perf_counter()
    scores = metrics.evaluate(tile, pred)
    assert time.perf_counter() - start < 3.0
    assert scores["pq"] == pytest.approx(scores["dq"] * scores["sq"])
    assert 0.1 < scores["aji"] < scores["dice"] < 1.0
    perfect = metrics.evaluate(tile, tile)
    assert all(v == 1.0 for k, v in perfect.items() if k in ("dice", "aji", "f1", "pq"))


def test_changed_regions_marks_what_a_correction_changed(tile):
    """A model missed a nucleus, merged two and found one the user erased: those are marked."""
    truth = tile.astype(np.int64)
    ids = [int(i) for i in np.unique(truth) if i]
    gone = ids[5]
    # the merge keeps matching the larger nucleus (IoU > 0.5): the smaller one is what changed
    small, big = sorted((ids[10], ids[11]), key=lambda i: int((truth == i).sum()))
    pred = truth.copy()
    pred[truth == gone] = 0
    pred[truth == small] = big
    added = np.zeros_like(truth, bool)
    added[:12, -12:] = truth[:12, -12:] == 0
    pred[added] = truth.max() + 1  # and found one that the user erased
    changed = metrics.changed_regions(truth, pred)
    expect = np.isin(truth, [gone, small]) | added
    assert np.array_equal(changed, expect)
    assert not metrics.changed_regions(truth, truth).any()


def test_score_images_rows_and_means(tile):
    """Per-image rows (metrics and object counts) and their means, on a real mask and a
    perturbed copy of it."""
    crop = tile[:256, :256]
    pairs = [("same", crop, crop), ("perturbed", crop, crop)]
    preds = iter([crop, perturbed(crop)])
    per = metrics.score_images(pairs, lambda _img: next(preds), digits=3)
    assert list(per) == ["same", "perturbed"]
    assert per["same"]["aji"] == per["same"]["pq"] == 1.0
    assert per["same"]["n_pred"] == per["same"]["n_true"] == len(np.unique(crop)) - 1
    direct = metrics.evaluate(crop, perturbed(crop))
    assert per["perturbed"]["aji"] == round(direct["aji"], 3) < 1.0
    assert per["perturbed"]["n_pred"] == len(np.unique(perturbed(crop))) - 1
    mean = metrics.mean_scores(per, ("aji", "dice"))
    assert mean["aji"] == pytest.approx((1.0 + per["perturbed"]["aji"]) / 2)
    assert list(mean) == ["aji", "dice"]
