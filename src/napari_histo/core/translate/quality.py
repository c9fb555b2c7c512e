"""Full-reference image-quality metrics from piq, on RGB uint8 pairs.

PSNR, SSIM, MS-GMSD, MDSI and HaarPSI, the five metrics the AIDL24 IHC -> H&E project reported.
That project computed them with the PIQA package; here they come from piq (Kastryulin et al.),
whose defaults differ, so the numbers are not comparable with PIQA's: piq's SSIM average-pools
images whose shorter side is about 384 px or more (by round(min(H, W) / 256)) before comparing,
and piq's MS-GMSD has no chromatic term (``chromatic=False``), i.e. it scores luminance only.
Directions: PSNR, SSIM and HaarPSI are higher-is-better; MS-GMSD and MDSI are *distances*,
lower-is-better (0 for identical images). piq's PSNR is capped at 80 dB for identical images
(it adds 1e-8 to the MSE).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import HistoError, InputWarning
from ..io import to_rgb_uint8

if TYPE_CHECKING:
    import torch

#: piq's multi-scale metrics need at least 17 px (MS-GMSD) or 16 px (HaarPSI) a side; smaller
#: images are reflect-padded up to this with a warning.
MIN_SIDE = 32


@dataclass(frozen=True)
class Metric:
    """One metric: its key in result dicts, display name, direction and value for a perfect match."""

    key: str
    name: str
    better: str  # "higher" or "lower"
    ideal: float
    piq_function: str


METRICS: tuple[Metric, ...] = (
    Metric("psnr", "PSNR", "higher", 80.0, "psnr"),
    Metric("ssim", "SSIM", "higher", 1.0, "ssim"),
    Metric("ms_gmsd", "MS-GMSD", "lower", 0.0, "multi_scale_gmsd"),
    Metric("mdsi", "MDSI", "lower", 0.0, "mdsi"),
    Metric("haarpsi", "HaarPSI", "higher", 1.0, "haarpsi"),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}


def _pad_min(a: np.ndarray, source: str) -> np.ndarray:
    h, w = a.shape[:2]
    if h >= MIN_SIDE and w >= MIN_SIDE:
        return a
    ph, pw = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
    warnings.warn(
        f"{source}: {h} x {w} pixels is below the {MIN_SIDE}-pixel minimum of the multi-scale "
        "metrics; both images were reflect-padded, so the scores are approximate",
        InputWarning,
        stacklevel=3,
    )
    pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
    for axis in (0, 1):
        mode = "reflect" if a.shape[axis] >= 2 else "edge"
        p = [(0, 0)] * 3
        p[axis] = pads[axis]
        a = np.pad(a, p, mode=mode)
    return a


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].double() / 255.0


def quality_scores(
    a: np.ndarray,
    b: np.ndarray,
    names: tuple[str, str] = ("A", "B"),
    metrics: tuple[str, ...] | None = None,
) -> dict[str, float]:
    """The five piq metrics between two RGB images of the same size.

    Parameters
    ----------
    a, b : array
        Images :func:`~napari_histo.core.io.to_rgb_uint8` accepts; ``a`` is the test image and
        ``b`` the reference (all five metrics are symmetric up to float rounding except MDSI's
        chromatic term, which is too).
    names : (str, str)
        How to name the inputs in messages.
    metrics : tuple of str, optional
        A subset of ``psnr``, ``ssim``, ``ms_gmsd``, ``mdsi``, ``haarpsi`` (default all).

    Returns
    -------
    dict
        ``{key: value}``; see :data:`METRICS` for directions.

    Raises
    ------
    HistoError
        When the two images differ in size, or an unknown metric is asked for.
    """
    import piq

    x = to_rgb_uint8(a, names[0])
    y = to_rgb_uint8(b, names[1])
    if x.shape != y.shape:
        raise HistoError(
            f"{names[0]} is {x.shape[0]} x {x.shape[1]} but {names[1]} is "
            f"{y.shape[0]} x {y.shape[1]}; quality metrics compare images of the same size"
        )
    keys = tuple(metrics) if metrics else tuple(METRIC_BY_KEY)
    unknown = [k for k in keys if k not in METRIC_BY_KEY]
    if unknown:
        raise HistoError(
            f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_BY_KEY)}"
        )
    x = _pad_min(x, f"{names[0]} / {names[1]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        y = _pad_min(y, names[1])
    tx, ty = _to_tensor(x), _to_tensor(y)
    out: dict[str, float] = {}
    for key in keys:
        fn = getattr(piq, METRIC_BY_KEY[key].piq_function)
        out[key] = float(fn(tx, ty, data_range=1.0))
    return out


def format_scores(scores: dict[str, float]) -> str:
    """One line per metric with its direction, e.g. ``PSNR     31.2  (higher is better)``."""
    lines = []
    for key, value in scores.items():
        m = METRIC_BY_KEY[key]
        lines.append(f"{m.name:<8} {value:10.4f}  ({m.better} is better)")
    return "\n".join(lines)


def cycle_scores(
    image: np.ndarray,
    forward: Any = "ihc2he_default",
    backward: Any = None,
    tile: int = 256,
    overlap: int = 32,
    device: str = "auto",
    translated: np.ndarray | None = None,
) -> dict[str, float]:
    """Cycle-consistency: the five metrics of ``backward(forward(image))`` against ``image``.

    Parameters
    ----------
    image : array
        The original (e.g. an IHC tile).
    forward, backward : Translator, model folder or shipped name
        The two directions. When ``forward`` is a folder/name and ``backward`` is None,
        ``forward`` is the model's ``ihc2he`` generator and ``backward`` its ``he2ihc`` one.
    tile, overlap, device
        Passed to :func:`~napari_histo.core.translate.translate`.
    translated : array, optional
        ``forward(image)`` when already computed (saves one pass).

    Returns
    -------
    dict
        The five metrics (round trip vs original).
    """
    from . import Translator, load_translator, translate

    if not isinstance(forward, Translator):
        model = forward
        forward = load_translator(model, "ihc2he", device) if translated is None else None
        if backward is None:
            backward = load_translator(model, "he2ihc", device)
    elif backward is None:
        other = "he2ihc" if forward.direction == "ihc2he" else "ihc2he"
        backward = load_translator(forward.path, other, forward.device)
    elif not isinstance(backward, Translator) and isinstance(backward, str | os.PathLike):
        backward = load_translator(backward, "he2ihc", device)
    orig = to_rgb_uint8(image, "image")
    mid = translated if translated is not None else translate(orig, forward, tile, overlap)
    back = translate(mid, backward, tile, overlap)
    return quality_scores(back, orig, names=("round trip", "original"))
