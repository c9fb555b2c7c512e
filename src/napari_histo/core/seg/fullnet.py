"""FullNet (Qu et al., MICCAI 2019): a full-resolution dense network trained with varCE.

No down-sampling: dense blocks of dilated 3x3 convolutions, block dilations growing then
shrinking (1, 2, 4, 8, 16, 4, 1), each followed by a 1x1 compressing transition. Ternary output;
the loss is weighted cross-entropy (FullNet weight maps) plus the instance-variance term.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import spec
from .losses import var_ce_loss
from .unet import TernarySpec


def hybrid_dilations(d: int, n_layers: int) -> list[int]:
    """Dilations of the layers of a block of dilation ``d``: rising to ``d``, alternate ones made
    odd so that consecutive layers share no common factor (no gridding, Wang et al. 2018)."""
    out = []
    for i in range(n_layers):
        r = max(1, round(d * (i + 1) / n_layers))
        out.append(r - 1 if (r % 2 == 0 and i % 2 == 0) else r)
    return out


def _conv(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(inplace=True),
    )


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, dilation: int, drop: float) -> None:
        super().__init__()
        self.conv = _conv(cin, growth, 3, dilation)
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.dropout(self.conv(x), p=self.drop, training=self.training)
        return torch.cat([x, out], dim=1)


class FullNet(nn.Module):
    """FullNet with ``len(dilations)`` dense blocks of ``n_layers`` layers each.

    The defaults (growth 16, 4 layers per block) give about 0.3 M parameters, against the paper's
    growth 24 and 6 layers; any input size works (no pooling).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        n_layers: int = 4,
        growth_rate: int = 16,
        compress_ratio: float = 0.5,
        drop_rate: float = 0.1,
        dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 4, 1),
        width: int = 24,
    ) -> None:
        super().__init__()
        self.stem = _conv(in_channels, width, 3)
        blocks = []
        c = width
        for d in dilations:
            for r in hybrid_dilations(d, n_layers):
                blocks.append(_DenseLayer(c, growth_rate, r, drop_rate))
                c += growth_rate
            c_out = int(c * compress_ratio)
            blocks.append(_conv(c, c_out, 1))
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class FullNetSpec(TernarySpec):
    """``fullnet``: ternary FullNet trained with varCE (weighted CE + instance variance)."""

    name = "fullnet"
    size_multiple = 1
    #: Weight of the variance term (1 in the paper).
    alpha = 1.0

    def build(self, **kwargs: Any) -> nn.Module:
        """A fresh :class:`FullNet` (keyword arguments as its constructor)."""
        if "dilations" in kwargs:
            kwargs["dilations"] = tuple(kwargs["dilations"])
        return FullNet(**kwargs)

    def train_loss(
        self, model: nn.Module, x: torch.Tensor, targets: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """varCE: weighted cross-entropy + ``alpha`` x variance of probabilities per instance."""
        return var_ce_loss(
            model(x),
            targets["ternary"],
            targets["instances"],
            targets.get("weight"),
            alpha=self.alpha,
        )


FULLNET = spec.register(FullNetSpec())
