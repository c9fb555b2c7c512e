"""The segmentation model registry: shipped models, the user's versions, save and load.

A model is a folder::

    MODEL/weights.safetensors   the network's tensors; metadata: format, arch, kwargs (JSON)
    MODEL/card.json             the model card: architecture, input normalization, training data,
                                licence, settings, validation metrics, parent model, created time
    MODEL/card.md               the same for people
    MODEL/train_state.safetensors  (optional) optimizer state, to resume or extend training

Shipped models live in ``resources/seg/<name>/``; ``resources/seg/registry.json`` says which one
``"default"`` stands for. Weights are read with safetensors only (never pickle), every file is
written atomically, and loaded models are cached (keyed on the weights file, its modification
time and the device), so the second segmentation is instant and a dask worker loads a model once.

torch is imported inside functions only: importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import weights
from ..errors import HistoError
from ..weights import WEIGHTS_FILE, read_card

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .spec import ArchSpec

FORMAT = "napari-histo-seg"
FORMAT_VERSION = 1
STATE_FILE = "train_state.safetensors"
SHIPPED_SUBDIR = "seg"
REGISTRY_FILE = "registry.json"
DEFAULT_ALIAS = "default"


@dataclass(frozen=True)
class ModelInfo:
    """A model one can choose (from :func:`list_models`).

    Attributes
    ----------
    name : str
        The shipped name or the folder name of a user version.
    ref : str
        The model folder (what :func:`load_model` takes).
    shipped : bool
        True for models in ``resources/seg``.
    created : float
        Creation time (seconds since the epoch; 0 when unknown).
    arch : str
        Architecture name (``unet``, ``fullnet``...).
    default : bool
        True for the shipped model that ``"default"`` stands for.
    card : dict
        The model card.
    """

    name: str
    ref: str
    shipped: bool = False
    created: float = 0.0
    arch: str = ""
    default: bool = False
    card: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass
class LoadedModel:
    """A network ready for inference: in eval mode, on its device, with its card.

    Attributes
    ----------
    net : torch.nn.Module
    spec : ArchSpec
        Its architecture's contract (predict, invert_tta, instances...).
    card : dict
    device : torch.device
    path : Path
        The model folder.
    name : str
    """

    net: Any
    spec: Any
    card: dict = field(default_factory=dict)
    device: Any = None
    path: Path | None = None
    name: str = ""

    @property
    def arch(self) -> str:
        return str(getattr(self.spec, "name", self.card.get("arch", "")))


# ----------------------------------------------------------------------------- locating


def shipped_dir() -> Path:
    """``resources/seg``: one folder per shipped model, plus ``registry.json``."""
    from ..resources import resource_path

    return resource_path(SHIPPED_SUBDIR)


def _registry() -> dict:
    try:
        reg = json.loads((shipped_dir() / REGISTRY_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return reg if isinstance(reg, dict) else {}


def default_model_name() -> str | None:
    """The shipped model that ``"default"`` stands for (None when none is shipped)."""
    name = _registry().get(DEFAULT_ALIAS)
    return str(name) if name and (shipped_dir() / str(name) / WEIGHTS_FILE).is_file() else None


def retired_models() -> dict[str, str]:
    """Models shipped once and no longer: name -> the shipped model that superseded it."""
    retired = _registry().get("retired", {})
    return {str(k): str(v) for k, v in retired.items()} if isinstance(retired, dict) else {}


def _shipped_names() -> list[str]:
    root = shipped_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / WEIGHTS_FILE).is_file())


def user_model_dir() -> Path:
    """Where fine-tuned model versions are kept (``NAPARI_HISTO_MODELS`` or ``~/.napari-histo/models``)."""
    env = os.environ.get("NAPARI_HISTO_MODELS")
    return Path(env) if env else Path.home() / ".napari-histo" / "models"


def _user_dir(user_dir: str | os.PathLike | None) -> Path:
    return Path(user_dir) if user_dir is not None else user_model_dir()


def _locate(ref: str | os.PathLike) -> tuple[Path, Path]:
    """The model folder and its weights file, or a one-line HistoError."""
    text = str(ref).strip() if ref is not None else DEFAULT_ALIAS
    if text in ("", DEFAULT_ALIAS):
        name = default_model_name()
        if name is None:
            raise HistoError(
                "no default segmentation model is installed (resources/seg has none); "
                "give a model folder with --model"
            )
        folder = shipped_dir() / name
        return folder, folder / WEIGHTS_FILE
    p = Path(text).expanduser()
    if not p.exists() and len(p.parts) == 1:
        for cand in (shipped_dir() / text, _user_dir(None) / text):
            if (cand / WEIGHTS_FILE).is_file():
                return cand, cand / WEIGHTS_FILE
    if not p.exists():
        retired = retired_models()  # read only when the name matched nothing
        if text in retired:
            successor, seen = retired[text], {text}
            while successor in retired and successor not in seen:  # superseded in turn
                seen.add(successor)
                successor = retired[successor]
            raise HistoError(
                f"{text}: this model is no longer shipped; {successor} superseded it "
                "(higher validation figures, see its card.md); use that or default"
            )
        names = ", ".join([DEFAULT_ALIAS, *_shipped_names()])
        raise HistoError(
            f"{text}: no such segmentation model (give a model folder, its {WEIGHTS_FILE}, "
            f"or one of: {names})"
        )
    if p.is_dir():
        if not (p / WEIGHTS_FILE).is_file():
            raise HistoError(
                f"{p}: no {WEIGHTS_FILE} in this folder; not a napari-histo segmentation model"
            )
        return p, p / WEIGHTS_FILE
    return p.parent, p


def resolve_model(ref: str | os.PathLike = DEFAULT_ALIAS) -> Path:
    """The folder of a model given as ``"default"``, a shipped name, a folder or a weights file.

    Raises
    ------
    HistoError
        When nothing by that name or path exists, or the folder holds no weights.
    """
    return _locate(ref)[0]


def list_models(
    user_dir: str | os.PathLike | None = None, *, shipped_only: bool = False
) -> list[ModelInfo]:
    """Shipped models (the default first), then the user's model versions, newest first.

    Parameters
    ----------
    user_dir : path, optional
        Folder of fine-tuned versions (default: ``NAPARI_HISTO_MODELS`` or
        ``~/.napari-histo/models``). Hidden folders (unfinished training) are skipped.
    shipped_only : bool
        Only the models shipped with the package (benchmarks score these, whatever the
        user has trained).
    """
    default = default_model_name()
    shipped = []
    for name in _shipped_names():
        folder = shipped_dir() / name
        card = read_card(folder)
        shipped.append(
            ModelInfo(
                name=name,
                ref=str(folder),
                shipped=True,
                created=float(card.get("created", 0.0) or 0.0),
                arch=str(card.get("arch", "")),
                default=name == default,
                card=card,
            )
        )
    shipped.sort(key=lambda i: (not i.default, i.name))
    if shipped_only:
        return shipped
    mine = []
    root = _user_dir(user_dir)
    if root.is_dir():
        for folder in root.iterdir():
            if folder.name.startswith(".") or not (folder / WEIGHTS_FILE).is_file():
                continue
            card = read_card(folder)
            created = (
                float(card.get("created", 0.0) or 0.0) or (folder / WEIGHTS_FILE).stat().st_mtime
            )
            mine.append(
                ModelInfo(
                    name=folder.name,
                    ref=str(folder),
                    created=created,
                    arch=str(card.get("arch", "")),
                    card=card,
                )
            )
    mine.sort(key=lambda i: i.created, reverse=True)
    return shipped + mine


# ----------------------------------------------------------------------------- reading


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (on the CPU) and metadata of a segmentation model's weights file.

    Raises
    ------
    HistoError
        One line naming the file when it is not safetensors or not a napari-histo model.
    """
    return weights.read_safetensors(path, FORMAT, "segmentation model")


