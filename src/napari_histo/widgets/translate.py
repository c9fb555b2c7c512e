"""The "Translate IHC → H&E" dock widget: a CycleGAN generator run tile by tile in a worker."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._common import (
    JobRunner,
    add_or_update_image,
    device_combo,
    error_message,
    import_torch_safely,
    notify_error,
    rgb_image_layers,
)

if TYPE_CHECKING:
    import napari

DEFAULT_MODEL = "ihc2he_default"


def _translate_job(
    image: np.ndarray, model, direction: str, device: str, tile: int, with_quality: bool
) -> Generator:
    """Translate tile by tile, optionally score the round trip; returns (result, scores)."""
    from ..core.progress import Progress
    from ..core.translate import Translator, load_translator, translate_iter

    tr = model if isinstance(model, Translator) else load_translator(model, direction, device)
    result = yield from translate_iter(image, tr, tile=tile)
    scores = None
    if with_quality:
        from ..core.translate.quality import quality_scores

        other = "he2ihc" if direction == "ihc2he" else "ihc2he"
        back_model = load_translator(tr.path, other, device)
        yield Progress(0, None, stage="cycle")
        back = yield from translate_iter(result, back_model, tile=tile)
        scores = quality_scores(back, image, names=("round trip", "input"))
    return result, scores


class TranslateWidget(QWidget):
    """Translate an RGB image layer between IHC and H&E appearance with a CycleGAN generator."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.runner = JobRunner(on_busy=self._set_busy, on_status=self._set_status)
        self._input_layer = None

        self.layer_combo = QComboBox()
        self.model_edit = QLineEdit(DEFAULT_MODEL)
        self.model_edit.setToolTip("the shipped model name, or a model folder you trained")
        self.browse_btn = QPushButton("…")
        self.browse_btn.clicked.connect(self._browse)
        self.direction_combo = QComboBox()
        self.direction_combo.addItems(["ihc2he", "he2ihc"])
        self.device_combo = device_combo()
        self.quality_check = QCheckBox("quality vs cycle (slower: translates back)")
        self.run_btn = QPushButton("Translate")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.metrics_label = QLabel("")
        self.metrics_label.setWordWrap(True)

        model_row = QHBoxLayout()
        model_row.addWidget(self.model_edit)
        model_row.addWidget(self.browse_btn)
        form = QFormLayout()
        form.addRow("image", self.layer_combo)
        form.addRow("model", model_row)
        form.addRow("direction", self.direction_combo)
        form.addRow("device", self.device_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.quality_check)
        layout.addLayout(buttons)
        layout.addWidget(self.status_label)
        layout.addWidget(self.metrics_label)
        layout.addStretch(1)

        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ UI state

    def _refresh_layers(self, *_) -> None:
        current = self.layer_combo.currentText()
        self.layer_combo.clear()
        names = [lyr.name for lyr in rgb_image_layers(self.viewer)]
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Translation model folder")
        if folder:
            self.model_edit.setText(folder)

    def _set_busy(self, busy: bool) -> None:
        self.run_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)

    def _set_status(self, text: str) -> None:
        # A tile event queued before a cancel may arrive after the job ended: keep "cancelled".
        if self.runner.running:
            self.status_label.setText(text)

    # ------------------------------------------------------------------ actions

    def run(self):
        """Start translating the chosen layer; returns the worker (None when nothing to do)."""
        name = self.layer_combo.currentText()
        if not name or name not in self.viewer.layers:
            notify_error("choose an RGB image layer to translate")
            return None
        layer = self.viewer.layers[name]
        if layer.multiscale:
            notify_error(f"{name}: multiscale slides are not supported here; crop a region first")
            return None
        try:
            from ..core.io import to_rgb_uint8

            image = to_rgb_uint8(np.asarray(layer.data), name)
        except Exception as exc:
            notify_error(error_message(exc))
            return None
        import_torch_safely(with_piq=self.quality_check.isChecked())

        from ..core.translate import load_translator

        try:  # a few MB: loading here makes a wrong folder or device one immediate message
            model = load_translator(
                self.model_edit.text().strip() or DEFAULT_MODEL,
                self.direction_combo.currentText(),
                self.device_combo.currentText(),
            )
        except Exception as exc:
            msg = error_message(exc)
            self.status_label.setText(f"failed: {msg}")
            notify_error(msg)
            return None
        self._input_layer = layer
        self.metrics_label.setText("")
        return self.runner.start(
            _translate_job,
            image,
            model,
            self.direction_combo.currentText(),
            self.device_combo.currentText(),
            256,
            self.quality_check.isChecked(),
            description="translate",
            on_done=self._on_done,
        )

    def cancel(self) -> None:
        """Stop the running translation between two tiles."""
        self.runner.cancel()

    def _on_done(self, result) -> None:
        image, scores = result
        src = self._input_layer
        label = "H&E" if self.direction_combo.currentText() == "ihc2he" else "IHC"
        name = f"{src.name} as {label}" if src is not None else f"translated as {label}"
        kwargs = {}
        if src is not None:
            kwargs = {"scale": src.scale, "translate": src.translate}
        add_or_update_image(self.viewer, name, image, rgb=True, **kwargs)
        self.status_label.setText(f"done: {name}")
        if scores:
            from ..core.translate.quality import METRIC_BY_KEY

            self.metrics_label.setText(
                "round trip vs input: "
                + ", ".join(
                    f"{METRIC_BY_KEY[k].name} {v:.3f} ({METRIC_BY_KEY[k].better})"
                    for k, v in scores.items()
                )
            )
