"""Train the shipped IHC -> H&E CycleGAN (``resources/translate/ihc2he_default``) on real tiles.

Domain A (IHC) = HER2 IHC tiles of the BCI training sources + the OpenSlide Ki67 IHC tiles;
domain B (H&E) = H&E tiles of the BCI training sources + OpenSlide H&E + MoNuSeg 2018 + TNBC.
Whole BCI source images are held out (``HOLDOUT``): neither their IHC nor their H&E is trained
on; ``--eval-only`` translates their IHC and compares it with the H&E of the neighbouring
section. The MoNuSeg/TNBC slides that ``train_seg_default.py`` validates on are left out too.

The data root is ``$NAPARI_HISTO_DATA`` (default ``<repo>/../shared/data``) with the layout
of ../shared/data; ``.png`` and ``.jpg`` files are both read (matched by stem). The training path
imports only torch, numpy, scipy, scikit-image and pillow (no dask, zarr, piq, napari)::

    # GPU, 6-minute slot: stops by itself and leaves weights + card in --out
    python scripts/train_translator_default.py --device cuda --max-minutes 5.3 --ngf 32 \
        --n-blocks 9 --batch-size 8 --crop 256 --threads 2 --workers 1 --skip-eval \
        --out runs/translate/ihc2he_default --work runs/translate/ihc2he_default_work
    # later, on the CPU (needs piq): the held-out metrics and baselines into the card
    python scripts/train_translator_default.py --eval-only --out MODEL_DIR

The learning rate is constant for the first half of the run, then decays linearly to 0; the
run's progress is the larger of steps/--steps and elapsed/--max-minutes, so a run cut by the
time cap has decayed as well. Only the two generators are shipped (the discriminators stay in
``--work``, which is also checkpointed every minute). On an H200 (alone, fp32 with TF32) a step
at 256 px took 0.10 s (batch 4) and 0.17 s (batch 8) with ngf=64, 9 blocks; ngf=32 batch 4 took
0.11 s while still syncing every step (not measured since); ``--amp`` (bf16) was 1.45x faster at
ngf=64 batch 8 but is off by default for a one-shot GAN run. Generators: ngf=32 22.8 MB,
ngf=64 91 MB (both directions, float32).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "napari_histo" / "resources" / "translate" / "ihc2he_default"
HE_TEMPLATE = ROOT / "src" / "napari_histo" / "resources" / "samples" / "he_tiatoolbox_target.png"
SUFFIXES = (".png", ".jpg", ".jpeg")
BCI = Path("ihc") / "bci_her2_histdit_256"
KI67 = Path("ihc") / "openslide_ki67_he_unpaired_256"
HE_EXTRA = ("monuseg2018_train_subset", "monuseg2018_train_rest", "tnbc")

#: BCI source images held out for validation (IHC and H&E both), one per HER2 score 1+, 2+, 3+.
#: 00007 (pale 1+ IHC) and 00011 (mostly fat, blurred) are unrepresentative, so they stay in
#: training; the only HER2-0 source (00118) stays in training so the model sees a 0 case.
HOLDOUT = {
    "00640_test_1+": "HER2 1+, typical staining",
    "00361_test_2+": "HER2 2+",
    "00057_test_3+": "HER2 3+",
}
#: MoNuSeg/TNBC validation slides of scripts/train_seg_default.py (VALIDATION), excluded here too.
SEG_VALIDATION = (
    "TCGA-NH-A8F7-01A-01-TS1",
    "TCGA-CH-5767-01Z-00-DX1",
    "TCGA-50-5931-01Z-00-DX1",
    "TCGA-DK-A2I6-01A-01-TS1",
    "TCGA-HE-7130-01Z-00-DX1",
    "TCGA-38-6178-01Z-00-DX1",
    "tnbc_10",
    "tnbc_11",
)
#: Share of crops drawn from each group (by repeating tiles; crops are drawn by area).
SHARE_A = {"bci": 0.65, "ki67": 0.35}
SHARE_B = {"bci": 0.5, "ki67": 0.1, "monuseg_tnbc": 0.4}


def data_root() -> Path:
    return Path(os.environ.get("NAPARI_HISTO_DATA") or ROOT.parent / "shared" / "data")


def list_images(folder: Path) -> dict[str, Path]:
    """``stem -> path`` of the PNG/JPEG files in a folder (PNG wins when both exist)."""
    if not folder.is_dir():
        sys.exit(f"training data not found: {folder} (set NAPARI_HISTO_DATA)")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir(), key=lambda q: (q.suffix.lower() != ".png", q.name)):
        if p.is_file() and p.suffix.lower() in SUFFIXES:
            found.setdefault(p.stem, p)
    return found


def bci_source(stem: str) -> str:
    return stem.rsplit("_r", 1)[0]


def is_seg_validation(stem: str) -> bool:
    return stem in SEG_VALIDATION or any(stem.startswith(k + "_") for k in SEG_VALIDATION)


def _balance(groups: dict[str, list[np.ndarray]], share: dict[str, float]) -> list[np.ndarray]:
    """Repeat each group's images (references, not copies) so its area share ~ ``share``."""
    areas = {k: sum(a.shape[0] * a.shape[1] for a in v) for k, v in groups.items() if v}
    unit = max(areas[k] / share[k] for k in areas)
    out: list[np.ndarray] = []
    for k, imgs in groups.items():
        if imgs:
            out += imgs * max(1, round(unit * share[k] / areas[k]))
    return out


