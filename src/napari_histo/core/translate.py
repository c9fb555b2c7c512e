"""Unpaired stain translation (IHC <-> H&E) with a CycleGAN.

Domain A is IHC, domain B is H&E: ``G_ab`` translates IHC to H&E (``ihc2he``), ``G_ba`` the
other way (``he2ihc``). A model folder holds ``weights.safetensors`` (both generators, with the
architecture in the safetensors metadata), ``train_state.safetensors`` (discriminators, for
resuming), ``card.json`` and ``card.md``. torch is imported inside functions only.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import atomic_path, atomic_write_text
from .errors import HistoError, first_line
from .io import is_image_path, read_image, to_rgb_uint8
from .progress import Progress, ProgressGen, drain

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT = "napari-histo-cyclegan"
FORMAT_VERSION = 1
DEFAULT_MODEL = "ihc2he_default"
DIRECTIONS = ("ihc2he", "he2ihc")
WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "train_state.safetensors"

ImagesLike = str | os.PathLike | np.ndarray | Sequence[np.ndarray]


# --------------------------------------------------------------------------- networks


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


# --------------------------------------------------------------------------- model files


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
    from .resources import resource_path

    p = Path(path_or_name)
    if not p.exists() and len(p.parts) == 1:
        shipped = resource_path("translate", str(path_or_name))
        if shipped.exists():
            return shipped
    if not p.exists():
        raise HistoError(f"{path_or_name}: no such translation model (folder or .safetensors file)")
    return p


def _read_weights(path: Path) -> tuple[dict, dict]:
    """Tensors and metadata of one of our safetensors files, or a one-line HistoError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = first_line(exc)
        raise HistoError(
            f"{path.name}: not a readable safetensors weights file ({reason})"
        ) from None
    if meta.get("format") != FORMAT:
        raise HistoError(
            f"{path.name}: not a napari-histo translation model (format {meta.get('format')!r})"
        )
    return tensors, meta


def _sub_state(tensors: dict, prefix: str) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


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
    from .device import resolve_device

    if direction not in DIRECTIONS:
        raise HistoError(f"unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")
    path = _resolve_model_path(path_or_name)
    wfile = path / WEIGHTS_FILE if path.is_dir() else path
    if not wfile.is_file():
        raise HistoError(f"{path}: no {WEIGHTS_FILE} in this folder; not a translation model")
    tensors, meta = _read_weights(wfile)
    card: dict = {}
    card_file = wfile.parent / "card.json"
    if card_file.is_file():
        try:
            card = json.loads(card_file.read_text("utf-8"))
        except (OSError, ValueError):
            card = {}
    try:
        ngf, n_blocks = int(meta["ngf"]), int(meta["n_blocks"])
    except (KeyError, ValueError):
        raise HistoError(
            f"{wfile.name}: the architecture (ngf, n_blocks) is missing from its metadata"
        ) from None
    dev = resolve_device(device)
    net = build_generator(ngf, n_blocks)
    prefix = "G_ab" if direction == "ihc2he" else "G_ba"
    try:
        net.load_state_dict(_sub_state(tensors, prefix), strict=True)
    except RuntimeError:
        raise HistoError(
            f"{wfile.name}: the {prefix} weights do not fit a generator with ngf={ngf}, n_blocks={n_blocks}"
        ) from None
    net.to(dev).eval()
    return Translator(net=net, direction=direction, card=card, device=dev, path=path)


