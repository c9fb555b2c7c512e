"""Stain-normalization speed: Mpx/s of each method beside torchstain (numpy and torch backends).

Usage::

    nice -n 5 .venv/bin/python bench/stain_speed.py [--sizes 1024 4096] [--threads 2]
        [--repeats 3] [--device cpu] [--json OUT]

The images are mosaics of the 13 MoNuSeg tiles (real H&E from several hospitals) cut to
SIZE x SIZE; the template is the TIAToolbox target. A timed call is the whole job on a new
image: estimating its stain statistics and transforming it (``normalizer.transform(image)``;
torchstain's ``normalize(I, stains=False)``), best of ``--repeats`` after a warm-up.
torchstain is optional (``pip install torchstain``); without it only our methods are timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def mosaic(size: int):
    """A size x size RGB uint8 mosaic of the MoNuSeg tiles (different hospitals)."""
    import numpy as np

    from napari_histo.core.io import read_image

    tiles = [
        read_image(p) for p in sorted((DATA / "monuseg2018_train_subset" / "images").glob("*.png"))
    ]
    side = tiles[0].shape[0]
    n = -(-size // side)
    rows = [
        np.concatenate([tiles[(r * n + c) % len(tiles)] for c in range(n)], axis=1)
        for r in range(n)
    ]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def ours(method: str, template, device: str):
    from napari_histo.core.stain import get_normalizer

    norm = get_normalizer(method, device=device).fit(template)
    return norm.transform


def torchstain_fn(method: str, backend: str, template):
    import numpy as np
    import torch
    import torchstain

    if method == "macenko":
        norm = torchstain.normalizers.MacenkoNormalizer(backend=backend)
    else:
        norm = torchstain.normalizers.ReinhardNormalizer(backend=backend)
    if backend == "torch":

        def prep(a):
            return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)

    else:

        def prep(a):
            return a

    norm.fit(prep(template))
    if method == "macenko":
        return lambda im: norm.normalize(prep(im), stains=False)
    return lambda im: norm.normalize(prep(im))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--methods", nargs="+", default=["macenko", "reinhard", "vahadane", "dcgmm"]
    )
    parser.add_argument("--no-torchstain", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import torch

    from napari_histo.core.io import read_image

    torch.set_num_threads(args.threads)
    template = read_image(DATA / "stain" / "tiatoolbox_target" / "target_image.png")
    warm = mosaic(256)
    candidates: list[tuple[str, object]] = []
    for m in args.methods:
        candidates.append((f"napari-histo {m} ({args.device})", ours(m, template, args.device)))
    if not args.no_torchstain:
        try:
            import torchstain  # noqa: F401
        except ImportError:
            print("torchstain is not installed: only napari-histo is timed", file=sys.stderr)
        else:
            for m in ("macenko", "reinhard"):
                for backend in ("numpy", "torch"):
                    candidates.append(
                        (f"torchstain {m} ({backend})", torchstain_fn(m, backend, template))
                    )
    rows = []
    for size in args.sizes:
        image = mosaic(size)
        repeats = args.repeats if size <= 2048 else max(1, args.repeats - 1)
        for name, fn in candidates:
            fn(warm)
            seconds = _time(lambda fn=fn, image=image: fn(image), repeats)
            row = {
                "method": name,
                "size": size,
                "seconds": round(seconds, 4),
                "mpx_per_s": round(size * size / 1e6 / seconds, 3),
            }
            rows.append(row)
            print(
                f"{name:38s} {size:5d}^2  {seconds:8.3f} s  {row['mpx_per_s']:8.2f} Mpx/s",
                flush=True,
            )
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "load_average": os.getloadavg(),
        },
        "rows": rows,
    }
    by = {(r["method"], r["size"]): r["mpx_per_s"] for r in rows}
    checks = {}
    for size in args.sizes:
        mac = by.get((f"napari-histo macenko ({args.device})", size))
        ref = by.get(("torchstain macenko (torch)", size))
        if mac and ref:
            checks[f"macenko_vs_torchstain_torch_{size}"] = round(mac / ref, 2)
        dc = by.get((f"napari-histo dcgmm ({args.device})", size))
        if dc:
            checks[f"dcgmm_mpx_per_s_{size}"] = dc
    result["checks"] = checks
    print(json.dumps(checks, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
