"""Training targets, post-processing and losses of the segmentation models."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from napari_histo.core import metrics
from napari_histo.core.io import read_labels
from napari_histo.core.seg import postprocess, targets


@pytest.fixture(scope="module")
def fullnet_example(test_data):
    """The authors' ternary label (0 bg, 1 inside, 2 boundary) and weight map of one patch."""
    folder = test_data / "fullnet_varce_example"
    rgb = np.asarray(Image.open(folder / "labels_ternary" / "Breast_label.png"))[..., :3]
    ternary = np.zeros(rgb.shape[:2], np.int64)
    ternary[rgb[..., 0] > 127] = 1
    ternary[rgb[..., 1] > 127] = 2
    # weight_map.m writes (w + 1) * 20 / 255 as an 8-bit image.
    weight = (
        np.asarray(Image.open(folder / "weights" / "Breast_weight.png")).astype(np.float32) / 20
    )
    return ternary, weight


@pytest.fixture(scope="module")
def tile_labels(monuseg):
    return read_labels(sorted((monuseg / "masks").glob("*.tif"))[0])


def one_hot(ternary: np.ndarray) -> np.ndarray:
    return np.eye(3, dtype=np.float32)[ternary].transpose(2, 0, 1)


def two_touching_squares() -> np.ndarray:
    lab = np.zeros((20, 30), np.int32)
    lab[5:15, 3:13] = 1
    lab[5:15, 13:23] = 2
    return lab


def test_ternary_of_touching_squares():
    ter = targets.ternary_labels(two_touching_squares())
    # 10x10 squares: an 8x8 interior each, the ring of each square and the ring outside are
    # boundary, and two boundary columns separate the touching squares.
    assert (ter == 1).sum() == 2 * 64
    assert (ter[5:15, 3:23] == 2).sum() == 2 * (100 - 64)
    assert (ter[4, 3:23] == 2).all() and (ter[15, 3:23] == 2).all()
    assert (ter[6:14, 12:14] == 2).all()
    assert ter[0, 0] == 0 and ter[4, 2] == 0  # diagonal corners are not 4-neighbours
    inst, _ = postprocess.instances_from_ternary(one_hot(ter), min_size=1)
    assert inst.max() == 2
    assert metrics.aggregated_jaccard_index(two_touching_squares(), inst) == 1.0
    # Growing the 8x8 interiors by one 4-connected step restores each square but its 4 corners.
    inst, _ = postprocess.instances_from_ternary(one_hot(ter), min_size=1, grow=1)
    assert metrics.aggregated_jaccard_index(two_touching_squares(), inst) == pytest.approx(0.96)
    # Growing into all of the foreground takes the outer boundary ring too.
    inst, _ = postprocess.instances_from_ternary(one_hot(ter), min_size=1, grow=None)
    assert (inst > 0).sum() == (ter > 0).sum()


def test_half_growth_adapts_to_a_thicker_predicted_boundary(tile_labels):
    lab = tile_labels[:400, :400]
    ter = targets.ternary_labels(lab)
    inside = ter == targets.INSIDE
    thick = ter.copy()
    thick[inside & ~ndi.binary_erosion(inside, ndi.generate_binary_structure(2, 1))] = 2
    half = postprocess.instances_from_ternary(one_hot(thick))[0]
    one = postprocess.instances_from_ternary(one_hot(thick), grow=1)[0]
    aji_half = metrics.aggregated_jaccard_index(lab, half)
    assert aji_half > 0.93
    assert aji_half > metrics.aggregated_jaccard_index(lab, one) + 0.05


