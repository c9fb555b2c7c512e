"""The "Segment nuclei" dock widget in a headless viewer: segment, correct, autosave, measure."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_histo.core.io import read_image, read_labels

pytestmark = pytest.mark.gui

CROP = (slice(0, 256), slice(0, 256))


@pytest.fixture
def crop(monuseg):
    name = sorted((monuseg / "images").glob("*.png"))[0]
    image = read_image(name)[CROP]
    truth = read_labels(monuseg / "masks" / f"{name.stem}.tif")[CROP]
    return image, truth


@pytest.fixture
def viewer_and_widget(make_napari_viewer, crop, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_HISTO_MODELS", str(tmp_path / "models"))
    viewer = make_napari_viewer()
    viewer.add_image(crop[0], name="tile", rgb=True)
    viewer.add_image(crop[0][..., 0], name="gray")
    # Through the manifest, as a user opens it from the Plugins menu.
    _, widget = viewer.window.add_plugin_dock_widget("napari-histo", "Segment nuclei")
    widget.project_dir.value = str(tmp_path / "project")
    widget.device.value = "cpu"
    return viewer, widget


def _segment(widget, qtbot) -> None:
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=120_000)


def test_lists_rgb_images_and_shipped_model(viewer_and_widget):
    _, widget = viewer_and_widget
    assert list(widget.image.choices) == ["tile"]
    combo = widget.model.native  # the labels shown (the values are model folders)
    labels = [combo.itemText(i) for i in range(combo.count())]
    assert labels and "(shipped)" in labels[0]


def test_segment_gives_editable_labels_close_to_truth(viewer_and_widget, crop, qtbot):
    from napari_histo.core.seg.metrics import aggregated_jaccard_index, dice

    viewer, widget = viewer_and_widget
    widget.uncertainty.value = True
    _segment(widget, qtbot)
    layer = viewer.layers["tile nuclei"]
    pred = np.asarray(layer.data)
    qtbot.wait(300)
    assert "nuclei found" in widget.status.value, widget.status.value
    assert pred.shape == crop[1].shape and pred.dtype == np.uint32
    n_true = len(np.unique(crop[1])) - 1
    n_pred = len(np.unique(pred)) - 1
    assert 0.5 * n_true <= n_pred <= 1.6 * n_true
    assert dice(crop[1], pred) > 0.6
    assert aggregated_jaccard_index(crop[1], pred) > 0.35
    # Measurements as the layer's features table, one row per nucleus (computed in a worker).
    qtbot.waitUntil(lambda: len(layer.features) > 0, timeout=30_000)
    assert len(layer.features) == n_pred and {"area", "perimeter"} <= set(layer.features.columns)
    unc = viewer.layers["tile uncertainty"].data
    assert unc.shape == pred.shape and unc.min() >= 0 and unc.max() <= 1
    # Re-running re-uses the layer instead of piling up new ones.
    n_layers = len(viewer.layers)
    _segment(widget, qtbot)
    assert len(viewer.layers) == n_layers


def test_edit_keys_and_autosave(viewer_and_widget, qtbot, tmp_path):
    viewer, widget = viewer_and_widget
    _segment(widget, qtbot)
    layer = widget.labels_layer
    data = np.asarray(layer.data)
    ids, counts = np.unique(data[data > 0], return_counts=True)
    a, b = ids[np.argsort(counts)[-2:]]
    ya, xa = np.argwhere(data == a).mean(0).round().astype(int)
    if data[ya, xa] != a:
        ya, xa = np.argwhere(data == a)[0]
    widget.delete_at((ya, xa))
    assert not (np.asarray(layer.data) == a).any()
    yb, xb = np.argwhere(np.asarray(layer.data) == b)[0]
    c = next(i for i in ids if i not in (a, b))
    yc, xc = np.argwhere(np.asarray(layer.data) == c)[0]
    widget.merge_at((yb, xb))
    widget.merge_at((yc, xc))
    after = np.asarray(layer.data)
    assert (
        not (after == c).any() and (after == b).sum() == counts[ids == b][0] + counts[ids == c][0]
    )
    assert widget.next_label() == int(after.max()) + 1
    # Split: the 'cut lines' layer is made at the first split (not with every segmentation),
    # selected for drawing; a line drawn across a nucleus then splits it.
    assert "cut lines" not in viewer.layers
    widget.split_last_line()
    assert "cut lines" in viewer.layers and "draw a line" in widget.status.value
    assert viewer.layers.selection.active is viewer.layers["cut lines"]
    # built hidden, then shown and put in path mode in the next event-loop turns
    cuts = viewer.layers["cut lines"]
    qtbot.waitUntil(lambda: cuts.visible and cuts.mode == "add_path", timeout=2000)
    yy, xx = np.nonzero(after == b)
    row = int(np.median(yy))
    cols = xx[yy == row]
    n_before = len(np.unique(after)) - 1
    viewer.layers["cut lines"].add_lines(
        np.array([[row, cols.min() - 3], [row, cols.max() + 3]], float)
    )
    widget.split_last_line()
    after = np.asarray(layer.data)
    assert len(np.unique(after)) - 1 > n_before
    # Autosave (debounced) writes the image + corrected labels pair into the project folder.
    qtbot.waitUntil(lambda: widget.last_saved is not None, timeout=10_000)
    saved = widget.project().find("tile")
    assert saved is not None
    image, labels = widget.project().load_pair("tile")
    assert np.array_equal(labels, np.asarray(layer.data))
    assert "saved" in widget.saved_label.value
    # With its nuclei layer gone, the image offers the saved corrections, which come back exactly.
    corrected = np.asarray(layer.data).copy()
    viewer.layers.remove(layer)
    assert widget.restore_btn.native.isVisibleTo(widget.native)
    assert widget.restore_saved() is not None  # read in a worker
    qtbot.waitUntil(lambda: "tile nuclei" in viewer.layers, timeout=10_000)
    restored = viewer.layers["tile nuclei"]
    assert restored.name == "tile nuclei" and np.array_equal(np.asarray(restored.data), corrected)


def test_main_thread_stays_responsive_while_segmenting(viewer_and_widget, qtbot):
    from heartbeat import Heartbeat

    _, widget = viewer_and_widget
    widget.tta.value = True  # 8x the work: a long job
    # From the click to the labels layer shown: no longer stall than the same viewer idle + 100 ms.
    # The worker phase (click -> result returned); adding the result layers afterwards is
    # napari's own work, which the journey test (test_journey.py) measures with the whole action.
    returned: list = []
    beat = Heartbeat().measure(
        "segment",
        lambda: widget.run().returned.connect(returned.append),
        lambda: bool(returned) or not widget.runner.running,
    )
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=120_000)
    assert beat.ticks > 10
    # The aim is 100 ms beyond idle (see tests/widgets/test_journey.py); the guard is against
    # the old multi-second freezes, with room for a loaded 2-core machine.
    assert beat.beyond_idle_ms < 600, beat


class SpyNormalizer:
    """Wraps a fitted normalizer and records every image it is asked to transform."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def transform(self, rgb):
        self.seen.append(np.array(rgb, copy=True))
        return self.inner.transform(rgb)


