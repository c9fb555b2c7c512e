"""DCGMM files: load the shipped or a saved model (weights, template statistics, card)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ... import weights
from ...errors import HistoError
from ...weights import WEIGHTS_FILE
from ..classical import SourceStats
from .model import CARD_FILE, DCGMM, DEFAULT_MODEL, FORMAT
from .normalizer import DCGMMNormalizer


def _read_card(wfile: Path) -> dict:
    candidates = [wfile.parent / CARD_FILE] if wfile.name == WEIGHTS_FILE else []
    candidates.append(wfile.with_suffix(".json"))
    for c in candidates:
        if c.is_file():
            try:
                card = json.loads(c.read_text("utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(card, dict) and card.get("format") == FORMAT:
                return card
    return {}


def default_model_path() -> Path:
    """The shipped model's weights file."""
    from ...resources import resource_path

    return resource_path("stain", DEFAULT_MODEL, WEIGHTS_FILE)


def load_dcgmm(path: str | os.PathLike | None = None, device: str = "auto") -> DCGMMNormalizer:
    """Load a DCGMM from its safetensors file (default: the shipped ``dcgmm_default``).

    Raises
    ------
    HistoError
        Missing file, or a file that is not a napari-histo DCGMM (one line, names the file).
    """
    from ...device import resolve_device

    device = resolve_device(device)  # a bad device name is the first thing to report
    p = default_model_path() if path is None else Path(path)
    if p.is_dir():
        p = p / WEIGHTS_FILE
    if not p.is_file():
        if path is None:
            raise HistoError(
                f"the shipped DCGMM ({p}) is missing; reinstall napari-histo or run "
                "scripts/fit_dcgmm_default.py"
            )
        raise HistoError(f"{p}: no such file")
    tensors, meta = weights.read_safetensors(p, FORMAT, "DCGMM normalizer", cache=True)
    try:
        classes, scale = int(meta["classes"]), int(meta["scale"])
        names = json.loads(meta.get("class_names", "[]"))
    except (KeyError, ValueError):
        raise HistoError(f"{p.name}: the DCGMM settings are missing from its metadata") from None
    model = DCGMM(classes, scale)
    try:
        net_state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        model.net.load_state_dict(net_state, strict=True)
    except RuntimeError:
        raise HistoError(
            f"{p.name}: its weights do not fit a DCGMM with {classes} classes"
        ) from None
    card = _read_card(p)
    card = {k: v for k, v in card.items() if k not in ("template", "weights")}
    norm = DCGMMNormalizer(model, device=device, card=card, class_names=names)
    if "template.mean" in tensors:
        norm.target = SourceStats(
            "dcgmm",
            {
                k: tensors[f"template.{k}"].double().numpy().copy()
                for k in ("weight", "mean", "std")
            },
        )
    norm.source_path = p
    return norm
