"""A guard against a napari/vispy crash: a drawn Shapes layer removed, then any layer added.

With napari 0.9.2, vispy 0.17.0 and Mesa's software OpenGL (llvmpipe: CI machines, many remote
desktops), removing a Shapes layer that has been drawn and then adding any layer kills the process
in ``glDrawArrays`` (``bench/napari_shapes_crash.py`` reproduces it in bare napari). Holding the
two Mesh visuals (faces, highlights) of the removed Shapes visual prevents it: their OpenGL objects
are then not deleted. Holding only one of them, or the lines, markers or text, does not.

Our 'cut lines' layer is a Shapes layer that users will delete, so when it is made, the meshes of
every Shapes visual on the open canvases are held until that canvas closes (no drawing after it).
A handful of cut lines is a few kilobytes; a user's own large Shapes layer present at that moment
is held too (its vertex buffers), which is the price of not crashing when it is removed.

It relies on vispy's and napari's internals (the Qt canvas widget's ``_vispy_canvas``, napari's
``ShapesVisual`` and its ``shape_faces`` / ``shape_highlights``): :func:`keep_shapes_meshes` returns
how many Shapes visuals are held, and the tests check that the cut-lines layer's is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: Per canvas (by id): the held meshes of its Shapes visuals, by the faces mesh's id. Module-level
#: because the crash is per OpenGL context, whatever viewer or widget made the layer.
_HELD: dict[int, dict[int, tuple[Any, Any]]] = {}


def _gl_canvases() -> list[tuple[Any, Any]]:
    """(Qt widget, vispy scene canvas) of the open windows' canvases (through Qt's widget tree)."""
    from qtpy.QtWidgets import QApplication

    try:
        from qtpy.QtOpenGLWidgets import QOpenGLWidget
    except ImportError:  # Qt 5
        from qtpy.QtWidgets import QOpenGLWidget

    app = QApplication.instance()
    if app is None:
        return []
    canvases = []
    for top in app.topLevelWidgets():
        for gl in top.findChildren(QOpenGLWidget):
            canvas = getattr(gl, "_vispy_canvas", None)
            if canvas is not None and getattr(canvas, "scene", None) is not None:
                canvases.append((gl, canvas))
    return canvases


def _walk(node: Any) -> Iterator[Any]:
    yield node
    for child in getattr(node, "children", ()):
        yield from _walk(child)


def keep_shapes_meshes() -> int:
    """Hold the Mesh visuals of every Shapes visual now on an open canvas (until the canvas
    closes); the number of Shapes visuals held in all."""
    for widget, canvas in _gl_canvases():
        key = id(canvas)
        if key not in _HELD:
            _HELD[key] = {}
            # napari closes a viewer by deleting the canvas widget (deleteLater)
            widget.destroyed.connect(lambda *_, key=key: _HELD.pop(key, None))
        held = _HELD[key]
        for node in _walk(canvas.scene):
            if type(node).__name__ != "ShapesVisual":
                continue
            faces = getattr(node, "shape_faces", None)
            highlights = getattr(node, "shape_highlights", None)
            # keyed by the held faces mesh: its id cannot be reused while it is held
            if faces is not None and highlights is not None and id(faces) not in held:
                held[id(faces)] = (faces, highlights)
    return held_count()


def held_count() -> int:
    """How many Shapes visuals have their meshes held now."""
    return sum(len(held) for held in _HELD.values())
