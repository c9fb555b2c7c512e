"""The reader through napari itself: tiles as RGB layers, slides as lazy multiscale layers."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_svs_opens_as_multiscale_layer(make_napari_viewer, svs_path):
    viewer = make_napari_viewer()
    layers = viewer.open(str(svs_path), plugin="napari-histo")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.multiscale and layer.rgb
    assert layer.data[0].shape == (2967, 2220, 3)
    assert layer.data[0].dtype == np.uint8
    assert type(layer.data[0]).__module__.startswith("dask")
    # The Aperio header's pixel size travels with the layer (the Segment widget shows it).
    assert layer.metadata["mpp"] == pytest.approx(0.499)


def test_tile_opens_as_rgb_layer(make_napari_viewer, monuseg):
    viewer = make_napari_viewer()
    path = next((monuseg / "images").glob("*.png"))
    (layer,) = viewer.open(str(path), plugin="napari-histo")
    assert layer.rgb and not layer.multiscale and layer.data.shape == (1000, 1000, 3)
    assert layer.metadata["mpp"] is None  # a PNG says nothing trustworthy about it


def test_sample_data_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-histo", "he_tile")
    kinds = sorted(type(lyr).__name__ for lyr in viewer.layers)
    assert kinds == ["Image", "Labels"]
    labels = next(lyr for lyr in viewer.layers if type(lyr).__name__ == "Labels")
    assert len(np.unique(labels.data)) - 1 == 314  # the MoNuSeg tile's nuclei


def test_bad_file_gives_clear_message(make_napari_viewer, bad_inputs):
    from napari_histo._reader import napari_get_reader

    reader = napari_get_reader(str(bad_inputs / "truncated.png"))
    assert reader is not None
    with pytest.raises(ValueError, match=r"truncated\.png: .*truncated"):
        reader(str(bad_inputs / "truncated.png"))
    assert napari_get_reader(str(bad_inputs / "README.md")) is None
