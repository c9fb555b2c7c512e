"""Python's cycle collector kept out of the GUI's way while big modules are imported.

Importing magicgui's Qt backend or torch allocates enough to trigger full collections, which walk
napari's and torch's millions of objects with the GIL held: 100-260 ms GUI stalls each, measured
in bench/results/gui.md. The collector is paused over those imports and everything alive at the
end is frozen (``gc.freeze()``), so later full collections skip it.

The price of a freeze: frozen objects that die only through a reference cycle are not reclaimed
while frozen. That covers napari layers (a removed layer is freed by the collector, not by
reference counting) and the cyclic garbage made while the collector was paused (about 8 MB for
torch's import). So the first layer removed after a freeze unfreezes everything
(:func:`release_on_layer_removal`): the next full collection walks the whole heap once, after an
action of the user's, and reclaims the layer.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cycle collection inside; freeze what is alive at the end (see the module's notes).

    Leaves the collector as it found it (a host application may have turned it off).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()
            gc.enable()


def pause_collector_for_this_turn() -> bool:
    """Pause the collector until the Qt event loop's next turn (on the GUI thread only).

    napari imports a widget module and builds its dock in one callback: the collector stays off
    through both. Only inside a running event loop (napari's), so that the turn that turns it
    back on comes; a script that never runs one keeps its collector.

    Returns
    -------
    bool
        True when paused.
    """
    from qtpy.QtCore import QThread, QTimer
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    thread = QThread.currentThread()
    if app is None or thread is not app.thread() or thread.loopLevel() < 1:
        return False
    if not gc.isenabled():
        return False
    stack = contextlib.ExitStack()
    stack.enter_context(collector_paused())
    # a lambda: PyQt holds a bound method weakly, and a collected stack would end the pause now
    QTimer.singleShot(0, lambda: stack.close())
    return True


def release_on_layer_removal(viewer: Any) -> None:
    """Unfreeze the collector's frozen objects whenever a layer leaves ``viewer``."""

    def release(event: Any = None) -> None:
        if gc.get_freeze_count():
            gc.unfreeze()

    viewer.layers.events.removed.connect(release)
