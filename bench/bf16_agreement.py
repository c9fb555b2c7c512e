"""bfloat16 vs float32 labels of a segmentation model on the 13 validation tiles, on the CPU.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src python bench/bf16_agreement.py [MODEL] [--json OUT]

Three precisions, each with the default tiling and no TTA: ``float32``; ``auto`` (the default:
bfloat16 autocast where the CPU has it natively, with the architecture's
``cpu_float32_modules`` kept in float32); ``bfloat16`` (every module in bfloat16). Per tile:
AJI between float32's labels and each other's (the issue's bar for a faster path: >= 0.99),
each one's AJI against the hand-drawn masks, and the seconds of each.
"""

import json
import os
import sys
import time

import numpy as np
import torch
from _split import train_script

from napari_histo.core.progress import drain
from napari_histo.core.seg.inference import segment_iter
from napari_histo.core.seg.metrics import aggregated_jaccard_index, evaluate
from napari_histo.core.seg.registry import load_model

args = [a for a in sys.argv[1:] if not a.startswith("--")]
out_json = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
if out_json in args:
    args.remove(out_json)
torch.set_num_threads(2)
_, val = train_script().load_split("all80")
model = load_model(args[0] if args else "default", "cpu")
PRECISIONS = ("float32", "auto", "bfloat16")
rows = []
for name, img, lab in val:
    out = {}
    for p in PRECISIONS:
        os.environ["NAPARI_HISTO_PRECISION"] = p
        t = time.perf_counter()
        pred = drain(segment_iter(img, model, tta=False)).labels
        out[p] = (pred, time.perf_counter() - t)
    row = {"name": name, "mpx": img.shape[0] * img.shape[1] / 1e6}
    for p in PRECISIONS:
        row[f"agree_{p}"] = round(aggregated_jaccard_index(out["float32"][0], out[p][0]), 4)
        row[f"aji_{p}"] = round(evaluate(lab, out[p][0])["aji"], 4)
        row[f"s_{p}"] = round(out[p][1], 2)
    rows.append(row)
    print(rows[-1], flush=True)
mpx = sum(r["mpx"] for r in rows)
for p in PRECISIONS:
    agree = [r[f"agree_{p}"] for r in rows]
    print(
        f"{p:9s} agreement with float32 min {min(agree):.4f} mean {np.mean(agree):.4f}; "
        f"mean AJI {np.mean([r[f'aji_{p}'] for r in rows]):.4f}; "
        f"Mpx/s {mpx / sum(r[f's_{p}'] for r in rows):.3f}"
    )
print("load", os.getloadavg())
if out_json:
    with open(out_json, "w") as f:
        json.dump({"load_average": os.getloadavg(), "rows": rows}, f, indent=1)
