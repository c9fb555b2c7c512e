"""Tiles (PNG/JPEG/TIFF) read into memory as RGB uint8, with one clear line for what cannot be.

Other dtypes and channel layouts are converted (16-bit, float, grayscale, RGBA, CMYK, palette,
EXIF-rotated, planar TIFF) or refused naming the file and the reason. Writes are atomic.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_path
from ..errors import ImageReadError, InputWarning, first_line

if TYPE_CHECKING:
    pass

TILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ome.tif", ".ome.tiff", ".btf", ".tf8")
#: Vendor slide formats read through OpenSlide (the optional ``openslide`` extra).
OPENSLIDE_SUFFIXES = (".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
IMAGE_SUFFIXES = TILE_SUFFIXES + TIFF_SUFFIXES + OPENSLIDE_SUFFIXES

#: Largest image read into memory whole (3 bytes a pixel): about 1.2 GB.
MAX_IN_MEMORY_PIXELS = 400_000_000
#: Below this many pixels a TIFF is read eagerly; above it, lazily as a slide.
SLIDE_MIN_PIXELS = 4096 * 4096
#: The coarsest level of a multiscale layer is at most this wide/high.
PYRAMID_TOP_SIZE = 1024
#: zlib level of written PNGs and zlib TIFFs (lossless at every level). On H&E, level 1 encodes
#: a PNG about 4x faster than Pillow's default 6 for a file about 4% larger, and a pyramidal TIFF
#: 1.3x faster for 3% more (bench/results/normalize_whole.md).
ZLIB_LEVEL = 1
PNG_LEVEL = ZLIB_LEVEL


def is_image_path(path: str | os.PathLike) -> bool:
    """True for file names this package can try to read."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def to_rgb_uint8(array: np.ndarray, source: str = "image") -> np.ndarray:
    """Convert an array to RGB uint8 (H, W, 3), or refuse it with a clear message.

    Grayscale is repeated to three channels; an alpha channel is composited onto white
    (a transparent slide area is background, not black tissue); channel-first arrays are
    transposed; integer types are scaled from their full range, floats from [0, 1] (or
    [0, 255] when the values say so); NaN/inf become white with an :class:`InputWarning`.

    Raises
    ------
    ImageReadError
        For arrays whose channels cannot be read as RGB (2 or more than 4 channels, 4D data...).
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ImageReadError(
            f"{source}: expected a 2D RGB or grayscale image, got an array of shape {a.shape}"
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageReadError(f"{source}: the image is empty (shape {a.shape})")
    channels = a.shape[-1]
    if channels not in (1, 3, 4):
        raise ImageReadError(
            f"{source}: {channels} channels found; only grayscale, RGB or RGBA can be read "
            "(which channels are red, green and blue is unknown)"
        )
    a = _to_unit_float(a, source) if a.dtype != np.uint8 else a
    if channels == 4:
        rgb, alpha = a[..., :3], a[..., 3:]
        if a.dtype == np.uint8:
            if alpha.min() == 255:
                a = rgb
            else:
                al = alpha.astype(np.float32) / 255.0
                a = rgb.astype(np.float32) * al + 255.0 * (1.0 - al)
                a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        else:
            a = rgb * alpha + (1.0 - alpha)
    elif channels == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def _to_unit_float(a: np.ndarray, source: str) -> np.ndarray:
    """Scale a non-uint8 array to float32 in [0, 1]."""
    if a.dtype == bool:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        lo = 0 if info.min >= 0 else info.min
        if info.min < 0 and a.min() >= 0:
            lo = 0
        hi = info.max
        if a.max() <= 255 and a.dtype.itemsize > 1 and a.max() > 1:
            # Integer data that only uses 0..255 is 8-bit data in a wider type.
            hi = 255
        return ((a.astype(np.float32) - lo) / float(hi - lo)).astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float32)
        bad = ~np.isfinite(f)
        if bad.any():
            n = int(bad.any(axis=-1).sum())
            warnings.warn(
                f"{source}: {n} pixels were NaN or infinite and were set to white (background)",
                InputWarning,
                stacklevel=3,
            )
            f = np.where(bad, np.nan, f)
            finite_max = np.nanmax(f) if (~bad).any() else 1.0
            f = np.where(bad, 255.0 if finite_max > 1.0 + 1e-3 else 1.0, f)
        if f.size and f.max() > 1.0 + 1e-3:
            f = f / 255.0
        return np.clip(f, 0.0, 1.0)
    raise ImageReadError(f"{source}: pixel type {a.dtype} cannot be read as an image")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a tile (PNG, JPEG, TIFF...) into memory as RGB uint8 (H, W, 3).

    Raises
    ------
    ImageReadError
        Naming the file and the reason: missing, empty, not an image, truncated, too large,
        or channels that cannot be read as RGB.
    """
    path = Path(path)
    name = path.name
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{name}: the file is empty (0 bytes)")
    if path.name.lower().endswith(TIFF_SUFFIXES):
        array = _read_tiff_in_memory(path)
    else:
        array = _read_png_fast(path)
        if array is None:
            array = _read_with_pillow(path)
    with warnings.catch_warnings():
        warnings.simplefilter("always", InputWarning)
        return to_rgb_uint8(array, name)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Chunks after which Pillow's pixels differ from a plain decode (transparency, EXIF rotation).
