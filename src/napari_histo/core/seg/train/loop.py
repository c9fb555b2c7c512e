"""The training loop: training and fine-tuning segmentation models from (image, instance labels) pairs.

One loop serves both: from scratch (``init="none"``) or from a parent model (``init`` = a model
name or folder, whose architecture is kept). It is a generator of progress events:

* ``Progress(stage="step")`` after every optimisation step (``metrics={"loss", "lr"}``),
* ``Progress(stage="epoch")`` after every epoch (``loss`` and, with validation, ``val_aji``,
  ``val_dice``, ``val_f1``, ``val_pq``),

and returns the model folder. Training happens in a hidden work folder beside ``out``
(``.<name>.partial``) holding an atomic checkpoint after every epoch; only a finished run is
renamed to ``out``. Closing the generator (cancel) removes the work folder, so no new model
appears; an interrupt (Ctrl-C) or a crash leaves it, and ``resume=True`` continues from it.
``resume=True`` on a finished model folder continues training it up to ``epochs``.

Patches are sampled at random from the training images with augmentations: the 8 dihedral
transforms, haematoxylin/eosin/DAB jitter (Tellez et al. 2018), small brightness/contrast
changes and a small scale jitter. Early stopping watches the validation AJI.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import HistoError
from ...progress import Progress, drain
from .checkpoint import (
    CHECKPOINT_FILE,
    _read_checkpoint,
    _restore_optimizer,
    _sub,
    _write_checkpoint,
)
from .data import (
    PatchSampler,
    _as_named_pairs,
    batch_stream,
    load_pairs,
    split_validation,
    to_device,
)

MONUSEG_LICENSE = "CC BY-NC-SA 4.0"


def default_lr(init: Any) -> float:
    """The learning rate policy: 1e-3 for a network trained from scratch, 2e-4 for fine-tuning."""
    return 1e-3 if _is_scratch(init) else 2e-4


def _is_scratch(init: Any) -> bool:
    return init is None or str(init).lower() in ("none", "scratch", "")


def _training_amp(dev: Any) -> Any:
    """The autocast dtype for training: the device policy, but never float16 (no loss scaling)."""
    import torch

    from ...device import amp_dtype

    dtype = amp_dtype(dev)
    return None if dtype == torch.float16 else dtype


def _lr_at(step: int, total: int, lr: float, warmup: int, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 5 % over the steps (or the time budget, if sooner)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = max((step - warmup) / max(1, total - warmup), time_fraction)
    return lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


@contextlib.contextmanager
def _in_eval(net: Any, spec: Any, device: Any, name: str):
    """``net`` as a LoadedModel in eval mode for the block; its training mode comes back after."""
    from ..registry import LoadedModel

    was_training = net.training
    net.eval()
    try:
        yield LoadedModel(net=net, spec=spec, card={}, device=device, name=name)
    finally:
        net.train(was_training)


def _parent_disagreement(
    net: Any, spec: Any, device: Any, pairs: list[tuple[str, np.ndarray, np.ndarray]], tile: Any
) -> Generator[Progress, None, list[np.ndarray]]:
    """Where each pair's labels differ from ``net``'s own segmentation (the corrections)."""
    from ..inference import segment_iter
    from ..metrics import changed_regions

    masks = []
    with _in_eval(net, spec, device, "parent") as model:
        for k, (name, img, lab) in enumerate(pairs):
            yield Progress(k, len(pairs), stage="corrections", message=f"comparing {name}")
            pred = (yield from segment_iter(img, model, tta=False, tile=tile)).labels
            masks.append(changed_regions(lab, pred))
    yield Progress(len(pairs), len(pairs), stage="corrections")
    return masks


def _update_ema(ema_state: dict, net: Any, decay: float) -> None:
    """One step of the weights' moving average (integer buffers, e.g. batch counts, copied)."""
    import torch

    with torch.no_grad():
        for k, v in net.state_dict().items():
            e = ema_state[k]
            if e.dtype.is_floating_point:
                e.lerp_(v.detach(), 1.0 - decay)
            else:
                e.copy_(v)


