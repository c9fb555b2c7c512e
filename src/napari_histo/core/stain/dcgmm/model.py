"""The DCGMM network and mixture maths: E-step FCN on density, M-step statistics, NLL."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import HistoError

FORMAT = "napari-histo-dcgmm"
FORMAT_VERSION = 1
DEFAULT_MODEL = "dcgmm_default"
CARD_FILE = "card.json"

#: Height and width the network needs (two 2x poolings).
NET_MULTIPLE = 4
#: Variance floor of every Gaussian (keeps the likelihood bounded on flat regions).
VAR_FLOOR = 1e-4
#: A class holding less than this fraction of an image's pixels is left as it is.
MIN_CLASS_MASS = 1e-3
#: Training losses: see :meth:`DCGMM.forward`.
LOSSES = ("ours", "paper")
#: The reference code's ``keras.backend.epsilon()``, added to each pixel's likelihood.
PAPER_EPS = 1e-7


def class_names_for(k: int) -> tuple[str, ...]:
    """Names of K classes ordered by density (index 0 = lowest)."""
    if k == 1:
        return ("tissue",)
    if k == 2:
        return ("background", "tissue")
    if k == 3:
        return ("background", "surrounding tissue", "nuclei")
    return ("background", *(f"tissue {i}" for i in range(1, k - 1)), "nuclei")


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

    def forward(self, hsd: torch.Tensor, loss: str = "ours"):
        """(log gamma, means, variances, loss) of an HSD batch; see :data:`LOSSES`.

        ``loss="ours"`` (default): per-image M-step (each image's own class means and variances,
        plus a variance floor) and the exact mixture negative log-likelihood per pixel,
        ``-mean log sum_k gamma_k N(x | mu_k, sigma_k)`` (:func:`mixture_nll`).

        ``loss="paper"``: the loss as the authors' reference code computes it
        (``GMM_M_Step.py`` of FarhadZanjani/Histopathology-Stain-Color-Normalization): the same
        mixture likelihood, but (1) one M-step over the whole batch (the sums of the paper's
        M-step run over every pixel of the training batch; the reference code trains with one
        image a batch, where the two agree) and (2) each pixel's likelihood is clipped,
        ``-log min(p(x) + eps, 1)``, so pixels whose density exceeds 1 (tight classes) add
        nothing and no gradient (:func:`paper_nll`). The means and variances returned are the
        batch's, repeated per image.
        """
        log_gamma = torch.log_softmax(self.logits(hsd[:, :1]), dim=1)
        if loss == "ours":
            _, mean, var = mixture_stats(hsd, log_gamma.exp())
            return log_gamma, mean, var, mixture_nll(hsd, log_gamma, mean, var)
        if loss == "paper":
            _, mean, var = mixture_stats(hsd, log_gamma.exp(), pooled=True)
            return log_gamma, mean, var, paper_nll(hsd, log_gamma, mean, var)
        raise HistoError(f"unknown DCGMM loss {loss!r}; choose one of {', '.join(LOSSES)}")


def fast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """bfloat16 for the convolutions where the hardware runs it natively, else None (float32).

    The policy is :func:`~napari_histo.core.device.amp_dtype`'s, except that a GPU without
    bfloat16 stays in float32 (the mixture statistics need its range). The M-step, the loss
    and the colour transform always run in float32.
    """
    from ...device import amp_dtype

    dtype = amp_dtype(device, precision)
    return None if dtype == torch.float16 else dtype


def mixture_stats(
    x: torch.Tensor, gamma: torch.Tensor, floor: float = VAR_FLOOR, pooled: bool = False
):
    """The M-step per image: class masses (B, K), means and variances (B, K, 3).

    ``x`` is (B, 3, H, W), ``gamma`` (B, K, H, W). ``pooled``: one M-step over the whole batch
    (every pixel of every image), its statistics repeated for each image.
    """
    mass = gamma.sum((2, 3))
    wsum = torch.einsum("bkhw,bchw->bkc", gamma, x)
    if pooled:
        b = x.shape[0]
        mass = mass.sum(0, keepdim=True).expand(b, -1)
        wsum = wsum.sum(0, keepdim=True).expand(b, -1, -1)
    denom = mass.clamp(min=1e-6)[..., None]
    mean = wsum / denom
    diff = x[:, None] - mean[..., None, None]
    wsq = torch.einsum("bkhw,bkchw->bkc", gamma, diff * diff)
    if pooled:
        wsq = wsq.sum(0, keepdim=True).expand(x.shape[0], -1, -1)
    var = wsq / denom
    return mass, mean, var + floor


def mixture_nll(x: torch.Tensor, log_gamma: torch.Tensor, mean: torch.Tensor, var: torch.Tensor):
    """Mean negative log-likelihood per pixel of ``x`` under the per-pixel mixture."""
    diff = x[:, None] - mean[..., None, None]  # (B, K, 3, H, W)
    maha = (diff * diff / var[..., None, None]).sum(2)
    log_norm = var.log().sum(2)[..., None, None] + 3.0 * math.log(2.0 * math.pi)
    log_p = torch.logsumexp(log_gamma - 0.5 * (maha + log_norm), dim=1)
    return -log_p.mean()


def paper_nll(
    x: torch.Tensor,
    log_gamma: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float = PAPER_EPS,
):
    """The reference code's loss: mean over pixels of ``-log min(p(x) + eps, 1)``.

    ``p(x) = sum_k gamma_k N(x | mu_k, sigma_k)`` as in :func:`mixture_nll`; computed in log
    space (``min(logaddexp(log p, log eps), 0)``), which is the same number without underflow.
    """
    diff = x[:, None] - mean[..., None, None]
    maha = (diff * diff / var[..., None, None]).sum(2)
    log_norm = var.log().sum(2)[..., None, None] + 3.0 * math.log(2.0 * math.pi)
    log_p = torch.logsumexp(log_gamma - 0.5 * (maha + log_norm), dim=1)
    log_p = torch.logaddexp(log_p, torch.full_like(log_p, math.log(eps))).clamp(max=0.0)
    return -log_p.mean()


def _pad_to(x: torch.Tensor, multiple: int, min_size: int = 0) -> torch.Tensor:
    """Pad (B, C, H, W) on the bottom/right by edge replication to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    hp = max(-(-h // multiple) * multiple, min_size)
    wp = max(-(-w // multiple) * multiple, min_size)
    if (hp, wp) == (h, w):
        return x
    return F.pad(x, (0, wp - w, 0, hp - h), mode="replicate")
