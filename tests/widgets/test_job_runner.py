"""JobRunner.in_turns: result layers are added one per event-loop turn, the job busy until the last."""

from __future__ import annotations

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
