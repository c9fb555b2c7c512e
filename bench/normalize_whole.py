"""Whole-process stain normalization: ``napari-histo normalize`` as a user runs it, timed.

Usage::

    nice -n 5 python bench/normalize_whole.py [--size 6000] [--methods macenko dcgmm]
        [--baseline-src /path/to/old/src] [--repeats 1] [--profile DIR] [--json OUT]

A SIZE x SIZE PNG mosaic of the 13 MoNuSeg tiles (real H&E, several hospitals) is built once
into a temporary folder; the template is the TIAToolbox target. Each row is one whole process,
timed from outside (``subprocess``): start-up, read -> fit -> normalize -> write PNG.

Rows:

* ``napari-histo METHOD`` -- this checkout's CLI (``python -m napari_histo.cli normalize``);
* ``previous METHOD`` -- the same command with ``--baseline-src`` on ``PYTHONPATH`` (e.g. the
  ``src`` of an older commit: ``git archive HEAD~3 src | tar -x -C /tmp/base``);
* ``transform only METHOD`` -- ``normalizer.transform`` alone on the image in memory (no
  start-up, no I/O; this checkout), the speed ``bench/stain_speed.py`` reports;
* ``torchstain macenko (numpy)`` -- the same job with torchstain's numpy Macenko (Pillow read and
  write, as its README does): the reference of the issue's "2x torchstain" aim.

``--profile DIR`` also writes a cProfile of each of our runs (``DIR/METHOD.prof``) and prints
its top functions by cumulative time. Every process gets ``OMP_WAIT_POLICY=PASSIVE`` (the CLI
sets it itself) and the 1-minute load average is recorded with each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TEMPLATE = DATA / "stain" / "tiatoolbox_target" / "target_image.png"

TORCHSTAIN_JOB = r"""
import sys
import numpy as np
from PIL import Image
import torchstain
src, template, dest = sys.argv[1:4]
norm = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
norm.fit(np.asarray(Image.open(template).convert("RGB")))
image = np.asarray(Image.open(src).convert("RGB"))
out, _, _ = norm.normalize(I=image, stains=False)
Image.fromarray(np.asarray(out, dtype=np.uint8)).save(dest)
"""

# The transform alone, in-process, on the image already in memory (what stain_speed.py times):
# the end-to-end row of the same method should be this plus start-up and I/O.
TRANSFORM_JOB = r"""
import sys, time
from napari_histo.core.io import read_image
from napari_histo.core.stain import get_normalizer
src, template, method = sys.argv[1:4]
norm = get_normalizer(method).fit(read_image(template))
image = read_image(src)
norm.transform(image[:512, :512])
t0 = time.perf_counter()
norm.transform(image)
print("SECONDS", time.perf_counter() - t0)
"""


def build_mosaic(size: int, folder: Path) -> Path:
    """Write (once) a size x size PNG mosaic of the MoNuSeg tiles; return its path."""
    path = folder / f"mosaic{size}.png"
    if path.exists():
        return path
    import numpy as np
    from PIL import Image

    tiles = [
        np.asarray(Image.open(p).convert("RGB"))
        for p in sorted((DATA / "monuseg2018_train_subset" / "images").glob("*.png"))
    ]
    side = tiles[0].shape[0]
    n = -(-size // side)
    rows = [
        np.concatenate([tiles[(r * n + c) % len(tiles)] for c in range(n)], axis=1)
        for r in range(n)
    ]
    image = np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return seconds, res.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=6000)
    parser.add_argument("--methods", nargs="+", default=["macenko", "dcgmm"])
    parser.add_argument("--baseline-src", type=Path, help="src folder of the previous version")
    parser.add_argument("--no-torchstain", action="store_true")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "nh_whole")
    parser.add_argument("--profile", type=Path, help="write cProfile files here")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    image = build_mosaic(args.size, args.workdir)
    mpx = args.size * args.size / 1e6
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    candidates = []  # (name, cmd, env)
    versions = [("napari-histo", ROOT / "src")]
    if args.baseline_src:
        versions.append(("previous", args.baseline_src.resolve()))
    for method in args.methods:
        for label, src in versions:
            out = args.workdir / f"out_{label}_{method}"
            cmd = [sys.executable]
            if args.profile and label == "napari-histo":
                args.profile.mkdir(parents=True, exist_ok=True)
                cmd += ["-m", "cProfile", "-o", str(args.profile / f"{method}.prof")]
            cmd += ["-m", "napari_histo.cli", "normalize", str(image), "--method", method]
            cmd += ["--template", str(TEMPLATE), "--out", str(out), "--quiet"]
            e = dict(env, PYTHONPATH=str(src))
            candidates.append((f"{label} {method}", cmd, e))
            if label == "napari-histo" and cuda_available():  # a GPU row where there is one
                candidates.append((f"{label} {method} (cuda)", [*cmd, "--device", "cuda"], e))
    for method in args.methods:
        cmd = [sys.executable, "-c", TRANSFORM_JOB, str(image), str(TEMPLATE), method]
        candidates.append(
            (f"transform only {method}", cmd, dict(env, PYTHONPATH=str(ROOT / "src")))
        )
    if not args.no_torchstain:
        dest = args.workdir / "out_torchstain.png"
        cmd = [sys.executable, "-c", TORCHSTAIN_JOB, str(image), str(TEMPLATE), str(dest)]
        candidates.append(("torchstain macenko (numpy)", cmd, env))

    rows = []
    for _ in range(args.repeats):
        for name, cmd, e in candidates:
            seconds, out = timed(cmd, e)
            if name.startswith("transform only"):
                seconds = float(out.split("SECONDS")[-1])
            row = {
                "job": name,
                "size": args.size,
                "seconds": round(seconds, 2),
                "mpx_per_s": round(mpx / seconds, 3),
                "load_average_1min": round(os.getloadavg()[0], 2),
            }
            rows.append(row)
            print(
                f"{name:30s} {args.size}^2 {seconds:8.2f} s {row['mpx_per_s']:7.3f} Mpx/s "
                f"(load {row['load_average_1min']})",
                flush=True,
            )
    best = {}
    for r in rows:
        best[r["job"]] = min(best.get(r["job"], 1e9), r["seconds"])
    checks = {}
    ts = best.get("torchstain macenko (numpy)")
    for label in ("napari-histo", "previous"):
        mac = best.get(f"{label} macenko")
        if mac and ts:
            checks[f"{label}_macenko_x_torchstain_numpy"] = round(ts / mac, 2)
        dc = best.get(f"{label} dcgmm")
        if dc:
            checks[f"{label}_dcgmm_mpx_per_s"] = round(mpx / dc, 3)
    for method in args.methods:
        tr, e2e = best.get(f"transform only {method}"), best.get(f"napari-histo {method}")
        if tr and e2e:
            checks[f"{method}_end_to_end_over_transform_time"] = round(e2e / tr, 2)
    print(json.dumps(checks, indent=2))
    if args.profile:
        import pstats

        for method in args.methods:
            prof = args.profile / f"{method}.prof"
            if prof.exists():
                print(f"\n--- cProfile {method} (cumulative, top 25) ---")
                pstats.Stats(str(prof)).sort_stats("cumulative").print_stats(25)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "checks": checks}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