def _save_checkpoint(out: Path, nets: dict, arch: dict, card: dict) -> None:
    """Write the weights, the training state and the cards, each file atomically."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    meta.update({k: str(v) for k, v in arch.items()})

    def flat(names: tuple[str, ...]) -> dict:
        return {
            f"{n}.{k}": v.detach().cpu().contiguous()
            for n in names
            for k, v in nets[n].state_dict().items()
        }

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(flat(("G_ab", "G_ba")), str(tmp), metadata=meta)
    with atomic_path(out / STATE_FILE) as tmp:
        save_file(flat(("D_a", "D_b")), str(tmp), metadata=meta)
    atomic_write_text(out / "card.json", json.dumps(card, indent=2) + "\n")
    atomic_write_text(out / "card.md", card_markdown(card))


def card_markdown(card: dict) -> str:
    """A short human-readable model card from ``card.json``'s content."""
    lines = [f"# {card.get('name', 'CycleGAN translation model')}", ""]
    lines.append(
        "Unpaired CycleGAN (ResNet generators, 70x70 PatchGAN, LSGAN loss) between "
        "domain A = IHC and domain B = H&E, trained with napari-histo."
    )
    lines.append("")
    for key in ("data_a", "data_b", "license", "command"):
        if card.get(key):
            lines.append(f"- **{key}**: {card[key]}")
    arch = card.get("architecture", {})
    lines.append(f"- **architecture**: ngf={arch.get('ngf')}, n_blocks={arch.get('n_blocks')}")
    tr = card.get("training", {})
    keys = ("steps_done", "steps", "crop", "batch_size", "seed", "lr", "device", "seconds")
    lines.append("- **training**: " + ", ".join(f"{k}={tr[k]}" for k in keys if k in tr))
    if card.get("last_losses"):
        lines.append(
            "- **last losses**: "
            + ", ".join(f"{k}={v:.4g}" for k, v in card["last_losses"].items())
        )
    for extra in card.get("notes", []):
        lines.append(f"- {extra}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- data


def _load_images(src: ImagesLike, label: str) -> list[np.ndarray]:
    if isinstance(src, np.ndarray):
        if src.ndim == 4:
            return [to_rgb_uint8(a, f"{label}[{i}]") for i, a in enumerate(src)]
        return [to_rgb_uint8(src, label)]
    if isinstance(src, str | os.PathLike):
        folder = Path(src)
        if not folder.is_dir():
            raise HistoError(f"{folder}: not a folder of {label} images")
        files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p))
        images = []
        for f in files:
            try:
                images.append(read_image(f))
            except HistoError:
                continue  # a broken file in a training folder is skipped, not fatal
        if not images:
            raise HistoError(f"{folder}: no readable {label} images found")
        return images
    images = [to_rgb_uint8(a, f"{label}[{i}]") for i, a in enumerate(src)]
    if not images:
        raise HistoError(f"no {label} images given")
    return images