def load_training(root: Path) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """(domain A images, domain B images, a description for the card)."""
    from napari_histo.core.io import read_image

    def read(paths) -> list[np.ndarray]:
        return [read_image(p) for p in paths]

    bci_ihc, bci_he = list_images(root / BCI / "ihc"), list_images(root / BCI / "he")
    train_stems = [s for s in sorted(bci_ihc) if bci_source(s) not in HOLDOUT]
    a = {"bci": read([bci_ihc[s] for s in train_stems])}
    a["ki67"] = read(list_images(root / KI67 / "ihc").values())
    b = {"bci": read([bci_he[s] for s in sorted(bci_he) if bci_source(s) not in HOLDOUT])}
    b["ki67"] = read(list_images(root / KI67 / "he").values())
    extra = []
    for name in HE_EXTRA:
        if not (root / name / "images").is_dir():  # extra H&E is welcome, not required
            print(f"warning: {root / name / 'images'} not found; training without it", flush=True)
            continue
        imgs = list_images(root / name / "images")
        extra += [imgs[s] for s in sorted(imgs) if not is_seg_validation(s)]
    b["monuseg_tnbc"] = read(extra)
    counts = {
        "a": {k: len(v) for k, v in a.items()},
        "b": {k: len(v) for k, v in b.items()},
        "bci_train_sources": sorted({bci_source(s) for s in train_stems}),
        "bci_holdout_sources": HOLDOUT,
        "share_a": SHARE_A,
        "share_b": SHARE_B,
    }
    return _balance(a, SHARE_A), _balance(b, SHARE_B), counts


CARD_DATA = {
    "data_a": "HER2 IHC tiles (256x256) of 5 BCI source images (Liu et al., CVPR-W 2022; via "
    "HistDiT's sample data) and 82 Ki67 IHC tiles from the OpenSlide test slide OS-2 (ndpi and "
    "vsi scans)",
    "data_b": "H&E tiles of the same 5 BCI sources, 16 tiles of OpenSlide OS-1, MoNuSeg 2018 "
    "training images (1000x1000, TCGA) and TNBC (Naylor et al., 512x512), without the slides "
    "train_seg_default.py validates on",
    "license": "NON-COMMERCIAL: trained on BCI data (BCI dataset terms: non-commercial use only, "
    "cite Liu et al. 2022, no commercial use of derivatives) and MoNuSeg (CC BY-NC-SA 4.0); also "
    "uses TNBC (CC BY 4.0, Naylor et al.) and OpenSlide test data (free to use and distribute; "
    "credit OpenSlide, https://openslide.org). Use these weights for non-commercial research only.",
}


