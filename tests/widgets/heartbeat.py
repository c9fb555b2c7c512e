"""A heartbeat on the GUI thread: how long does an action keep napari's event loop from running?

A 20 ms ``QTimer`` ticks on the GUI thread; the longest gap between two ticks while an action runs
(from the click until its result is shown) is compared with the longest gap of the same viewer
idle for as long. On a busy machine both include the scheduler's noise; their difference is what
the action itself costs the GUI thread.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

TICK_MS = 20


@dataclass
class Beat:
    action: str
    max_gap_ms: float
    idle_max_gap_ms: float
    seconds: float
    ticks: int
    #: CPU cores that software OpenGL's threads (Mesa llvmpipe) kept busy drawing the window
    #: during the action, on average: cores the action's own work did not get. 0 on hardware GL.
    render_cores: float = 0.0

    @property
    def beyond_idle_ms(self) -> float:
        return max(0.0, self.max_gap_ms - self.idle_max_gap_ms)

    def as_dict(self) -> dict:
        return {**asdict(self), "beyond_idle_ms": round(self.beyond_idle_ms, 1)}


class Heartbeat:
    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self._stamps: list[float] = []
        self._timer = QTimer()
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(lambda: self._stamps.append(time.perf_counter()))
        self.results: list[Beat] = []
        self.stalls: list[str] = []  # with HEARTBEAT_WATCH=1: where the GUI thread was stuck
        if os.environ.get("HEARTBEAT_WATCH"):
            self._start_watch()

    def _start_watch(self) -> None:
        """Sample every thread's stack while the heartbeat is late (diagnostics only)."""
        import sys
        import threading
        import traceback

        main = threading.main_thread().ident

        def watch() -> None:
            while True:
                time.sleep(0.01)
                if not self._timer_active or not self._stamps:
                    continue
                late = time.perf_counter() - self._stamps[-1]
                if late > 0.06:
                    lines = []
                    for ident, frame in sys._current_frames().items():
                        if ident == threading.get_ident():
                            continue
                        st = traceback.extract_stack(frame)[-4:]
                        where = " < ".join(
                            f"{f.filename.split('site-packages/')[-1].split('/src/')[-1]}:{f.lineno}"
                            for f in reversed(st)
                        )
                        lines.append(("MAIN " if ident == main else "thr ") + where)
                    self.stalls.append(f"{late * 1000:.0f} ms\n  " + "\n  ".join(lines))

        self._timer_active = False
        threading.Thread(target=watch, daemon=True).start()

    def _run_until(self, done: Callable[[], bool], timeout: float) -> list[float]:
        """Spin the Qt event loop (with the heartbeat) until ``done()``; the tick times."""
        from qtpy.QtCore import QEventLoop, QTimer

        self._stamps = [time.perf_counter()]
        loop = QEventLoop()
        poll = QTimer()
        poll.setInterval(5)
        deadline = time.perf_counter() + timeout
        timed_out = []

        def check() -> None:
            if done():
                loop.quit()
            elif time.perf_counter() > deadline:
                timed_out.append(True)
                loop.quit()

        poll.timeout.connect(check)
        self._timer_active = True
        self._timer.start()
        poll.start()
        loop.exec_() if hasattr(loop, "exec_") else loop.exec()
        poll.stop()
        self._timer.stop()
        self._timer_active = False
        self._stamps.append(time.perf_counter())
        if timed_out:
            raise TimeoutError(f"not done after {timeout} s")
        return list(self._stamps)

    def idle(self, seconds: float) -> float:
        """The longest gap (ms) of the idle viewer over ``seconds``."""
        end = time.perf_counter() + seconds
        stamps = self._run_until(lambda: time.perf_counter() > end, seconds + 30)
        return _max_gap(stamps)

    def measure(
        self,
        name: str,
        action: Callable[[], object],
        done: Callable[[], bool],
        timeout: float = 600,
        idle_cap: float = 2.0,
        idle_ms: float | None = None,
    ) -> Beat:
        """Run ``action`` (a click) with the heartbeat ticking; wait for ``done()``; record.

        The idle baseline is the viewer's longest gap just after the action (over as long as the
        action took, 1 to ``idle_cap`` seconds), or ``idle_ms`` where something known to stall (a
        background import) would fall into that window.
        """
        from qtpy.QtCore import QTimer

        t0 = time.perf_counter()
        render0 = render_cpu_seconds()
        started = []
        # The click happens inside the event loop, as a user's click does.
        QTimer.singleShot(0, lambda: started.append(action() or True))
        stamps = self._run_until(lambda: bool(started) and done(), timeout)
        seconds = time.perf_counter() - t0
        render = (render_cpu_seconds() - render0) / max(seconds, 1e-3)
        gap = _max_gap(stamps)
        idle = self.idle(min(max(seconds, 1.0), idle_cap)) if idle_ms is None else idle_ms
        beat = Beat(
            name, round(gap, 1), round(idle, 1), round(seconds, 2), len(stamps), round(render, 2)
        )
        self.results.append(beat)
        return beat


def render_cpu_seconds() -> float:
    """CPU seconds used so far by this process's software-OpenGL threads (Linux; else 0)."""
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith("llvmpipe"):
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def _max_gap(stamps: list[float]) -> float:
    return max((b - a) * 1000 for a, b in itertools.pairwise(stamps)) if len(stamps) > 1 else 0.0
