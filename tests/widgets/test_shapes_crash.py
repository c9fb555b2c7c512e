"""napari 0.9 under software OpenGL segfaults when a drawn Shapes layer is removed and a layer is
added next (bench/napari_shapes_crash.py). Neither the 'cut lines' layer nor a user's own Shapes
layer (the stain template's regions) may take napari down while our widgets are open."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.gui]

ROOT = Path(__file__).resolve().parents[2]


def test_shapes_visuals_are_held_until_the_canvas_closes(make_napari_viewer, qtbot):
    from napari_histo.widgets import _shapes_crash
    from napari_histo.widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.full((64, 64, 3), 200, np.uint8), name="tile", rgb=True)
    widget = SegmentWidget(viewer)
    before = _shapes_crash.held_count()
    widget.cut_lines_layer()
    # the guard found the canvas and the new Shapes visual (vispy/napari internals it relies on)
    assert _shapes_crash.held_count() == before + 1
    # a user's own Shapes layer, added while a widget is open: held a turn later
    viewer.add_shapes(name="regions")
    qtbot.waitUntil(lambda: _shapes_crash.held_count() == before + 2, timeout=5000)
    viewer.close()
    # nothing kept once no canvas can draw (napari deletes the canvas widget later)
    qtbot.waitUntil(lambda: _shapes_crash.held_count() == 0, timeout=5000)


def _run(*args: str) -> subprocess.CompletedProcess:
    """bench/napari_shapes_crash.py in its own process (a segfault would end the test run)."""
    env = {**os.environ, "NAPARI_HISTO_NO_WARM_UP": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT / "src"), env.get("PYTHONPATH")] if p)
    cmd = [sys.executable, "-X", "faulthandler", str(ROOT / "bench" / "napari_shapes_crash.py")]
    return subprocess.run(cmd + list(args), env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_removing_the_cut_lines_layer_does_not_crash_napari():
    if not os.environ.get("DISPLAY"):
        pytest.fail("needs a display: run the suite under xvfb-run")
    # Bare napari crashes here (rc -11 under Mesa llvmpipe; `python bench/napari_shapes_crash.py`
    # shows it): the guard is what saves ours. The bare run asserts nothing, so it is not repeated.
    ours = _run("--plugin")
    assert ours.returncode == 0 and "survived" in ours.stdout, ours.stderr[-3000:]
