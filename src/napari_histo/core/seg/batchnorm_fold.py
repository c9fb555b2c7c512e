"""Folding each BatchNorm into the convolution before it, for inference in float32.

In eval mode a BatchNorm is a fixed affine map per channel, so a convolution followed by one is
a single convolution with rescaled weights and a new bias: the same maps up to float rounding,
for about a fifth less CPU time with the shipped HoVer-Net (``bench/seg_speed.py``). The
network is copied; the original, which a fine-tune may go on training, is never modified.
"""

from __future__ import annotations

from typing import Any


def fold_batchnorm(net: Any) -> Any:
    """A copy of ``net`` with every ``Conv2d`` then ``BatchNorm2d`` of an ``nn.Sequential``
    folded into one ``Conv2d`` (the BatchNorm's place taken by ``nn.Identity``, so module
    names stay as they were). ``net`` itself when it is training or has nothing to fold."""
    import copy

    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def pairs(root: nn.Module) -> list[tuple[nn.Sequential, int]]:
        found = []
        for seq in root.modules():
            if not isinstance(seq, nn.Sequential):
                continue
            mods = list(seq)
            for i in range(len(mods) - 1):
                conv, bn = mods[i], mods[i + 1]
                if (
                    type(conv) is nn.Conv2d
                    and type(bn) is nn.BatchNorm2d
                    and bn.track_running_stats
                    and bn.running_mean is not None
                ):
                    found.append((seq, i))
        return found

    if any(m.training for m in net.modules()) or not pairs(net):
        return net
    with torch.no_grad():
        folded = copy.deepcopy(net)
        for seq, i in pairs(folded):
            seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
            seq[i + 1] = nn.Identity()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded
