"""The "Stain normalization" dock widget: pick a template by eye, fit, preview class maps, normalize.

Thin over :mod:`napari_histo.core.stain.workflow`: it gathers inputs, runs the core generators in a
worker, and adds layers in the worker's callbacks on the main thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox
from qtpy.QtCore import QSize
from qtpy.QtWidgets import (
    QListWidget,
    QListWidgetItem,
    QTableWidget,
    QTableWidgetItem,
)

from ..core.stain import DEFAULT_METHOD, METHODS
from ._common import (
    FormJobMixin,
    JobRunner,
    add_or_update_image,
    add_or_update_labels,
    ask_path,
    built_then_shown,
    device_choice,
    error_message,
    form,
    header,
    holder,
    layer_levels,
    notify_error,
    notify_info,
    qimage_icon,
    rgb_image_layers,
    start_worker,
    warm_up_torch,
    wrapped,
)
from ._viewer_state import viewer_state

if TYPE_CHECKING:
    import napari

_NAMES = {"dcgmm": "DCGMM (deep GMM)", "macenko": "Macenko", "reinhard": "Reinhard"}
#: What the method chooser shows for each of core.stain.METHODS, the default first.
METHOD_LABELS = {
    _NAMES.get(m, m.capitalize()): m for m in sorted(METHODS, key=lambda m: m != DEFAULT_METHOD)
}
#: Class-map colours (the DCGMM paper's convention): label value = class index + 1.
CLASS_COLOURS = {"background": "#3060ff", "surrounding tissue": "#30c030", "nuclei": "#ff3030"}
WHOLE_IMAGE = "(whole image)"


@dataclass
class Candidate:
    """A template candidate: an open layer, or an image file from a folder."""

    name: str
    layer: Any = None
    path: Path | None = None


class StainNormalizationWidget(FormJobMixin, Container):
    """Pick a stain template by eye, fit a normalizer, preview class maps and normalized layers.

    A magicgui form: the layer choosers follow the layer list; every action runs in a worker
    (:class:`JobRunner`: progress, Cancel). Only the thumbnail gallery and the "which helps"
    table are Qt widgets (magicgui has neither), each held by an empty magicgui Container.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        self.viewer = napari_viewer
        self.state = viewer_state(napari_viewer)
        self.candidates: list[Candidate] = []
        self._made_layers: set[str] = set()
        self._icons: dict = {}  # candidate key -> QIcon, decoded once (in a worker)
        self._thumb_workers: set = set()
        self._pyramid_dir: Path | None = None
        self.runner = JobRunner(on_busy=self._set_busy, on_status=self._set_status)
        super().__init__(widgets=self._build(), labels=False)
        self.refresh_candidates()
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._on_layers_changed)

    @property
    def normalizer(self):
        """The fitted normalizer, shared with the other widgets through the viewer state."""
        return self.state.normalizer

    @normalizer.setter
    def normalizer(self, value) -> None:
        self.state.set("normalizer", value)

    # ------------------------------------------------------------------ layout
    def _build(self) -> list:
        # 1. Template
        self.gallery = QListWidget()
        self.gallery.setViewMode(QListWidget.ViewMode.IconMode)
        self.gallery.setIconSize(QSize(96, 96))
        self.gallery.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.gallery.setMinimumHeight(140)
        self.gallery.setMovement(QListWidget.Movement.Static)
        self.gallery.setSpacing(4)
        # One cell per thumbnail, whether its icon has arrived or not: icons come from a worker
        # after the items are laid out, and cells sized by an icon-less item overlapped.
        self.gallery.setGridSize(QSize(112, 124))
        self.gallery.currentRowChanged.connect(self._on_template_clicked)
        self.add_folder_btn = PushButton(text="Add images from folder…")
        self.add_folder_btn.changed.connect(self._choose_folder)
        self.roi = ComboBox(
            label="Template regions",
            choices=self._roi_choices,
            tooltip="Rectangles of a Shapes layer drawn on the template: their regions become "
            "the template",
        )
        self.template_label = wrapped(Label(value="no template chosen"))

        # 2. Method and images
        self.method = ComboBox(label="Method", choices=list(METHOD_LABELS))
        self.method.changed.connect(self._on_method_changed)
        self.target = ComboBox(
            label="Normalize", choices=self._target_choices, tooltip="The image to normalize"
        )
        self.all_images = CheckBox(text="all open images")
        self.refit = CheckBox(
            text="refit DCGMM on the images to normalize",
            tooltip="Unchecked: use the shipped DCGMM fitted on public H&E (instant)",
        )
        self.steps = SpinBox(label="Refit steps", value=200, min=1, max=100_000)
        self.device = device_choice("Device")

        # 3. Preview and result
        self.show_classes = CheckBox(
            text="class map (nuclei / surrounding tissue / background)", value=True
        )
        self.show_probs = CheckBox(text="per-class probability images")
        self.reuse = CheckBox(
            text="re-use the current normalizer (no new fit)",
            tooltip="Apply the normalizer fitted or loaded last, e.g. a lab's saved template",
            enabled=False,
        )
        self.legend = Label(
            value=" ".join(
                f'<span style="color:{c}">■ {n}</span>' for n, c in CLASS_COLOURS.items()
            )
        )
        self.run_btn = PushButton(text="Fit && normalize")
        self.run_btn.changed.connect(self.run)
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.cancel_btn.changed.connect(self.cancel)
        self.which_btn = PushButton(
            text="Which normalization helps here?",
            tooltip="Normalize the image to normalize (or its field of view) with every method, "
            "segment each with the current model and compare: nuclei found, confidence, "
            "agreement between methods, and Dice / AJI against an open Labels layer named "
            "'<image> ground truth' or '<image> nuclei' when there is one",
        )
        self.which_btn.changed.connect(self.which_helps)
        self.which_table = QTableWidget(0, 0)
        self.which_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.which_table.setVisible(False)
        self._which_box = holder(self.which_table)
        self._which_box.visible = False
        self.compare = CheckBox(text="before / after side by side (grid)")
        self.compare.changed.connect(self._toggle_compare)
        self.save_btn = PushButton(text="Save normalizer…")
        self.save_btn.changed.connect(self._save_dialog)
        self.load_btn = PushButton(text="Load normalizer…")
        self.load_btn.changed.connect(self._load_dialog)

        self.status = wrapped(Label(value="ready"))
        self._on_method_changed(self.method.value)
        return [
            header("1. Template", "click a thumbnail"),
            holder(self.gallery),
            self.add_folder_btn,
            form([self.roi]),
            self.template_label,
            header("2. Method and images"),
            form([self.method, self.target, self.all_images, self.refit, self.steps, self.device]),
            header("3. Preview and result"),
            self.show_classes,
            self.show_probs,
            self.legend,
            self.reuse,
            form([self.run_btn, self.cancel_btn], layout="horizontal", labels=False),
            self.runner.bar,
            self.which_btn,
            self._which_box,
            self.compare,
            form([self.save_btn, self.load_btn], layout="horizontal", labels=False),
            self.status,
        ]

    # ------------------------------------------------------------------ candidates
    def _roi_choices(self, _widget=None) -> list[str]:
        from napari.layers import Shapes

        return [WHOLE_IMAGE, *(lyr.name for lyr in self.viewer.layers if isinstance(lyr, Shapes))]

    def _target_choices(self, _widget=None) -> list[str]:
        return [
            lyr.name for lyr in rgb_image_layers(self.viewer) if lyr.name not in self._made_layers
        ]

    def _on_layers_changed(self, event=None) -> None:
        self.refresh_candidates()

    def refresh_candidates(self) -> None:
        """Rebuild the gallery (open RGB layers + folder images) and the layer choosers.

        Thumbnails are decoded once per candidate, in a worker; items show their icon when it
        arrives. Layer events only rebuild the list (no pixels are read here).
        """
        chosen = self.current_template()
        files = [c for c in self.candidates if c.path is not None]
        layers = [
            Candidate(lyr.name, layer=lyr)
            for lyr in rgb_image_layers(self.viewer)
            if lyr.name not in self._made_layers
        ]
        self.candidates = layers + files
        self.gallery.blockSignals(True)
        self.gallery.clear()
        missing = []
        for cand in self.candidates:
            item = QListWidgetItem(cand.name if len(cand.name) < 18 else cand.name[:16] + "…")
            item.setToolTip(cand.name if cand.path is None else str(cand.path))
            key = _thumb_key(cand)
            if key in self._icons:  # None: its thumbnail is still being read
                if self._icons[key] is not None:
                    item.setIcon(self._icons[key])
            else:
                missing.append((key, cand.layer.data if cand.layer is not None else cand.path))
            self.gallery.addItem(item)
        if chosen is not None:
            for i, cand in enumerate(self.candidates):
                if cand.name == chosen.name and cand.path == chosen.path:
                    self.gallery.setCurrentRow(i)
        self.gallery.blockSignals(False)
        if missing:
            self._load_thumbnails(missing)

        self.reset_choices()  # the layer choosers follow the layer list

    def _load_thumbnails(self, missing: list) -> None:
        from napari.qt.threading import create_worker

        for key, _ in missing:
            self._icons[key] = None  # asked for: not again while the worker runs
        worker = create_worker(_thumbnails_job, missing, _start_thread=False, _ignore_errors=True)

        def apply(thumbs) -> None:
            for key, thumb in thumbs:
                self._icons[key] = qimage_icon(thumb) if thumb is not None else None
            for i, cand in enumerate(self.candidates):
                icon = self._icons.get(_thumb_key(cand))
                item = self.gallery.item(i)
                if icon is not None and item is not None and item.icon().isNull():
                    item.setIcon(icon)

        worker.returned.connect(apply)
        worker.finished.connect(lambda: self._thumb_workers.discard(worker))
        self._thumb_workers.add(worker)
        start_worker(worker)

    @property
    def thumbnails_loading(self) -> bool:
        return bool(self._thumb_workers)

    def add_folder(self, folder: str | Path) -> int:
        """Add every image of ``folder`` to the gallery; returns how many were added."""
        from ..core.io import list_images

        paths = list_images(folder)
        known = {c.path for c in self.candidates}
        new = [Candidate(p.stem, path=p) for p in paths if p not in known]
        self.candidates += new
        self.refresh_candidates()
        if not new:
            notify_info(f"no new images found in {folder}")
        return len(new)

    def _choose_folder(self) -> None:
        folder = ask_path("d", "Folder with candidate template images", parent=self.native)
        if folder:
            self.add_folder(folder)

    def current_template(self) -> Candidate | None:
        row = self.gallery.currentRow()
        return self.candidates[row] if 0 <= row < len(self.candidates) else None

    def select_template(self, name: str) -> None:
        """Select the candidate called ``name`` (as a click on its thumbnail does)."""
        for i, cand in enumerate(self.candidates):
            if cand.name == name:
                self.gallery.setCurrentRow(i)
                return
        raise ValueError(f"no template candidate called {name!r}")

    def _on_template_clicked(self, row: int) -> None:
        cand = self.current_template()
        if cand is None:
            return
        if cand.layer is None:
            # Show the chosen file in the viewer: the user sees the template they picked.
            name = f"template: {cand.name}"
            if name in self.viewer.layers:
                cand.layer = self.viewer.layers[name]
            else:
                self._open_template_file(cand, name)
                return
        else:
            self.viewer.layers.selection.active = cand.layer
        self.template_label.value = f"template: <b>{cand.name}</b>"

    def _open_template_file(self, cand: Candidate, name: str) -> None:
        """Read a folder image in a worker, then show it: the user sees the template they picked."""
        from napari.qt.threading import create_worker

        worker = create_worker(_read, cand.path, _start_thread=False, _ignore_errors=True)

        def show(image) -> None:
            if name not in self.viewer.layers:
                self.viewer.add_image(image, name=name, rgb=True)
            cand.layer = self.viewer.layers[name]
            if self.current_template() is cand:
                self.template_label.value = f"template: <b>{cand.name}</b>"

        worker.returned.connect(show)
        worker.errored.connect(lambda exc: notify_error(error_message(exc)))
        worker.finished.connect(lambda: self._thumb_workers.discard(worker))
        self._thumb_workers.add(worker)
        self.template_label.value = f"reading {cand.name}…"
        start_worker(worker)

    # ------------------------------------------------------------------ inputs
    def template_images(self) -> list[np.ndarray]:
        """The template as arrays: the whole image, or the regions of the chosen Shapes layer.

        Lazy where the template is (a pyramid's level, a dask crop): :func:`_job` reads them in
        the worker. Call ``np.asarray`` on each to get pixels.
        """
        from ..core.errors import HistoError
        from ..core.io.regions import crop_rectangles, pick_level

        cand = self.current_template()
        if cand is None:
            raise HistoError("no template chosen: click a thumbnail in the gallery first")
        if cand.layer is None:
            raise HistoError(f"{cand.name} is still being read: try again in a moment")
        data = cand.layer.data
        levels = list(data) if getattr(cand.layer, "multiscale", False) else [data]
        _check_rgb(cand.name, levels[0])
        roi = self.roi.value
        if roi and roi != WHOLE_IMAGE:
            shapes = self.viewer.layers[roi]
            rects = [
                shapes.data[i]
                for i, kind in enumerate(shapes.shape_type)
                if kind in ("rectangle", "polygon")
            ]
            if not rects:
                raise HistoError(
                    f"Shapes layer '{roi}' has no rectangles: draw one or more on the template"
                )
            base = cand.layer
            # Vertex by vertex: Shapes data -> world -> template pixels (scale/translate aware).
            verts = [
                np.array([base.world_to_data(shapes.data_to_world(p)) for p in r])
                if base is not None
                else np.asarray(r)
                for r in rects
            ]
            from ..core.io.regions import rectangle_slices

            slices = rectangle_slices(verts, levels[0].shape)
            if not slices:  # the core's message
                return crop_rectangles(levels[0], verts, source=cand.name)
            return [levels[0][rs, cs] for rs, cs in slices]
        return [levels[pick_level(levels)]]

    def target_layers(self) -> list:
        from ..core.errors import HistoError

        layers = [
            c.layer for c in self.candidates if c.layer is not None and c.name in self.viewer.layers
        ]
        layers = [lyr for lyr in layers if not lyr.name.startswith("template: ")] or layers
        if not self.all_images.value:
            name = self.target.value
            layers = [lyr for lyr in layers if lyr.name == name]
        if not layers:
            raise HistoError(
                "no image to normalize: open an RGB H&E image (grayscale and label layers cannot be normalized)"
            )
        for lyr in layers:
            _check_rgb(lyr.name, layer_levels(lyr)[0])
        return layers

    # ------------------------------------------------------------------ run
    def run(self):
        """Fit the normalizer to the template and normalize the chosen images (in a worker)."""
        if self.runner.running:
            return None
        reuse = self.reuse.value and self.normalizer is not None
        try:
            templates = [] if reuse else self.template_images()
            layers = self.target_layers()
        except Exception as exc:
            notify_error(error_message(exc))
            self._set_status(error_message(exc))
            return None
        method = METHOD_LABELS[self.method.value]
        targets = [(lyr.name, layer_levels(lyr) if lyr.multiscale else lyr.data) for lyr in layers]
        fit_on = None
        if method == "dcgmm" and self.refit.value:
            from ..core.io.regions import pick_level

            fit_on = [lv[pick_level(lv)] if isinstance(lv, list) else lv for _, lv in targets]
        if any(isinstance(lv, list) for _, lv in targets) and self._pyramid_dir is None:
            import tempfile

            self._pyramid_dir = Path(tempfile.mkdtemp(prefix="napari-histo-normalized-"))
        return self.runner.start(
            _job,
            self.normalizer if reuse else method,
            templates,
            targets,
            fit_on,
            self.steps.value,
            self.device.value,
            self.show_classes.value,
            self.show_probs.value,
            self._pyramid_dir,
            description="Stain normalization",
            on_event=self._on_event,
            on_done=self._on_done,
            torch=True,
        )

    def which_helps(self):
        """Compare every method on the chosen image by the segmentation it leads to (a worker)."""
        if self.runner.running:
            return None
        from ..core.errors import HistoError

        try:
            templates = self.template_images()
            layers = self.target_layers()
            if len(layers) != 1 or layers[0].multiscale:
                raise HistoError(
                    "choose one (tile-sized) image to normalize for the comparison, not all images "
                    "or a whole slide"
                )
            layer = layers[0]
            truth = None
            for suffix in (" ground truth", " nuclei"):
                name = layer.name + suffix
                if (
                    name in self.viewer.layers
                    and self.viewer.layers[name].data.shape == layer.data.shape[:2]
                ):
                    truth = self.viewer.layers[name].data
                    break
        except Exception as exc:
            notify_error(error_message(exc))
            self._set_status(error_message(exc))
            return None
        self._set_status("comparing the methods…")
        return self.runner.start(
            _compare_job,
            layer.data,
            templates,
            self.state.model_ref or "default",
            self.device.value,
            truth,
            description="Which normalization helps here?",
            on_done=lambda comp: self._show_comparison(layer, comp),
            torch=True,
        )

    def _show_comparison(self, layer, comp) -> None:
        rows = comp.rows()
        keys = [k for k in rows[0] if k != "best"]
        self.which_table.setColumnCount(len(keys))
        self.which_table.setRowCount(len(rows))
        self.which_table.setHorizontalHeaderLabels(keys)
        for i, r in enumerate(rows):
            for j, k in enumerate(keys):
                item = QTableWidgetItem(str(r[k]))
                if r["best"]:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.which_table.setItem(i, j, item)
        self.which_table.resizeColumnsToContents()
        self.which_table.setVisible(True)
        self._which_box.visible = True
        kwargs = {"scale": layer.scale[-2:], "translate": layer.translate[-2:]}
        for o in comp.outcomes:
            name = f"{layer.name} [{o.method}]"
            add_or_update_image(self.viewer, name, o.image, rgb=True, visible=False, **kwargs)
            lab = f"{name} nuclei"
            if lab in self.viewer.layers:
                self.viewer.layers[lab].data = o.labels
            else:
                self.viewer.add_labels(o.labels, name=lab, visible=False, opacity=0.5, **kwargs)
        self.last_comparison = comp
        self._set_status(f"best here: {comp.best} (ranked by {comp.ranked_by})")

    def _on_event(self, event) -> None:
        from ..core.stain.workflow import NormalizedImage

        payload = getattr(event, "payload", None)
        if isinstance(payload, NormalizedImage):
            self._show_result(payload)

    def _on_done(self, normalizer) -> None:
        self.normalizer = normalizer
        self.reuse.enabled = True
        self._set_status(f"done: {getattr(normalizer, 'name', 'normalizer')} applied")

    def _show_result(self, res) -> None:
        """Add (or update) the result layers, one per event-loop turn (``JobRunner.in_turns``)."""
        source = self.viewer.layers[res.name] if res.name in self.viewer.layers else None  # noqa: SIM401
        kwargs = {}
        if source is not None:
            kwargs = {"scale": source.scale, "translate": source.translate}
        out_name = f"{res.name} normalized"
        self._made_layers.add(out_name)
        multiscale = isinstance(res.image, list)
        steps = [
            built_then_shown(
                add_or_update_image,
                self.viewer,
                out_name,
                res.image,
                rgb=True,
                multiscale=multiscale,
                **kwargs,
            )
        ]
        scale = np.asarray(kwargs.get("scale", (1.0, 1.0)))[-2:] * (2**res.class_level)
        names = list(res.class_names or CLASS_COLOURS)
        if res.class_map is not None and self.show_classes.value:
            name = f"{res.name} classes"
            self._made_layers.add(name)
            classes = {i + 1: n for i, n in enumerate(names)}
            steps.append(
                built_then_shown(
                    add_or_update_labels,
                    self.viewer,
                    name,
                    res.class_map.astype(np.uint8) + 1,
                    colormap=_class_colormap(names),
                    opacity=0.45,
                    scale=scale,
                    on_layer=lambda layer: layer.metadata.update(classes=classes),
                )
            )
        if res.probabilities is not None:
            for k in range(res.probabilities.shape[-1]):
                cname = names[k] if k < len(names) else f"class {k}"
                name = f"{res.name} P({cname})"
                self._made_layers.add(name)
                steps.append(
                    built_then_shown(
                        add_or_update_image,
                        self.viewer,
                        name,
                        res.probabilities[..., k],
                        colormap="gray",
                        contrast_limits=(0, 1),
                        visible=False,
                        scale=scale,
                    )
                )
        for note in res.notes:
            steps.append(lambda note=note: notify_info(note))
        self.runner.in_turns(*steps)

    # ------------------------------------------------------------------ misc
    def _toggle_compare(self, on: bool) -> None:
        grid = _grid(self.viewer)
        grid.enabled = on
        if on:
            grid.shape = (1, -1)

    def save(self, path: str | Path):
        """Save the fitted normalizer (atomic write in the core, in a worker; returns it)."""
        from ..core.errors import HistoError

        if self.normalizer is None:
            raise HistoError("nothing to save yet: fit a normalizer first")
        if self.runner.running:
            raise HistoError("wait for the running job to finish (or cancel it)")
        return self.runner.call(
            self.normalizer.save,
            path,
            stage="saving",
            description="Save normalizer",
            on_done=lambda _: self._set_status(f"saved to {path}"),
        )

    def load(self, path: str | Path):
        """Load a saved normalizer in a worker; it becomes the current one (returns the worker)."""
        from ..core.errors import HistoError
        from ..core.stain import load_normalizer

        if self.runner.running:
            raise HistoError("wait for the running job to finish (or cancel it)")

        def loaded(normalizer) -> None:
            self.normalizer = normalizer
            self.reuse.enabled = True
            self.reuse.value = True
            method = getattr(normalizer, "name", None)
            for label, key in METHOD_LABELS.items():
                if key == method:
                    self.method.value = label
            self._set_status(f"loaded {Path(path).name}")

        return self.runner.call(
            load_normalizer,
            path,
            stage="loading",
            description="Load normalizer",
            on_done=loaded,
            torch=True,
        )

    def _save_dialog(self) -> None:
        path = ask_path(
            "w", "Save normalizer", "normalizer.json", "Normalizer (*.json *.safetensors)",
            parent=self.native,
        )  # fmt: skip
        if path:
            try:
                self.save(path)
            except Exception as exc:
                notify_error(error_message(exc))

    def _load_dialog(self) -> None:
        path = ask_path(
            "r", "Load normalizer", None, "Normalizer (*.json *.safetensors)", parent=self.native
        )
        if path:
            try:
                self.load(path)
            except Exception as exc:
                notify_error(error_message(exc))

    def _on_method_changed(self, text: str) -> None:
        dcgmm = METHOD_LABELS.get(text) == "dcgmm"
        if dcgmm:
            warm_up_torch()  # DCGMM's network needs torch: import it while the form is read
        for w in (self.refit, self.steps, self.show_classes, self.show_probs, self.legend):
            w.enabled = dcgmm


