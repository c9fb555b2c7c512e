"""What the plugin's widgets share in one napari viewer, and the cached list of models.

Widgets never look for each other (no scanning of ``viewer.window.dock_widgets``, no widget
importing another): the Stain widget puts its fitted normalizer here, Segment reads it; Fine-tune
announces a new model version here and every model chooser follows.

One :class:`ViewerState` per viewer, created on first use and dropped with the viewer (a
``WeakKeyDictionary``). Listeners are plain callables, called on the GUI thread by whoever
changes a value (widgets only change the state from the GUI thread).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: The keys a listener can follow.
KEYS = ("normalizer", "model_ref", "project")


@dataclass(eq=False)
class ViewerState:
    """The plugin's shared state in one viewer.

    Attributes
    ----------
    normalizer : fitted stain normalizer or None
        The one fitted (or loaded) last in the Stain normalization widget.
    model_ref : str or None
        The segmentation model chosen last (a fine-tune's new version selects itself here).
    project : core.labels.project.Project or None
        The correction project Segment nuclei saves into (Fine-tune reads its pairs).
    """

    normalizer: Any = None
    model_ref: str | None = None
    project: Any = None
    _listeners: dict[str, list[Callable[[Any], Any]]] = field(default_factory=dict, repr=False)

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` and tell its listeners (even when the value is the same object)."""
        if key not in KEYS:
            raise KeyError(key)
        setattr(self, key, value)
        listeners = self._listeners.get(key, [])
        for cb in list(listeners):
            if not _call(cb, value):
                listeners.remove(cb)

    def connect(self, key: str, callback: Callable[[Any], Any]) -> Callable[[], None]:
        """Call ``callback(value)`` whenever ``key`` is set; returns a function that disconnects."""
        if key not in KEYS:
            raise KeyError(key)
        self._listeners.setdefault(key, []).append(callback)

        def disconnect() -> None:
            cbs = self._listeners.get(key, [])
            if callback in cbs:
                cbs.remove(callback)

        return disconnect

    def fitted_normalizer(self):
        """The fitted normalizer; a clear :class:`HistoError` when there is none."""
        from ..core.errors import HistoError

        if self.normalizer is None:
            raise HistoError(
                "no stain template fitted yet: fit one in the Stain normalization widget, "
                "or untick 'normalize'"
            )
        return self.normalizer


def _call(cb, *args) -> bool:
    """Call a listener; False when its Qt widget is gone (then it is dropped)."""
    try:
        cb(*args)
    except RuntimeError as exc:  # "wrapped C/C++ object ... has been deleted"
        if "deleted" in str(exc):
            return False
        raise
    return True


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def viewer_state(viewer) -> ViewerState:
    """The :class:`ViewerState` of ``viewer`` (made on first use)."""
    state = _STATES.get(viewer)
    if state is None:
        from ._collector import release_on_layer_removal
        from ._shapes_crash import hold_shapes_of

        state = _STATES[viewer] = ViewerState()
        release_on_layer_removal(viewer)
        hold_shapes_of(viewer)  # a removed Shapes layer must not crash napari (_shapes_crash.py)
    return state


class ModelCatalog:
    """The segmentation models the user can choose, read once and cached.

    Reading every model card on every layer event was the old way; now the list is read when first
    needed, again when a model is saved (:meth:`invalidate`, which Fine-tune calls) or on demand
    (:meth:`refresh`). Keyed by the user model folder, so changing ``NAPARI_HISTO_MODELS`` (tests do)
    reads the new folder. Listeners (the model choosers) are told when the list changes.
    """

    def __init__(self) -> None:
        self._cache: dict[str, list] = {}
        self._listeners: list[Callable[[], Any]] = []

    def entries(self, refresh: bool = False) -> list:
        """``core.seg.workflow.ModelEntry`` list: shipped first, then the user's newest first."""
        from ..core.seg.registry import user_model_dir
        from ..core.seg.workflow import available_models

        folder = user_model_dir()
        key = str(folder)
        if refresh or key not in self._cache:
            self._cache[key] = available_models(folder)
        return list(self._cache[key])

    def refresh(self) -> list:
        """Read the model folder again and tell every chooser."""
        entries = self.entries(refresh=True)
        for cb in list(self._listeners):
            if not _call(cb):
                self._listeners.remove(cb)
        return entries

    invalidate = refresh

    def connect(self, callback: Callable[[], Any]) -> Callable[[], None]:
        self._listeners.append(callback)

        def disconnect() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return disconnect


#: One catalog for the process: the model folder is the user's, not a viewer's.
MODELS = ModelCatalog()
