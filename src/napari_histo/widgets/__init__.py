"""Thin napari dock widgets over the core (imported by napari only when a widget is opened)."""
