"""The human-in-the-loop cycle as core calls: pick a model, segment, fine-tune, compare versions.

The "Segment nuclei" and "Fine-tune" widgets use these; ``napari-histo train`` consumes the same
project folders. Model versions live in the user's model folder (``NAPARI_HISTO_MODELS`` or
``~/.napari-histo/models``), one folder each, written atomically by the training loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HistoError
from ..progress import Progress, staged
from ..tiling import BlockTiling
from .registry import list_models, load_model, user_model_dir
from .scale import central_crop, guess_factor, guess_settings


@dataclass(frozen=True)
class Pipeline:
    """A published method as a preset: which architecture, which normalization, which inference."""

    name: str
    label: str
    arch: str
    normalize: str
    tta: bool | int
    differs: str


PIPELINES = {
    "jung2019": Pipeline(
        name="jung2019",
        label="Jung et al. 2019: DCGMM + Mask R-CNN + multiple inference",
        arch="maskrcnn",
        normalize="dcgmm",
        tta=True,
        differs=(
            "ResNet-18 FPN trained from scratch on the 80 public tiles (the paper: ResNet-101, "
            "ImageNet-pretrained, TCGA and hospital data); instances merged across the 8 "
            "flips/rotations by mask IoU and majority vote"
        ),
    )
}


def pipeline_model(name: str, user_dir: str | os.PathLike | None = None) -> str:
    """The model folder a preset segments with: the user's newest of its architecture, else the
    shipped one.

    Raises
    ------
    HistoError
        Unknown preset, or no trained model of its architecture (shipped or the user's).
    """
    if name not in PIPELINES:
        raise HistoError(f"unknown pipeline {name!r}; choose one of {', '.join(PIPELINES)}")
    arch = PIPELINES[name].arch
    # The user's own (fine-tuned) versions first, newest first; then the shipped one.
    infos = sorted(
        (i for i in list_models(user_dir) if i.arch == arch),
        key=lambda i: (not i.shipped, i.created),
        reverse=True,
    )
    if not infos:
        raise HistoError(
            f"the {name} pipeline needs a trained {arch} model and none is installed; train one "
            f"with scripts/train_seg_default.py --arch {arch} (or napari-histo train --init none "
            f"--arch {arch})"
        )
    return infos[0].ref


@dataclass
class ModelEntry:
    """A model the user can choose: a shipped one or a fine-tuned version."""

    label: str
    ref: str
    created: float = 0.0
    shipped: bool = False


def available_models(user_dir: str | os.PathLike | None = None) -> list[ModelEntry]:
    """Shipped models first, then the user's versions newest first."""

    entries = []
    for info in list_models(user_dir if user_dir is not None else user_model_dir()):
        shipped = bool(getattr(info, "shipped", False))
        created = float(getattr(info, "created", 0.0) or 0.0)
        name = getattr(info, "name", str(info))
        when = (
            ""
            if shipped or not created
            else time.strftime(" (%Y-%m-%d %H:%M)", time.localtime(created))
        )
        label = f"{name} (shipped)" if shipped else f"{name}{when}"
        entries.append(
            ModelEntry(
                label, str(getattr(info, "ref", getattr(info, "path", name))), created, shipped
            )
        )
    shipped = [e for e in entries if e.shipped]
    mine = sorted((e for e in entries if not e.shipped), key=lambda e: e.created, reverse=True)
    return shipped + mine


def segment_array_iter(
    image: np.ndarray,
    model: Any = "default",
    device: str = "auto",
    tta: bool | int | None = None,
    normalizer=None,
    translator=None,
    tile=None,
    blocks: BlockTiling | None = BlockTiling(),
    mpp: float | None = None,
    guess_scale: bool = False,
) -> Generator[Progress, None, Any]:
    """Translate? -> normalize? -> resample? -> segment one in-memory image (yields progress).

    Parameters
    ----------
    image : array
        RGB (or anything ``to_rgb_uint8`` takes).
    model : str, path or LoadedModel
        ``"default"``, a shipped or user model name, a folder, or a loaded model.
    tta : bool, int or None
        Multiple inference; None leaves it to the architecture (see ``segment_iter``).
    normalizer : fitted stain normalizer, optional
        Applied after translation, before the network.
    translator : Translator, str or path, optional
        An IHC -> H&E model (loaded, or what ``translate.load_translator`` takes): the image is
        translated first, so IHC slides segment like H&E.
    tile, blocks :
        Network tiling and block tiling (see ``segment_iter``); ``blocks=None`` segments the
        image as one window (what a slide worker does with its window).
    mpp : float, optional
        The image's pixel size (micrometres per pixel). When the model's card records its
        training pixel size and the two differ by more than 10 %, the image is resampled to the
        model's pixel size and the labels back to the image's (the result's notes say so).
    guess_scale : bool
        Without ``mpp``: guess it from the nuclei (``core.seg.scale``). A first pass at the
        image's scale measures the median nucleus; an image of smaller nuclei than the model's
        card says is enlarged and segmented again (the notes say what was seen and done).

    Returns
    -------
    SegResult
    """
    from .inference import segment_iter

    net = load_model(model, device=device)
    if translator is not None:
        from ..translate import load_translator, translate_iter

        if isinstance(translator, str | os.PathLike):
            translator = load_translator(translator, "ihc2he", device)
        image = yield from translate_iter(image, translator)
    kw = {"blocks": blocks, "tile": tile}
    factor = resample_factor(mpp, net.card)
    note = None
    if factor is not None:
        note = f"resampled x{factor:.2f} from {mpp:g} to the model's {model_mpp(net.card):g} um/px"
    elif not mpp and guess_scale and guess_settings(net.card) is not None:
        from ..io import to_rgb_uint8

        image = to_rgb_uint8(image, "image")
        factor, note, first = yield from guess_scale_iter(image, net, normalizer, **kw)
        if factor is None:
            use_tta = net.spec.tta if tta is None else tta
            if first.labels.shape == image.shape[:2] and not use_tta:
                res = first  # the first pass was the whole job
            else:
                res = yield from segment_iter(image, net, tta=tta, normalizer=normalizer, **kw)
            res.notes.append(note)
            res.scale = note
            return res
    if factor is None:
        return (yield from segment_iter(image, net, tta=tta, normalizer=normalizer, **kw))
    from skimage.transform import resize

    from ..io import to_rgb_uint8

    rgb = to_rgb_uint8(image, "image")
    if normalizer is not None:  # statistics of the image as scanned, then resample
        rgb = to_rgb_uint8(normalizer.transform(rgb), "normalized image")
    h, w = rgb.shape[:2]
    shape = (max(1, round(h * factor)), max(1, round(w * factor)))
    big = resize(rgb, (*shape, 3), order=1, preserve_range=True, anti_aliasing=factor < 1)
    res = yield from staged(
        segment_iter(np.clip(np.rint(big), 0, 255).astype(np.uint8), net, tta=tta, **kw),
        f"enlarged x{factor:.2f}:" if factor > 1 else f"reduced x{factor:.2f}:",
    )
    res.labels = resize(res.labels, (h, w), order=0, preserve_range=True, anti_aliasing=False)
    res.labels = res.labels.astype(np.uint32)
    res.confidence = resize(res.confidence, (h, w), order=1, preserve_range=True).astype(np.float32)
    res.maps = {}
    res.notes.append(note)
    if not mpp:
        res.scale = note  # the guess: what it saw and did
    return res


def guess_scale_iter(
    image: np.ndarray, net: Any, normalizer=None, **kw: Any
) -> Generator[Progress, None, tuple[float | None, str, Any]]:
    """Segment ``image``'s central crop as it is and guess from its nuclei how much to enlarge
    the image (``scale.guess_factor``). Returns ``(factor or None, what was seen, the pass)``.

    ``kw`` goes to ``segment_iter`` (tiling); the progress bar says the pass is the guess.
    """
    from .inference import segment_iter

    first = yield from staged(
        segment_iter(central_crop(image), net, tta=False, normalizer=normalizer, **kw),
        "guessing the magnification:",
    )
    factor, note = guess_factor(first.labels, net.card)
    return factor, note, first


def model_mpp(card: dict) -> float | None:
    """The pixel size (um/px) a model was trained at, from its card (None when not recorded)."""
    try:
        value = float(card.get("mpp") or 0)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def resample_factor(mpp: float | None, card: dict, tolerance: float = 0.1) -> float | None:
    """How much to scale an image of pixel size ``mpp`` for a model (None: leave it as it is)."""
    target = model_mpp(card)
    if not mpp or not target:
        return None
    factor = float(mpp) / target
    return None if abs(factor - 1.0) <= tolerance else factor


def scale_note(mpp: float | None, card: dict) -> str:
    """What segmenting with the model of ``card`` assumed about the pixel size, in words."""
    target = model_mpp(card)
    trained = (
        f"the model was trained at {target:g} µm/px"
        if target
        else "the model's pixel size is not recorded"
    )
    if not mpp:
        return f"pixel size unknown, segmented as it is; {trained}"
    factor = resample_factor(mpp, card)
    if factor is None:
        return f"{mpp:g} µm/px, {trained}: no resampling"
    return f"{mpp:g} µm/px, {trained}: resampled x{factor:.2f}"


Region = tuple[slice, slice, np.ndarray]


def segment_regions_iter(
    regions: Sequence[Region],
    model: Any = "default",
    device: str = "auto",
    tta: bool | int | None = None,
    normalizer=None,
    translator=None,
    mpp: float | None = None,
    guess_scale: bool = False,
) -> Generator[Progress, None, list]:
    """:func:`segment_array_iter` on each ``(rows, cols, crop)`` region; returns their SegResults."""
    results = []
    for k, (_, _, crop) in enumerate(regions, start=1):
        res = yield from segment_array_iter(
            crop, model, device, tta, normalizer, translator, mpp=mpp, guess_scale=guess_scale
        )
        results.append(res)
        yield Progress(step=k, total=len(regions), stage="region")
    return results


def merge_regions(
    labels: np.ndarray,
    regions: Sequence[Region],
    results: Sequence[Any],
    confidence: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Paste each region's nuclei into the full label image (and confidence map), in place.

    A region segmented again replaces what was there; ids stay unique across the image (each
    region's ids are shifted past every id already used).
    """
    next_id = 1
    for (rs, cs, _), res in zip(regions, results, strict=True):
        lab = np.asarray(res.labels, np.uint32)
        labels[rs, cs] = 0
        offset = max(next_id, int(labels.max()) + 1) - 1
        labels[rs, cs] = np.where(lab > 0, lab + offset, 0)
        next_id = int(labels.max()) + 1
        if confidence is not None and getattr(res, "confidence", None) is not None:
            confidence[rs, cs] = res.confidence
    return labels, confidence


@dataclass
class FineTuneResult:
    """A new model version and how it compares with its parent on the held-back pair."""

    model_dir: Path
    parent: str
    pairs: list[str]
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)


def fine_tune_iter(
    pairs: Sequence[tuple[str, np.ndarray, np.ndarray]],
    init: str = "default",
    epochs: int = 10,
    lr: float = 2e-4,
    validation: tuple[str, np.ndarray, np.ndarray] | None = None,
    device: str = "auto",
    out_root: str | os.PathLike | None = None,
    name: str | None = None,
    seed: int = 0,
    max_seconds: float | None = None,
    focus: bool = True,
) -> Generator[Progress, None, FineTuneResult]:
    """Fine-tune ``init`` on corrected (name, image, labels) pairs into a new model version.

    Yields training progress; closing the generator cancels and leaves no new version (the
    training loop writes atomically). With a held-back ``validation`` pair, the parent and the new
    version are both scored on it (AJI, Dice, PQ) for the before/after table. ``max_seconds``
    caps the training time (the learning rate decays over it). ``focus`` draws half of the
    patches where the corrections changed the parent's segmentation: on 2 CPU cores, 80 s on 5
    corrected 512² tiles gave +0.051 AJI with it, +0.039 without, +0.038 in 150 s without
    (bench/results/finetune.md).
    """
    from .metrics import aggregated_jaccard_index, dice, panoptic_quality
    from .train import train_iter

    if not pairs:
        raise HistoError("no training pairs: correct a segmentation (or pick saved pairs) first")
    for pname, img, lab in pairs:
        if img.shape[:2] != lab.shape:
            raise HistoError(f"{pname}: labels {lab.shape} do not match the image {img.shape[:2]}")
    root = Path(out_root) if out_root is not None else user_model_dir()
    parent = Path(init).name if os.sep in str(init) else str(init)
    name = name or f"{parent}-ft-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = root / name
    # Named pairs: the card lists the corrected images and the held-back one by name.
    val_pairs = [validation] if validation is not None else None
    model_dir = yield from train_iter(
        list(pairs),
        out=out_dir,
        init=init,
        epochs=epochs,
        lr=lr,
        val_pairs=val_pairs,
        device=device,
        seed=seed,
        max_seconds=max_seconds,
        focus=focus,
    )

    def score(model_ref):  # a progress generator: closing it (cancel) stops the scoring too
        _, img, truth = validation
        pred = (yield from segment_array_iter(img, model=str(model_ref), device=device)).labels
        pq = panoptic_quality(truth, pred)
        return {
            "AJI": float(aggregated_jaccard_index(truth, pred)),
            "Dice": float(dice(truth, pred)),
            "PQ": float(pq["pq"] if isinstance(pq, dict) else pq),
        }

    result = FineTuneResult(Path(model_dir), str(init), [p[0] for p in pairs])
    if validation is not None:
        yield Progress(step=0, total=2, stage="compare", message="scoring the parent")
        result.before = yield from score(init)
        yield Progress(step=1, total=2, stage="compare", message="scoring the new version")
        result.after = yield from score(model_dir)
        yield Progress(step=2, total=2, stage="compare")
    return result
