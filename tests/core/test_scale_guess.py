"""Guessing the magnification of a tile without a pixel size from its nuclei (core.seg.scale)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from skimage.draw import disk
from skimage.transform import rescale

from napari_histo.core.io import read_image, read_labels
from napari_histo.core.progress import drain
from napari_histo.core.seg.metrics import aggregated_jaccard_index
from napari_histo.core.seg.scale import central_crop, guess_factor, median_area

CARD = {"scale_guess": {"area_px": 324, "max_factor": 2.0}}


def _disks(radius: int, n: int = 20) -> np.ndarray:
    lab = np.zeros((400, 400), np.int32)
    for k in range(n):
        rr, cc = disk((30 + 70 * (k // 5), 30 + 70 * (k % 5)), radius)
        lab[rr, cc] = k + 1
    return lab


def test_small_nuclei_are_enlarged_up_to_the_cap_and_large_ones_left():
    assert median_area(_disks(5)) == (69.0, 20)  # skimage's disk of radius 5
    factor, why = guess_factor(_disks(7), CARD)  # 145 px: sqrt(324 / 145) = 1.49
    assert factor == pytest.approx(1.495, abs=0.005) and "enlarged x1.49" in why
    factor, why = guess_factor(_disks(5), CARD)  # sqrt(324 / 69) = 2.17, capped at 2
    assert factor == pytest.approx(2.0) and "median nucleus 69 px²" in why
    assert guess_factor(_disks(10), CARD)[0] is None  # 305 px: within 10 % of the model's
    assert "too few" in guess_factor(_disks(5, n=5), CARD)[1]
    assert "does not guess" in guess_factor(_disks(5), {})[1]


def test_central_crop():
    img = np.arange(3000 * 2000).reshape(3000, 2000)
    crop = central_crop(img, 1024)
    assert crop.shape == (1024, 1024) and crop[0, 0] == img[988, 488]
    assert central_crop(img[:500, :600]).shape == (500, 600)


@pytest.fixture(scope="module")
def guessing_model():
    """The default model with a magnification guess on its card (a copy: the cache keeps its own)."""
    from napari_histo.core.seg.registry import load_model

    model = load_model("default", "cpu")
    return dataclasses.replace(model, card={**model.card, **CARD})


def test_a_20x_tile_is_enlarged_and_a_40x_tile_left_as_it_is(monuseg, guessing_model):
    """A real 40x tile keeps its first pass; a 2x-downsampled tile (a 20x scan without a pixel
    size) is enlarged and segmented better than as it is."""
    from napari_histo.core.seg.workflow import segment_array_iter

    def run(image, **kw):
        return drain(segment_array_iter(image, guessing_model, "cpu", False, **kw))

    img = read_image(monuseg / "images" / "TCGA-NH-A8F7-01A-01-TS1.png")[:512, :512]
    guessed = run(img, guess_scale=True)
    assert "segmented as it is" in guessed.scale
    np.testing.assert_array_equal(guessed.labels, run(img).labels)

    name = "TCGA-B0-5698-01Z-00-DX1"
    img = read_image(monuseg / "images" / f"{name}.png")
    small = np.clip(np.rint(rescale(img, 0.5, channel_axis=-1, preserve_range=True)), 0, 255)
    small = small.astype(np.uint8)
    truth = read_labels(monuseg / "masks" / f"{name}.tif")
    truth = rescale(truth, 0.5, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    events = []
    guessed = drain(
        segment_array_iter(small, guessing_model, "cpu", False, guess_scale=True), events.append
    )
    as_is = run(small)
    # The default's median nucleus there is 85 px² against the card's 324: enlarged x1.95.
    factor = re.search(r"enlarged x(\d\.\d\d)", guessed.scale)
    assert factor and float(factor[1]) >= 1.5, guessed.scale
    assert guessed.labels.shape == small.shape[:2]
    # The progress bar tells the two passes apart: the probe, then the enlarged tile.
    stages = [e.stage for e in events]
    probe = [s for s in stages if s.startswith("guessing the magnification: tile")]
    second = [s for s in stages if s.startswith(f"enlarged x{factor[1]}: tile")]
    assert probe and second and stages.index(second[0]) > stages.index(probe[-1])
    assert as_is.scale == ""
    aji_guess = aggregated_jaccard_index(truth, guessed.labels.astype(np.int32))
    aji_as_is = aggregated_jaccard_index(truth, as_is.labels.astype(np.int32))
    assert aji_guess > aji_as_is + 0.01, (aji_guess, aji_as_is)  # measured 0.606 against 0.572


def test_a_slide_without_a_pixel_size_is_guessed_once_from_its_tissue(monuseg, tmp_path):
    """A pyramidal TIFF without resolution tags: a 20x one gets a pixel size from its nuclei
    (so every window is enlarged alike), a 40x one none."""
    from napari_histo.core.io import read_slide
    from napari_histo.core.seg.registry import load_model
    from napari_histo.core.seg.workflow import model_mpp
    from napari_histo.core.slide.segment import write_pyramidal_tiff_iter
    from napari_histo.core.slide.segmenter import guess_slide_mpp_iter

    model = load_model("default", "cpu")
    img = read_image(monuseg / "images" / "TCGA-B0-5698-01Z-00-DX1.png")
    small = np.clip(np.rint(rescale(img, 0.5, channel_axis=-1, preserve_range=True)), 0, 255)
    for name, pixels, enlarged in (("20x", small.astype(np.uint8), True), ("40x", img, False)):
        path = drain(write_pyramidal_tiff_iter(pixels, tmp_path / f"{name}.tif", tile=256))
        mpp, why = drain(guess_slide_mpp_iter(read_slide(path), str(model.path), "cpu"))
        if enlarged:
            assert "enlarged x" in why and mpp > 1.5 * model_mpp(model.card), (mpp, why)
        else:
            assert mpp is None and "segmented as it is" in why, why
