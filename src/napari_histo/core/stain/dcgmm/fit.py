"""Fitting a DCGMM, unsupervised, on random crops of any images (a resumable progress generator)."""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ... import color
from ...errors import HistoError
from ...progress import Progress
from ..classical import as_image_list, tissue_pixels
from .files import load_dcgmm
from .model import DCGMM, LOSSES, fast_dtype
from .normalizer import DCGMMNormalizer


def _random_crops(
    images: list[torch.Tensor], n: int, crop: int, rng: np.random.Generator
) -> torch.Tensor:
    """``n`` random crops (n, crop, crop, 3), each from a random image, randomly flipped/turned."""
    out = []
    for _ in range(n):
        im = images[int(rng.integers(len(images)))]
        y = int(rng.integers(im.shape[0] - crop + 1))
        x = int(rng.integers(im.shape[1] - crop + 1))
        c = im[y : y + crop, x : x + crop]
        if rng.random() < 0.5:
            c = c.flip(0)
        if rng.random() < 0.5:
            c = c.flip(1)
        c = torch.rot90(c, int(rng.integers(4)), dims=(0, 1))
        out.append(c)
    return torch.stack(out)


def _order_by_density(model: DCGMM, images: list[torch.Tensor], crop: int) -> np.ndarray:
    """Permute the last layer so classes run from lowest to highest mean density; returns it."""
    k = model.classes
    mass = np.zeros(k)
    dsum = np.zeros(k)
    with torch.inference_mode():
        for im in images[:16]:
            h, w = im.shape[:2]
            side = min(2 * crop, h, w) // model.multiple * model.multiple
            y, x = (h - side) // 2, (w - side) // 2
            c = im[y : y + side, x : x + side][None]
            hsd = color.rgb_to_hsd(c).permute(0, 3, 1, 2).contiguous()
            gamma = torch.softmax(model.logits(hsd[:, :1]), dim=1)
            mass += gamma.sum((0, 2, 3)).double().cpu().numpy()
            dsum += (gamma * hsd[:, :1]).sum((0, 2, 3)).double().cpu().numpy()
    mean_d = np.where(mass > 1e-6, dsum / np.maximum(mass, 1e-12), -1.0)
    order = np.argsort(mean_d, kind="stable")
    with torch.no_grad():
        conv = model.net.conv9
        idx = torch.as_tensor(order, device=conv.weight.device)
        conv.weight.copy_(conv.weight[idx].clone())
        conv.bias.copy_(conv.bias[idx].clone())
    return mean_d[order]


def _start_model(start: Any, classes: int, scale: int, seed: int) -> tuple[DCGMM, dict]:
    """The network to start from: the shipped one, a given normalizer's, or a new one."""
    if isinstance(start, DCGMMNormalizer):
        base = start
    elif start == "shipped":
        try:
            base = load_dcgmm(device="cpu")
        except HistoError:
            base = None
    elif start is None:
        base = None
    else:
        base = load_dcgmm(start, device="cpu")
    if base is not None and base.classes == classes and base.model.scale == scale:
        model = DCGMM(classes, scale)
        model.net.load_state_dict(
            {k: v.detach().cpu().clone() for k, v in base.model.net.state_dict().items()}
        )
        info = {"started_from": base.card.get("name", "a saved DCGMM")}
        if base.card.get("license"):
            info["license"] = base.card["license"]
        return model, info
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DCGMM(classes, scale)
    return model, {"started_from": f"random initialization (seed {seed})"}


