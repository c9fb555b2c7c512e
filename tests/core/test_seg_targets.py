"""Training targets, post-processing and losses of the segmentation models."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from napari_histo.core.io import read_labels
from napari_histo.core.seg import metrics, postprocess, targets


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


def spec_targets(arch: str, lab: np.ndarray) -> dict[str, np.ndarray]:
    from napari_histo.core.seg.spec import get_arch

    return get_arch(arch).make_targets(lab)


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


def qu_training_encoding(lab: np.ndarray) -> np.ndarray:
    """Qu et al.'s training targets, step by step with skimage as they do (an independent check).

    ``prepare_data.py`` keeps the union of the nuclei each eroded; their ``LabelEncoding(1)``
    then marks its dilation minus its erosion (by ``disk(1)``) as boundary, the rest as inside.
    """
    from skimage import morphology

    inside = np.zeros(lab.shape, bool)
    for i in np.unique(lab)[1:]:
        inside |= morphology.erosion(lab == i)
    enc = inside.astype(np.int64)
    ring = morphology.dilation(inside) & ~morphology.erosion(inside, morphology.disk(1))
    enc[ring] = 2
    return enc


def test_fullnet_targets_are_qu_training_encoding(tile_labels):
    lab = tile_labels[:300, :300]
    np.testing.assert_array_equal(targets.fullnet_ternary_labels(lab), qu_training_encoding(lab))
    ter = targets.fullnet_ternary_labels(two_touching_squares())
    # 10x10 squares: a 6x6 inside each; the boundary is the two outer rings but the 4 corners
    # (an opening removes them), all inside the squares: 4 boundary columns between them.
    assert (ter == 1).sum() == 2 * 36
    assert (ter == 2).sum() == 2 * (100 - 36 - 4)
    assert not ((ter > 0) & (two_touching_squares() == 0)).any()
    assert (ter[7:13, 11:15] == 2).all()


def test_qu_inference_inverts_qu_targets_only(tile_labels):
    lab = tile_labels[:500, :500]
    inst, conf = postprocess.instances_from_inside(
        one_hot(targets.fullnet_ternary_labels(lab)), min_size=20, radius=2
    )
    assert inst.dtype == np.uint32 and conf.dtype == np.float32
    # Fully confident but where the disk claims pixels the targets call background (corners).
    assert (conf == 1.0).mean() > 0.99
    # Measured 0.975 (nuclei under 20 px once eroded twice are lost, as in Qu et al.).
    assert metrics.aggregated_jaccard_index(lab, inst) > 0.96
    # On targets whose inside is eroded once, the radius-2 dilation grows every nucleus by 1 px.
    wrong, _ = postprocess.instances_from_inside(one_hot(targets.ternary_labels(lab)))
    assert metrics.aggregated_jaccard_index(lab, wrong) < 0.9


def test_inside_inference_small_objects_and_overlaps():
    probs = np.zeros((3, 20, 40), np.float32)
    probs[0] = 1
    probs[:, 5:10, 5:10] = [[[0]], [[1]], [[0]]]  # 25 px inside
    probs[:, 5:9, 25:29] = [[[0]], [[1]], [[0]]]  # 16 px: removed before growing
    probs[:, 5:10, 12:17] = [[[0]], [[1]], [[0]]]  # 2 px from the first: the gap is shared
    inst, _ = postprocess.instances_from_inside(probs, min_size=20, radius=2)
    assert inst.max() == 2 and inst[5:10, 25:29].max() == 0
    assert inst[7, 10] == inst[7, 7] and inst[7, 11] == inst[7, 14] != inst[7, 7]
    assert (inst[7] > 0).sum() == 16  # columns 3-18: each object grows by 2 px


def test_variance_groups_hold_no_boundary_pixel():
    lab = two_touching_squares()
    ter = targets.fullnet_ternary_labels(lab)
    groups = targets.variance_groups(ter)
    assert groups.dtype == np.int64 and groups.max() == 2
    np.testing.assert_array_equal(groups > 0, ter == targets.INSIDE)
    for g in (1, 2):
        assert len(np.unique(lab[groups == g])) == 1  # each group inside one nucleus
    # Inside pixels touching by a corner are one group (8-connectivity, as skimage's label).
    diag = np.zeros((6, 6), np.int64)
    diag[1, 1] = diag[2, 2] = 1
    assert targets.variance_groups(diag).max() == 1


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


def _with_square_specks(lab: np.ndarray, side: int, n: int = 10):
    """``lab`` with up to ``n`` new side x side square objects at least 4 px from any nucleus:
    (labels with the specks, the specks alone, their corners)."""
    specks = np.zeros_like(lab)
    spots = [(y, x) for y in range(8, 990, 60) for x in range(8, 990, 60)]
    reach = side + 4
    spots = [(y, x) for y, x in spots if not lab[y - 4 : y + reach, x - 4 : x + reach].any()][:n]
    for k, (y, x) in enumerate(spots, start=1):
        specks[y : y + side, x : x + side] = lab.max() + k
    return np.where(specks > 0, specks, lab), specks, spots


def test_hover_targets_recover_tile(tile_labels):
    hv = targets.hv_maps(tile_labels)
    inst, conf = postprocess.instances_from_hover((tile_labels > 0).astype(np.float32), hv)
    assert inst.dtype == np.uint32 and conf.shape == tile_labels.shape
    scores = metrics.evaluate(tile_labels, inst)
    assert scores["aji"] > 0.98 and scores["pq"] > 0.98
    # Specks of 49 px far from any nucleus (the smallest squares HoVer-Net's markers keep): a
    # fixed 10 px keeps them, 0.3 x the median nucleus (254 px here) drops them.
    lab = np.asarray(tile_labels).astype(np.int32)
    with_specks, specks, spots = _with_square_specks(lab, 7)
    prob, hv = (with_specks > 0).astype(np.float32), targets.hv_maps(with_specks)
    fixed, _ = postprocess.instances_from_hover(prob, hv)
    rel, _ = postprocess.instances_from_hover(prob, hv, relative_min_size=0.3)
    assert len(spots) >= 5 and fixed[specks > 0].all() and not rel[specks > 0].any()
    assert rel.max() >= 0.95 * (len(np.unique(lab)) - 1)  # the small true nuclei mostly stay


def test_the_relative_threshold_is_capped_unless_a_card_raises_the_cap(tile_labels):
    """Specks of 81 px are under 0.4 x the median nucleus (254 px here), but over the 60 px cap
    that the relative threshold keeps by default; a card's ``relative_cap`` of 130 drops them."""
    from napari_histo.core.seg.registry import with_inference_settings
    from napari_histo.core.seg.spec import get_arch

    lab = np.asarray(tile_labels).astype(np.int32)
    with_specks, specks, spots = _with_square_specks(lab, 9)
    maps = {"np": (with_specks > 0).astype(np.float32), "hv": targets.hv_maps(with_specks)}
    hover = with_inference_settings(get_arch("hovernet"), {"relative_min_size": 0.4})
    capped, _ = hover.instances(maps)
    raised, _ = with_inference_settings(hover, {"relative_cap": 130}).instances(maps)
    assert len(spots) >= 5 and capped[specks > 0].all() and not raised[specks > 0].any()
    assert raised.max() >= 0.9 * (len(np.unique(lab)) - 1)  # the true nuclei mostly stay


def test_a_card_sets_the_hovernet_post_processing(tile_labels):
    """The card's fg_threshold / marker_threshold / hv_sigma reach HoVer-Net's watershed."""
    from napari_histo.core.seg.registry import with_inference_settings
    from napari_histo.core.seg.spec import get_arch

    hover = get_arch("hovernet")
    maps = {
        "np": 0.7 * (tile_labels > 0)[None].astype(np.float32),
        "hv": targets.hv_maps(tile_labels),
    }
    n_true = len(np.unique(tile_labels)) - 1
    assert hover.instances(maps)[0].max() >= 0.95 * n_true
    strict = with_inference_settings(hover, {"fg_threshold": 0.8, "hv_sigma": 1.0})
    assert (strict.fg_threshold, strict.hv_sigma, strict.marker_threshold) == (0.8, 1.0, 0.4)
    assert strict.instances(maps)[0].max() == 0  # the foreground is under 0.8 everywhere
    no_markers = with_inference_settings(hover, {"marker_threshold": 0.0})
    assert no_markers.instances(maps)[0].max() == 0
    assert (hover.fg_threshold, hover.marker_threshold, hover.hv_sigma) == (0.5, 0.4, 2.0)


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


def test_fast_mask_helpers_match_scipy_and_skimage(tile_labels):
    """The lookup-table versions give exactly what scipy and relabel_sequential give."""
    from skimage.segmentation import relabel_sequential

    fg = tile_labels > 0
    # Nuclei with holes punched in them, some touching the image border (not holes then).
    holed = fg & ~ndi.binary_erosion(fg, iterations=2) | (ndi.distance_transform_edt(fg) > 5)
    assert not np.array_equal(ndi.binary_fill_holes(holed), holed)
    np.testing.assert_array_equal(postprocess.fill_mask_holes(holed), ndi.binary_fill_holes(holed))
    np.testing.assert_array_equal(postprocess.fill_mask_holes(~fg), ndi.binary_fill_holes(~fg))
    parts, _ = ndi.label(holed)
    sizes = np.bincount(parts.ravel())
    for min_size in (1, 30, 200):
        small = sizes < min_size
        small[0] = False
        expected = relabel_sequential(np.where(small[parts], 0, parts))[0]
        got = postprocess.remove_small(parts, min_size)
        assert got.dtype == np.uint32 and got.max() == (~small[1:] & (sizes[1:] > 0)).sum()
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(postprocess.without_small(parts, min_size), expected > 0)


class TestLosses:
    import torch

    def test_var_ce_matches_reference_loop(self):
        torch = self.torch
        from skimage.measure import label

        from napari_histo.core.seg.losses import instance_variance, var_ce_loss

        g = torch.Generator().manual_seed(0)
        probs = torch.rand(2, 3, 16, 16, generator=g).softmax(1)
        ternary = torch.randint(0, 3, (2, 16, 16), generator=g)
        ternary[1] = 0
        ternary[1, :3, :3] = 1
        ternary[1, 10, 10] = 1  # a one-pixel group: counted, zero variance
        # Qu et al.'s LossVariance: groups = connected components of target == inside.
        expected = 0.0
        for k in range(2):
            comp = torch.from_numpy(label(ternary[k].numpy() == 1))
            ids = [v for v in comp.unique().tolist() if v]
            total = sum(
                probs[k][:, comp == v].var(dim=1).sum() for v in ids if (comp == v).sum() > 1
            )
            expected += float(total) / len(ids)
        groups = torch.from_numpy(np.stack([targets.variance_groups(t) for t in ternary.numpy()]))
        assert len(groups[0].unique()) > 3  # several groups of several sizes
        assert float(instance_variance(probs, groups)) == pytest.approx(expected / 2, rel=1e-5)
        assert float(instance_variance(probs, torch.zeros_like(groups))) == 0.0
        uniform = torch.zeros(2, 3, 16, 16)
        target = torch.zeros(2, 16, 16, dtype=torch.long)
        # Constant logits: CE = log(3), zero variance.
        assert float(var_ce_loss(uniform, target, groups)) == pytest.approx(np.log(3), rel=1e-6)

    def test_variance_term_agrees_with_the_cross_entropy(self):
        torch = self.torch
        from napari_histo.core.seg.losses import instance_variance

        # A perfect prediction of FullNet's targets: no variance within Qu's groups, whereas
        # grouping whole nuclei (inside + boundary ring) would penalize the boundary ring.
        lab = two_touching_squares()
        made = spec_targets("fullnet", lab)
        perfect = torch.from_numpy(one_hot(made["ternary"]))[None]
        groups = torch.from_numpy(made["groups"])[None]
        assert float(instance_variance(perfect, groups)) == 0.0
        whole_nuclei = torch.from_numpy(lab.astype(np.int64))[None]
        assert float(instance_variance(perfect, whole_nuclei)) > 0.3

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


def test_relative_min_size_follows_the_magnification(tile_labels):
    """Debris under 0.3 x the median nucleus goes; at half the scale (a 20x scan) the smaller
    nuclei stay, where a fixed size chosen at 40x would drop them."""
    from skimage.transform import rescale

    lab = np.asarray(tile_labels).astype(np.int32)
    debris = np.zeros_like(lab)
    free = [
        (y, x)
        for y in range(5, 995, 50)
        for x in range(5, 995, 50)
        if not lab[y - 3 : y + 5, x - 3 : x + 5].any()
    ]
    for y, x in free[:20]:
        debris[y : y + 3, x : x + 4] = 1  # 12 px specks, far from any nucleus
    probs = one_hot(
        targets.ternary_labels(lab + (debris > 0) * (lab.max() + 1 + ndi.label(debris)[0]))
    )
    median = np.median(np.bincount(lab.ravel())[1:][np.bincount(lab.ravel())[1:] > 0])
    assert 0.3 * median > 12  # the specks are debris for the relative rule
    fixed, _ = postprocess.instances_from_ternary(probs, min_size=10)
    rel, _ = postprocess.instances_from_ternary(probs, min_size=10, relative_min_size=0.3)
    specks = ndi.label(debris)[0]
    assert len(free) >= 10 and specks.max() == min(20, len(free))
    kept = fixed[debris > 0]
    assert kept.all() and np.unique(kept).size == specks.max()  # a fixed 10 px keeps them
    assert not rel[debris > 0].any()  # the relative rule drops every speck
    n_true = len(np.unique(lab)) - 1
    assert rel.max() >= 0.97 * n_true  # and at most a few true nuclei (cut by the tile edge)

    half = rescale(lab, 0.5, order=0, anti_aliasing=False, preserve_range=True).astype(np.int32)
    probs = one_hot(targets.ternary_labels(half))
    at20_fixed, _ = postprocess.instances_from_ternary(probs, min_size=60)
    at20_rel, _ = postprocess.instances_from_ternary(probs, min_size=10, relative_min_size=0.3)
    assert (
        metrics.aggregated_jaccard_index(half, at20_rel)
        > metrics.aggregated_jaccard_index(half, at20_fixed) + 0.02
    )
