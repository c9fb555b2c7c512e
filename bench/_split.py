"""The validation split the benchmarks share: ``scripts/train_seg_default.py`` loaded as a module."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_script():
    """``scripts/train_seg_default.py`` (``load_split``, ``VALIDATION``, ``rescale_pairs``...)."""
    spec = importlib.util.spec_from_file_location(
        "train_seg_default", ROOT / "scripts" / "train_seg_default.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def split_with_20x(sets: str = "all80"):
    """(train, validation) pairs, the validation tiles followed by their 2x-downsampled copies
    (``name@0.5x``: how a 20x scanner shows the same tissue)."""
    script = train_script()
    train, val = script.load_split(sets)
    return train, val + script.rescale_pairs(val, 0.5)


def training_subset(train):
    """Every 3rd MoNuSeg and every 4th TNBC training tile: where post-processing settings and the
    magnification guess are chosen (the grids are slow on 2 cores)."""
    mon = [p for p in train if not p[0].startswith("tnbc")][::3]
    tnbc = [p for p in train if p[0].startswith("tnbc")][::4]
    return mon + tnbc


def training_subset_with_20x(train):
    """:func:`training_subset` of ``train`` followed by its 2x-downsampled copies (``name@0.5x``)."""
    sub = training_subset(train)
    return sub + train_script().rescale_pairs(sub, 0.5)


def shipped_models(card_key: str, skip_arch: tuple[str, ...] = ()) -> list[str]:
    """Names of the shipped models whose card has ``card_key``, the default first (so a bench's
    default list follows the registry instead of being edited when the default changes)."""
    from napari_histo.core.seg.registry import list_models

    infos = list_models(shipped_only=True)
    return [i.name for i in infos if i.card.get(card_key) and i.arch not in skip_arch]
