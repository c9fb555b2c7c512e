"""Stain-constancy measures: normalized median intensity (NMI) of nuclei and its spread.

NMI (Basavanhally & Madabhushi, SPIE 2013; used to compare normalizers by Zanjani et al. 2018):
for the nuclei pixels of an image, the median of the pixel intensity (mean of R, G and B)
divided by its 95th percentile. Normalized images of tissue from different labs should have
similar NMI, so the coefficient of variation (standard deviation / mean) of NMI over a set of
images measures how constant the stain appearance is after a method: lower is better.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import HistoError
from ..io import to_rgb_uint8


def intensity(image: np.ndarray) -> np.ndarray:
    """Mean of the R, G and B values per pixel (float32, 0..255)."""
    return to_rgb_uint8(np.asarray(image)).astype(np.float32).mean(axis=-1)


def estimate_nuclei_mask(image: np.ndarray) -> np.ndarray:
    """Haematoxylin-rich pixels (colour deconvolution + Otsu), when no nuclei mask is known."""
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu

    h = rgb2hed(to_rgb_uint8(np.asarray(image)))[..., 0]
    if np.ptp(h) <= 0:
        return np.zeros(h.shape, bool)
    return h > threshold_otsu(h)


def nmi(image: np.ndarray, nuclei: np.ndarray | None = None, percentile: float = 95.0) -> float:
    """Normalized median intensity of the nuclei pixels of ``image``.

    Parameters
    ----------
    image : array (H, W, 3)
        An RGB image (anything ``to_rgb_uint8`` accepts).
    nuclei : array (H, W), optional
        Nuclei pixels (boolean, or instance labels where > 0 is a nucleus); estimated with
        :func:`estimate_nuclei_mask` when omitted.
    percentile : float
        The denominator's percentile (95 in the original definition).

    Raises
    ------
    HistoError
        When the mask does not fit the image or holds no pixel.
    """
    values = intensity(image)
    mask = estimate_nuclei_mask(image) if nuclei is None else np.asarray(nuclei) > 0
    if mask.shape != values.shape:
        raise HistoError(f"nuclei mask of shape {mask.shape} for an image of {values.shape}")
    px = values[mask]
    if px.size == 0:
        raise HistoError("no nuclei pixels: NMI is undefined")
    top = float(np.percentile(px, percentile))
    return float(np.median(px)) / max(top, 1e-6)


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Standard deviation (population) divided by the mean."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        raise HistoError("no values")
    return float(v.std() / max(abs(v.mean()), 1e-12))


def nmi_summary(
    images: Sequence[np.ndarray], nuclei: Sequence[np.ndarray | None] | None = None
) -> dict:
    """NMI of every image and their mean, standard deviation and coefficient of variation."""
    masks = list(nuclei) if nuclei is not None else [None] * len(images)
    if len(masks) != len(images):
        raise HistoError(f"{len(images)} images but {len(masks)} nuclei masks")
    values = [nmi(im, m) for im, m in zip(images, masks, strict=True)]
    arr = np.asarray(values)
    return {
        "values": values,
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "cv": coefficient_of_variation(values),
    }


__all__ = ["coefficient_of_variation", "estimate_nuclei_mask", "intensity", "nmi", "nmi_summary"]
