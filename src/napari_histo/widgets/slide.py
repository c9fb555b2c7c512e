"""The "Whole slide" dock widget: segment a pyramidal slide on dask, view and edit the labels.

Thin over :mod:`napari_histo.core.slide` (processing), :mod:`napari_histo.core.slide.edit`
(region editing) and :mod:`napari_histo.core.slide.cluster` (local threads, local processes, or a
``dask.distributed`` scheduler).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)

from ._common import (
    FormJobMixin,
    JobRunner,
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
    warm_up_torch,
    wrapped,
)
from ._viewer_state import viewer_state

if TYPE_CHECKING:
    import napari

LOCAL_THREADS = "local threads"
LOCAL_PROCESSES = "local processes"
REMOTE = "dask scheduler at address"


class SlideWidget(FormJobMixin, Container):
    """Segment a whole slide tile by tile; open the labels pyramid; edit a region; export.

    A magicgui form: the slide chooser follows the layer list, the model chooser is the cached
    model list. Segmenting, opening, region reads and writes and the export run in workers.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        self.viewer = napari_viewer
        self.runner = JobRunner(on_busy=self._set_busy, on_status=self._set_status)
        warm_up_torch()  # every action here needs torch: import it while the form is read
        self.zarr_path: Path | None = None
        self.edit_region: tuple[slice, slice] | None = None
        self.state = viewer_state(napari_viewer)
        self.last_mapping: dict | None = None
        self.last_export: int | None = None
        super().__init__(widgets=self._build(), labels=False)
        self.where.changed.connect(self._on_where)
        self.run_btn.changed.connect(lambda: self.run())
        self.cancel_btn.changed.connect(self.cancel)
        self.open_btn.changed.connect(lambda: self._open_dialog())
        self.edit_btn.changed.connect(lambda: self.pull_region())
        self.save_btn.changed.connect(lambda: self.push_region())
        self.export_btn.changed.connect(lambda: self._export_dialog())
        self._on_where(self.where.value)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.refresh)
        # A new model version (Fine-tune) refills the chooser and selects itself.
        self.state.connect("model_ref", lambda ref: select_model(self.model, ref))

    def _build(self) -> list:
        self.slide = ComboBox(
            label="Slide",
            choices=lambda _w=None: [lyr.name for lyr in rgb_image_layers(self.viewer)],
        )
        self.model = model_choice("Model")
        self.model.tooltip = "Shipped models and your fine-tuned versions (those with weights)"
        self.device = device_choice("Device")
        self.tile = SpinBox(label="Tile (px)", value=1024, min=128, max=8192, step=256)
        self.halo = SpinBox(label="Halo (px)", value=64, min=0, max=512)
        self.tta = CheckBox(text="multiple inference")
        self.guess_scale = CheckBox(
            value=True,
            text="unknown pixel size: guess it from the nuclei",
            tooltip="When the file records no pixel size, the window with the most tissue is "
            "segmented first; a slide of smaller nuclei than the model learnt (20x, say) is "
            "enlarged window by window, all alike",
        )
        self.normalize = CheckBox(
            text="normalize to the current stain template first",
            tooltip="Uses the normalizer fitted in the Stain normalization widget, with one set "
            "of stain statistics for the whole slide (no seams between tiles)",
        )
        self.where = ComboBox(label="Run on", choices=[LOCAL_THREADS, LOCAL_PROCESSES, REMOTE])
        self.workers = SpinBox(label="Workers", value=2, min=1, max=256)
        self.address = LineEdit(label="Scheduler")
        self.address.native.setPlaceholderText("tcp://HOST:8786")
        self.out_dir = FileEdit(label="Output folder", mode="d", nullable=True)
        self.out_dir.line_edit.native.setPlaceholderText("beside the slide (default)")
        self.out_dir.choose_btn.text = "…"
        self.run_btn = PushButton(text="Segment slide")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.open_btn = PushButton(text="Open labels…")
        self.edit_btn = PushButton(
            text="Edit this region",
            tooltip="napari cannot paint on multiscale labels: pull the field of view into an "
            "editable layer",
        )
        self.save_btn = PushButton(text="Save region")
        self.export_btn = PushButton(text="Export GeoJSON + CSV…")
        self.status = wrapped(Label(value="ready"))
        return [
            Label(value="<b>Segment a slide</b>"),
            form(
                [
                    self.slide,
                    self.model,
                    self.device,
                    self.tile,
                    self.halo,
                    self.tta,
                    self.guess_scale,
                    self.normalize,
                    self.where,
                    self.workers,
                    self.address,
                    self.out_dir,
                ]
            ),
            form([self.run_btn, self.cancel_btn], layout="horizontal", labels=False),
            self.runner.bar,
            Label(value="<b>Results</b>"),
            form([self.open_btn, self.edit_btn, self.save_btn], layout="horizontal", labels=False),
            self.export_btn,
            self.status,
        ]

    def refresh(self, event=None) -> None:
        """The slide chooser follows the layer list (the model list is cached, not re-read)."""
        self.reset_choices()

    def _on_where(self, text: str) -> None:
        self.workers.enabled = text == LOCAL_PROCESSES
        self.address.enabled = text == REMOTE

    def _slide_layer(self):
        from ..core.errors import HistoError

        name = self.slide.value
        if not name or name not in self.viewer.layers:
            raise HistoError("no slide chosen: open a pyramidal TIFF/SVS (or any RGB image) first")
        return self.viewer.layers[name]

    def output_path(self, layer) -> Path:
        src = layer.source.path or layer.metadata.get("path")
        text = (self.out_dir.line_edit.value or "").strip()
        folder = Path(text) if text else (Path(src).parent if src else Path.home() / "napari-histo")
        stem = Path(src).name.split(".")[0] if src else layer.name
        return folder / f"{stem}.zarr"

    def run(self):
        if self.runner.running:
            return None
        from ..core.slide.segment import SlideTiling
        from ..core.slide.segmenter import ModelSegmenter

        try:
            layer = self._slide_layer()
            tiling = SlideTiling(tile=self.tile.value, halo=self.halo.value)
            where = self.where.value
            scheduler = self.address.value.strip() if where == REMOTE else None
            workers = self.workers.value if where == LOCAL_PROCESSES else None
            if where == REMOTE and not scheduler:
                from ..core.errors import HistoError

                raise HistoError("enter the scheduler's address, e.g. tcp://HOST:8786")
            segmenter = ModelSegmenter(
                self.model.value or "default",
                self.device.value,
                self.tta.value,
                layer.metadata.get("mpp"),  # the reader's, from the file: windows are resampled
            )
            out = self.output_path(layer)
            normalizer = self.state.fitted_normalizer() if self.normalize.value else None
        except Exception as exc:
            notify_error(error_message(exc))
            self._set_status(error_message(exc))
            return None
        levels = layer_levels(layer)
        return self.runner.start(
            _slide_job, levels, segmenter, out, tiling, scheduler, workers, normalizer,
            self.guess_scale.value,
            description="Whole slide", on_done=self._on_done, torch=True,
        )  # fmt: skip

    def _on_done(self, done) -> None:
        result, opened, said = done
        self._show_labels(opened)
        self._set_status(
            f"{result.n_nuclei} nuclei in {result.n_tissue_blocks}/{result.n_blocks} tissue tiles → {result.zarr_path}"
            + (f" ({said})" if said else "")
        )

    def open_labels(self, path: str | Path):
        """Show a labels pyramid as a multiscale Labels layer (aligned with the slide).

        The edit journal is replayed (an interrupted edit recovered) and the pyramid opened in a
        worker; the layer arrives when it returns. Returns the worker.
        """
        return self.runner.call(
            _open_labels_job,
            Path(path),
            stage="opening",
            description="Open labels",
            on_done=self._show_labels,
        )

    def _show_labels(self, opened):
        path, levels, recovered = opened
        if recovered:
            notify_info(f"{path.name}: an interrupted edit was recovered")
        name = f"{path.stem} nuclei"
        kwargs = {}
        try:
            base = self._slide_layer()
            kwargs = {"scale": base.scale[-2:], "translate": base.translate[-2:]}
        except Exception:
            pass
        # One level is an array, not a list of one (napari before 0.7 wants an array then).
        data = levels if len(levels) > 1 else levels[0]
        opacity, index, selected = 0.5, None, None
        if name in self.viewer.layers:
            # A new pyramid replaces the layer whole (napari 0.6 cannot take a new list of levels
            # as the data of a multiscale Labels layer); its place, opacity and label are kept.
            old = self.viewer.layers[name]
            opacity, selected = old.opacity, old.selected_label
            index = self.viewer.layers.index(old)
            self.viewer.layers.remove(old)
        # Built hidden, shown one event-loop turn later (as ``built_then_shown`` does): napari's
        # building of the layer and its first draw become two shorter GUI stalls instead of one.
        layer = self.viewer.add_labels(
            data, name=name, multiscale=len(levels) > 1, opacity=opacity, visible=False, **kwargs
        )
        if index is not None:
            self.viewer.layers.move(self.viewer.layers.index(layer), index)
            layer.selected_label = selected
        self.runner.in_turns(lambda: setattr(layer, "visible", True))
        self.zarr_path = path
        return layer

    # ------------------------------------------------------------------ region editing
    def view_region(self) -> tuple[slice, slice]:
        """The field of view in level-0 pixels of the slide."""
        layer = self._slide_layer()
        levels = layer_levels(layer)
        level = layer.data_level if layer.multiscale else 0
        corners = np.asarray(layer.corner_pixels)[:, :2].astype(float)
        f = np.asarray(levels[0].shape[:2], float) / np.asarray(levels[level].shape[:2], float)
        (r0, c0), (r1, c1) = corners[0] * f, (corners[1] + 1) * f
        return slice(int(r0), int(np.ceil(r1))), slice(int(c0), int(np.ceil(c1)))

    def pull_region(self, region: tuple[slice, slice] | None = None):
        """Copy a region of the labels pyramid into an editable in-memory Labels layer.

        Read in a worker (up to 4096 x 4096 pixels); the "region edit" layer arrives when it
        returns. Returns the worker (None with a message when the request is refused).
        """
        from ..core.errors import HistoError
        from ..core.slide.edit import read_region

        try:
            if self.zarr_path is None:
                raise HistoError("segment a slide or open its labels first")
            if self.runner.running:
                raise HistoError("wait for the running job to finish (or cancel it)")
            rows, cols = region or self.view_region()
            if (rows.stop - rows.start) * (cols.stop - cols.start) > 4096 * 4096:
                raise HistoError(
                    "the field of view is too large to edit in memory: zoom in (at most 4096 x 4096 pixels)"
                )
        except Exception as exc:
            notify_error(error_message(exc))
            self._set_status(error_message(exc))
            return None
        return self.runner.call(
            read_region,
            self.zarr_path,
            rows,
            cols,
            stage="reading the region",
            description="Edit region",
            on_done=lambda data: self._show_region(rows, cols, data),
        )

    def _show_region(self, rows: slice, cols: slice, data: np.ndarray):
        self.edit_region = (
            slice(rows.start, rows.start + data.shape[0]),
            slice(cols.start, cols.start + data.shape[1]),
        )
        base = self._slide_layer()
        scale = base.scale[-2:]
        translate = np.asarray(base.translate[-2:]) + np.array([rows.start, cols.start]) * scale
        name = "region edit"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_labels(data, name=name, scale=scale, translate=translate)
        self.viewer.layers.selection.active = layer
        self._set_status(
            f"editing rows {rows.start}-{rows.stop}, cols {cols.start}-{cols.stop}; press Save region when done"
        )
        return layer

    def push_region(self):
        """Write the edited region back into the pyramid (journaled, ids kept slide-unique).

        The write, the pyramid rebuild and the reopening run in a worker; ``last_mapping`` holds
        the new ids when it returns. Returns the worker.
        """
        from ..core.errors import HistoError

        try:
            if self.edit_region is None or "region edit" not in self.viewer.layers:
                raise HistoError("nothing to save: press 'Edit this region' first")
            if self.runner.running:
                raise HistoError("wait for the running job to finish (or cancel it)")
            rows, cols = self.edit_region
            data = np.array(self.viewer.layers["region edit"].data, copy=True)
        except Exception as exc:
            notify_error(error_message(exc))
            self._set_status(error_message(exc))
            return None

        def done(result) -> None:
            mapping, opened = result
            self.last_mapping = mapping
            self._show_labels(opened)
            self._set_status(f"region saved ({len(mapping)} new nuclei got slide-unique ids)")

        return self.runner.call(
            _push_region_job,
            self.zarr_path,
            rows,
            cols,
            data,
            stage="saving the region",
            description="Save region",
            on_done=done,
        )

    def export(self, geojson: str | Path | None, csv: str | Path | None):
        """Measure and outline every nucleus of the slide in a worker (GeoJSON and/or CSV).

        ``last_export`` holds the number of nuclei when it returns. Returns the worker.
        """
        from ..core.errors import HistoError
        from ..core.slide.segment import export_slide_iter

        if self.zarr_path is None:
            raise HistoError("segment a slide or open its labels first")
        if self.runner.running:
            raise HistoError("wait for the running job to finish (or cancel it)")
        layer = self._slide_layer()

        def done(n: int) -> None:
            self.last_export = n
            msg = f"{n} nuclei exported to " + " and ".join(
                str(p) for p in (geojson, csv) if p is not None
            )
            self._set_status(msg)
            notify_info(msg)

        return self.runner.start(
            export_slide_iter,
            self.zarr_path,
            layer_levels(layer)[0],
            geojson,
            csv,
            layer.metadata.get("mpp"),  # µm columns when the file records its pixel size
            description="Export nuclei",
            on_done=done,
        )

    def _export_dialog(self) -> None:
        if self.zarr_path is None:
            notify_error("segment a slide or open its labels first")
            return
        path = ask_path(
            "w",
            "Export nuclei",
            start=str(self.zarr_path.with_suffix(".geojson")),
            filter="GeoJSON (*.geojson)",
            parent=self.native,
        )
        if path:
            try:
                self.export(path, Path(path).with_suffix(".csv"))
            except Exception as exc:
                notify_error(error_message(exc))

    def _open_dialog(self) -> None:
        path = ask_path("d", "Labels zarr folder", parent=self.native)
        if path:
            try:
                self.open_labels(path)
            except Exception as exc:
                notify_error(error_message(exc))


