"""Training and fine-tuning segmentation models: ``data`` (pairs, split, patch sampler),
``checkpoint`` (resumable state) and ``loop`` (the generator that trains)."""

from .data import PatchSampler, hed_jitter, load_pairs, split_validation
from .loop import MONUSEG_LICENSE, default_lr, train, train_iter, validate

__all__ = [
    "MONUSEG_LICENSE",
    "PatchSampler",
    "default_lr",
    "hed_jitter",
    "load_pairs",
    "split_validation",
    "train",
    "train_iter",
    "validate",
]
