"""JobRunner.in_turns: result layers are added one per event-loop turn, the job busy until the last."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from napari_histo.widgets._common import JobRunner

pytestmark = pytest.mark.gui


def test_in_turns_lets_the_event_loop_run_between_steps(qtbot):
    from qtpy.QtCore import QTimer

    log: list[str] = []
    busy: list[bool] = []
    runner = JobRunner(on_busy=busy.append)

    def first():
        log.append("first")
        # Posted now: it must run before the second step (a repaint or a key press would, too).
        QTimer.singleShot(0, lambda: log.append("event loop"))

    def broken():
        log.append("broken")
        raise ValueError("one step fails")

    runner.in_turns(first, broken, lambda: log.append("last"))
    assert runner.running and log == []  # nothing runs inside the caller's callback
    with pytest.raises(RuntimeError, match="already running"):
        runner.start(lambda: iter(()))
    qtbot.waitUntil(lambda: not runner.running, timeout=5_000)
    # A failing step is reported and the later steps still run.
    assert log == ["first", "event loop", "broken", "last"]
    assert busy == [False]  # the busy state ends once, after the last step


WARM_UP_CODE = """
import sys, threading, time
from qtpy.QtWidgets import QApplication
app = QApplication([])
from napari_histo.widgets._common import WARM_UP_THREAD, warm_up_torch
assert "torch" not in sys.modules
warm_up_torch(delay_ms=0)
end = time.time() + {seconds}
while time.time() < end:
    app.processEvents()
    busy = any(t.name == WARM_UP_THREAD for t in threading.enumerate())
    if "torchvision" in sys.modules and not busy:
        break
    time.sleep(0.05)
print("torch" in sys.modules, "torchvision" in sys.modules)
"""


@pytest.mark.parametrize("off", [False, True])
def test_widgets_warm_up_torch_in_the_background(off):
    import os
    import subprocess
    import sys

    from napari_histo.widgets._common import NO_WARM_UP_ENV

    env = {k: v for k, v in os.environ.items() if k != NO_WARM_UP_ENV}
    if off:
        env[NO_WARM_UP_ENV] = "1"
    code = WARM_UP_CODE.format(seconds=2 if off else 120)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == (["False", "False"] if off else ["True", "True"])


def test_torch_libraries_are_read_before_the_import():
    from napari_histo.widgets._common import _read_torch_libraries

    first = _read_torch_libraries(limit=0)  # stops after the first library
    assert first > 1 << 20  # torch's libraries are megabytes each
    assert _read_torch_libraries(limit=first) > first


LOAD_LIBS_CODE = """
import sys
from napari_histo.widgets._common import _load_torch_libraries
loaded = _load_torch_libraries()
if not sys.platform.startswith("linux"):
    print(loaded)  # Linux only: nothing loaded elsewhere
    raise SystemExit
maps = open("/proc/self/maps").read()
print(loaded, "torch" in sys.modules, "libtorch_cpu.so" in maps)
import torch
print(float(torch.ones(3).sum()))
"""


def test_torch_libraries_load_before_the_import():
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    out = subprocess.run(
        [sys.executable, "-c", LOAD_LIBS_CODE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    if not sys.platform.startswith("linux"):
        assert out.stdout.split() == ["False"]
        return
    # loaded into the process without importing torch; the import then works as usual
    assert out.stdout.split() == ["True", "False", "True", "3.0"]


def test_collector_paused_for_one_turn_then_frozen(qtbot):
    import gc

    from qtpy.QtCore import QEventLoop, QTimer

    from napari_histo.widgets._collector import pause_collector_for_this_turn

    assert gc.isenabled()
    # outside a running event loop (a script) nothing would turn it back on: not paused
    assert not pause_collector_for_this_turn()
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    seen = []
    loop = QEventLoop()

    def inside_the_loop():  # as napari's menu callback that builds a dock
        seen.append((pause_collector_for_this_turn(), gc.isenabled()))
        QTimer.singleShot(50, loop.quit)

    try:
        QTimer.singleShot(0, inside_the_loop)
        loop.exec_() if hasattr(loop, "exec_") else loop.exec()
        assert seen == [(True, False)]  # off while the callback runs
        assert gc.isenabled()  # back on at the event loop's next turn
        assert gc.get_freeze_count() > frozen  # what was alive is out of later collections
    finally:
        gc.enable()
        gc.unfreeze()


def test_a_layer_removed_after_a_freeze_is_reclaimed(make_napari_viewer):
    import gc
    import weakref

    from napari_histo.widgets._collector import collector_paused, release_on_layer_removal

    viewer = make_napari_viewer()
    release_on_layer_removal(viewer)
    layer = viewer.add_image(np.zeros((64, 64), np.uint8))
    try:
        with collector_paused():
            pass  # as at the first dock or after the torch import: everything alive is frozen
        assert gc.get_freeze_count() > 0
        ref = weakref.ref(layer)
        viewer.layers.remove(layer)
        del layer
        gc.collect()
        assert ref() is None  # the removal unfroze: napari's layer cycles are collected
    finally:
        gc.unfreeze()


EXIT_RACE = """
import time
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication
from napari.qt.threading import create_worker
from napari_histo.widgets._common import start_worker

app = QApplication([])

def job():
    time.sleep(0.5)
    return 1

QTimer.singleShot(0, lambda: start_worker(create_worker(job, _start_thread=False)))
QTimer.singleShot(100, app.quit)  # the app quits while the worker still runs
app.exec_()
print("exited cleanly", flush=True)
"""


def test_a_worker_still_running_at_exit_does_not_abort_the_process(tmp_path):
    """As when the viewer closes just after a segmentation, while its measurements still run.

    With a bare ``worker.start()`` this script aborts at exit (SIGABRT: the worker's finished
    signal meets a Qt object that Python's teardown deleted); ``start_worker`` waits for it.
    """
    import subprocess

    script = tmp_path / "exit_race.py"
    script.write_text(EXIT_RACE)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "exited cleanly" in run.stdout
