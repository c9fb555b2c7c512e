"""Segmentation losses: weighted cross-entropy, soft Dice, varCE, HoVer-Net MSE + MSGE.

Shapes follow torch: logits/probabilities ``(B, C, H, W)``, class targets ``(B, H, W)`` int64,
weights ``(B, H, W)``, group ids ``(B, H, W)`` (0 = in no group).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-pixel cross-entropy times a weight map, averaged over pixels (Qu et al.).

    Parameters
    ----------
    logits : (B, C, H, W) raw scores.
    target : (B, H, W) class indices.
    weight : (B, H, W) per-pixel weights, or None for plain cross-entropy.
    """
    ce = F.cross_entropy(logits, target.long(), reduction="none")
    if weight is not None:
        ce = ce * weight.to(ce.dtype)
    return ce.mean()


def dice_loss(
    probs: torch.Tensor, target: torch.Tensor, classes: tuple[int, ...] | None = None
) -> torch.Tensor:
    """Soft Dice loss ``1 - mean_c 2|P_c T_c| / (|P_c| + |T_c|)`` over the batch.

    Parameters
    ----------
    probs : (B, C, H, W) probabilities.
    target : (B, H, W) class indices, or (B, C, H, W) soft/one-hot targets.
    classes : the channels averaged (all when None).
    """
    if target.ndim == probs.ndim - 1:
        target = F.one_hot(target.long(), probs.shape[1]).permute(0, 3, 1, 2)
    target = target.to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    dice = (2.0 * inter + 1.0) / (denom + 1.0)
    if classes is not None:
        dice = dice[list(classes)]
    return 1.0 - dice.mean()


def instance_variance(probs: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """varCE's spatial term: variance of the probabilities within each pixel group.

    For each image, the unbiased variance over the pixels of each group (of more than one pixel),
    summed over channels and averaged over its groups; then averaged over the batch (Qu et al.
    2019, ``LossVariance``). Vectorized with scatter sums; an image without groups contributes 0.
    The groups are the connected components of the inside class of the ternary target
    (:func:`.targets.variance_groups`), as in Qu et al.: not whole nuclei, whose boundary ring
    the cross-entropy pulls to another class.

    Parameters
    ----------
    probs : (B, C, H, W) probabilities.
    groups : (B, H, W) integer group ids, 0 = in no group.
    """
    b, c = probs.shape[:2]
    ids = groups.reshape(b, -1).long()
    fg = ids > 0
    if not bool(fg.any()):
        return probs.sum() * 0.0
    stride = int(ids.max()) + 1
    img = torch.arange(b, device=ids.device)[:, None].expand_as(ids)[fg]
    keys = img * stride + ids[fg]
    uniq, group = torch.unique(keys, return_inverse=True)
    vals = probs.reshape(b, c, -1).permute(0, 2, 1)[fg].float()  # (P, C)
    g = uniq.numel()
    n = torch.bincount(group, minlength=g).to(vals.dtype)
    s = torch.zeros(g, c, device=vals.device).index_add_(0, group, vals)
    mean = s / n[:, None]
    # Two-pass (centred) sum of squares: stable in float32 unlike E[x^2] - E[x]^2.
    ss = torch.zeros(g, c, device=vals.device).index_add_(0, group, (vals - mean[group]) ** 2)
    var = (ss / (n[:, None] - 1).clamp(min=1)).sum(1) * (n > 1)
    owner = uniq // stride
    per_img = torch.zeros(b, device=vals.device).index_add_(0, owner, var)
    count = torch.bincount(owner, minlength=b).to(vals.dtype)
    return (per_img / count.clamp(min=1)).mean().to(probs.dtype)


def var_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    groups: torch.Tensor,
    weight: torch.Tensor | None = None,
    alpha: float = 1.0,
) -> torch.Tensor:
    """varCE (Qu et al. 2019): weighted cross-entropy + ``alpha`` x :func:`instance_variance`.

    Parameters
    ----------
    logits : (B, C, H, W) raw scores.
    target : (B, H, W) class indices (ternary labels).
    groups : (B, H, W) variance groups (connected components of the inside class of ``target``).
    weight : (B, H, W) weight map or None.
    alpha : weight of the variance term (1 in the paper).
    """
    probs = torch.softmax(logits, dim=1)
    return weighted_cross_entropy(logits, target, weight) + alpha * instance_variance(probs, groups)


def _sobel_kernels(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    r = torch.arange(-(size // 2), size // 2 + 1, device=device, dtype=dtype)
    h, v = torch.meshgrid(r, r, indexing="xy")
    kh = h / (h * h + v * v + 1e-15)  # HoVer-Net's Sobel-like kernel: d/dx
    kv = v / (h * h + v * v + 1e-15)  # d/dy
    return torch.stack([kh, kv])[:, None]  # (2, 1, k, k)


def hv_gradients(hv: torch.Tensor, size: int = 5) -> torch.Tensor:
    """d/dx of the h channel and d/dy of the v channel, ``(B, 2, H, W)`` (HoVer-Net's 5x5 kernel)."""
    k = _sobel_kernels(size, hv.device, hv.dtype)
    return F.conv2d(hv, k, padding=size // 2, groups=2)


def hv_loss(
    pred: torch.Tensor, target: torch.Tensor, focus: torch.Tensor, msge_weight: float = 1.0
) -> torch.Tensor:
    """HoVer-Net HV loss: MSE over all pixels + ``msge_weight`` x MSE of the gradients on nuclei.

    Parameters
    ----------
    pred, target : (B, 2, H, W) horizontal and vertical maps.
    focus : (B, H, W) nuclear pixels (the gradient term is averaged over them).
    msge_weight : weight of the gradient term (1 in HoVer-Net's PyTorch release).
    """
    mse = F.mse_loss(pred, target)
    grad_err = (hv_gradients(pred) - hv_gradients(target.to(pred.dtype))) ** 2
    focus = focus.to(pred.dtype)[:, None]
    msge = (grad_err * focus).sum() / (2.0 * focus.sum() + 1e-8)
    return mse + msge_weight * msge
