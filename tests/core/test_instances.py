"""Instance models: detections painted by score, multiple inference merged as instance sets."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histo.core.io import read_image
from napari_histo.core.seg.inference import DIHEDRAL_8
from napari_histo.core.seg.instances import (
    Detections,
    detect_with_tta,
    invert_detections,
    merge_variants,
    paint_by_score,
)
from napari_histo.core.seg.metrics import aggregated_jaccard_index

TILE = "TCGA-CH-5767-01Z-00-DX1"


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float32)


def test_overlaps_go_to_the_highest_score():
    a, b = _disk((40, 40), 20, 15, 8), _disk((40, 40), 20, 25, 8)
    labels, conf = paint_by_score(Detections(np.stack([a, b]), np.array([0.6, 0.9])))
    assert labels[20, 20] == 1  # b (score 0.9) gets id 1 and the shared pixels
    assert labels[20, 9] == 2 and conf[20, 20] == pytest.approx(0.9)
    low = paint_by_score(Detections(np.stack([a, b]), np.array([0.3, 0.9])), score_threshold=0.5)[0]
    assert set(np.unique(low)) == {0, 1}  # under the score threshold: dropped


def test_merge_keeps_what_a_majority_found_and_averages_it():
    a, b, spur = _disk((40, 40), 12, 12, 6), _disk((40, 40), 28, 28, 6), _disk((40, 40), 5, 34, 3)
    shifted = np.roll(a, 1, axis=1)
    variants = [
        Detections(np.stack([a, b]), [0.9, 0.8]),
        Detections(np.stack([shifted, b]), [0.7, 0.8]),
        Detections(np.stack([a, b, spur]), [0.9, 0.6, 0.95]),  # one variant's false positive
    ]
    merged = merge_variants(variants)
    assert len(merged) == 2
    order = np.argsort(-merged.scores)
    assert merged.scores[order[0]] == pytest.approx((0.9 + 0.7 + 0.9) / 3)
    assert merged.masks[order[0]].max() == pytest.approx(1.0)
    assert 0 < merged.masks[order[0]][12, 6] < 1  # the column only two variants covered
    assert len(merge_variants(variants, min_votes=1)) == 3


def _threshold_detector(rgb: np.ndarray) -> Detections:
    """A deterministic stand-in detector: haematoxylin components as masks, size as score."""
    from scipy import ndimage
    from skimage.color import rgb2hed

    lab, n = ndimage.label(ndimage.binary_opening(rgb2hed(rgb)[..., 0] > 0.06))
    masks = np.stack([(lab == i).astype(np.float32) for i in range(1, n + 1)])
    return Detections(masks, np.clip(masks.sum((1, 2)) / 400.0, 0.5, 1.0))


def test_multiple_inference_undoes_each_transform(monuseg):
    img = read_image(monuseg / "images" / f"{TILE}.png")[300:428, 200:360]
    single = paint_by_score(_threshold_detector(img))[0]
    merged = paint_by_score(detect_with_tta(_threshold_detector, img, DIHEDRAL_8))[0]
    # The stand-in is equivariant: every transform, turned back, finds the same nuclei.
    assert single.max() > 10 and aggregated_jaccard_index(single, merged) > 0.99
    k, flip = 1, True
    x = np.ascontiguousarray(np.rot90(img[:, ::-1], k))
    back = invert_detections(_threshold_detector(x), k, flip)
    assert back.masks.shape[1:] == img.shape[:2]


@pytest.mark.slow
def test_mask_rcnn_segments_as_instances(monuseg):
    """An (untrained) Mask R-CNN goes through the instance path: labels of the image's size,
    windows stitched by ownership, multiple inference merged, nothing raised."""
    import torch

    from napari_histo.core.progress import drain
    from napari_histo.core.seg.inference import segment_iter
    from napari_histo.core.seg.registry import LoadedModel
    from napari_histo.core.seg.spec import get_arch

    spec = get_arch("maskrcnn")
    torch.manual_seed(0)
    net = spec.build(fpn_channels=32, head_width=64, detections_per_img=30).eval()
    model = LoadedModel(net=net, spec=spec, device=torch.device("cpu"), name="maskrcnn")
    img = read_image(monuseg / "images" / f"{TILE}.png")[:96, :500]  # wider than one window
    res = drain(segment_iter(img, model, tta=4))
    assert res.labels.shape == img.shape[:2] and res.labels.dtype == np.uint32
    assert res.confidence.shape == img.shape[:2]


def test_card_inference_settings_apply_to_that_model_only(tmp_path):
    """Thresholds chosen on validation live in the card and reach the loaded model's spec."""
    import torch

    from napari_histo.core.seg import registry
    from napari_histo.core.seg.spec import get_arch

    torch.manual_seed(0)
    kwargs = {"fpn_channels": 32, "head_width": 64, "detections_per_img": 30}
    net = get_arch("maskrcnn").build(**kwargs)
    card = {"inference": {"score_threshold": 0.4, "min_votes": 2, "unknown": 1}}
    registry.save_model(tmp_path / "tuned", net, "maskrcnn", kwargs, card)
    model = registry.load_model(tmp_path / "tuned", "cpu")
    assert (model.spec.score_threshold, model.spec.min_votes) == (0.4, 2)
    assert not hasattr(model.spec, "unknown")
    assert get_arch("maskrcnn").score_threshold == 0.5  # the architecture's default is untouched
    shipped = registry.load_model("maskrcnn_jung80", "cpu")
    assert shipped.spec.min_votes == shipped.card["inference"]["min_votes"]


def test_a_card_sets_the_unet_post_processing():
    from napari_histo.core.seg.registry import with_inference_settings
    from napari_histo.core.seg.spec import get_arch

    unet = get_arch("unet")
    tuned = with_inference_settings(unet, {"min_size": 30, "relative_min_size": None})
    assert (tuned.min_size, tuned.relative_min_size) == (30, None)
    assert (unet.min_size, unet.relative_min_size) == (10, 0.3)  # the default is untouched
