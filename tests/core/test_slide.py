"""Slide-scale segmentation: tiled with halos on dask == untiled, ids unique, zarr pyramid."""

from __future__ import annotations

import numpy as np
import pytest
from slide_helpers import HALO, ThresholdSegmenter

from napari_histo.core.errors import HistoError
from napari_histo.core.io import read_image
from napari_histo.core.progress import drain
from napari_histo.core.slide.segment import (
    SlideTiling,
    open_labels_pyramid,
    segment_slide_iter,
    tissue_grid,
)


def _same_partition(a: np.ndarray, b: np.ndarray) -> None:
    """Every object of ``a`` is exactly one object of ``b`` (ids may differ), and vice versa."""
    assert np.array_equal(a > 0, b > 0)
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1], "an object was split across tiles"
    assert len(np.unique(pairs[1])) == pairs.shape[1], "two objects were merged"


@pytest.fixture(scope="module")
def tile(monuseg):
    return read_image(sorted((monuseg / "images").glob("*.png"))[0])


def test_tiled_equals_untiled(tile, tmp_path):
    seg = ThresholdSegmenter()
    image = tile[:700, :900]  # not a multiple of the tile size
    untiled = seg(image)
    result = drain(
        segment_slide_iter(
            [image], seg, tmp_path / "s.zarr", SlideTiling(tile=256, halo=HALO, min_tissue=0)
        )
    )
    levels = open_labels_pyramid(result.zarr_path)
    tiled = np.asarray(levels[0])
    assert tiled.shape == image.shape[:2] and tiled.dtype == np.uint32
    _same_partition(untiled, tiled)
    assert result.n_nuclei == len(np.unique(untiled)) - 1 > 100
    # Objects crossing block borders exist, so the seam handling was exercised.
    crossing = np.unique(np.concatenate([untiled[:, 255:257].ravel(), untiled[255:257, :].ravel()]))
    assert (crossing > 0).sum() >= 3


def test_blank_blocks_are_skipped_and_progress_reported(tile, tmp_path):
    image = np.full((600, 600, 3), 250, np.uint8)
    image[:256, :256] = tile[:256, :256]
    calls = []

    def seg(rgb):
        calls.append(rgb.shape)
        return ThresholdSegmenter()(rgb)

    grid = tissue_grid(image[::4, ::4], image.shape[:2], 256)
    assert grid[0, 0] > 0.5 and grid[2, 2] == 0
    gen = segment_slide_iter(
        [image, image[::4, ::4]], seg, tmp_path / "b.zarr", SlideTiling(tile=256, halo=HALO)
    )
    events = []
    result = drain(gen, events.append)
    assert len(calls) == result.n_tissue_blocks < result.n_blocks == 9
    assert [e.step for e in events] == list(range(1, 7)) and events[-1].total == 6
    assert not (tmp_path / ".b.zarr.partial").exists()


def test_cancel_leaves_no_output(tile, tmp_path):
    gen = segment_slide_iter(
        [tile], ThresholdSegmenter(), tmp_path / "c.zarr", SlideTiling(tile=256, halo=HALO)
    )
    next(gen)
    gen.close()
    assert not (tmp_path / "c.zarr").exists()
    assert not (tmp_path / ".c.zarr.partial").exists()


def test_pyramid_levels(tile, tmp_path):
    big = np.concatenate([tile, tile[:, ::-1]], axis=1)  # 1000 x 2000
    result = drain(
        segment_slide_iter(
            [big], ThresholdSegmenter(), tmp_path / "p.zarr", SlideTiling(tile=512, halo=HALO)
        )
    )
    levels = open_labels_pyramid(result.zarr_path)
    assert [lv.shape for lv in levels] == [(1000, 2000), (500, 1000)]
    assert np.array_equal(np.asarray(levels[1]), np.asarray(levels[0])[::2, ::2])


def test_bad_tiling():
    with pytest.raises(HistoError):
        SlideTiling(tile=64, halo=40)