_PNG_SLOW_CHUNKS = (b"tRNS", b"eXIf")


def _read_png_fast(path: Path) -> np.ndarray | None:
    """An 8-bit grey, RGB or RGBA PNG decoded by libspng (imagecodecs), else None.

    About twice as fast as Pillow, with the same pixels: only PNGs whose plain decode is what
    :func:`_read_with_pillow` returns take this path (8 bits, colour type grey, RGB or RGBA, no
    transparency key, no EXIF orientation, not too large). Everything else (palettes, 16 bits,
    broken files...) returns None and goes through Pillow, which also words the errors.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(33)
            if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
                return None
            width = int.from_bytes(head[16:20], "big")
            height = int.from_bytes(head[20:24], "big")
            depth, ctype = head[24], head[25]
            if depth != 8 or ctype not in (0, 2, 6) or width * height > MAX_IN_MEMORY_PIXELS:
                return None
            data = head + f.read()
        pos = 33
        while pos + 8 <= len(data):  # walk the chunk headers only
            length = int.from_bytes(data[pos : pos + 4], "big")
            kind = data[pos + 4 : pos + 8]
            if kind in _PNG_SLOW_CHUNKS:
                return None
            if kind == b"IEND":
                break
            pos += 12 + length
        import imagecodecs

        out = imagecodecs.spng_decode(data)
    except Exception:
        return None
    expected = (height, width) if ctype == 0 else (height, width, 3 if ctype == 2 else 4)
    if out.dtype != np.uint8 or out.shape != expected:
        return None
    return out


def _read_with_pillow(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    name = path.name
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IN_MEMORY_PIXELS:
                raise ImageReadError(
                    f"{name}: the header says {w} x {h} pixels, too large to read into memory "
                    f"(limit {MAX_IN_MEMORY_PIXELS:,} pixels); save large slides as pyramidal TIFF"
                )
            if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation: show it as viewers do
                from PIL import ImageOps

                im = ImageOps.exif_transpose(im)
            if im.mode == "CMYK" or im.mode == "YCbCr" or im.mode == "P" or im.mode == "LAB":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.uint16)
            elif im.mode == "I":
                return np.asarray(im, dtype=np.int32)
            elif im.mode == "F":
                return np.asarray(im, dtype=np.float32)
            elif im.mode == "1":
                im = im.convert("L")
            im.load()
            return np.asarray(im)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not a readable image file") from None
    except Image.DecompressionBombError:
        raise ImageReadError(
            f"{name}: image dimensions are too large to read into memory"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = first_line(exc)
        if "truncated" in reason.lower():
            reason = "the file is truncated (incomplete download or copy?)"
        raise ImageReadError(f"{name}: cannot decode the image: {reason}") from None


def _read_tiff_in_memory(path: Path) -> np.ndarray:
    import tifffile

    name = path.name
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            npx = int(np.prod(series.shape[:2])) if series.shape else 0
            if len(series.shape) >= 2:
                npx = _yx_pixels(series.shape, series.axes)
            if npx > MAX_IN_MEMORY_PIXELS:
                raise ImageReadError(
                    f"{name}: {npx:,} pixels is too large to read into memory; open it as a slide "
                    "(napari-histo reads pyramidal TIFF/SVS lazily)"
                )
            return _squeeze_to_yxc(series.asarray(), series.axes, name)
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        reason = first_line(exc)
        raise ImageReadError(f"{name}: cannot read as TIFF: {reason}") from None


def _yx_pixels(shape: tuple[int, ...], axes: str) -> int:
    dims = dict(zip(axes, shape, strict=False))
    if "Y" in dims and "X" in dims:
        return int(dims["Y"]) * int(dims["X"])
    return int(np.prod(shape[:2]))


def _squeeze_to_yxc(a: np.ndarray, axes: str, name: str) -> np.ndarray:
    """Reduce a TIFF series array to (Y, X) or (Y, X, C)."""
    axes = axes.upper()
    if len(axes) != a.ndim:
        return a
    if a.ndim == 3 and "C" not in axes and "S" not in axes:
        # Axes unknown to tifffile (e.g. "QYX"): the short dimension is the channel axis.
        if a.shape[-1] <= 16:
            axes = "YXC"
        elif a.shape[0] <= 16:
            axes = "CYX"
    for ax in list(axes):
        if ax not in "YXCS" and a.shape[axes.index(ax)] == 1:
            a = np.take(a, 0, axis=axes.index(ax))
            axes = axes.replace(ax, "")
    extra = [ax for ax in axes if ax not in "YXCS"]
    if extra:
        raise ImageReadError(
            f"{name}: holds a stack ({axes} {a.shape}); napari-histo reads single 2D RGB images"
        )
    if "S" in axes and "C" not in axes:
        axes = axes.replace("S", "C")
    if "C" in axes:
        order = [axes.index("Y"), axes.index("X"), axes.index("C")]
        a = np.transpose(a, order)
    return a


# ----------------------------------------------------------------------------- writing


def write_image(path: str | os.PathLike, image: np.ndarray, level: int | None = None) -> Path:
    """Write an RGB uint8 image (PNG, JPEG or TIFF by suffix) atomically; return the path.

    PNGs are encoded by libpng (imagecodecs) at zlib ``level`` (default :data:`PNG_LEVEL`);
    the pixels are the same at every level, only the size and the time change.
    """
    from PIL import Image

    path = Path(path)
    image = np.asarray(image)
    fmt = _pil_format(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(
                tmp,
                image,
                compression="zlib",
                compressionargs={"level": ZLIB_LEVEL},
                photometric="rgb" if image.ndim == 3 else None,
            )
        elif fmt == "PNG" and _png_encodable(image):
            import imagecodecs

            Path(tmp).write_bytes(
                imagecodecs.png_encode(
                    np.ascontiguousarray(image), level=PNG_LEVEL if level is None else level
                )
            )
        else:
            Image.fromarray(image).save(tmp, format=fmt)
    return path


def _png_encodable(image: np.ndarray) -> bool:
    """8-bit grey, RGB or RGBA: what libpng writes as Pillow would (same pixels, same type)."""
    return image.dtype == np.uint8 and (
        image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))
    )


def _pil_format(path: Path) -> str:
    ext = path.suffix.lower()
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}.get(ext, "PNG")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files in a folder (not recursive), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p))
