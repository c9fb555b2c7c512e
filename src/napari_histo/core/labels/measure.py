"""Per-nucleus measurements from instance labels (and the H&E image they were found on)."""

from __future__ import annotations

import numpy as np

#: Columns of the measurements table, in order, with their units.
COLUMNS = {
    "label": "",
    "area": "px",
    "perimeter": "px",
    "centroid_y": "px",
    "centroid_x": "px",
    "eccentricity": "",
    "solidity": "",
    "mean_hematoxylin": "OD",
}
#: Added after ``perimeter`` when the pixel size is known (``mpp``): what pathologists report.
MICRON_COLUMNS = {"area_um2": "µm²", "perimeter_um": "µm"}


def measure_nuclei(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    offset: tuple[int, int] = (0, 0),
    mpp: float | None = None,
) -> dict[str, np.ndarray]:
    """Measure every nucleus of an instance label image.

    Parameters
    ----------
    labels : (H, W) int array
        0 = background, one id per nucleus.
    image : (H, W, 3) uint8, optional
        The H&E image; gives ``mean_hematoxylin`` (haematoxylin optical density by colour
        deconvolution, Ruifrok & Johnston). NaN without an image.
    offset : (row, col)
        Added to centroids, for a region cut from a larger image or slide.
    mpp : float, optional
        The pixel size in micrometres (from the file, or given): adds ``area_um2`` and
        ``perimeter_um`` (``MICRON_COLUMNS``). Never a guessed magnification.

    Returns
    -------
    dict of column name -> 1D array, one row per label in increasing id order (see ``COLUMNS``).
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2D, got shape {labels.shape}")
    if not labels.any():
        return _with_microns(
            {k: np.zeros(0, dtype=np.int64 if k == "label" else np.float64) for k in COLUMNS}, mpp
        )
    labels, original = compact_ids(labels)
    # Per-object Python work only where it is needed (perimeter, convex hull); area, centroid
    # and eccentricity (skimage's inertia-tensor definition) from pixel sums over all nuclei at
    # once: regionprops' per-object moments made most of a slide export's time.
    props = regionprops_table(
        labels.astype(np.int64, copy=False), properties=("label", "perimeter", "solidity")
    )
    ids = props["label"].astype(np.int64)
    area, cy, cx, eccentricity = _pixel_moments(labels, ids)
    table = {
        "label": ids,
        "area": area,
        "perimeter": props["perimeter"].astype(np.float64),
        "centroid_y": cy + offset[0],
        "centroid_x": cx + offset[1],
        "eccentricity": eccentricity,
        "solidity": props["solidity"],
    }
    if image is not None and image.shape[:2] == labels.shape:
        from scipy import ndimage
        from skimage.color import rgb2hed

        hema = rgb2hed(np.asarray(image)[..., :3])[..., 0]
        table["mean_hematoxylin"] = np.asarray(ndimage.mean(hema, labels, ids), dtype=np.float64)
    else:
        table["mean_hematoxylin"] = np.full(len(table["label"]), np.nan)
    if original is not None:
        table["label"] = original[ids]
    return _with_microns(table, mpp)


def _pixel_moments(labels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """Area, centroid (row, col) and eccentricity of each of ``ids``, all at once by ``bincount``.

    Eccentricity as skimage defines it: from the eigenvalues of the inertia tensor (the
    second central moments over the area).
    """
    rows, cols = np.nonzero(labels)
    lab = labels[rows, cols].astype(np.int64)
    n = np.bincount(lab)
    cy, cx = np.bincount(lab, rows) / np.maximum(n, 1), np.bincount(lab, cols) / np.maximum(n, 1)
    dy, dx = rows - cy[lab], cols - cx[lab]
    myy, mxx, mxy = (np.bincount(lab, w)[ids] / n[ids] for w in (dy * dy, dx * dx, dy * dx))
    half_sum, half_diff = (myy + mxx) / 2, np.sqrt(((myy - mxx) / 2) ** 2 + mxy**2)
    l1, l2 = np.clip(half_sum + half_diff, 0, None), np.clip(half_sum - half_diff, 0, None)
    ecc = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / np.where(l1 > 0, l1, 1.0), 0, None)), 0.0)
    return n[ids].astype(np.float64), cy[ids], cx[ids], ecc


def _with_microns(table: dict[str, np.ndarray], mpp: float | None) -> dict[str, np.ndarray]:
    if not mpp or mpp <= 0:
        return table
    out = {}
    for key, col in table.items():
        out[key] = col
        if key == "perimeter":
            out["area_um2"] = table["area"] * float(mpp) ** 2
            out["perimeter_um"] = col * float(mpp)
    return out


def compact_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(labels renumbered 1..N in id order, original id of each new id)`` for sparse ids.

    A slide's label ids carry their block's number (``block * 2**16 + k``), so a window far
    into a slide holds ids in the hundreds of millions: anything indexed by id (scipy's
    ``find_objects``, ``bincount``) would then take gigabytes for a few hundred nuclei.
    Ids no larger than the image are kept as they are (``None``: nothing to map back).
    """
    labels = np.asarray(labels)
    if labels.size == 0 or int(labels.max()) <= labels.size:
        return labels, None
    ids, inverse = np.unique(labels, return_inverse=True)
    compact = inverse.reshape(labels.shape).astype(np.int64)
    if ids[0] != 0:  # no background pixel: new ids start at 1 all the same
        ids, compact = np.concatenate([[0], ids]), compact + 1
    return compact, ids.astype(np.int64)
