"""A running job's progress: in the dock's own bar, redrawn a few times a second, nothing animated.

napari's ``progress`` plays an animated GIF in the status bar; under software OpenGL (Mesa
llvmpipe, as on CI and machines without a GPU) every frame recomposes the window, and that took
1.1-1.3 of 2 cores away from the journey's jobs (fine-tune 68 s instead of 12).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_histo.core.progress import Progress
from napari_histo.widgets._common import JobRunner

pytestmark = pytest.mark.gui


def _tiles(n: int, pause: float):
    for i in range(1, n + 1):
        time.sleep(pause)
        yield Progress(i, n, stage="tile")
    yield Progress(0, None, stage="saving")  # a step of unknown length
    time.sleep(0.3)
    return "done"


def test_progress_in_the_dock_bar_throttled(qtbot):
    statuses: list[str] = []
    runner = JobRunner(on_status=statuses.append)
    bar = runner.bar
    shown: list[tuple[int, int, bool]] = []  # (value, max, visible) at each event
    values: list[int] = []
    bar.changed.connect(values.append)
    results = []
    runner.start(
        _tiles,
        60,
        0.02,  # 60 events over about 1.2 s
        on_event=lambda e: shown.append((bar.value, bar.max, bar.visible)),
        on_done=results.append,
    )
    qtbot.waitUntil(lambda: not runner.running, timeout=20_000)
    assert results == ["done"]
    # Redrawn at most 5 times a second (plus the stage's first and last step), never per event.
    assert 3 <= len(values) <= 12, values
    assert values[-1] == 60 and bar.max == 60
    # The status line: once a second and the stage's last step; a bare "started" event leaves
    # the widget's own line.
    assert 2 <= len(statuses) <= 5, statuses
    assert statuses[-1] == "tile 60/60"
    # The bar is shown while the total is known, hidden for the step without one and after.
    assert any(visible for _, _, visible in shown[5:60])
    assert not bar.visible


@pytest.mark.slow
def test_a_running_job_leaves_the_cpu_to_the_job(make_napari_viewer, qtbot):
    """No animation while a job runs: software OpenGL's threads stay nearly idle."""
    from heartbeat import render_cpu_seconds
    from napari.utils import progress

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 800)
    rgb = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    viewer.add_image(rgb, rgb=True)
    runner = JobRunner()
    viewer.window.add_dock_widget(runner.bar)
    qtbot.wait(500)  # the first paints

    napari_bars = []
    cpu0, t0 = render_cpu_seconds(), time.perf_counter()
    runner.call(time.sleep, 1.5, stage="waiting")  # a job of unknown length
    qtbot.waitUntil(lambda: not runner.running, timeout=20_000)
    runner.start(
        _tiles, 75, 0.02, on_event=lambda e: napari_bars.append(len(progress._all_instances))
    )
    qtbot.waitUntil(lambda: not runner.running, timeout=20_000)
    cores = (render_cpu_seconds() - cpu0) / (time.perf_counter() - t0)

    assert not any(napari_bars)  # no napari progress (its status-bar GIF animates)
    # With napari's progress open, llvmpipe drew 0.8-1.1 cores here; 0 under hardware OpenGL.
    assert cores < 0.25, cores
