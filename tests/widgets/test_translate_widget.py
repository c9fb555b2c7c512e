"""The "Translate IHC → H&E" dock widget in a headless viewer: run, result layer, cancel."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer_and_widget(make_napari_viewer):
    from skimage.data import immunohistochemistry

    from napari_histo.widgets.translate import TranslateWidget

    viewer = make_napari_viewer()
    viewer.add_image(immunohistochemistry()[:150, :170], name="ihc", rgb=True)
    viewer.add_labels(np.zeros((10, 10), np.uint8), name="labels")
    widget = TranslateWidget(viewer)
    viewer.window.add_dock_widget(widget)  # a magicgui Container
    return viewer, widget


def test_lists_rgb_layers_only(viewer_and_widget):
    viewer, widget = viewer_and_widget
    assert list(widget.image.choices) == ["ihc"]
    viewer.add_image(np.zeros((8, 8, 3), np.uint8), name="other", rgb=True)
    assert list(widget.image.choices) == ["ihc", "other"]


def test_translate_adds_result_layer_and_cycle_metrics(viewer_and_widget, qtbot):
    viewer, widget = viewer_and_widget
    widget.device.value = "cpu"
    widget.quality.value = True
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
    assert "ihc as H&E" in viewer.layers
    out = viewer.layers["ihc as H&E"]
    assert out.rgb and out.data.shape == (150, 170, 3) and out.data.dtype == np.uint8
    assert "MS-GMSD" in widget.metrics_label.value and "lower" in widget.metrics_label.value
    assert widget.run_btn.enabled and not widget.cancel_btn.enabled


def test_cancel_stops_without_result(viewer_and_widget, qtbot):
    from skimage.data import immunohistochemistry

    viewer, widget = viewer_and_widget
    big = np.tile(immunohistochemistry(), (2, 2, 1))  # 1024 x 1024: many tiles
    viewer.add_image(big, name="big", rgb=True)
    widget.image.value = "big"
    widget.device.value = "cpu"
    worker = widget.run()
    assert worker is not None and widget.cancel_btn.enabled
    qtbot.waitUntil(lambda: "tile" in widget.status_label.value, timeout=30_000)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=30_000)
    assert "big as H&E" not in viewer.layers
    assert widget.status_label.value == "cancelled"
    assert widget.run_btn.enabled


def test_bad_model_folder_is_one_notification(viewer_and_widget, qtbot, tmp_path):
    viewer, widget = viewer_and_widget
    widget.model.value = str(tmp_path / "nope")
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=30_000)
    assert "ihc as H&E" not in viewer.layers
    assert "no such translation model" in widget.status_label.value
    assert widget.run_btn.enabled
