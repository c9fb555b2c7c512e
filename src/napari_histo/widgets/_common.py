"""Shared pieces of the dock widgets: running core generators in a worker, layer helpers."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari


def rgb_image_layers(viewer: napari.Viewer) -> list:
    """The viewer's image layers that hold RGB(A) data, in layer-list order."""
    from napari.layers import Image

    return [lyr for lyr in viewer.layers if isinstance(lyr, Image) and lyr.rgb]


def layer_levels(layer) -> list:
    """A layer's data as a list of pyramid levels (one level for an in-memory image)."""
    return list(layer.data) if layer.multiscale else [layer.data]


def add_or_update_image(viewer: napari.Viewer, name: str, data, **kwargs):
    """Replace the data of our layer called ``name`` or add a new image layer."""
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        return layer
    return viewer.add_image(data, name=name, **kwargs)


def add_or_update_labels(viewer: napari.Viewer, name: str, data, **kwargs):
    """Replace the data of our labels layer called ``name`` or add a new one."""
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        for key, value in kwargs.items():
            setattr(layer, key, value)
        return layer
    return viewer.add_labels(data, name=name, **kwargs)


def import_torch_safely(with_piq: bool = False) -> None:
    """Import torch (and optionally piq) on the main thread, with triton hidden.

    torchvision and piq import torch._dynamo, which tries ``import triton``; loading triton's LLVM
    after napari has made its OpenGL context segfaults the whole process (seen with torch 2.14 /
    triton under Mesa). Our inference and training never use triton, so it is marked absent, and
    the import happens here, before a worker thread could trigger it.
    """
    import sys

    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # makes ``import triton`` raise ImportError
    import pandas  # noqa: F401  (napari imports it when our first Labels layer arrives: 0.4 s)
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    if with_piq:
        import piq  # noqa: F401


def fitted_stain_normalizer(viewer: napari.Viewer):
    """The normalizer fitted in the viewer's Stain normalization widget.

    Raises
    ------
    HistoError
        When no template has been fitted yet.
    """
    from ..core.errors import HistoError

    # napari's dock_widgets maps names to the inner widgets (older versions: to the docks).
    for widget in getattr(viewer.window, "dock_widgets", {}).values():
        inner = widget.widget() if callable(getattr(widget, "widget", None)) else widget
        norm = getattr(inner, "normalizer", None)
        if norm is not None:
            return norm
    raise HistoError(
        "no stain template fitted yet: fit one in the Stain normalization widget, or untick 'normalize'"
    )


def notify_error(msg: str) -> None:
    """A napari error notification with one clear line."""
    from napari.utils.notifications import show_error

    show_error(msg)


def notify_info(msg: str) -> None:
    from napari.utils.notifications import show_info

    show_info(msg)