def train(args: argparse.Namespace, t_start: float) -> None:
    import torch

    from napari_histo.core.device import resolve_device
    from napari_histo.core.translate import train_translator_iter

    dev = resolve_device(args.device)
    torch.set_num_threads(max(1, args.threads))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    crop = args.crop or (256 if dev.type == "cuda" else 128)
    batch_size = args.batch_size or (8 if dev.type == "cuda" else 1)
    images_a, images_b, counts = load_training(data_root())
    print(
        f"data: A {counts['a']}, B {counts['b']} (loaded in {time.perf_counter() - t_start:.1f} s)"
    )
    command = "python scripts/train_translator_default.py " + " ".join(args.argv)
    card = {"name": "ihc2he_default", **CARD_DATA, "command": command, "data_counts": counts}
    # the budget counts from the script's start; keep a few seconds for the final save
    budget = args.max_minutes * 60 - (time.perf_counter() - t_start) - 5.0
    if budget <= 0:
        sys.exit("--max-minutes is spent before training could start")
    gen = train_translator_iter(
        images_a,
        images_b,
        steps=args.steps,
        crop=crop,
        batch_size=batch_size,
        ngf=args.ngf,
        n_blocks=args.n_blocks,
        ndf=args.ndf,
        lr=args.lr,
        seed=args.seed,
        device=str(dev),
        out=args.work,
        resume=args.resume,
        save_every=0,
        save_every_seconds=60.0,
        sample_every=0,
        card=card,
        max_seconds=budget,
        workers=args.workers,
        amp=args.amp,
        metrics_every=10 if dev.type == "cuda" else 1,
    )
    t0 = time.perf_counter()
    last, last_step, error = 0.0, 0, None
    try:
        for ev in gen:
            el = time.perf_counter() - t0
            if ev.step == 1 or el - last >= args.log_seconds:
                rate = (el - last) / max(1, ev.step - last_step)
                last, last_step = el, ev.step
                m = ev.metrics
                print(
                    f"{el:6.0f}s step {ev.step}/{ev.total} ({rate:.3f} s/step) lr {m['lr']:.2e} "
                    f"G {m['loss_G']:.3f} cyc {m['cycle_a']:.3f}/{m['cycle_b']:.3f} "
                    f"D {m['loss_D_a']:.3f}/{m['loss_D_b']:.3f}",
                    flush=True,
                )
    except Exception as exc:  # a one-shot run keeps its last checkpoint rather than nothing
        error = f"{type(exc).__name__}: {exc}"
        print(f"training stopped by an error: {error}", flush=True)
        if not (args.work / "weights.safetensors").is_file():
            raise
    args.out.mkdir(parents=True, exist_ok=True)
    # Ship the generators only: the discriminators (train_state) stay in the work folder.
    from napari_histo.core.atomic import atomic_write_text

    tmp = args.out / ".weights.safetensors.tmp"
    shutil.copyfile(args.work / "weights.safetensors", tmp)
    os.replace(tmp, args.out / "weights.safetensors")  # never a half-copied model
    card = json.loads((args.work / "card.json").read_text())
    tr = card["training"]
    tr["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    tr["seconds_per_step"] = round(tr["seconds"] / max(1, tr["steps_done"]), 4)
    tr["workers"] = args.workers
    if error:
        tr["error"] = error
    card["notes"] = notes(card)
    atomic_write_text(args.out / "card.json", json.dumps(card, indent=2) + "\n")
    atomic_write_text(args.out / "card.md", card_md(card))
    mb = (args.out / "weights.safetensors").stat().st_size / 1e6
    print(
        f"done: {tr['steps_done']} steps in {tr['seconds']} s "
        f"(time cap: {tr['stopped_by_time_budget']}); {args.out / 'weights.safetensors'} {mb:.1f} MB",
        flush=True,
    )


def reassemble(tiles: dict[str, Path], src: str) -> np.ndarray:
    """A 1024x1024 BCI image from its 16 tiles of 256 px (``<src>_r<row>c<col>``)."""
    from napari_histo.core.io import read_image

    img = np.zeros((1024, 1024, 3), np.uint8)
    for r in range(4):
        for c in range(4):
            img[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256] = read_image(
                tiles[f"{src}_r{r}c{c}"]
            )
    return img


def holdout_pairs(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(source, IHC, H&E) full 1024x1024 images reassembled from the held-out 256 tiles."""
    ihc, he = list_images(root / BCI / "ihc"), list_images(root / BCI / "he")
    return [(src, reassemble(ihc, src), reassemble(he, src)) for src in HOLDOUT]


def extra_scores(test: np.ndarray, ref: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Colour-distribution distance (mean Lab Wasserstein) and SSIM of 4x-downsampled gray."""
    from scipy.stats import wasserstein_distance
    from skimage.color import rgb2gray, rgb2lab
    from skimage.metrics import structural_similarity
    from skimage.transform import downscale_local_mean

    la, lb = rgb2lab(test).reshape(-1, 3), rgb2lab(ref).reshape(-1, 3)
    ia = rng.choice(len(la), min(len(la), 50_000), replace=False)
    ib = rng.choice(len(lb), min(len(lb), 50_000), replace=False)
    w = np.mean([wasserstein_distance(la[ia, k], lb[ib, k]) for k in range(3)])
    ga = downscale_local_mean(rgb2gray(test), (4, 4))
    gb = downscale_local_mean(rgb2gray(ref), (4, 4))
    return {
        "lab_w1": float(w),
        "ssim_gray_4x": float(structural_similarity(ga, gb, data_range=1.0)),
    }


def nuclei_scores(test_labels: np.ndarray, he_labels: np.ndarray, region: int = 256) -> dict:
    """Nuclei found on a translated image vs on the real neighbouring H&E section, per region.

    The sections are neighbours, not the same cells: counts per ``region`` square are compared
    (ratio of totals, mean absolute difference, Pearson r across regions), not nuclei one to one.
    """

    def counts(lab: np.ndarray) -> np.ndarray:
        h, w = lab.shape
        out = []
        for y in range(0, h - region + 1, region):
            for x in range(0, w - region + 1, region):
                ids = np.unique(lab[y : y + region, x : x + region])
                out.append(int((ids > 0).sum()))
        return np.asarray(out, np.float64)

    a, b = counts(test_labels), counts(he_labels)
    r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
    return {
        "nuclei_ratio": float(a.sum() / max(b.sum(), 1.0)),
        "nuclei_mad_per_region": float(np.abs(a - b).mean()),
        "nuclei_r": r,
    }


def evaluate(model_dir: Path, previous: Path | None = None) -> dict:
    """Held-out BCI sources: translated IHC vs real H&E of the neighbouring section, and baselines.

    ``previous``: another translator folder scored beside it (e.g. the model shipped before).
    """
    import time as _time

    from napari_histo.core.io import read_image
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.inference import segment_iter
    from napari_histo.core.seg.registry import load_model
    from napari_histo.core.stain import get_normalizer
    from napari_histo.core.translate import load_translator, translate
    from napari_histo.core.translate.quality import quality_scores

    fwd = load_translator(model_dir, "ihc2he", device="cpu")
    prev = load_translator(previous, "ihc2he", device="cpu") if previous else None
    seg = load_model("default", "cpu")
    reinhard = get_normalizer("reinhard", device="cpu").fit(read_image(HE_TEMPLATE))
    rng = np.random.default_rng(0)
    rows: dict[str, list[dict]] = {"cyclegan": [], "raw_ihc": [], "reinhard": []}
    if prev is not None:
        rows["cyclegan_previous"] = []
    per_source, seconds, pixels = {}, 0.0, 0
    for src, ihc, he in holdout_pairs(data_root()):
        t0 = _time.perf_counter()
        outs = {"cyclegan": translate(ihc, fwd, tile=256, overlap=32)}
        seconds += _time.perf_counter() - t0
        pixels += ihc.shape[0] * ihc.shape[1]
        outs.update({"raw_ihc": ihc, "reinhard": reinhard.transform(ihc)})
        if prev is not None:
            outs["cyclegan_previous"] = translate(ihc, prev, tile=256, overlap=32)
        he_labels = drain(segment_iter(he, seg)).labels
        per_source[src] = {"nuclei_on_he": int(len(np.unique(he_labels)) - 1)}
        for name, img in outs.items():
            s = {**quality_scores(img, he, (name, "H&E")), **extra_scores(img, he, rng)}
            s.update(nuclei_scores(drain(segment_iter(img, seg)).labels, he_labels))
            rows[name].append(s)
            per_source[src][name] = {k: round(v, 4) for k, v in s.items()}
        print(f"evaluated {src}", flush=True)
    mean = {n: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for n, rs in rows.items()}
    return {
        "cpu_mpx_per_s": round(pixels / 1e6 / max(seconds, 1e-9), 3),
        "segmentation_model": seg.name,
        "protocol": "held-out BCI sources "
        + ", ".join(HOLDOUT)
        + ": the 16 IHC tiles of each reassembled to 1024x1024, translated (tile 256, overlap "
        "32), compared with the registered H&E of the neighbouring section (alignment is "
        "approximate: cells do not match). Baselines: the raw IHC and Reinhard colour transfer to "
        "the shipped H&E template. lab_w1: mean over L, a, b of the 1-D Wasserstein distance of "
        "pixel values (50k-pixel samples, lower is better); ssim_gray_4x: SSIM of 4x-downsampled "
        "grayscale (higher is better). Nuclei: the default segmentation model on each output "
        "and on the real H&E; counts per 256 px region compared (ratio of totals, mean absolute "
        "difference, Pearson r), since neighbouring sections do not share cells.",
        "mean": mean,
        "per_source": per_source,
    }


def notes(card: dict) -> list[str]:
    tr = card["training"]
    out = [
        "Trained for minutes, not the days of the CycleGAN paper; 5 BCI source images (HER2, "
        "breast) and one Ki67 slide are the only IHC it saw. Expect colour shifts and "
        "hallucinated texture on other tissues, markers and scanners.",
        "Unpaired and unsupervised: DAB-positive regions may be rendered as H&E-looking tissue "
        "with no diagnostic meaning; the HER2 status is not preserved or visible. Not for diagnosis.",
        "Instance normalisation is per tile: very uneven tiles (mostly background) can be "
        "translated with a different tint than their neighbours.",
    ]
    if tr.get("error"):
        out.append(f"Training stopped by an error ({tr['error']}); these are its last checkpoint.")
    if tr.get("stopped_by_time_budget"):
        out.append(
            f"Stopped by the time budget at step {tr['steps_done']} of {tr['steps']}; the learning "
            "rate was scheduled by elapsed time, so it had decayed to about 0 by then."
        )
    return out


def card_md(card: dict) -> str:
    from napari_histo.core.translate.quality import METRICS  # numpy only at import time

    tr, arch = card["training"], card["architecture"]
    ev = card.get("evaluation")
    lines = [
        "# ihc2he_default: an IHC -> H&E CycleGAN",
        "",
        f"Unpaired CycleGAN: ResNet generators (ngf={arch['ngf']}, {arch['n_blocks']} residual "
        f"blocks), 70x70 PatchGAN discriminators (ndf={arch['ndf']}), LSGAN loss, cycle lambda 10, "
        "identity 0.5 lambda, image buffer 50, Adam 2e-4 constant then linear decay over the "
        "second half of the run (scheduled by time when the time budget ends it). Both generators "
        "are shipped: `ihc2he` (IHC -> H&E) and `he2ihc`.",
        "",
        "## Data and licence",
        f"- IHC (domain A): {card['data_a']}",
        f"- H&E (domain B): {card['data_b']}",
        f"- Held out (not trained on, IHC nor H&E): BCI sources {', '.join(HOLDOUT)}",
        f"- Licence of these weights: {card['license']}",
        "",
        "## Training",
        f"- Command: `{card['command']}`",
        f"- Seed {tr['seed']}, {tr['steps_done']} of {tr['steps']} planned steps, crop {tr['crop']}, "
        f"batch {tr['batch_size']}, device {tr['device']}, amp {tr.get('amp')}, "
        f"{tr.get('wall_seconds', tr['seconds'])} s wall time "
        f"({tr.get('seconds_per_step', '?')} s/step).",
        "",
    ]
    if ev:
        keys = [m.key for m in METRICS] + ["lab_w1", "ssim_gray_4x"]
        heads = [f"{m.name} ({m.better})" for m in METRICS]
        heads += ["Lab W1 (lower)", "SSIM gray 4x (higher)"]
        if "nuclei_r" in next(iter(ev["mean"].values())):
            keys += ["nuclei_ratio", "nuclei_r"]
            heads += ["nuclei vs H&E (ratio)", "nuclei per region r (higher)"]
        lines += [
            "## Held-out evaluation (translated IHC vs the neighbouring H&E section)",
            "",
            ev["protocol"],
            "",
            "| method | " + " | ".join(heads) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for name, row in ev["mean"].items():
            lines.append(f"| {name} | " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |")
        if "cpu_mpx_per_s" in ev:
            lines += ["", f"Translation speed on this CPU: {ev['cpu_mpx_per_s']} Mpx/s."]
        lines.append("")
    else:
        lines += ["## Held-out evaluation", "", "Not run yet (`--eval-only`).", ""]
    lines += ["## Limits (read before use)"]
    lines += [f"- {n}" for n in card.get("notes", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--max-minutes", type=float, default=30.0, help="wall budget from the start")
    p.add_argument("--steps", type=int, default=100_000, help="upper bound; the time cap rules")
    p.add_argument("--batch-size", type=int, default=0, help="default 8 on CUDA, 1 on the CPU")
    p.add_argument("--crop", type=int, default=0, help="default 256 on CUDA, 128 on the CPU")
    p.add_argument("--ngf", type=int, default=32, help="64 is the paper's (4x the weights)")
    p.add_argument("--n-blocks", type=int, default=9)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resume", type=Path, default=None,
        help="continue from this work folder (generators, discriminators, step count; new schedule)",
    )  # fmt: skip
    p.add_argument("--work", type=Path, default=Path("/tmp/ihc2he_default_train"))
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=1, help="background crop threads (0: none)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (default fp32+TF32)")
    p.add_argument("--log-seconds", type=float, default=15.0)
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument(
        "--previous", type=Path, default=None,
        help="another translator folder scored beside it (e.g. the one shipped before)",
    )  # fmt: skip
    p.add_argument(
        "--bench", type=Path, default=None,
        help="also write the evaluation table to this markdown file (bench/results/translate.md)",
    )  # fmt: skip
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)

    if not args.eval_only:
        train(args, t_start)
    if args.skip_eval and not args.eval_only:
        return 0
    from napari_histo.core.atomic import atomic_write_text

    card = json.loads((args.out / "card.json").read_text())
    card["evaluation"] = evaluate(args.out, args.previous)
    card.setdefault("notes", notes(card))
    atomic_write_text(args.out / "card.json", json.dumps(card, indent=2) + "\n")
    md = card_md(card)
    atomic_write_text(args.out / "card.md", md)
    table = md[md.find("## Held-out") :]
    table = table[: table.find("## Limits")]
    if args.bench is not None:
        cmd = "nice -n 5 .venv/bin/python scripts/train_translator_default.py " + " ".join(
            args.argv
        )
        atomic_write_text(
            args.bench,
            f"# IHC -> H&E translation on held-out BCI pairs\n\n`{cmd}`, model `{args.out}`\n\n"
            + table.replace("## Held-out", "## Held-out", 1),
        )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
