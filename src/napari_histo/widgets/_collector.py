"""Python's cycle collector kept out of the GUI's way while big modules are imported.

Importing magicgui's Qt backend or torch allocates enough to trigger full collections, which walk
napari's and torch's millions of objects with the GIL held: 100-260 ms GUI stalls each, measured
in bench/results/gui.md. The collector is paused over those imports and everything alive at the
end is frozen (``gc.freeze()``), so later full collections skip it. The price: objects alive at
that moment that later become garbage only through a reference cycle are never reclaimed (at most
what is open then, once per process).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cycle collection inside; freeze what is alive at the end (see the module's notes)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def pause_collector_for_this_turn() -> bool:
    """Pause the collector until the Qt event loop's next turn (on the GUI thread only).

    napari imports a widget module and builds its dock in one callback: the collector stays off
    through both. Only inside a running event loop (napari's), so that the turn that turns it
    back on comes; a script that never runs one keeps its collector. True when paused.
    """
    from qtpy.QtCore import QThread, QTimer
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    thread = QThread.currentThread()
    if app is None or thread is not app.thread() or thread.loopLevel() < 1:
        return False
    if not gc.isenabled():
        return False
    paused = collector_paused()
    paused.__enter__()
    QTimer.singleShot(0, lambda: paused.__exit__(None, None, None))
    return True
