"""Nucleus editing operations and the correction project folder."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk, ellipse

from napari_histo.core.errors import HistoError
from napari_histo.core.io import read_image, read_labels
from napari_histo.core.labels.edit import delete_label, merge_labels, next_free_label, split_label
from napari_histo.core.labels.project import Project, default_project_dir, open_project


def _labels():
    lab = np.zeros((80, 80), np.uint32)
    lab[ellipse(40, 40, 12, 30)] = 5  # an elongated nucleus, the one to split
    lab[disk((10, 10), 5)] = 2
    return lab


def test_next_delete_merge():
    lab = _labels()
    assert next_free_label(lab) == 6
    assert next_free_label(np.zeros((3, 3), np.uint8)) == 1
    assert 2 not in delete_label(lab, 2) and (delete_label(lab, 2) == 5).sum() == (lab == 5).sum()
    merged = merge_labels(lab, 5, 2)
    assert set(np.unique(merged)) == {0, 5} and (merged == 5).sum() == (lab > 0).sum()
    with pytest.raises(HistoError, match="background"):
        delete_label(lab, 0)
    with pytest.raises(HistoError, match="same nucleus"):
        merge_labels(lab, 5, 5)


def test_split_by_line_keeps_every_pixel():
    lab = _labels()
    out, new = split_label(lab, [(20, 40), (60, 40)])  # a vertical cut through the middle
    assert new == [6]
    assert ((out > 0) == (lab > 0)).all(), "no pixel lost or gained"
    left, right = (out == 5), (out == 6)
    assert abs(int(left.sum()) - int(right.sum())) < 0.1 * (lab == 5).sum()
    # The pieces lie on either side of the cut.
    cols_a = np.nonzero(left)[1]
    cols_b = np.nonzero(right)[1]
    assert cols_a.max() <= 41 or cols_b.max() <= 41
    assert (out == 2).sum() == (lab == 2).sum()


def test_split_a_real_nucleus_touches_nothing_else(monuseg):
    lab = read_labels(sorted((monuseg / "masks").glob("*.tif"))[0]).astype(np.int32)
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    target = int(ids[np.argmax(counts)])  # the largest nucleus of the tile
    rows, cols = np.nonzero(lab == target)
    mid = int(np.median(cols))
    out, new = split_label(lab, [(rows.min() - 2, mid), (rows.max() + 2, mid)])
    assert new == [int(lab.max()) + 1]
    footprint = lab == target
    assert np.array_equal(out[~footprint], lab[~footprint]), "another nucleus changed"
    assert set(np.unique(out[footprint])) == {target, new[0]}, "a pixel of it was lost"


def test_split_refusals():
    lab = _labels()
    with pytest.raises(HistoError, match="exactly one"):
        split_label(lab, [(0, 0), (79, 79)])  # crosses both nuclei
    with pytest.raises(HistoError, match="does not cut"):
        split_label(lab, [(40, 15), (40, 20)])  # only grazes the end of the nucleus


def test_project_roundtrip(monuseg, tmp_path):
    name = "TCGA-A7-A13E-01Z-00-DX1"
    img = read_image(monuseg / "images" / f"{name}.png")[:200, :200]
    lab = read_labels(monuseg / "masks" / f"{name}.tif")[:200, :200]
    proj = Project(tmp_path / "proj")
    assert proj.pairs() == []
    proj.save_pair("my tile / crop", img, lab, source="a.svs")
    pairs = proj.pairs()
    assert [p.stem for p in pairs] == ["my_tile_crop"]
    assert pairs[0].n_nuclei == len(np.unique(lab)) - 1 and pairs[0].source == "a.svs"
    img2, lab2 = proj.load_pair("my tile / crop")
    assert np.array_equal(img2, img) and np.array_equal(lab2, lab)
    # The layout is the one `napari-histo train --images --masks` reads.
    assert (tmp_path / "proj" / "images" / "my_tile_crop.png").exists()
    assert (tmp_path / "proj" / "masks" / "my_tile_crop.tif").exists()
    with pytest.raises(HistoError, match="do not match"):
        proj.save_pair("x", img, lab[:10])


def test_project_listing_follows_the_folder(monuseg, tmp_path, monkeypatch):
    name = "TCGA-A7-A13E-01Z-00-DX1"
    img = read_image(monuseg / "images" / f"{name}.png")[:64, :64]
    lab = read_labels(monuseg / "masks" / f"{name}.tif")[:64, :64]
    widget_view = open_project(tmp_path / "proj")
    assert open_project(str(tmp_path / "proj")) is widget_view  # one instance per folder
    assert widget_view.pairs() == []
    Project(tmp_path / "proj").save_pair("a", img, lab)  # another writer (the autosave worker)
    assert [p.stem for p in widget_view.pairs()] == ["a"]
    listed = []
    real = Project._list_pairs
    monkeypatch.setattr(Project, "_list_pairs", lambda self: listed.append(1) or real(self))
    widget_view.pairs()
    assert listed == [], "an unchanged folder is not listed again"
    (tmp_path / "proj" / "masks" / "a.tif").unlink()
    assert widget_view.pairs() == [] and listed == [1]


def test_default_project_dir(tmp_path):
    assert (
        default_project_dir(tmp_path / "slide.svs") == tmp_path.resolve() / "napari-histo-project"
    )
    assert default_project_dir(None).name == "default"
