"""Train a shipped nuclei segmentation model on the public tiles in ../shared/data.

Data (``--sets all80``, the default): the 30 MoNuSeg 2018 training tiles (1000 x 1000 px, 40x,
TCGA, CC BY-NC-SA 4.0) and the 50 TNBC tiles (512 x 512 px, 40x, Institut Curie, CC BY 4.0).
Whole slides/patients are held out for validation (``VALIDATION``: the colon, prostate and LUAD
tiles the earlier models never saw, a frozen bladder section, a kidney tile, a lung/liver tile,
and TNBC patients 10 and 11). Every epoch is scored on them at 40x and downsampled 2x (how a
20x scanner shows the same tissue); ``--keep best`` keeps the epoch with the best mean AJI.

Augmentation: dihedral, HED stain jitter, brightness/contrast, scale 0.5-1.5 (so 20x tissue
segments too), Gaussian blur, elastic deformation (``--elastic P``, off unless given). Runs write
to the gitignored ``runs/seg/NAME`` (checkpointed each epoch; ``--resume`` continues an interrupted
run); ``--ship`` copies weights + card into ``resources/seg/NAME``. Each shipped model's card.md
records its exact command, seed and minutes.

``--eval-only`` scores a trained model folder (runs/ or resources/) on the validation split;
``--make-default NAME`` (without training) only points ``"default"`` at a shipped model (with
``--retire-previous``, the previous default is recorded as superseded and its folder removed).
Without ../shared/data the script says so in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# NAPARI_HISTO_DATA points at another copy of ../shared/data (e.g. JPEG copies on a GPU machine).
SHARED = Path(os.environ.get("NAPARI_HISTO_DATA", ROOT.parent / "shared" / "data"))
SETS = {
    "monuseg": ("monuseg2018_train_subset", "monuseg2018_train_rest"),
    "all80": ("monuseg2018_train_subset", "monuseg2018_train_rest", "tnbc"),
}
SEG_DIR = ROOT / "resources" / "seg"
RUNS = ROOT / "runs" / "seg"
# Whole slides/patients held out: organs rare or absent in training, frozen sections, and two
# whole TNBC patients (another hospital). The first three are the earlier models' validation
# tiles, so a model continued from unet_monuseg_v2 has never trained on any of these.
VALIDATION = {
    "TCGA-NH-A8F7-01A-01-TS1": "colon (COAD), frozen section",
    "TCGA-CH-5767-01Z-00-DX1": "prostate (PRAD)",
    "TCGA-50-5931-01Z-00-DX1": "lung adenocarcinoma (LUAD)",
    "TCGA-DK-A2I6-01A-01-TS1": "bladder, frozen section",
    "TCGA-HE-7130-01Z-00-DX1": "kidney (KIRP), dense nuclei",
    "TCGA-38-6178-01Z-00-DX1": "lung/liver per MoNuSeg's table",
    "tnbc_10": "TNBC patient 10 (Institut Curie), all its tiles",
    "tnbc_11": "TNBC patient 11 (Institut Curie), all its tiles",
}
ORGAN = {
    "A7": "breast", "AR": "breast", "E2": "breast", "B0": "kidney", "21": "lung",
    "50": "lung", "CH": "prostate", "G9": "prostate", "NH": "colon", "18": "lung/liver",
    "38": "lung/liver", "49": "lung/liver", "AY": "colon", "DK": "bladder", "G2": "bladder",
    "HE": "kidney", "KB": "stomach", "RD": "stomach",
}  # fmt: skip
LICENSE = "CC BY-NC-SA 4.0 (trained on MoNuSeg 2018; non-commercial, share-alike)"


def _held_out(name: str) -> bool:
    return name in VALIDATION or any(name.startswith(k + "_") for k in VALIDATION)


def load_split(sets: str = "monuseg"):
    """(train, val) lists of (name, rgb, labels) from ../shared/data; one line when it is missing."""
    from napari_histo.core.io import read_image, read_labels

    folders = [SHARED / f for f in SETS[sets]]
    missing = [str(f) for f in folders if not (f / "images").is_dir()]
    if missing:
        sys.exit(
            f"training data not found: {', '.join(missing)} (needs ../shared/data beside the repo)"
        )
    train, val = [], []
    for folder in folders:
        imgs = [p for p in (folder / "images").iterdir() if p.suffix in (".png", ".jpg")]
        for img in sorted(imgs, key=lambda p: p.stem):
            lab = read_labels(folder / "masks" / f"{img.stem}.tif")
            item = (img.stem, read_image(img), lab.astype("int32"))
            (val if _held_out(img.stem) else train).append(item)
    return train, val


def organ(name: str) -> str:
    return "breast (TNBC)" if name.startswith("tnbc") else ORGAN.get(name[5:7], "?")


def rescale_pairs(pairs, factor: float):
    """The pairs resampled by ``factor`` (0.5: how a 20x scanner shows the same tissue)."""
    import numpy as np
    from skimage.transform import rescale

    out = []
    for name, img, lab in pairs:
        im = rescale(img, factor, channel_axis=-1, anti_aliasing=True, preserve_range=True)
        lb = rescale(lab, factor, order=0, anti_aliasing=False, preserve_range=True)
        out.append(
            (
                f"{name}@{factor:g}x",
                np.clip(np.rint(im), 0, 255).astype(np.uint8),
                lb.astype("int32"),
            )
        )
    return out


def set_default(name: str, retire_previous: bool = False) -> None:
    """Point ``"default"`` at shipped ``name``; with ``retire_previous``, also record the
    previous default as superseded by it and delete its folder from ``resources/seg``."""
    from napari_histo.core.atomic import atomic_write_text
    from napari_histo.core.seg.registry import REGISTRY_FILE

    if not (SEG_DIR / name / "weights.safetensors").is_file():
        sys.exit(f"no shipped model {name!r} in {SEG_DIR}")
    reg_file = SEG_DIR / REGISTRY_FILE
    reg = json.loads(reg_file.read_text()) if reg_file.is_file() else {}
    previous = reg.get("default")
    retire = retire_previous and previous and previous != name
    reg.update(default=name, note="the shipped model that 'default' stands for (see its card.md)")
    if retire:
        reg.setdefault("retired", {})[previous] = name
    atomic_write_text(reg_file, json.dumps(reg, indent=2) + "\n")
    print(f"default -> {name}")
    if retire and (SEG_DIR / previous).is_dir():
        shutil.rmtree(SEG_DIR / previous)
        print(f"retired {previous} (its folder removed; {name}'s card keeps its command)")


def set_inference(folder: Path, settings: str) -> None:
    """Merge JSON ``settings`` into the card's ``inference`` (what ``load_model`` applies)."""
    from napari_histo.core.weights import read_card, write_card

    card = read_card(folder)
    card["inference"] = {**(card.get("inference") or {}), **json.loads(settings)}
    write_card(folder, card)
    print(f"{folder.name}: inference {card['inference']}")


