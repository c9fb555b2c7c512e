"""Translation speed of the shipped IHC -> H&E model (Mpx/s on CPU, 1 and 2 threads).

Usage::

    nice -n 5 .venv/bin/python bench/translate_speed.py [--size 1024] [--repeats 2] [--json OUT]

The image is scikit-image's IHC sample tiled to SIZE x SIZE; the model is the shipped
``ihc2he_default`` (ngf 16, 9 residual blocks), tile 256, overlap 32. The held-out metrics are
``scripts/train_translator_default.py --eval-only``'s (bench/results/translate.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def speed(size: int, threads: int, repeats: int, tile: int, overlap: int, device: str) -> dict:
    import torch
    from skimage.data import immunohistochemistry

    from napari_histo.core.translate import load_translator, translate

    torch.set_num_threads(threads)
    reps = -(-size // 512)
    img = np.tile(immunohistochemistry(), (reps, reps, 1))[:size, :size]
    tr = load_translator("ihc2he_default", device=device)
    translate(img[:256, :256], tr, tile=tile, overlap=overlap)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        translate(img, tr, tile=tile, overlap=overlap)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {
        "device": device,
        "threads": threads,
        "size": size,
        "tile": tile,
        "overlap": overlap,
        "seconds_best": round(best, 3),
        "mpx_per_s": round(size * size / 1e6 / best, 4),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import torch

    rows = [
        speed(args.size, t, args.repeats, args.tile, args.overlap, args.device)
        for t in args.threads
    ]
    for r in rows:
        print(json.dumps(r))
    doc = {
        "speed": rows,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
