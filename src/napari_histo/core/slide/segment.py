"""Whole-slide segmentation on dask: tiles with halos, seam-free instance ids, zarr output.

How a slide is cut (all sizes in level-0 pixels)::

    padded slide = slide padded with white to a multiple of ``tile``
    block (i, j) = core [i*tile, (i+1)*tile) x [j*tile, (j+1)*tile)
    window       = core grown by ``halo`` on every side

Pass 1 segments every window (``segment_fn``) and keeps only the nuclei it **owns**: those whose
centroid lies in its core. Owned nuclei get ids ``block_number * 2**16 + k`` (unique across the
slide without any coordination between workers). The windows go to a temporary zarr array.
Pass 2 builds each core from its own owned nuclei plus the parts of its neighbours' owned nuclei
that reach into it (a nucleus is at most ``halo`` pixels from its owner's core), so a nucleus
crossing a tile border is neither split nor duplicated. Background tiles (too little tissue on a
low-resolution level) are not segmented at all.

Both passes are dask graphs: the local threaded scheduler by default, or a ``dask.distributed``
cluster when a client is active (``--scheduler tcp://HOST:PORT`` / ``--workers N``). Results stream
to zarr on disk, so memory stays bounded whatever the slide size.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HistoError
from ..progress import Progress
from ..tiling import IDS_PER_BLOCK, BlockTiling, assemble_core, own_labels

# The block / halo / ownership rules are the core tiling engine's, shared with in-memory images.
SlideTiling = BlockTiling


@dataclass
class SlideResult:
    """Where the labels went and what was found."""

    zarr_path: Path
    levels: int
    shape: tuple[int, int]
    n_blocks: int
    n_tissue_blocks: int
    n_nuclei: int


def tissue_mask(level, threshold: float = 0.15, smooth: float = 2.0, clean: int = 1):
    """Tissue (True) vs glass, pen voids and specks on a coarse level, with dask-image.

    Optical density is smoothed (Gaussian, ``smooth`` pixels), thresholded (mean OD above
    ``threshold``, none of the channels saturated as black marker or holes are), then a binary
    opening and closing of ``clean`` iterations removes dust and fills small gaps. Lazy: returns
    a dask boolean array of the level's height and width.
    """
    import dask.array as da
    from dask_image import ndfilters, ndmorph

    rgb = level if isinstance(level, da.Array) else da.from_array(np.asarray(level))
    rgb = rgb[..., :3].astype(np.float32)
    od = -da.log((rgb + 1.0) / 256.0)
    mean = od.mean(axis=-1)
    if smooth > 0:
        mean = ndfilters.gaussian_filter(mean, smooth)
    tissue = (mean > threshold) & (od.max(axis=-1) < 2.5)
    if clean > 0:
        tissue = ndmorph.binary_closing(
            ndmorph.binary_opening(tissue, iterations=clean), iterations=clean
        )
    return tissue


def tissue_grid(level, shape0: tuple[int, int], tile: int, threshold: float = 0.15) -> np.ndarray:
    """Fraction of tissue (:func:`tissue_mask`) in every block, from a low-resolution level.

    Parameters
    ----------
    level : array (h, w, 3)
        A coarse level of the slide (read whole; keep it small).
    shape0 : (H, W)
        Level-0 size.
    tile : int
        Block size at level 0.
    """
    tissue = np.asarray(tissue_mask(level, threshold))
    nby, nbx = -(-shape0[0] // tile), -(-shape0[1] // tile)
    sy, sx = tissue.shape[0] / shape0[0], tissue.shape[1] / shape0[1]
    grid = np.zeros((nby, nbx), np.float32)
    for i in range(nby):
        r0 = int(i * tile * sy)
        r1 = max(r0 + 1, int(min((i + 1) * tile, shape0[0]) * sy))
        for j in range(nbx):
            c0 = int(j * tile * sx)
            c1 = max(c0 + 1, int(min((j + 1) * tile, shape0[1]) * sx))
            patch = tissue[r0:r1, c0:c1]
            grid[i, j] = patch.mean() if patch.size else 0.0
    return grid


def _own_window(
    window: np.ndarray, block_info, segment_fn, tiling: BlockTiling, grid: np.ndarray
) -> np.ndarray:
    """Pass 1 on one window: segment, keep owned nuclei, give them slide-unique ids."""
    i, j = block_info[None]["chunk-location"][:2]
    if grid[i, j] < tiling.min_tissue:
        return np.zeros(window.shape[:2], np.uint32)
    labels = np.asarray(segment_fn(np.ascontiguousarray(window[..., :3])))
    return own_labels(labels, (i, j), grid.shape[1], tiling)


def _assemble_core(block: np.ndarray, tiling: BlockTiling) -> np.ndarray:
    return assemble_core(block, tiling)


def segment_slide_iter(
    levels: list,
    segment_fn: Callable[[np.ndarray], np.ndarray],
    out: str | os.PathLike,
    tiling: SlideTiling | None = None,
    client=None,
) -> Generator[Progress, None, SlideResult]:
    """Segment a slide into a multiscale zarr of uint32 instance labels (yields progress).

    Parameters
    ----------
    levels : list of arrays
        The slide pyramid (``read_slide``); level 0 is segmented, the coarsest finds tissue.
    segment_fn : callable
        RGB uint8 window -> instance labels of the same height/width. Must be picklable for a
        process-based cluster (e.g. :class:`napari_histo.core.slide.segmenter.ModelSegmenter`).
    out : path
        The ``.zarr`` folder to write (replaced atomically when done).
    client : dask.distributed.Client, optional
        Run on this cluster; None uses the current default scheduler.

    Progress is reported per band of blocks; closing the generator stops between bands and
    leaves no partial output at ``out``.
    """
    import dask.array as da
    import zarr

    tiling = tiling or SlideTiling()
    t, h = tiling.tile, tiling.halo
    base = (
        levels[0]
        if isinstance(levels[0], da.Array)
        else da.from_array(levels[0], chunks=(t, t, -1))
    )
    H, W = base.shape[:2]
    nby, nbx = -(-H // t), -(-W // t)
    grid = tissue_grid(levels[-1], (H, W), t)
    n_tissue = int((grid >= tiling.min_tissue).sum())
    out = Path(out)
    work = out.with_name(f".{out.name}.partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    compute_kw = {"scheduler": client.get} if client is not None else {}
    try:
        padded = da.pad(
            base[..., :3], ((0, nby * t - H), (0, nbx * t - W), (0, 0)), constant_values=255
        )
        padded = padded.rechunk((t, t, 3))
        windows = da.overlap.overlap(
            padded, depth={0: h, 1: h, 2: 0}, boundary={0: 255, 1: 255, 2: "none"}
        )
        owned = windows.map_blocks(
            _own_window, segment_fn=segment_fn, tiling=tiling, grid=grid, dtype=np.uint32, drop_axis=2,
            chunks=((t + 2 * h,) * nby, (t + 2 * h,) * nbx),
        )  # fmt: skip
        wstore = zarr.open_array(
            str(work / "windows"),
            mode="w",
            shape=owned.shape,
            chunks=(t + 2 * h, t + 2 * h),
            dtype=np.uint32,
        )
        total = 2 * nby
        for i in range(nby):
            rows = slice(i * (t + 2 * h), (i + 1) * (t + 2 * h))
            da.store(owned[rows], wstore, regions=(rows, slice(None)), lock=False, **compute_kw)
            yield Progress(step=i + 1, total=total, stage="segment", message=f"band {i + 1}/{nby}")

        wins = da.from_zarr(wstore)
        cores = wins.map_overlap(
            _assemble_core, tiling=tiling, depth={0: h, 1: h}, boundary=0, trim=False, dtype=np.uint32,
            chunks=((t,) * nby, (t,) * nbx),
        )[:H, :W]  # fmt: skip
        group = zarr.open_group(str(work / "labels.zarr"), mode="w")
        lstore = group.create_array("0", shape=(H, W), chunks=(t, t), dtype=np.uint32, fill_value=0)
        for i in range(nby):
            rows = slice(i * t, min((i + 1) * t, H))
            da.store(cores[rows], lstore, regions=(rows, slice(None)), lock=False, **compute_kw)
            yield Progress(
                step=nby + i + 1, total=total, stage="merge", message=f"band {i + 1}/{nby}"
            )

        n_levels = _write_label_pyramid(group, compute_kw)
        n_nuclei = _count_ids(lstore)
        group.attrs["multiscales"] = [
            {
                "version": "0.4",
                "name": "nuclei",
                "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                "datasets": [
                    {
                        "path": str(k),
                        "coordinateTransformations": [{"type": "scale", "scale": [2.0**k, 2.0**k]}],
                    }
                    for k in range(n_levels)
                ],
            }
        ]
        group.attrs["napari_histo"] = {
            "tile": t,
            "halo": h,
            "n_nuclei": n_nuclei,
            "ids_per_block": IDS_PER_BLOCK,
        }
        if out.exists():
            shutil.rmtree(out)
        os.replace(work / "labels.zarr", out)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise HistoError(
                f"{out.name}: the disk is full ({out.parent}); nothing was written "
                "(the partial output was removed)"
            ) from None
        raise
    finally:
        # Killed before this runs, the work is left as '.<name>.partial': never a finished result.
        shutil.rmtree(work, ignore_errors=True)
    return SlideResult(out, n_levels, (H, W), nby * nbx, n_tissue, n_nuclei)


def _write_label_pyramid(group, compute_kw, top_size: int = 1024) -> int:
    """Levels '1', '2', ... each taking every other pixel (labels: nearest, never a blend of ids)
    until the coarsest fits in ``top_size``."""
    import dask.array as da

    k = 0
    while max(group[str(k)].shape) > top_size:
        prev = da.from_zarr(group[str(k)])
        nxt = prev[::2, ::2]
        arr = group.create_array(
            str(k + 1), shape=nxt.shape, chunks=group[str(k)].chunks, dtype=np.uint32, fill_value=0
        )
        da.store(nxt.rechunk(arr.chunks), arr, lock=False, **compute_kw)
        k += 1
    return k + 1


def _count_ids(arr) -> int:
    import dask.array as da

    d = da.from_zarr(arr)
    uniq = da.unique(d).compute()
    return int((uniq != 0).sum())


def open_labels_pyramid(path: str | os.PathLike) -> list:
    """The label levels of a zarr written by :func:`segment_slide_iter`, as dask arrays."""
    import dask.array as da
    import zarr

    group = zarr.open_group(str(path), mode="r")
    meta = group.attrs.get("multiscales")
    if not meta:
        raise HistoError(f"{path}: not a labels pyramid written by napari-histo")
    return [da.from_zarr(group[d["path"]]) for d in meta[0]["datasets"]]


def export_slide_iter(
    labels_zarr: str | os.PathLike,
    image_level0=None,
    geojson: str | os.PathLike | None = None,
    csv: str | os.PathLike | None = None,
    mpp: float | None = None,
) -> Generator[Progress, None, int]:
    """Measure and outline every nucleus of a slide's label zarr, block by block (yields progress).

    Each nucleus is handled once, by the block that owns it (its id says which; a nucleus painted
    in a region edit, by where it lies), on that block's window, so nuclei crossing block borders
    are whole. Writes QuPath GeoJSON and/or CSV
    atomically; returns the number of nuclei. ``mpp`` (the slide's pixel size, when known) adds
    the areas and perimeters in micrometres.
    """
    import contextlib

    import zarr

    from ..labels.export import GeoJSONWriter, write_csv
    from ..labels.measure import compact_ids, measure_nuclei

    group = zarr.open_group(str(labels_zarr), mode="r")
    info = group.attrs.get("napari_histo")
    if not info:
        raise HistoError(f"{labels_zarr}: not a labels zarr written by napari-histo segment")
    t, h, per = int(info["tile"]), int(info["halo"]), int(info["ids_per_block"])
    lab0 = group["0"]
    H, W = lab0.shape
    nby, nbx = -(-H // t), -(-W // t)
    tables: list[dict] = []
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(GeoJSONWriter(geojson)) if geojson is not None else None
        for i in range(nby):
            for j in range(nbx):
                r0, c0 = max(i * t - h, 0), max(j * t - h, 0)
                r1, c1 = min((i + 1) * t + h, H), min((j + 1) * t + h, W)
                window = np.asarray(lab0[r0:r1, c0:c1])
                mine = (window // per) == (i * nbx + j)
                mine |= _edited_ids_owned(window, (r0, c0), (i, j), t, nby * nbx * per)
                window = np.where(mine & (window > 0), window, 0)
                if not window.any():
                    continue
                img = None if image_level0 is None else np.asarray(image_level0[r0:r1, c0:c1])
                # Far into a slide the ids are sparse: renumber once for measuring and outlining.
                window, ids = compact_ids(window)
                table = measure_nuclei(window, img, offset=(r0, c0), mpp=mpp)
                if ids is not None:
                    table["label"] = ids[table["label"]]
                tables.append(table)
                if out is not None:
                    out.add(window, table, offset=(r0, c0), ids=ids)
            yield Progress(step=i + 1, total=nby, stage="export")
    merged = (
        {k: np.concatenate([tb[k] for tb in tables]) for k in tables[0]}
        if tables
        else measure_nuclei(np.zeros((1, 1), np.uint32), mpp=mpp)
    )
    if csv is not None:
        write_csv(csv, merged)
    return len(merged["label"])


def _edited_ids_owned(
    window: np.ndarray, origin: tuple[int, int], block: tuple[int, int], tile: int, first_free: int
) -> np.ndarray:
    """Pixels of ``window`` whose nucleus got its id from a region edit and belongs to ``block``.

    Ids given by :func:`~napari_histo.core.slide.edit.write_region` lie past every block's
    range, so the id says no owner: such a nucleus belongs to the block holding the top-left
    corner of its bounding box (whole in that block's window when it is under a halo in size).
    """
    edited = window >= first_free
    if not edited.any():
        return edited
    rows, cols = np.nonzero(edited)
    ids, inv = np.unique(window[edited], return_inverse=True)
    top = np.full(ids.size, np.iinfo(np.int64).max)
    left = top.copy()
    np.minimum.at(top, inv, rows + origin[0])
    np.minimum.at(left, inv, cols + origin[1])
    owned = ids[(top // tile == block[0]) & (left // tile == block[1])]
    return edited & np.isin(window, owned)


def write_pyramidal_tiff_iter(
    level0, path: str | os.PathLike, tile: int = 512, top_size: int = 1024
) -> Generator[Progress, None, Path]:
    """Write an RGB dask/numpy image as a tiled pyramidal TIFF (SubIFDs), band by band, atomically.

    Memory holds one band of tiles per level at a time; each reduced level averages 2 x 2
    blocks of the one above, lazily (no striding aliasing).
    """
    import dask.array as da
    import tifffile

    from ..atomic import atomic_path
    from ..io.images import ZLIB_LEVEL
    from ..io.slides import downsample2

    arr = level0 if isinstance(level0, da.Array) else da.from_array(level0, chunks=(tile, tile, -1))
    shapes, level = [], arr
    while True:
        shapes.append(level)
        if max(level.shape[:2]) <= top_size:
            break
        level = downsample2(level)
    total = sum(-(-lv.shape[0] // tile) for lv in shapes)
    done = 0

    def tiles(lv):
        nonlocal done
        for r in range(0, lv.shape[0], tile):
            band = np.asarray(lv[r : r + tile])
            for c in range(0, lv.shape[1], tile):
                block = band[:, c : c + tile]
                if block.shape[:2] != (tile, tile):
                    pad = np.full((tile, tile, 3), 255, np.uint8)
                    pad[: block.shape[0], : block.shape[1]] = block
                    block = pad
                yield block
            done += 1

    path = Path(path)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for k, lv in enumerate(shapes):
            opts = {"subifds": len(shapes) - 1} if k == 0 else {"subfiletype": 1}
            tif.write(
                tiles(lv.astype(np.uint8)), shape=lv.shape, dtype=np.uint8, tile=(tile, tile),
                photometric="rgb", compression="zlib", compressionargs={"level": ZLIB_LEVEL},
                **opts,
            )  # fmt: skip
            yield Progress(step=done, total=total, stage="write", message=f"level {k}")
    return path