def evaluate_model(folder: Path, val, tta: bool = False, mpp: float | None = None) -> dict:
    """Mean and per-image metrics of ``val``; ``mpp``: the images' pixel size, told to
    ``segment``'s own path (which resamples to the model's pixel size)."""
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.inference import segment_iter
    from napari_histo.core.seg.metrics import mean_scores, score_images
    from napari_histo.core.seg.registry import load_model
    from napari_histo.core.seg.workflow import segment_array_iter

    model = load_model(folder, "cpu")

    def predict(img):
        if mpp is None:
            run = segment_iter(img, model, tta=tta)
        else:
            run = segment_array_iter(img, model, device="cpu", tta=tta, mpp=mpp)
        return drain(run).labels

    per = score_images(val, predict, digits=4)
    # precision and recall too: the card's mean line must not keep the training loop's values
    # (there the mean runs over the 40x and the 20x copies).
    return {**mean_scores(per, digits=4), "per_image": per}


HOW = {
    "unet": "ternary background / inside / boundary maps, instances by seeded watershed",
    "fullnet": "FullNet + varCE, Qu et al. 2019: ternary maps, instances from the inside class",
    "hovernet": "HoVer-Net-style: nuclear pixels and horizontal/vertical distance maps, "
    "instances by marker-controlled watershed",
    "maskrcnn": "torchvision Mask R-CNN: instances straight from the detector, painted by score",
}