def test_normalize_first_uses_the_stain_widgets_normalizer(viewer_and_widget, crop, monuseg, qtbot):
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.workflow import segment_array_iter
    from napari_histo.core.stain import get_normalizer
    from napari_histo.widgets._common import fitted_stain_normalizer
    from napari_histo.widgets._viewer_state import viewer_state

    viewer, widget = viewer_and_widget
    widget.normalize.value = True
    assert widget.run() is None  # nothing fitted yet: a message, not a crash
    assert "no stain template" in widget.status.value
    _, stain = viewer.window.add_plugin_dock_widget("napari-histo", "Stain normalization")
    # A template from another MoNuSeg slide, so that normalizing really changes the tile.
    template = read_image(sorted((monuseg / "images").glob("*.png"))[5])
    real = get_normalizer("reinhard", device="cpu").fit(template)
    stain.normalizer = SpyNormalizer(real)  # shared through the viewer state
    assert fitted_stain_normalizer(viewer) is stain.normalizer
    assert viewer_state(viewer).normalizer is stain.normalizer

    def direct(image):
        model = widget.model.value or "default"
        return drain(segment_array_iter(image, model=model, device="cpu")).labels

    _segment(widget, qtbot)
    assert len(stain.normalizer.seen) == 1
    np.testing.assert_array_equal(stain.normalizer.seen[0], crop[0])
    normalized = np.asarray(widget.labels_layer.data).copy()
    np.testing.assert_array_equal(normalized, direct(real.transform(crop[0])))
    # Unticked: the normalizer is left alone and the labels are those of the tile as it is.
    widget.normalize.value = False
    _segment(widget, qtbot)
    assert len(stain.normalizer.seen) == 1
    plain = np.asarray(widget.labels_layer.data)
    np.testing.assert_array_equal(plain, direct(crop[0]))
    assert not np.array_equal(plain, normalized)  # the comparison can tell the two apart


