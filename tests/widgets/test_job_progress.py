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
        yield Progress(i, n, stage="tile", message=f"row {i}")  # a message new each time
    yield Progress(0, None, stage="saving")  # a step of unknown length
    time.sleep(0.3)
    return "done"


def _runner_in_a_dock():
    from magicgui.widgets import Container

    statuses: list[str] = []
    runner = JobRunner(on_status=statuses.append)
    dock = Container(widgets=[runner.bar])  # the bar in a form, as the widgets place it
    dock.show()
    return runner, statuses, dock


def test_progress_in_the_dock_bar_throttled(qtbot):
    runner, statuses, _dock = _runner_in_a_dock()
    bar = runner.bar
    shown: list[bool] = []  # the bar on screen at each tile event
    values: list[int] = []
    bar.changed.connect(values.append)
    results, hidden_at_end = [], []
    t0 = time.perf_counter()
    runner.start(
        _tiles,
        60,
        0.02,  # 60 events over about 1.2 s
        on_event=lambda e: shown.append(not bar.native.isHidden()),
        on_done=lambda r: (results.append(r), hidden_at_end.append(bar.native.isHidden())),
    )
    qtbot.waitUntil(lambda: not runner.running, timeout=20_000)
    elapsed = time.perf_counter() - t0
    assert results == ["done"]
    # Redrawn at most 5 times a second (plus the stage's first and last step), never per event.
    assert 3 <= len(values) <= 5 * elapsed + 3, (values, elapsed)
    assert values[-1] == 60 and bar.max == 60
    # The status line: about once a second, the stage's last step, then the next stage.
    assert 3 <= len(statuses) <= elapsed + 4, statuses
    assert statuses[-2:] == ["tile 60/60 row 60", "saving…"]
    # Shown while the total is known, hidden for the step without one (a busy bar animates).
    assert any(shown[5:]) and hidden_at_end == [True] and bar.native.isHidden()


def _fit_then_quiet():
    for i in range(1, 11):  # ten quick steps of a fit that will stop early (a time cap)
        time.sleep(0.01)
        yield Progress(i, 100, stage="fit", metrics={"loss": 1.0 / i})
    time.sleep(1.5)  # then a long quiet step
    return "fitted"


def test_an_update_held_back_is_shown_later(qtbot):
    runner, statuses, _dock = _runner_in_a_dock()
    at_end: list = []
    runner.start(
        _fit_then_quiet, on_done=lambda r: at_end.append((list(statuses), runner.bar.value))
    )
    qtbot.waitUntil(lambda: not runner.running, timeout=20_000)
    seen, value = at_end[0]
    # the last step before the quiet part reaches the screen during it, not only the first
    assert seen[-1] == "fit 10/100 loss=0.1", seen
    assert value == 10


def _fails():
    yield Progress(1, 4, stage="tile")
    raise RuntimeError("size mismatch for conv1.weight")  # as torch's load_state_dict raises


def _slow_tiles():
    for i in range(1, 500):
        time.sleep(0.01)
        yield Progress(i, 500, stage="tile")


def test_a_runtime_error_ends_the_job_and_cancel_hides_the_bar(qtbot):
    runner, statuses, _dock = _runner_in_a_dock()
    errors: list = []
    runner.start(_fails, on_error=errors.append)
    # superqt's worker swallowed RuntimeErrors: the job never ended, Run stayed disabled
    qtbot.waitUntil(lambda: not runner.running, timeout=20_000)
    assert [type(e) for e in errors] == [RuntimeError]
    assert statuses[-1] == "failed: RuntimeError: size mismatch for conv1.weight"
    assert runner.bar.native.isHidden()

    runner.start(_slow_tiles)
    qtbot.waitUntil(lambda: not runner.bar.native.isHidden(), timeout=20_000)
    runner.cancel()
    qtbot.waitUntil(lambda: not runner.running, timeout=20_000)
    qtbot.wait(1200)  # past any held-back update
    assert statuses[-1] == "cancelled" and runner.bar.native.isHidden()


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
    viewer.window.add_dock_widget(runner.bar)  # where the widgets show it
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