def describe(arch: str, kwargs: dict) -> str:
    """How an architecture finds nuclei, for a card's summary."""
    how = HOW.get(arch, HOW["unet"])
    if arch == "hovernet" and kwargs.get("shared_decoder"):
        how += "; one decoder shared by both branches (the U-Net's cost)"
    return how


def cpu_speed(folder: Path, img, threads: int = 2) -> dict:
    """Segmentation speed on the CPU (``threads`` threads, no multiple inference) on ``img``."""
    import os

    import torch

    from napari_histo.core.progress import drain
    from napari_histo.core.seg.inference import segment_iter
    from napari_histo.core.seg.registry import load_model

    torch.set_num_threads(threads)
    model = load_model(folder, "cpu")
    drain(segment_iter(img[:256, :256], model))  # warm-up
    t = time.perf_counter()
    drain(segment_iter(img, model))
    dt = time.perf_counter() - t
    return {
        "mpx_per_s": round(img.shape[0] * img.shape[1] / 1e6 / dt, 3),
        "tile": f"{img.shape[1]}x{img.shape[0]}",
        "threads": threads,
        "load_average": round(os.getloadavg()[0], 1),
    }


def finalize(folder: Path, val, val20, write: bool) -> dict:
    """Score ``folder`` on the CPU (40x, 20x, 40x with multiple inference) and time it.

    With ``write`` the figures go into its card (card.json + card.md).
    """
    res = evaluate_model(folder, val)
    res20 = evaluate_model(folder, val20)
    res_tta = evaluate_model(folder, val, tta=True)
    big = max(val, key=lambda t: t[2].size)[1]
    speed = cpu_speed(folder, big)
    out = {
        "validation": {k: v for k, v in res.items() if k != "per_image"},
        "validation_20x": res20,
        "tta8": {k: v for k, v in res_tta.items() if k != "per_image"},
        "cpu": speed,
    }
    if write:
        from napari_histo.core.weights import read_card, write_card

        c = read_card(folder)
        c["validation"] = {**c.get("validation", {}), **res}
        c["validation_20x"] = res20
        c["validation_tta8"] = out["tta8"]
        c["cpu_speed"] = speed
        write_card(folder, c)
    return out


