"""Colour spaces of stain work: RGB <-> optical density (OD) <-> HSD, CIE Lab, and a tissue mask.

Every function takes and returns torch tensors with the colour channels in the last axis
(``(..., 3)``), so one pixel, a list of pixels, an image or a batch of images go through the
same code, on the CPU or a GPU. RGB is on the 0..255 scale (uint8 or float).

Optical density uses ``OD = -log((I + 1) / 256)``: finite for black, 0 for white, and exactly
invertible for every uint8 value. HSD (van der Laak et al. 2000) splits OD into a density
``D = mean(OD)`` and two chromatic coordinates ``cx = OD_R / D - 1``,
``cy = (OD_G - OD_B) / (sqrt(3) D)`` that do not depend on how much stain there is. Below a
density of :data:`D_MIN` (glass, not tissue) the chroma is shrunk towards neutral grey instead of
dividing by a vanishing density, so white pixels get a defined colour and the round trip stays
exact.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

#: Below this density the chromatic coordinates are scaled by ``D / D_MIN`` (see module doc).
D_MIN = 0.05
#: A pixel is tissue when its mean optical density is above this (glass is below ~0.1)...
TISSUE_OD = 0.15
#: ...and below this (black void, ink or folded tissue are above; RGB < ~20).
DARK_OD = 2.5
#: Green marker pen: green brighter than red by this much never happens in H&E.
PEN_GREEN_MARGIN = 10

_SQRT3 = math.sqrt(3.0)

# sRGB (D65) -> XYZ, and the D65 white point (CIE 1931 2 degrees).
_RGB2XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE = (0.950456, 1.0, 1.088754)
_LAB_EPS = 216.0 / 24389.0
_LAB_KAPPA = 24389.0 / 27.0


# --------------------------------------------------------------------------- arrays


def as_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """An RGB uint8 numpy image as a uint8 tensor on ``device`` (no copy on the CPU)."""
    a = np.ascontiguousarray(image)
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a).to(device)


def to_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """Round and clip an RGB tensor on the 0..255 scale to uint8 (NaN becomes white)."""
    rgb = torch.nan_to_num(rgb, nan=255.0, posinf=255.0, neginf=0.0)
    return rgb.clamp_(0.0, 255.0).add_(0.5).to(torch.uint8)


@lru_cache(maxsize=8)
def _od_lut(device: torch.device) -> torch.Tensor:
    return -torch.log((torch.arange(256, dtype=torch.float32, device=device) + 1.0) / 256.0)


@lru_cache(maxsize=8)
def _linear_lut(device: torch.device) -> torch.Tensor:
    c = torch.arange(256, dtype=torch.float32, device=device) / 255.0
    return _srgb_to_linear(c)


def _lookup(lut: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    if values.device.type == "cpu" and values.dtype == torch.uint8:
        # numpy gathers with uint8 indices directly: about 6x faster than widening them to
        # int64 for index_select, same values.
        return torch.from_numpy(np.take(lut.numpy(), values.numpy()))
    flat = values.reshape(-1).long()
    return torch.index_select(lut, 0, flat).reshape(values.shape)


# --------------------------------------------------------------------------- optical density


def rgb_to_od(rgb: torch.Tensor) -> torch.Tensor:
    """Optical density ``-log((I + 1) / 256)`` of RGB on the 0..255 scale (float32).

    uint8 input goes through a 256-entry lookup table (no logarithm per pixel).
    """
    if rgb.dtype == torch.uint8:
        return _lookup(_od_lut(rgb.device), rgb)
    return -torch.log((rgb.float().clamp(0, 255) + 1.0) / 256.0)


def od_to_rgb(od: torch.Tensor) -> torch.Tensor:
    """RGB (float, 0..255, clipped) of optical densities; the inverse of :func:`rgb_to_od`."""
    return (256.0 * torch.exp(-od) - 1.0).clamp_(0.0, 255.0)


# --------------------------------------------------------------------------- HSD


def od_to_hsd(od: torch.Tensor, d_min: float = D_MIN) -> torch.Tensor:
    """Density and chroma ``(D, cx, cy)`` of optical densities ``(..., 3)``."""
    r, g, b = od.unbind(-1)
    d = (r + g + b) / 3.0
    dc = d.clamp(min=d_min)
    cx = (r - d) / dc
    cy = (g - b) / (_SQRT3 * dc)
    return torch.stack((d, cx, cy), dim=-1)


def hsd_to_od(hsd: torch.Tensor, d_min: float = D_MIN) -> torch.Tensor:
    """Optical densities of ``(D, cx, cy)``; the exact inverse of :func:`od_to_hsd`."""
    d, cx, cy = hsd.unbind(-1)
    dc = d.clamp(min=d_min)
    r = cx * dc + d
    g_minus_b = _SQRT3 * cy * dc
    g_plus_b = 3.0 * d - r
    return torch.stack((r, 0.5 * (g_plus_b + g_minus_b), 0.5 * (g_plus_b - g_minus_b)), dim=-1)


def rgb_to_hsd(rgb: torch.Tensor, d_min: float = D_MIN) -> torch.Tensor:
    """HSD ``(D, cx, cy)`` of RGB on the 0..255 scale."""
    return od_to_hsd(rgb_to_od(rgb), d_min)


def hsd_to_rgb(hsd: torch.Tensor, d_min: float = D_MIN) -> torch.Tensor:
    """RGB (float, 0..255, clipped) of HSD; negative densities are treated as 0 (white)."""
    return od_to_rgb(hsd_to_od(hsd, d_min).clamp_(min=0.0))


# --------------------------------------------------------------------------- CIE Lab


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(min=0.0)
    return torch.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1.0 / 2.4) - 0.055)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65) of sRGB on the 0..255 scale: L in [0, 100], a and b about +-100."""
    if rgb.dtype == torch.uint8:
        lin = _lookup(_linear_lut(rgb.device), rgb)
    else:
        lin = _srgb_to_linear(rgb.float().clamp(0, 255) / 255.0)
    m = torch.tensor(_RGB2XYZ, dtype=lin.dtype, device=lin.device)
    white = torch.tensor(_WHITE, dtype=lin.dtype, device=lin.device)
    t = (lin @ m.T) / white
    f = torch.where(t > _LAB_EPS, t.clamp(min=_LAB_EPS) ** (1.0 / 3.0), (_LAB_KAPPA * t + 16) / 116)
    fx, fy, fz = f.unbind(-1)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """sRGB (float, 0..255, clipped) of CIE L*a*b* (D65); the inverse of :func:`rgb_to_lab`."""
    lab = lab.float()
    L, a, b = lab.unbind(-1)
    fy = (L + 16.0) / 116.0
    f = torch.stack((fy + a / 500.0, fy, fy - b / 200.0), dim=-1)
    t = torch.where(f**3 > _LAB_EPS, f**3, (116.0 * f - 16.0) / _LAB_KAPPA)
    white = torch.tensor(_WHITE, dtype=lab.dtype, device=lab.device)
    m_inv = torch.linalg.inv(torch.tensor(_RGB2XYZ, dtype=torch.float64)).to(lab)
    lin = (t * white) @ m_inv.T
    return (_linear_to_srgb(lin) * 255.0).clamp_(0.0, 255.0)


# --------------------------------------------------------------------------- tissue


def tissue_mask(rgb: torch.Tensor, od: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask ``(...)`` of stained tissue pixels of RGB ``(..., 3)`` (0..255).

    Tissue absorbs light (mean OD above :data:`TISSUE_OD`) without being black (below
    :data:`DARK_OD`), and is never greener than it is red: that excludes green marker pen, which
    would otherwise pull stain estimates off the haematoxylin-eosin plane.
    """
    od = rgb_to_od(rgb) if od is None else od
    d = od.mean(-1)
    rgbf = rgb if rgb.dtype.is_floating_point else rgb.to(torch.int16)
    pen = rgbf[..., 1] > rgbf[..., 0] + PEN_GREEN_MARGIN
    return (d > TISSUE_OD) & (d < DARK_OD) & ~pen


__all__ = [
    "DARK_OD",
    "D_MIN",
    "TISSUE_OD",
    "as_tensor",
    "hsd_to_od",
    "hsd_to_rgb",
    "lab_to_rgb",
    "od_to_hsd",
    "od_to_rgb",
    "rgb_to_hsd",
    "rgb_to_lab",
    "rgb_to_od",
    "tissue_mask",
    "to_uint8",
]
