"""DCGMM: stain-colour normalization with a deep convolutional Gaussian mixture model.

Zanjani, Zinger, Bejnordi, van der Laak, de With, "Histopathology Stain-Color Normalization
Using Deep Generative Models", MIDL 2018. The model, as in the paper and its reference code:

* RGB -> optical density -> HSD: density ``D`` and chroma ``(cx, cy)``
  (:mod:`napari_histo.core.color`).
* E-step by a network: a fully convolutional net on the ``D`` channel only (9 convolutions,
  32-64-[pool]-64-128-[pool]-128-[up]-128-[up]-64-32-K, ReLU) gives per-pixel class
  probabilities ``gamma = softmax(logits)`` over K tissue classes.
* M-step inside the forward pass: every class's gamma-weighted mean and standard deviation of
  ``(D, cx, cy)`` per image make a diagonal Gaussian; the loss is the mixture negative
  log-likelihood ``-mean log sum_k gamma_k N(x | mu_k, sigma_k)``, minimized with Adam,
  unsupervised, on random crops of any number and size of images.
* Transform: each class's pixels are z-scored with the image's class statistics and mapped
  onto the template's, ``sigma_t (x - mu) / sigma + mu_t``, weighted by gamma and summed;
  back to RGB, clipped. Template statistics pool every template image or region.

Unlike the reference code: batches of any size (the M-step is per image), a proper mixture
log-likelihood (no clipping of densities at 1; a small variance floor instead), one number of
classes everywhere (``classes``, default 3), and classes ordered by mean density after fitting
and named (index 0 = background, the lowest density; last = nuclei, the highest).

One addition for speed: the network sees the density at ``1 / scale`` resolution (default 2,
so a 40x tile is seen at 20x, where the net's receptive field covers a nucleus) and its logits
are upsampled bilinearly; statistics and the colour transform use every full-resolution pixel.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import color, weights
from ..atomic import atomic_write_text
from ..errors import HistoError
from ..io import to_rgb_uint8
from ..progress import Progress
from ..weights import WEIGHTS_FILE
from .classical import SourceStats, as_image_list, is_batch, tissue_pixels, warn_no_tissue

FORMAT = "napari-histo-dcgmm"
FORMAT_VERSION = 1
DEFAULT_MODEL = "dcgmm_default"
CARD_FILE = "card.json"

#: Height and width the network needs (two 2x poolings).
NET_MULTIPLE = 4
#: Variance floor of every Gaussian (keeps the likelihood bounded on flat regions).
VAR_FLOOR = 1e-4
#: Network input tiles (at network resolution) and their context on each side.
NET_TILE = 512
NET_HALO = 32
#: Full-resolution pixels handled at once in the colour transform.
BAND_PIXELS = 2**21
#: A class holding less than this fraction of an image's pixels is left as it is.
MIN_CLASS_MASS = 1e-3


def class_names_for(k: int) -> tuple[str, ...]:
    """Names of K classes ordered by density (index 0 = lowest)."""
    if k == 1:
        return ("tissue",)
    if k == 2:
        return ("background", "tissue")
    if k == 3:
        return ("background", "surrounding tissue", "nuclei")
    return ("background", *(f"tissue {i}" for i in range(1, k - 1)), "nuclei")


# --------------------------------------------------------------------------- network


class DCGMMNet(nn.Module):
    """The E-step network: density (B, 1, H, W) -> class logits (B, K, H, W).

    H and W must be multiples of :data:`NET_MULTIPLE`.
    """

    def __init__(self, classes: int = 3):
        super().__init__()

        def conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, k, padding=k // 2)

        self.conv1, self.conv2 = conv(1, 32), conv(32, 64)
        self.conv3, self.conv4 = conv(64, 64), conv(64, 128)
        self.conv5 = conv(128, 128)
        self.conv6, self.conv7 = conv(128, 128), conv(128, 64)
        self.conv8, self.conv9 = conv(64, 32, 1), conv(32, classes)

    @property
    def classes(self) -> int:
        return self.conv9.out_channels

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        def act(x: torch.Tensor) -> torch.Tensor:
            return F.relu(x, inplace=True)  # in place: a convolution's output is not kept

        x = act(self.conv2(act(self.conv1(d))))
        x = F.max_pool2d(x, 2)
        x = act(self.conv4(act(self.conv3(x))))
        x = F.max_pool2d(x, 2)
        x = act(self.conv5(x))
        x = act(self.conv6(F.interpolate(x, scale_factor=2, mode="nearest")))
        x = act(self.conv7(F.interpolate(x, scale_factor=2, mode="nearest")))
        return self.conv9(act(self.conv8(x)))


class DCGMM(nn.Module):
    """Network + M-step: HSD images (B, 3, H, W) -> (log gamma, means, variances, loss).

    Parameters
    ----------
    classes : int
        Number of Gaussian components K (default 3).
    scale : int
        The network sees the density downsampled by this factor (default 2).
    """

    def __init__(self, classes: int = 3, scale: int = 2):
        super().__init__()
        if classes < 1 or scale < 1:
            raise HistoError(f"DCGMM needs classes >= 1 and scale >= 1 (got {classes}, {scale})")
        self.net = DCGMMNet(classes)
        self.scale = int(scale)
        #: Mixed precision of the convolutions (None: float32); see :func:`fast_dtype`.
        self.amp_dtype: torch.dtype | None = None

    @property
    def classes(self) -> int:
        return self.net.classes

    @property
    def multiple(self) -> int:
        """Full-resolution height and width must be multiples of this."""
        return NET_MULTIPLE * self.scale

    def run_net(self, low: torch.Tensor) -> torch.Tensor:
        """The network on a density batch at network resolution; float32 logits."""
        if low.device.type == "cpu":
            low = low.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is None:
            return self.net(low)
        with torch.autocast(low.device.type, dtype=self.amp_dtype):
            out = self.net(low)
        return out.float()

    def logits(self, d: torch.Tensor) -> torch.Tensor:
        """Full-resolution class logits of a density batch (B, 1, H, W), H, W multiples."""
        low = F.avg_pool2d(d, self.scale) if self.scale > 1 else d
        out = self.run_net(low)
        if self.scale > 1:
            out = F.interpolate(out, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return out

    def forward(self, hsd: torch.Tensor):
        log_gamma = torch.log_softmax(self.logits(hsd[:, :1]), dim=1)
        _, mean, var = mixture_stats(hsd, log_gamma.exp())
        return log_gamma, mean, var, mixture_nll(hsd, log_gamma, mean, var)


def fast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """bfloat16 for the convolutions where the hardware runs it natively, else None (float32).

    The policy is :func:`~napari_histo.core.device.amp_dtype`'s, except that a GPU without
    bfloat16 stays in float32 (the mixture statistics need its range). The M-step, the loss
    and the colour transform always run in float32.
    """
    from ..device import amp_dtype

    dtype = amp_dtype(device, precision)
    return None if dtype == torch.float16 else dtype


def mixture_stats(x: torch.Tensor, gamma: torch.Tensor, floor: float = VAR_FLOOR):
    """The M-step per image: class masses (B, K), means and variances (B, K, 3).

    ``x`` is (B, 3, H, W), ``gamma`` (B, K, H, W).
    """
    mass = gamma.sum((2, 3))
    denom = mass.clamp(min=1e-6)[..., None]
    mean = torch.einsum("bkhw,bchw->bkc", gamma, x) / denom
    diff = x[:, None] - mean[..., None, None]
    var = torch.einsum("bkhw,bkchw->bkc", gamma, diff * diff) / denom
    return mass, mean, var + floor


def mixture_nll(x: torch.Tensor, log_gamma: torch.Tensor, mean: torch.Tensor, var: torch.Tensor):
    """Mean negative log-likelihood per pixel of ``x`` under the per-pixel mixture."""
    diff = x[:, None] - mean[..., None, None]  # (B, K, 3, H, W)
    maha = (diff * diff / var[..., None, None]).sum(2)
    log_norm = var.log().sum(2)[..., None, None] + 3.0 * math.log(2.0 * math.pi)
    log_p = torch.logsumexp(log_gamma - 0.5 * (maha + log_norm), dim=1)
    return -log_p.mean()


def _pad_to(x: torch.Tensor, multiple: int, min_size: int = 0) -> torch.Tensor:
    """Pad (B, C, H, W) on the bottom/right by edge replication to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    hp = max(-(-h // multiple) * multiple, min_size)
    wp = max(-(-w // multiple) * multiple, min_size)
    if (hp, wp) == (h, w):
        return x
    return F.pad(x, (0, wp - w, 0, hp - h), mode="replicate")


# --------------------------------------------------------------------------- normalizer


class DCGMMNormalizer:
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
        from ..device import resolve_device

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
        from ..device import resolve_device

        self.device = resolve_device(device)
        self._place()
        return self

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return f"DCGMMNormalizer(classes={self.class_names}, {state}, device={self.device.type})"

    # ---------------------------------------------------------------- network passes
    def _low_logits(self, rgb: torch.Tensor) -> torch.Tensor:
        """Class logits (K, h, w) at network resolution of an RGB uint8 image (H, W, 3)."""
        d = color.rgb_to_od(rgb).mean(-1)[None, None]
        d = _pad_to(d, self.model.multiple)
        s = self.model.scale
        low = F.avg_pool2d(d, s) if s > 1 else d
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

    def _bands(self, rgb: torch.Tensor, low: torch.Tensor, hsd: bool = True):
        """Yield ``(rows, HSD band (h, W, 3) or None, gamma band (K, h, W))`` at full resolution.

        Gamma stays class-first: a softmax over a short last axis is several times slower.
        """
        hgt, wid = rgb.shape[:2]
        s = self.model.scale
        step = max(s, (BAND_PIXELS // max(wid, 1)) // s * s)
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
            gamma = torch.softmax(logits, dim=0)
            x = color.rgb_to_hsd(rgb[r0:r1]) if hsd else None
            yield slice(r0, r1), x, gamma

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
        return self._sums(self._bands(rgb, self._low_logits(rgb)))

    def _stats(self, images: list[np.ndarray]) -> SourceStats:
        tensors = [color.as_tensor(im, self.device) for im in images]
        with torch.inference_mode():
            _, _, note = tissue_pixels(tensors)
            if note:
                return SourceStats(self.name, {}, tissue=False, note=note)
            sums = sum(self._class_sums(t) for t in tensors)
        return stats_from_sums(sums)

    # ---------------------------------------------------------------- public API
    def fit(self, template: Any) -> DCGMMNormalizer:
        """Per-class statistics of the template (images or regions in a list are pooled).

        Raises
        ------
        HistoError
            When the template has too little coloured tissue.
        """
        stats = self._stats(as_image_list(template))
        if not stats.tissue:
            raise HistoError(f"template: {stats.note}; choose a template with stained tissue")
        self.target = stats
        return self

    def source_stats(self, image: Any) -> SourceStats:
        """Per-class statistics of a source image (e.g. a coarse level of a slide)."""
        stats = self._stats(as_image_list(image))
        if not stats.tissue:
            warn_no_tissue(stats.note, "the image is left unchanged")
        return stats

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
                bands = self._bands(t, low)
                if t.shape[0] * t.shape[1] <= BAND_PIXELS:
                    bands = list(bands)  # small enough to keep: one pass instead of two
                source_stats = stats_from_sums(self._sums(bands))
                if not isinstance(bands, list):
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


# --------------------------------------------------------------------------- files


def _read_card(wfile: Path) -> dict:
    candidates = [wfile.parent / CARD_FILE] if wfile.name == WEIGHTS_FILE else []
    candidates.append(wfile.with_suffix(".json"))
    for c in candidates:
        if c.is_file():
            try:
                card = json.loads(c.read_text("utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(card, dict) and card.get("format") == FORMAT:
                return card
    return {}


def default_model_path() -> Path:
    """The shipped model's weights file."""
    from ..resources import resource_path

    return resource_path("stain", DEFAULT_MODEL, WEIGHTS_FILE)


def load_dcgmm(path: str | os.PathLike | None = None, device: str = "auto") -> DCGMMNormalizer:
    """Load a DCGMM from its safetensors file (default: the shipped ``dcgmm_default``).

    Raises
    ------
    HistoError
        Missing file, or a file that is not a napari-histo DCGMM (one line, names the file).
    """
    from ..device import resolve_device

    device = resolve_device(device)  # a bad device name is the first thing to report
    p = default_model_path() if path is None else Path(path)
    if p.is_dir():
        p = p / WEIGHTS_FILE
    if not p.is_file():
        if path is None:
            raise HistoError(
                f"the shipped DCGMM ({p}) is missing; reinstall napari-histo or run "
                "scripts/fit_dcgmm_default.py"
            )
        raise HistoError(f"{p}: no such file")
    tensors, meta = weights.read_safetensors(p, FORMAT, "DCGMM normalizer")
    try:
        classes, scale = int(meta["classes"]), int(meta["scale"])
        names = json.loads(meta.get("class_names", "[]"))
    except (KeyError, ValueError):
        raise HistoError(f"{p.name}: the DCGMM settings are missing from its metadata") from None
    model = DCGMM(classes, scale)
    try:
        net_state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        model.net.load_state_dict(net_state, strict=True)
    except RuntimeError:
        raise HistoError(
            f"{p.name}: its weights do not fit a DCGMM with {classes} classes"
        ) from None
    card = _read_card(p)
    card = {k: v for k, v in card.items() if k not in ("template", "weights")}
    norm = DCGMMNormalizer(model, device=device, card=card, class_names=names)
    if "template.mean" in tensors:
        norm.target = SourceStats(
            "dcgmm",
            {
                k: tensors[f"template.{k}"].double().numpy().copy()
                for k in ("weight", "mean", "std")
            },
        )
    norm.source_path = p
    return norm


# --------------------------------------------------------------------------- fitting


def _random_crops(
    images: list[torch.Tensor], n: int, crop: int, rng: np.random.Generator
) -> torch.Tensor:
    """``n`` random crops (n, crop, crop, 3), each from a random image, randomly flipped/turned."""
    out = []
    for _ in range(n):
        im = images[int(rng.integers(len(images)))]
        y = int(rng.integers(im.shape[0] - crop + 1))
        x = int(rng.integers(im.shape[1] - crop + 1))
        c = im[y : y + crop, x : x + crop]
        if rng.random() < 0.5:
            c = c.flip(0)
        if rng.random() < 0.5:
            c = c.flip(1)
        c = torch.rot90(c, int(rng.integers(4)), dims=(0, 1))
        out.append(c)
    return torch.stack(out)


def _order_by_density(model: DCGMM, images: list[torch.Tensor], crop: int) -> np.ndarray:
    """Permute the last layer so classes run from lowest to highest mean density; returns it."""
    k = model.classes
    mass = np.zeros(k)
    dsum = np.zeros(k)
    with torch.inference_mode():
        for im in images[:16]:
            h, w = im.shape[:2]
            side = min(2 * crop, h, w) // model.multiple * model.multiple
            y, x = (h - side) // 2, (w - side) // 2
            c = im[y : y + side, x : x + side][None]
            hsd = color.rgb_to_hsd(c).permute(0, 3, 1, 2).contiguous()
            gamma = torch.softmax(model.logits(hsd[:, :1]), dim=1)
            mass += gamma.sum((0, 2, 3)).double().cpu().numpy()
            dsum += (gamma * hsd[:, :1]).sum((0, 2, 3)).double().cpu().numpy()
    mean_d = np.where(mass > 1e-6, dsum / np.maximum(mass, 1e-12), -1.0)
    order = np.argsort(mean_d, kind="stable")
    with torch.no_grad():
        conv = model.net.conv9
        idx = torch.as_tensor(order, device=conv.weight.device)
        conv.weight.copy_(conv.weight[idx].clone())
        conv.bias.copy_(conv.bias[idx].clone())
    return mean_d[order]


def _start_model(start: Any, classes: int, scale: int, seed: int) -> tuple[DCGMM, dict]:
    """The network to start from: the shipped one, a given normalizer's, or a new one."""
    if isinstance(start, DCGMMNormalizer):
        base = start
    elif start == "shipped":
        try:
            base = load_dcgmm(device="cpu")
        except HistoError:
            base = None
    elif start is None:
        base = None
    else:
        base = load_dcgmm(start, device="cpu")
    if base is not None and base.classes == classes and base.model.scale == scale:
        model = DCGMM(classes, scale)
        model.net.load_state_dict(
            {k: v.detach().cpu().clone() for k, v in base.model.net.state_dict().items()}
        )
        info = {"started_from": base.card.get("name", "a saved DCGMM")}
        if base.card.get("license"):
            info["license"] = base.card["license"]
        return model, info
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DCGMM(classes, scale)
    return model, {"started_from": f"random initialization (seed {seed})"}


def fit_dcgmm(
    images: Sequence[np.ndarray],
    steps: int = 200,
    device: str = "auto",
    seed: int = 0,
    classes: int = 3,
    batch_size: int = 4,
    crop: int = 256,
    lr: float = 1e-3,
    scale: int = 2,
    start: Any = "shipped",
    card: dict | None = None,
    precision: str = "auto",
) -> Generator[Progress, None, DCGMMNormalizer]:
    """Fit a DCGMM on ``images``, unsupervised; yields one progress event per step.

    Closing the generator (a GUI's cancel) stops between two steps; nothing outside it is
    modified, so the previous normalizer stays valid.

    Parameters
    ----------
    images : list of arrays
        Any number of H&E images of any size (anything ``to_rgb_uint8`` accepts); smaller
        ones are padded to ``crop`` by edge replication.
    steps : int
        Adam steps, each on a batch of ``batch_size`` random crops.
    device : str
        ``auto``, ``cpu``, ``cuda``.
    seed : int
        Seeds the crop sampling and a new network's initialization (reproducible fits).
    classes : int
        Number of Gaussian components (default 3: background, surrounding tissue, nuclei).
    crop : int
        Crop side in pixels (rounded down to a multiple of ``4 * scale``).
    lr : float
        Adam learning rate.
    scale : int
        Network resolution divisor (see the module documentation).
    start : "shipped", None, path or DCGMMNormalizer
        Fine-tune the shipped model (default; falls back to a new network when it is missing or
        has another number of classes), start from a new network (None), or from a saved one.
    card : dict, optional
        Extra fields for the model card (data, licence, command...).
    precision : str
        ``auto`` (bfloat16 convolutions where the hardware has them), ``float32``.

    Returns
    -------
    DCGMMNormalizer
        With classes ordered by density; not yet fitted to a template.
    """
    from ..device import resolve_device

    if not images:
        raise HistoError("no images to fit the DCGMM on")
    if steps < 1 or batch_size < 1:
        raise HistoError(f"steps and batch size must be at least 1 (got {steps}, {batch_size})")
    dev = resolve_device(device)
    rgbs = as_image_list(list(images))
    tensors = [color.as_tensor(im, dev) for im in rgbs]
    with torch.inference_mode():
        _, _, note = tissue_pixels(tensors)
    if note.startswith("no tissue"):
        raise HistoError(f"images to fit the DCGMM on: {note}")
    model, origin = _start_model(start, int(classes), int(scale), seed)
    multiple = model.multiple
    largest = max(min(t.shape[:2]) for t in tensors)
    crop = max(multiple, min(int(crop), largest) // multiple * multiple)
    padded = []
    for t in tensors:
        ph, pw = max(0, crop - t.shape[0]), max(0, crop - t.shape[1])
        if ph or pw:
            t = F.pad(t.permute(2, 0, 1)[None].float(), (0, pw, 0, ph), mode="replicate")
            t = t[0].permute(1, 2, 0).to(torch.uint8)
        padded.append(t.contiguous())
    model.to(dev).train()
    if dev.type == "cpu":
        model.to(memory_format=torch.channels_last)
    model.amp_dtype = fast_dtype(dev, precision)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    yield Progress(
        0,
        steps,
        "fit",
        message=f"DCGMM: {len(rgbs)} images, {batch_size} crops of {crop} px a step",
    )
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        batch = _random_crops(padded, batch_size, crop, rng)
        hsd = color.rgb_to_hsd(batch).permute(0, 3, 1, 2).contiguous()
        loss = model(hsd)[-1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise HistoError(
                f"the DCGMM fit diverged at step {step} (loss {value}); try a lower lr"
            )
        losses.append(value)
        yield Progress(step, steps, "fit", metrics={"loss": value})
    seconds = time.perf_counter() - t0
    model.eval()
    densities = _order_by_density(model, padded, crop)
    tail = losses[-min(20, len(losses)) :]
    info = dict(card or {})
    info.setdefault("license", origin.pop("license", None) or info.get("license"))
    info["training"] = {
        "steps": steps,
        "batch_size": batch_size,
        "crop": crop,
        "lr": lr,
        "seed": seed,
        "classes": int(classes),
        "scale": int(scale),
        "n_images": len(rgbs),
        "device": dev.type,
        "precision": str(model.amp_dtype or torch.float32).replace("torch.", ""),
        "seconds": round(seconds, 1),
        "final_loss": round(float(np.mean(tail)), 5),
        "final_loss_over": f"mean of the last {len(tail)} steps",
        "class_mean_density": [round(float(v), 4) for v in densities],
        **origin,
    }
    if info.get("license") is None:
        info.pop("license")
    return DCGMMNormalizer(model, device=dev, card=info, precision=precision)


def fit_dcgmm_blocking(
    images: Sequence[np.ndarray], steps: int = 200, callback=None, **kwargs
) -> DCGMMNormalizer:
    """:func:`fit_dcgmm` drained to its end; ``callback(event)`` sees every progress event."""
    from ..progress import drain

    return drain(fit_dcgmm(images, steps=steps, **kwargs), callback)


__all__ = [
    "DCGMM",
    "DEFAULT_MODEL",
    "DCGMMNet",
    "DCGMMNormalizer",
    "class_names_for",
    "fit_dcgmm",
    "fit_dcgmm_blocking",
    "load_dcgmm",
    "mixture_nll",
    "mixture_stats",
    "stats_from_sums",
]