def ship(folder: Path, name: str) -> None:
    """Copy weights + card from ``folder`` into resources/seg/NAME (staged, then swapped in)."""
    import os
    import shutil

    dest, stage, old = SEG_DIR / name, SEG_DIR / f".{name}.partial", SEG_DIR / f".{name}.old"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for f in ("weights.safetensors", "card.json", "card.md"):
        shutil.copy2(Path(folder) / f, stage / f)
    if dest.exists():
        os.replace(dest, old)
    os.replace(stage, dest)
    shutil.rmtree(old, ignore_errors=True)
    print(f"shipped {dest}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--name", default=None, help="model folder name (default: <arch>_monuseg)")
    ap.add_argument(
        "--kwargs", default="{}", help="JSON architecture kwargs, e.g. '{\"base\": 16}'"
    )
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--steps-per-epoch", type=int, default=80)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--color-jitter", type=float, default=0.05, help="HED jitter strength")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument(
        "--workers", type=int, default=0,
        help="background processes making augmented batches (2-4 keep a GPU busy)",
    )  # fmt: skip
    ap.add_argument(
        "--skip-final-eval", action="store_true",
        help="no CPU re-scoring with/without TTA at the end (run --eval-only later)",
    )  # fmt: skip
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--set-default", action="store_true", help="make the trained model the default")
    ap.add_argument(
        "--make-default", metavar="NAME", help="only point 'default' at a shipped model"
    )
    ap.add_argument(
        "--retire-previous",
        action="store_true",
        help="with --make-default: record the previous default as superseded and remove it",
    )
    ap.add_argument(
        "--ship-trained", metavar="NAME",
        help="only copy runs/seg/NAME into resources/seg/ (after --eval-only wrote its figures)",
    )  # fmt: skip
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument(
        "--inference", default=None, metavar="JSON",
        help="with --eval-only: merge these post-processing settings into the card first, e.g. "
        '\'{"hv_sigma": 2.5, "chosen_by": "..."}\' (chosen on training tiles, never on validation)',
    )  # fmt: skip
    ap.add_argument("--sets", choices=sorted(SETS), default="all80", help="training data")
    ap.add_argument(
        "--scale-range", type=float, nargs=2, default=(0.5, 1.5), metavar=("LO", "HI"),
        help="resize patches by a factor in [LO, HI] (0.5 = how a 20x scan shows 40x tissue)",
    )  # fmt: skip
    ap.add_argument("--blur", type=float, default=0.2, help="probability of a blur augmentation")
    ap.add_argument(
        "--elastic", type=float, default=0.0, help="probability of an elastic deformation"
    )
    ap.add_argument("--keep", choices=("best", "last"), default="best")
    ap.add_argument(
        "--ema", type=float, metavar="DECAY",
        help="validate and keep a moving average of the weights (decay per step, e.g. 0.999)",
    )  # fmt: skip
    ap.add_argument(
        "--keep-on", choices=("40x+20x", "40x"), default="40x+20x",
        help="the validation tiles the training loop scores each epoch (and --keep best keeps "
        "by): the 40x tiles and their 2x-downsampled copies, or the 40x tiles only (when the "
        "magnification guess brings 20x tiles to the model's scale at inference)",
    )  # fmt: skip
    ap.add_argument(
        "--normalize-to", metavar="TEMPLATE", type=Path,
        help="stain-normalize every training and validation tile to this template with the "
        "shipped DCGMM first (as Jung et al. 2019 trained their Mask R-CNN)",
    )  # fmt: skip
    ap.add_argument(
        "--ship", action="store_true",
        help="copy the trained model from runs/seg/ into resources/seg/ (weights + card)",
    )  # fmt: skip
    ap.add_argument(
        "--init",
        default="none",
        help="start from this model (a shipped name or folder) instead of from scratch",
    )
    args = ap.parse_args(argv)

    name = args.name or f"{args.arch}_monuseg"
    out = RUNS / name
    if args.make_default:
        set_default(args.make_default, args.retire_previous)
        return 0
    if args.ship_trained:
        ship(RUNS / args.ship_trained, args.ship_trained)
        return 0
    train, val = load_split(args.sets)
    if args.normalize_to is not None:
        from napari_histo.core.io import read_image
        from napari_histo.core.progress import drain
        from napari_histo.core.stain.workflow import make_normalizer

        norm = drain(make_normalizer("dcgmm", [read_image(args.normalize_to)], device=args.device))
        train = [(n, norm.transform(img), lab) for n, img, lab in train]
        val = [(n, norm.transform(img), lab) for n, img, lab in val]
    # Validation at 40x and as a 20x scanner would show the same held-out tissue.
    val_all = val + rescale_pairs(val, 0.5)
    if args.eval_only:
        folder = out if out.is_dir() else SEG_DIR / name
        if args.inference:
            set_inference(folder, args.inference)
        res = finalize(folder, val, val_all[len(val) :], write=folder.parent == RUNS)
        print(json.dumps({k: res[k] for k in ("validation", "tta8", "cpu")}, indent=2))
        if args.ship:
            ship(folder, name)
        if args.set_default:
            set_default(name)
        return 0

    from napari_histo.core.progress import drain
    from napari_histo.core.seg.train import train_iter

    data = (
        f"{len(train)} tiles at 40x from ../shared/data ({', '.join(SETS[args.sets])}): "
        + ", ".join(f"{n} ({organ(n)})" for n, _, _ in train)
    )
    if any(p.suffix == ".jpg" for f in SETS[args.sets] for p in (SHARED / f / "images").iterdir()):
        data += " (read from JPEG quality-92 copies made by scripts/pack_training_data.py)"
    split = "; ".join(f"{n}: {why}" for n, why in VALIDATION.items())
    from napari_histo.core.device import resolve_device

    gpu = resolve_device(args.device).type == "cuda"
    if gpu:
        import torch

        where = f"a GPU (one {torch.cuda.get_device_name(0)})"
    else:
        where = f"{args.threads} CPU cores"
    if args.normalize_to is not None:
        data += (
            f"; every training and validation tile stain-normalized first to "
            f"{args.normalize_to.name} with the shipped DCGMM (as Jung et al. 2019)"
        )
    cmd = ("python " if gpu else "nice -n 5 .venv/bin/python ") + "scripts/train_seg_default.py "
    cmd += shlex.join(sys.argv[1:] if argv is None else argv)
    arch, kwargs = args.arch, json.loads(args.kwargs)
    if args.init != "none":  # fine-tuning keeps the parent's architecture, whatever --arch says
        from napari_histo.core.seg.registry import read_model

        arch, kwargs = read_model(args.init)[:2]
    card = {
        "name": name,
        "summary": (
            f"A small {arch} for H&E nuclei instance segmentation ({describe(arch, kwargs)}), "
            f"trained from scratch on {where} "
            f"with scripts/train_seg_default.py. Validation figures are on {len(val)} held-out "
            "tiles (whole slides/patients: organs rare or absent in training, frozen sections, "
            "two whole TNBC patients), at 40x and downsampled 2x as a 20x scan; "
            + (
                "the epoch with the best mean validation AJI "
                + ("on the 40x tiles " if args.keep_on == "40x" else "")
                + "is kept."
                if args.keep == "best"
                else "the last epoch is kept (the validation tiles did not pick the checkpoint)."
            )
        ),
        "validation_split": split,
        "command": cmd,
        "seed": args.seed,
        # The tiles' pixel size (40x); segment resamples images of another recorded size to it.
        "mpp": 0.25,
    }
    if args.init != "none":
        # The loop adds parent_command, parent_training and ancestors from the parent's card.
        card["summary"] = card["summary"].replace(
            f"trained from scratch on {where}",
            f"continued from '{args.init}' (its own training in parent_command) on {where}",
        )
    t0 = time.time()
    last = [0.0]

    def log(ev) -> None:
        if ev.stage == "epoch" or time.time() - last[0] > 60:
            last[0] = time.time()
            print(f"[{time.time() - t0:7.0f}s] {ev}", flush=True)

    gen = train_iter(
        pairs=train,
        val_pairs=val if args.keep_on == "40x" else val_all,
        out=out,
        init=args.init,
        arch=args.arch if args.init == "none" else None,
        arch_kwargs=json.loads(args.kwargs) if args.init == "none" else None,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        lr=args.lr,
        patch=args.patch,
        batch_size=args.batch,
        seed=args.seed,
        device=args.device,
        patience=None,
        keep=args.keep,
        overwrite=True,
        resume=args.resume,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
        data=data,
        license=LICENSE,
        card=card,
        threads=args.threads,
        color_jitter=args.color_jitter,
        scale_range=tuple(args.scale_range),
        blur=args.blur,
        elastic=args.elastic,
        ema=args.ema,
        workers=args.workers,
    )
    folder = drain(gen, log)
    print(f"trained {folder} in {time.time() - t0:.0f} s", flush=True)
    if args.skip_final_eval:
        print("final CPU evaluation skipped: run again with --eval-only", flush=True)
    else:
        res = finalize(folder, val, val_all[len(val) :], write=True)
        print(json.dumps({k: res[k] for k in ("validation", "tta8", "cpu")}, indent=2), flush=True)
    if args.ship:
        ship(folder, name)
    if args.set_default:
        set_default(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
