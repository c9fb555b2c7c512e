"""The contract every segmentation architecture fulfils, and the registry of architectures.

Inference, training and the model registry only talk to an :class:`ArchSpec`; each architecture
module (``unet``, ``fullnet``, ``hovernet``, ``maskrcnn``) defines one and registers it here.

The flow, for every architecture alike::

    rgb uint8 (B, H, W, 3) --to_input--> float tensor (B, 3, H, W)
        training:  spec.make_targets(instance labels) per image -> collated dict of tensors
                   loss = spec.train_loss(model, x, targets)
        inference: maps = spec.predict(model, x)       # dict name -> (B, C, H, W) float, activated
                   (tiles are blended map by map; multiple inference, spec.tta unless the
                   caller chooses, un-does each flip/rotation with spec.invert_tta, then averages)
                   labels, confidence = spec.instances(maps of one image as numpy (C, H, W))

Maps must be *blendable*: averaging two predictions of the same pixel must be meaningful
(probabilities, distances), which is what lets tiles overlap and test-time augmentations merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import HistoError

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Input normalization of every architecture (ImageNet statistics; recorded in model cards).
INPUT_MEAN = (0.485, 0.456, 0.406)
INPUT_STD = (0.229, 0.224, 0.225)


def to_input(rgb: np.ndarray | torch.Tensor, device: Any = None) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` or ``(B, H, W, 3)`` (numpy or tensor) -> normalized ``(B, 3, H, W)``."""
    import torch

    t = torch.as_tensor(np.asarray(rgb) if not isinstance(rgb, torch.Tensor) else rgb)
    if t.ndim == 3:
        t = t[None]
    t = t.to(device=device).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(INPUT_MEAN, device=t.device).view(1, 3, 1, 1)
    std = torch.tensor(INPUT_STD, device=t.device).view(1, 3, 1, 1)
    return (t - mean) / std


class ArchSpec(Protocol):
    """What an architecture provides. Implementations are plain classes registered by name."""

    #: Registry name, e.g. ``"unet"``.
    name: str
    #: Side lengths of inputs must be multiples of this (inference pads to it).
    size_multiple: int
    #: Multiple inference when the caller does not choose (``segment_iter(tta=None)``): False,
    #: True (the 8 flips and rotations) or 4 (the flips). A spec without it means False.
    tta: bool | int

    def build(self, **kwargs: Any) -> nn.Module:
        """A fresh network; ``kwargs`` are recorded in the model card and passed again on load."""

    def make_targets(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Training targets of one ``(H, W)`` instance-label image (numpy, no batch axis)."""

    def train_loss(
        self, model: nn.Module, x: torch.Tensor, targets: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Scalar loss of a batch (``targets`` are :meth:`make_targets` outputs, stacked)."""

    def predict(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Blendable activated maps ``name -> (B, C, H, W)`` of an input batch (eval mode)."""

    def invert_tta(
        self, maps: dict[str, torch.Tensor], k: int, flip: bool
    ) -> dict[str, torch.Tensor]:
        """Undo an input transform on predicted maps.

        The input was ``rot90(flip(x) if flip else x, k, dims=(2, 3))``; return the maps as if
        predicted on ``x`` itself (vector-valued maps such as HV distances also change sign or
        swap channels here).
        """

    def instances(self, maps: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Instance labels ``(H, W)`` uint32 and per-pixel confidence ``(H, W)`` float32 in [0, 1]
        from one image's maps (numpy ``(C, H, W)`` each)."""


def invert_spatial(maps: dict[str, torch.Tensor], k: int, flip: bool) -> dict[str, torch.Tensor]:
    """The purely spatial inverse of ``rot90(flip(x), k)`` (correct for scalar maps)."""
    import torch

    out = {}
    for key, m in maps.items():
        m = torch.rot90(m, -k, dims=(2, 3))
        out[key] = torch.flip(m, dims=(3,)) if flip else m
    return out


@dataclass
class _Registry:
    specs: dict[str, ArchSpec]


_REGISTRY = _Registry({})
ARCH_MODULES = ("unet", "fullnet", "hovernet", "maskrcnn")


def register(spec: ArchSpec) -> ArchSpec:
    """Add an architecture to the registry (called at import of its module)."""
    _REGISTRY.specs[spec.name] = spec
    return spec


def get_arch(name: str) -> ArchSpec:
    """The :class:`ArchSpec` called ``name`` (imports its module on first use)."""
    import importlib

    key = str(name).lower()
    if key not in _REGISTRY.specs and key in ARCH_MODULES:
        importlib.import_module(f"{__package__}.{key}")
    if key not in _REGISTRY.specs:
        raise HistoError(f"unknown architecture {name!r}; choose one of {', '.join(ARCH_MODULES)}")
    return _REGISTRY.specs[key]
