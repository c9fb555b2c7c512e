"""The "Segment nuclei" dock widget: run a model, correct its labels, autosave the corrections.

Thin over the core: segmentation is :mod:`napari_histo.core.seg.workflow`, editing operations are
:mod:`napari_histo.core.labels.edit`, measurements :mod:`napari_histo.core.labels.measure`, the correction
folder :mod:`napari_histo.core.labels.project`. Layers are touched only on the main thread.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
)
from qtpy.QtCore import QTimer

from ._common import (
    FormJobMixin,
    JobRunner,
    add_or_update_image,
    ask_path,
    device_choice,
    error_message,
    form,
    layer_levels,
    model_choice,
    notify_error,
    notify_info,
    rgb_image_layers,
    select_model,
    start_worker,
    warm_up_torch,
    wrapped,
)
from ._viewer_state import viewer_state

if TYPE_CHECKING:
    import napari
    from napari.layers import Shapes

REGION_WHOLE = "whole image"
REGION_VIEW = "current field of view"
#: The Method chooser's first entry: the chosen model with the options of the form.
OWN_SETTINGS = ""
AUTOSAVE_DELAY_MS = 1500
#: The Shapes layer a user draws split lines in.
CUT_LAYER = "cut lines"

KEYS = {
    "n": "next free label id (paint a new nucleus)",
    "x": "delete the nucleus under the cursor",
    "m": "merge: press on one nucleus, then on the other",
    "s": "split the nucleus crossed by the last line drawn in 'cut lines' (made on first use)",
}


class SegmentWidget(FormJobMixin, Container):
    """Segment nuclei into an editable Labels layer; correct; corrections autosave as training pairs.

    A magicgui form. The image and region choosers follow the layer list; the model chooser is the
    cached model list (a fine-tuned version selects itself). Segmenting, autosave, measurements,
    export and restore run in workers.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        self.viewer = napari_viewer
        self.state = viewer_state(napari_viewer)
        self.runner = JobRunner(on_busy=self._set_busy, on_status=self._set_status)
        warm_up_torch()  # every action here needs torch: import it while the form is read
        self.labels_layer = None
        self._image_name = ""
        self._image_mpp: float | None = None  # the segmented image's pixel size, when segmented
        self._merge_first: int | None = None
        self._dirty = False
        self.last_saved: float | None = None
        self._measure_generation = 0
        self._measuring = None
        self._measure_workers: set = set()
        self._save_worker = None
        self._io_workers: set = set()
        super().__init__(widgets=self._build(), labels=False)
        self._save_timer = QTimer(self.native)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(AUTOSAVE_DELAY_MS)
        self._save_timer.timeout.connect(self.save_now)
        self.image.changed.connect(self._on_image_changed)
        self.mpp.changed.connect(self._on_mpp_changed)
        self.run_btn.changed.connect(lambda: self.run())
        self.cancel_btn.changed.connect(self.cancel)
        self.split_btn.changed.connect(lambda: self.split_last_line())
        self.restore_btn.changed.connect(lambda: self.restore_saved())
        self.export_btn.changed.connect(lambda: self._export_dialog())
        # A folder typed in (when editing ends) or chosen in the dialog: offer its corrections.
        self.project_dir.line_edit.native.editingFinished.connect(self._offer_current)
        self.project_dir.choose_btn.changed.connect(self._offer_current)
        self._on_image_changed(self.image.value)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.refresh_inputs)
        # A new model version (Fine-tune) refills the chooser (model_choice follows the cached
        # list) and selects itself.
        self.state.connect("model_ref", lambda ref: select_model(self.model, ref))

    # ------------------------------------------------------------------ layout
    def _build(self) -> list:
        from ..core.seg.workflow import PIPELINES

        self.image = ComboBox(
            label="Image",
            choices=self._image_choices,
            tooltip="RGB image layers (normalized ones last)",
        )
        self.model = model_choice("Model")
        self.model.tooltip = "Shipped models and your fine-tuned versions (those with weights)"
        self.method = ComboBox(
            label="Method",
            choices=[("the model above, with the options below", OWN_SETTINGS)]
            + [(preset.label, key) for key, preset in PIPELINES.items()],
            tooltip="A published method as one choice. Jung et al. 2019: the DCGMM fitted in "
            "Stain normalization, the newest trained Mask R-CNN, multiple inference merged as "
            "instances",
        )
        self.device = device_choice("Device")
        self.tta = CheckBox(text="multiple inference (flips + rotations, merged)")
        self.mpp = FloatSpinBox(
            label="Pixel size",
            value=0.0,
            min=0.0,
            max=10.0,
            step=0.05,
            tooltip="Pixel size of the image (read from the file where it says; 0.25 is 40x, "
            "0.5 is 20x). The image is resampled to the pixel size the model was trained at; "
            "when it is unknown, see the box below.",
        )
        spin = self.mpp.native
        spin.setDecimals(3)
        spin.setSpecialValueText("unknown")
        spin.setSuffix(" µm/px")
        self.guess_scale = CheckBox(
            value=True,
            text="unknown pixel size: guess it from the nuclei",
            tooltip="A first pass measures the nuclei; an image of smaller nuclei than the model "
            "learnt (a 20x tile, say) is enlarged and segmented again. The status says what "
            "was seen and done",
        )
        self.normalize = CheckBox(
            text="normalize to the current stain template first",
            tooltip="Uses the normalizer fitted in the Stain normalization widget",
        )
        self.translate = CheckBox(
            text="IHC image: translate to H&&E first (CycleGAN)",  # && is one & in a Qt button
            tooltip="Runs the shipped IHC → H&E generator (see the Translate widget) before "
            "segmenting; its weights are for non-commercial research only (trained on BCI and "
            "MoNuSeg data)",
        )
        self.region = ComboBox(label="Region", choices=self._region_choices)
        self.uncertainty = CheckBox(text="show uncertainty (where to correct first)")
        self.run_btn = PushButton(text="Segment")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)

        self.split_btn = PushButton(text="Split along last line")
        self.project_dir = FileEdit(
            label="Project folder",
            mode="d",
            nullable=True,
            tooltip="Where corrections autosave as training pairs",
        )
        self.project_dir.line_edit.native.setPlaceholderText("beside the image (default)")
        self.project_dir.choose_btn.text = "…"
        self.saved_label = wrapped(Label(value="nothing to save yet"))
        self.restore_btn = PushButton(
            text="Open saved corrections",
            tooltip="This image has corrections saved in the project folder",
            visible=False,
        )
        self.export_btn = PushButton(text="Export CSV + GeoJSON…")
        self.status = wrapped(Label(value="ready"))
        keys = "<br>".join(f"<b>{k.upper()}</b>: {text}" for k, text in KEYS.items())
        return [
            Label(value="<b>Segment</b>"),
            form(
                [
                    self.image,
                    self.model,
                    self.method,
                    self.device,
                    self.tta,
                    self.mpp,
                    self.guess_scale,
                    self.normalize,
                    self.translate,
                    self.region,
                    self.uncertainty,
                ]
            ),
            form([self.run_btn, self.cancel_btn], layout="horizontal", labels=False),
            self.runner.bar,
            wrapped(Label(value="<b>Correct</b>: napari's paint / fill / erase tools, plus keys")),
            wrapped(Label(value=keys)),
            self.split_btn,
            form([self.project_dir]),
            self.saved_label,
            self.restore_btn,
            self.export_btn,
            self.status,
        ]

    # ------------------------------------------------------------------ inputs
    def _image_choices(self, _widget=None) -> list[str]:
        layers = rgb_image_layers(self.viewer)
        plain = [lyr.name for lyr in layers if not lyr.name.endswith(" normalized")]
        return plain + [lyr.name for lyr in layers if lyr.name.endswith(" normalized")]

    def _region_choices(self, _widget=None) -> list[str]:
        from napari.layers import Shapes

        return [REGION_WHOLE, REGION_VIEW] + [
            f"rectangles of '{lyr.name}'"
            for lyr in self.viewer.layers
            if isinstance(lyr, Shapes) and lyr.name != CUT_LAYER
        ]

    def refresh_inputs(self, event=None) -> None:
        """The image and region choosers follow the layer list (the model list is cached).

        The saved corrections of the chosen image are offered again (a removed nuclei layer can
        be reopened from the project folder).
        """
        self.reset_choices()
        self._offer_current()

    def refresh_models(self, select: str | None = None) -> None:
        """List shipped models and the user's fine-tuned versions (newest first; cached list)."""
        self.model.reset_choices()
        select_model(self.model, select)

    def user_model_dir(self) -> Path:
        from ..core.seg.registry import user_model_dir

        return user_model_dir()

    def project(self):
        """The correction project of the current image (folder field, else beside the image)."""
        return self.project_for(self._image_name)

    def _region_slices(self, layer) -> list[tuple[slice, slice]]:
        from ..core.errors import HistoError
        from ..core.io.regions import rectangle_slices

        shape = layer_levels(layer)[0].shape
        region = self.region.value or REGION_WHOLE
        if region == REGION_VIEW:
            corners = np.asarray(layer.corner_pixels)[:, :2]
            verts = [np.array([corners[0], corners[1]])]
        elif region.startswith("rectangles of '"):
            shapes = self.viewer.layers[region[len("rectangles of '") : -1]]
            verts = [
                np.array([layer.world_to_data(shapes.data_to_world(p)) for p in d])
                for d in shapes.data
            ]
            if not verts:
                raise HistoError(f"'{shapes.name}' has no rectangles: draw the regions to segment")
        else:
            return [(slice(0, shape[0]), slice(0, shape[1]))]
        slices = rectangle_slices(verts, shape)
        if not slices:
            raise HistoError("the chosen region does not overlap the image")
        return slices

    # ------------------------------------------------------------------ run
    def run(self):
        """Segment the chosen image/region in a worker; the result goes to '<image> nuclei'."""
        if self.runner.running:
            return None
        from ..core.errors import HistoError

        try:
            name = self.image.value
            if not name or name not in self.viewer.layers:
                raise HistoError("no image to segment: open an RGB H&E image first")
            layer = self.viewer.layers[name]
            if layer.multiscale and self.region.value == REGION_WHOLE:
                raise HistoError(
                    f"'{name}' is a whole slide: choose 'current field of view' or rectangles, "
                    "or use the Whole slide widget"
                )
            slices = self._region_slices(layer)
            data = layer_levels(layer)[0]
            # Views (or lazy dask slices of a pyramid): read in the worker, not here.
            crops = [(rs, cs, data[rs, cs]) for rs, cs in slices]
            normalizer = self.state.fitted_normalizer() if self.normalize.value else None
            model = self.model.value or "default"
            tta = self.tta.value
            preset = self.method.value or None
            if preset is not None:
                from ..core.seg.workflow import PIPELINES, pipeline_model

                model = pipeline_model(preset)
                normalizer = self.state.normalizer
                if getattr(normalizer, "name", None) != PIPELINES[preset].normalize:
                    raise HistoError(
                        f"{PIPELINES[preset].label} normalizes with DCGMM first: fit DCGMM to a "
                        "template in Stain normalization, then segment"
                    )
                tta = PIPELINES[preset].tta
            full_shape = tuple(data.shape[:2])
            lname = f"{name} nuclei"
            previous = None
            if lname in self.viewer.layers and self.viewer.layers[lname].data.shape == full_shape:
                previous = np.array(self.viewer.layers[lname].data, copy=True)  # ~ms: a snapshot
        except Exception as exc:
            msg = error_message(exc)
            notify_error(msg)
            self._set_status(msg)
            return None
        self._image_name = name
        self._image_mpp = self.mpp.value or None
        self.state.set("project", self.project())
        self._set_status("segmenting…")
        return self.runner.start(
            _segment_regions_job,
            crops,
            model,
            self.device.value,
            tta,
            normalizer,
            "ihc2he_default" if self.translate.value else None,
            full_shape,
            previous,
            self.uncertainty.value,
            self.mpp.value or None,
            self.guess_scale.value,
            description="Segment nuclei",
            on_done=lambda res: self._show_result(layer, res),
            torch=True,
        )

    def segmented_mpp(self) -> float | None:
        """Pixel size of the segmented image, for its measurements (None: unknown).

        The field's when it was segmented, or as typed since while that image was the chosen
        one; choosing another image fills the field with that image's and leaves this alone.
        """
        return self._image_mpp

    def _on_mpp_changed(self, value: float) -> None:
        if self._image_name and self.image.value == self._image_name:
            self._image_mpp = value or None

    def _show_file_mpp(self, image_name: str | None) -> None:
        """Fill the pixel size from the layer's file metadata (the reader puts it there)."""
        if image_name and image_name in self.viewer.layers:
            mpp = self.viewer.layers[image_name].metadata.get("mpp")
            self.mpp.value = float(mpp) if mpp else 0.0

    def _show_result(self, layer, result) -> None:
        name = f"{layer.name} nuclei"
        labels, conf, n = result["labels"], result["confidence"], result["n"]
        kwargs = {"scale": layer.scale[-2:], "translate": layer.translate[-2:]}
        if name in self.viewer.layers:
            lab_layer = self.viewer.layers[name]
            lab_layer.data = labels
        else:
            lab_layer = self.viewer.add_labels(labels, name=name, opacity=0.5, **kwargs)
        self._attach(lab_layer)
        if conf is not None:
            add_or_update_image(
                self.viewer,
                f"{layer.name} uncertainty",
                1.0 - conf,
                colormap="magma",
                contrast_limits=(0, 1),
                opacity=0.6,
                blending="additive",
                **kwargs,
            )
        self._set_status(
            f"{n} nuclei found ({result.get('scale', 'pixel size as given')}); correct them "
            "with the label tools, they autosave"
        )
        self.refresh_measurements()
        self.viewer.layers.selection.active = lab_layer

    # ------------------------------------------------------------------ editing
    def _attach(self, lab_layer) -> None:
        """Key bindings and autosave for our Labels layer (once per layer)."""
        if self.labels_layer is lab_layer:
            return
        self.labels_layer = lab_layer
        lab_layer.metadata["napari_histo_image"] = self._image_name
        lab_layer.events.paint.connect(self.mark_dirty)
        lab_layer.events.data.connect(self.mark_dirty)
        lab_layer.bind_key("n", lambda lyr: self.next_label(), overwrite=True)
        lab_layer.bind_key(
            "x", lambda lyr: self.delete_at(self.viewer.cursor.position), overwrite=True
        )
        lab_layer.bind_key(
            "m", lambda lyr: self.merge_at(self.viewer.cursor.position), overwrite=True
        )
        lab_layer.bind_key("s", lambda lyr: self.split_last_line(), overwrite=True)

    def cut_lines_layer(self, select: bool = False) -> Shapes:
        """The 'cut lines' Shapes layer, made on first use (not with every segmentation: napari
        builds a Shapes layer's text overlay on the GUI thread, ~100 ms of the first click).

        A new layer is built hidden and shown (then put in path mode) in later event-loop turns:
        building it and drawing it for the first time are two separate stalls of about the same
        size, which one callback would add up.
        """
        if CUT_LAYER in self.viewer.layers:
            return self.viewer.layers[CUT_LAYER]
        layer = self.viewer.add_shapes(
            name=CUT_LAYER,
            edge_color="yellow",
            edge_width=2,
            face_color="transparent",
            visible=False,
        )
        if not select and self.labels_layer is not None:
            self.viewer.layers.selection.active = self.labels_layer

        def draw_mode() -> None:
            # unless the user has moved on meanwhile (another layer, another mode, layer gone);
            # by name: a plugin's viewer is a proxy, whose layers are new proxies at each access
            active = self.viewer.layers.selection.active
            if active is not None and active.name == CUT_LAYER and active.mode == "pan_zoom":
                active.mode = "add_path"

        steps = [lambda: setattr(layer, "visible", True)] + ([draw_mode] if select else [])
        self.runner.in_turns(*steps)
        return layer

    def _label_at(self, position) -> int:
        value = self.labels_layer.get_value(position, world=True)
        return int(value or 0)

    def next_label(self) -> int:
        from ..core.labels.edit import next_free_label

        self.labels_layer.selected_label = next_free_label(self.labels_layer.data)
        return self.labels_layer.selected_label

    def _replace(self, new_data: np.ndarray, message: str) -> None:
        self.labels_layer.data = new_data
        self._set_status(message)
        self.mark_dirty()

    def delete_at(self, position) -> None:
        from ..core.labels.edit import delete_label

        self._guard(
            lambda: self._replace(
                delete_label(self.labels_layer.data, self._label_at(position)), "nucleus deleted"
            )
        )

    def merge_at(self, position) -> None:
        from ..core.labels.edit import merge_labels

        label = self._label_at(position)
        if self._merge_first is None:
            self._merge_first = label
            self._set_status(f"merge: nucleus {label} chosen; press M on the other one")
            return
        first, self._merge_first = self._merge_first, None
        self._guard(
            lambda: self._replace(
                merge_labels(self.labels_layer.data, first, label),
                f"nucleus {label} merged into {first}",
            )
        )

    def split_last_line(self) -> None:
        from ..core.labels.edit import split_label

        def do():
            if CUT_LAYER not in self.viewer.layers or not len(self.viewer.layers[CUT_LAYER].data):
                # A step of the tool, not an error: the hint goes to the status lines, not to an
                # error toast.
                self.cut_lines_layer(select=True)
                hint = (
                    f"draw a line or path across the nucleus in the '{CUT_LAYER}' layer (now "
                    "selected), then split again (S)"
                )
                self._set_status(hint)
                self.viewer.status = hint
                return
            cuts = self.viewer.layers[CUT_LAYER]
            line = np.array(
                [self.labels_layer.world_to_data(cuts.data_to_world(p)) for p in cuts.data[-1]]
            )
            out, new = split_label(self.labels_layer.data, line)
            cuts.data = cuts.data[:-1]
            self._replace(out, f"nucleus split; new id(s) {new}")

        self._guard(do)

    def _guard(self, fn) -> None:
        if self.labels_layer is None:
            notify_error("segment an image first: the edit keys work on its nuclei layer")
            return
        try:
            fn()
        except Exception as exc:
            notify_error(error_message(exc))
            self._set_status(error_message(exc))

    # ------------------------------------------------------------------ autosave + measurements
    def mark_dirty(self, event=None) -> None:
        self._dirty = True
        self.saved_label.value = "● unsaved changes (autosave in a moment)"
        self._save_timer.start()

    def save_now(self):
        """Autosave: snapshot the corrected labels here (a copy, ~ms), write the pair in a worker.

        Decoding the saved image to compare, and writing PNG + TIFF, run off the GUI thread.
        Returns the worker (None when there is nothing to save). A save requested while one is
        being written waits for it (the timer is re-armed).
        """
        if self.labels_layer is None or self._image_name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[self._image_name]
        if layer.multiscale:
            return None
        if self._save_worker is not None:
            self._save_timer.start()
            return None
        from napari.qt.threading import create_worker

        labels = np.array(self.labels_layer.data, copy=True)
        image = layer.data  # image layers are not edited in place: no copy needed
        try:
            project = self.project()
        except Exception as exc:
            self._save_failed(exc)
            return None
        worker = create_worker(
            _save_pair_job,
            project,
            self._image_name,
            image,
            labels,
            str(layer.source.path or ""),
            _start_thread=False,
            _ignore_errors=True,
        )

        def saved(pair) -> None:
            self._dirty = self._save_timer.isActive()
            self.last_saved = time.time()
            self.saved_label.value = (
                f"✓ saved {time.strftime('%H:%M:%S')} to {pair.mask.parent.parent}"
            )
            self.refresh_measurements()

        def done() -> None:
            self._save_worker = None

        worker.returned.connect(saved)
        worker.errored.connect(self._save_failed)
        worker.finished.connect(done)
        self._save_worker = worker
        self.saved_label.value = "saving…"
        start_worker(worker)
        return worker

    def _save_failed(self, exc) -> None:
        self.saved_label.value = f"⚠ not saved: {error_message(exc)}"
        notify_error(f"corrections not saved: {error_message(exc)}")

    def refresh_measurements(self) -> None:
        """Per-nucleus measurements as the labels layer's features table (computed off the GUI thread).

        regionprops on a tile of a few hundred nuclei takes about a second: it runs in a worker and
        the table is set when it returns, unless the labels changed again meanwhile.
        """
        if self.labels_layer is None:
            return
        from napari.qt.threading import create_worker

        image = None
        if self._image_name in self.viewer.layers:
            layer = self.viewer.layers[self._image_name]
            image = None if getattr(layer, "multiscale", False) else np.asarray(layer.data)
        labels = np.asarray(self.labels_layer.data).copy()
        self._measure_generation += 1
        generation, target = self._measure_generation, self.labels_layer

        def apply(df) -> None:
            if generation == self._measure_generation and target is self.labels_layer:
                target.features = df

        def done() -> None:
            self._measure_workers.discard(worker)
            if not self._measure_workers:
                self._measuring = None

        worker = create_worker(
            _measure_table,
            labels,
            image,
            self.segmented_mpp(),
            _start_thread=False,
            _ignore_errors=True,
        )
        worker.returned.connect(apply)
        worker.errored.connect(
            lambda exc: notify_error(f"measurements not updated: {error_message(exc)}")
        )
        worker.finished.connect(done)
        # Hold every running worker: a replaced one must not be garbage-collected mid-run.
        self._measure_workers.add(worker)
        self._measuring = worker
        start_worker(worker)

    def export(self, csv: str | Path | None = None, geojson: str | Path | None = None):
        """Write the measurements (CSV) and/or outlines (GeoJSON) in a worker; returns it."""
        from ..core.errors import HistoError

        if self.labels_layer is None:
            raise HistoError("segment an image first")
        if self.runner.running:
            raise HistoError("wait for the running job to finish (or cancel it)")
        labels = np.array(self.labels_layer.data, copy=True)
        image = None
        if self._image_name in self.viewer.layers:
            layer = self.viewer.layers[self._image_name]
            image = None if layer.multiscale else layer.data
        self._set_status("exporting…")
        return self.runner.call(
            _export_job,
            labels,
            image,
            None if csv is None else Path(csv),
            None if geojson is None else Path(geojson),
            self.segmented_mpp(),  # the file's or the user's pixel size, never a guess
            stage="exporting",
            description="Export nuclei",
            on_done=self._exported,
        )

    def export_csv(self, path: str | Path):
        """Write the per-nucleus measurements to ``path`` (in a worker; returns it)."""
        return self.export(csv=path)

    def _exported(self, result) -> None:
        n, paths = result
        msg = f"{n} nuclei exported to " + " and ".join(str(p) for p in paths)
        self._set_status(msg)
        notify_info(msg)

    def _export_dialog(self) -> None:
        if self.labels_layer is None:
            notify_error("segment an image first")
            return
        path = ask_path(
            "w",
            "Export nuclei (CSV measurements + GeoJSON outlines)",
            start=f"{self._image_name}_nuclei.csv",
            filter="CSV (*.csv)",
            parent=self.native,
        )
        if path:
            try:
                self.export(csv=path, geojson=Path(path).with_suffix(".geojson"))
            except Exception as exc:
                notify_error(error_message(exc))

    def offer_saved(self, image_name: str):
        """Saved corrections for an image, if the project has them (None otherwise)."""
        try:
            return self.project_for(image_name).find(image_name)
        except Exception:  # an unreadable project folder offers nothing
            return None

    def project_for(self, image_name: str):
        """The correction project of ``image_name`` (folder field, else beside that image)."""
        from ..core.labels.project import default_project_dir, open_project

        text = (self.project_dir.line_edit.value or "").strip()
        if text:
            return open_project(text)
        path = None
        if image_name in self.viewer.layers:
            layer = self.viewer.layers[image_name]
            path = layer.source.path or layer.metadata.get("path")
        return open_project(default_project_dir(path))

    def _on_image_changed(self, image_name: str | None = None) -> None:
        """Another image chosen: its pixel size from the file, its saved corrections offered."""
        self._show_file_mpp(image_name)
        self._offer_saved(image_name)

    def _offer_current(self, *_) -> None:
        self._offer_saved(self.image.value)

    def _offer_saved(self, image_name: str | None = "") -> None:
        pair = self.offer_saved(image_name) if image_name else None
        if self.restore_btn.native.isHidden() == (pair is not None):
            # only a change: showing or hiding it relayouts the dock and redraws the window
            self.restore_btn.visible = pair is not None
        if pair is not None:
            self.restore_btn.text = f"Open saved corrections of '{image_name}'"

    def restore_saved(self):
        """Open the saved corrected labels of the chosen image (read in a worker; returns it)."""
        name = self.image.value
        if self.runner.running or not name or name not in self.viewer.layers:
            return None
        try:
            project = self.project_for(name)
        except Exception as exc:
            notify_error(f"saved corrections not opened: {error_message(exc)}")
            return None
        layer = self.viewer.layers[name]
        shape = tuple(layer_levels(layer)[0].shape[:2])
        return self.runner.call(
            _load_pair_job,
            project,
            name,
            shape,
            stage="opening the saved corrections",
            description="Open corrections",
            on_done=lambda labels: self._show_restored(name, labels),
            on_error=lambda exc: notify_error(
                f"saved corrections not opened: {error_message(exc)}"
            ),
        )

    def _show_restored(self, name: str, labels: np.ndarray):
        if name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        self._image_name = name
        self._image_mpp = float(layer.metadata.get("mpp") or 0) or None
        kwargs = {"scale": layer.scale[-2:], "translate": layer.translate[-2:]}
        lname = f"{name} nuclei"
        if lname in self.viewer.layers:
            lab_layer = self.viewer.layers[lname]
            lab_layer.data = labels
        else:
            lab_layer = self.viewer.add_labels(labels, name=lname, opacity=0.5, **kwargs)
        self._attach(lab_layer)
        self.refresh_measurements()
        self._dirty = False
        self.saved_label.value = "✓ saved corrections opened"
        return lab_layer


