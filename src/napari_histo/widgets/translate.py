"""The "Translate IHC → H&E" dock widget: a CycleGAN generator run tile by tile in a worker."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton

from ._common import (
    JobRunner,
    add_or_update_image,
    device_choice,
    error_message,
    notify_error,
    rgb_image_layers,
    warm_up_torch,
    wrapped,
)
from ._viewer_state import viewer_state

if TYPE_CHECKING:
    import napari

DEFAULT_MODEL = "ihc2he_default"


def _translate_job(
    image: np.ndarray, model, direction: str, device: str, tile: int, with_quality: bool
) -> Generator:
    """Read, translate tile by tile, optionally score the round trip; returns (result, scores)."""
    from ..core.io import to_rgb_uint8
    from ..core.progress import Progress
    from ..core.translate import Translator, load_translator, translate_iter

    image = to_rgb_uint8(np.asarray(image), "image")
    if not isinstance(model, Translator):
        yield Progress(0, None, stage="load", message="loading the translation model")
    tr = model if isinstance(model, Translator) else load_translator(model, direction, device)
    result = yield from translate_iter(image, tr, tile=tile)
    scores = None
    if with_quality:
        from ..core.translate.quality import quality_scores

        other = "he2ihc" if direction == "ihc2he" else "ihc2he"
        back_model = load_translator(tr.path, other, device)
        yield Progress(0, None, stage="cycle", message="translating back, to score the round trip")
        back = yield from translate_iter(result, back_model, tile=tile)
        scores = quality_scores(back, image, names=("round trip", "input"))
    return result, scores


class TranslateWidget(Container):
    """Translate an RGB image layer between IHC and H&E appearance with a CycleGAN generator.

    A magicgui form: the image chooser follows the layer list (RGB image layers only); the model
    is loaded and the image translated in a worker, with progress and Cancel.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        self.viewer = napari_viewer
        self.runner = JobRunner(on_busy=self._set_busy, on_status=self._set_status)
        warm_up_torch()  # every action here needs torch: import it while the form is read
        viewer_state(napari_viewer)  # once per viewer: the collector and Shapes-crash guards
        self._input_layer = None
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.model = FileEdit(
            label="model",
            mode="d",
            value=DEFAULT_MODEL,
            tooltip="the shipped model name, or a model folder you trained. The shipped "
            "ihc2he_default is for non-commercial research only (trained on BCI and MoNuSeg "
            "data; see its card.md)",
        )
        self.direction = ComboBox(label="direction", choices=["ihc2he", "he2ihc"])
        self.device = device_choice("device")
        self.quality = CheckBox(text="quality vs cycle (slower: translates back)")
        self.run_btn = PushButton(text="Translate")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        buttons = Container(
            widgets=[self.run_btn, self.cancel_btn], layout="horizontal", labels=False
        )
        self.status_label = wrapped(Label(value=""))
        self.metrics_label = wrapped(Label(value=""))
        super().__init__(
            widgets=[
                self.image,
                self.model,
                self.direction,
                self.device,
                self.quality,
                buttons,
                self.runner.bar,
                self.status_label,
                self.metrics_label,
            ]
        )
        self.run_btn.changed.connect(self.run)
        self.cancel_btn.changed.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)

    def _image_choices(self, _widget=None):
        return [lyr.name for lyr in rgb_image_layers(self.viewer)]

    # ------------------------------------------------------------------ UI state

    def _set_busy(self, busy: bool) -> None:
        self.run_btn.enabled = not busy
        self.cancel_btn.enabled = busy

    def _set_status(self, text: str) -> None:
        # A tile event queued before a cancel may arrive after the job ended: keep "cancelled".
        if self.runner.running:
            self.status_label.value = text

    # ------------------------------------------------------------------ actions

    def run(self, *_):
        """Start translating the chosen layer; returns the worker (None when nothing to do)."""
        name = self.image.value
        if not name or name not in self.viewer.layers:
            notify_error("choose an RGB image layer to translate")
            return None
        if self.runner.running:
            return None
        layer = self.viewer.layers[name]
        if layer.multiscale:
            notify_error(f"{name}: multiscale slides are not supported here; crop a region first")
            return None
        self._input_layer = layer
        self.metrics_label.value = ""
        return self.runner.start(
            _translate_job,
            layer.data,
            str(self.model.value).strip() or DEFAULT_MODEL,
            self.direction.value,
            self.device.value,
            256,
            self.quality.value,
            description="translate",
            on_done=self._on_done,
            on_error=self._failed,
            torch=True,
        )

    def _failed(self, exc) -> None:
        msg = error_message(exc)
        self.status_label.value = f"failed: {msg}"
        notify_error(msg)

    def cancel(self, *_) -> None:
        """Stop the running translation between two tiles."""
        self.runner.cancel()

    def _on_done(self, result) -> None:
        image, scores = result
        src = self._input_layer
        label = "H&E" if self.direction.value == "ihc2he" else "IHC"
        name = f"{src.name} as {label}" if src is not None else f"translated as {label}"
        kwargs = {}
        if src is not None:
            kwargs = {"scale": src.scale, "translate": src.translate}
        add_or_update_image(self.viewer, name, image, rgb=True, **kwargs)
        self.status_label.value = f"done: {name}"
        if scores:
            from ..core.translate.quality import METRIC_BY_KEY

            self.metrics_label.value = "round trip vs input: " + ", ".join(
                f"{METRIC_BY_KEY[k].name} {v:.3f} ({METRIC_BY_KEY[k].better})"
                for k, v in scores.items()
            )
