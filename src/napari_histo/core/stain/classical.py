"""Classical stain normalizers in torch: Reinhard (Lab statistics), Macenko and Vahadane.

Every normalizer has the same small API::

    norm = MacenkoNormalizer(device="auto").fit(template)      # or a list of templates/ROIs
    out = norm.transform(image)                                 # RGB uint8, same height/width
    stats = norm.source_stats(coarse_level)                     # fixed statistics, then
    out_chunk = norm.transform(chunk, source_stats=stats)       # chunk by chunk (whole slides)
    norm.save("lab.json"); load_normalizer("lab.json")

Statistics are estimated on tissue pixels only (:func:`napari_histo.core.color.tissue_mask`:
no glass, no black, no green marker), from at most :data:`MAX_STAT_PIXELS` pixels per image.
An image with too little tissue, or without stain colour (grayscale), comes back unchanged with
an :class:`~napari_histo.core.errors.InputWarning`; a template like that is refused.

Macenko and Vahadane differ only in how they find the two stain vectors (angle percentiles in
the optical-density plane vs. sparse non-negative dictionary learning); both then compute
concentrations by least squares, scale them by the ratio of 99th percentiles, and rebuild the
image with the template's stain vectors. That whole mapping is one 3x3 matrix in OD space,
applied through per-channel lookup tables (no log or exp per pixel).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import color
from ..atomic import atomic_write_text
from ..errors import HistoError, InputWarning
from ..io import to_rgb_uint8

FORMAT = "napari-histo-stain-normalizer"
FORMAT_VERSION = 1

#: Below this many tissue pixels (or this fraction of the image) an image has "no tissue".
MIN_TISSUE_PIXELS = 64
MIN_TISSUE_FRACTION = 0.01
#: Median chroma magnitude (HSD) of tissue below this: the image has no stain colour.
MIN_CHROMA = 0.03
#: Statistics use at most this many (evenly strided) tissue pixels of each image.
MAX_STAT_PIXELS = 2**16
#: Large images are transformed this many pixels (whole rows) at a time.
BAND_PIXELS = 2**21


@dataclass(eq=False)
class SourceStats:
    """Stain statistics of an image (or of a pooled template).

    Attributes
    ----------
    method : str
        The normalizer that made them.
    values : dict of str to ndarray
        The numbers (float64), e.g. ``stains`` (2, 3) and ``max_conc`` (2,) for Macenko.
    tissue : bool
        False when the image had too little tissue or no stain colour: a transform with these
        statistics returns its input unchanged.
    note : str
        Why ``tissue`` is False.
    """

    method: str
    values: dict[str, np.ndarray] = field(default_factory=dict)
    tissue: bool = True
    note: str = ""

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "tissue": self.tissue,
            "note": self.note,
            "values": {k: np.asarray(v, np.float64).tolist() for k, v in self.values.items()},
        }

    @classmethod
    def from_json(cls, d: dict) -> SourceStats:
        return cls(
            method=str(d["method"]),
            values={k: np.asarray(v, np.float64) for k, v in d["values"].items()},
            tissue=bool(d.get("tissue", True)),
            note=str(d.get("note", "")),
        )


# --------------------------------------------------------------------------- shared helpers


def as_image_list(images: Any) -> list[np.ndarray]:
    """One image, a (B, H, W, C) batch or a list of images as a list of RGB uint8 arrays."""
    if isinstance(images, (list, tuple)):
        items = list(images)
    else:
        a = np.asarray(images)
        items = list(a) if a.ndim == 4 else [a]
    if not items:
        raise HistoError("no image given")
    return [to_rgb_uint8(np.asarray(im), source=f"image {i + 1}") for i, im in enumerate(items)]


def is_batch(image: Any) -> bool:
    """True for a (B, H, W, C) array."""
    return not isinstance(image, (list, tuple)) and np.ndim(image) == 4


def strided(index: torch.Tensor, cap: int) -> torch.Tensor:
    """At most ``cap`` entries of ``index``, evenly strided (deterministic)."""
    if index.numel() <= cap:
        return index
    step = -(-index.numel() // cap)
    return index[::step]


def tissue_pixels(
    rgbs: list[torch.Tensor], cap: int = MAX_STAT_PIXELS
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Pooled tissue pixels of uint8 images: ``(rgb (N, 3) uint8, od (N, 3), note)``.

    ``note`` is empty when there is enough coloured tissue, else says what is missing.
    """
    picked_rgb, picked_od = [], []
    n_total = n_tissue = 0
    for rgb in rgbs:
        flat = rgb.reshape(-1, 3)
        flat = flat[:: max(1, flat.shape[0] // cap)]
        od = color.rgb_to_od(flat)
        idx = torch.nonzero(color.tissue_mask(flat, od)).squeeze(1)
        n_total += flat.shape[0]
        n_tissue += idx.numel()
        idx = strided(idx, cap)
        picked_rgb.append(flat[idx])
        picked_od.append(od[idx])
    rgb_px = torch.cat(picked_rgb)
    od_px = torch.cat(picked_od)
    if n_tissue < MIN_TISSUE_PIXELS or n_tissue < MIN_TISSUE_FRACTION * n_total:
        pct = 100.0 * n_tissue / max(n_total, 1)
        return rgb_px, od_px, f"no tissue found ({n_tissue} tissue pixels, {pct:.2g}% of the image)"
    hsd = color.od_to_hsd(od_px)
    chroma = torch.linalg.vector_norm(hsd[:, 1:], dim=1)
    if float(chroma.median()) < MIN_CHROMA:
        return rgb_px, od_px, "no stain colour found (a grayscale image?)"
    return rgb_px, od_px, ""


def warn_no_tissue(note: str, action: str = "returned unchanged") -> None:
    warnings.warn(f"{note}; {action}", InputWarning, stacklevel=3)


# --------------------------------------------------------------------------- base class


class TemplateStats:
    """``fit`` and ``source_stats`` of every normalizer, over its ``_stats(images)``."""

    def _stats(self, images: list[np.ndarray]) -> SourceStats:
        raise NotImplementedError

    def fit(self, template: Any):
        """Estimate the template's statistics (a list of images or regions is pooled).

        Raises
        ------
        HistoError
            When the template (all regions together) has too little coloured tissue.
        """
        stats = self._stats(as_image_list(template))
        if not stats.tissue:
            raise HistoError(f"template: {stats.note}; choose a template with stained tissue")
        self.target = stats
        return self

    def source_stats(self, image: Any) -> SourceStats:
        """Statistics of a source image, to normalize it later chunk by chunk with them.

        A list of images is pooled. Warns (:class:`InputWarning`) when there is no tissue.
        """
        stats = self._stats(as_image_list(image))
        if not stats.tissue:
            warn_no_tissue(stats.note, "the image is left unchanged")
        return stats


class StainNormalizer(TemplateStats):
    """Base class: template statistics, tissue checks, batches, save/load as JSON."""

    name = "base"

    def __init__(self, device: str | torch.device = "auto"):
        from ..device import resolve_device

        self.device = resolve_device(device)
        self.target: SourceStats | None = None

    # -- to implement
    def _estimate(self, rgb_px: torch.Tensor, od_px: torch.Tensor) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _apply(self, rgb: torch.Tensor, src: dict, tgt: dict) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict:
        """The method's settings (saved with the normalizer)."""
        return {}

    # -- public API
    @property
    def fitted(self) -> bool:
        return self.target is not None

    def to(self, device: str | torch.device) -> StainNormalizer:
        """Move the normalizer to ``device`` (``auto``, ``cpu``, ``cuda``); returns self."""
        from ..device import resolve_device

        self.device = resolve_device(device)
        return self

    def _stats(self, images: list[np.ndarray]) -> SourceStats:
        tensors = [color.as_tensor(im, self.device) for im in images]
        with torch.inference_mode():
            rgb_px, od_px, note = tissue_pixels(tensors)
            if note:
                return SourceStats(self.name, {}, tissue=False, note=note)
            return SourceStats(self.name, self._estimate(rgb_px, od_px))

    def transform(self, image: Any, source_stats: SourceStats | None = None) -> np.ndarray:
        """Normalize an image (or a (B, H, W, C) batch) to the template: RGB uint8, same size.

        Parameters
        ----------
        image : array
            Anything :func:`napari_histo.core.io.to_rgb_uint8` accepts.
        source_stats : SourceStats, optional
            Fixed statistics of the source (from :meth:`source_stats` on the whole image or a
            coarse level); by default they are estimated on ``image`` itself.
        """
        if self.target is None:
            raise HistoError(f"the {self.name} normalizer has no template yet: fit it first")
        if is_batch(image):
            return np.stack([self.transform(im, source_stats) for im in np.asarray(image)])
        rgb = to_rgb_uint8(np.asarray(image))
        if source_stats is None:
            source_stats = self._stats([rgb])
            if not source_stats.tissue:
                warn_no_tissue(source_stats.note)
        elif source_stats.method != self.name:
            raise HistoError(
                f"statistics of a {source_stats.method} normalizer given to {self.name}"
            )
        if not source_stats.tissue:
            return rgb
        with torch.inference_mode():
            t = color.as_tensor(rgb, self.device)
            if t.shape[0] * t.shape[1] <= BAND_PIXELS:
                return self._apply(t, source_stats.values, self.target.values).cpu().numpy()
            # Every method maps each pixel on its own: bands of rows keep the float
            # temporaries small (and in cache) on large images, with the same pixels.
            out = torch.empty_like(t)
            step = max(1, BAND_PIXELS // t.shape[1])
            for r0 in range(0, t.shape[0], step):
                out[r0 : r0 + step] = self._apply(
                    t[r0 : r0 + step], source_stats.values, self.target.values
                )
            return out.cpu().numpy()

    def __call__(self, image: Any) -> np.ndarray:
        return self.transform(image)

    # -- files
    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": self.name,
            "params": self.params(),
            "template": None if self.target is None else self.target.to_json(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the normalizer (method, settings, template statistics) as JSON, atomically."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")
        return path

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return f"{type(self).__name__}({state}, device={self.device.type})"


# --------------------------------------------------------------------------- Reinhard


class ReinhardNormalizer(StainNormalizer):
    """Reinhard et al. (2001): match the mean and standard deviation of each CIE Lab channel.

    Statistics come from tissue pixels; glass (optical density below the tissue threshold)
    fades out of the transform so the background stays the colour it was.
    """

    name = "reinhard"

    def _estimate(self, rgb_px, od_px):
        lab = color.rgb_to_lab(rgb_px).double()
        return {
            "mean": lab.mean(0).cpu().numpy(),
            "std": lab.std(0, correction=0).cpu().numpy(),
        }

    def _apply(self, rgb, src, tgt):
        dev = rgb.device
        mu_s, mu_t = (
            torch.as_tensor(v, dtype=torch.float32, device=dev) for v in (src["mean"], tgt["mean"])
        )
        sd_s = torch.as_tensor(src["std"], dtype=torch.float32, device=dev).clamp(min=1e-2)
        sd_t = torch.as_tensor(tgt["std"], dtype=torch.float32, device=dev)
        scale = sd_t / sd_s
        lab = color.rgb_to_lab(rgb)
        out = color.lab_to_rgb(lab * scale + (mu_t - mu_s * scale))
        d = color.rgb_to_od(rgb).mean(-1, keepdim=True)
        w = ((d - 0.05) / (color.TISSUE_OD - 0.05)).clamp_(0.0, 1.0)
        out = torch.lerp(rgb.float(), out, w)
        return color.to_uint8(out)


# --------------------------------------------------------------------------- Macenko / Vahadane


class _StainMatrixNormalizer(StainNormalizer):
    """Shared part of Macenko and Vahadane: concentrations, percentile scaling, reconstruction."""

    def _stain_vectors(self, od_px: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _estimate(self, rgb_px, od_px):
        od = od_px.double()
        stains = _order_h_first(self._stain_vectors(od))
        conc = od @ torch.linalg.pinv(stains)
        max_conc = torch.quantile(conc, 0.99, dim=0).clamp(min=1e-3)
        return {"stains": stains.cpu().numpy(), "max_conc": max_conc.cpu().numpy()}

    def _apply(self, rgb, src, tgt):
        dev = rgb.device
        he_s = torch.as_tensor(src["stains"], dtype=torch.float64)
        he_t = torch.as_tensor(tgt["stains"], dtype=torch.float64)
        ratio = torch.as_tensor(tgt["max_conc"]) / torch.as_tensor(src["max_conc"])
        # od_out = od @ pinv(he_s) @ diag(ratio) @ he_t: one 3x3 matrix in OD space.
        m = torch.linalg.pinv(he_s) @ torch.diag(ratio) @ he_t
        return apply_od_matrix(rgb, m.to(torch.float32).to(dev))

    def params(self):
        return {}


def apply_od_matrix(rgb: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """RGB uint8 ``(..., 3)`` whose OD row vectors are mapped by ``od @ m``, back to uint8.

    ``exp(-od @ m)`` factorizes over input channels, so three 256-entry tables per output
    channel replace a log, a matrix product and an exp per pixel.
    """
    od = color._od_lut(rgb.device)  # (256,)
    lut = torch.exp(-od[None, :, None] * m[:, None, :])  # (3 in, 256, 3 out)
    lut[0] *= 256.0
    if rgb.device.type == "cpu":
        # numpy gathers rows with the uint8 values as indices (no int64 copy): ~2.5x faster.
        tables, px = lut.numpy(), rgb.reshape(-1, 3).numpy()
        prod = np.take(tables[0], px[:, 0], axis=0)
        prod *= np.take(tables[1], px[:, 1], axis=0)
        prod *= np.take(tables[2], px[:, 2], axis=0)
        prod -= 1.0
        return color.to_uint8(torch.from_numpy(prod)).reshape(rgb.shape)
    flat = rgb.reshape(-1, 3).long()
    out = torch.index_select(lut[0], 0, flat[:, 0])
    out.mul_(torch.index_select(lut[1], 0, flat[:, 1]))
    out.mul_(torch.index_select(lut[2], 0, flat[:, 2])).sub_(1.0)
    return color.to_uint8(out).reshape(rgb.shape)


def _order_h_first(stains: torch.Tensor) -> torch.Tensor:
    """Unit-norm rows, haematoxylin (the larger red optical density) first."""
    stains = stains / torch.linalg.vector_norm(stains, dim=1, keepdim=True).clamp(min=1e-12)
    if stains[0, 0] < stains[1, 0]:
        stains = stains.flip(0)
    return stains


class MacenkoNormalizer(_StainMatrixNormalizer):
    """Macenko et al. (2009): stain vectors at the extreme angles of OD in its principal plane.

    Parameters
    ----------
    alpha : float
        Percentile (and 100 - alpha) of the angles taken as the two stains (default 1).
    """

    name = "macenko"

    def __init__(self, device: str | torch.device = "auto", alpha: float = 1.0):
        super().__init__(device)
        self.alpha = float(alpha)

    def params(self):
        return {"alpha": self.alpha}

    def _stain_vectors(self, od):
        return macenko_stains(od, self.alpha)


def macenko_stains(od: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """The two stain vectors (2, 3) of tissue OD pixels (N, 3) by Macenko's method."""
    _, vecs = torch.linalg.eigh(torch.cov(od.T))
    plane = vecs[:, [2, 1]]  # the two largest eigenvalues
    if plane[:, 0].sum() < 0:
        plane[:, 0] = -plane[:, 0]
    proj = od @ plane
    phi = torch.atan2(proj[:, 1], proj[:, 0])
    lo, hi = torch.quantile(
        phi, torch.tensor([alpha / 100, 1 - alpha / 100], dtype=phi.dtype, device=phi.device)
    )
    v1 = plane @ torch.stack((torch.cos(lo), torch.sin(lo)))
    v2 = plane @ torch.stack((torch.cos(hi), torch.sin(hi)))
    stains = torch.stack((v1, v2))
    # Stains absorb: a vector pointing into negative OD is the same direction reversed.
    signs = torch.where(stains.sum(1, keepdim=True) < 0, -1.0, 1.0).to(stains)
    return stains * signs


class VahadaneNormalizer(_StainMatrixNormalizer):
    """Vahadane et al. (2016): sparse non-negative factorization of OD into two stains.

    ``OD (N, 3) ~ C (N, 2) @ W (2, 3)`` with ``C >= 0`` sparse (L1 weight ``lam``) and
    ``W >= 0`` with unit rows, solved by alternating ISTA on ``C`` and block-coordinate descent
    on ``W`` (the dictionary update of Mairal et al., as SPAMS does), started from Macenko's
    estimate. Concentrations for the transform are least squares, as in TIAToolbox.

    Parameters
    ----------
    lam : float
        Sparsity weight (default 0.1, as in the paper's reference code).
    iterations : int
        Alternating rounds (default 60).
    """

    name = "vahadane"

    def __init__(self, device: str | torch.device = "auto", lam: float = 0.1, iterations: int = 60):
        super().__init__(device)
        self.lam = float(lam)
        self.iterations = int(iterations)

    def params(self):
        return {"lam": self.lam, "iterations": self.iterations}

    def _stain_vectors(self, od):
        return vahadane_stains(od, self.lam, self.iterations)


def vahadane_stains(
    od: torch.Tensor, lam: float = 0.1, iterations: int = 60, max_pixels: int = 2**14
) -> torch.Tensor:
    """Sparse non-negative dictionary learning of two stain vectors (2, 3) from OD (N, 3)."""
    step = max(1, -(-od.shape[0] // max_pixels))
    x = od[::step].float().T.contiguous()  # (3, N): row-major work on long rows is faster
    w = _order_h_first(macenko_stains(x.T.double()).clamp(min=0) + 1e-6).float()
    c = torch.zeros(2, x.shape[1], device=x.device)
    for _ in range(iterations):
        # Sparse coding: ISTA with a non-negative soft threshold, c <- max(0, c - (G c - W x + lam) / L).
        gram = w @ w.T
        lip = float(torch.linalg.eigvalsh(gram)[-1].clamp(min=1e-9))
        offset = (w @ x - lam) / lip
        g = gram / lip
        for _ in range(10):
            c = torch.addmm(offset, g, c, alpha=-1.0).add_(c).clamp_(min=0)
        # Dictionary update: one block-coordinate pass, W >= 0, rows inside the unit ball.
        a = c @ c.T
        b = c @ x.T
        for k in range(2):
            if a[k, k] < 1e-9:
                continue
            wk = (w[k] + (b[k] - a[k] @ w) / a[k, k]).clamp(min=0)
            w[k] = wk / torch.linalg.vector_norm(wk).clamp(min=1.0)
    return w.to(od.dtype)


# --------------------------------------------------------------------------- registry helpers

CLASSICAL = {
    "reinhard": ReinhardNormalizer,
    "macenko": MacenkoNormalizer,
    "vahadane": VahadaneNormalizer,
}


def from_json(
    d: dict, device: str | torch.device = "auto", source: str = "file"
) -> StainNormalizer:
    """A classical normalizer from the dict its :meth:`~StainNormalizer.to_json` wrote."""
    method = d.get("method")
    if method not in CLASSICAL:
        raise HistoError(f"{source}: unknown stain normalization method {method!r}")
    params = d.get("params") or {}
    try:
        norm = CLASSICAL[method](device=device, **params)
        if d.get("template") is not None:
            norm.target = SourceStats.from_json(d["template"])
    except (TypeError, KeyError, ValueError) as exc:
        raise HistoError(f"{source}: a damaged {method} normalizer file ({exc})") from None
    return norm


__all__ = [
    "CLASSICAL",
    "MacenkoNormalizer",
    "ReinhardNormalizer",
    "SourceStats",
    "StainNormalizer",
    "VahadaneNormalizer",
    "apply_od_matrix",
    "macenko_stains",
    "vahadane_stains",
]
