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

    Identical to the labels of Qu et al. (FullNet-varCE ``create_ternary_labels``): the boundary
    is two pixels thick (the outer ring of each nucleus and the ring just outside it), the inside
    is each nucleus eroded by the 4-neighbourhood. ``postprocess.instances_from_ternary`` with
    ``grow=1`` inverts it.

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
