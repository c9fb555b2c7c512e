"""Fit the shipped DCGMM stain model (``resources/stain/dcgmm_default``).

The shipped model was fitted with ``--sets all80`` (the 80 public H&E tiles minus the held-out
slides/patients) and chosen on the held-out slides with bench/dcgmm_split.py; its card gives the
exact command. ``--sets monuseg13`` (below) is how the first version was made.

Data: the 13 MoNuSeg 2018 training tiles of ../shared/data (40x H&E from several hospitals,
CC BY-NC-SA 4.0) and the TIAToolbox stain-normalisation target (BSD-3-Clause). The fitted
weights inherit MoNuSeg's non-commercial share-alike licence. The fit is unsupervised (no
labels) and reproducible (fixed seed); on one CPU thread it takes a few minutes::

    nohup nice -n 15 .venv/bin/python scripts/fit_dcgmm_default.py > /tmp/dcgmm_default.log 2>&1 &

Writes ``weights.safetensors``, ``card.json`` and ``card.md``, each atomically.

On a GPU machine (scripts/fit_dcgmm_variants_gpu.sh): ``--device cuda --max-minutes 5``; the
data root can be moved with ``NAPARI_HISTO_DATA`` (same layout; ``*.png`` or ``*.jpg`` tiles).
The fit path needs only torch, numpy, scipy, scikit-image, pillow, tifffile and safetensors.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_HISTO_DATA") or ROOT.parent / "shared" / "data")
MONUSEG = DATA / "monuseg2018_train_subset" / "images"
TIA_TARGET = DATA / "stain" / "tiatoolbox_target" / "target_image.png"
IMAGE_GLOBS = ("*.png", "*.jpg")
OUT = ROOT / "resources" / "stain" / "dcgmm_default"


def _images_in(folder: Path) -> list[Path]:
    """PNG or JPEG tiles of a folder, sorted by name (a JPEG copy of the data set works too)."""
    return sorted((p for g in IMAGE_GLOBS for p in folder.glob(g)), key=lambda p: p.name)


def _target() -> Path:
    """The TIAToolbox target, as PNG or as a JPEG copy."""
    jpg = TIA_TARGET.with_suffix(".jpg")
    return jpg if not TIA_TARGET.is_file() and jpg.is_file() else TIA_TARGET


LICENSE = (
    "CC BY-NC-SA 4.0 (inherited from the MoNuSeg 2018 training tiles; the TIAToolbox target "
    "image is BSD-3-Clause)"
)


def describe(card: dict) -> dict:
    """Summary and notes for card.md (rendered by napari_histo.core.weights.card_markdown)."""
    ev = card.get("evaluation", {})
    notes = [
        f"the network sees the density at 1/{card['scale']} resolution; logits are upsampled "
        "bilinearly",
        f"final loss (mixture negative log-likelihood per pixel, "
        f"{card['training']['final_loss_over']}): {card['training']['final_loss']}",
    ]
    if ev:
        notes.append(
            f"loss on the whole training images (each its own M-step): "
            f"{ev['loss_full_images']:.4f} (a new untrained network: {ev['loss_untrained']:.4f})"
        )
        notes.append(
            "mean density of each class on the training images: "
            + ", ".join(
                f"{n} {d:.3f}"
                for n, d in zip(card["class_names"], ev["class_mean_density"], strict=True)
            )
        )
    notes.append(
        "licence note: weights fitted on MoNuSeg are non-commercial and share-alike; a model you "
        "refit from these weights inherits that licence (the refit's card says so)"
    )
    summary = (
        "A deep convolutional Gaussian mixture model of H&E stain colour (Zanjani et al., MIDL "
        "2018), fitted unsupervised with napari-histo. The network reads the optical density of "
        f"a tile and assigns every pixel to {card['classes']} classes ordered by density: "
        + ", ".join(card["class_names"])
        + ". It carries no template: `get_normalizer('dcgmm').fit(template)` adds one."
    )
    return {"summary": summary, "notes": notes}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--sets", choices=("monuseg13", "all80"), default="monuseg13",
        help="all80: the 80 H&E tiles (MoNuSeg 30 + TNBC 50) minus the validation slides/patients "
        "of scripts/train_seg_default.py, plus the stain examples",
    )  # fmt: skip
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--scale", type=int, default=2, help="network resolution 1/scale")
    parser.add_argument("--name", default="dcgmm_default")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda (default cpu)")
    parser.add_argument(
        "--loss", choices=("ours", "paper"), default="ours",
        help="ours: per-image M-step, exact likelihood; paper: the reference code's (batch "
        "M-step, per-pixel likelihood clipped at 1)",
    )  # fmt: skip
    parser.add_argument(
        "--max-minutes", type=float, default=None,
        help="stop training after this wall time and still write the model (card: steps done)",
    )  # fmt: skip
    parser.add_argument(
        "--skip-eval", action="store_true",
        help="skip the whole-image losses and class densities written to the card",
    )  # fmt: skip
    args = parser.parse_args(argv)

    import torch

    from napari_histo.core.device import resolve_device
    from napari_histo.core.io import read_image
    from napari_histo.core.stain.dcgmm import DCGMM, DCGMMNormalizer, fit_dcgmm

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, data {DATA}, loss {args.loss}", flush=True)
    if args.sets == "all80":
        paths, images, data = _all80(read_image)
    else:
        paths = [*_images_in(MONUSEG), _target()]
        images = [read_image(p) for p in paths]
        data = (
            f"{len(paths) - 1} MoNuSeg 2018 training tiles (1000x1000, 40x H&E, TCGA: breast, kidney, "
            "lung, prostate, colon; CC BY-NC-SA 4.0) and the TIAToolbox stain-normalisation target "
            "(1000x1000 H&E, BSD-3-Clause)"
        )
    command = "nice -n 15 .venv/bin/python scripts/fit_dcgmm_default.py " + shlex.join(
        a for a in (argv if argv is not None else sys.argv[1:])
    )
    card = {
        "name": args.name,
        "data": data,
        "data_files": [p.name for p in paths],
        "license": LICENSE,
        "command": command.strip(),
    }
    t0 = time.perf_counter()
    gen = fit_dcgmm(
        images,
        steps=args.steps,
        device=str(device),
        seed=args.seed,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        start=None,
        card=card,
        classes=args.classes,
        scale=args.scale,
        loss=args.loss,
        max_seconds=None if args.max_minutes is None else 60.0 * args.max_minutes,
    )
    last = None
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            norm: DCGMMNormalizer = stop.value
            break
        last = ev
        if ev.step % 50 == 0 or ev.step == args.steps:
            print(f"{ev}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"trained: {last}  ({time.perf_counter() - t0:.0f} s)", flush=True)

    if not args.skip_eval:
        # The card's figures use the exact likelihood (loss "ours") whatever the training loss.
        untrained = DCGMMNormalizer(DCGMM(norm.classes, norm.model.scale), device=device)
        norm.card["evaluation"] = {
            "loss_full_images": norm.loss(images),
            "loss_untrained": untrained.loss(images),
            "class_mean_density": _class_densities(norm, images),
        }
    norm.card.update(describe(norm.card_json("weights.safetensors")))
    norm.save_folder(args.out)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s; card: {norm.card}", flush=True)
    return 0


def _all80(read_image):
    """Training images of the all80 split (validation slides/patients left out) + stain examples."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "train_seg_default", ROOT / "scripts" / "train_seg_default.py"
    )
    seg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seg)
    paths = []
    for folder in seg.SETS["all80"]:
        paths += [p for p in _images_in(DATA / folder / "images") if not seg._held_out(p.stem)]
    # The DCGMM authors' stain examples are GPL-3.0: kept out of a shipped model's data.
    paths.append(_target())
    data = (
        f"{len(paths)} H&E images: the MoNuSeg 2018 training tiles and TNBC tiles not held out for "
        "validation (scripts/train_seg_default.py VALIDATION: whole slides/patients) and the "
        "TIAToolbox target; MoNuSeg CC BY-NC-SA 4.0, TNBC CC BY 4.0, TIAToolbox BSD-3-Clause"
    )
    return paths, [read_image(p) for p in paths], data


def _class_densities(norm, images) -> list[float]:
    """Mean density of each class, pooled over the images (gamma-weighted)."""
    stats = [norm.source_stats(im).values for im in images]
    mass = sum(st["weight"] for st in stats)
    dsum = sum(st["weight"] * st["mean"][:, 0] for st in stats)
    return [round(float(v), 4) for v in dsum / np.maximum(mass, 1e-9)]


if __name__ == "__main__":
    sys.exit(main())