def _grid(viewer):
    """The viewer's grid settings (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if hasattr(canvas, "grid") else viewer.grid


def _job(method, templates, targets, fit_on, steps, device, class_maps, probabilities, pyramid_dir):
    """The worker: fit (unless ``method`` is already a normalizer), then normalize each image.

    Lazy inputs (pyramid levels, dask crops) are read here. A normalized pyramid is computed into
    a zarr pyramid under ``pyramid_dir`` before its event goes to the GUI, so napari only ever
    reads stored pixels (never runs the normalizer in its render path).
    """
    from ..core.stain.workflow import (
        NormalizedImage,
        normalize_images,
        prepare_normalizer,
        write_levels_zarr_iter,
    )

    templates = [np.asarray(t) for t in templates]
    fit_on = None if fit_on is None else [np.asarray(a) for a in fit_on]
    if isinstance(method, str):
        normalizer = yield from prepare_normalizer(
            method, templates, fit_on=fit_on, steps=steps, device=device
        )
    else:
        normalizer = method
    gen = normalize_images(normalizer, targets, class_maps=class_maps, probabilities=probabilities)
    while True:
        try:
            event = next(gen)
        except StopIteration:
            break
        res = getattr(event, "payload", None)
        if isinstance(res, NormalizedImage) and not isinstance(res.image, np.ndarray):
            import dask.array as da

            levels = res.image if isinstance(res.image, list) else [res.image]
            folder = Path(pyramid_dir) / f"{_safe(res.name)}.zarr"
            arrays = yield from write_levels_zarr_iter(levels, folder, stage=f"{res.name}")
            stored = [da.from_zarr(a) for a in arrays]
            res.image = stored if isinstance(res.image, list) else stored[0]
        yield event
    return normalizer


def _compare_job(image, templates, model, device, truth):
    """Worker: every method on the image, judged by the segmentation it leads to."""
    from ..core.seg.compare import compare_normalizations_iter

    templates = [np.asarray(t) for t in templates]
    return (
        yield from compare_normalizations_iter(
            np.asarray(image), templates, model=model, device=device, truth=truth
        )
    )


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "image"


def _thumb_key(cand: Candidate):
    return ("path", str(cand.path)) if cand.layer is None else ("layer", id(cand.layer.data))


def _thumbnails_job(items: list) -> list:
    """Worker: a small preview of each (key, layer data or file path); None where unreadable."""
    from ..core.io.regions import thumbnail

    out = []
    for key, src in items:
        try:
            out.append((key, thumbnail(_read(src) if isinstance(src, Path) else src)))
        except Exception:
            out.append((key, None))
    return out


def _read(path: Path) -> np.ndarray:
    from ..core.io import read_image

    return read_image(path)


def _check_rgb(name: str, data) -> None:
    from ..core.errors import HistoError

    if data.ndim != 3 or data.shape[-1] not in (3, 4):
        raise HistoError(
            f"'{name}' is not an RGB image (shape {tuple(data.shape)}); choose an H&E colour image"
        )


def _class_colormap(names: list[str]):
    from napari.utils.colormaps import DirectLabelColormap

    colors = {None: "transparent", 0: "transparent"}
    for i, n in enumerate(names):
        colors[i + 1] = CLASS_COLOURS.get(n, "yellow")
    return DirectLabelColormap(color_dict=colors)


__all__ = ["StainNormalizationWidget"]
