"""A guard against a napari/vispy crash: a drawn Shapes layer removed, then any layer added.

With napari 0.9.2, vispy 0.17.0 and Mesa's software OpenGL (llvmpipe: CI machines, many remote
desktops), removing a Shapes layer that has been drawn and then adding any layer kills the process
in ``glDrawArrays`` (``bench/napari_shapes_crash.py`` reproduces it in bare napari). Holding the
removed Shapes visual prevents it: its OpenGL objects are then not deleted. Holding only its two
Mesh sub-visuals (faces, highlights) was enough for one removed layer, not for two (a user's
'regions' layer and the cut lines); holding only one mesh, the lines, markers or text never was.

Our 'cut lines' layer is a Shapes layer that users will delete, and so are the rectangles users
draw for the stain template's regions; our results then add layers. So whenever a Shapes layer is
added to a viewer where one of our widgets is open (:func:`hold_shapes_of`, the cut-lines layer
included), every Shapes visual on the open canvases is held until that canvas
closes (no drawing after it). A handful of cut lines is a few kilobytes; a user's own large Shapes
layer is held too (its vertex buffers), the price of not crashing when it is removed.

It relies on vispy's and napari's internals (the Qt canvas widget's ``_vispy_canvas``, napari's
``ShapesVisual`` in its scene): :func:`keep_shapes_visuals` returns how many Shapes visuals are
held, and the tests check that the cut-lines layer's and a user's Shapes layer's are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: Per canvas (by id): its held Shapes visuals, by id. Module-level because the crash is per
#: OpenGL context, whatever viewer or widget made the layer.
_HELD: dict[int, dict[int, Any]] = {}


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


def keep_shapes_visuals() -> int:
    """Hold every Shapes visual now on an open canvas (until the canvas closes); the number of
    Shapes visuals held in all."""
    for widget, canvas in _gl_canvases():
        key = id(canvas)
        if key not in _HELD:
            _HELD[key] = {}
            # napari closes a viewer by deleting the canvas widget (deleteLater)
            widget.destroyed.connect(lambda *_, key=key: _HELD.pop(key, None))
        held = _HELD[key]
        for node in _walk(canvas.scene):
            # keyed by id: it cannot be reused while the visual is held
            if type(node).__name__ == "ShapesVisual" and id(node) not in held:
                held[id(node)] = node
    return held_count()


def held_count() -> int:
    """How many Shapes visuals are held now."""
    return sum(len(held) for held in _HELD.values())


def hold_shapes_of(viewer) -> None:
    """From now on, hold the visual of every Shapes layer added to ``viewer``.

    Called once a widget opens, so after napari's own canvas connected to the same event: by the
    time this handler runs, napari has made the new layer's visual.
    """

    def inserted(event) -> None:
        if type(event.value).__name__ == "Shapes":
            keep_shapes_visuals()

    viewer.layers.events.inserted.connect(inserted)
    if any(type(layer).__name__ == "Shapes" for layer in viewer.layers):
        keep_shapes_visuals()  # those drawn before the first widget opened