def _segment_regions_job(
    crops,
    model,
    device,
    tta,
    normalizer,
    translator,
    full_shape,
    previous,
    uncertainty,
    mpp=None,
    guess_scale=False,
):
    """Worker: read and segment each region crop, paste the nuclei into the label image."""
    from ..core.seg.registry import load_model
    from ..core.seg.workflow import merge_regions, scale_note, segment_regions_iter

    crops = [(rs, cs, np.asarray(crop)) for rs, cs, crop in crops]
    outputs = yield from segment_regions_iter(
        crops, model, device, tta, normalizer, translator, mpp=mpp, guess_scale=guess_scale
    )
    labels = previous if previous is not None else np.zeros(full_shape, np.uint32)
    conf = np.ones(full_shape, np.float32) if uncertainty else None
    labels, conf = merge_regions(labels, crops, outputs, conf)
    n = len(np.unique(labels)) - 1
    card = load_model(model, device).card  # the model just used: cached, no second read
    said = list(dict.fromkeys(r.scale for r in outputs if r.scale))  # per region, once each
    scale = "; ".join(said) if said else scale_note(mpp, card)
    return {"labels": labels, "confidence": conf, "n": n, "scale": scale}


def _save_pair_job(project, name, image, labels, source):
    """Worker: write the image + corrected labels pair (atomic, the image only when changed)."""
    return project.save_pair(name, np.asarray(image), labels, source=source)


