"""Instance labels from predicted maps (ternary probabilities, HoVer-Net NP + HV maps).

All three functions return ``(labels, confidence)``: ``uint32 (H, W)`` instance ids numbered
``1..N`` (0 = background), and a ``float32 (H, W)`` per-pixel confidence in ``[0, 1]``: the
predicted probability that the pixel is what it was labelled as (on nuclei the probability of
foreground; elsewhere the probability of not being nucleus interior, since pixels of the
ternary boundary class may lie on either side of the nucleus edge). Pure numpy/scipy/scikit-image
(no torch).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels, relabel_sequential, watershed

from .targets import BACKGROUND, BOUNDARY, INSIDE

#: The clip of :func:`remove_small`'s relative threshold, in pixels. At 40x (median nucleus about
#: 300 px²) the upper end decides, not the fraction; a card's ``relative_cap`` may raise it.
RELATIVE_RANGE = (10, 60)

_CROSS = ndi.generate_binary_structure(2, 1)
_SQUARE = ndi.generate_binary_structure(2, 2)


def _as_chw(a: np.ndarray, channels: int, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 2 and channels == 1:
        a = a[None]
    if a.ndim != 3 or a.shape[0] != channels:
        raise ValueError(f"{name} must be ({channels}, H, W), got {a.shape}")
    return a


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill the holes of every instance (holes only take background pixels). In place."""
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        crop = labels[sl]
        holes = ndi.binary_fill_holes(crop == i) & (crop == 0)
        crop[holes] = i
    return labels