def test_bad_inputs_give_a_message_not_a_crash(make_napari_viewer, tmp_path, monkeypatch):
    import napari_histo.widgets.segment as segment_module
    from napari_histo.widgets.segment import SegmentWidget

    monkeypatch.setenv("NAPARI_HISTO_MODELS", str(tmp_path / "models"))
    errors = []
    monkeypatch.setattr(segment_module, "notify_error", errors.append)
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    assert widget.run() is None
    assert "no image" in widget.status.value and "no image" in errors[-1]
    viewer.add_image(np.full((64, 64, 3), 255, np.uint8), name="blank", rgb=True)
    assert widget.image.value == "blank"
    # Segmenting the rectangles of a Shapes layer that has none.
    viewer.add_shapes(name="nothing")
    widget.region.value = "rectangles of 'nothing'"
    assert widget.region.value == "rectangles of 'nothing'"
    assert widget.run() is None and not widget.runner.running
    assert "'nothing' has no rectangles" in widget.status.value
    assert errors[-1] == widget.status.value
    # ... and of a rectangle that lies beside the image.
    viewer.layers["nothing"].add_rectangles(np.array([[100, 100], [150, 150]]))
    assert widget.run() is None and not widget.runner.running
    assert "does not overlap the image" in widget.status.value
    assert errors[-1] == widget.status.value
    # Edit keys before any segmentation: a notification, not an exception.
    widget.delete_at((1, 1))
    assert "segment an image first" in errors[-1] and widget.labels_layer is None
    assert len(errors) == 4


def test_jung2019_preset_in_the_widget(viewer_and_widget, crop, tmp_path, qtbot, monkeypatch):
    """The preset needs a fitted DCGMM and a trained Mask R-CNN; each missing piece is one clear
    message, and with both it segments the tile as instances."""
    from napari_histo.core.seg import workflow
    from napari_histo.widgets._common import ensure_torch

    ensure_torch()  # as the widget's workers do: torch (with triton hidden) before any model
    import torch

    from napari_histo.core.progress import drain
    from napari_histo.core.seg import registry
    from napari_histo.core.seg.spec import get_arch
    from napari_histo.core.stain.workflow import make_normalizer
    from napari_histo.widgets._viewer_state import viewer_state

    viewer, widget = viewer_and_widget
    widget.method.native.setCurrentIndex(1)
    assert widget.method.value == "jung2019"
    # Without any Mask R-CNN installed (the shipped one hidden): one clear message.
    listed = workflow.list_models
    monkeypatch.setattr(
        workflow, "list_models", lambda *a: [i for i in listed(*a) if i.arch != "maskrcnn"]
    )
    assert widget.run() is None and "--arch maskrcnn" in widget.status.value
    monkeypatch.setattr(workflow, "list_models", listed)
    torch.manual_seed(0)
    kwargs = {"fpn_channels": 32, "head_width": 64, "detections_per_img": 30}
    net = get_arch("maskrcnn").build(**kwargs)
    registry.save_model(tmp_path / "models" / "maskrcnn_tiny", net, "maskrcnn", kwargs)
    assert widget.run() is None and "fit DCGMM" in widget.status.value
    viewer_state(viewer).set("normalizer", drain(make_normalizer("dcgmm", [crop[0]], device="cpu")))
    _segment(widget, qtbot)
    assert viewer.layers["tile nuclei"].data.shape == crop[0].shape[:2]


