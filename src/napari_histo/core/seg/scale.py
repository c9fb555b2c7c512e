"""Guessing how much to enlarge an image whose pixel size is unknown, from the size of its nuclei.

A model segments best when nuclei look about as large as in the tiles it learnt from. A PNG or
JPEG tile seldom says its pixel size, and a 20x tile shown to a 40x model has nuclei a quarter
of the area. When neither the file nor the user gives the pixel size, a first pass at the image's
own scale measures the median nucleus; when it is smaller than the model's ``scale_guess``
area (its card), the image is enlarged so that the median nucleus reaches that area, at most
``max_factor`` times (2: a 20x scan for a 40x model), and segmented again.

The area is chosen per model on its training tiles and their 2x-downsampled copies
(``bench/scale_guess.py``); a model whose card has no ``scale_guess`` is never enlarged.
"""

from __future__ import annotations

import numpy as np

#: The largest central crop (px a side) the first pass measures on a large image.
PROBE_SIDE = 1024
#: Fewer nuclei than this in the first pass: too few to judge, leave the image as it is.
MIN_NUCLEI = 10


def median_area(labels: np.ndarray) -> tuple[float, int]:
    """The median nucleus area (px) in ``labels`` and the number of nuclei (0.0, 0 for none)."""
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64))[1:]
    counts = counts[counts > 0]
    return (float(np.median(counts)) if counts.size else 0.0), int(counts.size)


def guess_settings(card: dict) -> tuple[float, float] | None:
    """``(area, max_factor)`` from a card's ``scale_guess`` (None: the model does not guess)."""
    guess = card.get("scale_guess") or {}
    try:
        area = float(guess.get("area_px") or 0)
        top = float(guess.get("max_factor") or 2.0)
    except (AttributeError, TypeError, ValueError):
        return None
    return (area, max(1.0, top)) if area > 0 else None


def guess_factor(
    labels: np.ndarray, card: dict, tolerance: float = 0.1
) -> tuple[float | None, str]:
    """How much to enlarge an image whose first-pass nuclei are ``labels``, and why in words.

    Returns ``(None, why)`` when the image is left as it is: the model does not guess, too few
    nuclei to judge, or nuclei already about the model's size (within ``tolerance``).
    """
    settings = guess_settings(card)
    if settings is None:
        return None, "pixel size unknown, segmented as it is (this model does not guess it)"
    target, top = settings
    area, n = median_area(labels)
    if n < MIN_NUCLEI:
        return None, f"pixel size unknown, segmented as it is ({n} nuclei: too few to judge)"
    factor = factor_for_area(area, target, top, tolerance)
    seen = f"median nucleus {area:.0f} px² against the model's {target:.0f}"
    if factor is None:
        return None, f"pixel size unknown: {seen}, segmented as it is"
    return factor, f"pixel size unknown: {seen}, enlarged x{factor:.2f}"


def factor_for_area(
    area: float, target: float, top: float = 2.0, tolerance: float = 0.1
) -> float | None:
    """sqrt(target / area), at most ``top``; None when within ``tolerance`` of 1 (or below)."""
    if area <= 0:
        return None
    factor = min(top, float(np.sqrt(target / area)))
    return factor if factor > 1.0 + tolerance else None


def central_crop(image: np.ndarray, side: int = PROBE_SIDE) -> np.ndarray:
    """The central ``side`` x ``side`` window of ``image`` (all of it when smaller)."""
    h, w = image.shape[:2]
    r0, c0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[r0 : r0 + side, c0 : c0 + side]