def read_model(ref: str | os.PathLike = DEFAULT_ALIAS) -> tuple[str, dict, dict, dict, Path]:
    """``(arch, kwargs, state_dict, card, folder)`` of a model, without building it (uncached)."""
    folder, wfile = _locate(ref)
    tensors, meta = read_weights(wfile)
    try:
        arch = meta["arch"]
        kwargs = json.loads(meta.get("kwargs", "{}"))
    except (KeyError, ValueError):
        raise HistoError(
            f"{wfile.name}: the architecture (arch, kwargs) is missing from its metadata"
        ) from None
    card = read_card(folder)
    return arch, dict(kwargs), tensors, card, folder


def build_from_state(
    arch: str, kwargs: dict, state: dict, source: str = "weights"
) -> tuple[nn.Module, ArchSpec]:
    """Build ``arch`` with ``kwargs`` and load ``state`` into it (strict), on the CPU."""
    from .spec import get_arch

    spec = get_arch(arch)
    try:
        net = spec.build(**kwargs)
    except TypeError as exc:
        raise HistoError(f"{source}: cannot build {arch} with {kwargs}: {exc}") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError:
        raise HistoError(
            f"{source}: the weights do not fit a {arch} network with {kwargs}"
        ) from None
    return net, spec


#: Inference settings a model card may set (chosen on its validation split), per architecture
#: attribute: detector thresholds, the merging of multiple inference, the instances' sizes and
#: seeds.
INFERENCE_SETTINGS = (
    "score_threshold",
    "mask_threshold",
    "merge_iou",
    "min_votes",
    "min_size",
    "relative_min_size",
    "relative_cap",
    "seed_threshold",
    "grow",
    "fg_threshold",
    "marker_threshold",
    "hv_sigma",
)


