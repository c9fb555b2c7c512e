"""Tiled prediction: padding, coverage, blending, small and thin images, progress, cancel."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_histo.core.errors import HistoError
from napari_histo.core.progress import drain
from napari_histo.core.tiling import (
    TileSpec,
    axis_starts,
    blend_ramp,
    plan_tiles,
    predict_tiled_iter,
)


class Recorder:
    """A pointwise predictor (maps = the pixel values) that records the batch shapes it saw."""

    def __init__(self, multiple: int = 1):
        self.multiple = multiple
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.shapes.append(batch.shape)
        assert batch.dtype == np.uint8 and batch.ndim == 4 and batch.shape[-1] == 3
        assert batch.shape[1] % self.multiple == 0 and batch.shape[2] % self.multiple == 0
        f = batch.astype(np.float32).transpose(0, 3, 1, 2)
        return {"rgb": f, "gray": f.mean(axis=1, keepdims=True)}


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(1, 1), (3, 1000), (1000, 3), (64, 64), (100, 230), (257, 300)])
def test_pointwise_prediction_is_reproduced_exactly(shape):
    img = _image(*shape)
    rec = Recorder(multiple=16)
    maps = drain(predict_tiled_iter(img, rec, TileSpec(tile=64, overlap=16, batch=3), 16))
    assert maps["rgb"].shape == (3, *shape)
    assert maps["gray"].shape == (1, *shape)
    np.testing.assert_allclose(maps["rgb"], img.transpose(2, 0, 1).astype(np.float32), atol=1e-3)
    assert all(s[1] <= 64 and s[2] <= 64 for s in rec.shapes)


def test_tiles_cover_the_padded_image_with_overlap():
    (top, bottom, left, right), (th, tw), ys, xs = plan_tiles((300, 200), TileSpec(128, 32), 16)
    assert (th, tw) == (128, 128)
    assert top == left == 16
    ph, pw = 300 + top + bottom, 200 + left + right
    assert ys[0] == 0 and ys[-1] + th == ph and xs[-1] + tw == pw
    assert all(b - a <= th - 32 for a, b in itertools.pairwise(ys))


def test_balanced_tiles_share_only_the_overlap_and_do_less_work():
    """``balance`` shrinks the tiles so neighbours share about ``overlap`` pixels, instead of the
    last tile overlapping its neighbour by up to a whole tile: a 1152 px slide window is 9 tiles
    of 416 (1.56 Mpx through the network) instead of 9 of 512 (2.36 Mpx)."""
    for n in (1000, 1152, 300, 513, 2000):
        plain = plan_tiles((n, n), TileSpec(512, 32), 16)
        (top, bottom, _, _), (th, tw), ys, xs = plan_tiles((n, n), TileSpec(512, 32, 1, True), 16)
        assert th == tw and th % 16 == 0 and th <= 512 and len(ys) == len(plain[2])
        assert ys[0] == 0 and ys[-1] + th == n + top + bottom
        shared = [th - (b - a) for a, b in itertools.pairwise(ys)]
        assert all(s >= 32 for s in shared)  # the overlap, plus the rounding to 16 px:
        assert sum(shared) <= 32 * len(shared) + 16 * len(ys)
        assert len(ys) ** 2 * th * tw <= len(plain[2]) ** 2 * plain[1][0] * plain[1][1]
    assert plan_tiles((1152, 1152), TileSpec(512, 32, 1, True), 16)[1] == (416, 416)


@pytest.mark.parametrize("shape", [(1, 1), (100, 230), (257, 300), (1000, 3)])
def test_balanced_tiling_reproduces_pointwise_prediction_exactly(shape):
    img = _image(*shape)
    rec = Recorder(multiple=16)
    maps = drain(predict_tiled_iter(img, rec, TileSpec(64, 16, 3, balance=True), 16))
    np.testing.assert_allclose(maps["rgb"], img.transpose(2, 0, 1).astype(np.float32), atol=1e-3)
    assert all(s[1] <= 64 and s[2] <= 64 and s[1] % 16 == 0 for s in rec.shapes)


def test_small_image_is_one_tile_padded_to_the_size_multiple():
    (top, bottom, left, right), (th, tw), ys, xs = plan_tiles((5, 40), TileSpec(256, 32), 16)
    assert ys == [0] and xs == [0]
    assert th % 16 == 0 and tw % 16 == 0 and th >= 5 + 32 and tw >= 40 + 32
    assert top + 5 + bottom == th and left + 40 + right == tw


def test_blend_ramp_is_positive_symmetric_and_flat_in_the_middle():
    w = blend_ramp(64, 16)
    assert (w > 0).all() and w.max() == 1.0
    np.testing.assert_allclose(w, w[::-1])
    assert (w[16:48] == 1.0).all() and w[0] < 0.05
    assert (blend_ramp(10, 0) == 1).all()


def test_axis_starts_end_at_the_border():
    assert axis_starts(100, 128, 96) == [0]
    assert axis_starts(300, 128, 96) == [0, 96, 172]


def test_blending_smooths_disagreeing_tiles():
    """A predictor whose output depends on the tile (a seam) is blended without a jump."""
    calls = iter(range(1000))

    def by_tile(batch):
        return {"m": np.stack([np.full((1, *b.shape[:2]), float(next(calls))) for b in batch])}

    img = _image(50, 400)  # one row of tiles
    maps = drain(predict_tiled_iter(img, by_tile, TileSpec(tile=128, overlap=64, batch=1)))["m"][0]
    row = maps[25]
    assert np.abs(np.diff(row)).max() < 0.2  # smooth (a hard seam would jump by 1)
    assert row[0] == 0.0 and row[-1] > row[0]


def test_progress_per_batch_and_cancel():
    img = _image(300, 300)
    rec = Recorder()
    gen = predict_tiled_iter(img, rec, TileSpec(tile=64, overlap=16, batch=2))
    first = next(gen)
    assert first.stage == "tile" and first.step == 2 and first.total > 4
    gen.close()  # cancel between two batches
    assert len(rec.shapes) == 1

    rec = Recorder()
    events = []
    drain(predict_tiled_iter(img, rec, TileSpec(tile=64, overlap=16, batch=2)), events.append)
    assert events[-1].step == events[-1].total == sum(s[0] for s in rec.shapes)
    assert len(events) == len(rec.shapes)


@pytest.mark.parametrize("kw", [{"tile": 4}, {"tile": 64, "overlap": 40}, {"batch": 0}])
def test_invalid_tile_spec_is_refused(kw):
    with pytest.raises(HistoError):
        TileSpec(**kw)


def test_wrong_map_shape_is_a_clear_error():
    def bad(batch):
        return {"m": np.zeros((batch.shape[0], 1, 3, 3), np.float32)}

    with pytest.raises(HistoError, match="map 'm'"):
        drain(predict_tiled_iter(_image(50, 50), bad, TileSpec(tile=32, overlap=8)))