@pytest.mark.slow
def test_same_result_on_a_process_cluster(tile, tmp_path):
    """The CLI's --workers path: a TIFF slide read in worker processes, same labels as local."""
    import sys

    import cloudpickle
    import tifffile

    from napari_histo.core.io import read_slide
    from napari_histo.core.slide.cluster import dask_client

    cloudpickle.register_pickle_by_value(
        sys.modules[ThresholdSegmenter.__module__]
    )  # workers cannot import test modules
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, tile[:600, :600], tile=(128, 128), photometric="rgb")
    levels = read_slide(path)
    tiling = SlideTiling(tile=256, halo=HALO, min_tissue=0)
    local = drain(segment_slide_iter(levels, ThresholdSegmenter(), tmp_path / "local.zarr", tiling))
    with dask_client(None, 2) as client:
        remote = drain(
            segment_slide_iter(
                levels, ThresholdSegmenter(), tmp_path / "remote.zarr", tiling, client=client
            )
        )
        assert len(client.scheduler_info()["workers"]) == 2
        env = client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
        assert set(env.values()) == {None}, "workers run with glibc's adaptive mmap threshold"
    a = np.asarray(open_labels_pyramid(local.zarr_path)[0])
    b = np.asarray(open_labels_pyramid(remote.zarr_path)[0])
    assert local.n_nuclei > 50 and np.array_equal(a, b)


def test_export_whole_slide_matches_per_tile_measurements(tile, tmp_path):
    import csv
    import json

    from napari_histo.core.labels.measure import measure_nuclei
    from napari_histo.core.slide.segment import export_slide_iter

    image = tile[:600, :700]
    result = drain(
        segment_slide_iter(
            [image],
            ThresholdSegmenter(),
            tmp_path / "e.zarr",
            SlideTiling(tile=256, halo=HALO, min_tissue=0),
        )
    )
    n = drain(
        export_slide_iter(result.zarr_path, image, tmp_path / "e.geojson", tmp_path / "e.csv")
    )
    assert n == result.n_nuclei
    labels = np.asarray(open_labels_pyramid(result.zarr_path)[0])
    direct = measure_nuclei(labels, image)
    rows = sorted(csv.DictReader((tmp_path / "e.csv").open()), key=lambda r: int(r["label"]))
    assert [int(r["label"]) for r in rows] == direct["label"].tolist()
    assert [float(r["area"]) for r in rows] == direct["area"].tolist()
    cy = np.array([float(r["centroid_y"]) for r in rows])
    assert np.allclose(cy, direct["centroid_y"], atol=1e-3)
    # Every nucleus gets exactly one polygon. label_polygons can only outline objects of two or
    # more pixels (a lone pixel's contour simplifies to fewer than 4 points and is skipped); the
    # segmenter's binary opening leaves none, so no polygon may go missing.
    assert direct["area"].min() >= 2
    features = json.loads((tmp_path / "e.geojson").read_text())["features"]
    assert sorted(f["properties"]["label"] for f in features) == direct["label"].tolist()


def test_pyramidal_tiff_writer_roundtrip(tile, tmp_path):
    from napari_histo.core.io import read_slide
    from napari_histo.core.slide.segment import write_pyramidal_tiff_iter

    big = np.concatenate([tile, tile], axis=0)[:, :900]  # 2000 x 900
    out = drain(write_pyramidal_tiff_iter(big, tmp_path / "n.tif", tile=256))
    levels = read_slide(out)
    assert [lv.shape[:2] for lv in levels] == [(2000, 900), (1000, 450)]
    assert np.array_equal(np.asarray(levels[0]), big)
    # Level 1 is the rounded mean of each 2 x 2 block, not every other pixel.
    mean = big.reshape(1000, 2, 450, 2, 3).astype(np.float32).mean(axis=(1, 3))
    assert np.array_equal(np.asarray(levels[1]), np.round(mean).astype(np.uint8))


def test_full_disk_is_one_clear_error_and_no_result(tile, tmp_path, monkeypatch):
    import errno

    import zarr.storage._local as local

    real = local._put
    calls = {"n": 0}

    def put(path, value, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 6:  # the disk fills up part-way through writing
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, value, *args, **kwargs)

    monkeypatch.setattr(local, "_put", put)
    tiling = SlideTiling(tile=256, halo=HALO, min_tissue=0)
    with pytest.raises(HistoError, match="disk is full"):
        drain(
            segment_slide_iter(
                [tile[:600, :600]], ThresholdSegmenter(), tmp_path / "f.zarr", tiling
            )
        )
    assert calls["n"] > 6
    assert list(tmp_path.iterdir()) == [], "a partial result was left looking like a result"