def _pad_to(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pad an (H, W, C) image at the bottom/right to at least (h, w): reflect, or edge for 1 px."""
    ph, pw = max(0, h - img.shape[0]), max(0, w - img.shape[1])
    if ph == 0 and pw == 0:
        return img
    mode = "reflect" if min(img.shape[:2]) >= 2 else "edge"
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)


class _CropSampler:
    """Random crops with flips and 90-degree rotations (histology has no up or left)."""

    def __init__(self, images: list[np.ndarray], crop: int, rng: np.random.Generator):
        self.images = [_pad_to(im, crop, crop) for im in images]
        areas = np.array([im.shape[0] * im.shape[1] for im in self.images], float)
        self.p = areas / areas.sum()
        self.crop = crop
        self.rng = rng

    def batch(self, n: int) -> np.ndarray:
        out = []
        for _ in range(n):
            im = self.images[self.rng.choice(len(self.images), p=self.p)]
            y = self.rng.integers(0, im.shape[0] - self.crop + 1)
            x = self.rng.integers(0, im.shape[1] - self.crop + 1)
            c = im[y : y + self.crop, x : x + self.crop]
            c = np.rot90(c, int(self.rng.integers(4)))
            if self.rng.random() < 0.5:
                c = c[:, ::-1]
            out.append(c)
        return np.stack(out)


def _to_tensor(batch: np.ndarray, device) -> torch.Tensor:
    import torch

    t = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    return (t / 127.5 - 1.0).to(device)


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    a = ((t.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round()
    return a.permute(0, 2, 3, 1).numpy().astype(np.uint8)


# --------------------------------------------------------------------------- training


def train_translator_iter(
    dir_a: ImagesLike,
    dir_b: ImagesLike,
    steps: int = 2000,
    crop: int = 128,
    batch_size: int = 1,
    ngf: int = 32,
    n_blocks: int = 6,
    ndf: int = 64,
    lr: float = 2e-4,
    decay_from: float = 0.5,
    lambda_cycle: float = 10.0,
    lambda_identity: float = 0.5,
    pool_size: int = 50,
    seed: int = 0,
    device: str = "auto",
    out: str | os.PathLike = "translator_model",
    resume: str | os.PathLike | None = None,
    save_every: int = 200,
    sample_every: int = 50,
    card: dict | None = None,
) -> ProgressGen[Path]:
    """Train a CycleGAN between domain A (IHC) and domain B (H&E); a progress generator.

    Parameters
    ----------
    dir_a, dir_b : folder, array or list of arrays
        Unpaired IHC (A) and H&E (B) images; random ``crop`` x ``crop`` patches are drawn.
    steps : int
        Total optimisation steps (including those of a resumed model).
    crop, batch_size : int
        Training patch size (a multiple of 4) and patches per step.
    ngf, n_blocks, ndf : int
        Generator width, residual blocks (6 or 9), discriminator width.
    lr, decay_from : float
        Adam learning rate, constant until ``decay_from * steps``, then linearly to 0.
    lambda_cycle, lambda_identity : float
        Cycle loss weight and identity weight (as a fraction of ``lambda_cycle``).
    pool_size : int
        Image buffer of generated images shown to the discriminators.
    seed : int
        Seeds crops, weights and the buffer.
    device : str
        ``auto``, ``cpu``, ``cuda``.
    out : folder
        Model folder; written atomically every ``save_every`` steps and at the end.
    resume : folder, optional
        A model folder to continue from (weights and step count; Adam moments restart).
    save_every, sample_every : int
        Checkpoint period, and period of the sample image (A | A->B | A->B->A) in ``payload``.
    card : dict, optional
        Extra fields for ``card.json`` (data, licence, command...).

    Yields
    ------
    Progress
        ``stage="train"``, losses and ``lr`` in ``metrics``. Closing the generator stops
        training between steps; the last checkpoint stays intact.

    Returns
    -------
    Path
        The model folder.
    """
    import torch
    from torch import nn

    from .device import resolve_device

    if crop % 4 or crop < 16:
        raise HistoError(f"crop must be a multiple of 4 and at least 16, got {crop}")
    if steps < 1 or batch_size < 1:
        raise HistoError("steps and batch_size must be at least 1")
    dev = resolve_device(device)
    out = Path(out)
    images_a = _load_images(dir_a, "IHC (A)")
    images_b = _load_images(dir_b, "H&E (B)")

    start = 0
    if resume is not None:
        rpath = _resolve_model_path(resume)
        rpath = rpath if rpath.is_dir() else rpath.parent
        tensors, meta = _read_weights(rpath / WEIGHTS_FILE)
        ngf, n_blocks = int(meta["ngf"]), int(meta["n_blocks"])
        ndf = int(meta.get("ndf", ndf))
        start = int(meta.get("steps_done", 0))
        if (rpath / STATE_FILE).is_file():
            tensors.update(_read_weights(rpath / STATE_FILE)[0])

    torch.manual_seed(seed + start)
    rng = np.random.default_rng(seed + start)
    nets = {
        "G_ab": build_generator(ngf, n_blocks),
        "G_ba": build_generator(ngf, n_blocks),
        "D_a": build_discriminator(ndf),
        "D_b": build_discriminator(ndf),
    }
    if resume is not None:
        for name, net in nets.items():
            sub = _sub_state(tensors, name)
            if sub:
                net.load_state_dict(sub)
    for net in nets.values():
        net.to(dev).train()

    opt_g = torch.optim.Adam(
        list(nets["G_ab"].parameters()) + list(nets["G_ba"].parameters()), lr=lr, betas=(0.5, 0.999)
    )
    opt_d = torch.optim.Adam(
        list(nets["D_a"].parameters()) + list(nets["D_b"].parameters()), lr=lr, betas=(0.5, 0.999)
    )
    pool_a, pool_b = ImagePool(pool_size, seed), ImagePool(pool_size, seed + 1)
    samp_a = _CropSampler(images_a, crop, rng)
    samp_b = _CropSampler(images_b, crop, rng)
    mse, l1 = nn.MSELoss(), nn.L1Loss()
    lam_id = lambda_identity * lambda_cycle
    decay_start = int(decay_from * steps)

    def lsgan(pred: torch.Tensor, real: bool) -> torch.Tensor:
        return mse(pred, torch.full_like(pred, 1.0 if real else 0.0))

    arch = {"ngf": ngf, "n_blocks": n_blocks, "ndf": ndf}
    base_card = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "domains": {"a": "ihc", "b": "he"},
        "architecture": {"generator": "resnet", **arch, "discriminator": "patchgan70"},
        **(card or {}),
    }
    t0 = time.perf_counter()
    metrics: dict[str, float] = {}
    step = start

    def checkpoint() -> None:
        c = dict(base_card)
        c["training"] = {
            **c.get("training", {}),
            "steps": steps,
            "steps_done": step,
            "crop": crop,
            "batch_size": batch_size,
            "seed": seed,
            "lr": lr,
            "decay_from": decay_from,
            "lambda_cycle": lambda_cycle,
            "lambda_identity": lambda_identity,
            "pool_size": pool_size,
            "device": str(dev),
            "seconds": round(time.perf_counter() - t0, 1),
            "n_images_a": len(images_a),
            "n_images_b": len(images_b),
        }
        c["last_losses"] = {k: round(v, 5) for k, v in metrics.items() if k != "lr"}
        _save_checkpoint(out, nets, {**arch, "steps_done": step}, c)

    while step < steps:
        cur_lr = (
            lr
            if step < decay_start
            else lr * max(0.0, (steps - step) / max(1, steps - decay_start))
        )
        for opt in (opt_g, opt_d):
            for g in opt.param_groups:
                g["lr"] = cur_lr
        real_a = _to_tensor(samp_a.batch(batch_size), dev)
        real_b = _to_tensor(samp_b.batch(batch_size), dev)

        # Generators: adversarial + cycle + identity; the discriminators are frozen here.
        for d in (nets["D_a"], nets["D_b"]):
            d.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        fake_b = nets["G_ab"](real_a)
        fake_a = nets["G_ba"](real_b)
        rec_a = nets["G_ba"](fake_b)
        rec_b = nets["G_ab"](fake_a)
        gan_ab = lsgan(nets["D_b"](fake_b), True)
        gan_ba = lsgan(nets["D_a"](fake_a), True)
        cyc_a = l1(rec_a, real_a) * lambda_cycle
        cyc_b = l1(rec_b, real_b) * lambda_cycle
        if lam_id > 0:
            idt_a = l1(nets["G_ba"](real_a), real_a) * lam_id
            idt_b = l1(nets["G_ab"](real_b), real_b) * lam_id
        else:
            idt_a = idt_b = torch.zeros((), device=dev)
        loss_g = gan_ab + gan_ba + cyc_a + cyc_b + idt_a + idt_b
        loss_g.backward()
        opt_g.step()

        for d in (nets["D_a"], nets["D_b"]):
            d.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        fb = pool_b.query(fake_b)
        fa = pool_a.query(fake_a)
        loss_d_b = 0.5 * (lsgan(nets["D_b"](real_b), True) + lsgan(nets["D_b"](fb), False))
        loss_d_a = 0.5 * (lsgan(nets["D_a"](real_a), True) + lsgan(nets["D_a"](fa), False))
        (loss_d_a + loss_d_b).backward()
        opt_d.step()

        step += 1
        metrics = {
            "loss_G": float(loss_g.detach()),
            "gan_ab": float(gan_ab.detach()),
            "gan_ba": float(gan_ba.detach()),
            "cycle_a": float(cyc_a.detach()),
            "cycle_b": float(cyc_b.detach()),
            "idt_a": float(idt_a.detach()),
            "idt_b": float(idt_b.detach()),
            "loss_D_a": float(loss_d_a.detach()),
            "loss_D_b": float(loss_d_b.detach()),
            "lr": cur_lr,
        }
        payload = None
        if sample_every and (step % sample_every == 0 or step == steps):
            trip = torch.cat([real_a[:1], fake_b[:1], rec_a[:1]], dim=3)
            payload = _to_uint8(trip)[0]
        if step == steps or (save_every and step % save_every == 0):
            checkpoint()
        yield Progress(step, steps, stage="train", metrics=metrics, payload=payload)
    if step == start:  # nothing to do (resumed at the end): still leave a complete folder
        checkpoint()
    return out


def train_translator(*args, **kwargs) -> Path:
    """Blocking :func:`train_translator_iter`; returns the model folder."""
    return drain(train_translator_iter(*args, **kwargs))


# --------------------------------------------------------------------------- inference


def _axis_starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(tile: int, overlap: int) -> np.ndarray:
    """1D blending weight: rises over ``overlap`` pixels at both ends, never exactly 0."""
    if overlap <= 0:
        return np.ones(tile, np.float32)
    i = np.arange(tile, dtype=np.float32)
    r = np.minimum(np.minimum(i + 1, tile - i) / (overlap + 1), 1.0)
    return r.astype(np.float32)


def translate_iter(
    image: np.ndarray,
    model: Translator | str | os.PathLike = DEFAULT_MODEL,
    tile: int = 256,
    overlap: int = 32,
    direction: str = "ihc2he",
    device: str = "auto",
) -> ProgressGen[np.ndarray]:
    """Translate an image tile by tile, blending overlaps; a progress generator.

    Parameters
    ----------
    image : array
        Any array :func:`~napari_histo.core.io.to_rgb_uint8` accepts (grayscale, RGBA, float...).
    model : Translator, folder or shipped name
        A loaded :class:`Translator`, or what :func:`load_translator` takes.
    tile, overlap : int
        Tile size (rounded up to a multiple of 4) and overlap between neighbouring tiles.
        The image is reflect-padded by ``overlap // 2`` so borders are not tile borders.
    direction : {"ihc2he", "he2ihc"}
        Used only when ``model`` is not yet loaded.
    device : str
        Used only when ``model`` is not yet loaded.

    Yields
    ------
    Progress
        One per tile (``stage="tile"``).

    Returns
    -------
    ndarray
        RGB uint8, same height and width as the input.
    """
    import torch

    rgb = to_rgb_uint8(image, "image")
    tr = model if isinstance(model, Translator) else load_translator(model, direction, device)
    tile = max(16, int(np.ceil(tile / 4) * 4))
    overlap = int(min(max(0, overlap), tile // 2))
    h, w = rgb.shape[:2]
    margin = overlap // 2
    # Pad: a margin on every side, then up to a multiple of 4 and at least one tile if small.
    ph = max(h + 2 * margin, 16)
    pw = max(w + 2 * margin, 16)
    ph, pw = (ph + 3) // 4 * 4, (pw + 3) // 4 * 4
    if ph > tile:
        ph = max(ph, tile)
    if pw > tile:
        pw = max(pw, tile)
    padded = _pad_sym(rgb, margin, ph - h - margin, margin, pw - w - margin)
    th, tw = min(tile, ph), min(tile, pw)
    stride_y, stride_x = max(4, th - overlap), max(4, tw - overlap)
    ys, xs = _axis_starts(ph, th, stride_y), _axis_starts(pw, tw, stride_x)
    wy, wx = _ramp(th, overlap if len(ys) > 1 else 0), _ramp(tw, overlap if len(xs) > 1 else 0)
    weight = wy[:, None] * wx[None, :]
    acc = np.zeros((ph, pw, 3), np.float32)
    wsum = np.zeros((ph, pw, 1), np.float32)
    total = len(ys) * len(xs)
    done = 0
    net, dev = tr.net, tr.device
    for y in ys:
        for x in xs:
            patch = padded[y : y + th, x : x + tw]
            with torch.inference_mode():
                pred = net(_to_tensor(patch[None], dev))[0]
            pred = ((pred.float().cpu().clamp(-1, 1) + 1.0) * 127.5).permute(1, 2, 0).numpy()
            acc[y : y + th, x : x + tw] += pred * weight[..., None]
            wsum[y : y + th, x : x + tw] += weight[..., None]
            done += 1
            yield Progress(done, total, stage="tile")
    res = acc / np.maximum(wsum, 1e-6)
    res = res[margin : margin + h, margin : margin + w]
    return np.clip(np.rint(res), 0, 255).astype(np.uint8)


def _pad_sym(img: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Reflect-pad (edge-pad an axis of 1 pixel); numpy repeats the reflection when needed."""
    ypad, xpad = (top, bottom), (left, right)
    if img.shape[0] >= 2:
        img = np.pad(img, (ypad, (0, 0), (0, 0)), mode="reflect")
    else:
        img = np.pad(img, (ypad, (0, 0), (0, 0)), mode="edge")
    if img.shape[1] >= 2:
        img = np.pad(img, ((0, 0), xpad, (0, 0)), mode="reflect")
    else:
        img = np.pad(img, ((0, 0), xpad, (0, 0)), mode="edge")
    return img


def translate(
    image: np.ndarray,
    model: Translator | str | os.PathLike = DEFAULT_MODEL,
    tile: int = 256,
    overlap: int = 32,
    direction: str = "ihc2he",
    device: str = "auto",
) -> np.ndarray:
    """Blocking :func:`translate_iter`: RGB uint8 of the input's height and width."""
    return drain(translate_iter(image, model, tile, overlap, direction, device))
