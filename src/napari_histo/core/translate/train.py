"""Training a CycleGAN (IHC <-> H&E) on unpaired tiles: a resumable, cancellable generator.

LSGAN losses, cycle weight 10, identity 0.5, a 50-image history pool, Adam with the learning rate
decaying linearly over the second half, as Zhu et al. (2017). torch is imported inside functions.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
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

    @classmethod
    def like(cls, other: _CropSampler, rng: np.random.Generator) -> _CropSampler:
        """The same (already padded) images and weights, drawn with another generator."""
        new = cls.__new__(cls)
        new.images, new.p, new.crop, new.rng = other.images, other.p, other.crop, rng
        return new

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

    t = torch.from_numpy(np.ascontiguousarray(batch))
    if t.device.type == "cpu" and torch.device(device).type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    else:
        t = t.to(device)
    return t.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _batches(
    samp_a: _CropSampler, samp_b: _CropSampler, n: int, workers: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (A, B) uint8 batches; with ``workers`` > 0 drawn ahead in background threads.

    Each thread has its own samplers' generator (seeded from the main one), so the draws stay
    reproducible per thread; numpy releases the GIL in the copies, which is all a crop costs.
    """
    if workers <= 0:
        while True:
            yield samp_a.batch(n), samp_b.batch(n)
    q: queue.Queue = queue.Queue(maxsize=4 * workers)
    stop = threading.Event()
    seeds = samp_a.rng.integers(0, 2**31, size=workers)

    def work(seed: int) -> None:
        rng = np.random.default_rng(int(seed))
        a, b = _CropSampler.like(samp_a, rng), _CropSampler.like(samp_b, rng)
        while not stop.is_set():
            item = (a.batch(n), b.batch(n))
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue

    threads = [threading.Thread(target=work, args=(s,), daemon=True) for s in seeds]
    for t in threads:
        t.start()
    try:
        while True:
            yield q.get()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=1.0)


