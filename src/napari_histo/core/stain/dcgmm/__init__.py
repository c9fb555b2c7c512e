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
``fit_dcgmm(loss="paper")`` trains with the reference code's loss instead (one M-step over the
batch, per-pixel likelihood clipped at 1; see :meth:`DCGMM.forward`), to compare the two.

One addition for speed: the network sees the density at ``1 / scale`` resolution (default 2,
so a 40x tile is seen at 20x, where the net's receptive field covers a nucleus) and its logits
are upsampled bilinearly; statistics and the colour transform use every full-resolution pixel.
"""

from ...weights import WEIGHTS_FILE
from .files import default_model_path, load_dcgmm
from .fit import fit_dcgmm, fit_dcgmm_blocking
from .model import (
    DCGMM,
    DEFAULT_MODEL,
    FORMAT,
    FORMAT_VERSION,
    LOSSES,
    DCGMMNet,
    class_names_for,
    fast_dtype,
    mixture_nll,
    mixture_stats,
    paper_nll,
)
from .normalizer import DCGMMNormalizer, stats_from_sums

__all__ = [
    "DCGMM",
    "DEFAULT_MODEL",
    "FORMAT",
    "FORMAT_VERSION",
    "LOSSES",
    "WEIGHTS_FILE",
    "DCGMMNet",
    "DCGMMNormalizer",
    "class_names_for",
    "default_model_path",
    "fast_dtype",
    "fit_dcgmm",
    "fit_dcgmm_blocking",
    "load_dcgmm",
    "mixture_nll",
    "mixture_stats",
    "paper_nll",
    "stats_from_sums",
]
