"""Thin napari dock widgets over the core (imported by napari only when a widget is opened).

Importing this package needs Qt, and inside a running event loop it pauses Python's cycle
collector until the loop's next turn (``_collector``).
"""

from ._collector import pause_collector_for_this_turn

# napari imports this package when a first widget opens: no full collection while it imports
# magicgui's Qt backend and builds the dock (first dock 113-154 -> 1-16 ms; gui.md).
pause_collector_for_this_turn()
