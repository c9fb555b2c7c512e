"""Thin napari dock widgets over the core (imported by napari only when a widget is opened)."""

from ._collector import pause_collector_for_this_turn

# napari imports this package when a first widget opens: no full collection while it imports
# magicgui's Qt backend and builds the dock (126-138 -> 34 ms of the first dock; gui.md).
pause_collector_for_this_turn()
