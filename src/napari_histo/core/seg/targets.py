"""Training targets derived from instance labels: ternary labels, FullNet weight maps, HV maps.

All functions take one ``(H, W)`` integer instance-label image (0 = background) and return numpy
arrays of the same height and width. They are pure numpy/scipy (no torch).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

#: Ternary classes (FullNet): background, nucleus interior, nucleus boundary.
BACKGROUND, INSIDE, BOUNDARY = 0, 1, 2

_CROSS = ndi.generate_binary_structure(2, 1)
_SQUARE = ndi.generate_binary_structure(2, 2)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"instance labels must be a 2-D integer array, got {labels.dtype} {labels.shape}"
        )
    return labels


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Two-pixel-thick instance contours (FullNet's ``dilation & ~erosion`` per nucleus).

    A pixel is a boundary pixel when its 4-neighbourhood (itself included) touches a nucleus and
    is not one single label; so touching nuclei are separated by two boundary pixels.

    Parameters
    ----------
    labels : (H, W) integer instance labels.

    Returns
    -------
    (H, W) bool
    """
    labels = _check_labels(labels)
    hi = ndi.grey_dilation(labels, footprint=_CROSS, mode="nearest")
    lo = ndi.grey_erosion(labels, footprint=_CROSS, mode="nearest")
    return hi != lo


def ternary_labels(labels: np.ndarray) -> np.ndarray:
    """Ternary classes of an instance-label image: 0 background, 1 inside, 2 boundary.

    The labels Qu et al. write to disk (FullNet-varCE ``prepare_data.py``): the boundary is two
    pixels thick (the outer ring of each nucleus and the ring just outside it), the inside is each
    nucleus eroded by the 4-neighbourhood; they agree with the authors' published example on more
    than 99.5 % of its pixels (their instance labels are not published, see the tests). Their
    training does not use this boundary: it re-derives one from the inside, two pixels inside
    the nucleus (:func:`fullnet_ternary_labels`). ``postprocess.instances_from_ternary`` with
    ``grow="half"`` inverts these labels.

    Returns
    -------
    (H, W) int64
    """
    labels = _check_labels(labels)
    bnd = boundaries(labels)
    out = np.zeros(labels.shape, np.int64)
    out[labels > 0] = INSIDE
    out[bnd] = BOUNDARY
    return out


def fullnet_ternary_labels(labels: np.ndarray) -> np.ndarray:
    """The ternary targets FullNet is trained on (Qu et al.'s training-time label encoding).

    Qu et al. keep only the inside class of :func:`ternary_labels` (the union of the nuclei each
    eroded by the 4-neighbourhood) and recompute the boundary from it on every training crop:
    boundary = its dilation minus its erosion (4-neighbourhood), inside = its erosion. So the
    two-pixel boundary lies *inside* each nucleus (its two outer rings, up to an opening), the
    inside is the nucleus eroded twice, and touching nuclei are four boundary pixels apart.
    Dilating the inside by a disk of radius 2, as their inference does
    (``postprocess.instances_from_inside``), restores the nuclei.

    Returns
    -------
    (H, W) int64: 0 background, 1 inside, 2 boundary.
    """
    eroded_once = ternary_labels(labels) == INSIDE
    inside = ndi.binary_erosion(eroded_once, structure=_CROSS, border_value=1)
    ring = ndi.binary_dilation(eroded_once, structure=_CROSS) & ~inside
    out = np.zeros(eroded_once.shape, np.int64)
    out[inside] = INSIDE
    out[ring] = BOUNDARY
    return out


