"""Training and fine-tuning segmentation models from (image, instance labels) pairs.

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
import json
import math
import os
import shutil
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import HistoError
from .progress import Progress, drain

if TYPE_CHECKING:
    import torch

MONUSEG_LICENSE = "CC BY-NC-SA 4.0"
CHECKPOINT_FILE = "checkpoint.safetensors"
TRAIN_STATE_FORMAT = "napari-histo-seg-train-state"

Pair = tuple[np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------- data


def _mask_index(masks_dir: Path) -> dict[str, Path]:
    from .io import is_image_path

    index: dict[str, Path] = {}
    for p in sorted(masks_dir.iterdir()):
        if not p.is_file() or not is_image_path(p):
            continue
        stem = (
            p.name.split(".")[0] if p.name.lower().endswith((".ome.tif", ".ome.tiff")) else p.stem
        )
        index.setdefault(stem, p)
        for suffix in ("_mask", "_masks", "_labels", "_label"):
            if stem.endswith(suffix):
                index.setdefault(stem[: -len(suffix)], p)
    return index


def load_pairs(
    images: str | os.PathLike, masks: str | os.PathLike
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Read ``(name, rgb, labels)`` pairs from an image folder and a mask folder.

    Masks are matched to images by file stem (``img01.png`` <-> ``img01.tif``; a ``_mask`` or
    ``_labels`` suffix on the mask is accepted too).

    Raises
    ------
    HistoError
        A missing or empty folder, an image without a mask, a file that cannot be read, or a
        mask whose size differs from its image (each naming the file).
    """
    from .io import list_images, read_image, read_labels

    images, masks = Path(images), Path(masks)
    for folder, what in ((images, "images"), (masks, "masks")):
        if not folder.is_dir():
            raise HistoError(f"{folder}: not a folder ({what})")
    files = list_images(images)
    if not files:
        raise HistoError(f"{images}: no images found (PNG, JPEG or TIFF)")
    index = _mask_index(masks)
    if not index:
        raise HistoError(f"{masks}: no masks found (TIFF or PNG instance labels)")
    pairs = []
    for f in files:
        mpath = index.get(f.stem)
        if mpath is None:
            raise HistoError(f"{f.name}: no mask with the same name in {masks}")
        rgb = read_image(f)
        lab = read_labels(mpath)
        if lab.shape != rgb.shape[:2]:
            raise HistoError(
                f"{mpath.name}: mask size {lab.shape[1]}x{lab.shape[0]} does not match its image "
                f"{f.name} ({rgb.shape[1]}x{rgb.shape[0]})"
            )
        pairs.append((f.stem, rgb, lab))
    return pairs