def test_tissue_mask_keeps_tissue_and_drops_dust_and_marker(tile):
    """dask-image smoothing + opening: isolated dark specks on glass are not tissue, black
    marker is not tissue, real tissue is."""
    from napari_histo.core.slide.segment import tissue_mask

    glass = np.full((300, 300, 3), 245, np.uint8)
    glass[50:150, 50:150] = tile[:100, :100]  # real H&E
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(200, 300, 20), rng.integers(0, 300, 20)
    glass[ys, xs] = (90, 40, 90)  # single dark specks (dust)
    glass[160:190, 200:290] = 0  # black marker
    mask = np.asarray(tissue_mask(glass))
    assert mask[60:140, 60:140].mean() > 0.8  # lumen and fat in the crop are glass-bright
    assert not mask[ys, xs].any()
    assert not mask[165:185, 205:285].any()


def test_in_memory_blocks_equal_the_slide_path(tile, tmp_path):
    """One block engine: an in-memory image larger than a block gets exactly the slide's labels."""
    from napari_histo.core.tiling import BlockTiling, segment_blocks_iter

    image = np.concatenate([tile, tile[:, ::-1]], axis=1)[:700, :1500]
    seg = ThresholdSegmenter()
    tiling = BlockTiling(tile=512, halo=HALO, min_tissue=0)
    mem, _ = drain(segment_blocks_iter(image, lambda w: (seg(w), {}), tiling))
    res = drain(segment_slide_iter([image], seg, tmp_path / "m.zarr", tiling))
    slide = np.asarray(open_labels_pyramid(res.zarr_path)[0])
    assert mem.shape == image.shape[:2] and mem.max() > 0
    assert np.array_equal(mem, slide)


@pytest.mark.slow
def test_shipped_model_in_memory_and_as_a_slide_agree(monuseg, tmp_path):
    """The shipped UNet on a 1300 x 1300 mosaic of real tiles: the in-memory path and the
    whole-slide path (pyramidal TIFF, local threads) give the same nuclei (AJI >= 0.99)."""
    from napari_histo.core.io import read_slide
    from napari_histo.core.seg.metrics import aggregated_jaccard_index
    from napari_histo.core.seg.registry import load_model
    from napari_histo.core.seg.workflow import segment_array_iter
    from napari_histo.core.slide.segment import write_pyramidal_tiff_iter
    from napari_histo.core.slide.segmenter import ModelSegmenter

    names = sorted((monuseg / "images").glob("*.png"))[:4]
    tiles = [read_image(p)[:650, :650] for p in names]
    mosaic = np.concatenate(
        [np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0
    )
    model = load_model("default", "cpu")
    mem = drain(segment_array_iter(mosaic, model, "cpu")).labels
    path = drain(write_pyramidal_tiff_iter(mosaic, tmp_path / "mosaic.tif", tile=256))
    res = drain(
        segment_slide_iter(
            read_slide(path), ModelSegmenter(str(model.path), "cpu"), tmp_path / "m.zarr"
        )
    )
    slide = np.asarray(open_labels_pyramid(res.zarr_path)[0])
    assert len(np.unique(mem)) > 500
    assert aggregated_jaccard_index(mem, slide) >= 0.99


def test_slide_windows_are_resampled_to_the_model_pixel_size(tile):
    """A slide's pixel size reaches the window segmenter: a 0.5 um/px window is segmented as
    ``segment`` segments a 0.5 um/px tile (enlarged 2x for the 0.25 um/px default), not as is."""
    from napari_histo.core.seg.registry import load_model
    from napari_histo.core.seg.workflow import model_mpp, segment_array_iter
    from napari_histo.core.slide.segmenter import ModelSegmenter

    window = tile[:300, :300]
    model = load_model("default", "cpu")
    mpp = 2 * model_mpp(model.card)
    want = drain(segment_array_iter(window, model, "cpu", False, blocks=None, mpp=mpp)).labels
    as_is = drain(segment_array_iter(window, model, "cpu", False, blocks=None)).labels
    got = ModelSegmenter(str(model.path), "cpu", False, mpp)(window)
    _same_partition(got, want)
    assert not np.array_equal(got > 0, as_is > 0)
