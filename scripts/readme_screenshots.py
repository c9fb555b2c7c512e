"""Render the README's screenshots of the widgets in use (a real napari window under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/readme_screenshots.py

Writes docs/screenshot.png (the demo), docs/segment.png (Segment nuclei after a run on the
bundled MoNuSeg tile) and docs/finetune.png (Fine-tune after a short run from corrected masks,
here the tile's hand-drawn nuclei standing in for a user's corrections).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait(runner, timeout: float = 900) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.time()
    while runner.running and time.time() - t0 < timeout:
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        QApplication.processEvents()


def raise_dock(widget) -> None:
    """Bring the dock (tab) holding ``widget`` (a QWidget or a magicgui widget) to the front."""
    from qtpy.QtWidgets import QDockWidget

    w = getattr(widget, "native", widget)
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    if w is not None:
        w.raise_()


def main() -> int:
    os.environ.setdefault("NAPARI_HISTO_MODELS", tempfile.mkdtemp(prefix="napari-histo-models-"))
    from napari_histo.cli.demo import build_demo_viewer, save_window_screenshot

    docs = ROOT / "docs"
    viewer = build_demo_viewer(show=False)
    save_window_screenshot(viewer, docs / "screenshot.png")

    inner = viewer.window.dock_widgets  # name -> our widget (magicgui ones: .native in the dock)
    tile = "H&E tile (MoNuSeg TCGA-A7-A13E)"
    seg = next(w for name, w in inner.items() if name.startswith("Segment nuclei"))
    raise_dock(seg)
    seg.image.value = tile
    seg.uncertainty.value = False
    seg.project_dir.value = tempfile.mkdtemp(prefix="napari-histo-project-")
    seg.run()
    wait(seg.runner)
    for name in ("H&E template (tiatoolbox target)",):
        if name in viewer.layers:
            viewer.layers[name].visible = False
    viewer.camera.zoom *= 2.2
    save_window_screenshot(viewer, docs / "segment.png")

    # Fine-tune: the tile's top and bottom halves with their hand-drawn nuclei as corrected pairs.
    image = viewer.layers[tile].data
    truth = viewer.layers[
        next(n.name for n in viewer.layers if n.name.startswith("ground-truth"))
    ].data
    for part, rows in (("top", slice(0, 500)), ("bottom", slice(500, 1000))):
        viewer.add_image(image[rows], name=f"tile {part}", rgb=True, visible=False)
        lab = viewer.add_labels(
            truth[rows].astype("uint32"), name=f"tile {part} corrected", visible=False
        )
        lab.metadata["napari_histo_image"] = f"tile {part}"
    ft = next(w for name, w in inner.items() if name.startswith("Fine-tune"))
    raise_dock(ft)
    ft.refresh()
    ft.pairs.value = [n for n in ft.pairs.choices if n.endswith("tile top corrected")]
    ft.val_choice.value = "current layer: tile bottom corrected"
    ft.epochs.value = int(os.environ.get("SCREENSHOT_EPOCHS", "8"))
    ft.run()
    wait(ft.runner)
    save_window_screenshot(viewer, docs / "finetune.png")
    print(seg.status.value)
    print(ft.status.value)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
