"""Training data: (image, instance labels) pairs from folders, a validation split, and the
random patch sampler with its augmentations (dihedral, HED stain jitter, brightness/contrast,
scale, elastic, blur)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import HistoError

if TYPE_CHECKING:
    import torch

Pair = tuple[np.ndarray, np.ndarray]


def _mask_index(masks_dir: Path) -> dict[str, Path]:
    from ...io import is_image_path

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
    from ...io import list_images, read_image, read_labels

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
    from ...io import to_rgb_uint8

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


def elastic_field(
    shape: tuple[int, int], rng: np.random.Generator, amplitude: float = 6.0, smooth: float = 12.0
) -> np.ndarray:
    """(2, H, W) displacements in pixels: white noise smoothed by a Gaussian of ``smooth`` px and
    scaled so the largest shift is ``amplitude`` px (Simard et al. 2003).

    With the defaults the field's gradient stays well under 1 (about 0.3), so the warp does not
    fold: nuclei are bent, not torn apart or pushed into their neighbours.
    """
    from scipy.ndimage import gaussian_filter

    field = np.stack([gaussian_filter(rng.standard_normal(shape), smooth) for _ in range(2)])
    peak = float(np.abs(field).max())
    return (field * (amplitude / peak if peak > 0 else 0.0)).astype(np.float32)


def elastic_deform(
    image: np.ndarray, labels: np.ndarray, field: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (H, W, C) and ``labels`` (H, W) resampled at ``pixel + field``.

    The image bilinearly, the labels by their nearest pixel (ids are not blended); outside the
    patch the border pixels are repeated.
    """
    from scipy.ndimage import map_coordinates

    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = np.stack([yy + field[0], xx + field[1]])
    img = np.asarray(image, np.float32)
    warped = np.stack(
        [
            map_coordinates(img[..., c], coords, order=1, mode="nearest")
            for c in range(img.shape[-1])
        ],
        axis=-1,
    )
    lab = map_coordinates(np.asarray(labels), coords, order=0, mode="nearest")
    return np.clip(np.rint(warped), 0, 255).astype(np.uint8), lab.astype(labels.dtype)


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
    elastic : float
        Probability of an elastic deformation (:func:`elastic_field`): nuclei bent and squeezed
        as sectioning and mounting do; the labels move with the pixels, before the targets
        are made.
    focus : list of bool arrays, optional
        One mask per pair (or None): where the labels matter most, e.g. where a user's
        corrections changed the model's segmentation (:func:`~..metrics.changed_regions`).
    focus_share : float
        Fraction of the patches drawn around a random focus pixel (the rest as usual).
    """

    margin = 8  # context cut off after the targets are made (crop-border effects)
    #: Focus pixels kept per image to draw patch centres from (a uniform subsample).
    focus_points = 20_000

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
        focus: Sequence[np.ndarray | None] | None = None,
        focus_share: float = 0.5,
        elastic: float = 0.0,
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
        self.elastic = float(elastic)
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
        self.focus_share = float(focus_share)
        self.focus_yx: list[np.ndarray] = []
        if focus is not None:
            if len(focus) != len(pairs):
                raise ValueError(f"{len(focus)} focus masks for {len(pairs)} pairs")
            frng = np.random.default_rng(0)
            for mask in focus:
                yx = np.argwhere(mask) if mask is not None else np.empty((0, 2), np.int64)
                if len(yx) > self.focus_points:
                    yx = yx[frng.choice(len(yx), self.focus_points, replace=False)]
                self.focus_yx.append(yx)
        counts = np.array([len(yx) for yx in self.focus_yx], np.float64)
        self.focus_p = counts / counts.sum() if counts.sum() > 0 else None

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One ``(patch, patch, 3)`` uint8 image and its targets."""
        centre = None
        if self.focus_p is not None and rng.random() < self.focus_share:
            i = int(rng.choice(len(self.images), p=self.focus_p))
            yx = self.focus_yx[i]
            centre = yx[int(rng.integers(len(yx)))]
        else:
            i = int(rng.choice(len(self.images), p=self.p))
        img, lab = self.images[i], self.labels[i]
        out = self.patch + 2 * self.margin
        scale = 1.0
        lo, hi = self.scale_range
        if self.augment and hi > lo:
            scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        src = min(max(8, round(out / scale)), img.shape[0], img.shape[1])
        if centre is None:
            y = int(rng.integers(0, img.shape[0] - src + 1))
            x = int(rng.integers(0, img.shape[1] - src + 1))
        else:  # the focus pixel anywhere in the central half of the patch
            off = rng.integers(src // 4, src - src // 4 + 1, size=2)
            y = int(np.clip(centre[0] - off[0], 0, img.shape[0] - src))
            x = int(np.clip(centre[1] - off[1], 0, img.shape[1] - src))
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
            if self.elastic > 0 and rng.random() < self.elastic:
                im, lb = elastic_deform(im, lb, elastic_field(im.shape[:2], rng))
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

    def collate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
        """``n`` samples stacked: ``(n, patch, patch, 3)`` uint8 images and stacked targets."""
        items = [self.sample(rng) for _ in range(n)]
        keys = items[0][1].keys()
        return np.stack([it[0] for it in items]), {
            k: np.stack([it[1][k] for it in items]) for k in keys
        }

    def batch(self, rng: np.random.Generator, n: int, device: Any) -> tuple[torch.Tensor, dict]:
        """A collated batch on ``device``: input tensor and stacked targets."""
        return to_device(self.collate(rng, n), device)


def to_device(batch: tuple[Any, dict], device: Any) -> tuple[torch.Tensor, dict]:
    """A collated batch (numpy or tensors) as the network's input tensor and target tensors on ``device``."""
    import torch

    from ..spec import to_input

    images, targets = batch
    non_blocking = getattr(device, "type", str(device)) == "cuda"
    return to_input(images, device), {
        k: torch.as_tensor(v).to(device, non_blocking=non_blocking) for k, v in targets.items()
    }


def batch_stream(
    sampler: PatchSampler, batch_size: int, seed: int, workers: int
) -> Iterator[tuple[Any, dict]]:
    """Endless collated batches made by ``workers`` background processes (a torch DataLoader).

    Augmentation costs about 20-30 ms per patch on one core, so a GPU waits for a single
    process; each worker draws from its own seeded generator (``seed``, worker index). The
    order of batches across workers is not reproducible step by step, only in distribution.
    """
    import torch

    class _Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            rng = np.random.default_rng([int(seed), 7919, info.id if info else 0])
            while True:
                yield sampler.collate(rng, int(batch_size))

    loader = torch.utils.data.DataLoader(
        _Stream(),
        batch_size=None,
        num_workers=int(workers),
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4,
        persistent_workers=True,
    )
    yield from loader  # (uint8 image tensor, dict of target tensors), pinned on CUDA
