"""Whole slides opened lazily: every pyramid level a dask array, nothing read until computed.

Pyramidal TIFF, OME-TIFF and Aperio SVS open through tifffile's zarr store; vendor formats
(NDPI, MRXS, SCN, ...) through OpenSlide when the optional extra is installed. A slide with too
few stored levels gets lazily 2x-averaged ones, so napari can show it as a multiscale layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ImageReadError, first_line
from .images import (
    OPENSLIDE_SUFFIXES,
    PYRAMID_TOP_SIZE,
    SLIDE_MIN_PIXELS,
    TIFF_SUFFIXES,
    _yx_pixels,
    to_rgb_uint8,
)

if TYPE_CHECKING:
    import dask.array as da


def read_slide(path: str | os.PathLike, top_size: int = PYRAMID_TOP_SIZE) -> list[da.Array]:
    """Open a (pyramidal) TIFF / OME-TIFF / SVS lazily as a list of RGB uint8 dask arrays.

    Level 0 is full resolution. Levels stored in the file are used as they are; when the file
    stops before the coarsest level is at most ``top_size`` pixels on its long side, lazy 2x
    mean-downsampled levels are appended. Nothing is read until a level's pixels are computed.

    Raises
    ------
    ImageReadError
        For files that are not readable TIFFs or whose channels are not RGB.
    """
    import tifffile

    path = Path(path)
    name = path.name
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{name}: the file is empty (0 bytes)")
    if name.lower().endswith(OPENSLIDE_SUFFIXES):
        return _read_openslide(path, top_size)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            n_levels = len(series.levels)
            compression = getattr(series.levels[-1].keyframe.compression, "name", "unknown")
        readers = [_TiffLevel(path, i) for i in range(n_levels)]
    except Exception as exc:
        reason = first_line(exc)
        raise ImageReadError(f"{name}: cannot open as a TIFF slide: {reason}") from None

    _check_decodable(readers[-1], name, compression)
    return _lazy_levels(path, readers, top_size, lambda d: _dask_to_rgb(d, axes, name))


def _lazy_levels(path: Path, readers: list, top_size: int, convert=None) -> list[da.Array]:
    """Dask arrays over the stored levels (named by the file's identity, so two openings of an
    unchanged file share their graph), plus lazy 2x levels down to ``top_size``."""
    import dask.array as da

    stat = path.stat()
    stamp = f"{path.resolve()}-{stat.st_mtime_ns}-{stat.st_size}"
    levels = []
    for i, reader in enumerate(readers):
        name = f"{type(reader).__name__}-{i}-{stamp}"
        d = da.from_array(reader, chunks=reader.chunks, name=name, asarray=False)
        levels.append(convert(d) if convert else d)
    while max(levels[-1].shape[:2]) > top_size:
        levels.append(downsample2(levels[-1]))
    return levels


def _check_decodable(reader, name: str, compression: str) -> None:
    """Decode one tile now, so a missing codec or a truncated file is one clear error up front."""
    try:
        reader[tuple(slice(0, min(c, 64)) for c in reader.chunks)]
    except Exception as exc:
        reason = first_line(exc)
        if "imagecodecs" in reason or "codec" in reason.lower() or "compress" in reason.lower():
            raise ImageReadError(
                f"{name}: its tiles are {compression}-compressed and cannot be decoded here "
                f"({reason}); install or update imagecodecs (pip install -U imagecodecs)"
            ) from None
        raise ImageReadError(f"{name}: cannot read its {compression} tiles: {reason}") from None


def _read_openslide(path: Path, top_size: int) -> list:
    """Open a vendor slide (NDPI, MRXS, ...) through OpenSlide as lazy dask levels."""
    name = path.name
    try:
        import openslide
    except ImportError:
        raise ImageReadError(
            f"{name}: {path.suffix} slides are read through OpenSlide, which is not installed: "
            "pip install 'napari-histo[openslide]' (or: pip install openslide-bin openslide-python)"
        ) from None
    try:
        with openslide.OpenSlide(str(path)) as osr:
            n_levels = osr.level_count
    except Exception as exc:
        reason = first_line(exc)
        raise ImageReadError(f"{name}: OpenSlide cannot open it: {reason}") from None
    return _lazy_levels(path, [_OpenSlideLevel(path, i) for i in range(n_levels)], top_size)


class _LazyLevel:
    """One level of a slide file as a picklable array-like for ``da.from_array``.

    File handles (tifffile's zarr store, an OpenSlide object) cannot travel to the worker
    processes of a ``dask.distributed`` cluster; a level travels as its path and reopens the
    file once per process (``handle``).
    """

    def __init__(self, path: Path, level: int):
        self.path = str(path)
        self.level = level

    @property
    def handle(self):
        h = self.__dict__.get("_handle")
        if h is None:
            h = self._handle = self._open()
        return h

    def _open(self):
        raise NotImplementedError

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_handle"}


class _OpenSlideLevel(_LazyLevel):
    """One OpenSlide level as an (H, W, 3) uint8 array-like; transparent areas -> white."""

    TILE = 512

    def __init__(self, path: Path, level: int):
        super().__init__(path, level)
        osr = self.handle
        w, h = osr.level_dimensions[level]
        self.downsample = float(osr.level_downsamples[level])
        self.shape = (int(h), int(w), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.chunks = (self.TILE, self.TILE, 3)

    def _open(self):
        import openslide

        return openslide.OpenSlide(self.path)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        (y0, y1, _), (x0, x1, _) = (
            k.indices(n) for k, n in zip(key[:2], self.shape[:2], strict=True)
        )
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)[:, :, key[2]]
        ds = self.downsample
        rgba = np.asarray(
            self.handle.read_region((int(x0 * ds), int(y0 * ds)), self.level, (x1 - x0, y1 - y0))
        )
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.round(rgb).astype(np.uint8)[:, :, key[2]]


class _TiffLevel(_LazyLevel):
    """One level of a TIFF's first series, read through tifffile's zarr store."""

    def __init__(self, path: Path, level: int):
        super().__init__(path, level)
        arr = self.handle
        self.shape = tuple(arr.shape)
        self.dtype = np.dtype(arr.dtype)
        self.ndim = len(self.shape)
        chunks = getattr(arr, "chunks", None)
        self.chunks = tuple(chunks) if chunks else self.shape

    def _open(self):
        import tifffile
        import zarr

        store = tifffile.imread(self.path, aszarr=True, series=0, level=self.level)
        return zarr.open(store, mode="r")

    def __getitem__(self, key):
        return np.asarray(self.handle[key])


def _dask_to_rgb(d: da.Array, axes: str, name: str) -> da.Array:
    axes = axes.upper().replace("S", "C")
    if d.ndim != len(axes):
        axes = "YXC"[: d.ndim]
    for ax in list(axes):
        if ax not in "YXC":
            if d.shape[axes.index(ax)] != 1:
                raise ImageReadError(
                    f"{name}: holds a stack ({axes} {d.shape}); cannot show as one slide"
                )
            d = d[tuple(0 if a == ax else slice(None) for a in axes)]
            axes = axes.replace(ax, "")
    if "C" not in axes:
        d = d[..., None]
        axes += "C"
    d = d.transpose([axes.index("Y"), axes.index("X"), axes.index("C")])
    c = d.shape[-1]
    if c == 4:
        d = d[..., :3]
    elif c == 1:
        d = d.repeat(3, axis=-1) if hasattr(d, "repeat") else d
    elif c != 3:
        raise ImageReadError(f"{name}: {c} channels found; a slide must be RGB")
    if d.dtype != np.uint8:
        d = d.map_blocks(lambda b: to_rgb_uint8(b, name), dtype=np.uint8)
    return d


def downsample2(level: da.Array) -> da.Array:
    """A lazy 2x-smaller RGB level: each pixel the rounded mean of a 2 x 2 block (no aliasing)."""
    import dask.array as da

    if not isinstance(level, da.Array):
        level = da.from_array(level, chunks=(512, 512, -1))

    h, w = level.shape[:2]
    trimmed = level[: h - h % 2, : w - w % 2]
    # Rechunk to even chunk sizes so coarsen works on any stored tile size.
    cy = max(2, (trimmed.chunksize[0] // 2) * 2)
    cx = max(2, (trimmed.chunksize[1] // 2) * 2)
    trimmed = trimmed.rechunk((cy, cx, 3))
    mean = da.coarsen(np.mean, trimmed.astype(np.float32), {0: 2, 1: 2}, trim_excess=True)
    return da.round(mean).astype(np.uint8)


def is_slide(path: str | os.PathLike) -> bool:
    """True when a file should be opened lazily: SVS, multi-level TIFF, or a very large TIFF."""
    p = str(path).lower()
    if p.endswith((".svs", *OPENSLIDE_SUFFIXES)):
        return True
    if not p.endswith(TIFF_SUFFIXES):
        return False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return (
                len(series.levels) > 1 or _yx_pixels(series.shape, series.axes) > SLIDE_MIN_PIXELS
            )
    except Exception:
        return False


def read_mpp(path: str | os.PathLike) -> float | None:
    """The pixel size (micrometres per pixel) a file records at full resolution, else None.

    Read from the Aperio description (``MPP = 0.499``), OME-XML ``PhysicalSizeX``, the TIFF
    resolution tags (centimetre or inch units), or OpenSlide's ``openslide.mpp-x``. PNG and
    JPEG tiles rarely carry a trustworthy pixel size: None (the caller asks for ``--mpp``).
    """
    import re

    p = Path(path)
    name = p.name.lower()
    if name.endswith(OPENSLIDE_SUFFIXES):
        try:
            import openslide

            with openslide.OpenSlide(str(p)) as osr:
                value = osr.properties.get("openslide.mpp-x")
            return float(value) if value else None
        except Exception:
            return None
    if not name.endswith(TIFF_SUFFIXES):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            page = tif.pages[0]
            desc = page.description or ""
            m = re.search(r"\bMPP\s*=\s*([0-9.]+)", desc)
            if m:
                return float(m.group(1))
            m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', desc)
            if m:
                unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', desc)
                scale = {"nm": 1e-3, "mm": 1e3, "cm": 1e4}.get(unit.group(1) if unit else "µm", 1.0)
                return float(m.group(1)) * scale
            res, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
            if res is not None and unit is not None:
                num, den = res.value
                per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit.value))  # inch, centimetre
                if per_unit and num > 0:
                    mpp = per_unit * den / num
                    return mpp if 0.05 <= mpp <= 20 else None  # 72/96 dpi defaults are not scans
    except Exception:
        return None
    return None
