"""Segmenting an RGB image with a model: tiled prediction, multiple inference (TTA), instances.

The flow::

    image --to_rgb_uint8--> rgb --(normalizer.transform)--> tiles --spec.predict--> maps
          (with TTA: every dihedral transform of a tile is predicted, un-done with
           spec.invert_tta and averaged; the spread between them is kept as a map)
    blended maps of the whole image --spec.instances--> labels, confidence

Instances are made once, from the maps of a whole window, so a nucleus crossing a tile seam
is one instance by construction. An image larger than one block (``BlockTiling``, 1024 px by
default) is cut into blocks with halos and stitched by ownership, with the same rules (and so
the same nuclei) as the whole-slide path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import HistoError, InputWarning
from ..progress import Progress, drain
from ..tiling import BlockTiling, Predictor, TileSpec, predict_tiled_iter, segment_blocks_iter

#: The 8 dihedral transforms ``(k, flip)``: input = rot90(flip(x) if flip else x, k).
DIHEDRAL_8 = tuple((k, f) for f in (False, True) for k in range(4))
#: The 4 flips (identity, horizontal, vertical = rot180 of horizontal, both = rot180).
DIHEDRAL_4 = ((0, False), (0, True), (2, False), (2, True))
#: Name of the TTA spread map in :attr:`SegResult.maps`.
SPREAD_MAP = "tta_spread"
#: Below this fraction of tissue pixels an image is treated as blank.
MIN_TISSUE_FRACTION = 0.002


@dataclass
class SegResult:
    """The result of segmenting one image.

    Attributes
    ----------
    labels : (H, W) uint32
        Instance labels, 0 = background.
    confidence : (H, W) float32 in [0, 1]
        Lower = less sure (correct there first). With TTA, disagreement between the
        augmentations lowers it.
    maps : dict
        The blended maps ``name -> (C, H, W) float32`` (plus ``tta_spread`` with TTA).
    notes : list of str
        Things worth telling the user (no tissue found...).
    scale : str
        When the pixel size was guessed from the nuclei (``guess_scale``): what the guess saw
        and did, in words; "" otherwise.
    """

    labels: np.ndarray
    confidence: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    scale: str = ""

    @property
    def n_nuclei(self) -> int:
        return len(np.unique(self.labels[self.labels > 0]))


def tta_transforms(tta: bool | int | None) -> tuple[tuple[int, bool], ...]:
    """The transforms of a ``tta`` setting: False/0/1 -> identity, True/8 -> 8, 4 -> 4 flips."""
    if tta is True:  # before the numbers: True == 1
        return DIHEDRAL_8
    if tta is None or tta is False or tta in (0, 1):
        return ((0, False),)
    if tta == 8:
        return DIHEDRAL_8
    if tta == 4:
        return DIHEDRAL_4
    raise HistoError(f"tta must be False, True (8 transforms) or 4, got {tta!r}")


def as_tile_spec(tile: TileSpec | int | None, device: Any = None) -> TileSpec:
    """A :class:`TileSpec` from None, a size, or a spec.

    None: tiles of at most 512 px, balanced (``TileSpec.balance``) so neighbours share only the
    overlap (32 px on the CPU, 64 on a GPU). On the CPU this is 1.4x faster than the 256 px tiles
    used before, at -0.004 mean validation AJI (bench/results/infer_backends.md).
    """
    if isinstance(tile, TileSpec):
        return tile
    if tile is None:
        gpu = getattr(device, "type", str(device)) == "cuda"
        return (
            TileSpec(tile=512, overlap=64, batch=8, balance=True)
            if gpu
            else TileSpec(tile=512, overlap=32, batch=1, balance=True)
        )
    size = int(tile)
    if size < 16:
        raise HistoError(f"tile size must be at least 16 pixels, got {size}")
    return TileSpec(tile=size, overlap=max(8, min(64, size // 8)), batch=4, balance=True)


_OD_TABLE = -np.log((np.arange(256, dtype=np.float32) + 1.0) / 256.0)


def tissue_fraction(rgb: np.ndarray) -> float:
    """Fraction of pixels that look like stained tissue (neither white glass nor black)."""
    small = rgb[:: max(1, rgb.shape[0] // 512), :: max(1, rgb.shape[1] // 512)]
    f = small.astype(np.float32)
    # A table of the 256 optical densities (not a log per pixel), and channel means as sums
    # (numpy's mean over a last axis of 3 is 10x slower): 0.09 -> 0.02 s on a 1000^2 tile.
    odc = _OD_TABLE[small] if small.dtype == np.uint8 else -np.log((f + 1.0) / 256.0)
    od = (odc[..., 0] + odc[..., 1] + odc[..., 2]) / 3.0
    gray = (f[..., 0] + f[..., 1] + f[..., 2]) / 3.0
    tissue = (od > 0.12) & (gray > 20.0)
    if float(gray.std()) < 1.0:  # a uniform image holds no nuclei whatever its colour
        return 0.0
    return float(tissue.mean())


class _CpuAutocast:
    """The network under CPU autocast, returning float32 (what ``spec.predict`` calls).

    ``keep_float32`` names submodules (``"encoder.levels.0"``) that run in float32 inside it:
    the wrapped network is a view that shares the original's parameters, which is never
    modified (other threads may be using it).
    """

    def __init__(self, net: Any, dtype: Any, keep_float32: tuple[str, ...] = ()):
        self.net, self.dtype = _with_float32(net, keep_float32), dtype

    def eval(self) -> _CpuAutocast:
        self.net.eval()
        return self

    def __call__(self, x: Any) -> Any:
        import torch

        with torch.autocast("cpu", dtype=self.dtype):
            out = self.net(x)
        return out.float()


def _with_float32(net: Any, names: tuple[str, ...]) -> Any:
    """A shallow view of ``net`` whose named submodules run with autocast off, in float32."""
    import copy

    from torch import nn

    class Float32(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            import torch

            with torch.autocast("cpu", enabled=False):
                return self.inner(x.float())

    for name in names:
        *path, leaf = name.split(".")
        view = copy.copy(net)
        view._modules = dict(net._modules)
        parent = view
        for part in path:
            child = copy.copy(parent._modules[part])
            child._modules = dict(child._modules)
            parent._modules[part] = child
            parent = child
        parent._modules[leaf] = Float32(parent._modules[leaf])
        net = view
    return net


def tiles_with_tissue(batch: np.ndarray, step: int = 2) -> np.ndarray:
    """(B,) True for every uint8 tile of ``batch`` holding any tissue-like pixel.

    Conservative: one pixel (on a grid of every ``step``-th pixel) whose mean optical density
    is above 0.12 and whose grey level is above 20 (the thresholds of :func:`tissue_fraction`)
    makes the tile tissue; only bare glass (and black voids) is not.
    """
    b = np.asarray(batch)[:, ::step, ::step, :3]
    od = np.take(_OD_LUT, b).mean(axis=-1)
    grey = b.mean(axis=-1, dtype=np.float32)
    return ((od > 0.12) & (grey > 20.0)).any(axis=(1, 2))


_OD_LUT = (-np.log((np.arange(256, dtype=np.float32) + 1.0) / 256.0)).astype(np.float32)


def _fill_glass(batch: np.ndarray, glass: np.ndarray, predict_all, blank) -> dict[str, np.ndarray]:
    """Maps of a batch whose ``glass`` tiles get ``blank`` maps and the others the network's."""
    n, h, w = batch.shape[:3]
    empty = {k: v.numpy() for k, v in blank(1, h, w).items()}
    out = {k: np.repeat(v, n, axis=0) for k, v in empty.items()}
    if not glass.all():
        maps = predict_all(np.ascontiguousarray(batch[~glass]))
        for k, v in maps.items():
            if k not in out:  # a map the blank tiles lack (e.g. the TTA spread): zero there
                out[k] = np.zeros((n, *v.shape[1:]), v.dtype)
            out[k][~glass] = v
    return out