def remove_small(
    labels: np.ndarray,
    min_size: int,
    relative: float | None = None,
    relative_range: tuple[int, int] = RELATIVE_RANGE,
) -> np.ndarray:
    """Drop instances smaller than ``min_size`` pixels and renumber ``1..N`` (uint32).

    ``relative``: also drop those under this fraction of the median area of the instances kept
    by ``min_size``, the threshold clipped to ``relative_range`` pixels (debris scales with the
    nuclei: at 20x it stays under the small nuclei a fixed 40x threshold would remove).
    """
    labels = np.asarray(labels)
    if labels.any() and (min_size > 1 or relative):
        sizes = np.bincount(labels.ravel())
        threshold = min_size
        if relative:
            areas = sizes[1:]
            kept = areas[areas >= max(min_size, 1)]
            if kept.size:
                lo, hi = relative_range
                threshold = max(min_size, int(np.clip(relative * np.median(kept), lo, hi)))
        # One lookup drops the small ids and renumbers the rest in ascending order (what
        # relabel_sequential does, without its hashing: 26 -> 5 ms on a 1000^2 tile).
        keep = sizes >= max(threshold, 1)
        keep[0] = False
        lut = np.zeros(sizes.size, np.uint32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
        return lut[labels]
    return relabel_sequential(labels.astype(np.uint32, copy=False))[0].astype(np.uint32)


def without_small(parts: np.ndarray, min_size: int) -> np.ndarray:
    """The mask of the components of ``parts`` (from ``ndi.label``) of at least ``min_size``
    pixels: :func:`remove_small` ``> 0`` without the renumbering."""
    keep = np.bincount(parts.ravel()) >= min_size
    keep[0] = False
    return keep[parts]


def fill_mask_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes(mask)`` (4-connected background) by labelling the background once,
    not by propagating a dilation from the border (64 -> 14 ms on a 1000^2 tile)."""
    bg, n = ndi.label(~mask, structure=_CROSS)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, bool)
    outside[0] = True  # the mask itself
    for edge in (bg[0], bg[-1], bg[:, 0], bg[:, -1]):
        outside[edge] = True
    return ~outside[bg] | mask


def _confidence(labels: np.ndarray, on: np.ndarray, off: np.ndarray) -> np.ndarray:
    return np.clip(np.where(labels > 0, on, off), 0.0, 1.0).astype(np.float32)


def instances_from_ternary(
    probs: np.ndarray,
    min_size: int = 10,
    grow: int | str | None = "half",
    holes: bool = True,
    seed_threshold: float | None = None,
    relative_min_size: float | None = None,
    relative_cap: int = RELATIVE_RANGE[1],
) -> tuple[np.ndarray, np.ndarray]:
    """Instances from ternary probabilities (background, inside, boundary).

    Seeds are the 8-connected components of the pixels whose most likely class is *inside*; they
    grow by watershed (on the inside probability) into the pixels whose most likely class is not
    background. The ternary boundary straddles the nucleus edge (two pixels in the targets, one
    on each side), so seeds only take part of it:

    * ``grow="half"`` (default): the boundary pixels at least as close to a seed as to the
      background, i.e. the inner half of the boundary band whatever its predicted thickness
      (exact on perfect targets; touching nuclei are split between their seeds);
    * ``grow=n``: the pixels at most ``n`` 4-connected steps from a seed (on perfect targets
      ``1`` restores each nucleus up to an opening: convex corners and one-pixel spurs are lost);
    * ``grow=None``: all of the foreground.

    Holes are filled, then instances under ``min_size`` pixels removed. With soft boundaries
    (touching nuclei whose boundary probability stays under the inside probability), seeds
    ``p_inside - p_boundary > seed_threshold`` (e.g. 0.4) split them better than the argmax.
    Qu et al.'s own inference, for targets whose boundary lies inside the nuclei, is
    :func:`instances_from_inside`.

    Parameters
    ----------
    probs : (3, H, W) probabilities (or any scores whose argmax is the class).
    min_size : smallest instance kept, in pixels.
    grow : ``"half"``, a number of pixels, or None (see above).
    holes : fill holes inside instances.
    seed_threshold : None for argmax seeds, else the margin of inside over boundary probability.
    relative_min_size : then also drop instances under this fraction of the median instance
        (:func:`remove_small`).
    relative_cap : the largest that relative threshold may be, in pixels (at 40x it, not the
        fraction, decides).

    Returns
    -------
    labels : (H, W) uint32
    confidence : (H, W) float32
    """
    probs = _as_chw(probs, 3, "ternary probabilities")
    cls = np.argmax(probs, axis=0)
    if seed_threshold is None:
        seed_mask = cls == INSIDE
    else:
        seed_mask = probs[INSIDE] - probs[BOUNDARY] > seed_threshold
    seeds, n = ndi.label(seed_mask, structure=_SQUARE)
    fg = cls != BACKGROUND
    if n == 0:
        labels = np.zeros(cls.shape, np.uint32)
    else:
        mask = fg | (seeds > 0)
        if grow == "half":
            to_seed = ndi.distance_transform_edt(seeds == 0)
            to_background = ndi.distance_transform_edt(mask)
            mask &= to_seed <= to_background
        elif grow is not None:
            reach = ndi.binary_dilation(seeds > 0, structure=_CROSS, iterations=max(int(grow), 0))
            mask &= reach if grow > 0 else seeds > 0
        labels = watershed(-probs[INSIDE], markers=seeds, mask=mask).astype(np.int64)
        if holes:
            fill_holes(labels)
        labels = remove_small(
            labels, min_size, relative_min_size, (RELATIVE_RANGE[0], relative_cap)
        )
    return labels, _confidence(labels, 1.0 - probs[BACKGROUND], 1.0 - probs[INSIDE])


def instances_from_inside(
    probs: np.ndarray, min_size: int = 20, radius: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Qu et al.'s FullNet inference: argmax inside, small objects removed, disk dilation.

    The pixels whose most likely class is *inside* form objects (4-connected components under
    ``min_size`` pixels dropped, then 8-connected components labelled, as ``skimage``'s defaults
    do in their ``test.py``), and each object grows by a disk of ``radius`` pixels. With
    :func:`.targets.fullnet_ternary_labels` (the inside is each nucleus eroded twice) radius 2
    restores the nuclei. Where two grown objects would overlap, a pixel goes to the nearer one
    (a grey dilation would give it to the larger id); the boundary probabilities play no part,
    and the pixels the disk adds where background is predicted (corners) get a low confidence.

    Parameters
    ----------
    probs : (3, H, W) probabilities (or any scores whose argmax is the class).
    min_size : smallest object kept, in pixels of the inside class (before growing).
    radius : radius of the growing disk, in pixels.

    Returns
    -------
    labels : (H, W) uint32
    confidence : (H, W) float32
    """
    probs = _as_chw(probs, 3, "ternary probabilities")
    inside = np.argmax(probs, axis=0) == INSIDE
    if min_size > 1 and inside.any():
        parts, _ = ndi.label(inside, structure=_CROSS)
        inside = without_small(parts, min_size)
    seeds, _ = ndi.label(inside, structure=_SQUARE)
    labels = (expand_labels(seeds, distance=radius) if radius > 0 else seeds).astype(np.uint32)
    return labels, _confidence(labels, 1.0 - probs[BACKGROUND], 1.0 - probs[INSIDE])


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def instances_from_hover(
    np_prob: np.ndarray,
    hv: np.ndarray,
    threshold: float = 0.5,
    min_size: int = 10,
    marker_threshold: float = 0.4,
    sigma: float = 2.0,
    relative_min_size: float | None = None,
    relative_cap: int = RELATIVE_RANGE[1],
) -> tuple[np.ndarray, np.ndarray]:
    """Instances from HoVer-Net outputs by marker-controlled watershed (Graham et al. 2019).

    The foreground is ``np_prob >= threshold``. The horizontal derivative of ``h`` and vertical
    derivative of ``v`` (Gaussian derivatives of width ``sigma``, standing in for HoVer-Net's
    21-pixel Sobel) are min-max normalized and inverted, so they are high where the maps jump
    between two nuclei; where their maximum is ``>= marker_threshold`` is the boundary energy.
    Markers are foreground minus boundary (holes filled, opened, small ones removed), and the
    watershed of the smoothed energy floods the foreground from them.

    Parameters
    ----------
    np_prob : (H, W) or (1, H, W) nuclear-pixel probability.
    hv : (2, H, W) horizontal (x) and vertical (y) maps in [-1, 1].
    threshold : foreground threshold on ``np_prob``.
    min_size : smallest instance (and marker) kept, in pixels.
    marker_threshold : energy above which a foreground pixel is not a marker.
    sigma : width of the derivative filters, in pixels.
    relative_min_size : then also drop instances under this fraction of the median instance
        (:func:`remove_small`).
    relative_cap : the largest that relative threshold may be, in pixels (at 40x it, not the
        fraction, decides).

    Returns
    -------
    labels : (H, W) uint32
    confidence : (H, W) float32
    """
    prob = _as_chw(np_prob, 1, "np probability")[0]
    hv = _as_chw(hv, 2, "hv maps")
    blb = prob >= threshold
    blb_l, _ = ndi.label(blb)
    blb = without_small(blb_l, min_size)
    if not blb.any():
        empty = np.zeros(prob.shape, np.uint32)
        return empty, _confidence(empty, prob, 1.0 - prob)
    dh = ndi.gaussian_filter(_minmax(hv[0]), sigma, order=(0, 1))
    dv = ndi.gaussian_filter(_minmax(hv[1]), sigma, order=(1, 0))
    energy = np.maximum(1.0 - _minmax(dh), 1.0 - _minmax(dv))
    energy = np.clip(energy - (~blb), 0.0, None)
    dist = -ndi.gaussian_filter((1.0 - energy) * blb, 1.0)
    marker = blb & (energy < marker_threshold)
    marker = fill_mask_holes(marker)
    marker = ndi.binary_opening(marker, structure=_disk(2))
    markers, _ = ndi.label(marker)
    markers = remove_small(markers, min_size)
    labels = watershed(dist, markers=markers, mask=blb).astype(np.int64)
    labels = remove_small(labels, min_size, relative_min_size, (RELATIVE_RANGE[0], relative_cap))
    return labels, _confidence(labels, prob, 1.0 - prob)


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r
