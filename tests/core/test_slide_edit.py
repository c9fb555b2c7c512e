"""Editing a region of a slide's labels: write-back keeps ids unique and survives a crash."""

from __future__ import annotations

import numpy as np
import pytest
from slide_helpers import HALO, ThresholdSegmenter

from napari_histo.core.errors import HistoError
from napari_histo.core.io import read_image
from napari_histo.core.progress import drain
from napari_histo.core.slide.edit import JOURNAL, read_region, recover_pending, write_region
from napari_histo.core.slide.segment import SlideTiling, open_labels_pyramid, segment_slide_iter


@pytest.fixture
def slide_zarr(monuseg, tmp_path):
    image = read_image(sorted((monuseg / "images").glob("*.png"))[0])[:, :]
    big = np.concatenate([image, image], axis=1)  # 1000 x 2000: two label levels
    res = drain(
        segment_slide_iter(
            [big],
            ThresholdSegmenter(),
            tmp_path / "s.zarr",
            SlideTiling(tile=512, halo=HALO, min_tissue=0),
        )
    )
    return res.zarr_path


def test_edit_roundtrip_with_new_and_deleted_nuclei(slide_zarr):
    rows, cols = slice(100, 400), slice(300, 700)
    region = read_region(slide_zarr, rows, cols)
    all_ids = set(np.unique(np.asarray(open_labels_pyramid(slide_zarr)[0])).tolist())
    victim = int(region[region > 0][0])
    edited = region.copy()
    edited[edited == victim] = 0  # delete a nucleus
    new_local = int(region.max()) + 1  # what napari's "next label" gives: may exist elsewhere
    edited[10:20, 10:20] = new_local
    mapping = write_region(slide_zarr, rows, cols, edited)
    assert set(mapping) == {new_local}
    fresh = mapping[new_local]
    assert fresh not in all_ids
    levels = open_labels_pyramid(slide_zarr)
    back = np.asarray(levels[0][rows, cols])
    assert victim not in back and (back[10:20, 10:20] == fresh).all()
    # The coarser level shows the edit too.
    assert np.array_equal(np.asarray(levels[1]), np.asarray(levels[0])[::2, ::2])
    # A second new nucleus gets yet another id.
    edited2 = back.copy()
    edited2[50:55, 50:55] = 999_999
    m2 = write_region(slide_zarr, rows, cols, edited2)
    assert m2[999_999] == fresh + 1


def test_export_has_the_nuclei_painted_in_an_edit(slide_zarr, tmp_path):
    import csv

    from napari_histo.core.slide.segment import export_slide_iter

    rows, cols = slice(100, 400), slice(300, 700)  # crosses the block border at column 512
    region = read_region(slide_zarr, rows, cols)
    full = np.asarray(open_labels_pyramid(slide_zarr)[0])
    # A victim wholly inside the region (below the rows cleared next), so deleting it there
    # deletes it from the slide.
    ids, areas = np.unique(region[30:][region[30:] > 0], return_counts=True)
    victim = int(next(i for i, a in zip(ids, areas, strict=True) if (full == i).sum() == a))
    edited = region.copy()
    edited[edited == victim] = 0
    edited[:30, :] = 0  # room for two new nuclei: one inside block (0, 0), one across 512
    edited[5:15, 10:22] = 1  # 120 px
    edited[5:20, 205:220] = 2  # 225 px, columns 505-519 of the slide
    mapping = write_region(slide_zarr, rows, cols, edited)
    assert set(mapping) == {1, 2}
    n = drain(export_slide_iter(slide_zarr, None, None, tmp_path / "e.csv"))
    table = {int(r["label"]): r for r in csv.DictReader((tmp_path / "e.csv").open())}
    labels = np.asarray(open_labels_pyramid(slide_zarr)[0])
    # Every nucleus of the edited slide is exported once, the painted ones whole.
    assert sorted(table) == np.unique(labels[labels > 0]).tolist() and n == len(table)
    assert victim not in table
    assert float(table[mapping[1]]["area"]) == 120 and float(table[mapping[2]]["area"]) == 225


def test_crash_between_journal_and_apply_is_recovered(slide_zarr, monkeypatch):
    import napari_histo.core.slide.edit as se

    rows, cols = slice(0, 200), slice(0, 200)
    edited = np.zeros((200, 200), np.uint32)

    def boom(*a, **k):
        raise RuntimeError("power cut")

    monkeypatch.setattr(se, "_apply", boom)
    with pytest.raises(RuntimeError):
        write_region(slide_zarr, rows, cols, edited)
    assert (slide_zarr / JOURNAL).exists()
    monkeypatch.undo()
    assert recover_pending(slide_zarr)
    assert not (slide_zarr / JOURNAL).exists()
    assert not read_region(slide_zarr, rows, cols).any()
    assert not recover_pending(slide_zarr)


def test_wrong_shape_and_outside_region(slide_zarr):
    with pytest.raises(HistoError, match="shape"):
        write_region(slide_zarr, slice(0, 10), slice(0, 10), np.zeros((5, 5), np.uint32))
    with pytest.raises(HistoError, match="outside"):
        read_region(slide_zarr, slice(5000, 6000), slice(0, 10))