def test_unknown_pixel_size_is_guessed_from_the_nuclei(viewer_and_widget, monuseg, qtbot, tmp_path):
    """A 20x tile without a pixel size: the nuclei are measured, the tile enlarged, and the
    status says so; with the guess unticked it is segmented as it is."""
    from skimage.transform import rescale

    viewer, widget = viewer_and_widget
    img = read_image(monuseg / "images" / "TCGA-B0-5698-01Z-00-DX1.png")[:600, :600]
    small = np.clip(np.rint(rescale(img, 0.5, channel_axis=-1, preserve_range=True)), 0, 255)
    viewer.add_image(small.astype(np.uint8), name="20x", rgb=True)
    widget.image.value = "20x"
    assert widget.mpp.value == 0.0 and widget.guess_scale.value
    _segment(widget, qtbot)
    status = widget.status.value
    assert "median nucleus" in status and "enlarged x" in status, status
    assert viewer.layers["20x nuclei"].data.shape == (300, 300)
    # A guessed magnification is never turned into micrometres.
    assert widget.export(csv=tmp_path / "guessed.csv") is not None
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
    assert "area_um2" not in (tmp_path / "guessed.csv").read_text().splitlines()[0]
    widget.guess_scale.value = False
    _segment(widget, qtbot)
    assert "pixel size unknown, segmented as it is" in widget.status.value


def test_pixel_size_from_the_file_and_what_was_assumed(viewer_and_widget, qtbot, tmp_path):
    """The pixel size comes from the layer's file metadata; the status says what was assumed."""
    viewer, widget = viewer_and_widget
    assert widget.mpp.value == 0.0  # a PNG-like layer: unknown, segmented as it is
    viewer.layers["tile"].metadata["mpp"] = 0.5  # as the reader sets it for a 20x slide
    widget.image.changed.emit("tile")
    assert widget.mpp.value == pytest.approx(0.5)
    _segment(widget, qtbot)
    status = widget.status.value
    assert "0.5 µm/px" in status and "resampled x2.00" in status, status
    # The features table and the export give areas and perimeters in micrometres too (the
    # pixel size is the file's).
    layer = viewer.layers["tile nuclei"]
    qtbot.waitUntil(lambda: "area_um2" in layer.features.columns, timeout=30_000)
    assert widget.export(csv=tmp_path / "n.csv") is not None
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
    with (tmp_path / "n.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(
        float(r["area_um2"]) == pytest.approx(float(r["area"]) * 0.25, rel=1e-4) for r in rows
    )
    # Choosing another image fills the field with that image's pixel size; the segmented
    # tile's nuclei are still measured with their own.
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="other", rgb=True, metadata={"mpp": 2.0})
    widget.image.value = "other"
    assert widget.mpp.value == pytest.approx(2.0) and widget.segmented_mpp() == 0.5
    assert widget.export(csv=tmp_path / "after.csv") is not None
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
    assert (tmp_path / "after.csv").read_text() == (tmp_path / "n.csv").read_text()
    # A pixel size typed while the segmented tile is chosen is its own (the user corrects it).
    widget.image.value = "tile"
    widget.mpp.value = 0.25
    widget.image.value = "other"
    assert widget.segmented_mpp() == 0.25
