"""The "Fine-tune" dock widget: teach the model from corrected masks, compare before and after.

Thin over :func:`napari_histo.core.seg.workflow.fine_tune_iter`: gathers the training pairs (the
current corrected Labels layer and saved pairs from the project folder), runs training in a worker
with a live loss plot and Cancel, and shows the new version's before/after table.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    Select,
    SpinBox,
)
from qtpy.QtCore import QPointF
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (
    QHeaderView,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from ._common import (
    FormJobMixin,
    JobRunner,
    device_choice,
    error_message,
    form,
    header,
    holder,
    model_choice,
    notify_error,
    notify_info,
    select_model,
    warm_up_torch,
    wrapped,
)
from ._viewer_state import MODELS, viewer_state

if TYPE_CHECKING:
    import napari

NO_VALIDATION = "(none: train on every pair)"
CURRENT = "current layer: "
#: Colours of the loss plot's series, one per shown quantity.
SERIES_COLOURS = [(255, 170, 60), (90, 200, 255), (140, 230, 120), (230, 120, 230), (240, 240, 240)]


class LossPlot(QWidget):
    """A small live plot without matplotlib: one series per quantity (loss, val AJI...).

    Each series has its own scale (a loss and an AJI do not share an axis) and its own label.
    Every number is kept; the plot draws the training loss and the validation scores a
    pathologist compares (``SHOWN``), not the learning rate or the detection sub-scores.
    """

    SHOWN = ("loss", "val_loss", "val_aji", "val_dice", "val_pq")

    def __init__(self, parent=None):
        super().__init__(parent)
        self.series: dict[str, list[float]] = {}
        self.setMinimumHeight(90)

    @property
    def loss(self) -> list[float]:
        return self.series.get("loss", [])

    @property
    def val(self) -> list[float]:
        return self.series.get("val_aji", [])

    def clear(self) -> None:
        self.series = {}
        self.update()

    def add_metrics(self, metrics: dict) -> None:
        """Append each finite number of ``metrics`` to the series of that name."""
        for key, value in metrics.items():
            if value is not None and np.isfinite(value):
                self.series.setdefault(key, []).append(float(value))
        self.update()

    def add(self, loss: float | None, val: float | None = None) -> None:
        self.add_metrics({"loss": loss, "val_aji": val})

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(30, 30, 35))
        w, h = self.width(), self.height()
        shown = [(key, self.series[key]) for key in self.SHOWN if self.series.get(key)]
        for k, (label, series) in enumerate(shown):
            colour = QColor(*SERIES_COLOURS[k % len(SERIES_COLOURS)])
            p.setPen(QPen(colour, 1.5))
            p.drawText(6 + k * (w // max(1, len(shown))), 12, f"{label} {series[-1]:.3g}")
            if len(series) < 2:
                continue
            lo, hi = min(series), max(series)
            span = (hi - lo) or 1.0
            pts = [
                QPointF(4 + (w - 8) * i / (len(series) - 1), h - 4 - (h - 18) * (v - lo) / span)
                for i, v in enumerate(series)
            ]
            for a, b in itertools.pairwise(pts):
                p.drawLine(a, b)
        p.end()


class FineTuneWidget(FormJobMixin, Container):
    """Fine-tune a segmentation model from corrected masks into a new model version.

    A magicgui form (training pairs, hold-back choice, settings, Run / Cancel); only the loss plot
    and the before/after table are Qt widgets (magicgui has neither), each held by an empty
    magicgui Container.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        self.viewer = napari_viewer
        self.state = viewer_state(napari_viewer)
        self.runner = JobRunner(on_busy=self._set_busy, on_status=self._set_status)
        warm_up_torch()  # every action here needs torch: import it while the form is read
        self.result = None
        self._names: list[str] = []  # the pair names last listed (the choosers' choices)
        super().__init__(widgets=self._build(), labels=False)
        self.refresh()
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.refresh)
        self.state.connect("project", lambda _: self.refresh())

    def _build(self) -> list:
        # Choices are callables over the last listing: napari resets a magicgui dock widget's
        # choices on every layer event, and a fixed list would be reset to the first one.
        self.pairs = Select(
            choices=lambda _w: list(self._names),
            tooltip="The corrected pairs to train on (Ctrl- or Shift-click to choose several): "
            "corrected Labels layers and the project folder's saved pairs",
        )
        self.pairs.native.setMinimumHeight(70)
        self.pairs.native.setMaximumHeight(140)
        self.refresh_btn = PushButton(text="Refresh")
        self.refresh_btn.changed.connect(lambda: self.refresh(reread_models=True))
        self.val_choice = ComboBox(
            label="Hold back for validation",
            choices=lambda _w: [NO_VALIDATION, *self._names],
            tooltip="Hold one pair back to measure the model before and after",
        )
        self.model_choice = model_choice("Start from")
        self.epochs = SpinBox(label="Epochs", value=10, min=1, max=10_000)
        self.lr = FloatSpinBox(label="Learning rate", value=2e-4, min=1e-5, max=1e-1, step=1e-4)
        self.lr.native.setDecimals(5)
        self.device = device_choice()
        self.run_btn = PushButton(text="Fine-tune")
        self.run_btn.changed.connect(self.run)
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.cancel_btn.changed.connect(self.cancel)
        self.plot = LossPlot()
        self.plot.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        plot_box = holder(self.plot)
        plot_box.native.setMaximumHeight(160)
        self.table = QTableWidget(3, 2)
        self.table.setHorizontalHeaderLabels(["parent", "new version"])
        self.table.setVerticalHeaderLabels(["AJI", "Dice", "PQ"])
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setMaximumHeight(120)
        self.status = wrapped(Label(value="ready"))
        self.form = form([self.model_choice, self.epochs, self.lr, self.device])
        return [
            header("Training pairs", "corrected image + labels"),
            self.pairs,
            self.refresh_btn,
            form([self.val_choice]),
            header("Settings"),
            self.form,
            form([self.run_btn, self.cancel_btn], layout="horizontal", labels=False),
            self.runner.bar,
            plot_box,
            holder(self.table),
            self.status,
        ]

    # ------------------------------------------------------------------ inputs
    def _project(self):
        if self.state.project is not None:
            return self.state.project
        from ..core.labels.project import default_project_dir, open_project

        return open_project(default_project_dir(None))

    def _corrected_layers(self) -> list:
        from napari.layers import Labels

        return [
            lyr
            for lyr in self.viewer.layers
            if isinstance(lyr, Labels)
            and lyr.metadata.get("napari_histo_image") in self.viewer.layers
        ]

    def refresh(self, event=None, reread_models: bool = False) -> None:
        """List the corrected layers and the project's saved pairs (models: the cached list).

        A pair the user had chosen stays chosen; new pairs are chosen when all were (the
        default), left out otherwise.
        """
        before, chosen = list(self.pairs.choices), set(self.pairs.value)
        names = [CURRENT + lyr.name for lyr in self._corrected_layers()]
        with contextlib.suppress(Exception):  # an unreadable project folder lists no saved pairs
            names += [p.stem for p in self._project().pairs()]
        all_chosen = not before or chosen == set(before)
        keep = self.val_choice.value
        self._names = names
        self.pairs.reset_choices()
        self.pairs.value = [n for n in names if all_chosen or n in chosen]
        self.val_choice.reset_choices()
        if keep in self.val_choice.choices:
            self.val_choice.value = keep
        if reread_models:
            MODELS.refresh()

    def _spec(self, name: str):
        """What to load for a pair: a snapshot of a live layer, or a saved pair (read later)."""
        if name.startswith(CURRENT):
            lyr = self.viewer.layers[name[len(CURRENT) :]]
            image_name = lyr.metadata["napari_histo_image"]
            image = self.viewer.layers[image_name].data
            return ("live", image_name, image, np.array(lyr.data, copy=True))
        return ("saved", name, self._project(), None)

    def gather_specs(self):
        picked = set(self.pairs.value)
        chosen = [n for n in self.pairs.choices if n in picked]
        val_name = self.val_choice.value
        val = None if val_name in ("", None, NO_VALIDATION) else self._spec(val_name)
        train = [self._spec(n) for n in chosen if n != val_name]
        return train, val

    def gather(self):
        """(training pairs, validation pair or None) from the list and the hold-back choice."""
        return _resolve(*self.gather_specs())

    # ------------------------------------------------------------------ run
    def run(self):
        if self.runner.running:
            return None
        from ..core.errors import HistoError

        try:
            train, val = self.gather_specs()
            if not train:
                raise HistoError(_NO_PAIRS)
        except Exception as exc:
            notify_error(error_message(exc))
            self._set_status(error_message(exc))
            return None
        self.plot.clear()
        self.table.clearContents()
        init = self.model_choice.value or "default"
        return self.runner.start(
            _fine_tune_job,
            train,
            val,
            init,
            self.epochs.value,
            self.lr.value,
            self.device.value,
            description="Fine-tune",
            on_event=self._on_event,
            on_done=self._on_done,
            on_cancelled=lambda: self._set_status("cancelled: the previous model is unchanged"),
            torch=True,
        )

    def _on_event(self, event) -> None:
        m = getattr(event, "metrics", {}) or {}
        if m:
            self.plot.add_metrics(m)

    def _on_done(self, result) -> None:
        self.result = result
        for row, key in enumerate(("AJI", "Dice", "PQ")):
            for col, src in enumerate((result.before, result.after)):
                if key in src:
                    self.table.setItem(row, col, QTableWidgetItem(f"{src[key]:.3f}"))
        self.refresh()
        MODELS.refresh()  # every model chooser lists the new version
        self.state.set("model_ref", str(result.model_dir))  # Segment nuclei selects it
        select_model(self.model_choice, str(result.model_dir))
        self._set_status(
            f"new model version {result.model_dir.name}; it is selected in Segment nuclei"
        )
        notify_info(f"model version {result.model_dir.name} saved")


