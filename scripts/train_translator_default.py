"""Train the shipped IHC -> H&E CycleGAN (``resources/translate/ihc2he_default``).

Data we may redistribute, both BSD-3-Clause: IHC = scikit-image's ``immunohistochemistry()``
image, H&E = TIAToolbox's stain-normalisation target image (../shared/data). The right-hand
quarter of the IHC image and the right-hand fifth of the H&E image are held out for the card's
metrics. Run it niced, on one thread, so it does not starve other work::

    nohup nice -n 15 .venv/bin/python scripts/train_translator_default.py > /tmp/ihc2he.log 2>&1 &

``--eval-only`` recomputes the card's metrics from an already trained model folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HE_PATH = ROOT.parent / "shared" / "data" / "stain" / "tiatoolbox_target" / "target_image.png"
OUT = ROOT / "src" / "napari_histo" / "resources" / "translate" / "ihc2he_default"
CROP = 128


def load_data() -> dict[str, np.ndarray | list[np.ndarray]]:
    """Training images and held-out crops (disjoint regions of the two source images)."""
    from skimage.data import immunohistochemistry

    from napari_histo.core.io import read_image

    ihc = immunohistochemistry()  # 512 x 512
    he = read_image(HE_PATH)  # 1000 x 1000
    ihc_train, ihc_held = ihc[:, :384], ihc[:, 384:]
    he_train, he_held = he[:, :800], he[:, 800:]

    def crops(img: np.ndarray, n: int) -> list[np.ndarray]:
        ys = np.linspace(0, img.shape[0] - CROP, n).astype(int)
        return [img[y : y + CROP, :CROP] for y in ys]

    return {
        "ihc_train": ihc_train,
        "he_train": he_train,
        "ihc_held": crops(ihc_held, 4),
        "he_held": crops(he_held, 4),
    }


def evaluate(model_dir: Path, data: dict) -> dict:
    """The five metrics of both cycles on the held-out crops (mean over crops)."""
    from napari_histo.core.translate import load_translator
    from napari_histo.core.translate.quality import cycle_scores

    fwd = load_translator(model_dir, "ihc2he", device="cpu")
    back = load_translator(model_dir, "he2ihc", device="cpu")
    res = {}
    for name, crops, a, b in (
        ("cycle_ihc_he_ihc", data["ihc_held"], fwd, back),
        ("cycle_he_ihc_he", data["he_held"], back, fwd),
    ):
        rows = [cycle_scores(c, a, b) for c in crops]
        res[name] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        res[name]["n_crops"] = len(crops)
        res[name]["crop"] = CROP
    return res


def card_md(card: dict) -> str:
    from napari_histo.core.translate.quality import METRICS

    tr = card["training"]
    ev = card.get("evaluation", {})
    lines = [
        "# ihc2he_default: a small IHC -> H&E CycleGAN",
        "",
        "A deliberately small unpaired CycleGAN (ResNet generators with "
        f"ngf={card['architecture']['ngf']}, {card['architecture']['n_blocks']} residual blocks, "
        "70x70 PatchGAN discriminators, LSGAN loss, cycle lambda 10, identity 0.5 lambda, "
        "image buffer 50, linear LR decay) trained for a few tens of minutes on one CPU thread. "
        "Both generators are shipped: `ihc2he` (IHC -> H&E) and `he2ihc`.",
        "",
        "## Data and licence",
        f"- IHC (domain A): {card['data_a']}",
        f"- H&E (domain B): {card['data_b']}",
        f"- Licence of these weights: {card['license']}",
        "",
        "## Training",
        f"- Command: `{card['command']}`",
        f"- Seed {tr['seed']}, {tr['steps_done']} of {tr['steps']} planned steps, crop {tr['crop']}, "
        f"batch {tr['batch_size']}, Adam lr {tr['lr']} (constant, then linear decay from "
        f"{int(tr['decay_from'] * tr['steps'])}), device {tr['device']}, "
        f"{tr.get('wall_seconds', tr['seconds'])} s wall time.",
        "",
        "## Held-out metrics (cycle reconstruction vs the original, mean over crops)",
        "",
        "| cycle | " + " | ".join(f"{m.name} ({m.better})" for m in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for name, row in ev.items():
        if isinstance(row, dict) and "psnr" in row:
            vals = " | ".join(f"{row[m.key]:.4f}" for m in METRICS)
            lines.append(f"| {name} ({row['n_crops']} crops of {row['crop']} px) | {vals} |")
    lines += ["", "## Limits (read before use)"]
    lines += [f"- {n}" for n in card["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--max-minutes", type=float, default=38.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--n-blocks", type=int, default=6)
    p.add_argument("--ndf", type=int, default=32)
    p.add_argument("--work", type=Path, default=Path("/tmp/ihc2he_default_train"))
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-only", action="store_true")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from napari_histo.core.translate import train_translator_iter

    data = load_data()
    command = "nice -n 15 .venv/bin/python scripts/train_translator_default.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    stopped_early = False
    t0 = time.perf_counter()
    if not args.eval_only:
        card = {
            "name": "ihc2he_default",
            "data_a": "scikit-image `skimage.data.immunohistochemistry()` (512x512 IHC, "
            "BSD-3-Clause), left 384 columns for training",
            "data_b": "TIAToolbox stain-normalisation target image (1000x1000 H&E, BSD-3-Clause), "
            "left 800 columns for training",
            "license": "BSD-3-Clause (both training images are BSD-3-Clause)",
            "command": command.strip(),
        }
        gen = train_translator_iter(
            data["ihc_train"],
            data["he_train"],
            steps=args.steps,
            crop=CROP,
            batch_size=1,
            ngf=args.ngf,
            n_blocks=args.n_blocks,
            ndf=args.ndf,
            seed=args.seed,
            device="cpu",
            out=args.work,
            save_every=100,
            sample_every=0,
            card=card,
        )
        for ev in gen:
            if ev.step % 50 == 0 or ev.step == 1:
                el = time.perf_counter() - t0
                print(f"{el:7.0f}s {ev}", flush=True)
            if time.perf_counter() - t0 > args.max_minutes * 60:
                gen.close()  # the last checkpoint (every 100 steps) stays intact
                stopped_early = True
                print(
                    f"time cap reached at step {ev.step}; keeping the last checkpoint", flush=True
                )
                break
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.eval_only:
        # Ship the generators only: the discriminators (train_state) stay in the work folder.
        shutil.copyfile(args.work / "weights.safetensors", args.out / "weights.safetensors")
        card = json.loads((args.work / "card.json").read_text())
        card["training"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
        card["training"]["stopped_by_time_cap"] = stopped_early
        (args.out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    card = json.loads((args.out / "card.json").read_text())
    card["evaluation"] = evaluate(args.out, data)
    card["notes"] = [
        "Trained on ONE IHC image (a DAB/hematoxylin skimage sample, not HER2 from the BCI set) "
        "and ONE H&E image: it learns a colour/texture mapping of these two images, nothing more. "
        "Expect colour shifts and hallucinated texture on other tissues, stains and scanners.",
        "Crude by design (tiny network, minutes of CPU training); the cycle metrics below say the "
        "round trip is faithful, not that the H&E looks real. No reader study, no paired ground truth.",
        "Not for diagnosis. Train your own with `napari-histo train-translator --a IHC_DIR --b HE_DIR` "
        "on your lab's tiles.",
        "Instance normalisation is per tile: very uneven tiles (mostly background) can be "
        "translated with a different tint than their neighbours.",
    ]
    if card["training"].get("stopped_by_time_cap"):
        card["notes"].append(
            f"Stopped by the time cap at step {card['training']['steps_done']} before the learning "
            "rate had decayed to zero."
        )
    (args.out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (args.out / "card.md").write_text(card_md(card))
    print(json.dumps(card["evaluation"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
