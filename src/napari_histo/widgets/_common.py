"""Shared pieces of the dock widgets: running core generators in a worker, layer helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path

    import napari


#: How long the interpreter's exit waits for worker threads that are still running (ms).
EXIT_WAIT_MS = 30_000
_exit_hook_registered = False


def start_worker(worker) -> None:
    """``worker.start()``, and once per process an exit hook that lets worker threads finish.

    napari asks workers to quit and waits for them when the app is about to quit, but superqt
    starts a worker one timer tick after ``start()``. One started as the window closes (the
    measurements right after a segmentation) can run on while Python tears down; its
    ``finished`` signal then meets a deleted Qt object and the process aborts at exit (4 of 7
    scripts that closed the viewer as soon as a segmentation was done; 0 of 5 with the hook).
    The hook waits for the thread pool first, at most :data:`EXIT_WAIT_MS`.
    """
    global _exit_hook_registered
    if not _exit_hook_registered:
        import atexit

        atexit.register(_wait_for_worker_threads)
        _exit_hook_registered = True
    worker.start()


def _wait_for_worker_threads(timeout_ms: int = EXIT_WAIT_MS) -> bool:
    from qtpy.QtCore import QThreadPool

    return QThreadPool.globalInstance().waitForDone(timeout_ms)


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


def built_then_shown(add: Callable[..., Any], viewer, name: str, data, **kwargs):
    """A :meth:`JobRunner.in_turns` step adding or updating a layer with ``add`` (e.g.
    :func:`add_or_update_image`): a new layer is built hidden in one turn and shown in the next.

    napari builds a layer (controls, visual) and draws it for the first time (slicing, texture
    upload) in two separate costs; one turn each shortens the longest stall (a normalized image
    and a class map: 131-264 ms beyond idle, 226-307 with one turn per layer, in
    bench/results/gui.md). ``on_layer(layer)`` in ``kwargs`` runs on the layer once built.
    """
    on_layer = kwargs.pop("on_layer", None)
    visible = kwargs.pop("visible", True)

    def step():
        new = name not in viewer.layers
        layer = add(viewer, name, data, visible=visible and not new, **kwargs)
        if on_layer is not None:
            on_layer(layer)
        if new and visible:
            return lambda: setattr(layer, "visible", True)
        return None

    return step


def add_or_update_labels(viewer: napari.Viewer, name: str, data, **kwargs):
    """Replace the data of our labels layer called ``name`` or add a new one."""
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        for key, value in kwargs.items():
            setattr(layer, key, value)
        return layer
    return viewer.add_labels(data, name=name, **kwargs)


class _TritonBlocker:
    """A ``sys.meta_path`` finder that hides ``triton`` from napari-histo's own work only.

    torchvision and piq import ``torch._dynamo``, which tries ``import triton``; loading triton's
    LLVM after napari has made its OpenGL context segfaults the whole process (seen with torch 2.14
    / triton under Mesa). Our inference and training never use triton. Instead of setting
    ``sys.modules["triton"] = None`` for the whole process (which changed every other plugin's
    world), the import is refused only on a thread that is running napari-histo work: inside
    :func:`ensure_torch` and inside a :class:`JobRunner` job (flag set around each step, because
    Qt's pool reuses threads). Other threads import triton as usual. What stays process-wide:
    torch caches "no triton" for its own ``torch.compile`` checks when *we* imported it first.
    """

    def __init__(self) -> None:
        import threading

        self.local = threading.local()

    @property
    def active(self) -> bool:
        return getattr(self.local, "depth", 0) > 0

    def __enter__(self):
        self.local.depth = getattr(self.local, "depth", 0) + 1
        return self

    def __exit__(self, *exc) -> None:
        self.local.depth -= 1

    def find_spec(self, name, path=None, target=None):
        if self.active and (name == "triton" or name.startswith("triton.")):
            raise ModuleNotFoundError(
                f"No module named {name!r} (hidden by napari-histo)", name=name
            )
        return None


_TRITON = _TritonBlocker()


def _install_triton_blocker() -> None:
    import sys

    if _TRITON not in sys.meta_path:
        sys.meta_path.insert(0, _TRITON)


def ensure_torch(with_piq: bool = False) -> None:
    """Import torch, torchvision (and piq) with triton hidden; call it from a worker thread.

    The first import costs seconds; in a worker the GUI keeps running (the longest stall left is
    torch's C extension initialising, which holds the GIL). pandas comes too: napari imports it
    when our first Labels layer arrives (0.4 s on the GUI thread otherwise).
    """
    _install_triton_blocker()
    with _TRITON:
        import pandas  # noqa: F401
        import torch  # noqa: F401
        import torchvision  # noqa: F401

        if with_piq:
            import piq  # noqa: F401


#: Set (to anything) to keep PyTorch out of the process until the first action that needs it.
NO_WARM_UP_ENV = "NAPARI_HISTO_NO_WARM_UP"
#: The warm-up thread's name (a test waits for it to end).
WARM_UP_THREAD = "napari-histo torch warm-up"
_warm_up_started = False


def warm_up_torch(delay_ms: int = 1000) -> None:
    """Import PyTorch in a background thread, once per process, shortly after a widget opens.

    However it is imported, torch's libraries and the full collections its allocations trigger
    hold the GIL (229-246 ms of GUI stall beside a napari viewer on 2 cores). Here its libraries
    are loaded first without the GIL (:func:`_load_torch_libraries`) and the cycle collector is
    paused over the import (``_collector``): 9-35 ms measured. The import also happens while the
    user reads the new form rather than right after their first click (which is also 1-2 s
    quicker then). ``delay_ms`` lets the docks being opened build and draw first (its stall and
    theirs would add up in one gap otherwise). Off with the environment variable
    ``NAPARI_HISTO_NO_WARM_UP``.
    """
    import os
    import sys

    global _warm_up_started
    if _warm_up_started or "torch" in sys.modules or os.environ.get(NO_WARM_UP_ENV):
        return
    _warm_up_started = True
    from qtpy.QtCore import QTimer

    QTimer.singleShot(delay_ms, _start_warm_up)


def _start_warm_up() -> None:
    import threading

    from ._collector import collector_paused

    def warm() -> None:
        # On failure the first real job imports torch again and reports what went wrong.
        with contextlib.suppress(Exception):
            _read_torch_libraries()
            _load_torch_libraries()
            with collector_paused():  # only the import: the reads above take seconds when cold
                ensure_torch()

    threading.Thread(target=warm, name=WARM_UP_THREAD, daemon=True).start()


def _torch_dir() -> Path | None:
    """torch's package folder, found without importing it (None where torch is missing)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("torch")
    return None if spec is None or spec.origin is None else Path(spec.origin).parent


def _read_torch_libraries(limit: int = 3 << 30) -> int:
    """Read torch's shared libraries once (into the OS page cache) before importing torch.

    Reading releases the GIL; loading them from disk inside the import does not. After a reboot
    this halves the import's GUI stall (440-494 ms -> 222-264 ms measured, the warm figure), at
    the price of about 1 GB read from disk once. Returns the bytes read.
    """
    torch_dir = _torch_dir()
    if torch_dir is None:
        return 0
    done = 0
    for path in sorted((torch_dir / "lib").glob("*.so*")):
        if done > limit:
            break
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(8 << 20):
                done += len(chunk)
    return done


def _load_torch_libraries() -> bool:
    """Load torch's C++ libraries (``libtorch_python`` and what it links) before importing torch.

    ``import torch`` loads them with the GIL held (about 230 ms of a 2-core machine's GUI stall,
    mostly ``libtorch_cpu``'s static initialisers); ``dlopen`` called through ctypes as a foreign
    function releases the GIL. Loaded ``RTLD_LOCAL``, as the import itself loads them: the
    import then finds them resident (its longest GIL hold measured 46-74 ms against a thread
    ticking every 5 ms, 140-170 ms beside a napari viewer, 242-264 without this; gui.md).

    Linux only, and not where the loader could pick other CUDA libraries than torch's import
    would: torch preloads the NVIDIA wheels' libraries itself so that they win the soname lookup,
    so a CUDA build is loaded early only when those wheels sit beside torch (on its libraries'
    RPATH) and ``LD_LIBRARY_PATH`` is unset. True when loaded.
    """
    import ctypes
    import os
    import sys

    torch_dir = _torch_dir()
    if not sys.platform.startswith("linux") or torch_dir is None:
        return False
    lib = torch_dir / "lib" / "libtorch_python.so"
    if not lib.is_file() or os.environ.get("LD_LIBRARY_PATH"):
        return False
    if (torch_dir / "lib" / "libtorch_cuda.so").is_file():
        nvidia = torch_dir.parent / "nvidia"
        if not all(any(nvidia.glob(f"*/lib/{name}.so*")) for name in ("libcudart", "libcupti")):
            return False
    for provider in (None, "libdl.so.2"):  # dlopen lives in libc since glibc 2.34
        try:
            dlopen = ctypes.CDLL(provider).dlopen
        except (OSError, AttributeError):
            continue
        dlopen.restype = ctypes.c_void_p
        dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
        return bool(dlopen(os.fsencode(lib), os.RTLD_NOW | os.RTLD_LOCAL))
    return False


def import_torch_safely(with_piq: bool = False) -> None:
    """Deprecated name of :func:`ensure_torch` (kept for scripts)."""
    ensure_torch(with_piq)


def fitted_stain_normalizer(viewer: napari.Viewer):
    """The normalizer fitted in the viewer's Stain normalization widget (the viewer state).

    Raises
    ------
    HistoError
        When no template has been fitted yet.
    """
    from ._viewer_state import viewer_state

    return viewer_state(viewer).fitted_normalizer()


def notify_error(msg: str) -> None:
    """A napari error notification with one clear line."""
    from napari.utils.notifications import show_error

    show_error(msg)


def notify_info(msg: str) -> None:
    from napari.utils.notifications import show_info

    show_info(msg)


def ask_path(
    mode: str,
    caption: str,
    start: str | None = None,
    filter: str | None = None,
    parent=None,
) -> str | None:
    """magicgui's file dialog (the one a ``FileEdit`` opens), for a button that acts on a path.

    ``mode``: ``"r"`` an existing file, ``"w"`` a file to write, ``"d"`` an existing folder.
    Returns the path, or None when the dialog was cancelled.
    """
    from magicgui.application import use_app

    show = use_app().get_obj("show_file_dialog")
    return show(mode, caption=caption, start_path=start, filter=filter, parent=parent)


def form(widgets, **kwargs):
    """A magicgui Container of ``widgets`` without margins of its own (the dock has them).

    Labelled by default (one column of labels, one width: :func:`_align_labels`);
    ``layout="horizontal", labels=False`` for a row of buttons.
    """
    from magicgui.widgets import Container

    box = Container(widgets=widgets, **kwargs)
    box.margins = (0, 0, 0, 0)
    if kwargs.get("labels", True):
        _align_labels(box.native)
    return box


def header(title: str, hint: str = ""):
    """A section's bold title line (magicgui has no group box), a little space above it."""
    from magicgui.widgets import Label

    label = wrapped(Label(value=f"<b>{title}</b>" + (f" ({hint})" if hint else "")))
    label.native.setContentsMargins(0, 6, 0, 0)
    return label


def holder(qwidget):
    """An empty magicgui Container holding a Qt widget magicgui has no equivalent of."""
    from magicgui.widgets import Container

    box = Container(labels=False)
    box.margins = (0, 0, 0, 0)
    box.native.layout().addWidget(qwidget)
    return box


def _align_labels(native) -> None:
    """Give the field labels of a form one width, measured in the font they are drawn with.

    magicgui measures them in the application font (and only for fields added after the form
    was made), while napari's stylesheet draws them in another size: the columns would not line
    up. An event filter on the form re-measures when it is shown or restyled.
    """
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QLabel

    events = (QEvent.Type.Show, QEvent.Type.StyleChange, QEvent.Type.FontChange)

    class _Aligner(QObject):
        def eventFilter(self, obj, event) -> bool:
            if event.type() in events:
                labels = obj.findChildren(QLabel)  # a form row: its label, then its field
                widest = max((lab.sizeHint().width() for lab in labels), default=0)
                for lab in labels:
                    lab.setMinimumWidth(widest)
            return False

    native.installEventFilter(_Aligner(native))


def wrapped(label):
    """A magicgui ``Label`` that wraps its text over the dock's width (status lines, help).

    magicgui labels are fixed to their text's size: a long line would widen the dock, and a
    word-wrapped one would stay narrow.
    """
    from qtpy.QtWidgets import QSizePolicy

    label.native.setWordWrap(True)
    policy = QSizePolicy.Policy.Preferred
    label.native.setSizePolicy(policy, policy)
    return label


def error_message(exc: BaseException) -> str:
    """The user-facing line for an exception: our messages as they are, others with their type."""
    from ..core.errors import HistoError

    if isinstance(exc, HistoError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


#: Pause between two :meth:`JobRunner.in_turns` steps (ms). A zero timer is a posted event,
#: handled in the same batch as the repaint the previous step queued, so nothing else (input,
#: timers) would run between them; a real timer lets the event loop go round first.
TURN_MS = 10


class JobRunner:
    """Runs one core progress generator at a time in a ``thread_worker``.

    Shows the generator's :class:`Progress` events in :attr:`bar` (a progress bar the widget puts
    in its dock: the current stage's step of its total, hidden while the total is unknown) and
    the status line, forwards the events to ``on_event`` on the main thread (where layers may be
    touched), and cancels with ``cancel()`` (the core generator is closed in the worker between
    two events).

    Not napari's ``progress``: while one is open, napari's status bar plays an animated GIF, and
    under software OpenGL (Mesa llvmpipe: machines without a GPU, remote desktops, CI) every
    frame recomposes the whole window: about one CPU core of two, for as long as the job runs,
    taken from the job (``bench/results/gui.md``). Nothing here animates: the bar and the status
    line change a few times a second at most.

    ``torch=True`` imports PyTorch in the worker first (:func:`ensure_torch`), never on the GUI
    thread. :meth:`call` runs a plain function the same way (files, exports, model loading).
    """

    def __init__(
        self,
        on_busy: Callable[[bool], Any] | None = None,
        on_status: Callable[[str], Any] | None = None,
    ):
        from magicgui.widgets import ProgressBar

        self.worker = None
        self._display: _ProgressDisplay | None = None
        #: The running job's progress, for the widget to place under its Run / Cancel buttons.
        self.bar = ProgressBar(value=0, min=0, max=1, visible=False)
        self._cancelling = False
        self._on_busy = on_busy or (lambda busy: None)
        self._on_status = on_status or (lambda text: None)
        self._turns: list[Callable[[], Any]] = []

    @property
    def running(self) -> bool:
        """A job runs, or the GUI steps it queued with :meth:`in_turns` are not all done."""
        return self.worker is not None or bool(self._turns)

    def in_turns(self, *steps: Callable[[], Any]) -> None:
        """Run ``steps`` on the GUI thread, one per event-loop turn, in order.

        napari builds a new layer's controls and visuals in 100-300 ms: adding several result
        layers in one callback freezes the viewer for their sum; one per turn lets it repaint
        and handle input between them. The job counts as running until the last step is done.
        """
        from qtpy.QtCore import QTimer

        start = not self._turns
        self._turns.extend(steps)
        if start and self._turns:
            QTimer.singleShot(TURN_MS, self._next_turn)

    def _next_turn(self) -> None:
        from qtpy.QtCore import QTimer

        if not self._turns:
            return
        step = self._turns.pop(0)
        try:
            follow = step()
            if callable(follow):  # the step's second half, in the next turn
                self._turns.insert(0, follow)
        except Exception as exc:
            notify_error(error_message(exc))
        if self._turns:
            QTimer.singleShot(TURN_MS, self._next_turn)
        elif self.worker is None:
            self._on_busy(False)

    def call(self, fn: Callable[..., Any], *args, stage: str = "", **kwargs):
        """Run ``fn(*args)`` in the worker (the status line says ``stage…``; no bar, its length
        unknown); same callbacks as :meth:`start`."""
        return self.start(_call_job, fn, args, stage, **kwargs)

    def start(
        self,
        gen_func: Callable[..., Generator],
        *args,
        description: str = "",
        on_event: Callable[[Any], Any] | None = None,
        on_done: Callable[[Any], Any] | None = None,
        on_cancelled: Callable[[], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
        torch: bool = False,
        **kwargs,
    ):
        """Start ``gen_func(*args, **kwargs)`` in a worker; returns the worker."""
        from napari.qt.threading import create_worker

        if self.running:
            raise RuntimeError("a job is already running")
        worker = create_worker(
            self._cancellable,
            gen_func,
            args,
            kwargs,
            torch,
            _start_thread=False,
            _ignore_errors=True,
        )
        self._cancelling = False
        self.worker = worker
        self.bar.tooltip = description or None
        display = self._display = _ProgressDisplay(self.bar, self._on_status)

        def yielded(event):
            from ..core.progress import Progress

            if self.worker is not worker or display.stopped:  # cancel() stops the display too
                return  # queued before a cancel or the end: the final status stays
            progress = event if isinstance(event, Progress) else None
            if progress is not None:
                display.status(progress)  # before the callback, which may say more
            if on_event is not None:
                on_event(event)
            if progress is not None and self.worker is worker and not display.stopped:
                display.progress(progress)

        def returned(result):
            display.stop()
            if on_done is not None:
                on_done(result)

        def errored(exc):
            display.stop()
            exc = getattr(exc, "original", exc)  # a RuntimeError, wrapped by _cancellable
            msg = error_message(exc)
            self._on_status(f"failed: {msg}")
            if on_error is not None:
                on_error(exc)
            else:
                notify_error(msg)

        def aborted():
            display.stop()
            self._on_status("cancelled")
            if on_cancelled is not None:
                on_cancelled()

        def finished():
            display.stop()
            self.bar.visible = False
            self.worker = None
            if not self._turns:  # else the last queued GUI step ends the busy state
                self._on_busy(False)

        worker.yielded.connect(yielded)
        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.aborted.connect(aborted)
        worker.finished.connect(finished)
        self._on_busy(True)
        start_worker(worker)
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next progress event."""
        if self.worker is not None:
            self._cancelling = True
            self._display.stop()
            self._on_status("cancelling…")

    def _cancellable(
        self, gen_func: Callable[..., Generator], args: tuple, kwargs: dict, torch: bool
    ):
        """:meth:`_steps`, its RuntimeErrors wrapped: superqt's generator worker takes a
        RuntimeError for its own Qt object deleted, and then never reports the job's end (no
        ``errored``, no ``finished``: Run would stay disabled). PyTorch raises RuntimeErrors
        (out of memory, weights that do not fit the model)."""
        try:
            return (yield from self._steps(gen_func, args, kwargs, torch))
        except RuntimeError as exc:
            raise JobFailed(exc) from exc

    def _steps(self, gen_func: Callable[..., Generator], args: tuple, kwargs: dict, torch: bool):
        """Run ``gen_func`` in the worker thread; on cancel, close it there, then abort.

        A napari worker that is quit simply stops resuming its generator, so the core's cleanup
        (removing a half-trained model folder, a partial zarr...) would wait for garbage
        collection. Here the core generator is closed in the worker thread first, and only then
        is the worker told to quit: it emits ``aborted`` before resuming this generator again.
        Each step runs with triton hidden (see :class:`_TritonBlocker`).
        """
        from ..core.progress import Progress

        _background_priority()
        _install_triton_blocker()
        if torch:
            import sys

            if "torch" not in sys.modules or "torchvision" not in sys.modules:
                yield Progress(0, None, stage="", message="loading PyTorch")
            ensure_torch()
        with _TRITON:
            gen = gen_func(*args, **kwargs)
        try:
            while True:
                if self._cancelling:
                    with _TRITON:
                        gen.close()
                    if self.worker is not None:
                        self.worker.quit()
                    yield None
                    return None
                try:
                    with _TRITON:
                        event = next(gen)
                except StopIteration as stop:
                    return stop.value
                yield event
        finally:
            with _TRITON:
                gen.close()


#: Niceness of the worker threads (and the PyTorch threads they start): the GUI thread comes
#: first when the job keeps every core busy (bench/results/gui.md).
WORKER_NICE = 10


def _background_priority() -> None:
    """Lower the calling worker thread's CPU priority, on Linux (where a thread has its own).

    With PyTorch on every core, napari's GUI thread otherwise waits its turn for 100-300 ms at a
    time. Threads inherit it, so PyTorch's threads started by this one are lowered too. A thread
    cannot raise it back without privileges: the Qt pool thread stays lowered until Qt retires it
    (30 s idle), and background work of napari's or other plugins' that Qt gives it meanwhile runs
    lowered too.
    """
    import sys
    import threading

    if not sys.platform.startswith("linux"):
        return  # elsewhere a thread id is not a process id: setpriority would hit a process
    import os

    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < WORKER_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, WORKER_NICE)
    except OSError:
        pass


class JobFailed(Exception):
    """A job's RuntimeError (``original``), carried past superqt (see ``JobRunner._cancellable``)."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


@dataclass
class _Channel:
    """What one display channel (status line or bar) last drew, and the event it holds back."""

    every: float  # least seconds between two redraws
    drawn_at: float = 0.0
    last: Any = None
    held: Any = None


class _ProgressDisplay:
    """One job's progress events on the status line and the bar, redrawn at most a few times a
    second; an event held back by that limit is shown when the limit allows, unless a newer one
    came first or the job ended (:meth:`stop`)."""

    def __init__(self, bar, on_status: Callable[[str], Any]) -> None:
        self._bar, self._on_status = bar, on_status
        self.stopped = False
        # the status line at most once a second (a line whose length changes relayouts the dock)
        self._status, self._progress = _Channel(every=1.0), _Channel(every=0.2)

    def stop(self) -> None:
        """The job ended or is being cancelled: nothing more is shown."""
        self.stopped = True

    def status(self, event) -> None:
        if _bare(event) and not event.stage:
            return  # a bare "started": the widget's own line ("segmenting…") says more
        self._offer(self._status, event)

    def progress(self, event) -> None:
        if not event.total:  # unknown length: no bar (a busy bar animates)
            self._progress.held = None
            if not self._bar.native.isHidden():
                self._bar.visible = False
            return
        self._offer(self._progress, event)

    def _offer(self, channel: _Channel, event) -> None:
        import time

        from qtpy.QtCore import QTimer

        now = time.perf_counter()
        last = channel.last
        news = last is None or event.stage != last.stage  # a new message waits its turn
        if news or _last(event) or now - channel.drawn_at >= channel.every:
            channel.held = None
            self._draw(channel, event)
            return
        if channel.held is None:  # no flush scheduled yet
            wait_ms = int((channel.drawn_at + channel.every - now) * 1000) + 1
            QTimer.singleShot(wait_ms, lambda: self._flush(channel))
        channel.held = event

    def _flush(self, channel: _Channel) -> None:
        if not self.stopped and channel.held is not None:
            event, channel.held = channel.held, None
            self._draw(channel, event)

    def _draw(self, channel: _Channel, event) -> None:
        import time

        last, channel.last, channel.drawn_at = channel.last, event, time.perf_counter()
        if channel is self._status:
            self._on_status(f"{event.stage}…" if _bare(event) else str(event))
            return
        bar = self._bar
        if last is None or event.stage != last.stage or bar.max != event.total:
            bar.native.setFormat(f"{event.stage} %v/%m".strip())
            bar.max = event.total
        bar.value = min(event.step, event.total)
        if bar.native.isHidden():
            bar.visible = True


def _bare(event) -> bool:
    """The event only says that its stage started (no step, total, message or numbers)."""
    return not (event.step or event.total or event.message or event.metrics)


def _last(event) -> bool:
    """The event is its stage's last step."""
    return bool(event.total) and event.step >= event.total


def _call_job(fn: Callable[..., Any], args: tuple, stage: str):
    """A plain function as a progress generator: one event, then its result."""
    from ..core.progress import Progress

    yield Progress(0, None, stage=stage)
    return fn(*args)


def qimage_icon(rgb: np.ndarray):
    """A QIcon from a small RGB uint8 array."""
    from qtpy.QtGui import QIcon, QImage, QPixmap

    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    qimg = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QIcon(QPixmap.fromImage(qimg))


def device_choice(label: str = "Device"):
    """The device choice as a magicgui ComboBox: auto (CUDA when present), cpu, cuda."""
    from magicgui.widgets import ComboBox

    return ComboBox(
        label=label,
        choices=["auto", "cpu", "cuda"],
        value="auto",
        tooltip="auto: the GPU when PyTorch sees one, else the CPU",
    )


def model_choice(label: str = "Model"):
    """A magicgui ComboBox of the cached model list (label shown, model ref as value).

    It follows :data:`._viewer_state.MODELS`: a saved model version refills it; layer events do
    not touch it. ``reset_choices()`` re-reads the cached list.
    """
    from magicgui.widgets import ComboBox

    from ._viewer_state import MODELS

    def choices(_widget=None):
        return [(e.label, str(e.ref)) for e in MODELS.entries()] or [("default", "default")]

    combo = ComboBox(label=label, choices=choices)
    MODELS.connect(combo.reset_choices)
    return combo


def select_model(combo, ref: str | None) -> None:
    """Select ``ref`` in a :func:`model_choice` combo when it is listed."""
    if ref is None:
        return
    combo.reset_choices()
    if str(ref) in [str(v) for v in combo.choices]:
        combo.value = str(ref)


class FormJobMixin:
    """For a magicgui form with ``run_btn``, ``cancel_btn``, a ``status`` Label and a
    ``runner``: the ``on_busy`` / ``on_status`` callbacks a :class:`JobRunner` needs, and
    ``cancel`` (stop the running job at its next progress event)."""

    def _set_busy(self, busy: bool) -> None:
        self.run_btn.enabled = not busy
        self.cancel_btn.enabled = busy

    def _set_status(self, text: str) -> None:
        self.status.value = text

    def cancel(self, *_) -> None:
        self.runner.cancel()