_NO_PAIRS = (
    "no training pairs chosen: correct a segmentation, or tick saved pairs "
    "(the held-back pair cannot also train)"
)


def _load_spec(spec):
    kind, name, a, b = spec
    if kind == "live":
        return name, np.asarray(a), np.asarray(b).astype(np.uint32)
    image, labels = a.load_pair(name)
    return name, image, labels


def _resolve(train_specs, val_spec):
    from ..core.errors import HistoError

    val = None if val_spec is None else _load_spec(val_spec)
    seen, unique = set(), []
    for spec in train_specs:  # a saved pair and its live layer are the same data
        name, img, lab = _load_spec(spec)
        if name not in seen:
            seen.add(name)
            unique.append((name, img, lab))
    if val is not None:
        unique = [p for p in unique if p[0] != val[0]]
    if not unique:
        raise HistoError(_NO_PAIRS)
    for name, _, lab in unique:
        if not lab.any():
            raise HistoError(f"{name}: the labels are empty; correct some nuclei first")
    return unique, val


def _fine_tune_job(train_specs, val_spec, init, epochs, lr, device):
    """Worker: read the saved pairs, then fine-tune (cancellable through training and scoring)."""
    from ..core.progress import Progress
    from ..core.seg.workflow import fine_tune_iter

    yield Progress(0, None, stage="pairs", message="reading the training pairs")
    pairs, val = _resolve(train_specs, val_spec)
    return (
        yield from fine_tune_iter(
            pairs, init=init, epochs=epochs, lr=lr, validation=val, device=device
        )
    )
