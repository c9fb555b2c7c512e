"""Instance label images (masks) read and written as 2D integer arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import ImageReadError
from .images import TIFF_SUFFIXES


def write_labels(path: str | os.PathLike, labels: np.ndarray, dtype: type = np.uint32) -> Path:
    """Write an integer label image (instance or class map) as a compressed TIFF atomically."""
    import tifffile

    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(labels).astype(dtype, copy=False), compression="zlib")
    return path


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read an instance label image (TIFF or PNG) as a 2D integer array."""
    path = Path(path)
    name = path.name
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    try:
        if name.lower().endswith(TIFF_SUFFIXES):
            import tifffile

            a = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                a = np.asarray(im)
    except Exception as exc:
        raise ImageReadError(f"{name}: cannot read labels: {exc}") from None
    # Drop singleton page/channel axes only: a 1 x N mask is still a 2D mask.
    if a.ndim > 2 and a.shape[-1] == 1:
        a = a[..., 0]
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise ImageReadError(
            f"{name}: labels must be a 2D integer image, found {a.dtype} {a.shape}"
        )
    return a