def test_ternary_and_weights_match_fullnet_authors(fullnet_example):
    ternary, weight = fullnet_example
    # Their instance labels are not published: recover them from their ternary label.
    inst, _ = postprocess.instances_from_ternary(one_hot(ternary), min_size=1)
    assert 25 <= inst.max() <= 40
    ours = targets.ternary_labels(inst)
    assert (ours == ternary).mean() > 0.995
    w = targets.weight_map(inst)
    assert w.dtype == np.float32 and w.min() == 1.0
    assert w.max() == pytest.approx(weight.max(), abs=0.2)  # ~1 + 10 between touching nuclei
    assert np.corrcoef(w.ravel(), weight.ravel())[0, 1] > 0.98
    # Theirs saw nuclei outside the patch (computed on the whole tile): compare the interior.
    inner = (slice(25, -25), slice(25, -25))
    assert np.abs(w[inner] - weight[inner]).mean() < 0.05


def test_weight_map_formula_between_two_discs():
    lab = np.zeros((40, 60), np.int32)
    lab[15:25, 10:20] = 1
    lab[15:25, 30:40] = 2
    w = targets.weight_map(lab, w0=10, sigma=5)
    # Column 25 is 5 pixels from both inner contours (columns 19 and 30 -> d1 = d2 = 6 and 5).
    d1, d2 = 25 - 19, 30 - 25
    assert w[20, 25] == pytest.approx(1 + 10 * np.exp(-((d1 + d2) ** 2) / 50), rel=1e-5)
    assert targets.weight_map(lab[:, :25]).max() == 1.0  # one nucleus: no boundary term
    assert targets.weight_map(np.zeros((8, 8), np.int32)).max() == 1.0


def test_hv_maps_of_a_rectangle():
    lab = np.zeros((20, 30), np.int32)
    lab[4:9, 10:21] = 7  # 5 rows x 11 columns, centroid (6, 15)
    hv = targets.hv_maps(lab)
    assert hv.shape == (2, 20, 30) and hv.dtype == np.float32
    np.testing.assert_allclose(hv[0, 6, 10:21], np.linspace(-1, 1, 11), atol=1e-6)
    np.testing.assert_allclose(hv[1, 4:9, 15], [-1, -0.5, 0, 0.5, 1], atol=1e-6)
    assert (hv[:, lab == 0] == 0).all()
    assert hv.min() == -1 and hv.max() == 1


def test_ternary_targets_recover_tiles(tile_labels):
    ter = targets.ternary_labels(tile_labels)
    inst, conf = postprocess.instances_from_ternary(one_hot(ter))
    assert inst.dtype == np.uint32 and conf.dtype == np.float32
    assert conf.min() == 1.0  # one-hot input: fully confident
    scores = metrics.evaluate(tile_labels, inst)
    assert scores["aji"] > 0.99 and scores["pq"] > 0.98


def test_hover_targets_recover_tile(tile_labels):
    hv = targets.hv_maps(tile_labels)
    inst, conf = postprocess.instances_from_hover((tile_labels > 0).astype(np.float32), hv)
    assert inst.dtype == np.uint32 and conf.shape == tile_labels.shape
    scores = metrics.evaluate(tile_labels, inst)
    assert scores["aji"] > 0.98 and scores["pq"] > 0.98


def test_ternary_postprocess_on_noisy_probabilities(tile_labels):
    rng = np.random.default_rng(0)
    lab = tile_labels[:300, :300]
    probs = one_hot(targets.ternary_labels(lab)) + rng.uniform(0, 0.6, (3, 300, 300))
    probs /= probs.sum(0, keepdims=True)
    inst, conf = postprocess.instances_from_ternary(probs.astype(np.float32))
    assert conf.min() > 0.3 and conf.max() <= 1.0
    assert metrics.aggregated_jaccard_index(lab, inst) > 0.85


def test_seed_threshold_splits_soft_boundaries():
    # Two touching squares whose shared boundary is only 0.4 likely: argmax merges them.
    lab = two_touching_squares()
    probs = one_hot(targets.ternary_labels(lab))
    soft = np.zeros(lab.shape, bool)
    soft[6:14, 12:14] = True
    probs[:, soft] = np.array([[0.0], [0.6], [0.4]], np.float32)
    assert postprocess.instances_from_ternary(probs, min_size=1)[0].max() == 1
    inst, _ = postprocess.instances_from_ternary(probs, min_size=1, seed_threshold=0.4)
    assert inst.max() == 2
    assert metrics.aggregated_jaccard_index(lab, inst) == 1.0