def make_predictor(model: Any, transforms=((0, False),)) -> Predictor:
    """A tiling predictor for a loaded model: uint8 batch -> averaged maps (numpy).

    With more than one transform, the maps of every transform are un-done with
    ``spec.invert_tta`` and averaged, and ``tta_spread`` (the standard deviation between the
    transforms, averaged over channels and maps) is added.
    """
    import torch

    from ..device import amp_dtype as _amp
    from .spec import to_input

    net, spec, dev = model.net, model.spec, model.device
    kind = getattr(dev, "type", "cpu")
    # Mixed precision on GPUs; on CPUs only for architectures measured to keep their labels
    # (``spec.cpu_autocast``: bench/bf16_agreement.py, AJI >= 0.99 against float32, with the
    # submodules in ``spec.cpu_float32_modules`` kept in float32) and only where bfloat16 is native
    # (device.amp_dtype). NAPARI_HISTO_PRECISION=float32 turns it off; =bfloat16 runs every
    # module of every architecture in bfloat16 (faster, labels further from float32's).
    use_amp = kind == "cuda" and _amp(dev) is not None
    amp_dtype = _amp(dev) if use_amp else None
    opted_in = os.environ.get("NAPARI_HISTO_PRECISION", "").strip().lower() == "bfloat16"
    if kind == "cpu" and (getattr(spec, "cpu_autocast", False) or opted_in) and _amp(dev):
        # Only the network runs in bfloat16; the spec's activations (softmax...) stay float32.
        keep = () if opted_in else tuple(getattr(spec, "cpu_float32_modules", ()))
        net = _CpuAutocast(net, _amp(dev), keep)

    blank = getattr(spec, "blank_maps", None)

    def predict(batch: np.ndarray) -> dict[str, np.ndarray]:
        if blank is not None:
            glass = ~tiles_with_tissue(batch)
            if glass.any():  # bare glass is not run through the network
                return _fill_glass(batch, glass, predict_all, blank)
        return predict_all(batch)

    def predict_all(batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            x = to_input(batch, dev)
            sums: dict[str, torch.Tensor] = {}
            sqs: dict[str, torch.Tensor] = {}
            for k, flip in transforms:
                xt = torch.flip(x, dims=(3,)) if flip else x
                xt = torch.rot90(xt, k, dims=(2, 3)) if k else xt
                if use_amp:
                    with torch.autocast(kind, dtype=amp_dtype):
                        maps = spec.predict(net, xt)
                else:
                    maps = spec.predict(net, xt)
                maps = {n: m.float() for n, m in maps.items()}
                if k or flip:
                    maps = spec.invert_tta(maps, k, flip)
                for n, m in maps.items():
                    if n in sums:
                        sums[n] += m
                        sqs[n] += m * m
                    else:
                        sums[n] = m.clone()
                        sqs[n] = m * m
            count = float(len(transforms))
            out = {n: s / count for n, s in sums.items()}
            if len(transforms) > 1:
                spreads = [
                    (sqs[n] / count - out[n] * out[n]).clamp_min(0).sqrt().mean(dim=1, keepdim=True)
                    for n in out
                ]
                out[SPREAD_MAP] = torch.stack(spreads).mean(dim=0)
            return {n: torch.nan_to_num(m).cpu().numpy() for n, m in out.items()}

    return predict


def segment_iter(
    image: np.ndarray,
    model: Any,
    tta: bool | int | None = None,
    normalizer: Any = None,
    tile: TileSpec | int | None = None,
    blocks: BlockTiling | None = BlockTiling(),
) -> Generator[Progress, None, SegResult]:
    """Segment nuclei in one RGB image; yields per-batch tile progress, returns a SegResult.

    Parameters
    ----------
    image : array
        Anything :func:`~napari_histo.core.io.to_rgb_uint8` accepts (RGB, RGBA, grayscale,
        16-bit, float...).
    model : LoadedModel
        A loaded model (:func:`~napari_histo.core.seg.registry.load_model`); the workflow's
        :func:`~napari_histo.core.seg.workflow.segment_array_iter` takes a name or folder.
    tta : bool, int or None
        Multiple inference: True = the 8 dihedral transforms, 4 = the 4 flips, False = none;
        None = the architecture's default (``spec.tta``: on for FullNet, as in Qu et al.).
    normalizer : object, optional
        A fitted stain normalizer (``.transform(rgb) -> rgb``), applied first.
    tile : TileSpec or int, optional
        Tiling of the network (default :func:`as_tile_spec`: balanced tiles of at most 512 px,
        32 px overlap on the CPU, 64 on a GPU); a size means tiles of at most that size.
    blocks : BlockTiling or None
        An image larger than ``blocks.tile`` on a side is segmented block by block with halos,
        exactly as a whole slide is; None segments it as one window.

    Returns
    -------
    SegResult

    Closing the generator between two tile batches cancels the work. A blank (no tissue) image
    gets no nuclei and an :class:`~napari_histo.core.errors.InputWarning` note.
    """
    from ..io import to_rgb_uint8

    if not hasattr(model, "spec"):
        raise HistoError(
            f"segment_iter takes a loaded model, not {model!r}; load it with "
            "seg.registry.load_model or call seg.workflow.segment_array_iter"
        )
    rgb = to_rgb_uint8(image, "image")
    h, w = rgb.shape[:2]
    notes: list[str] = []
    if tissue_fraction(rgb) < MIN_TISSUE_FRACTION:
        msg = "no tissue found (the image is blank or uniform); no nuclei"
        notes.append(msg)
        warnings.warn(msg, InputWarning, stacklevel=2)
        return SegResult(
            labels=np.zeros((h, w), np.uint32),
            confidence=np.ones((h, w), np.float32),
            maps={},
            notes=notes,
        )
    if normalizer is not None:
        rgb = to_rgb_uint8(normalizer.transform(rgb), "normalized image")
        if rgb.shape[:2] != (h, w):
            raise HistoError(
                f"the stain normalizer changed the image size from {(h, w)} to {rgb.shape[:2]}"
            )
    if tta is None:
        tta = getattr(model.spec, "tta", False)
    if getattr(model.spec, "detector", False):
        return (yield from _segment_instances(rgb, model, tta, blocks, notes))
    spec = as_tile_spec(tile, model.device)
    if blocks is None or max(h, w) <= blocks.tile:
        res = yield from _segment_window(rgb, model, tta, spec)
        res.notes = notes
        return res

    def window(rgb_window: np.ndarray):
        if tissue_fraction(rgb_window) < MIN_TISSUE_FRACTION:  # glass beyond the image
            return np.zeros(rgb_window.shape[:2], np.uint32), {}
        r = drain(_segment_window(rgb_window, model, tta, spec))
        return r.labels, {"confidence": r.confidence, **r.maps}

    labels, maps = yield from segment_blocks_iter(rgb, window, blocks)
    conf = maps.pop("confidence", np.ones((h, w), np.float32)).astype(np.float32)
    return SegResult(labels=labels, confidence=conf, maps=maps, notes=notes)


def _segment_instances(
    rgb: np.ndarray, model: Any, tta: bool | int, blocks: BlockTiling | None, notes: list[str]
) -> Generator[Progress, None, SegResult]:
    """An instance model (Mask R-CNN): detections painted by score, TTA merged as instance sets,
    windows of ``spec.block_tiling`` stitched by ownership (see :mod:`.instances`)."""
    import torch

    from .instances import Detections, detect_with_tta, paint_by_score
    from .spec import to_input

    spec = model.spec
    m = int(getattr(spec, "size_multiple", 1) or 1)
    transforms = tta_transforms(tta)

    def detect(x: np.ndarray) -> Detections:
        h, w = x.shape[:2]
        ph, pw = -(-h // m) * m, -(-w // m) * m
        padded = np.pad(x, ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect")
        with torch.inference_mode():
            det = spec.detect(model.net, to_input(padded[None], model.device))[0]
        return Detections(det.masks[:, :h, :w], det.scores)

    def window(w: np.ndarray):
        if tissue_fraction(w) < MIN_TISSUE_FRACTION:  # glass beyond the image
            return np.zeros(w.shape[:2], np.uint32), {}
        det = detect_with_tta(
            detect, w, transforms, spec.merge_iou, spec.min_votes, spec.score_threshold
        )
        labels, conf = paint_by_score(det, spec.score_threshold, spec.mask_threshold)
        return labels, {"confidence": conf}

    tiling = getattr(spec, "block_tiling", blocks) if blocks is not None else None
    h, w = rgb.shape[:2]
    if tiling is None or max(h, w) <= tiling.tile:
        labels, maps = window(rgb)
        yield Progress(step=1, total=1, stage="block", message="detected")
    else:
        labels, maps = yield from segment_blocks_iter(rgb, window, tiling)
    conf = maps.get("confidence", np.ones((h, w), np.float32)).astype(np.float32)
    return SegResult(labels=labels.astype(np.uint32), confidence=conf, maps={}, notes=notes)


def _segment_window(
    rgb: np.ndarray, model: Any, tta: bool | int, spec: TileSpec
) -> Generator[Progress, None, SegResult]:
    """Maps over one window (tiled, blended, TTA), then its instances and confidence."""
    h, w = rgb.shape[:2]
    predictor = make_predictor(model, tta_transforms(tta))
    maps = yield from predict_tiled_iter(
        rgb, predictor, spec, int(getattr(model.spec, "size_multiple", 1) or 1)
    )
    spread = maps.pop(SPREAD_MAP, None)
    labels, conf = model.spec.instances(maps)
    labels = np.asarray(labels).astype(np.uint32, copy=False)
    conf = np.nan_to_num(np.asarray(conf, dtype=np.float32), nan=0.0)
    if spread is not None:
        conf = conf * np.clip(1.0 - 2.0 * spread[0], 0.0, 1.0)
        maps[SPREAD_MAP] = spread
    conf = np.clip(conf, 0.0, 1.0).astype(np.float32)
    if labels.shape != (h, w):
        raise HistoError(f"the model returned labels of shape {labels.shape} for an image {(h, w)}")
    return SegResult(labels=labels, confidence=conf, maps=maps, notes=[])


def segment(image: np.ndarray, model: Any, **kwargs: Any) -> SegResult:
    """Blocking :func:`segment_iter`."""
    return drain(segment_iter(image, model, **kwargs))
