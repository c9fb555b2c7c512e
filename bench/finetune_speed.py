"""Fine-tuning speed and gain: 5 corrected 512² tiles, as a lab adapting the model to its slides.

    nice -n 5 .venv/bin/python bench/finetune_speed.py --json /tmp/finetune.json

The shipped default model never saw the held-out MoNuSeg tiles of scripts/train_seg_default.py.
Their 512 x 512 corners stand in for a user's corrected tiles: 5 of them train (the hand-drawn
masks play the corrections), the other corners of the same tiles measure the gain (AJI, Dice, PQ
of the parent vs the fine-tuned version). The clock covers fine_tune_iter, i.e. what the Fine-tune
widget runs, with a training budget of ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg2018_train_subset"
HELD_OUT = ("TCGA-NH-A8F7-01A-01-TS1", "TCGA-CH-5767-01Z-00-DX1", "TCGA-50-5931-01Z-00-DX1")
CORNERS = ((0, 0), (0, 488), (488, 0), (488, 488))


def crops():
    from napari_histo.core.io import read_image, read_labels

    out = []
    for name in HELD_OUT:
        img = read_image(DATA / "images" / f"{name}.png")
        lab = read_labels(DATA / "masks" / f"{name}.tif").astype(np.uint32)
        for r, c in CORNERS:
            out.append(
                (
                    f"{name[:12]}@{r},{c}",
                    img[r : r + 512, c : c + 512],
                    lab[r : r + 512, c : c + 512],
                )
            )
    return out


def score(model, pairs, device):
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.metrics import evaluate
    from napari_histo.core.seg.workflow import segment_array_iter

    res = [
        evaluate(lab, drain(segment_array_iter(img, model=model, device=device)).labels)
        for _, img, lab in pairs
    ]
    return {k: round(float(np.mean([r[k] for r in res])), 4) for k in ("dice", "aji", "pq")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=150.0, help="training budget")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--focus", action="store_true",
        help="draw half of the patches where the corrections changed the parent's labels",
    )  # fmt: skip
    ap.add_argument("--loss-patience", type=int, help="stop when the training loss is flat")
    ap.add_argument("--seed", type=int, default=0, help="training seed (patch draws, order)")
    ap.add_argument("--json")
    args = ap.parse_args()
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.train import train_iter

    pairs = crops()
    # Every tile contributes to training and to testing, never with the same corner.
    train = [pairs[i] for i in (0, 4, 8, 1, 5)]
    test = [p for p in pairs if p not in train]
    before = score("default", test, args.device)
    out = Path(tempfile.mkdtemp(prefix="ft-bench-")) / "ft"
    t0 = time.perf_counter()
    drain(
        train_iter(
            [(img, lab) for _, img, lab in train], out=out, init="default", epochs=1000,
            lr=2e-4, device=args.device, seed=args.seed, max_seconds=args.seconds, patience=None,
            keep="last", steps_per_epoch=20, val_pairs=None, val_fraction=0.0,
            focus=args.focus, loss_patience=args.loss_patience,
        )
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    after = score(str(out), test, args.device)
    card = json.loads((out / "card.json").read_text())
    result = {"train_tiles": len(train), "test_tiles": len(test), "seconds": round(seconds, 1),
              "focus": args.focus, "seed": args.seed, "loss_patience": args.loss_patience,
              "budget_s": args.seconds, "training": card.get("training"),
              "load_average_1min": round(os.getloadavg()[0], 2),
              "before": before, "after": after}  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