def fit_dcgmm(
    images: Sequence[np.ndarray],
    steps: int = 200,
    device: str = "auto",
    seed: int = 0,
    classes: int = 3,
    batch_size: int = 4,
    crop: int = 256,
    lr: float = 1e-3,
    scale: int = 2,
    start: Any = "shipped",
    card: dict | None = None,
    precision: str = "auto",
    loss: str = "ours",
    max_seconds: float | None = None,
) -> Generator[Progress, None, DCGMMNormalizer]:
    """Fit a DCGMM on ``images``, unsupervised; yields one progress event per step.

    Closing the generator (a GUI's cancel) stops between two steps; nothing outside it is
    modified, so the previous normalizer stays valid.

    Parameters
    ----------
    images : list of arrays
        Any number of H&E images of any size (anything ``to_rgb_uint8`` accepts); smaller
        ones are padded to ``crop`` by edge replication.
    steps : int
        Adam steps, each on a batch of ``batch_size`` random crops.
    device : str
        ``auto``, ``cpu``, ``cuda``.
    seed : int
        Seeds the crop sampling and a new network's initialization (reproducible fits).
    classes : int
        Number of Gaussian components (default 3: background, surrounding tissue, nuclei).
    crop : int
        Crop side in pixels (rounded down to a multiple of ``4 * scale``).
    lr : float
        Adam learning rate.
    scale : int
        Network resolution divisor (see the module documentation).
    start : "shipped", None, path or DCGMMNormalizer
        Fine-tune the shipped model (default; falls back to a new network when it is missing or
        has another number of classes), start from a new network (None), or from a saved one.
    card : dict, optional
        Extra fields for the model card (data, licence, command...).
    precision : str
        ``auto`` (bfloat16 convolutions where the hardware has them), ``float32``.
    loss : str
        ``ours`` (per-image M-step, exact mixture likelihood) or ``paper`` (the reference
        code's: one M-step over the batch, per-pixel likelihood clipped at 1); see
        :meth:`DCGMM.forward`.
    max_seconds : float, optional
        Wall-clock cap on the training steps: the fit ends after the step that passes it and
        returns a normalizer as usual; the card records the steps done.

    Returns
    -------
    DCGMMNormalizer
        With classes ordered by density; not yet fitted to a template.
    """
    from ...device import resolve_device

    if not images:
        raise HistoError("no images to fit the DCGMM on")
    if steps < 1 or batch_size < 1:
        raise HistoError(f"steps and batch size must be at least 1 (got {steps}, {batch_size})")
    if loss not in LOSSES:
        raise HistoError(f"unknown DCGMM loss {loss!r}; choose one of {', '.join(LOSSES)}")
    dev = resolve_device(device)
    rgbs = as_image_list(list(images))
    tensors = [color.as_tensor(im, dev) for im in rgbs]
    with torch.inference_mode():
        _, _, note = tissue_pixels(tensors)
    if note.startswith("no tissue"):
        raise HistoError(f"images to fit the DCGMM on: {note}")
    model, origin = _start_model(start, int(classes), int(scale), seed)
    multiple = model.multiple
    largest = max(min(t.shape[:2]) for t in tensors)
    crop = max(multiple, min(int(crop), largest) // multiple * multiple)
    padded = []
    for t in tensors:
        ph, pw = max(0, crop - t.shape[0]), max(0, crop - t.shape[1])
        if ph or pw:
            t = F.pad(t.permute(2, 0, 1)[None].float(), (0, pw, 0, ph), mode="replicate")
            t = t[0].permute(1, 2, 0).to(torch.uint8)
        padded.append(t.contiguous())
    model.to(dev).train()
    if dev.type == "cpu":
        model.to(memory_format=torch.channels_last)
    model.amp_dtype = fast_dtype(dev, precision)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    yield Progress(
        0,
        steps,
        "fit",
        message=f"DCGMM: {len(rgbs)} images, {batch_size} crops of {crop} px a step",
    )
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        batch = _random_crops(padded, batch_size, crop, rng)
        hsd = color.rgb_to_hsd(batch).permute(0, 3, 1, 2).contiguous()
        objective = model(hsd, loss=loss)[-1]
        opt.zero_grad(set_to_none=True)
        objective.backward()
        opt.step()
        value = float(objective.detach())
        if not math.isfinite(value):
            raise HistoError(
                f"the DCGMM fit diverged at step {step} (loss {value}); try a lower lr"
            )
        losses.append(value)
        yield Progress(step, steps, "fit", metrics={"loss": value})
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
    seconds = time.perf_counter() - t0
    model.eval()
    densities = _order_by_density(model, padded, crop)
    tail = losses[-min(20, len(losses)) :]
    info = dict(card or {})
    info.setdefault("license", origin.pop("license", None) or info.get("license"))
    info["training"] = {
        "steps": len(losses),
        "steps_planned": steps,
        "loss": loss,
        "batch_size": batch_size,
        "crop": crop,
        "lr": lr,
        "seed": seed,
        "classes": int(classes),
        "scale": int(scale),
        "n_images": len(rgbs),
        "device": dev.type,
        "precision": str(model.amp_dtype or torch.float32).replace("torch.", ""),
        "seconds": round(seconds, 1),
        "final_loss": round(float(np.mean(tail)), 5),
        "final_loss_over": f"mean of the last {len(tail)} steps ({loss} loss)",
        "class_mean_density": [round(float(v), 4) for v in densities],
        **origin,
    }
    if info.get("license") is None:
        info.pop("license")
    return DCGMMNormalizer(model, device=dev, card=info, precision=precision)


def fit_dcgmm_blocking(
    images: Sequence[np.ndarray], steps: int = 200, callback=None, **kwargs
) -> DCGMMNormalizer:
    """:func:`fit_dcgmm` drained to its end; ``callback(event)`` sees every progress event."""
    from ...progress import drain

    return drain(fit_dcgmm(images, steps=steps, **kwargs), callback)
