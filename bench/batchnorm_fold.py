"""Folded against unfolded BatchNorms: the labels and the CPU time of each shipped float32 model.

``core.seg.batchnorm_fold`` folds each BatchNorm into the convolution before it whenever a
network runs in float32. This segments the 13 validation tiles and their 2x-downsampled copies
(default tiling, no multiple inference, the card's post-processing) with and without the fold
and prints, per model: how many tiles get identical labels, the lowest AJI between the two
labellings (the bar for a faster path: >= 0.99), the mean AJI of each against the hand-drawn
masks, and the Mpx/s of each (the faster of two runs per tile).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src python bench/batchnorm_fold.py \
        [--models NAME ...] [--max-tiles N] [--json bench/results/batchnorm_fold.json]

The results JSON gathers one run per model (``--merge`` keeps the models already in it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help="shipped names (default: all)")
    ap.add_argument(
        "--max-tiles", type=int, default=None,
        help="only the first N tiles (FullNet takes about 50 s a tile on 2 cores)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--merge", action="store_true", help="keep the other models in --json")
    args = ap.parse_args(argv)

    import torch
    from _split import split_with_20x

    from napari_histo.core.progress import drain
    from napari_histo.core.seg import batchnorm_fold
    from napari_histo.core.seg.inference import segment_iter
    from napari_histo.core.seg.metrics import aggregated_jaccard_index, evaluate
    from napari_histo.core.seg.registry import list_models, load_model

    torch.set_num_threads(args.threads)
    os.environ["NAPARI_HISTO_PRECISION"] = "float32"  # the fold applies to float32 only
    _, pairs = split_with_20x()
    pairs = pairs[: args.max_tiles]
    names = args.models or [i.name for i in list_models(shipped_only=True) if i.arch != "maskrcnn"]
    folder = batchnorm_fold.fold_batchnorm

    def run(model, img, fold: bool):
        batchnorm_fold.fold_batchnorm = folder if fold else (lambda net: net)
        best, labels = float("inf"), None
        for _ in range(2):
            t = time.perf_counter()
            labels = drain(segment_iter(img, model, tta=False)).labels
            best = min(best, time.perf_counter() - t)
        return labels, best

    doc = {"threads": args.threads, "models": {}}
    if args.merge and args.json and args.json.is_file():
        doc = json.loads(args.json.read_text())
    for name in names:
        model = load_model(name, "cpu")
        rows = []
        for tile, img, truth in pairs:
            plain, s_plain = run(model, img, False)
            folded, s_folded = run(model, img, True)
            rows.append(
                {
                    "tile": tile,
                    "identical": bool(np.array_equal(plain, folded)),
                    "agreement_aji": round(aggregated_jaccard_index(plain, folded), 4),
                    "aji_plain": round(evaluate(truth, plain)["aji"], 4),
                    "aji_folded": round(evaluate(truth, folded)["aji"], 4),
                    "s_plain": round(s_plain, 3),
                    "s_folded": round(s_folded, 3),
                    "mpx": img.shape[0] * img.shape[1] / 1e6,
                }
            )
        mpx = sum(r["mpx"] for r in rows)
        summary = {
            "identical": sum(r["identical"] for r in rows),
            "min_agreement_aji": min(r["agreement_aji"] for r in rows),
            "aji_plain": round(float(np.mean([r["aji_plain"] for r in rows])), 4),
            "aji_folded": round(float(np.mean([r["aji_folded"] for r in rows])), 4),
            "mpx_s_plain": round(mpx / sum(r["s_plain"] for r in rows), 3),
            "mpx_s_folded": round(mpx / sum(r["s_folded"] for r in rows), 3),
        }
        batchnorm_fold.fold_batchnorm = folder
        doc["models"][model.name] = {
            "command": "OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src python bench/batchnorm_fold.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "summary": summary,
            "per_tile": rows,
        }
        print(model.name, f"{summary['identical']} of {len(rows)} identical", summary, flush=True)
    doc["load_average"] = os.getloadavg()
    if args.json:
        from napari_histo.core.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