def _lr_factor(step_fraction: float, decay_from: float) -> float:
    """CycleGAN's schedule: 1 until ``decay_from``, then linear to 0 at fraction 1."""
    if step_fraction < decay_from:
        return 1.0
    return max(0.0, (1.0 - step_fraction) / max(1e-9, 1.0 - decay_from))


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
    max_seconds: float | None = None,
    save_every_seconds: float | None = None,
    workers: int = 0,
    amp: bool = False,
    metrics_every: int = 1,
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
        Adam learning rate, constant until ``decay_from`` of the run, then linearly to 0. The
        run's progress is the larger of the step fraction and, with ``max_seconds``, the time
        fraction, so a run cut by its time budget has decayed all the same.
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
    max_seconds : float, optional
        Wall-time budget of the training loop (from its first step); training stops by itself
        when it is spent and writes the final checkpoint.
    save_every_seconds : float, optional
        Also checkpoint when this much time has passed since the last checkpoint.
    workers : int
        Background threads drawing crops ahead of the GPU (0: drawn in the loop).
    amp : bool
        bfloat16 autocast on CUDA (losses in float32); ignored on the CPU.
    metrics_every : int
        Read the losses back from the device every this many steps (each read waits for the
        GPU); in between, ``metrics`` repeat the last values read (``lr`` is always current),
        and a divergence is noticed at the next read.

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
    metrics_every = max(1, int(metrics_every))
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
    budget = float(max_seconds) if max_seconds else None
    use_amp = bool(amp) and dev.type == "cuda"

    def autocast():
        import contextlib

        if use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def lsgan(pred: torch.Tensor, real: bool) -> torch.Tensor:
        pred = pred.float()
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
            "amp": "bf16" if use_amp else None,
            "max_seconds": budget,
            "stopped_by_time_budget": stopped_by_time,
            "seconds": round(time.perf_counter() - t0, 1),
            "n_images_a": len(images_a),
            "n_images_b": len(images_b),
        }
        c["last_losses"] = {k: round(v, 5) for k, v in metrics.items() if k != "lr"}
        save_checkpoint(out, nets, {**arch, "steps_done": step}, c)

    def _train_step(cur_lr: float, batch_a: np.ndarray, batch_b: np.ndarray, fetch: bool):
        for opt in (opt_g, opt_d):
            for g in opt.param_groups:
                g["lr"] = cur_lr
        real_a = _to_tensor(batch_a, dev)
        real_b = _to_tensor(batch_b, dev)

        # Generators: adversarial + cycle + identity; the discriminators are frozen here.
        for d in (nets["D_a"], nets["D_b"]):
            d.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        with autocast():
            fake_b = nets["G_ab"](real_a)
            fake_a = nets["G_ba"](real_b)
            rec_a = nets["G_ba"](fake_b)
            rec_b = nets["G_ab"](fake_a)
            gan_ab = lsgan(nets["D_b"](fake_b), True)
            gan_ba = lsgan(nets["D_a"](fake_a), True)
            cyc_a = l1(rec_a.float(), real_a) * lambda_cycle
            cyc_b = l1(rec_b.float(), real_b) * lambda_cycle
            if lam_id > 0:
                idt_a = l1(nets["G_ba"](real_a).float(), real_a) * lam_id
                idt_b = l1(nets["G_ab"](real_b).float(), real_b) * lam_id
            else:
                idt_a = idt_b = torch.zeros((), device=dev)
        loss_g = gan_ab + gan_ba + cyc_a + cyc_b + idt_a + idt_b
        loss_g.backward()
        opt_g.step()

        for d in (nets["D_a"], nets["D_b"]):
            d.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        fb = pool_b.query(fake_b.float())
        fa = pool_a.query(fake_a.float())
        with autocast():
            loss_d_b = 0.5 * (lsgan(nets["D_b"](real_b), True) + lsgan(nets["D_b"](fb), False))
            loss_d_a = 0.5 * (lsgan(nets["D_a"](real_a), True) + lsgan(nets["D_a"](fa), False))
        (loss_d_a + loss_d_b).backward()
        opt_d.step()

        payload = None
        if sample_every and ((step + 1) % sample_every == 0 or step + 1 == steps):
            trip = torch.cat([real_a[:1], fake_b[:1].float(), rec_a[:1].float()], dim=3)
            payload = _to_uint8(trip)[0]
        if not fetch:
            return None, payload
        names = ("loss_G", "gan_ab", "gan_ba", "cycle_a", "cycle_b", "idt_a", "idt_b")
        names += ("loss_D_a", "loss_D_b")
        losses = (loss_g, gan_ab, gan_ba, cyc_a, cyc_b, idt_a, idt_b, loss_d_a, loss_d_b)
        # one device->host copy per step, not nine synchronising float() calls
        values = torch.stack([x.detach().float() for x in losses]).tolist()
        if not np.isfinite(values[0]):
            raise HistoError(
                f"training diverged (generator loss {values[0]}) at step {step + 1}; "
                "try a lower learning rate or turn off amp"
            )
        m = dict(zip(names, values, strict=True))
        return m, payload

    stopped_by_time = False
    last_save = time.perf_counter()
    batches = _batches(samp_a, samp_b, batch_size, int(workers))
    try:
        while step < steps:
            elapsed = time.perf_counter() - t0
            if budget is not None and elapsed >= budget and step > start:
                stopped_by_time = True
                break
            frac = step / steps
            if budget is not None:
                frac = max(frac, elapsed / budget)
            cur_lr = lr * _lr_factor(frac, decay_from)
            fetch = step == start or (step + 1) % metrics_every == 0 or step + 1 == steps
            new, payload = _train_step(cur_lr, *next(batches), fetch)
            metrics = {**(new or metrics), "lr": cur_lr}
            step += 1
            now = time.perf_counter()
            save = step == steps or (save_every and step % save_every == 0)
            if save_every_seconds and now - last_save >= save_every_seconds:
                save = True
            if save:
                checkpoint()
                last_save = time.perf_counter()
            yield Progress(step, steps, stage="train", metrics=metrics, payload=payload)
    finally:
        batches.close()
    if stopped_by_time or step == start:
        # time budget spent (or nothing to do after a resume): still leave a complete folder
        checkpoint()
    return out


def train_translator(*args, **kwargs) -> Path:
    """Blocking :func:`train_translator_iter`; returns the model folder."""
    return drain(train_translator_iter(*args, **kwargs))
