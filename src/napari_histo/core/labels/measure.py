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


def measure_nuclei(
    labels: np.ndarray, image: np.ndarray | None = None, offset: tuple[int, int] = (0, 0)
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

    Returns
    -------
    dict of column name -> 1D array, one row per label in increasing id order (see ``COLUMNS``).
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2D, got shape {labels.shape}")
    if not labels.any():
        return {k: np.zeros(0, dtype=np.int64 if k == "label" else np.float64) for k in COLUMNS}
    props = regionprops_table(
        labels.astype(np.int64, copy=False),
        properties=("label", "area", "perimeter", "centroid", "eccentricity", "solidity"),
    )
    table = {
        "label": props["label"].astype(np.int64),
        "area": props["area"].astype(np.float64),
        "perimeter": props["perimeter"].astype(np.float64),
        "centroid_y": props["centroid-0"] + offset[0],
        "centroid_x": props["centroid-1"] + offset[1],
        "eccentricity": props["eccentricity"],
        "solidity": props["solidity"],
    }
    if image is not None and image.shape[:2] == labels.shape:
        from scipy import ndimage
        from skimage.color import rgb2hed

        hema = rgb2hed(np.asarray(image)[..., :3])[..., 0]
        table["mean_hematoxylin"] = np.asarray(
            ndimage.mean(hema, labels, table["label"]), dtype=np.float64
        )
    else:
        table["mean_hematoxylin"] = np.full(len(table["label"]), np.nan)
    return table
