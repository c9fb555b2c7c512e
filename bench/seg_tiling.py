"""Network tilings of the default segmentation model on the 13 validation tiles (CPU, no TTA).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src python bench/seg_tiling.py [--json OUT]

Per tiling: mean AJI / Dice / PQ against the hand-drawn masks, the labels' AJI against the
first tiling's (how much the labels move with the tiling alone), and Mpx/s (2 torch threads).
The precision is the environment's (``NAPARI_HISTO_PRECISION``; unset = the default).
"""

import argparse
import json
import os
import time

import numpy as np
import torch
from _split import train_script

from napari_histo.core.progress import drain
from napari_histo.core.seg.inference import segment_iter
from napari_histo.core.seg.metrics import aggregated_jaccard_index, evaluate
from napari_histo.core.seg.registry import load_model
from napari_histo.core.tiling import TileSpec

TILINGS = {
    "256/32 batch 4 (before)": TileSpec(256, 32, 4),
    "256/32 batch 4 balanced": TileSpec(256, 32, 4, balance=True),
    "512/32 batch 1 balanced (default)": TileSpec(512, 32, 1, balance=True),
    "768/32 batch 1 balanced": TileSpec(768, 32, 1, balance=True),
    "512/64 batch 1 balanced": TileSpec(512, 64, 1, balance=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    _, val = train_script().load_split("all80")
    model = load_model(args.model, "cpu")
    rows = {k: [] for k in TILINGS}
    for name, img, lab in val:
        ref = None
        for k, spec in TILINGS.items():
            t = time.perf_counter()
            pred = drain(segment_iter(img, model, tta=False, tile=spec)).labels
            seconds = time.perf_counter() - t
            ref = pred if ref is None else ref
            rows[k].append({
                "name": name, "seconds": seconds, "mpx": img.shape[0] * img.shape[1] / 1e6,
                "agree_first": aggregated_jaccard_index(ref, pred), **evaluate(lab, pred),
            })  # fmt: skip
        print(name, {k: round(r[-1]["aji"], 4) for k, r in rows.items()}, flush=True)
    summary = {}
    for k, r in rows.items():
        summary[k] = {
            m: round(float(np.mean([x[m] for x in r])), 4) for m in ("aji", "dice", "pq", "f1")
        }
        summary[k]["agree_first"] = round(float(np.mean([x["agree_first"] for x in r])), 4)
        summary[k]["mpx_per_s"] = round(sum(x["mpx"] for x in r) / sum(x["seconds"] for x in r), 3)
        print(k, summary[k])
    print("precision", os.environ.get("NAPARI_HISTO_PRECISION", "default"), "load", os.getloadavg())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "rows": rows, "load_average": os.getloadavg(),
                       "precision": os.environ.get("NAPARI_HISTO_PRECISION", "default")}, f,
                      indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