def variance_groups(ternary: np.ndarray) -> np.ndarray:
    """The pixel groups of varCE's variance term: 8-connected components of the inside class.

    Qu et al. label the connected components of ``target == inside`` (full connectivity), not the
    nuclei: a whole nucleus would hold its boundary ring too, and the variance term would pull the
    ring toward the inside class while the cross-entropy pulls it to the boundary class.

    Parameters
    ----------
    ternary : (H, W) ternary classes (0 background, 1 inside, 2 boundary).

    Returns
    -------
    (H, W) int64 group ids ``1..N``, 0 outside every group.
    """
    groups, _ = ndi.label(np.asarray(ternary) == INSIDE, structure=_SQUARE)
    return groups.astype(np.int64, copy=False)


def _inner_contour(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask, structure=_CROSS, border_value=0)


def weight_map(
    labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, tol: float = 1e-4
) -> np.ndarray:
    """FullNet/U-Net weight map ``1 + w0 * exp(-(d1 + d2)**2 / (2 sigma**2))``.

    ``d1`` and ``d2`` are the distances of a pixel to the contours of the nearest and second
    nearest nuclei (every pixel, inside nuclei too, as in Qu et al.'s ``weight_map.m``; defaults
    ``w0=10, sigma=5`` are theirs for MoNuSeg). Pixels between close nuclei weigh up to ``1 + w0``;
    with fewer than two nuclei the map is all ones.

    Only nuclei within ``d`` of a pixel matter where ``w0 * exp(-d**2 / (2 sigma**2)) > tol``, so
    distances are computed in a window around each nucleus (linear in the number of nuclei).

    Parameters
    ----------
    labels : (H, W) integer instance labels.
    w0, sigma : amplitude and width of the boundary term.
    tol : contributions smaller than this are dropped.

    Returns
    -------
    (H, W) float32, >= 1.
    """
    labels = _check_labels(labels)
    h, w = labels.shape
    reach = sigma * math.sqrt(2.0 * math.log(max(w0 / tol, 1.0 + 1e-9)))
    r = math.ceil(reach)
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        y0, y1 = max(sl[0].start - r, 0), min(sl[0].stop + r, h)
        x0, x1 = max(sl[1].start - r, 0), min(sl[1].stop + r, w)
        contour = _inner_contour(labels[y0:y1, x0:x1] == i)
        d = ndi.distance_transform_edt(~contour).astype(np.float32)
        d[d > reach] = np.inf
        a, b = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]
        np.minimum(b, np.maximum(a, d), out=b)
        np.minimum(a, d, out=a)
    s = d1 + d2
    out = np.ones(labels.shape, np.float32)
    near = np.isfinite(s)
    out[near] += w0 * np.exp(-(s[near] ** 2) / (2.0 * sigma**2))
    return out


def hv_maps(labels: np.ndarray) -> np.ndarray:
    """HoVer-Net horizontal and vertical distance maps.

    For each nucleus, the column (``h``) and row (``v``) offsets of its pixels from its centroid,
    negative and positive sides scaled separately into ``[-1, 0]`` and ``[0, 1]`` (as in
    HoVer-Net). The centroid is not rounded (HoVer-Net rounds it), which keeps the maps exactly
    equivariant to flips and 90° rotations. Background is 0.

    Returns
    -------
    (2, H, W) float32: channel 0 = h (x, columns), channel 1 = v (y, rows).
    """
    labels = _check_labels(labels)
    out = np.zeros((2, *labels.shape), np.float32)
    rows, cols = np.nonzero(labels)
    if rows.size == 0:
        return out
    _, inv = np.unique(labels[rows, cols], return_inverse=True)
    n = np.bincount(inv).astype(np.float64)
    for ch, coord in ((0, cols), (1, rows)):
        c = coord.astype(np.float64)
        d = c - (np.bincount(inv, weights=c) / n)[inv]
        lo = np.zeros(n.size)
        hi = np.zeros(n.size)
        np.minimum.at(lo, inv, d)
        np.maximum.at(hi, inv, d)
        neg = d < 0
        d[neg] /= -lo[inv[neg]]
        pos = d > 0
        d[pos] /= hi[inv[pos]]
        out[ch, rows, cols] = d
    return out
