"""Bare-napari reproduction: remove a drawn Shapes layer, add any layer -> segmentation fault.

Seen with napari 0.9.2, vispy 0.17.0, PyQt6 6.11, Mesa 22.3.6 llvmpipe (software OpenGL, as on
CI machines and many remote desktops). No napari-histo code runs. Points and Vectors layers removed
the same way do not crash; a Shapes layer never shown does not either. The segfault is inside
``glDrawArrays`` of the first Image visual drawn after the new layer arrives, and disabling every
vertex attribute array before each frame does not prevent it (tried). napari's issue 8471 reports
the same call failing ("access violation reading 0x28") on Windows after Shapes/Labels work.

    xvfb-run -a -s "-screen 0 1600x1000x24" python bench/napari_shapes_crash.py [--hidden | --plugin]

``--plugin`` opens the Segment widget and makes the layer with it (``cut_lines_layer``), and a
user's own Shapes layer ('regions', as drawn for the stain template) next to it; both are removed.
The plugin's guard (``widgets/_shapes_crash.py``) holds their visuals: it survives.

Exit status 0 and 'survived' when it does not crash.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import napari
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])

    def pump(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.01)

    viewer = napari.Viewer(show=True)
    rgb = np.full((512, 512, 3), 200, np.uint8)
    viewer.add_image(rgb, name="tile", rgb=True)
    pump(1.0)
    if "--plugin" in argv:  # the Segment widget's own 'cut lines' layer, with its guard
        from napari_histo.widgets.segment import SegmentWidget

        widget = SegmentWidget(viewer)
        viewer.window.add_dock_widget(widget)
        pump(0.5)
        layer = widget.cut_lines_layer(select=True)
        pump(0.5)
        assert layer.visible, "the cut-lines layer was never shown"
    else:
        layer = viewer.add_shapes(name="cut lines", visible="--hidden" not in argv)
    layer.add_paths([np.array([[100.0, 100.0], [300.0, 300.0]])])
    names = ["cut lines"]
    if "--plugin" in argv:  # a user's own Shapes layer, added while the widget is open
        regions = viewer.add_shapes(name="regions")
        regions.add_rectangles([np.array([[50.0, 50.0], [200.0, 200.0]])])
        names.insert(0, "regions")
    pump(0.5)
    for name in names:
        print(f"removing the Shapes layer {name!r}", flush=True)
        viewer.layers.remove(name)
        pump(0.5)
    print("adding an image layer", flush=True)
    viewer.add_image(rgb[..., 0], name="gray")
    pump(1.0)
    print("survived", flush=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