def _open_labels_job(path: Path):
    """Worker: replay the edit journal (recover an interrupted edit), open the label levels."""
    from ..core.slide.edit import recover_pending
    from ..core.slide.segment import open_labels_pyramid

    recovered = recover_pending(path)
    return path, open_labels_pyramid(path), recovered


def _push_region_job(path, rows, cols, data):
    from ..core.slide.edit import write_region

    mapping = write_region(path, rows, cols, data)
    return mapping, _open_labels_job(path)


def _slide_job(
    levels, segmenter, out, tiling, scheduler, workers, normalizer=None, guess_scale=False
):
    from dataclasses import replace

    from ..core.progress import Progress
    from ..core.slide.cluster import dask_client
    from ..core.slide.segment import segment_slide_iter

    if normalizer is not None:
        from ..core.stain.workflow import normalize_levels

        yield Progress(step=0, total=1, stage="normalize", message="stain statistics of the slide")
        levels = normalize_levels(normalizer, levels)
    said = ""
    if segmenter.mpp is None and guess_scale:
        from ..core.slide.segmenter import guess_slide_mpp_iter

        mpp, said = yield from guess_slide_mpp_iter(levels, segmenter.model, segmenter.device)
        segmenter = replace(segmenter, mpp=mpp)
    with dask_client(scheduler, workers) as client:
        result = yield from segment_slide_iter(levels, segmenter, out, tiling, client=client)
    return result, _open_labels_job(result.zarr_path), said
