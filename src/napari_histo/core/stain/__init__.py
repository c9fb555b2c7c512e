"""Stain normalization: one factory for DCGMM, Macenko, Reinhard and Vahadane.

Usage (``get_normalizer`` and ``load_normalizer`` are this package's two entry points)::

    norm = get_normalizer("macenko").fit(template)     # or a list of template regions
    out = norm.transform(image)
    norm.save("lab_template.json")
    same = load_normalizer("lab_template.json")

``get_normalizer("dcgmm")`` returns the shipped DCGMM (fitted on public H&E tiles, see
``resources/stain/dcgmm_default/card.md``), ready to ``fit`` to a template; :func:`fit_dcgmm`
fits a new one on your own images (a generator of progress events). Importing this package
does not import torch; the implementations load on first use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import HistoError

if TYPE_CHECKING:
    from collections.abc import Generator

    from ..progress import Progress
    from .classical import StainNormalizer
    from .dcgmm import DCGMMNormalizer

#: The normalization methods, and the one default every face uses.
METHODS = ("dcgmm", "macenko", "reinhard", "vahadane")
DEFAULT_METHOD = "dcgmm"

#: A JSON normalizer larger than this is not one of ours.
_MAX_JSON_BYTES = 16 * 1024 * 1024


def get_normalizer(
    name: str, device: str = "auto", **kwargs: Any
) -> StainNormalizer | DCGMMNormalizer:
    """A new, unfitted normalizer by method name (``dcgmm``: the shipped fitted network).

    Parameters
    ----------
    name : str
        ``dcgmm``, ``macenko``, ``reinhard`` or ``vahadane`` (case-insensitive).
    device : str
        ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
    **kwargs
        Method settings, e.g. ``alpha`` (Macenko), ``lam`` (Vahadane).

    Raises
    ------
    HistoError
        For an unknown method name.
    """
    key = str(name).strip().lower()
    if key == "dcgmm":
        from .dcgmm import load_dcgmm

        return load_dcgmm(device=device, **kwargs)
    if key not in METHODS:
        raise HistoError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    from .classical import CLASSICAL

    return CLASSICAL[key](device=device, **kwargs)


def fit_dcgmm(
    images: list, steps: int = 200, device: str = "auto", seed: int = 0, **kwargs: Any
) -> Generator[Progress, None, DCGMMNormalizer]:
    """Fit a DCGMM on ``images`` (generator of progress; returns the normalizer).

    See :func:`napari_histo.core.stain.dcgmm.fit_dcgmm` for every option.
    """
    from .dcgmm import fit_dcgmm as _fit

    return (yield from _fit(images, steps=steps, device=device, seed=seed, **kwargs))


def fit_dcgmm_blocking(images: list, steps: int = 200, **kwargs: Any) -> DCGMMNormalizer:
    """:func:`fit_dcgmm` run to the end (for scripts); ``callback`` gets every event."""
    from .dcgmm import fit_dcgmm_blocking as _fit

    return _fit(images, steps=steps, **kwargs)


def load_normalizer(
    path: str | os.PathLike, device: str = "auto"
) -> StainNormalizer | DCGMMNormalizer:
    """Load a normalizer written by ``.save`` (JSON, or a DCGMM's safetensors / card JSON).

    A DCGMM model folder (``weights.safetensors`` + ``card.json``) and the name of a shipped
    model (``dcgmm_default``) are accepted too. Nothing is ever unpickled.

    Raises
    ------
    HistoError
        One line naming the file: missing, unreadable, or not a napari-histo normalizer.
    """
    from .dcgmm import DEFAULT_MODEL, WEIGHTS_FILE, load_dcgmm
    from .dcgmm import FORMAT as DCGMM_FORMAT

    p = Path(path)
    if not p.exists() and str(path) == DEFAULT_MODEL:
        return load_dcgmm(device=device)
    if not p.exists():
        raise HistoError(f"{path}: no such file")
    if p.is_dir():
        if (p / WEIGHTS_FILE).is_file():
            return load_dcgmm(p / WEIGHTS_FILE, device=device)
        raise HistoError(f"{p}: a folder without {WEIGHTS_FILE}; not a saved normalizer")
    try:
        with open(p, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise HistoError(f"{p.name}: cannot read ({exc.strerror or exc})") from None
    if head.lstrip()[:1] != b"{":
        # safetensors starts with an 8-byte header length, then a JSON header.
        return load_dcgmm(p, device=device)
    if p.stat().st_size > _MAX_JSON_BYTES:
        raise HistoError(f"{p.name}: too large to be a saved normalizer")
    try:
        data = json.loads(p.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise HistoError(f"{p.name}: not a napari-histo normalizer (unreadable JSON)") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == DCGMM_FORMAT:
        weights = p.parent / str(data.get("weights") or p.with_suffix(".safetensors").name)
        if not weights.is_file():
            raise HistoError(f"{p.name}: its DCGMM weights file {weights.name} is missing")
        return load_dcgmm(weights, device=device)
    from .classical import FORMAT, from_json

    if fmt != FORMAT:
        raise HistoError(f"{p.name}: not a napari-histo normalizer (format {fmt!r})")
    return from_json(data, device=device, source=p.name)


__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "fit_dcgmm",
    "fit_dcgmm_blocking",
    "get_normalizer",
    "load_normalizer",
]
