"""A guard against a napari/vispy crash: a drawn Shapes layer removed, then any layer added.

With napari 0.9.2, vispy 0.17.0 and Mesa's software OpenGL (llvmpipe: CI machines, many remote
desktops), removing a Shapes layer that has been drawn and then adding any layer kills the process
in ``glDrawArrays`` (``bench/napari_shapes_crash.py`` reproduces it in bare napari). Keeping the
two Mesh visuals of the removed Shapes visual alive prevents it (their OpenGL objects are then
not deleted); keeping its lines, markers or text does not. Our 'cut lines' layer is a Shapes
layer that users will delete, so its meshes are held here for the life of the process: a few
kilobytes for a handful of cut lines.
"""

from __future__ import annotations

#: Mesh visuals of Shapes layers, kept so that their OpenGL objects are never deleted.
_KEPT: dict[int, tuple] = {}


def _gl_canvases() -> list:
    """vispy scene canvases of the open napari windows (found through Qt, not napari's privates)."""
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
                canvases.append(canvas)
    return canvases


def _walk(node):
    yield node
    for child in getattr(node, "children", ()):
        yield from _walk(child)


def keep_shapes_meshes() -> int:
    """Hold the Mesh visuals of every Shapes visual now on a napari canvas; how many are held."""
    for canvas in _gl_canvases():
        for node in _walk(canvas.scene):
            if type(node).__name__ != "ShapesVisual" or id(node) in _KEPT:
                continue
            meshes = (getattr(node, "shape_faces", None), getattr(node, "shape_highlights", None))
            if all(m is not None for m in meshes):
                _KEPT[id(node)] = (node, *meshes)
    return len(_KEPT)