def error_message(exc: BaseException) -> str:
    """The user-facing line for an exception: our messages as they are, others with their type."""
    from ..core.errors import HistoError

    if isinstance(exc, HistoError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class JobRunner:
    """Runs one core progress generator at a time in a ``thread_worker``.

    Drives a napari progress bar from the generator's :class:`Progress` events, forwards them to
    ``on_event`` on the main thread (where layers may be touched), and cancels with ``cancel()``
    (the worker's ``quit()``: the generator is closed between two events).
    """

    def __init__(
        self,
        on_busy: Callable[[bool], Any] | None = None,
        on_status: Callable[[str], Any] | None = None,
    ):
        self.worker = None
        self._pbar = None
        self._cancelling = False
        self._on_busy = on_busy or (lambda busy: None)
        self._on_status = on_status or (lambda text: None)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(
        self,
        gen_func: Callable[..., Generator],
        *args,
        description: str = "",
        on_event: Callable[[Any], Any] | None = None,
        on_done: Callable[[Any], Any] | None = None,
        on_cancelled: Callable[[], Any] | None = None,
        **kwargs,
    ):
        """Start ``gen_func(*args, **kwargs)`` in a worker; returns the worker."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        if self.worker is not None:
            raise RuntimeError("a job is already running")
        worker = create_worker(self._cancellable, gen_func, args, kwargs, _start_thread=False)
        self._cancelling = False
        self._pbar = progress(total=0, desc=description)
        self.worker = worker

        state = {"returned": False}

        def yielded(event):
            from ..core.progress import Progress

            if self._cancelling or self.worker is not worker or state["returned"]:
                return  # queued before a cancel or the end: the final status stays
            # Status and callback first: napari's Qt progress bar calls processEvents() when it
            # is updated, so ``returned`` (the final status, the result layers) can run inside
            # the bar update below and must not be overwritten by this older event afterwards.
            if isinstance(event, Progress):
                self._on_status(str(event))
            if on_event is not None:
                on_event(event)
            pbar = self._pbar  # ``finished`` may close the bar during its own update
            if isinstance(event, Progress) and pbar is not None:
                if event.total and pbar.total != event.total:
                    pbar.total = event.total
                pbar.n = event.step
                pbar.set_description(f"{description} {event.stage}".strip())
                if event.metrics:
                    pbar.set_postfix({k: f"{v:.4g}" for k, v in event.metrics.items()})
                pbar.refresh()

        def returned(result):
            state["returned"] = True
            if on_done is not None:
                on_done(result)

        def errored(exc):
            msg = error_message(exc)
            self._on_status(f"failed: {msg}")
            notify_error(msg)

        def aborted():
            self._on_status("cancelled")
            if on_cancelled is not None:
                on_cancelled()

        def finished():
            if self._pbar is not None:
                self._pbar.close()
            self._pbar = None
            self.worker = None
            self._on_busy(False)

        worker.yielded.connect(yielded)
        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.aborted.connect(aborted)
        worker.finished.connect(finished)
        self._on_busy(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next progress event."""
        if self.worker is not None:
            self._cancelling = True
            self._on_status("cancelling…")

    def _cancellable(self, gen_func: Callable[..., Generator], args: tuple, kwargs: dict):
        """Run ``gen_func`` in the worker thread; on cancel, close it there, then abort.

        A napari worker that is quit simply stops resuming its generator, so the core's cleanup
        (removing a half-trained model folder, a partial zarr...) would wait for garbage
        collection. Here the core generator is closed in the worker thread first, and only then
        is the worker told to quit: it emits ``aborted`` before resuming this generator again.
        """
        gen = gen_func(*args, **kwargs)
        try:
            while True:
                if self._cancelling:
                    gen.close()
                    if self.worker is not None:
                        self.worker.quit()
                    yield None
                    return None
                try:
                    event = next(gen)
                except StopIteration as stop:
                    return stop.value
                yield event
        finally:
            gen.close()


def qimage_icon(rgb: np.ndarray):
    """A QIcon from a small RGB uint8 array."""
    from qtpy.QtGui import QIcon, QImage, QPixmap

    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    qimg = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QIcon(QPixmap.fromImage(qimg))


def device_combo():
    """The device choice every widget offers: auto (CUDA when present), cpu, cuda."""
    from qtpy.QtWidgets import QComboBox

    combo = QComboBox()
    combo.addItems(["auto", "cpu", "cuda"])
    combo.setToolTip("auto: the GPU when PyTorch sees one, else the CPU")
    return combo


class RunCancelMixin:
    """A Run / Cancel button pair bound to ``self.run`` and ``self.runner``, plus the
    ``on_busy`` / ``on_status`` callbacks a :class:`JobRunner` needs (status goes to
    ``self.status``, a QLabel)."""

    def run_cancel_row(self, text: str):
        """Make ``self.run_btn`` and ``self.cancel_btn`` side by side; returns their layout."""
        from qtpy.QtWidgets import QHBoxLayout, QPushButton

        row = QHBoxLayout()
        self.run_btn = QPushButton(text)
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.runner.cancel)
        row.addWidget(self.run_btn)
        row.addWidget(self.cancel_btn)
        return row

    def _set_busy(self, busy: bool) -> None:
        self.run_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)

    def _set_status(self, text: str) -> None:
        self.status.setText(text)