@contextlib.contextmanager
def _averaged(net: Any, ema_state: dict | None):
    """``net`` holds the moving-average weights for the block (nothing changes without one)."""
    if ema_state is None:
        yield net
        return
    raw = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(ema_state)
    try:
        yield net
    finally:
        net.load_state_dict(raw)


def validate(
    net: Any,
    spec: Any,
    device: Any,
    val: list[tuple[str, np.ndarray, np.ndarray]],
    tile: Any = None,
) -> dict:
    """Segment every validation pair with ``net`` and score it (mean and per image)."""
    import warnings

    from ..inference import segment_iter
    from ..metrics import mean_scores, score_images

    def predict(img: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # No multiple inference: it would multiply the cost of every validation.
            return drain(segment_iter(img, model, tta=False, tile=tile)).labels

    with _in_eval(net, spec, device, "training") as model:
        per = score_images(val, predict)
    mean = mean_scores(per) if per else {}
    return {**mean, "per_image": per}


def _license(license: str | None, parent_card: dict, data: str) -> str:
    if license:
        return license
    parent = str(parent_card.get("license", "") or "")
    if "NC-SA" in parent or "monuseg" in data.lower():
        return f"{MONUSEG_LICENSE} (derived from MoNuSeg 2018; non-commercial, share-alike)"
    if parent:
        return f"{parent} (inherited from the parent model), plus the terms of the training data"
    return "the licence of the training data (user-supplied)"


def lineage(parent_card: dict) -> dict:
    """How the parent was made, and its parents before it, for a continued model's card.

    A retired parent's card leaves the repository; the child's card keeps the way back to the
    from-scratch run: ``parent_command``/``parent_training``, and ``ancestors`` (oldest first).
    """
    if not parent_card:
        return {}
    out: dict = {
        "parent_command": str(parent_card.get("command", "") or ""),
        "parent_training": dict(parent_card.get("training", {}) or {}),
    }
    older = list(parent_card.get("ancestors", []) or [])
    if parent_card.get("parent_command") or parent_card.get("parent_training"):
        older.append(
            {
                "name": parent_card.get("parent", "") or "",
                "command": parent_card.get("parent_command", "") or "",
                "training": parent_card.get("parent_training", {}) or {},
            }
        )
    if older:
        out["ancestors"] = older
    return out


# Card fields a continued model keeps from its parent: it segments at the same pixel size, with
# the same post-processing and magnification guess, unless the caller's ``card`` says otherwise.
INHERITED = ("mpp", "inference", "scale_guess")


def inherited(parent_card: dict, parent: str | None = None) -> dict:
    """What a continued model's card takes over from its parent's (see ``INHERITED``).

    The magnification guess's calibration was measured on the parent: the card says whose it
    is (the first model that had it), since a model tuned on other scans may need its own.
    """
    out = {k: parent_card[k] for k in INHERITED if parent_card.get(k) is not None}
    guess = out.get("scale_guess")
    if parent and isinstance(guess, dict) and not str(guess.get("how", "")).startswith("inherited"):
        how = guess.get("how") or "calibrated"
        out["scale_guess"] = {
            **guess,
            "how": f"inherited from {parent}, whose area this is ({how}); a model tuned on other "
            "scans can be recalibrated with bench/scale_guess.py --model FOLDER",
        }
    return out


def train_iter(
    pairs: Sequence | None = None,
    out: str | os.PathLike = "model",
    init: str | os.PathLike | None = "default",
    epochs: int = 10,
    lr: float | None = None,
    val_pairs: Sequence | None = None,
    device: Any = "auto",
    seed: int = 0,
    arch: str | None = None,
    *,
    images: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
    arch_kwargs: dict | None = None,
    patch: int = 256,
    batch_size: int = 4,
    steps_per_epoch: int | None = None,
    val_fraction: float = 0.2,
    patience: int | None = 5,
    keep: str = "best",
    augment: bool = True,
    color_jitter: float = 0.05,
    weight_decay: float = 1e-4,
    resume: bool = False,
    overwrite: bool = False,
    max_seconds: float | None = None,
    data: str | None = None,
    license: str | None = None,
    card: dict | None = None,
    tile: Any = None,
    threads: int | None = None,
    amp: bool | None = None,
    scale_range: tuple[float, float] | None = None,
    blur: float = 0.0,
    elastic: float = 0.0,
    workers: int = 0,
    focus: bool = False,
    loss_patience: int | None = None,
    ema: float | None = None,
) -> Generator[Progress, None, Path]:
    """Train or fine-tune a segmentation model; yields progress, returns the model folder.

    Parameters
    ----------
    pairs : sequence
        ``(image, labels)`` or ``(name, image, labels)`` in memory. Or give ``images`` and
        ``masks`` folders instead.
    out : path
        The model folder to write (must not exist unless ``overwrite`` or ``resume``).
    init : str or None
        ``"default"`` (the shipped model), a model name or folder to fine-tune, or
        ``"none"`` to train ``arch`` from scratch.
    epochs : int
        Maximum number of epochs (an epoch = ``steps_per_epoch`` steps; by default as many
        patches as cover the training images once).
    lr : float, optional
        Peak learning rate (AdamW; linear warm-up, cosine decay to 5 %); default
        :func:`default_lr` (1e-3 from scratch, 2e-4 when fine-tuning).
    val_pairs : sequence, optional
        Validation pairs; otherwise ``val_fraction`` of the pairs is held out.
    device, seed :
        Torch device (``auto``, ``cpu``, ``cuda``) and the seed of every random choice.
    arch : str, optional
        Architecture when training from scratch (default ``unet``). Fine-tuning keeps the
        parent's architecture (a different ``arch`` is refused).
    arch_kwargs : dict, optional
        Passed to ``spec.build`` when training from scratch.
    patch, batch_size, steps_per_epoch :
        Patch side, patches per step, steps per epoch.
    augment, color_jitter :
        Augment the patches; strength of the haematoxylin/eosin/DAB jitter (relative scale
        and shift of each stain channel; 0.05 is mild, 0.15 strong).
    patience : int or None
        Stop after this many epochs without a better validation AJI (None: never).
    keep : {"best", "last"}
        Which weights are saved: the best validation AJI, or the last epoch's.
    resume : bool
        Continue an interrupted run (its hidden work folder) or a finished model at ``out``.
    max_seconds : float, optional
        Training time budget: the learning rate decays over it (or over the epochs, whichever
        ends first) and training stops (and saves) once it is spent.
    data, license, card :
        What the model card says about the training data and licence; extra card fields.
    threads : int, optional
        ``torch.set_num_threads`` for the run.
    amp : bool, optional
        Mixed precision (bfloat16 autocast) for the forward pass.
        Default: on CUDA, and on CPUs with native bfloat16 (AVX512-BF16 / AMX), where it
        about doubles the speed.
    scale_range : (float, float), optional
        Resize patches by a log-uniform factor in this range (default about 0.91-1.1);
        ``(0.5, 1.5)`` teaches a 40x-trained model 20x tissue.
    blur : float
        Probability of a Gaussian blur augmentation per patch.
    elastic : float
        Probability of an elastic deformation per patch (smooth displacements up to 6 px).
    workers : int
        Background processes that make the augmented batches (0: the training loop makes
        them). On a GPU, 2-4 keep it busy; the batches are then seeded per worker, not per epoch.
    focus : bool
        Fine-tuning only: segment the training images with the parent first and draw half of
        the patches around pixels where the given labels differ from its segmentation
        (:func:`~napari_histo.core.seg.metrics.changed_regions`): the user's corrections.
    loss_patience : int, optional
        Stop once the epoch's mean training loss has not improved by 1 % for this many epochs
        (the training pairs' own plateau; no validation needed).
    ema : float, optional
        Keep an exponential moving average of the weights with this decay per step (e.g.
        0.999); validation scores, and the model keeps, the average instead of the last step's
        weights. It starts from the parent's (or the initial) weights.

    Returns
    -------
    Path
        The model folder (``out``).
    """
    import torch

    from ...device import resolve_device
    from ..registry import (
        STATE_FILE,
        build_from_state,
        read_model,
        save_model,
        state_tensors,
        with_inference_settings,
    )
    from ..spec import get_arch

    t_start = time.perf_counter()
    out = Path(out)
    work = out.with_name(f".{out.name}.partial")
    if keep not in ("best", "last"):
        raise HistoError(f"keep must be 'best' or 'last', got {keep!r}")
    if int(epochs) < 1:
        raise HistoError(f"epochs must be at least 1, got {epochs}")
    if ema is not None and not 0.0 < float(ema) < 1.0:
        raise HistoError(f"ema must be a decay between 0 and 1 (e.g. 0.999), got {ema}")

    # Data.
    named: list[tuple[str, np.ndarray, np.ndarray]] = []
    if images is not None or masks is not None:
        if images is None or masks is None:
            raise HistoError("give both an images folder and a masks folder")
        named += load_pairs(images, masks)
    if pairs is not None:
        named += _as_named_pairs(list(pairs), "pair")
    if not named:
        raise HistoError("no training pairs given")
    if val_pairs is not None:
        train_set, val_set = named, _as_named_pairs(list(val_pairs), "val")
    else:
        train_set, val_set = split_validation(named, val_fraction, seed)
    data = data or f"{len(named)} user-supplied image/label pairs"

    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(int(threads))

    # Model: resumed, fine-tuned from a parent, or fresh.
    ckpt_path = None
    if resume:
        for cand in (work / CHECKPOINT_FILE, out / STATE_FILE):
            if cand.is_file():
                ckpt_path = cand
                break
        if ckpt_path is None:
            raise HistoError(f"{out}: nothing to resume (no checkpoint of an earlier run)")
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise HistoError(f"{out}: already exists; choose a new model folder (or resume it)")

    state_meta: dict = {}
    ckpt_tensors: dict = {}
    parent_card: dict = {}
    parent_lineage: dict = {}
    parent_fields: dict = {}
    parent = None
    if ckpt_path is not None:
        ckpt_tensors, state_meta = _read_checkpoint(ckpt_path)
        arch_name, kwargs = state_meta["arch"], dict(state_meta["kwargs"])
        net, spec = build_from_state(arch_name, kwargs, _sub(ckpt_tensors, "net"), ckpt_path.name)
        parent = state_meta.get("parent")
        parent_card = {"license": state_meta.get("parent_license", "")}
        parent_lineage = dict(state_meta.get("parent_lineage", {}))
        parent_fields = dict(state_meta.get("parent_fields", {}))
    elif _is_scratch(init):
        arch_name = (arch or "unet").lower()
        spec = get_arch(arch_name)
        kwargs = dict(arch_kwargs or {})
        torch.manual_seed(seed)
        net = spec.build(**kwargs)
    else:
        arch_name, kwargs, state, parent_card, pfolder = read_model(init)
        if arch and arch.lower() != arch_name:
            raise HistoError(
                f"the parent model {pfolder.name} is a {arch_name}; fine-tuning keeps its "
                f"architecture (drop --arch {arch}, or train from scratch with --init none)"
            )
        net, spec = build_from_state(arch_name, kwargs, state, pfolder.name)
        # Models trained before the loop named them carry their work folder's name (".x.partial").
        named = str(parent_card.get("name") or "")
        parent = named if named and not named.startswith(".") else pfolder.name
        parent_lineage = lineage(parent_card)
        parent_fields = inherited(parent_card, parent)
    # Validate as the model will segment: with the post-processing settings its card inherits.
    spec = with_inference_settings(spec, parent_fields.get("inference") or {})
    net.to(dev).train()
    # Mixed precision by the device policy, unless asked off or the architecture trains in
    # float32 (``spec.train_autocast = False``).
    use_amp = amp if amp is not None else getattr(spec, "train_autocast", True)
    amp_dtype = _training_amp(dev) if use_amp else None

    focus_masks = None
    if focus and parent is not None and ckpt_path is None:
        focus_masks = yield from _parent_disagreement(net, spec, dev, train_set, tile)
    m = int(getattr(spec, "size_multiple", 1) or 1)
    patch = max(m, -(-int(patch) // m) * m)
    sampler = PatchSampler(
        train_set,
        spec,
        patch,
        augment=augment,
        hed_sigma=color_jitter,
        scale_range=scale_range,
        blur=blur,
        elastic=elastic,
        focus=focus_masks,
    )
    if steps_per_epoch is None:
        px = sum(lab.size for _, _, lab in train_set)
        steps_per_epoch = int(np.clip(round(px / (patch * patch * batch_size)), 1, 500))
    steps_per_epoch = int(steps_per_epoch)
    total_steps = int(epochs) * steps_per_epoch
    warmup = 0 if parent else min(100, max(1, total_steps // 20))
    if lr is None:
        lr = default_lr(None if parent is None else "parent")
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)

    epoch = int(state_meta.get("epoch", 0))
    step = int(state_meta.get("step", 0))
    history: list[dict] = list(state_meta.get("history", []))
    best_aji = state_meta.get("best_aji")
    best_epoch = state_meta.get("best_epoch")
    best_val = state_meta.get("best_val") or {}
    bad_epochs = int(state_meta.get("bad_epochs", 0))
    best_loss = state_meta.get("best_loss")
    flat_epochs = int(state_meta.get("flat_epochs", 0))
    trained_s = float(state_meta.get("seconds", 0.0))
    best_state = _sub(ckpt_tensors, "best") or None
    if ckpt_tensors:
        _restore_optimizer(opt, ckpt_tensors, state_meta.get("optimizer", {}))
    # The moving average lives on the training device beside the network (resumed from the
    # checkpoint when the interrupted run kept one).
    ema_state = None
    if ema is not None:
        saved_ema = _sub(ckpt_tensors, "ema")
        ema_state = {
            k: (saved_ema[k].to(v.device, v.dtype) if k in saved_ema else v.detach().clone())
            for k, v in net.state_dict().items()
        }
    if epoch >= int(epochs) and ckpt_path is not None and ckpt_path.parent == out:
        return out  # a finished model already trained this far

    settings = {
        "epochs": int(epochs),
        "steps_per_epoch": steps_per_epoch,
        "patch": patch,
        "batch_size": int(batch_size),
        "loader_workers": int(workers),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "seed": int(seed),
        "augment": (
            f"dihedral, HED jitter {color_jitter:g}, brightness/contrast, scale "
            f"{sampler.scale_range[0]:.2f}-{sampler.scale_range[1]:.2f}"
            + (f", blur p={blur:g}" if blur > 0 else "")
            + (f", elastic p={elastic:g}" if elastic > 0 else "")
            if augment
            else "none"
        ),
        "patience": patience,
        "loss_patience": loss_patience,
        "focus": "half the patches where the labels differ from the parent's"
        if focus_masks
        else "none",
        "keep": keep,
        "ema": float(ema) if ema is not None else None,
        "device": str(dev),
        "mixed_precision": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "off",
    }

    def meta_now() -> dict:
        return {
            "arch": arch_name,
            "kwargs": kwargs,
            "epoch": epoch,
            "step": step,
            "history": history,
            "best_aji": best_aji,
            "best_epoch": best_epoch,
            "best_val": best_val,
            "bad_epochs": bad_epochs,
            "best_loss": best_loss,
            "flat_epochs": flat_epochs,
            "seconds": trained_s + (time.perf_counter() - t_start),
            "parent": parent,
            "parent_license": parent_card.get("license", ""),
            "parent_lineage": parent_lineage,
            "parent_fields": parent_fields,
            "settings": settings,
        }

    if not resume and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    stream = (
        batch_stream(sampler, int(batch_size), seed + 1009 * epoch, workers) if workers else None
    )
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        stop_reason = "epochs done"
        while epoch < int(epochs):
            rng = np.random.default_rng([int(seed), epoch])
            torch.manual_seed(int(seed) * 100_003 + epoch)
            losses = []
            for _ in range(steps_per_epoch):
                elapsed = trained_s + time.perf_counter() - t_start
                tfrac = elapsed / float(max_seconds) if max_seconds else 0.0
                if tfrac >= 1.0 and losses:
                    break  # the time budget ends this epoch early (validated and saved below)
                cur_lr = _lr_at(step, total_steps, lr, warmup, tfrac)
                for g in opt.param_groups:
                    g["lr"] = cur_lr
                if stream is not None:
                    x, targets = to_device(next(stream), dev)
                else:
                    x, targets = sampler.batch(rng, int(batch_size), dev)
                if amp_dtype is not None:
                    with torch.autocast(dev.type, dtype=amp_dtype):
                        loss = spec.train_loss(net, x, targets)
                    loss = loss.float()
                else:
                    loss = spec.train_loss(net, x, targets)
                if not torch.isfinite(loss):
                    raise HistoError(
                        f"training diverged (loss is {float(loss)}) at step {step + 1}; try a lower learning rate"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                step += 1
                if ema_state is not None:
                    _update_ema(ema_state, net, float(ema))
                lv = float(loss.detach())
                losses.append(lv)
                yield Progress(
                    step=step, total=total_steps, stage="step", metrics={"loss": lv, "lr": cur_lr}
                )
            epoch += 1
            metrics = {"loss": float(np.mean(losses))}
            improved = False
            if val_set:
                with _averaged(net, ema_state):
                    res = validate(net, spec, dev, val_set, tile)
                    aji = res.get("aji", 0.0)
                    improved = best_aji is None or aji > best_aji + 1e-4
                    if improved:  # the weights just validated (the average, with ``ema``)
                        best_state = state_tensors(net)
                metrics.update({f"val_{k}": v for k, v in res.items() if k != "per_image"})
                if improved:
                    best_aji, best_epoch, best_val = float(aji), epoch, res
                    bad_epochs = 0
                else:
                    bad_epochs += 1
            history.append({"epoch": epoch, **{k: round(v, 5) for k, v in metrics.items()}})
            _write_checkpoint(work / CHECKPOINT_FILE, net, best_state, opt, meta_now(), ema_state)
            msg = "best so far" if improved else ""
            yield Progress(
                step=epoch, total=int(epochs), stage="epoch", metrics=metrics, message=msg
            )
            if best_loss is None or metrics["loss"] < 0.99 * best_loss:
                best_loss, flat_epochs = metrics["loss"], 0
            else:
                flat_epochs += 1
            if val_set and patience is not None and bad_epochs >= int(patience):
                stop_reason = f"early stop: no better validation AJI for {patience} epochs"
                break
            if loss_patience is not None and flat_epochs >= int(loss_patience):
                stop_reason = f"early stop: training loss flat for {loss_patience} epochs"
                break
            if max_seconds is not None and trained_s + time.perf_counter() - t_start >= float(
                max_seconds
            ):
                stop_reason = f"time cap of {max_seconds:.0f} s reached"
                break

        final_val = {}
        if keep == "best" and best_state is not None:  # already validated (and averaged)
            weights = best_state
            if val_set:
                final_val = {**best_val, "epoch": best_epoch, "selected": "best validation AJI"}
        else:
            with _averaged(net, ema_state):
                weights = state_tensors(net)
                if val_set:
                    final_val = {
                        **validate(net, spec, dev, val_set, tile),
                        "epoch": epoch,
                        "selected": "last epoch",
                    }
        if final_val and ema_state is not None:
            final_val["selected"] += f" (moving average of the weights, decay {ema:g})"
        seconds = trained_s + (time.perf_counter() - t_start)
        full_card = {
            "name": out.name,  # not the work folder's, which save_model would take
            "data": data,
            "pairs": len(train_set),
            "pair_names": [n for n, _, _ in train_set],
            "validation_pairs": [n for n, _, _ in val_set],
            "license": _license(license, parent_card, data),
            "parent": parent,
            **parent_lineage,
            "training": {
                **settings,
                "epochs_done": epoch,
                "steps_done": step,
                "seconds": round(seconds, 1),
                "stopped": stop_reason,
            },
            "minutes": round(seconds / 60, 1),  # card.md's one-line training time
            "validation": final_val,
            "history": history,
            **parent_fields,
            **(card or {}),
        }
        full_card["created"] = time.time()
        save_model(work, weights, arch_name, kwargs, full_card)
        os.replace(work / CHECKPOINT_FILE, work / STATE_FILE)
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
        return out
    except BaseException as exc:
        # Cancel (GeneratorExit) or an error: no new model. An interrupt (Ctrl-C) keeps the
        # work folder so that resume=True continues from its last checkpoint.
        if not isinstance(exc, KeyboardInterrupt):
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if stream is not None:
            stream.close()  # ends the DataLoader's worker processes


def train(*args: Any, **kwargs: Any) -> Path:
    """Blocking :func:`train_iter`; returns the model folder."""
    return drain(train_iter(*args, **kwargs))
