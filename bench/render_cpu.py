"""CPU that software OpenGL spends redrawing napari while a progress indicator is on screen.

Under Mesa's llvmpipe (machines without a GPU, remote desktops, CI), every repaint of any widget
in napari's window recomposes the whole window through OpenGL on the CPU. This measures, for a few
seconds each, the cores used by llvmpipe's threads with: the viewer idle; napari's ``progress``
open (its status bar plays an animated GIF); the same with that GIF stopped; a determinate bar in
a dock updated 5 times a second; a busy (indeterminate) bar; a status label rewritten 5 times a
second.

    xvfb-run -a -s "-screen 0 1600x1000x24" python bench/render_cpu.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "widgets"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import napari
    import numpy as np
    from heartbeat import render_cpu_seconds
    from magicgui.widgets import Label, ProgressBar
    from napari.utils import progress
    from qtpy.QtCore import QEventLoop, QTimer

    def spin(seconds: float, tick=None) -> None:
        loop = QEventLoop()
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        timer = QTimer()
        if tick is not None:
            timer.setInterval(200)
            timer.timeout.connect(tick)
            timer.start()
        loop.exec()
        timer.stop()

    rows: dict[str, float] = {}

    def measure(name: str, tick=None) -> None:
        cpu0, t0 = render_cpu_seconds(), time.perf_counter()
        spin(args.seconds, tick)
        rows[name] = round((render_cpu_seconds() - cpu0) / (time.perf_counter() - t0), 3)
        print(f"{name:50s} {rows[name]:.2f} cores", flush=True)

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    rgb = np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
    viewer.add_image(rgb, rgb=True)
    dock = viewer.window.add_plugin_dock_widget("napari-histo", "Segment nuclei")[1]
    spin(3.0)
    measure("idle")
    bar = progress(total=0, desc="napari progress")
    measure("napari progress open (status-bar GIF)")
    # napari internals, for the diagnosis only
    viewer.window._qt_window._activity_dialog._toggleButton._inProgressIndicator.movie().stop()
    measure("napari progress open, GIF stopped")
    bar.close()
    ours = ProgressBar(max=1000)
    dock.append(ours)
    spin(1.0)
    measure("dock bar, 5 updates/s", tick=lambda: setattr(ours, "value", ours.value + 1))
    ours.max = 0
    measure("dock bar busy (indeterminate)")
    ours.visible = False
    label = Label(value="")
    dock.append(label)
    spin(1.0)
    measure(
        "status label rewritten 5 times/s",
        tick=lambda: setattr(label, "value", f"tile {time.time():.1f}"),
    )
    viewer.close()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
