"""bfloat16 vs float32 labels of a segmentation model on the 13 validation tiles, on the CPU.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src python bench/bf16_agreement.py [MODEL] [--json OUT]

Per tile: AJI between the float32 and the bfloat16-autocast labels (the issue's bar for a faster
path: >= 0.99), each one's AJI against the hand-drawn masks, and the seconds of each (no TTA).
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
rows = []
for name, img, lab in val:
    out = {}
    for p in ("float32", "bfloat16"):
        os.environ["NAPARI_HISTO_PRECISION"] = p
        t = time.perf_counter()
        pred = drain(segment_iter(img, model, tta=False)).labels
        out[p] = (pred, time.perf_counter() - t)
    a = aggregated_jaccard_index(out["float32"][0], out["bfloat16"][0])
    e32, e16 = evaluate(lab, out["float32"][0]), evaluate(lab, out["bfloat16"][0])
    rows.append(
        {"name": name, "agree_aji": round(a, 4), "aji32": round(e32["aji"], 4),
         "aji16": round(e16["aji"], 4), "s32": round(out["float32"][1], 2),
         "s16": round(out["bfloat16"][1], 2), "mpx": img.shape[0] * img.shape[1] / 1e6}
    )  # fmt: skip
    print(rows[-1], flush=True)
print(
    "min agree", min(r["agree_aji"] for r in rows), "mean", np.mean([r["agree_aji"] for r in rows])
)
print(
    "mean AJI fp32",
    np.mean([r["aji32"] for r in rows]),
    "bf16",
    np.mean([r["aji16"] for r in rows]),
)
mpx = sum(r["mpx"] for r in rows)
print("Mpx/s fp32", mpx / sum(r["s32"] for r in rows), "bf16", mpx / sum(r["s16"] for r in rows))
print("load", os.getloadavg())
if out_json:
    with open(out_json, "w") as f:
        json.dump({"load_average": os.getloadavg(), "rows": rows}, f, indent=1)