def with_inference_settings(spec: ArchSpec, settings: dict) -> ArchSpec:
    """A copy of ``spec`` with the card's ``inference`` settings (unknown keys are ignored)."""
    import copy

    known = {k: v for k, v in settings.items() if k in INFERENCE_SETTINGS and hasattr(spec, k)}
    if not known:
        return spec
    spec = copy.copy(spec)
    for k, v in known.items():
        setattr(spec, k, v)
    return spec


def load_model(ref: Any = DEFAULT_ALIAS, device: Any = "auto") -> LoadedModel:
    """Load a segmentation model for inference (cached).

    Parameters
    ----------
    ref : str, path or LoadedModel
        ``"default"``, a shipped model name, a user version's name, a model folder or its
        ``weights.safetensors``. A :class:`LoadedModel` is returned as it is.
    device : str or torch.device
        ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns
    -------
    LoadedModel
        Shared between calls with the same file and device: do not train it in place.

    Raises
    ------
    HistoError
        Missing model, a file that is not one of our models, weights that do not fit.
    """
    if isinstance(ref, LoadedModel):
        return ref
    from ..device import resolve_device

    _, wfile = _locate(ref)
    return _load_cached(wfile, resolve_device(device))


@weights.cached_loader(maxsize=8)
def _load_cached(wfile: str, device: str) -> LoadedModel:
    import torch

    arch, kwargs, state, card, folder = read_model(wfile)
    net, spec = build_from_state(arch, kwargs, state, Path(wfile).name)
    spec = with_inference_settings(spec, card.get("inference") or {})
    dev = torch.device(device)
    net.to(dev).eval()
    return LoadedModel(net=net, spec=spec, card=card, device=dev, path=folder, name=folder.name)


def clear_model_cache() -> None:
    """Forget every cached model (frees their memory)."""
    weights.clear_cache()


# ----------------------------------------------------------------------------- writing


def state_tensors(net: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of a network's state dict, ready for safetensors."""
    return cpu_tensors(net.state_dict())


def cpu_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CPU copy of named tensors (a state dict, a moving average), ready for safetensors."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_model(
    folder: str | os.PathLike,
    net: nn.Module | dict,
    arch: str,
    kwargs: dict | None = None,
    card: dict | None = None,
) -> Path:
    """Write a model folder: weights, ``card.json`` and ``card.md``, each file atomically.

    Parameters
    ----------
    folder : path
        The model folder (created when missing).
    net : nn.Module or dict
        The network, or its state dict.
    arch : str
        Registry name of its architecture.
    kwargs : dict
        What ``spec.build`` was called with (JSON-serialisable).
    card : dict, optional
        Card fields (data, licence, training settings, metrics, parent...); ``format``,
        ``arch``, ``kwargs``, ``input`` and ``created`` are filled in.

    Returns
    -------
    Path
        The folder.
    """
    from .spec import INPUT_MEAN, INPUT_STD

    folder = Path(folder)
    kwargs = dict(kwargs or {})
    tensors = dict(net) if isinstance(net, dict) else state_tensors(net)
    full = {
        "name": folder.name,
        **(card or {}),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "kwargs": kwargs,
        "parameters": int(sum(v.numel() for v in tensors.values())),
        "input": {
            "rgb": "uint8 RGB scaled to [0, 1], then (x - mean) / std per channel",
            "mean": list(INPUT_MEAN),
            "std": list(INPUT_STD),
        },
    }
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "kwargs": json.dumps(kwargs, sort_keys=True),
    }
    weights.write_safetensors(folder / WEIGHTS_FILE, tensors, meta)
    weights.write_card(folder, full)
    return folder
