"""The "Fine-tune" dock widget: pairs from corrected layers, a new model version, cancel."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_histo.core.io import read_image, read_labels

pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture
def viewer_widgets(make_napari_viewer, monuseg, tmp_path, monkeypatch):
    from napari_histo.widgets.finetune import FineTuneWidget
    from napari_histo.widgets.segment import SegmentWidget

    monkeypatch.setenv("NAPARI_HISTO_MODELS", str(tmp_path / "models"))
    viewer = make_napari_viewer()
    names = sorted((monuseg / "images").glob("*.png"))[:2]
    for k, name in enumerate(names):
        image = read_image(name)[:192, :192]
        truth = read_labels(monuseg / "masks" / f"{name.stem}.tif")[:192, :192]
        viewer.add_image(image, name=f"tile{k}", rgb=True)
        # A corrected layer, as the Segment widget leaves it after the user's edits.
        lab = viewer.add_labels(truth.astype(np.uint32), name=f"tile{k} nuclei")
        lab.metadata["napari_histo_image"] = f"tile{k}"
    seg = SegmentWidget(viewer)
    seg.project_dir.value = str(tmp_path / "project")
    viewer.window.add_dock_widget(seg, name="Segment nuclei")
    ft = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(ft, name="Fine-tune")
    ft.device.value = "cpu"
    ft.epochs.value = 1
    return viewer, seg, ft, tmp_path / "models"


def test_fine_tune_makes_a_selectable_version_with_before_after(viewer_widgets, qtbot):
    viewer, seg, ft, models = viewer_widgets
    ft.refresh()
    items = ["current layer: tile0 nuclei", "current layer: tile1 nuclei"]
    assert list(ft.pairs.choices) == items and list(ft.pairs.value) == items  # all chosen
    ft.val_choice.value = "current layer: tile1 nuclei"
    pairs, val = ft.gather()
    assert [p[0] for p in pairs] == ["tile0"] and val[0] == "tile1"
    assert ft.run() is not None
    qtbot.waitUntil(lambda: not ft.runner.running, timeout=240_000)
    assert ft.result is not None, ft.status.value
    new = ft.result.model_dir
    assert new.parent == models and (new / "card.json").is_file()
    card = json.loads((new / "card.json").read_text())
    assert card["pair_names"] == ["tile0"] and card["validation_pairs"] == ["tile1"]
    assert card["name"] == new.name and card["parent"]
    assert ft.plot.loss, "the live loss plot got no points"
    for col in range(2):
        for row in range(3):
            value = float(ft.table.item(row, col).text())
            assert 0.0 <= value <= 1.0
    # The new version is selectable (and selected) in Segment nuclei.
    assert seg.model.value == str(new)


def test_pairs_left_out_stay_out(viewer_widgets):
    viewer, seg, ft, models = viewer_widgets
    ft.pairs.value = ["current layer: tile1 nuclei"]
    viewer.add_labels(  # as the Segment widget adds it; the list follows the layer event
        np.zeros((8, 8), np.uint32),
        name="tile0 copy nuclei",
        metadata={"napari_histo_image": "tile0"},
    )
    assert "current layer: tile0 copy nuclei" in ft.pairs.choices
    assert list(ft.pairs.value) == ["current layer: tile1 nuclei"]
    pairs, val = ft.gather()
    assert [p[0] for p in pairs] == ["tile1"] and val is None


def test_cancel_leaves_no_new_version(viewer_widgets, qtbot):
    viewer, seg, ft, models = viewer_widgets
    ft.refresh()
    ft.epochs.value = 50
    assert ft.run() is not None
    qtbot.waitUntil(lambda: bool(ft.plot.loss) or not ft.runner.running, timeout=120_000)
    ft.runner.cancel()
    qtbot.waitUntil(lambda: not ft.runner.running, timeout=60_000)
    assert ft.result is None
    assert not models.exists() or not any(p.is_dir() for p in models.iterdir())
    assert "cancel" in ft.status.value


def test_no_pairs_is_a_clear_message(make_napari_viewer, tmp_path, monkeypatch):
    from napari_histo.widgets.finetune import FineTuneWidget

    monkeypatch.setenv("NAPARI_HISTO_MODELS", str(tmp_path / "models"))
    viewer = make_napari_viewer()
    ft = FineTuneWidget(viewer)
    assert ft.run() is None
    assert "no training pairs" in ft.status.value