def _as_named_pairs(pairs: Sequence, prefix: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from .io import to_rgb_uint8

    out = []
    for i, p in enumerate(pairs):
        if len(p) == 3:
            name, img, lab = p
        elif len(p) == 2:
            (img, lab), name = p, f"{prefix}{i}"
        else:
            raise HistoError("training pairs must be (image, labels) or (name, image, labels)")
        rgb = to_rgb_uint8(img, str(name))
        lab = np.asarray(lab)
        if lab.ndim != 2 or not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
            raise HistoError(
                f"{name}: labels must be a 2D integer image, got {lab.dtype} {lab.shape}"
            )
        if lab.shape != rgb.shape[:2]:
            raise HistoError(f"{name}: labels {lab.shape} do not match the image {rgb.shape[:2]}")
        out.append((str(name), rgb, lab.astype(np.int32)))
    return out


def split_validation(
    pairs: list[tuple[str, np.ndarray, np.ndarray]], fraction: float, seed: int = 0
) -> tuple[list, list]:
    """Hold out ``fraction`` of the pairs (at least one, seeded) for validation.

    With a single pair, its last rows (or columns, for a wide image) are held out instead,
    when both parts keep at least 64 pixels; otherwise there is no validation.
    """
    if fraction <= 0 or not pairs:
        return pairs, []
    if len(pairs) >= 2:
        n_val = min(len(pairs) - 1, max(1, round(len(pairs) * fraction)))
        order = np.random.default_rng(seed).permutation(len(pairs))
        val_idx = set(order[:n_val].tolist())
        train = [p for i, p in enumerate(pairs) if i not in val_idx]
        val = [p for i, p in enumerate(pairs) if i in val_idx]
        return train, val
    name, img, lab = pairs[0]
    axis = 0 if img.shape[0] >= img.shape[1] else 1
    n = img.shape[axis]
    cut = n - max(1, round(n * fraction))
    if cut < 64 or n - cut < 64:
        return pairs, []
    if axis == 0:
        return [(name, img[:cut], lab[:cut])], [(f"{name}[val rows]", img[cut:], lab[cut:])]
    return [(name, img[:, :cut], lab[:, :cut])], [(f"{name}[val cols]", img[:, cut:], lab[:, cut:])]


def hed_jitter(
    rgb: np.ndarray, rng: np.random.Generator, sigma: float = 0.05, bias: float = 0.05
) -> np.ndarray:
    """Perturb the haematoxylin, eosin and DAB channels: ``c * (1 + a) + b`` per channel."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(rgb)
    a = rng.uniform(-sigma, sigma, 3)
    b = rng.uniform(-bias, bias, 3) * np.abs(hed).reshape(-1, 3).max(axis=0).clip(1e-3)
    hed = hed * (1.0 + a) + b
    out = hed2rgb(hed)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


class PatchSampler:
    """Random training patches and their targets from in-memory pairs.

    Parameters
    ----------
    pairs : list of (name, rgb, labels)
    spec : ArchSpec
        Makes the targets (after augmentation, so vector targets stay right).
    patch : int
        Patch side (a multiple of ``spec.size_multiple``).
    augment : bool
        Dihedral transforms, HED and brightness/contrast jitter, scale jitter.
    scale_jitter : float
        Patches are resized by a factor in ``[1 / (1 + j), 1 + j]``.
    scale_range : (float, float), optional
        Overrides ``scale_jitter``: patches are resized by a log-uniform factor in
        ``[lo, hi]`` (0.5 shows 40x tissue as a 20x scanner would).
    blur : float
        Probability of a Gaussian blur (sigma 0.5-1.5 px), as out-of-focus scans give.
    """

    margin = 8  # context cut off after the targets are made (crop-border effects)

    def __init__(
        self,
        pairs: list[tuple[str, np.ndarray, np.ndarray]],
        spec: Any,
        patch: int,
        augment: bool = True,
        scale_jitter: float = 0.1,
        hed_sigma: float = 0.05,
        scale_range: tuple[float, float] | None = None,
        blur: float = 0.0,
    ):
        self.spec = spec
        self.patch = int(patch)
        self.augment = augment
        if scale_range is None:
            scale_range = (1 / (1 + scale_jitter), 1 + scale_jitter)
        lo, hi = sorted(float(v) for v in scale_range)
        if lo <= 0:
            raise ValueError(f"scale_range must be positive, got {scale_range}")
        self.scale_range = (lo, hi)
        self.hed_sigma = float(hed_sigma)
        self.blur = float(blur)
        need = self.patch + 2 * self.margin
        self.images, self.labels = [], []
        for _, img, lab in pairs:
            h, w = lab.shape
            ph, pw = (
                max(0, math.ceil(need / lo) - h),
                max(0, math.ceil(need / lo) - w),
            )
            if ph or pw:  # small images: pad with glass (white) and background
                img = np.pad(img, ((0, ph), (0, pw), (0, 0)), constant_values=255)
                lab = np.pad(lab, ((0, ph), (0, pw)))
            self.images.append(img)
            self.labels.append(lab)
        area = np.array([lab.size for lab in self.labels], np.float64)
        self.p = area / area.sum()

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One ``(patch, patch, 3)`` uint8 image and its targets."""
        i = int(rng.choice(len(self.images), p=self.p))
        img, lab = self.images[i], self.labels[i]
        out = self.patch + 2 * self.margin
        scale = 1.0
        lo, hi = self.scale_range
        if self.augment and hi > lo:
            scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        src = min(max(8, round(out / scale)), img.shape[0], img.shape[1])
        y = int(rng.integers(0, img.shape[0] - src + 1))
        x = int(rng.integers(0, img.shape[1] - src + 1))
        im = img[y : y + src, x : x + src]
        lb = lab[y : y + src, x : x + src]
        if src != out:
            from skimage.transform import resize

            im = resize(im, (out, out, 3), order=1, preserve_range=True, anti_aliasing=src > out)
            im = np.clip(np.rint(im), 0, 255).astype(np.uint8)
            lb = resize(lb, (out, out), order=0, preserve_range=True, anti_aliasing=False).astype(
                lb.dtype
            )
        if self.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            if flip:
                im, lb = im[:, ::-1], lb[:, ::-1]
            im, lb = np.rot90(im, k), np.rot90(lb, k)
            if self.hed_sigma > 0:
                im = hed_jitter(np.ascontiguousarray(im), rng, self.hed_sigma, self.hed_sigma)
            if self.blur > 0 and rng.random() < self.blur:
                from scipy.ndimage import gaussian_filter

                sigma = float(rng.uniform(0.5, 1.5))
                im = gaussian_filter(im.astype(np.float32), (sigma, sigma, 0))
                im = np.clip(np.rint(im), 0, 255).astype(np.uint8)
            gain = rng.uniform(0.9, 1.1)
            shift = rng.uniform(-10, 10)
            mean = im.reshape(-1, 3).mean(axis=0)
            im = np.clip((im.astype(np.float32) - mean) * gain + mean + shift, 0, 255).astype(
                np.uint8
            )
        im = np.ascontiguousarray(im)
        lb = np.ascontiguousarray(lb)
        targets = self.spec.make_targets(lb)
        m = self.margin
        im = im[m:-m, m:-m]
        targets = {k: np.ascontiguousarray(v[..., m:-m, m:-m]) for k, v in targets.items()}
        return im, targets

    def batch(self, rng: np.random.Generator, n: int, device: Any) -> tuple[torch.Tensor, dict]:
        """A collated batch on ``device``: input tensor and stacked targets."""
        import torch

        from .seg.spec import to_input

        items = [self.sample(rng) for _ in range(n)]
        x = to_input(np.stack([it[0] for it in items]), device)
        keys = items[0][1].keys()
        targets = {
            k: torch.as_tensor(np.stack([it[1][k] for it in items])).to(device) for k in keys
        }
        return x, targets


# ----------------------------------------------------------------------------- checkpoints


def _optimizer_tensors(opt: Any) -> tuple[dict, dict]:
    """Optimizer state as flat tensors + JSON-able rest (no pickle)."""
    import torch

    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"opt.{pid}.{key}"] = val.detach().cpu().contiguous().clone()
            else:
                scalars[f"{pid}.{key}"] = val
    groups = [dict(g) for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _restore_optimizer(opt: Any, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, val in tensors.items():
        if not key.startswith("opt."):
            continue
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = val
    for key, val in meta.get("scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    sd = {"state": state, "param_groups": meta["param_groups"]}
    # A fresh optimizer state is an acceptable fallback when resuming.
    with contextlib.suppress(ValueError, KeyError, RuntimeError):
        opt.load_state_dict(sd)


def _write_checkpoint(path: Path, net: Any, best: dict | None, opt: Any, meta: dict) -> None:
    from safetensors.torch import save_file

    from .atomic import atomic_path
    from .models import state_tensors

    tensors = {f"net.{k}": v for k, v in state_tensors(net).items()}
    if best is not None:
        tensors.update({f"best.{k}": v for k, v in best.items()})
    opt_t, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_t)
    md = {
        "format": TRAIN_STATE_FORMAT,
        "state": json.dumps({**meta, "optimizer": opt_meta}, default=str),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=md)


def _read_checkpoint(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            md = dict(fh.metadata() or {})
        tensors = load_file(str(path))
        if md.get("format") != TRAIN_STATE_FORMAT:
            raise ValueError(f"format {md.get('format')!r}")
        meta = json.loads(md["state"])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise HistoError(
            f"{path}: not a readable napari-histo training checkpoint ({exc})"
        ) from None
    return tensors, meta


def _sub(tensors: dict, prefix: str) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


# ----------------------------------------------------------------------------- the loop


def _amp_dtype(dev: Any) -> Any:
    """The autocast dtype worth using on ``dev`` (None: stay in float32)."""
    import torch

    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:  # pragma: no cover - older torch
        native = False
    return torch.bfloat16 if native else None


def _lr_at(step: int, total: int, lr: float, warmup: int, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 5 % over the steps (or the time budget, if sooner)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = max((step - warmup) / max(1, total - warmup), time_fraction)
    return lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def validate(
    net: Any,
    spec: Any,
    device: Any,
    val: list[tuple[str, np.ndarray, np.ndarray]],
    tile: Any = None,
) -> dict:
    """Segment every validation pair with ``net`` and score it (mean and per image)."""
    from .metrics import evaluate
    from .models import LoadedModel
    from .seg.inference import segment_iter

    was_training = net.training
    net.eval()
    model = LoadedModel(net=net, spec=spec, card={}, device=device, name="training")
    per: dict[str, dict] = {}
    try:
        for name, img, lab in val:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # No multiple inference: it would multiply the cost of every validation.
                pred = drain(segment_iter(img, model, tta=False, tile=tile)).labels
            per[name] = {k: float(v) for k, v in evaluate(lab, pred).items()}
    finally:
        net.train(was_training)
    keys = next(iter(per.values())).keys() if per else ()
    mean = {k: float(np.mean([m[k] for m in per.values()])) for k in keys}
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


def train_iter(
    pairs: Sequence | None = None,
    out: str | os.PathLike = "model",
    init: str | os.PathLike | None = "default",
    epochs: int = 10,
    lr: float = 2e-4,
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
    lr : float
        Peak learning rate (AdamW; linear warm-up, cosine decay to 5 %).
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

    Returns
    -------
    Path
        The model folder (``out``).
    """
    import torch

    from .device import resolve_device
    from .models import STATE_FILE, build_from_state, read_model, save_model, state_tensors
    from .seg.spec import get_arch

    t_start = time.perf_counter()
    out = Path(out)
    work = out.with_name(f".{out.name}.partial")
    if keep not in ("best", "last"):
        raise HistoError(f"keep must be 'best' or 'last', got {keep!r}")
    if int(epochs) < 1:
        raise HistoError(f"epochs must be at least 1, got {epochs}")

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
    amp_dtype = _amp_dtype(dev) if amp is None or amp else None

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
    parent = None
    if ckpt_path is not None:
        ckpt_tensors, state_meta = _read_checkpoint(ckpt_path)
        arch_name, kwargs = state_meta["arch"], dict(state_meta["kwargs"])
        net, spec = build_from_state(arch_name, kwargs, _sub(ckpt_tensors, "net"), ckpt_path.name)
        parent = state_meta.get("parent")
        parent_card = {"license": state_meta.get("parent_license", "")}
    elif init is None or str(init).lower() in ("none", "scratch", ""):
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
        parent = str(parent_card.get("name") or pfolder.name)
    net.to(dev).train()

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
    )
    if steps_per_epoch is None:
        px = sum(lab.size for _, _, lab in train_set)
        steps_per_epoch = int(np.clip(round(px / (patch * patch * batch_size)), 1, 500))
    steps_per_epoch = int(steps_per_epoch)
    total_steps = int(epochs) * steps_per_epoch
    warmup = 0 if parent else min(100, max(1, total_steps // 20))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)

    epoch = int(state_meta.get("epoch", 0))
    step = int(state_meta.get("step", 0))
    history: list[dict] = list(state_meta.get("history", []))
    best_aji = state_meta.get("best_aji")
    best_epoch = state_meta.get("best_epoch")
    best_val = state_meta.get("best_val") or {}
    bad_epochs = int(state_meta.get("bad_epochs", 0))
    trained_s = float(state_meta.get("seconds", 0.0))
    best_state = _sub(ckpt_tensors, "best") or None
    if ckpt_tensors:
        _restore_optimizer(opt, ckpt_tensors, state_meta.get("optimizer", {}))
    if epoch >= int(epochs) and ckpt_path is not None and ckpt_path.parent == out:
        return out  # a finished model already trained this far

    settings = {
        "epochs": int(epochs),
        "steps_per_epoch": steps_per_epoch,
        "patch": patch,
        "batch_size": int(batch_size),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "seed": int(seed),
        "augment": (
            f"dihedral, HED jitter {color_jitter:g}, brightness/contrast, scale "
            f"{sampler.scale_range[0]:.2f}-{sampler.scale_range[1]:.2f}"
            + (f", blur p={blur:g}" if blur > 0 else "")
            if augment
            else "none"
        ),
        "patience": patience,
        "keep": keep,
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
            "seconds": trained_s + (time.perf_counter() - t_start),
            "parent": parent,
            "parent_license": parent_card.get("license", ""),
            "settings": settings,
        }

    if not resume and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        stop_reason = "epochs done"
        while epoch < int(epochs):
            rng = np.random.default_rng([int(seed), epoch])
            torch.manual_seed(int(seed) * 100_003 + epoch)
            losses = []
            for _ in range(steps_per_epoch):
                elapsed = trained_s + time.perf_counter() - t_start
                tfrac = elapsed / float(max_seconds) if max_seconds else 0.0
                cur_lr = _lr_at(step, total_steps, lr, warmup, tfrac)
                for g in opt.param_groups:
                    g["lr"] = cur_lr
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
                lv = float(loss.detach())
                losses.append(lv)
                yield Progress(
                    step=step, total=total_steps, stage="step", metrics={"loss": lv, "lr": cur_lr}
                )
            epoch += 1
            metrics = {"loss": float(np.mean(losses))}
            improved = False
            if val_set:
                res = validate(net, spec, dev, val_set, tile)
                metrics.update({f"val_{k}": v for k, v in res.items() if k != "per_image"})
                aji = res.get("aji", 0.0)
                if best_aji is None or aji > best_aji + 1e-4:
                    best_aji, best_epoch, best_val = float(aji), epoch, res
                    best_state = state_tensors(net)
                    bad_epochs, improved = 0, True
                else:
                    bad_epochs += 1
            history.append({"epoch": epoch, **{k: round(v, 5) for k, v in metrics.items()}})
            _write_checkpoint(work / CHECKPOINT_FILE, net, best_state, opt, meta_now())
            msg = "best so far" if improved else ""
            yield Progress(
                step=epoch, total=int(epochs), stage="epoch", metrics=metrics, message=msg
            )
            if val_set and patience is not None and bad_epochs >= int(patience):
                stop_reason = f"early stop: no better validation AJI for {patience} epochs"
                break
            if max_seconds is not None and trained_s + time.perf_counter() - t_start >= float(
                max_seconds
            ):
                stop_reason = f"time cap of {max_seconds:.0f} s reached"
                break

        use_best = keep == "best" and best_state is not None
        weights = best_state if use_best else state_tensors(net)
        if val_set:
            if use_best:
                final_val = {**best_val, "epoch": best_epoch, "selected": "best validation AJI"}
            else:
                final_val = {
                    **validate(net, spec, dev, val_set, tile),
                    "epoch": epoch,
                    "selected": "last epoch",
                }
        else:
            final_val = {}
        seconds = trained_s + (time.perf_counter() - t_start)
        full_card = {
            "data": data,
            "pairs": len(train_set),
            "pair_names": [n for n, _, _ in train_set],
            "validation_pairs": [n for n, _, _ in val_set],
            "license": _license(license, parent_card, data),
            "parent": parent,
            "training": {
                **settings,
                "epochs_done": epoch,
                "steps_done": step,
                "seconds": round(seconds, 1),
                "stopped": stop_reason,
            },
            "validation": final_val,
            "history": history,
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


def train(*args: Any, **kwargs: Any) -> Path:
    """Blocking :func:`train_iter`; returns the model folder."""
    return drain(train_iter(*args, **kwargs))
