"""CycleGAN networks (Zhu et al. 2017): ResNet generator, 70 x 70 PatchGAN, history pool.

torch is imported inside functions only.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


def build_generator(ngf: int = 32, n_blocks: int = 6) -> nn.Module:
    """ResNet generator: 7x7 stem, two stride-2 downsamplings, residual blocks, two upsamplings.

    Instance norm without affine parameters and reflection padding, as in Zhu et al. (2017);
    output in [-1, 1] (tanh). Input height and width must be multiples of 4.
    """
    from torch import nn

    class ResBlock(nn.Module):
        def __init__(self, ch: int):
            super().__init__()
            self.body = nn.Sequential(
                nn.ReflectionPad2d(1),
                nn.Conv2d(ch, ch, 3),
                nn.InstanceNorm2d(ch),
                nn.ReLU(True),
                nn.ReflectionPad2d(1),
                nn.Conv2d(ch, ch, 3),
                nn.InstanceNorm2d(ch),
            )

        def forward(self, x):
            return x + self.body(x)

    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(3, ngf, 7),
        nn.InstanceNorm2d(ngf),
        nn.ReLU(True),
    ]
    ch = ngf
    for _ in range(2):
        layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ch * 2)]
        layers += [nn.ReLU(True)]
        ch *= 2
    layers += [ResBlock(ch) for _ in range(n_blocks)]
    for _ in range(2):
        layers += [
            nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(ch // 2),
            nn.ReLU(True),
        ]
        ch //= 2
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, 3, 7), nn.Tanh()]
    net = nn.Sequential(*layers)
    _init_weights(net)
    return net


def build_discriminator(ndf: int = 64) -> nn.Module:
    """70x70 PatchGAN: three stride-2 4x4 convolutions, one stride-1, a 1-channel output map."""
    from torch import nn

    layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    ch = ndf
    for stride in (2, 2, 1):
        layers += [
            nn.Conv2d(ch, ch * 2, 4, stride, 1),
            nn.InstanceNorm2d(ch * 2),
            nn.LeakyReLU(0.2, True),
        ]
        ch *= 2
    layers += [nn.Conv2d(ch, 1, 4, 1, 1)]
    net = nn.Sequential(*layers)
    _init_weights(net)
    return net


def _init_weights(net: nn.Module) -> None:
    from torch import nn

    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ImagePool:
    """History of generated images fed to the discriminators (Shrivastava et al., 2017).

    Until full, each new image is stored and returned; afterwards, with probability 1/2, a
    stored image is returned instead and replaced by the new one.
    """

    def __init__(self, size: int = 50, seed: int = 0):
        self.size = size
        self.images: list = []
        self._rng = random.Random(seed)

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        if self.size <= 0:
            return batch
        out = []
        for img in batch.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif self._rng.random() < 0.5:
                k = self._rng.randrange(self.size)
                out.append(self.images[k].clone())
                self.images[k] = img.clone()
            else:
                out.append(img)
        return torch.cat(out, 0)
