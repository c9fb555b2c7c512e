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

Images larger than one block (whole slides, big mosaics) are cut a second way, into blocks whose
instance labels are made separately and stitched by ownership (see :class:`BlockTiling`): the
slide path runs these rules as a dask graph, :func:`segment_blocks_iter` runs them in memory,
so both give the same nuclei on the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

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
    balance : bool
        Shrink the tiles along an axis to the smallest size (a multiple of the model's) that
        covers it with as many tiles as ``tile`` would need, so neighbours share only about
        ``overlap`` pixels instead of the last tile overlapping by up to a whole tile. Less work
        for fully convolutional models; not for models whose output depends on the tile size
        (the translator's instance normalization).
    """

    tile: int = 256
    overlap: int = 32
    batch: int = 4
    balance: bool = False

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


def balanced_tile(length: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """The smallest tile (a multiple of ``multiple``, at most ``tile``) that covers ``length``
    with as many tiles, ``overlap`` apart, as ``tile`` itself needs."""
    if length <= tile:
        return length
    n = -(-(length - overlap) // max(1, tile - overlap))
    size = -(-(length + (n - 1) * overlap) // n)
    return min(tile, _round_up(size, max(1, multiple)))


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
    th, tw = (balanced_tile(n, tile, int(spec.overlap), m) if spec.balance else min(tile, n)
              for n in sizes)  # fmt: skip
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
        yield Progress(step=done, total=total, stage="tile")
    norm = 1.0 / np.maximum(wsum, 1e-12)
    return {
        name: np.ascontiguousarray((a * norm)[:, top : top + h, left : left + w])
        for name, a in acc.items()
    }


# ----------------------------------------------------------------------------- blocks

#: Ids of the nuclei owned by block ``b`` are ``b * IDS_PER_BLOCK + k``: unique without coordination.
IDS_PER_BLOCK = 2**16


@dataclass(frozen=True)
class BlockTiling:
    """How an image too large for one window is cut into blocks for instance segmentation.

    ::

        padded image = image padded with white to a multiple of ``tile``
        block (i, j) = core [i*tile, (i+1)*tile) x [j*tile, (j+1)*tile)
        window       = core grown by ``halo`` on every side (white beyond the image)

    Each window is segmented on its own and keeps the nuclei it **owns** (centroid in its core);
    each core is then assembled from its own nuclei plus the parts of its neighbours' nuclei that
    reach into it, so a nucleus crossing a block border is neither split nor duplicated.

    Parameters
    ----------
    tile : int
        Core size of a block (pixels).
    halo : int
        Context added on every side; must exceed the largest nucleus radius.
    min_tissue : float
        Slides only: blocks whose tissue fraction (at low resolution) is below this are skipped.
    """

    tile: int = 1024
    halo: int = 64
    min_tissue: float = 0.01

    def __post_init__(self):
        if self.tile < 16 or self.halo < 0 or 2 * self.halo > self.tile:
            raise HistoError(
                f"invalid tiling: tile={self.tile}, halo={self.halo} (need tile >= 16 and halo <= tile/2)"
            )


def own_labels(
    labels: np.ndarray, block: tuple[int, int], n_block_cols: int, tiling: BlockTiling
) -> np.ndarray:
    """Pass 1: the nuclei of a window's ``labels`` whose centroid lies in its core, with
    image-unique ids ``(i * n_block_cols + j) * IDS_PER_BLOCK + k``; everything else 0."""
    from scipy import ndimage

    h, t = tiling.halo, tiling.tile
    if labels.shape != (t + 2 * h, t + 2 * h):
        raise HistoError(
            f"segmenter returned shape {labels.shape} for a window of {(t + 2 * h, t + 2 * h)}"
        )
    out = np.zeros(labels.shape, np.uint32)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if ids.size == 0:
        return out
    centroids = np.asarray(ndimage.center_of_mass(np.ones_like(labels), labels, ids)).reshape(-1, 2)
    inside = (centroids >= h) & (centroids < h + t)
    owned = ids[inside[:, 0] & inside[:, 1]]
    i, j = block
    if owned.size >= IDS_PER_BLOCK:
        raise HistoError(f"block {i},{j} holds {owned.size} nuclei; use a smaller tile")
    lut = np.zeros(int(labels.max()) + 1, np.uint32)
    base = (i * n_block_cols + j) * IDS_PER_BLOCK
    lut[owned] = base + np.arange(1, owned.size + 1, dtype=np.uint32)
    return lut[labels]


def assemble_core(block: np.ndarray, tiling: BlockTiling) -> np.ndarray:
    """Pass 2 on one block of owned windows grown by ``halo``: own nuclei, then neighbours' overhangs.

    ``block`` rows: [0, h) the upper neighbour's window bottom strip (= my core rows [0, h)),
    [h, h + t + 2h) my window, [t + 3h, t + 4h) the lower neighbour's top strip (= my core rows
    [t - h, t)); columns likewise.
    """
    h, t = tiling.halo, tiling.tile
    core = block[2 * h : 2 * h + t, 2 * h : 2 * h + t].copy()
    if h == 0:
        return core
    spans = {  # strip rows/cols in block -> where they land in my core
        -1: (slice(0, h), slice(0, h)),
        0: (slice(2 * h, 2 * h + t), slice(0, t)),
        1: (slice(t + 3 * h, t + 4 * h), slice(t - h, t)),
    }
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di == 0 and dj == 0:
                continue
            src_r, dst_r = spans[di]
            src_c, dst_c = spans[dj]
            strip = block[src_r, src_c]
            target = core[dst_r, dst_c]
            fill = (target == 0) & (strip != 0)
            target[fill] = strip[fill]
    return core


def segment_blocks_iter(
    image: np.ndarray,
    segment_window: Callable[[np.ndarray], tuple[np.ndarray, dict[str, Any]]],
    tiling: BlockTiling | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Instance-segment an in-memory image block by block, as a slide is (yields per window).

    Parameters
    ----------
    image : (H, W, 3) uint8
    segment_window : callable
        RGB window -> ``(labels, per-pixel maps)``; maps are ``{name: (..., h, w)}`` arrays
        (e.g. confidence) of which each block keeps its core.
    tiling : BlockTiling

    Returns
    -------
    labels, maps
        uint32 labels with image-unique ids (same partition as the slide path gives), and each
        map assembled from the block cores.
    """
    tiling = tiling or BlockTiling()
    t, h = tiling.tile, tiling.halo
    H, W = image.shape[:2]
    nby, nbx = -(-H // t), -(-W // t)
    padded = np.full((nby * t + 2 * h, nbx * t + 2 * h, 3), 255, np.uint8)
    padded[h : h + H, h : h + W] = image[..., :3]
    # Owned windows laid side by side, as the slide path stores them, plus a zero border.
    step = t + 2 * h
    wins = np.zeros((nby * step + 2 * h, nbx * step + 2 * h), np.uint32)
    maps: dict[str, np.ndarray] = {}
    done = 0
    for i in range(nby):
        for j in range(nbx):
            window = padded[i * t : i * t + step, j * t : j * t + step]
            labels, wmaps = segment_window(np.ascontiguousarray(window))
            owned = own_labels(np.asarray(labels), (i, j), nbx, tiling)
            wins[h + i * step : h + (i + 1) * step, h + j * step : h + (j + 1) * step] = owned
            for name, m in wmaps.items():
                m = np.asarray(m)
                if name not in maps:
                    maps[name] = np.zeros((*m.shape[:-2], nby * t, nbx * t), m.dtype)
                maps[name][..., i * t : (i + 1) * t, j * t : (j + 1) * t] = m[
                    ..., h : h + t, h : h + t
                ]
            done += 1
            yield Progress(step=done, total=nby * nbx, stage="block", message=f"block {done}")
    out = np.zeros((nby * t, nbx * t), np.uint32)
    for i in range(nby):
        for j in range(nbx):
            # My window with a halo of my neighbours' windows (what map_overlap hands pass 2).
            r0, c0 = h + i * step - h, h + j * step - h
            block = wins[r0 : r0 + step + 2 * h, c0 : c0 + step + 2 * h]
            out[i * t : (i + 1) * t, j * t : (j + 1) * t] = assemble_core(block, tiling)
    return out[:H, :W], {n: m[..., :H, :W] for n, m in maps.items()}
