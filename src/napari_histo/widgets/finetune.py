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
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._common import (
    JobRunner,
    RunCancelMixin,
    device_combo,
    error_message,
    import_torch_safely,
    notify_error,
    notify_info,
)

if TYPE_CHECKING:
    import napari

NO_VALIDATION = "(none: train on every pair)"
CURRENT = "current layer: "


class LossPlot(QWidget):
    """A small live plot of the training loss (and validation metric) without matplotlib."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.loss: list[float] = []
        self.val: list[float] = []
        self.setMinimumHeight(90)

    def clear(self) -> None:
        self.loss, self.val = [], []
        self.update()

    def add(self, loss: float | None, val: float | None = None) -> None:
        if loss is not None and np.isfinite(loss):
            self.loss.append(float(loss))
        if val is not None and np.isfinite(val):
            self.val.append(float(val))
        self.update()

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(30, 30, 35))
        w, h = self.width(), self.height()
        for series, colour, label in (
            (self.loss, QColor(255, 170, 60), "loss"),
            (self.val, QColor(90, 200, 255), "val AJI"),
        ):
            if len(series) < 2:
                continue
            lo, hi = min(series), max(series)
            span = (hi - lo) or 1.0
            p.setPen(QPen(colour, 1.5))
            pts = [
                QPointF(4 + (w - 8) * i / (len(series) - 1), h - 4 - (h - 18) * (v - lo) / span)
                for i, v in enumerate(series)
            ]
            for a, b in itertools.pairwise(pts):
                p.drawLine(a, b)
            p.drawText(6 if label == "loss" else w // 2, 12, f"{label} {series[-1]:.3g}")
        p.end()


class FineTuneWidget(RunCancelMixin, QWidget):
    """Fine-tune a segmentation model from corrected masks into a new model version."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.runner = JobRunner(on_busy=self._set_busy, on_status=self._set_status)
        self.result = None
        self._build()
        self.refresh()
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.refresh)

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        box = QGroupBox("Training pairs (corrected image + labels)")
        v = QVBoxLayout(box)
        self.pair_list = QListWidget()
        self.pair_list.setMinimumHeight(90)
        v.addWidget(self.pair_list)
        row = QHBoxLayout()
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        row.addWidget(refresh)
        v.addLayout(row)
        form = QFormLayout()
        self.val_combo = QComboBox()
        self.val_combo.setToolTip("Hold one pair back to measure the model before and after")
        form.addRow("Hold back for validation:", self.val_combo)
        v.addLayout(form)
        layout.addWidget(box)

        box = QGroupBox("Settings")
        form = QFormLayout(box)
        self.model_combo = QComboBox()
        form.addRow("Start from:", self.model_combo)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10_000)
        self.epochs.setValue(10)
        form.addRow("Epochs:", self.epochs)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1e-1)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(2e-4)
        form.addRow("Learning rate:", self.lr)
        self.device_combo = device_combo()
        form.addRow("Device:", self.device_combo)
        layout.addWidget(box)

        layout.addLayout(self.run_cancel_row("Fine-tune"))
        self.plot = LossPlot()
        layout.addWidget(self.plot)
        self.table = QTableWidget(3, 2)
        self.table.setHorizontalHeaderLabels(["parent", "new version"])
        self.table.setVerticalHeaderLabels(["AJI", "Dice", "PQ"])
        self.table.setMaximumHeight(120)
        layout.addWidget(self.table)
        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)

    # ------------------------------------------------------------------ inputs
    def _segment_widget(self):
        from .segment import SegmentWidget

        for dock in getattr(self.viewer.window, "dock_widgets", {}).values():
            inner = dock.widget() if hasattr(dock, "widget") else dock
            if isinstance(inner, SegmentWidget):
                return inner
        return None

    def _project(self):
        seg = self._segment_widget()
        if seg is not None:
            return seg.project()
        from ..core.labels.project import Project, default_project_dir

        return Project(default_project_dir(None))

    def _corrected_layers(self) -> list:
        from napari.layers import Labels

        return [
            lyr
            for lyr in self.viewer.layers
            if isinstance(lyr, Labels)
            and lyr.metadata.get("napari_histo_image") in self.viewer.layers
        ]

    def refresh(self, event=None) -> None:
        """List the corrected layers and the project's saved pairs; refresh the model list."""
        from ..core.seg.registry import user_model_dir
        from ..core.seg.workflow import available_models

        checked = {
            self.pair_list.item(i).text()
            for i in range(self.pair_list.count())
            if self.pair_list.item(i).checkState() == Qt.CheckState.Checked
        }
        self.pair_list.clear()
        names = [CURRENT + lyr.name for lyr in self._corrected_layers()]
        with contextlib.suppress(Exception):  # an unreadable project folder lists no saved pairs
            names += [p.stem for p in self._project().pairs()]
        for n in names:
            item = QListWidgetItem(n)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(
                Qt.CheckState.Checked if (n in checked or not checked) else Qt.CheckState.Unchecked
            )
            self.pair_list.addItem(item)
        keep = self.val_combo.currentText()
        self.val_combo.clear()
        self.val_combo.addItems([NO_VALIDATION, *names])
        if keep:
            self.val_combo.setCurrentText(keep)
        keep = self.model_combo.currentData()
        self.model_combo.clear()
        for entry in available_models(user_model_dir()):
            self.model_combo.addItem(entry.label, entry.ref)
        if keep is not None and self.model_combo.findData(keep) >= 0:
            self.model_combo.setCurrentIndex(self.model_combo.findData(keep))

    def _load(self, name: str):
        if name.startswith(CURRENT):
            lyr = self.viewer.layers[name[len(CURRENT) :]]
            image = np.asarray(self.viewer.layers[lyr.metadata["napari_histo_image"]].data)
            return lyr.metadata["napari_histo_image"], image, np.asarray(lyr.data).astype(np.uint32)
        image, labels = self._project().load_pair(name)
        return name, image, labels

    def gather(self):
        """(training pairs, validation pair or None) from the list and the hold-back choice."""
        from ..core.errors import HistoError

        chosen = [
            self.pair_list.item(i).text()
            for i in range(self.pair_list.count())
            if self.pair_list.item(i).checkState() == Qt.CheckState.Checked
        ]
        val_name = self.val_combo.currentText()
        val = None if val_name in ("", NO_VALIDATION) else self._load(val_name)
        train = [self._load(n) for n in chosen if n != val_name]
        seen, unique = set(), []
        for name, img, lab in train:  # a saved pair and its live layer are the same data
            if name not in seen:
                seen.add(name)
                unique.append((name, img, lab))
        if val is not None:
            unique = [p for p in unique if p[0] != val[0]]
        if not unique:
            raise HistoError(
                "no training pairs chosen: correct a segmentation, or tick saved pairs (the held-back pair cannot also train)"
            )
        for name, _, lab in unique:
            if not lab.any():
                raise HistoError(f"{name}: the labels are empty; correct some nuclei first")
        return unique, val

    # ------------------------------------------------------------------ run
    def run(self):
        if self.runner.running:
            return None
        try:
            pairs, val = self.gather()
        except Exception as exc:
            notify_error(error_message(exc))
            self._set_status(error_message(exc))
            return None
        from ..core.seg.workflow import fine_tune_iter

        import_torch_safely()
        self.plot.clear()
        self.table.clearContents()
        init = self.model_combo.currentData() or "default"
        return self.runner.start(
            fine_tune_iter,
            pairs,
            init=init,
            epochs=self.epochs.value(),
            lr=self.lr.value(),
            validation=val,
            device=self.device_combo.currentText(),
            description="Fine-tune",
            on_event=self._on_event,
            on_done=self._on_done,
            on_cancelled=lambda: self._set_status("cancelled: the previous model is unchanged"),
        )

    def _on_event(self, event) -> None:
        m = getattr(event, "metrics", {}) or {}
        if "loss" in m or "val_aji" in m:
            self.plot.add(m.get("loss"), m.get("val_aji"))

    def _on_done(self, result) -> None:
        self.result = result
        for row, key in enumerate(("AJI", "Dice", "PQ")):
            for col, src in enumerate((result.before, result.after)):
                if key in src:
                    self.table.setItem(row, col, QTableWidgetItem(f"{src[key]:.3f}"))
        self.refresh()
        idx = self.model_combo.findData(str(result.model_dir))
        seg = self._segment_widget()
        if seg is not None:
            seg.refresh_models(select=str(result.model_dir))
        if idx >= 0:
            self.model_combo.setCurrentIndex(idx)
        self._set_status(
            f"new model version {result.model_dir.name}; it is selected in Segment nuclei"
        )
        notify_info(f"model version {result.model_dir.name} saved")
