"""Training a CycleGAN (IHC <-> H&E) on unpaired tiles: a resumable, cancellable generator.

LSGAN losses, cycle weight 10, identity 0.5, a 50-image history pool, Adam with the learning rate
decaying linearly over the second half, as Zhu et al. (2017). torch is imported inside functions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import weights
from ..errors import HistoError
from ..io import is_image_path, read_image, to_rgb_uint8
from ..progress import Progress, ProgressGen, drain
from ..weights import WEIGHTS_FILE
from .model import (
    FORMAT,
    FORMAT_VERSION,
    STATE_FILE,
    SUMMARY,
    _resolve_model_path,
    read_weights,
    save_checkpoint,
)
from .nets import ImagePool, build_discriminator, build_generator

if TYPE_CHECKING:
    import torch

ImagesLike = str | os.PathLike | np.ndarray | Sequence[np.ndarray]


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

    from ..device import resolve_device

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
        tensors, meta = read_weights(rpath / WEIGHTS_FILE)
        ngf, n_blocks = int(meta["ngf"]), int(meta["n_blocks"])
        ndf = int(meta.get("ndf", ndf))
        start = int(meta.get("steps_done", 0))
        if (rpath / STATE_FILE).is_file():
            tensors.update(read_weights(rpath / STATE_FILE)[0])

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
            sub = weights.sub_state(tensors, name)
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
        "name": out.name,
        "summary": SUMMARY,
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
        save_checkpoint(out, nets, {**arch, "steps_done": step}, c)

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
