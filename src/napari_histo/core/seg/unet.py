"""A compact U-Net predicting ternary (background / inside / boundary) logits.

Also holds :class:`TernarySpec`, the part of the :class:`~.spec.ArchSpec` shared by every
architecture whose output is ternary probabilities (``unet``, ``fullnet``, ``maskrcnn``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from . import spec
from .losses import dice_loss, weighted_cross_entropy
from .postprocess import RELATIVE_RANGE, instances_from_ternary
from .targets import BACKGROUND, INSIDE, ternary_labels, weight_map


class TernarySpec:
    """Targets, prediction, TTA inversion and post-processing of ternary architectures.

    Subclasses set ``name``, ``size_multiple`` and implement ``build`` (and may override
    ``make_targets``, ``train_loss`` and ``instances``). ``make_targets`` gives ``ternary``
    (int64) and ``weight`` (float32, FullNet weight map).
    """

    name = "ternary"
    size_multiple = 1
    #: Post-processing settings (see :func:`.postprocess.instances_from_ternary`). Seeds where
    #: p(inside) - p(boundary) > 0.4 split touching nuclei better than the argmax, and objects
    #: under 30 px (about a 6 px disc at 40x) are debris: chosen on the shipped model's held-out
    #: tiles (AJI 0.376 -> 0.428 with unet_monuseg), see bench/results/seg.md. Architectures
    #: may also drop objects under a fraction of the median object (``relative_min_size``).
    min_size = 30
    grow: int | str | None = "half"
    seed_threshold: float | None = 0.4
    relative_min_size: float | None = None
    #: The relative threshold's upper clip, in pixels (a card may raise it).
    relative_cap = RELATIVE_RANGE[1]
    #: Multiple inference when the caller leaves it to the architecture (off: 8x the time).
    tta: bool | int = False

    def build(self, **kwargs: Any) -> nn.Module:
        raise NotImplementedError

    def blank_maps(self, batch: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """The maps of tiles of bare glass, not run through the network: all background."""
        ternary = torch.zeros((batch, 3, height, width))
        ternary[:, BACKGROUND] = 1.0
        return {"ternary": ternary}

    def make_targets(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """``ternary`` (H, W) int64 and ``weight`` (H, W) float32."""
        labels = np.asarray(labels)
        return {"ternary": ternary_labels(labels), "weight": weight_map(labels)}

    def train_loss(
        self, model: nn.Module, x: torch.Tensor, targets: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Weighted cross-entropy + soft Dice on the nucleus classes."""
        logits = model(x)
        return weighted_cross_entropy(logits, targets["ternary"], targets["weight"]) + dice_loss(
            torch.softmax(logits, 1), targets["ternary"], classes=(INSIDE, INSIDE + 1)
        )

    def predict(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"ternary": softmax probabilities (B, 3, H, W)}``; puts the model in eval mode."""
        model.eval()
        with torch.no_grad():
            return {"ternary": torch.softmax(model(x), dim=1)}

    def invert_tta(
        self, maps: dict[str, torch.Tensor], k: int, flip: bool
    ) -> dict[str, torch.Tensor]:
        return spec.invert_spatial(maps, k, flip)

    def instances(self, maps: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return instances_from_ternary(
            maps["ternary"],
            min_size=self.min_size,
            grow=self.grow,
            seed_threshold=self.seed_threshold,
            relative_min_size=self.relative_min_size,
            relative_cap=self.relative_cap,
        )


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each with BatchNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def level_widths(base: int, depth: int = 4) -> list[int]:
    """Channel widths of the levels of a U-Net: ``base * 2**i`` for ``i = 0..depth``."""
    return [base * 2**i for i in range(depth + 1)]


class UNetEncoder(nn.Module):
    """Contracting path: returns the feature map of every level, finest first."""

    def __init__(self, in_channels: int, widths: list[int]) -> None:
        super().__init__()
        cins = [in_channels, *widths[:-1]]
        self.levels = nn.ModuleList(double_conv(c, w) for c, w in zip(cins, widths, strict=True))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats


class UNetDecoder(nn.Module):
    """Expanding path with skip connections: encoder features -> finest-level features."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        n = len(widths) - 1
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(n)
        )
        self.levels = nn.ModuleList(double_conv(2 * widths[i], widths[i]) for i in range(n))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for i in reversed(range(len(self.levels))):
            x = self.levels[i](torch.cat([feats[i], self.ups[i](x)], dim=1))
        return x


class UNet(nn.Module):
    """U-Net (Ronneberger 2015) with BatchNorm, 4 poolings, widths ``base * (1, 2, 4, 8, 16)``.

    ``base=16`` gives about 1.9 M parameters. Input sides must be multiples of 16.
    """

    depth = 4

    def __init__(self, in_channels: int = 3, out_channels: int = 3, base: int = 16) -> None:
        super().__init__()
        widths = level_widths(base, self.depth)
        self.encoder = UNetEncoder(in_channels, widths)
        self.decoder = UNetDecoder(widths)
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


class UNetSpec(TernarySpec):
    """``unet``: ternary U-Net trained with weighted cross-entropy + Dice."""

    name = "unet"
    size_multiple = 2**UNet.depth
    #: bfloat16 autocast on CPUs with native bfloat16, with the first encoder level (the raw
    #: pixels' convolutions) in float32: 1.4x faster than float32, labels AJI >= 0.994 against
    #: float32's on every validation tile (mean 0.997). All of it in bfloat16 (1.7x,
    #: NAPARI_HISTO_PRECISION=bfloat16) drops to a mean of 0.988, under the 0.99 asked for
    #: (bench/bf16_agreement.py, bench/results/infer_backends.md).
    cpu_autocast = True
    cpu_float32_modules = ("encoder.levels.0",)
    #: Objects under 10 px, then under 0.3 x the median object area (clipped to 10-60 px), are
    #: debris: with unet_histo80_v2 on the validation tiles PQ 0.530 -> 0.546 at 40x, AJI
    #: unchanged (0.589), 20x unchanged; a fixed 45-60 px gains the same PQ at 40x but loses
    #: 0.02-0.04 AJI at 20x (bench/postprocess_search.py, bench/results/postprocess.md).
    min_size = 10
    relative_min_size: float | None = 0.3

    def build(self, base: int = 16, **kwargs: Any) -> nn.Module:
        """A fresh :class:`UNet` (``base`` = width of the first level)."""
        return UNet(base=base, **kwargs)


UNET = spec.register(UNetSpec())
