"""Measurements table, GeoJSON polygons and CSV export on real MoNuSeg nuclei."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from skimage.draw import disk

from napari_histo.core.io import read_image, read_labels
from napari_histo.core.labels.export import label_polygons, nuclei_geojson, write_csv, write_geojson
from napari_histo.core.labels.measure import COLUMNS, measure_nuclei


def _two_disks():
    lab = np.zeros((60, 80), np.int32)
    lab[disk((20, 20), 8)] = 1
    lab[disk((40, 55), 12)] = 7
    return lab


def test_measurements_of_known_shapes():
    t = measure_nuclei(_two_disks(), offset=(100, 1000))
    assert list(t) == list(COLUMNS)
    assert t["label"].tolist() == [1, 7]
    assert t["area"][0] == (_two_disks() == 1).sum()
    assert t["centroid_y"].tolist() == pytest.approx([120, 140], abs=0.01)
    assert t["centroid_x"].tolist() == pytest.approx([1020, 1055], abs=0.01)
    assert t["perimeter"][1] == pytest.approx(2 * np.pi * 12, rel=0.1)
    assert (t["eccentricity"] < 0.3).all()
    assert np.isnan(t["mean_hematoxylin"]).all()


def test_micrometre_columns_when_the_pixel_size_is_known():
    lab = _two_disks()
    px = measure_nuclei(lab)
    um = measure_nuclei(lab, mpp=0.5)
    assert "area_um2" not in px
    assert list(um)[:5] == ["label", "area", "perimeter", "area_um2", "perimeter_um"]
    np.testing.assert_allclose(um["area_um2"], px["area"] * 0.25)
    np.testing.assert_allclose(um["perimeter_um"], px["perimeter"] * 0.5)
    assert set(measure_nuclei(np.zeros((4, 4), np.uint32), mpp=0.5)) == set(um)


def test_empty_labels_give_empty_table():
    t = measure_nuclei(np.zeros((10, 10), np.uint32))
    assert all(len(v) == 0 for v in t.values())


def test_polygons_trace_the_outline():
    polys = label_polygons(_two_disks(), offset=(5, 3))
    assert set(polys) == {1, 7}
    p = polys[7]
    assert np.array_equal(p[0], p[-1])
    # Shoelace area of the outline matches the pixel area within a pixel-edge margin.
    x, y = p[:, 0], p[:, 1]
    area = 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
    assert area == pytest.approx((_two_disks() == 7).sum(), rel=0.08)
    assert x.mean() == pytest.approx(55 + 3, abs=1) and y.mean() == pytest.approx(40 + 5, abs=1)


def test_real_tile_exports(monuseg, tmp_path):
    name = "TCGA-A7-A13E-01Z-00-DX1"
    image = read_image(monuseg / "images" / f"{name}.png")
    labels = read_labels(monuseg / "masks" / f"{name}.tif")
    table = measure_nuclei(labels, image)
    n = len(np.unique(labels)) - 1
    assert len(table["label"]) == n == 314
    # Nuclei are haematoxylin-rich compared with the tile as a whole.
    from skimage.color import rgb2hed

    assert np.median(table["mean_hematoxylin"]) > np.median(rgb2hed(image)[..., 0])
    gj = write_geojson(tmp_path / "n.geojson", labels, table)
    data = json.loads(gj.read_text())
    assert data["type"] == "FeatureCollection"
    assert len(data["features"]) >= n - 3  # 1-pixel annotations have no outline
    f = data["features"][0]
    assert f["properties"]["objectType"] == "detection" and f["geometry"]["type"] == "Polygon"
    assert "area" in f["properties"]["measurements"]
    rows = list(csv.DictReader(write_csv(tmp_path / "n.csv", table).open()))
    assert len(rows) == n and float(rows[0]["area"]) == table["area"][0]


def test_geojson_without_measurements():
    gj = nuclei_geojson(_two_disks())
    assert [f["properties"]["label"] for f in gj["features"]] == [1, 7]


def test_fast_measurements_and_outlines_match_skimage_on_a_real_mask(monuseg):
    """The vectorized measurements and outline simplification give skimage's own values on
    every nucleus of a real annotated tile (what regionprops and approximate_polygon, one
    nucleus at a time, gave before)."""
    from scipy import ndimage
    from skimage.measure import approximate_polygon, find_contours, regionprops_table

    from napari_histo.core.labels.polygons import simplify_rings

    labels = read_labels(monuseg / "masks" / "TCGA-A7-A13E-01Z-00-DX1.tif")
    t = measure_nuclei(labels, offset=(3, 5))
    ref = regionprops_table(
        labels.astype(np.int64),
        properties=("label", "area", "perimeter", "centroid", "eccentricity", "solidity"),
    )
    assert t["label"].tolist() == ref["label"].tolist()
    assert np.array_equal(t["area"], ref["area"])
    np.testing.assert_allclose(t["centroid_y"], ref["centroid-0"] + 3, atol=1e-9)
    np.testing.assert_allclose(t["centroid_x"], ref["centroid-1"] + 5, atol=1e-9)
    np.testing.assert_allclose(t["eccentricity"], ref["eccentricity"], atol=1e-9)
    assert 0.3 < np.median(t["eccentricity"]) < 0.95  # elongated nuclei, not a constant

    rings = []
    for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is not None:
            contours = find_contours(np.pad(labels[sl] == idx, 1).astype(np.uint8), 0.5)
            rings += [max(contours, key=len)] if contours else []
    fast = simplify_rings(rings, 0.5)
    slow = [approximate_polygon(r, 0.5) for r in rings]
    assert len(fast) == len(slow) == len(rings) > 300
    assert all(np.array_equal(f, s) for f, s in zip(fast, slow, strict=True))
    assert sum(map(len, fast)) < 0.5 * sum(map(len, rings))  # it did simplify
    assert simplify_rings(rings[:3], 0) == rings[:3]


def test_a_window_far_into_a_slide_measures_as_fast_and_small_as_the_first(monuseg):
    """Slide label ids carry their block's number (block * 2**16 + k): a window of block 300
    holds ids past 1.9e7. Measuring and outlining it gives the same rows as the same nuclei
    numbered 1..N, without id-indexed arrays (they took 1.9 GB and 11 s at block 700)."""
    import tracemalloc

    labels = read_labels(monuseg / "masks" / "TCGA-A7-A13E-01Z-00-DX1.tif").astype(np.int64)
    far = np.where(labels > 0, labels + 300 * 2**16, 0)
    near_table, near_polys = measure_nuclei(labels), label_polygons(labels)
    tracemalloc.start()
    try:
        far_table, far_polys = measure_nuclei(far), label_polygons(far)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150e6, peak  # the window itself is 8 MB
    assert far_table["label"].tolist() == [i + 300 * 2**16 for i in near_table["label"]]
    for key in COLUMNS:
        if key != "label":
            np.testing.assert_array_equal(far_table[key], near_table[key])
    assert sorted(far_polys) == [i + 300 * 2**16 for i in sorted(near_polys)]
    assert all(np.array_equal(far_polys[i + 300 * 2**16], p) for i, p in near_polys.items())
