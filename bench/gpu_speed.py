"""Segmentation speed on a CUDA GPU: every model folder given, on a large mosaic of the sample tile.

Usage (on a machine with a GPU; the CPU figures are in bench/seg_speed.py and the cards)::

    python bench/gpu_speed.py resources/seg/unet_histo80_v2 runs/seg/* [--side 4096] [--json OUT]

For each model: seconds and Mpx/s of ``segment_iter`` (default tiling, no multiple inference)
after a warm-up, in float32 and with bfloat16 autocast, the agreement of the bf16 labels with
float32's (AJI), and the time with multiple inference (8 variants). Post-processing runs on the
CPU, so these are whole-segmentation figures, not network-only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SAMPLE = ROOT / "resources" / "samples" / "he_monuseg_TCGA-A7-A13E.png"


def mosaic(side: int) -> np.ndarray:
    """The sample tile mirrored and tiled to ``side`` x ``side`` (real tissue, no seams)."""
    from napari_histo.core.io import read_image

    tile = read_image(SAMPLE)
    block = np.block([[tile, tile[:, ::-1]], [tile[::-1], tile[::-1, ::-1]]])
    reps = -(-side // block.shape[0])
    return np.ascontiguousarray(np.tile(block, (reps, reps, 1))[:side, :side])


def timed(img, model, tta=False):
    import torch

    from napari_histo.core.progress import drain
    from napari_histo.core.seg.inference import segment_iter

    torch.cuda.synchronize()
    t = time.perf_counter()
    labels = drain(segment_iter(img, model, tta=tta)).labels
    torch.cuda.synchronize()
    return time.perf_counter() - t, labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--side", type=int, default=4096)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch

    from napari_histo.core.seg.metrics import evaluate
    from napari_histo.core.seg.registry import load_model

    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU: see bench/seg_speed.py for the CPU figures")
    img = mosaic(args.side)
    small = img[:1024, :1024]
    mpx = img.shape[0] * img.shape[1] / 1e6
    rows = {"gpu": torch.cuda.get_device_name(0), "side": args.side, "models": {}}
    for folder in args.models:
        if not (folder / "weights.safetensors").is_file():
            continue
        row = {}
        try:
            for prec in ("float32", "bfloat16"):
                os.environ["NAPARI_HISTO_PRECISION"] = prec
                model = load_model(folder, "cuda")
                timed(small, model)  # warm-up (cuDNN autotuning, allocator)
                dt, lab = timed(img, model)
                row[prec] = {"s": round(dt, 2), "mpx_per_s": round(mpx / dt, 2)}
                row[prec]["nuclei"] = int(len(np.unique(lab)) - 1)
                if prec == "float32":
                    ref = lab
                    dt8, _ = timed(small, model, tta=True)
                    row["tta8_1024"] = {"s": round(dt8, 2), "mpx_per_s": round(1.048576 / dt8, 2)}
                else:
                    row["bf16_vs_fp32_aji"] = round(float(evaluate(ref, lab)["aji"]), 4)
        except Exception as exc:  # one model failing must not lose the others' figures
            row["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            os.environ.pop("NAPARI_HISTO_PRECISION", None)
        rows["models"][folder.name] = row
        print(folder.name, json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
