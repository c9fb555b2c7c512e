"""Translation model files: load a generator (cached) and save a CycleGAN's weights and card.

Domain A is IHC, domain B is H&E: ``G_ab`` translates IHC to H&E (``ihc2he``), ``G_ba`` the
other way (``he2ihc``). A model folder holds ``weights.safetensors`` (both generators, with the
architecture in the safetensors metadata), ``train_state.safetensors`` (discriminators, for
resuming), ``card.json`` and ``card.md``. torch is imported inside functions only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import weights
from ..errors import HistoError
from ..weights import WEIGHTS_FILE
from .nets import build_generator

FORMAT = "napari-histo-cyclegan"
FORMAT_VERSION = 1
DEFAULT_MODEL = "ihc2he_default"
DIRECTIONS = ("ihc2he", "he2ihc")
STATE_FILE = "train_state.safetensors"


@dataclass
class Translator:
    """A loaded generator for one direction.

    Attributes
    ----------
    net : torch.nn.Module
        The generator, in eval mode, on ``device``.
    direction : str
        ``"ihc2he"`` or ``"he2ihc"``.
    card : dict
        The model card (architecture, data, training settings, metrics).
    device : torch.device
    path : Path or None
        The model folder or weights file it came from.
    """

    net: Any
    direction: str
    card: dict = field(default_factory=dict)
    device: Any = None
    path: Path | None = None


def _resolve_model_path(path_or_name: str | os.PathLike) -> Path:
    from ..resources import resource_path

    p = Path(path_or_name)
    if not p.exists() and len(p.parts) == 1:
        shipped = resource_path("translate", str(path_or_name))
        if shipped.exists():
            return shipped
    if not p.exists():
        raise HistoError(f"{path_or_name}: no such translation model (folder or .safetensors file)")
    return p


def load_translator(
    path_or_name: str | os.PathLike = DEFAULT_MODEL,
    direction: str = "ihc2he",
    device: str = "auto",
) -> Translator:
    """Load one generator of a translation model (weights only, from safetensors).

    Parameters
    ----------
    path_or_name : str or path
        A model folder, its ``weights.safetensors`` file, or the name of a shipped model
        (default ``"ihc2he_default"``).
    direction : {"ihc2he", "he2ihc"}
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises
    ------
    HistoError
        Missing path, a file that is not one of our models, or an unknown direction.
    """
    from ..device import resolve_device

    if direction not in DIRECTIONS:
        raise HistoError(f"unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")
    path = _resolve_model_path(path_or_name)
    wfile = path / WEIGHTS_FILE if path.is_dir() else path
    if not wfile.is_file():
        raise HistoError(f"{path}: no {WEIGHTS_FILE} in this folder; not a translation model")
    tr = _load_cached(wfile, resolve_device(device), direction)
    return Translator(net=tr.net, direction=direction, card=tr.card, device=tr.device, path=path)


@weights.cached_loader(maxsize=4)
def _load_cached(wfile: str, device: str, direction: str) -> Translator:
    import torch

    wfile = Path(wfile)
    tensors, meta = read_weights(wfile)
    try:
        ngf, n_blocks = int(meta["ngf"]), int(meta["n_blocks"])
    except (KeyError, ValueError):
        raise HistoError(
            f"{wfile.name}: the architecture (ngf, n_blocks) is missing from its metadata"
        ) from None
    net = build_generator(ngf, n_blocks)
    prefix = "G_ab" if direction == "ihc2he" else "G_ba"
    try:
        net.load_state_dict(weights.sub_state(tensors, prefix), strict=True)
    except RuntimeError:
        raise HistoError(
            f"{wfile.name}: the {prefix} weights do not fit a generator with ngf={ngf}, n_blocks={n_blocks}"
        ) from None
    dev = torch.device(device)
    net.to(dev).eval()
    card = weights.read_card(wfile.parent)
    return Translator(net=net, direction=direction, card=card, device=dev, path=wfile.parent)


def read_weights(path: str | os.PathLike) -> tuple[dict, dict]:
    """Tensors and metadata of a translation model's weights or training state."""
    return weights.read_safetensors(path, FORMAT, "translation model")


def save_checkpoint(out: Path, nets: dict, arch: dict, card: dict) -> None:
    """Write the generators, the discriminators (training state) and the cards, each atomically."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **arch}

    def flat(names: tuple[str, ...]) -> dict:
        return {f"{n}.{k}": v for n in names for k, v in nets[n].state_dict().items()}

    weights.write_safetensors(out / WEIGHTS_FILE, flat(("G_ab", "G_ba")), meta)
    weights.write_safetensors(out / STATE_FILE, flat(("D_a", "D_b")), meta)
    weights.write_card(out, card)


SUMMARY = (
    "Unpaired CycleGAN (ResNet generators, 70x70 PatchGAN, LSGAN loss) between domain A = IHC "
    "and domain B = H&E, trained with napari-histo."
)
