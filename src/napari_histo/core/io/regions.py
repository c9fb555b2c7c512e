"""Regions of an image: rectangles drawn by the user, thumbnails, levels of a pyramid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import HistoError


def rectangle_slices(
    vertices: Sequence[np.ndarray], shape: tuple[int, ...], min_size: int = 8
) -> list[tuple[slice, slice]]:
    """Bounding (row, col) slices of polygons/rectangles given as (N, 2) vertex arrays.

    Vertices are in the image's pixel coordinates (row, col); extra leading dimensions
    (e.g. a z or t coordinate from a Shapes layer) are ignored. Rectangles are clipped to
    the image; ones smaller than ``min_size`` pixels on a side after clipping are dropped.
    """
    h, w = shape[:2]
    out = []
    for verts in vertices:
        v = np.asarray(verts, dtype=float)[:, -2:]
        r0, c0 = np.floor(v.min(axis=0)).astype(int)
        r1, c1 = np.ceil(v.max(axis=0)).astype(int)
        r0, c0 = max(r0, 0), max(c0, 0)
        r1, c1 = min(r1, h), min(c1, w)
        if r1 - r0 >= min_size and c1 - c0 >= min_size:
            out.append((slice(r0, r1), slice(c0, c1)))
    return out


def crop_rectangles(
    image, vertices: Sequence[np.ndarray], source: str = "image"
) -> list[np.ndarray]:
    """Crop every rectangle from ``image`` (numpy or dask); refuse when none lies on it."""
    slices = rectangle_slices(vertices, image.shape)
    if not slices:
        raise HistoError(
            f"{source}: none of the {len(vertices)} rectangles covers at least 8x8 pixels of the image"
        )
    return [np.asarray(image[rs, cs]) for rs, cs in slices]


def pick_level(levels: Sequence, max_side: int = 2048) -> int:
    """Index of the finest pyramid level whose long side is at most ``max_side``."""
    for i, lv in enumerate(levels):
        if max(lv.shape[:2]) <= max_side:
            return i
    return len(levels) - 1


def thumbnail(image, size: int = 96) -> np.ndarray:
    """A small RGB uint8 preview (strided, so cheap on dask arrays and pyramids)."""
    if isinstance(image, (list, tuple)):
        image = image[-1]
    h, w = image.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / size)))
    small = np.asarray(image[::step, ::step])
    if small.ndim == 2:
        small = np.repeat(small[..., None], 3, axis=-1)
    small = small[..., :3]
    if small.dtype != np.uint8:
        from . import to_rgb_uint8

        small = to_rgb_uint8(small)
    return np.ascontiguousarray(small)
