"""RGB <-> optical density <-> HSD and Lab conversions, and the tissue mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_histo.core import color


@pytest.fixture(scope="module")
def all_uint8() -> torch.Tensor:
    """Every 4th value of each channel: 64^3 colours as a (64, 4096, 3) uint8 image."""
    v = torch.arange(0, 256, 4, dtype=torch.uint8)
    r, g, b = torch.meshgrid(v, v, v, indexing="ij")
    return torch.stack((r, g, b), -1).reshape(64, 4096, 3)


def test_od_known_values():
    rgb = torch.tensor([[255, 255, 255], [0, 0, 0], [127, 63, 31]], dtype=torch.uint8)
    od = color.rgb_to_od(rgb)
    assert torch.allclose(od[0], torch.zeros(3))
    assert torch.allclose(od[1], torch.full((3,), math.log(256.0)))
    expected = -np.log((np.array([127, 63, 31]) + 1) / 256)
    assert np.allclose(od[2].numpy(), expected, atol=1e-6)
    # uint8 (lookup table) and float input agree.
    assert torch.allclose(color.rgb_to_od(rgb.float()), od, atol=1e-6)


def test_od_and_hsd_round_trips_are_exact(all_uint8):
    od = color.rgb_to_od(all_uint8)
    assert torch.equal(color.to_uint8(color.od_to_rgb(od)), all_uint8)
    hsd = color.od_to_hsd(od)
    assert torch.allclose(color.hsd_to_od(hsd), od, atol=1e-5)
    assert torch.equal(color.to_uint8(color.hsd_to_rgb(hsd)), all_uint8)


def test_hsd_matches_the_paper_above_the_density_floor():
    od = torch.tensor([[0.9, 1.2, 0.6], [0.2, 0.5, 0.3]])
    d = od.mean(-1)
    cx = od[:, 0] / d - 1
    cy = (od[:, 1] - od[:, 2]) / (math.sqrt(3) * d)
    hsd = color.od_to_hsd(od)
    assert torch.allclose(hsd, torch.stack((d, cx, cy), -1), atol=1e-6)
    # White is neutral (no chroma), not a corner of the chroma triangle.
    assert torch.allclose(
        color.rgb_to_hsd(torch.tensor([255, 255, 255], dtype=torch.uint8)), torch.zeros(3)
    )


def test_hsd_is_batched_and_keeps_shape():
    x = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    assert color.rgb_to_hsd(x).shape == (2, 5, 7, 3)
    one = color.rgb_to_hsd(x[1])
    assert torch.allclose(color.rgb_to_hsd(x)[1], one)


def test_lab_known_values_and_round_trip(all_uint8):
    lab = color.rgb_to_lab(
        torch.tensor([[255, 255, 255], [0, 0, 0], [255, 0, 0]], dtype=torch.uint8)
    )
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=0.05)
    assert torch.allclose(lab[1], torch.zeros(3), atol=0.05)
    # sRGB red: L* 53.24, a* 80.09, b* 67.20 (CIE D65).
    assert torch.allclose(lab[2], torch.tensor([53.24, 80.09, 67.20]), atol=0.1)
    back = color.to_uint8(color.lab_to_rgb(color.rgb_to_lab(all_uint8)))
    assert int((back.int() - all_uint8.int()).abs().max()) <= 1


def test_to_uint8_rounds_clips_and_removes_nan():
    x = torch.tensor([-3.0, 0.4, 0.6, 254.5, 300.0, float("nan")])
    assert color.to_uint8(x).tolist() == [0, 0, 1, 255, 255, 255]


def test_tissue_mask_on_real_tiles(monuseg, bad_inputs):
    from napari_histo.core.io import read_image

    tile = torch.from_numpy(read_image(sorted((monuseg / "images").glob("*.png"))[3]).copy())
    frac = float(color.tissue_mask(tile).float().mean())
    assert 0.8 < frac < 1.0
    for name in ("blank_white.png", "all_black.png"):
        assert not color.tissue_mask(torch.from_numpy(read_image(bad_inputs / name).copy())).any()
    pen = torch.from_numpy(read_image(bad_inputs / "pen_mark_green.png").copy())
    green = pen[..., 1].int() > pen[..., 0].int() + 10
    assert green.float().mean() > 0.1  # the marker is there...
    assert not (color.tissue_mask(pen) & green).any()  # ...and never counts as tissue
