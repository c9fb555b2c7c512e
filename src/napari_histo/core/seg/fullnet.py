"""FullNet (Qu et al., MICCAI 2019): a full-resolution dense network trained with varCE.

No down-sampling: dense blocks of dilated 3x3 convolutions, block dilations growing then
shrinking (1, 2, 4, 8, 16, 4, 1), the layers of each block at the authors' hybrid dilation rates,
each block followed by a 1x1 compressing transition. Ternary output (Qu et al.'s training
encoding, boundary inside the nuclei); the loss is weighted cross-entropy (FullNet weight maps)
plus the variance term over the connected components of the inside class. Inference as theirs:
argmax inside, objects under 20 px removed, dilation by a disk of radius 2, multiple inference
(the 8 flips and rotations) on by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import spec
from .losses import var_ce_loss
from .postprocess import instances_from_inside
from .targets import fullnet_ternary_labels, variance_groups, weight_map
from .unet import TernarySpec

#: Dilation rates of the layers of a dense block, keyed by (block dilation, layers per block).
#: The hybrid-dilation settings of the authors' code, as a literal table
#: (``choose_hybrid_dilations`` in ``FullNet.py`` of github.com/huiqu18/FullNet-varCE, the
#: ``is_hybrid=True`` default): with 4 layers per block and the block schedule
#: (1, 2, 4, 8, 16, 4, 1) the receptive field is 299 px (437 px with their 6 layers).
HYBRID_DILATIONS: dict[tuple[int, int], tuple[int, ...]] = {
    (1, 4): (1, 1, 1, 1),
    (2, 4): (1, 2, 3, 2),
    (4, 4): (1, 2, 5, 9),
    (8, 4): (3, 7, 10, 13),
    (16, 4): (13, 15, 17, 19),
    (1, 6): (1, 1, 1, 1, 1, 1),
    (2, 6): (1, 2, 3, 1, 2, 3),
    (4, 6): (1, 2, 3, 5, 6, 7),
    (8, 6): (2, 5, 7, 9, 11, 14),
    (16, 6): (10, 13, 16, 17, 19, 21),
}


def layer_dilations(dilations: tuple[int, ...], n_layers: int) -> list[tuple[int, ...]]:
    """The dilation of every layer of every block (:data:`HYBRID_DILATIONS`).

    Raises ValueError for a block dilation or a number of layers the authors give no rates for.
    """
    try:
        return [HYBRID_DILATIONS[(int(d), int(n_layers))] for d in dilations]
    except KeyError:
        raise ValueError(
            f"FullNet has hybrid dilation rates for blocks of 4 or 6 layers and block dilations "
            f"1, 2, 4, 8, 16; got {n_layers} layers and block dilations {tuple(dilations)}"
        ) from None


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
        for rates in layer_dilations(dilations, n_layers):
            for r in rates:
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
    """``fullnet``: ternary FullNet trained with varCE, with Qu et al.'s targets and inference."""

    name = "fullnet"
    size_multiple = 1
    #: Weight of the variance term (1 in the paper).
    alpha = 1.0
    # bfloat16 autocast: the backward pass of this network crashes (SIGSEGV) in torch 2.14's
    # CPU kernels; it trains in float32 (TF32 on a GPU).
    train_autocast = False
    #: Qu et al.'s post-processing (``test.py``/``options.py`` for MultiOrgan): objects of the
    #: inside class under 20 px removed, the rest dilated by a disk of radius 2.
    min_size = 20
    radius = 2
    #: Multiple inference by default, as in their ``test.py`` (the 8 flips and rotations).
    tta: bool | int = True

    def build(self, **kwargs: Any) -> nn.Module:
        """A fresh :class:`FullNet` (keyword arguments as its constructor)."""
        if "dilations" in kwargs:
            kwargs["dilations"] = tuple(kwargs["dilations"])
        return FullNet(**kwargs)

    def make_targets(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """``ternary`` (H, W) int64 (:func:`.targets.fullnet_ternary_labels`), ``weight`` (H, W)
        float32 and ``groups`` (H, W) int64, the varCE groups (:func:`.targets.variance_groups`)."""
        labels = np.asarray(labels)
        ternary = fullnet_ternary_labels(labels)
        return {
            "ternary": ternary,
            "weight": weight_map(labels),
            "groups": variance_groups(ternary),
        }

    def train_loss(
        self, model: nn.Module, x: torch.Tensor, targets: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """varCE: weighted cross-entropy + ``alpha`` x variance of the probabilities per group."""
        return var_ce_loss(
            model(x),
            targets["ternary"],
            targets["groups"],
            targets.get("weight"),
            alpha=self.alpha,
        )

    def instances(self, maps: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Qu et al.'s inference (:func:`.postprocess.instances_from_inside`)."""
        return instances_from_inside(maps["ternary"], min_size=self.min_size, radius=self.radius)


FULLNET = spec.register(FullNetSpec())