def test_postprocess_empty_and_small():
    probs = np.zeros((3, 32, 32), np.float32)
    probs[0] = 1
    inst, conf = postprocess.instances_from_ternary(probs)
    assert inst.max() == 0 and inst.dtype == np.uint32 and (conf == 1).all()
    probs[:, 10:12, 10:12] = [[[0]], [[1]], [[0]]]  # a 2x2 seed with no boundary around it
    assert postprocess.instances_from_ternary(probs, min_size=5)[0].max() == 0
    assert postprocess.instances_from_ternary(probs, min_size=4)[0].max() == 1
    inst, _ = postprocess.instances_from_hover(np.zeros((32, 32)), np.zeros((2, 32, 32)))
    assert inst.max() == 0
    with pytest.raises(ValueError, match="3, H, W"):
        postprocess.instances_from_ternary(np.zeros((2, 8, 8)))


def test_fill_holes():
    lab = np.zeros((9, 9), np.int64)
    lab[2:7, 2:7] = 3
    lab[4, 4] = 0
    postprocess.fill_holes(lab)
    assert lab[4, 4] == 3


class TestLosses:
    import torch

    def test_var_ce_matches_reference_loop(self):
        torch = self.torch
        from napari_histo.core.seg.losses import instance_variance, var_ce_loss

        g = torch.Generator().manual_seed(0)
        probs = torch.rand(2, 3, 16, 16, generator=g).softmax(1)
        inst = torch.randint(0, 5, (2, 16, 16), generator=g)
        inst[1] = 0
        inst[1, :3, :3] = 9
        inst[1, 10, 10] = 4  # a one-pixel instance: counted, zero variance
        expected = 0.0
        for k in range(2):
            ids = [v for v in inst[k].unique().tolist() if v]
            total = sum(
                probs[k][:, inst[k] == v].var(dim=1).sum() for v in ids if (inst[k] == v).sum() > 1
            )
            expected += float(total) / len(ids)
        assert float(instance_variance(probs, inst)) == pytest.approx(expected / 2, rel=1e-5)
        assert float(instance_variance(probs, torch.zeros_like(inst))) == 0.0
        uniform = torch.zeros(2, 3, 16, 16)
        target = torch.zeros(2, 16, 16, dtype=torch.long)
        # Constant logits: CE = log(3), zero variance.
        assert float(var_ce_loss(uniform, target, inst)) == pytest.approx(np.log(3), rel=1e-6)

    def test_weighted_ce_and_dice(self):
        torch = self.torch
        from napari_histo.core.seg.losses import dice_loss, weighted_cross_entropy

        logits = torch.zeros(1, 3, 4, 4)
        target = torch.zeros(1, 4, 4, dtype=torch.long)
        weight = torch.full((1, 4, 4), 2.0)
        assert float(weighted_cross_entropy(logits, target, weight)) == pytest.approx(2 * np.log(3))
        perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
        assert float(dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
        assert float(dice_loss(1 - perfect, target, classes=(0,))) == pytest.approx(1 - 1 / 17)

    def test_hv_loss_zero_on_target_and_gradient_term(self, tile_labels):
        torch = self.torch
        from napari_histo.core.seg.losses import hv_loss

        lab = tile_labels[:96, :96]
        hv = torch.from_numpy(targets.hv_maps(lab))[None]
        focus = torch.from_numpy(lab > 0)[None]
        assert float(hv_loss(hv, hv, focus)) == 0.0
        smooth = torch.nn.functional.avg_pool2d(hv, 5, stride=1, padding=2)
        mse_only = float(hv_loss(smooth, hv, focus, msge_weight=0.0))
        assert float(hv_loss(smooth, hv, focus)) > mse_only > 0
