"""Predicting dense maps over a large image with overlapping tiles and smooth blending.

How an image is cut (all sizes in pixels)::

    padded = image reflect-padded by ``overlap // 2`` on every side (its borders get context),
             then up to a multiple of ``size_multiple`` and to at least one tile
    tiles  = windows of ``tile`` x ``tile`` at a stride of ``tile - overlap``; the last tile of a
             row/column is shifted back to end exactly at the padded border
    maps   = sum(weight * tile prediction) / sum(weight)

The blending weight is a 2D cosine ramp that rises over the ``overlap`` pixels at a tile's
borders and is flat (1) in its middle, never exactly 0, so every pixel is covered and a pixel near
a tile border (the least context) counts least. Only blendable maps (probabilities, distances)
may be merged this way; instance labels are made afterwards, on the whole blended maps.

The predictor is any callable on a uint8 batch, so this module knows nothing about torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from .errors import HistoError
from .progress import Progress

#: ``(B, h, w, 3)`` uint8 -> ``{name: (B, C, h, w) float}``.
Predictor = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class TileSpec:
    """How an image is tiled for prediction.

    Parameters
    ----------
    tile : int
        Tile side in pixels (rounded up to the model's size multiple).
    overlap : int
        Pixels shared by neighbouring tiles (at most half a tile); blended with a cosine ramp.
    batch : int
        Tiles per forward pass.
    """

    tile: int = 256
    overlap: int = 32
    batch: int = 4

    def __post_init__(self):
        if int(self.tile) < 8 or int(self.overlap) < 0 or int(self.batch) < 1:
            raise HistoError(
                f"invalid tiling: tile={self.tile}, overlap={self.overlap}, batch={self.batch} "
                "(need tile >= 8, overlap >= 0, batch >= 1)"
            )
        if 2 * int(self.overlap) > int(self.tile):
            raise HistoError(
                f"invalid tiling: overlap {self.overlap} is more than half the tile {self.tile}"
            )


def axis_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``; the last one ends at ``length``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, max(1, stride)))
    starts.append(length - tile)
    return starts


def blend_ramp(tile: int, overlap: int) -> np.ndarray:
    """1D blending weight of a tile: a raised-cosine rise over ``overlap`` pixels at both ends."""
    w = np.ones(tile, np.float32)
    if overlap <= 0:
        return w
    i = np.arange(overlap, dtype=np.float64)
    rise = 0.5 - 0.5 * np.cos(math.pi * (i + 0.5) / overlap)  # in (0, 1), symmetric
    rise = np.maximum(rise, 1e-3).astype(np.float32)
    w[:overlap] = rise
    w[tile - overlap :] = np.minimum(w[tile - overlap :], rise[::-1])
    return w


def reflect_pad(img: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Reflect-pad the first two axes (numpy repeats the reflection when a pad exceeds the size)."""
    pad = [(top, bottom), (left, right)] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, pad, mode="reflect")


def _round_up(n: int, m: int) -> int:
    return -(-int(n) // m) * m


def plan_tiles(
    shape: tuple[int, int], spec: TileSpec, size_multiple: int = 1
) -> tuple[tuple[int, int, int, int], tuple[int, int], list[int], list[int]]:
    """Padding ``(top, bottom, left, right)``, tile size ``(th, tw)`` and tile starts.

    Each padded side is a multiple of ``size_multiple`` and at least ``size_multiple``; an image
    smaller than a tile becomes one (smaller) tile.
    """
    h, w = int(shape[0]), int(shape[1])
    m = max(1, int(size_multiple))
    tile = _round_up(max(int(spec.tile), m), m)
    margin = int(spec.overlap) // 2
    pads = []
    sizes = []
    for n in (h, w):
        full = max(_round_up(n + 2 * margin, m), m)
        if full > tile:  # tiled along this axis: any size >= tile works, keep it tight
            full = max(n + 2 * margin, tile)
        extra = full - n - 2 * margin
        pads.append((margin, margin + extra))
        sizes.append(full)
    th, tw = min(tile, sizes[0]), min(tile, sizes[1])
    stride_y = max(1, th - int(spec.overlap))
    stride_x = max(1, tw - int(spec.overlap))
    ys = axis_starts(sizes[0], th, stride_y)
    xs = axis_starts(sizes[1], tw, stride_x)
    return (pads[0][0], pads[0][1], pads[1][0], pads[1][1]), (th, tw), ys, xs


def predict_tiled_iter(
    image: np.ndarray,
    predictor: Predictor,
    spec: TileSpec | None = None,
    size_multiple: int = 1,
) -> Generator[Progress, None, dict[str, np.ndarray]]:
    """Predict blendable maps over an image tile by tile (yields one Progress per batch).

    Parameters
    ----------
    image : (H, W, 3) uint8
        The whole image (any size from 1 x 1).
    predictor : callable
        ``(B, th, tw, 3)`` uint8 -> ``{name: (B, C, th, tw)}`` float maps.
    spec : TileSpec, optional
        Tile size, overlap and batch (default ``TileSpec()``).
    size_multiple : int
        The predictor's inputs must have sides that are multiples of this.

    Returns
    -------
    dict
        ``{name: (C, H, W) float32}`` blended maps of the input's height and width.

    Closing the generator between two batches stops the work (nothing is written anywhere).
    """
    spec = spec or TileSpec()
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise HistoError(f"expected an (H, W, C) image, got shape {img.shape}")
    h, w = img.shape[:2]
    (top, bottom, left, right), (th, tw), ys, xs = plan_tiles((h, w), spec, size_multiple)
    padded = reflect_pad(img, top, bottom, left, right)
    ph, pw = padded.shape[:2]
    wy = blend_ramp(th, int(spec.overlap) if len(ys) > 1 else 0)
    wx = blend_ramp(tw, int(spec.overlap) if len(xs) > 1 else 0)
    weight = wy[:, None] * wx[None, :]
    positions = [(y, x) for y in ys for x in xs]
    total = len(positions)
    acc: dict[str, np.ndarray] = {}
    wsum = np.zeros((ph, pw), np.float32)
    done = 0
    for b0 in range(0, total, int(spec.batch)):
        chunk = positions[b0 : b0 + int(spec.batch)]
        batch = np.stack([padded[y : y + th, x : x + tw] for y, x in chunk])
        maps = predictor(batch)
        for name, m in maps.items():
            m = np.asarray(m, dtype=np.float32)
            if m.ndim != 4 or m.shape[0] != len(chunk) or m.shape[2:] != (th, tw):
                raise HistoError(
                    f"map {name!r} has shape {m.shape}; expected ({len(chunk)}, C, {th}, {tw})"
                )
            if name not in acc:
                acc[name] = np.zeros((m.shape[1], ph, pw), np.float32)
            for (y, x), tile_map in zip(chunk, m, strict=True):
                acc[name][:, y : y + th, x : x + tw] += tile_map * weight
        for y, x in chunk:
            wsum[y : y + th, x : x + tw] += weight
        done += len(chunk)
        yield Progress(step=done, total=total, stage="tile", message=f"tile {done}/{total}")
    norm = 1.0 / np.maximum(wsum, 1e-12)
    return {
        name: np.ascontiguousarray((a * norm)[:, top : top + h, left : left + w])
        for name, a in acc.items()
    }
