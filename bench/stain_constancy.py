"""Stain constancy: NMI of nuclei pixels across multi-source H&E tiles after each method.

Usage::

    nice -n 5 .venv/bin/python bench/stain_constancy.py [--heldout-steps 400] [--json OUT]

The 13 MoNuSeg 2018 training tiles (5 organs, several TCGA hospitals) are normalized to the
TIAToolbox target; the normalized median intensity (NMI) of each tile's nuclei pixels (its
hand-drawn nuclei mask) is computed, and the coefficient of variation (CV = std / mean) of
NMI over the tiles measures how constant the stain appearance is (lower is better). Beside
ours: torchstain's Macenko and Reinhard.

The shipped DCGMM was fitted (unsupervised, without masks) on these same tiles. For an
out-of-sample figure, ``--heldout-steps N`` also fits a DCGMM for N steps on other images only
(the DCGMM paper's lymph-node images, GPL-3.0, used here for benchmarking only, and the
TIAToolbox target) and evaluates it the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MONUSEG = DATA / "monuseg2018_train_subset"
TARGET = DATA / "stain" / "tiatoolbox_target" / "target_image.png"
ZANJANI = DATA / "stain" / "dcgmm_zanjani2018"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--heldout-steps", type=int, default=400)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import tifffile
    import torch

    from napari_histo.core.io import read_image
    from napari_histo.core.stain import fit_dcgmm_blocking, get_normalizer
    from napari_histo.core.stain.consistency import nmi_summary

    torch.set_num_threads(args.threads)
    paths = sorted((MONUSEG / "images").glob("*.png"))
    images = [read_image(p) for p in paths]
    masks = [tifffile.imread(MONUSEG / "masks" / f"{p.stem}.tif") for p in paths]
    template = read_image(TARGET)

    methods: dict[str, object] = {"original (no normalization)": lambda im: im}
    for m in ("macenko", "reinhard", "vahadane", "dcgmm"):
        methods[f"napari-histo {m}"] = get_normalizer(m, device="cpu").fit(template).transform
    if args.heldout_steps > 0:
        others = [read_image(p) for p in sorted(ZANJANI.glob("*.png")) if p.name[:1] in "PT"]
        t0 = time.perf_counter()
        held = fit_dcgmm_blocking(
            [*others, template], steps=args.heldout_steps, device="cpu", start=None
        )
        print(f"held-out DCGMM fitted in {time.perf_counter() - t0:.0f} s", flush=True)
        methods[f"napari-histo dcgmm, fitted without MoNuSeg ({args.heldout_steps} steps)"] = (
            held.fit(template).transform
        )
    try:
        import torchstain
    except ImportError:
        print("torchstain is not installed: it is left out", file=sys.stderr)
    else:

        def chw(a):
            return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)

        for name, backend in (("macenko", "torch"), ("macenko", "numpy"), ("reinhard", "numpy")):
            if name == "macenko":
                n = torchstain.normalizers.MacenkoNormalizer(backend=backend)
            else:
                n = torchstain.normalizers.ReinhardNormalizer(backend=backend)
            prep = chw if backend == "torch" else (lambda a: a)
            n.fit(prep(template))

            def run(im, n=n, prep=prep, name=name):
                out = (
                    n.normalize(prep(im), stains=False)[0]
                    if name == "macenko"
                    else n.normalize(prep(im))
                )
                out = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
                return np.clip(out, 0, 255).astype(np.uint8)

            methods[f"torchstain {name} ({backend})"] = run

    rows = []
    for name, fn in methods.items():
        outs = [fn(im) for im in images]
        s = nmi_summary(outs, masks)
        rows.append(
            {"method": name, **{k: s[k] for k in ("mean", "std", "cv")}, "values": s["values"]}
        )
        print(
            f"{name:62s} NMI mean {s['mean']:.4f}  std {s['std']:.4f}  CV {s['cv']:.4f}", flush=True
        )
    by = {r["method"]: r["cv"] for r in rows}
    ref = by.get("torchstain macenko (torch)")
    checks = {}
    if ref:
        for name, cv in by.items():
            if name.startswith("napari-histo dcgmm"):
                checks[f"{name}: CV / torchstain macenko CV"] = round(cv / ref, 3)
    print(json.dumps(checks, indent=2))
    if args.json:
        out = {
            "tiles": [p.stem for p in paths],
            "template": TARGET.name,
            "rows": rows,
            "checks": checks,
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