def _load_pair_job(project, name, shape):
    _, labels = project.load_pair(name)
    if labels.shape != tuple(shape):
        raise ValueError(f"the saved labels {labels.shape} do not fit '{name}'")
    return labels.astype(np.uint32)


def _export_job(labels, image, csv, geojson, mpp=None):
    """Worker: measure every nucleus once (in µm too when ``mpp`` is known); write the CSV
    and/or the GeoJSON."""
    from ..core.labels.export import write_csv, write_geojson
    from ..core.labels.measure import measure_nuclei

    table = measure_nuclei(labels, None if image is None else np.asarray(image), mpp=mpp)
    paths = []
    if csv is not None:
        paths.append(write_csv(csv, table))
    if geojson is not None:
        paths.append(write_geojson(geojson, labels, table))
    n = len(table["label"]) if "label" in table else int(len(np.unique(labels)) - 1)
    return n, paths


def _measure_table(labels: np.ndarray, image: np.ndarray | None, mpp: float | None = None):
    """Worker: the measurements of every nucleus as a DataFrame indexed like napari features
    (in µm too when the pixel size is known)."""
    import pandas as pd

    from ..core.labels.measure import measure_nuclei

    df = pd.DataFrame(measure_nuclei(labels, image, mpp=mpp))
    df.insert(0, "index", df["label"])
    return df
