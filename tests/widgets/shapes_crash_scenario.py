"""Remove the Segment widget's 'cut lines' layer after it was drawn, then add a layer.

Run in its own process by ``test_shapes_crash.py`` (a segmentation fault would end the whole
test run otherwise). Prints 'survived' and exits 0 when napari lives through it.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def main() -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_histo.widgets.segment import CUT_LAYER, SegmentWidget

    def pump(seconds: float) -> None:
        app = QApplication.instance()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.01)

    viewer = napari.Viewer(show=True)
    rgb = np.full((512, 512, 3), 200, np.uint8)
    viewer.add_image(rgb, name="tile", rgb=True)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    pump(1.0)
    layer = widget.cut_lines_layer(select=True)
    pump(0.5)
    assert layer.visible, "the cut-lines layer was never shown"
    layer.add_paths([np.array([[100.0, 100.0], [300.0, 300.0]])])
    pump(0.5)
    viewer.layers.remove(CUT_LAYER)
    pump(0.5)
    viewer.add_image(rgb[..., 0], name="gray")
    pump(1.0)
    print("survived", flush=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
