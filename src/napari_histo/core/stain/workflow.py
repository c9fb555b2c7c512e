"""The stain-normalization workflow as progress generators: prepare a normalizer, apply it.

The napari widget and scripts share these: a template (one image or several regions), a method,
optionally a DCGMM refit on the user's images, then every target image normalized in turn. Large
images (pyramids of dask arrays) are normalized lazily, chunk by chunk, with stain statistics
estimated once on a coarse level.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HistoError
from ..io.regions import pick_level
from ..progress import Progress
from . import DEFAULT_METHOD, METHODS

#: Images up to this many pixels are normalized in memory; larger ones lazily.
IN_MEMORY_PIXELS = 4096 * 4096
#: An image already in memory (a numpy array) up to this many pixels is normalized whole: one
#: pass (for DCGMM one network pass, not one for the statistics and one per chunk), statistics
#: of the whole image and no chunk seams. The transforms work in bands of rows, so the extra
#: memory is a fraction of the image's.
DIRECT_PIXELS = 8192 * 8192
#: Stain statistics of a lazily normalized image come from a copy at most this many pixels a side.
SAMPLE_SIDE = 2048


@dataclass
class NormalizedImage:
    """One normalized input.

    ``image`` has the structure of the input: an array, or a list of lazy pyramid levels.
    ``class_map`` (uint8, class index) and ``probabilities`` (float32, (H, W, K)) are computed on
    the in-memory image or, for a pyramid, on a level of at most 2048 pixels a side
    (``class_level`` says which).
    """

    name: str
    image: Any
    class_map: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    class_level: int = 0
    class_names: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


def prepare_normalizer(
    method: str,
    templates: Sequence[np.ndarray],
    fit_on: Sequence[np.ndarray] | None = None,
    steps: int = 200,
    device: str = "auto",
    model: str | Path | None = None,
    seed: int = 0,
) -> Generator[Progress, None, Any]:
    """Make a normalizer fitted to ``templates`` (yields progress; returns the normalizer).

    Parameters
    ----------
    method : str
        ``dcgmm``, ``macenko``, ``reinhard`` or ``vahadane``.
    templates : list of arrays
        Template images or regions; their statistics are pooled.
    fit_on : list of arrays, optional
        DCGMM only: refit the network on these images first (else the shipped fitted model).
    steps : int
        DCGMM refit steps.
    model : path, optional
        A saved normalizer to start from instead of the shipped one.
    """
    from . import fit_dcgmm, get_normalizer, load_normalizer

    method = method.lower()
    if method not in METHODS:
        raise HistoError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not templates:
        raise HistoError("no template chosen: pick a template image (or draw rectangles on one)")
    if model is not None:
        normalizer = load_normalizer(model)
    elif method == "dcgmm" and fit_on:
        normalizer = yield from fit_dcgmm(list(fit_on), steps=steps, device=device, seed=seed)
    else:
        normalizer = get_normalizer(method, device=device)
    yield Progress(step=0, total=None, stage="template", message="estimating template statistics")
    normalizer.fit(list(templates) if len(templates) > 1 else templates[0])
    return normalizer


def make_normalizer(
    method: str | None = None,
    templates: Sequence[np.ndarray] = (),
    model: str | Path | None = None,
    fit_on: Sequence[np.ndarray] | None = None,
    steps: int = 200,
    device: str = "auto",
    seed: int = 0,
) -> Generator[Progress, None, Any]:
    """Templates and/or a saved normalizer -> a fitted normalizer; the one way every face does it.

    Parameters
    ----------
    method : str, optional
        Default: the saved model's method, else :data:`~napari_histo.core.stain.DEFAULT_METHOD`.
    templates : list of arrays
        Template images (pooled). May be empty when ``model`` carries its template.
    model : path, optional
        A normalizer saved by the widget, the CLI or a script (JSON, safetensors or a folder).
    fit_on, steps, seed :
        DCGMM only: refit the network on these images first.

    Raises
    ------
    HistoError
        Conflicting choices (a method other than the model's, a refit of a non-DCGMM or of a
        saved model) or no template at all.
    """
    from . import load_normalizer

    loaded = None
    if model is not None:
        loaded = load_normalizer(model, device=device)
        if method is not None and method.lower() != loaded.name:
            raise HistoError(
                f"{Path(model).name} is a {loaded.name} normalizer, but the method {method} was asked for"
            )
        method = loaded.name
        if fit_on:
            raise HistoError(
                "a refit (fit-on images) starts from the shipped DCGMM; drop the saved normalizer "
                "or the refit"
            )
    method = (method or DEFAULT_METHOD).lower()
    if fit_on and method != "dcgmm":
        raise HistoError(f"a refit (fit-on images) applies to DCGMM only, not to {method}")
    if loaded is not None and not templates:
        if not getattr(loaded, "fitted", False):
            raise HistoError(f"{Path(model).name} carries no template; give a template image")
        return loaded
    if not templates:
        raise HistoError("no template: give a template image (or a fitted normalizer)")
    return (
        yield from prepare_normalizer(
            method, templates, fit_on=fit_on, steps=steps, device=device, model=model, seed=seed
        )
    )


def normalize_images(
    normalizer,
    targets: Sequence[tuple[str, Any]],
    class_maps: bool = False,
    probabilities: bool = False,
) -> Generator[Progress, None, list[NormalizedImage]]:
    """Normalize each ``(name, image_or_levels)``; yields one event per image with the result.

    Each event's ``payload`` is the :class:`NormalizedImage` of that image, so a GUI can show
    results as they come; the full list is returned at the end.
    """
    results = []
    n = len(targets)
    for i, (name, data) in enumerate(targets, start=1):
        levels = list(data) if isinstance(data, (list, tuple)) else [data]
        result = _normalize_one(normalizer, name, levels, class_maps, probabilities)
        results.append(result)
        yield Progress(step=i, total=n, stage="normalize", message=name, payload=result)
    return results


def _normalize_one(
    normalizer, name: str, levels: list, class_maps: bool, probabilities: bool
) -> NormalizedImage:
    import warnings

    from ..errors import InputWarning

    notes: list[str] = []
    full = levels[0]
    npx = int(np.prod(full.shape[:2]))
    direct = len(levels) == 1 and isinstance(full, np.ndarray) and npx <= DIRECT_PIXELS
    big = not direct and (len(levels) > 1 or npx > IN_MEMORY_PIXELS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        if big:
            k = pick_level(levels, SAMPLE_SIDE)
            if len(levels) == 1 and k == 0:
                # One huge level: the statistics come from a 2x2-averaged copy of at most
                # 2048 pixels a side, as for a slide (not from a full extra pass).
                sample, k = _coarse_sample(full)
            else:
                sample = np.asarray(levels[k])
            out_levels = normalize_levels(normalizer, levels, sample)
            image = out_levels if len(levels) > 1 else out_levels[0]
        else:
            k = 0
            sample = np.asarray(full)
            image = normalizer.transform(sample)
        cmap = probs = None
        if (class_maps or probabilities) and hasattr(normalizer, "class_probabilities"):
            probs = normalizer.class_probabilities(sample)
            cmap = np.argmax(probs, axis=-1).astype(np.uint8)
            if not probabilities:
                probs = None
    notes += [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
    names = tuple(getattr(normalizer, "class_names", ()) or ())
    return NormalizedImage(name, image, cmap, probs, k, names, notes)


def _coarse_sample(image) -> tuple[np.ndarray, int]:
    """``image`` averaged over 2x2 blocks until its long side is at most :data:`SAMPLE_SIDE`."""
    from ..io.slides import downsample2

    level, k = image, 0
    while max(level.shape[:2]) > SAMPLE_SIDE:
        level, k = downsample2(level), k + 1
    return np.asarray(level), k


def lazy_transform(level, normalizer, stats, tissue: np.ndarray | None = None):
    """A dask array normalizing ``level`` chunk by chunk with fixed source statistics.

    With ``tissue`` (a boolean mask of the whole image at any lower resolution), chunks whose
    area holds no tissue are bare glass and are passed through unchanged (not transformed).
    """
    import dask.array as da

    arr = level if isinstance(level, da.Array) else da.from_array(level, chunks=(1024, 1024, -1))
    if arr.chunksize[-1] != arr.shape[-1]:
        arr = arr.rechunk({-1: -1})
    height, width = arr.shape[:2]

    def is_glass(block_info) -> bool:
        if tissue is None or not block_info:
            return False
        (r0, r1), (c0, c1) = block_info[0]["array-location"][:2]
        sy, sx = tissue.shape[0] / height, tissue.shape[1] / width
        rows = slice(int(r0 * sy), max(int(r0 * sy) + 1, int(np.ceil(r1 * sy))))
        cols = slice(int(c0 * sx), max(int(c0 * sx) + 1, int(np.ceil(c1 * sx))))
        return not tissue[rows, cols].any()

    def block(b: np.ndarray, block_info=None) -> np.ndarray:
        b = np.asarray(b)[..., :3]
        if is_glass(block_info):
            from ..io import to_rgb_uint8

            return to_rgb_uint8(b)
        return normalizer.transform(b, source_stats=stats)

    return arr.map_blocks(block, dtype=np.uint8, chunks=(*arr.chunks[:2], (3,)))


def glass_free_mask(level) -> np.ndarray:
    """Where a slide has tissue (True), from a coarse level, grown by 2 pixels to be safe."""
    from scipy import ndimage

    from ..slide.segment import tissue_mask

    mask = np.asarray(tissue_mask(level))
    return ndimage.binary_dilation(mask, iterations=2)


def normalize_levels(
    normalizer, levels: list, sample: np.ndarray | None = None, skip_glass: bool = True
) -> list:
    """Every level of a slide normalized lazily, with stain statistics from one low level.

    The statistics come from ``sample`` (default: the level :func:`pick_level` chooses, read
    once), so every tile of the slide is mapped the same way (no seams between tiles). With
    ``skip_glass`` (pyramids only), chunks without tissue on the coarsest level
    (:func:`~napari_histo.core.slide.segment.tissue_mask`, grown by 2 pixels) are left as they
    are instead of being transformed: real slides are mostly glass.
    """
    if sample is None:
        sample = np.asarray(levels[pick_level(levels)])
    stats = normalizer.source_stats(sample)
    tissue = glass_free_mask(levels[-1]) if skip_glass and len(levels) > 1 else None
    return [lazy_transform(lv, normalizer, stats, tissue) for lv in levels]


def write_levels_zarr_iter(
    levels: Sequence, path: str | Path, chunk: int = 1024, stage: str = "write pyramid"
) -> Generator[Progress, None, list]:
    """Compute (lazy) image levels chunk by chunk into a zarr group; returns the zarr arrays.

    Made for normalized slides: a viewer shows the returned arrays (plain reads of stored pixels)
    instead of a lazy graph that would run the normalizer inside the render path on every pan and
    zoom. One event per chunk written; closing the generator (cancel) removes the partial folder.
    Levels are stored as ``"0"``, ``"1"``... with ``multiscales`` metadata (OME-Zarr's layout).
    """
    import shutil

    import zarr

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    total = sum(-(-lv.shape[0] // chunk) * -(-lv.shape[1] // chunk) for lv in levels)
    done_ok = False
    try:
        group = zarr.open_group(str(path), mode="w")
        arrays = []
        step = 0
        for k, lv in enumerate(levels):
            shape = tuple(int(s) for s in lv.shape)
            arr = group.create_array(
                str(k),
                shape=shape,
                chunks=(chunk, chunk, *shape[2:]),
                dtype=np.uint8,
                fill_value=0,
            )
            for r in range(0, shape[0], chunk):
                for c in range(0, shape[1], chunk):
                    block = lv[r : r + chunk, c : c + chunk]
                    block = block.compute() if hasattr(block, "compute") else np.asarray(block)
                    arr[r : r + block.shape[0], c : c + block.shape[1]] = block
                    step += 1
                    yield Progress(step=step, total=total, stage=stage, message=f"level {k}")
            arrays.append(arr)
        group.attrs["multiscales"] = [
            {"version": "0.4", "datasets": [{"path": str(k)} for k in range(len(levels))]}
        ]
        done_ok = True
        return arrays
    finally:
        if not done_ok:
            shutil.rmtree(path, ignore_errors=True)
