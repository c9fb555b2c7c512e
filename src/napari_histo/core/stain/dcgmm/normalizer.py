"""The fitted DCGMM as a stain normalizer: class maps, per-class statistics, colour transform."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ... import color, weights
from ...atomic import atomic_write_text
from ...errors import HistoError
from ...io import to_rgb_uint8
from ...weights import WEIGHTS_FILE
from ..classical import (
    SourceStats,
    TemplateStats,
    as_image_list,
    is_batch,
    tissue_pixels,
    warn_no_tissue,
)
from .model import (
    DCGMM,
    FORMAT,
    FORMAT_VERSION,
    MIN_CLASS_MASS,
    _pad_to,
    class_names_for,
    fast_dtype,
)

#: Network input tiles (at network resolution) and their context on each side. The network sees
#: 13-16 px around a pixel (halo 12 changes logits by up to 4.5, halo 16 by float rounding only:
#: tests/core/test_stain.py), so 16 (a multiple of the 4 its two poolings need) tiles exactly;
#: 32 spent 12 % more network time on context. Tiles of 384 ran 3.5-3.7 full-resolution Mpx/s
#: on 2 CPU threads, 512 3.4-3.5, 256 3.3 (a 3000 x 6000 H&E crop, quiet machine).
NET_TILE = 384
NET_HALO = 16
#: Full-resolution pixels handled at once in the colour transform.
BAND_PIXELS = 2**21
#: Class statistics of an image larger than BAND_PIXELS come from every STATS_STRIDE-th row and
#: column (still 9 Mpx of a 6000² image): that saves most of the statistics pass (about 0.8 s of
#: 18 s end to end at 6000²), and 6.7 % of the output values move by one grey level, none by more.
STATS_STRIDE = 2


class DCGMMNormalizer(TemplateStats):
    """A fitted DCGMM used as a stain normalizer (``fit`` a template, ``transform`` images).

    Attributes
    ----------
    model : DCGMM
        The network (eval mode) on ``device``.
    class_names : tuple of str
        One name per class, ordered by density (``background`` ... ``nuclei``).
    card : dict
        Where the weights come from: data, licence, training settings, final loss.
    target : SourceStats or None
        The template's per-class statistics after :meth:`fit`.
    """

    name = "dcgmm"

    def __init__(
        self,
        model: DCGMM,
        device: str | torch.device = "auto",
        card: dict | None = None,
        class_names: Sequence[str] | None = None,
        precision: str = "auto",
    ):
        from ...device import resolve_device

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.card = dict(card or {})
        names = tuple(class_names) if class_names else class_names_for(model.classes)
        if len(names) != model.classes:
            names = class_names_for(model.classes)
        self.class_names = names
        self.target: SourceStats | None = None
        self.source_path: Path | None = None
        self.precision = precision
        self._place()

    def _place(self) -> None:
        self.model.to(self.device)
        if self.device.type == "cpu":
            self.model.to(memory_format=torch.channels_last)
        self.model.amp_dtype = fast_dtype(self.device, self.precision)

    @property
    def classes(self) -> int:
        return self.model.classes

    @property
    def fitted(self) -> bool:
        return self.target is not None

    def to(self, device: str | torch.device) -> DCGMMNormalizer:
        """Move to ``device``; returns self."""
        from ...device import resolve_device

        self.device = resolve_device(device)
        self._place()
        return self

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return f"DCGMMNormalizer(classes={self.class_names}, {state}, device={self.device.type})"

    # ---------------------------------------------------------------- network passes
    def _low_logits(self, rgb: torch.Tensor) -> torch.Tensor:
        """Class logits (K, h, w) at network resolution of an RGB uint8 image (H, W, 3)."""
        low = self._low_density(rgb)
        h, w = low.shape[-2:]

        def run(x: torch.Tensor) -> torch.Tensor:
            return self.model.run_net(x)[0].contiguous()

        if h * w <= (NET_TILE + 2 * NET_HALO) ** 2:
            return run(low)
        out = torch.empty((self.classes, h, w), dtype=low.dtype, device=low.device)
        for y0 in range(0, h, NET_TILE):
            for x0 in range(0, w, NET_TILE):
                ya, xa = max(0, y0 - NET_HALO), max(0, x0 - NET_HALO)
                yb, xb = min(h, y0 + NET_TILE + NET_HALO), min(w, x0 + NET_TILE + NET_HALO)
                res = run(low[..., ya:yb, xa:xb])
                y1, x1 = min(h, y0 + NET_TILE), min(w, x0 + NET_TILE)
                out[:, y0:y1, x0:x1] = res[:, y0 - ya : y1 - ya, x0 - xa : x1 - xa]
        return out

    def _low_density(self, rgb: torch.Tensor) -> torch.Tensor:
        """Mean optical density (1, 1, h, w) at network resolution, padded to the multiple.

        Made in bands of rows (each a multiple of the scale), so a large image never holds a
        full-resolution float copy; the values are those of the one-piece computation.
        """
        hgt, wid = rgb.shape[:2]
        s, m = self.model.scale, self.model.multiple
        hp, wp = -(-hgt // m) * m, -(-wid // m) * m
        low = torch.empty((1, 1, hp // s, wp // s), dtype=torch.float32, device=rgb.device)
        step = max(s, (BAND_PIXELS // max(wid, 1)) // s * s)
        for r0 in range(0, hp, step):
            r1 = min(hp, r0 + step)
            d = color.rgb_to_od(rgb[r0 : min(r1, hgt)]).mean(-1)
            if r1 > hgt:  # bottom padding: replicate the last row
                d = torch.cat((d, d[-1:].expand(r1 - hgt, wid)))
            d = d[None, None]
            if wp > wid:
                d = F.pad(d, (0, wp - wid, 0, 0), mode="replicate")
            low[..., r0 // s : r1 // s, :] = F.avg_pool2d(d, s) if s > 1 else d
        return low

    def _bands(self, rgb: torch.Tensor, low: torch.Tensor, hsd: bool = True, stride: int = 1):
        """Yield ``(rows, HSD band (h, W, 3) or None, gamma band (K, h, W))`` at full resolution.

        Gamma stays class-first: a softmax over a short last axis is several times slower.
        ``stride`` > 1 keeps every stride-th row and column of each band (for statistics).
        """
        hgt, wid = rgb.shape[:2]
        s = self.model.scale
        step = max(s, (BAND_PIXELS // max(wid, 1)) // s * s)
        step = -(-step // stride) * stride  # bands start on kept rows
        for r0 in range(0, hgt, step):
            r1 = min(hgt, r0 + step)
            if s > 1:
                a = max(0, r0 // s - 1)
                b = min(low.shape[1], -(-r1 // s) + 1)
                up = F.interpolate(
                    low[None, :, a:b], scale_factor=s, mode="bilinear", align_corners=False
                )[0]
                logits = up[:, r0 - a * s : r1 - a * s, :wid]
            else:
                logits = low[:, r0:r1, :wid]
            if stride > 1:
                logits = logits[:, ::stride, ::stride]
            gamma = torch.softmax(logits, dim=0)
            x = color.rgb_to_hsd(rgb[r0:r1:stride, ::stride]) if hsd else None
            yield slice(r0, r1), x, gamma

    def _stats_bands(self, rgb: torch.Tensor, low: torch.Tensor):
        """The bands the class statistics are summed over: strided on large images."""
        big = rgb.shape[0] * rgb.shape[1] > BAND_PIXELS
        return self._bands(rgb, low, stride=STATS_STRIDE if big else 1)

    def _sums(self, bands) -> np.ndarray:
        """Sufficient statistics (K, 7): mass, sum of x (3), sum of x^2 (3), float64."""
        k = self.classes
        acc = None
        for _, x, gamma in bands:
            x = x.reshape(-1, 3)
            g = gamma.reshape(k, -1)
            part = torch.cat((g.sum(1)[:, None], g @ x, g @ (x * x)), dim=1).double()
            acc = part if acc is None else acc + part
        return acc.cpu().numpy()

    def _class_sums(self, rgb: torch.Tensor) -> np.ndarray:
        return self._sums(self._stats_bands(rgb, self._low_logits(rgb)))

    def _stats(self, images: list[np.ndarray]) -> SourceStats:
        tensors = [color.as_tensor(im, self.device) for im in images]
        with torch.inference_mode():
            _, _, note = tissue_pixels(tensors)
            if note:
                return SourceStats(self.name, {}, tissue=False, note=note)
            sums = sum(self._class_sums(t) for t in tensors)
        return stats_from_sums(sums)

    # ---------------------------------------------------------------- public API
    def class_probabilities(self, image: Any) -> np.ndarray:
        """Per-pixel class probabilities gamma (H, W, K) float32, classes as :attr:`class_names`."""
        rgb = to_rgb_uint8(np.asarray(image))
        with torch.inference_mode():
            t = color.as_tensor(rgb, self.device)
            low = self._low_logits(t)
            out = np.empty((*rgb.shape[:2], self.classes), np.float32)
            for rows, _, gamma in self._bands(t, low, hsd=False):
                out[rows] = gamma.permute(1, 2, 0).cpu().numpy()
        return out

    def class_map(self, image: Any) -> np.ndarray:
        """Most likely class per pixel (H, W) uint8."""
        return np.argmax(self.class_probabilities(image), axis=-1).astype(np.uint8)

    def transform(self, image: Any, source_stats: SourceStats | None = None) -> np.ndarray:
        """Normalize an image (or a (B, H, W, C) batch) to the template: RGB uint8, same size.

        With ``source_stats`` (from :meth:`source_stats`), the class statistics are fixed and
        only gamma comes from ``image``: a large image is normalized chunk by chunk.
        """
        if self.target is None:
            raise HistoError("the DCGMM normalizer has no template yet: fit it first")
        if is_batch(image):
            return np.stack([self.transform(im, source_stats) for im in np.asarray(image)])
        rgb = to_rgb_uint8(np.asarray(image))
        with torch.inference_mode():
            t = color.as_tensor(rgb, self.device)
            if source_stats is None:
                _, _, note = tissue_pixels([t])
                if note:
                    warn_no_tissue(note)
                    return rgb
                low = self._low_logits(t)
                if t.shape[0] * t.shape[1] <= BAND_PIXELS:
                    bands = list(self._bands(t, low))  # small: one pass for stats and colours
                    source_stats = stats_from_sums(self._sums(bands))
                else:
                    source_stats = stats_from_sums(self._sums(self._stats_bands(t, low)))
                    bands = self._bands(t, low)
            else:
                if source_stats.method != self.name:
                    raise HistoError(
                        f"statistics of a {source_stats.method} normalizer given to dcgmm"
                    )
                if not source_stats.tissue:
                    return rgb
                bands = self._bands(t, self._low_logits(t))
            a, b = self._class_maps(source_stats)
            # Valid HSD: no negative density, chroma inside the triangle's cx range (as the
            # reference code), |cy| <= sqrt(3).
            lo = torch.tensor([0.0, -1.0, -math.sqrt(3)], device=t.device)
            hi = torch.tensor([math.inf, 2.0, math.sqrt(3)], device=t.device)
            out = torch.empty_like(t)
            for rows, x, gamma in bands:
                g = gamma.reshape(self.classes, -1).T  # (N, K) view: matmul reads it transposed
                x = x.reshape(-1, 3)
                y = torch.addcmul(g @ b, x, g @ a).clamp_(lo, hi)
                out[rows] = color.to_uint8(color.hsd_to_rgb(y)).reshape(
                    x.shape[0] // out.shape[1], -1, 3
                )
            return out.cpu().numpy()

    def __call__(self, image: Any) -> np.ndarray:
        return self.transform(image)

    def _class_maps(self, src: SourceStats) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class affine maps ``x * a + b`` (K, 3) from source to template statistics."""
        tgt = self.target.values
        s = src.values
        a = tgt["std"] / np.maximum(s["std"], 1e-3)
        b = tgt["mean"] - a * s["mean"]
        w_s = s["weight"] / max(s["weight"].sum(), 1e-12)
        w_t = tgt["weight"] / max(tgt["weight"].sum(), 1e-12)
        keep = (w_s >= MIN_CLASS_MASS) & (w_t >= MIN_CLASS_MASS)
        a[~keep], b[~keep] = 1.0, 0.0
        dev = self.device
        return (
            torch.as_tensor(a, dtype=torch.float32, device=dev),
            torch.as_tensor(b, dtype=torch.float32, device=dev),
        )

    def loss(self, images: Any) -> float:
        """Mixture NLL per pixel of whole images (each image its own M-step); for checks."""
        vals, weights = [], []
        with torch.inference_mode():
            for im in as_image_list(images):
                t = color.as_tensor(im, self.device).permute(2, 0, 1)[None]
                t = _pad_to(t.float(), self.model.multiple)
                hsd = color.rgb_to_hsd(t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
                vals.append(float(self.model(hsd)[-1]))
                weights.append(im.shape[0] * im.shape[1])
        return float(np.average(vals, weights=weights))

    # ---------------------------------------------------------------- files
    def _tensors_and_meta(self) -> tuple[dict, dict]:
        tensors = {
            f"net.{k}": v.detach().cpu().contiguous()
            for k, v in self.model.net.state_dict().items()
        }
        if self.target is not None:
            for key in ("weight", "mean", "std"):
                tensors[f"template.{key}"] = torch.tensor(
                    np.ascontiguousarray(self.target.values[key]), dtype=torch.float64
                )
        meta = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "classes": str(self.classes),
            "scale": str(self.model.scale),
            "d_min": str(color.D_MIN),
            "class_names": json.dumps(list(self.class_names)),
        }
        return tensors, meta

    def card_json(self, weights_name: str) -> dict:
        """The JSON card written beside the weights (loadable: it names its weights file)."""
        card = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": self.name,
            "weights": weights_name,
            "classes": self.classes,
            "class_names": list(self.class_names),
            "scale": self.model.scale,
            "architecture": "DCGMM E-step FCN on D: conv 32-64-pool-64-128-pool-128-up-128-up-64-32(1x1)-K",
            "template": None if self.target is None else self.target.to_json(),
        }
        card.update({k: v for k, v in self.card.items() if k not in card})
        return card

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<stem>.safetensors`` (weights + template statistics) and ``<stem>.json``.

        ``path`` may end in ``.safetensors`` or ``.json``; both files are written (each
        atomically) and either one loads with :func:`napari_histo.core.stain.load_normalizer`.
        Returns the weights path.
        """
        p = Path(path)
        wpath = p if p.suffix.lower() == ".safetensors" else p.with_suffix(".safetensors")
        card = p if p.suffix.lower() == ".json" else wpath.with_suffix(".json")
        weights.write_safetensors(wpath, *self._tensors_and_meta())
        atomic_write_text(card, json.dumps(self.card_json(wpath.name), indent=2) + "\n")
        return wpath

    def save_folder(self, folder: str | os.PathLike) -> Path:
        """Write a model folder: ``weights.safetensors``, ``card.json`` and ``card.md``."""
        folder = Path(folder)
        weights.write_safetensors(folder / WEIGHTS_FILE, *self._tensors_and_meta())
        weights.write_card(folder, self.card_json(WEIGHTS_FILE))
        return folder


def stats_from_sums(sums: np.ndarray) -> SourceStats:
    """Per-class weight, mean and std from sufficient statistics (K, 7)."""
    sums = np.asarray(sums, np.float64)
    mass = sums[:, 0].copy()
    denom = np.maximum(mass, 1e-9)[:, None]
    mean = sums[:, 1:4] / denom
    var = np.maximum(sums[:, 4:7] / denom - mean**2, 0.0)
    return SourceStats("dcgmm", {"weight": mass, "mean": mean, "std": np.sqrt(var + 1e-8)})
