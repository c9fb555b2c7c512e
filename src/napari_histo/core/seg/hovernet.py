"""HoVer-Net-style network (Graham et al. 2019): nuclear-pixel and horizontal/vertical branches.

A U-Net encoder shared by two decoders: the NP branch predicts nucleus vs background (2-class
softmax), the HV branch the horizontal and vertical distances of each nuclear pixel to its
nucleus centroid. Instances come from a marker-controlled watershed on the HV gradients.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import spec
from .losses import dice_loss, hv_loss
from .postprocess import RELATIVE_RANGE, instances_from_hover
from .targets import hv_maps
from .unet import UNetDecoder, UNetEncoder, level_widths


class HoVerNet(nn.Module):
    """Shared encoder, one decoder per branch. ``base=16``: about 2.7 M parameters.

    With ``shared_decoder`` both 1x1 heads read one decoder: 1.9 M parameters and the U-Net's
    cost (a 3x3 convolution of the HV head's own cost 14 % more time on 2 CPU cores). The
    decoder keeps the name ``np_decoder``, so a two-decoder model's encoder and NP branch load
    into it.

    ``forward`` returns ``(np_logits (B, 2, H, W), hv (B, 2, H, W))``; sides multiples of 16.
    """

    depth = 4

    def __init__(self, in_channels: int = 3, base: int = 16, shared_decoder: bool = False) -> None:
        super().__init__()
        widths = level_widths(base, self.depth)
        self.shared_decoder = bool(shared_decoder)
        self.encoder = UNetEncoder(in_channels, widths)
        self.np_decoder = UNetDecoder(widths)
        self.np_head = nn.Conv2d(widths[0], 2, 1)
        if not self.shared_decoder:
            self.hv_decoder = UNetDecoder(widths)
        self.hv_head = nn.Conv2d(widths[0], 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder(x)
        np_feats = self.np_decoder(feats)
        hv_feats = np_feats if self.shared_decoder else self.hv_decoder(feats)
        return self.np_head(np_feats), self.hv_head(hv_feats)


def shared_decoder_from(state: dict[str, torch.Tensor], base: int = 16, seed: int = 0) -> HoVerNet:
    """A shared-decoder :class:`HoVerNet` starting from a two-decoder one's ``state``.

    The encoder, NP decoder and NP head are carried over, so its NP branch predicts exactly what
    the parent's does; the HV head is new (seeded) and must be trained.
    """
    torch.manual_seed(seed)
    net = HoVerNet(base=base, shared_decoder=True)
    keep = ("encoder.", "np_decoder.", "np_head.")
    missing, _ = net.load_state_dict(
        {k: v for k, v in state.items() if k.startswith(keep)}, strict=False
    )
    if any(not k.startswith("hv_head.") for k in missing):
        raise ValueError(f"not a two-decoder HoVer-Net state: {missing[:3]} missing")
    return net


def invert_hv(hv: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Express HV vectors predicted on ``rot90(flip(x), k)`` in the frame of ``x``.

    Only the vector components; the pixels must already be moved back
    (:func:`.spec.invert_spatial`). With ``h`` along columns and ``v`` along rows, a
    ``torch.rot90`` by one quarter maps a vector ``(h, v)`` to ``(v, -h)`` and the flip of the
    columns maps it to ``(-h, v)``; this applies the inverses in reverse order.
    """
    h, v = hv[:, 0], hv[:, 1]
    for _ in range(k % 4):
        h, v = -v, h
    if flip:
        h = -h
    return torch.stack([h, v], dim=1)


class HoVerNetSpec:
    """``hovernet``: NP branch (cross-entropy + Dice) and HV branch (MSE + MSGE)."""

    name = "hovernet"
    size_multiple = 2**HoVerNet.depth
    #: Post-processing settings (see :func:`.postprocess.instances_from_hover`). Objects under
    #: 0.3 x the median object are debris, as for the U-Net: with hovernet_histo80 on the
    #: validation tiles PQ 0.507 -> 0.516 at 40x, AJI and 20x unchanged (a fixed 30 px: 20x AJI
    #: 0.486 -> 0.408); bench/results/postprocess.md.
    min_size = 10
    relative_min_size: float | None = 0.3
    #: That threshold's upper clip, in pixels: at 40x it decides (bench/size_filter_search.py).
    relative_cap = RELATIVE_RANGE[1]
    #: Foreground where the nuclear-pixel probability reaches ``fg_threshold``; boundary energy
    #: from Gaussian derivatives of width ``hv_sigma``; markers where it stays under
    #: ``marker_threshold``. A card's ``inference`` section may set them.
    fg_threshold = 0.5
    marker_threshold = 0.4
    hv_sigma = 2.0
    #: Multiple inference when the caller leaves it to the architecture (off: 8x the time).
    tta: bool | int = False

    def build(self, base: int = 16, **kwargs: Any) -> nn.Module:
        """A fresh :class:`HoVerNet` (``base`` = width of the first level)."""
        return HoVerNet(base=base, **kwargs)

    def blank_maps(self, batch: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """The maps of tiles of bare glass, not run through the network: no nucleus, flat HV."""
        return {
            "np": torch.zeros((batch, 1, height, width)),
            "hv": torch.zeros((batch, 2, height, width)),
        }

    def make_targets(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """``np`` (H, W) int64 nucleus mask and ``hv`` (2, H, W) float32 maps."""
        labels = np.asarray(labels)
        return {"np": (labels > 0).astype(np.int64), "hv": hv_maps(labels)}

    def train_loss(
        self, model: nn.Module, x: torch.Tensor, targets: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        np_logits, hv = model(x)
        fg = targets["np"].long()
        np_term = F.cross_entropy(np_logits, fg) + dice_loss(torch.softmax(np_logits, 1), fg)
        return np_term + hv_loss(hv, targets["hv"], fg)

    def predict(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``np`` (B, 1, H, W) nucleus probability, ``hv`` (B, 2, H, W) clamped to [-1, 1]."""
        model.eval()
        with torch.no_grad():
            np_logits, hv = model(x)
        return {"np": torch.softmax(np_logits, 1)[:, 1:], "hv": hv.clamp(-1.0, 1.0)}

    def invert_tta(
        self, maps: dict[str, torch.Tensor], k: int, flip: bool
    ) -> dict[str, torch.Tensor]:
        out = spec.invert_spatial(maps, k, flip)
        if "hv" in out:
            out["hv"] = invert_hv(out["hv"], k, flip)
        return out

    def instances(self, maps: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return instances_from_hover(
            maps["np"],
            maps["hv"],
            threshold=self.fg_threshold,
            min_size=self.min_size,
            marker_threshold=self.marker_threshold,
            sigma=self.hv_sigma,
            relative_min_size=self.relative_min_size,
            relative_cap=self.relative_cap,
        )


HOVERNET = spec.register(HoVerNetSpec())
