"""Stain-normalization speed: Mpx/s of each method beside torchstain (numpy and torch backends).

Usage::

    nice -n 5 .venv/bin/python bench/stain_speed.py [--sizes 1024 4096] [--threads 2 1]
        [--repeats 3] [--device cpu] [--json OUT]

The images are mosaics of the 13 MoNuSeg tiles (real H&E from several hospitals) cut to
SIZE x SIZE; the template is the TIAToolbox target. A timed call is the whole job on a new
image: estimating its stain statistics and transforming it (``normalizer.transform(image)``;
torchstain's ``normalize(I, stains=False)``), best of ``--repeats`` after a warm-up.
Every measurement runs in a fresh process (so no thread pool left spinning by the previous
candidate competes with the next). torchstain is optional (``pip install torchstain``);
without it only our methods are timed.
"""

from __future__ import annotations

import argparse
import importlib.util
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


def time_one(candidate: str, size: int, threads: int, repeats: int, device: str) -> dict:
    """Time one candidate (``ours:METHOD`` or ``torchstain:METHOD:BACKEND``) in this process."""
    import torch

    from napari_histo.core.io import read_image

    torch.set_num_threads(threads)
    template = read_image(DATA / "stain" / "tiatoolbox_target" / "target_image.png")
    kind, method, *rest = candidate.split(":")
    if kind == "ours":
        fn, name = ours(method, template, device), f"napari-histo {method} ({device})"
    else:
        fn, name = torchstain_fn(method, rest[0], template), f"torchstain {method} ({rest[0]})"
    image = mosaic(size)
    fn(mosaic(256))  # warm-up
    seconds = _time(lambda: fn(image), repeats)
    return {
        "method": name,
        "size": size,
        "threads": threads,
        "seconds": round(seconds, 4),
        "mpx_per_s": round(size * size / 1e6 / seconds, 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--methods", nargs="+", default=["macenko", "reinhard", "vahadane", "dcgmm"]
    )
    parser.add_argument("--no-torchstain", action="store_true")
    parser.add_argument(
        "--whole-size", type=int, default=6000,
        help="then time whole `napari-histo normalize` processes on a mosaic of this size "
        "(bench/normalize_whole.py: start-up, read, fit, normalize, write; 0 skips)",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-src", type=Path,
        help="src folder of a previous version, timed beside this one in the whole-process rows",
    )  # fmt: skip
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY of every measured process (default PASSIVE: idle OpenMP threads "
        "sleep instead of spinning, which keeps 2 threads fast on a shared, loaded machine; "
        "'default' leaves the environment as it is)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: time one candidate
    args = parser.parse_args(argv)

    if args.one:
        row = time_one(args.one, args.sizes[0], args.threads[0], args.repeats, args.device)
        print("ROW " + json.dumps(row), flush=True)
        return 0

    import subprocess

    import torch

    candidates = [f"ours:{m}" for m in args.methods]
    if not args.no_torchstain:
        if importlib.util.find_spec("torchstain") is None:
            print("torchstain is not installed: only napari-histo is timed", file=sys.stderr)
        else:
            candidates += [
                f"torchstain:{m}:{b}" for m in ("macenko", "reinhard") for b in ("numpy", "torch")
            ]
    rows = []
    for size in args.sizes:
        repeats = args.repeats if size <= 2048 else max(1, args.repeats - 1)
        for threads in args.threads:
            for cand in candidates:
                # A fresh process per measurement: no thread pool (OpenMP, OpenBLAS) left
                # spinning by the previous candidate competes with this one.
                env = dict(
                    os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads)
                )
                if args.omp_wait_policy.lower() != "default":
                    env["OMP_WAIT_POLICY"] = args.omp_wait_policy
                cmd = [sys.executable, __file__, "--one", cand, "--sizes", str(size)]
                cmd += ["--threads", str(threads), "--repeats", str(repeats)]
                devices = [args.device]
                if cand.startswith("ours:") and args.device == "cpu" and torch.cuda.is_available():
                    devices.append("cuda")  # a GPU row where there is one
                for device in devices:
                    res = subprocess.run(
                        [*cmd, "--device", device], env=env, capture_output=True, text=True
                    )
                    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("ROW ")]
                    if res.returncode or not lines:
                        print(f"{cand} {size}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
                        continue
                    row = json.loads(lines[-1][4:])
                    rows.append(row)
                    print(
                        f"{row['method']:38s} {size:5d}^2 {threads} thr {row['seconds']:8.3f} s "
                        f"{row['mpx_per_s']:8.2f} Mpx/s (load {row['load_average_1min']})",
                        flush=True,
                    )
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "omp_wait_policy": args.omp_wait_policy,
        },
        "rows": rows,
    }
    by = {(r["method"], r["size"], r["threads"]): r["mpx_per_s"] for r in rows}
    checks = {}
    for size in args.sizes:
        for th in args.threads:
            mac = by.get((f"napari-histo macenko ({args.device})", size, th))
            ref = by.get(("torchstain macenko (torch)", size, th))
            if mac and ref:
                checks[f"macenko_vs_torchstain_torch_{size}_{th}thr"] = round(mac / ref, 2)
            dc = by.get((f"napari-histo dcgmm ({args.device})", size, th))
            if dc:
                checks[f"dcgmm_mpx_per_s_{size}_{th}thr"] = dc
    result["checks"] = checks
    print(json.dumps(checks, indent=2))
    if args.whole_size:
        import tempfile

        import normalize_whole  # bench/, beside this script

        print(f"\n--- whole processes, {args.whole_size}^2 (bench/normalize_whole.py) ---")
        with tempfile.TemporaryDirectory() as tmp:
            wjson = Path(tmp) / "whole.json"
            wargs = ["--size", str(args.whole_size), "--json", str(wjson)]
            wargs += ["--baseline-src", str(args.baseline_src)] if args.baseline_src else []
            wargs += ["--no-torchstain"] if args.no_torchstain else []
            normalize_whole.main(wargs)
            result["whole_process"] = json.loads(wjson.read_text())
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
