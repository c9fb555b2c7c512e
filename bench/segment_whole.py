"""Whole-process slide segmentation: ``napari-histo segment SLIDE`` as a user runs it, timed.

Usage::

    nice -n 5 python bench/segment_whole.py [--size 6000] [--slides full margins svs]
        [--baseline-src /path/to/old/src] [--profile DIR] [--json OUT]

Slides (built once into ``--workdir``, pyramidal TIFF, JPEG-free zlib tiles):

* ``full`` -- SIZE x SIZE of real MoNuSeg H&E tiles (every block is tissue);
* ``margins`` -- the same size with tissue only in a central disc covering about 35% of the
  slide, the rest glass (off-white with scanner noise), as real slides are;
* ``svs`` -- the real ``wsi/CMU-1-Small-Region.svs`` (2220 x 2967, JPEG tiles).

Each row is one whole process timed from outside: start-up, model load, tissue detection,
segmentation of every tissue block, label pyramid. Mpx/s is given per slide pixel and per
tissue pixel (tissue = :func:`napari_histo.core.slide.segment.tissue_mask` on the coarsest
level). ``--baseline-src`` runs the same command with an older ``src`` on ``PYTHONPATH``.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _tiles():
    from PIL import Image

    return [
        np.asarray(Image.open(p).convert("RGB"))
        for p in sorted((DATA / "monuseg2018_train_subset" / "images").glob("*.png"))
    ]


def build(kind: str, size: int, folder: Path) -> Path:
    """Write (once) the bench slide ``kind`` of ``size`` pixels a side; return its path."""
    if kind == "svs":
        return DATA / "wsi" / "CMU-1-Small-Region.svs"
    path = folder / f"{kind}{size}.tif"
    if path.exists():
        return path
    import dask.array as da

    from napari_histo.core.progress import drain
    from napari_histo.core.slide.segment import write_pyramidal_tiff_iter

    tiles = _tiles()
    th, tw = tiles[0].shape[:2]
    chunk = 512

    def block(block_info=None):
        (r0, r1), (c0, c1) = block_info[None]["array-location"][:2]
        out = np.empty((r1 - r0, c1 - c0, 3), np.uint8)
        rr, cc = np.arange(r0, r1), np.arange(c0, c1)
        ti, tj = rr // th, cc // tw
        for i in np.unique(ti):
            for j in np.unique(tj):
                t = tiles[(i * 7 + j * 3) % len(tiles)]
                t = t[:, ::-1] if (i + j) % 2 else t
                rs, cs = ti == i, tj == j
                out[np.ix_(rs, cs)] = t[np.ix_(rr[rs] % th, cc[cs] % tw)]
        if kind == "margins":
            yy, xx = np.meshgrid(rr - size / 2, cc - size / 2, indexing="ij")
            glass = np.hypot(yy, xx) > 0.335 * size
            rng = np.random.default_rng(r0 * size + c0)
            noise = rng.normal(0, 2.0, (*out.shape[:2], 3))
            white = np.clip(np.array([236.0, 232.0, 238.0]) + noise, 0, 255).astype(np.uint8)
            out[glass] = white[glass]
        return out

    n = -(-size // chunk)
    chunks = ((chunk,) * (n - 1) + (size - chunk * (n - 1),),) * 2 + ((3,),)
    arr = da.map_blocks(block, chunks=chunks, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    drain(write_pyramidal_tiff_iter(arr, path, tile=512))
    return path


def tissue_fraction(path: Path) -> tuple[int, int, float]:
    """Height, width and tissue fraction (coarsest level's tissue mask) of a slide."""
    from napari_histo.core.io import read_slide
    from napari_histo.core.slide.segment import tissue_mask

    levels = read_slide(path)
    mask = np.asarray(tissue_mask(levels[-1]))
    h, w = levels[0].shape[:2]
    return h, w, float(mask.mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=6000)
    parser.add_argument("--slides", nargs="+", default=["full", "margins", "svs"])
    parser.add_argument("--baseline-src", type=Path)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "nh_seg")
    parser.add_argument("--profile", type=Path, help="write cProfile files here")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="CLI options")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    versions = [("napari-histo", ROOT / "src", [])]
    if args.baseline_src:
        versions.append(("previous", args.baseline_src.resolve(), []))
    import torch

    if torch.cuda.is_available():  # a GPU row where there is one
        versions.append(("napari-histo (cuda)", ROOT / "src", ["--device", "cuda"]))
    rows = []
    for kind in args.slides:
        path = build(kind, args.size, args.workdir)
        h, w, frac = tissue_fraction(path)
        for _ in range(args.repeats):
            for label, src, device in versions:
                out = args.workdir / f"out_{label.replace(' ', '_')}_{kind}"
                cmd = [sys.executable]
                if args.profile and label == "napari-histo":
                    args.profile.mkdir(parents=True, exist_ok=True)
                    cmd += ["-m", "cProfile", "-o", str(args.profile / f"segment_{kind}.prof")]
                cmd += ["-m", "napari_histo.cli", "segment", str(path), "--out", str(out)]
                cmd += ["--quiet", *args.extra, *device]
                t0 = time.perf_counter()
                res = subprocess.run(
                    cmd, env=dict(env, PYTHONPATH=str(src)), capture_output=True, text=True
                )
                seconds = time.perf_counter() - t0
                if res.returncode:
                    print(f"{label} {kind} failed:\n{res.stderr[-3000:]}", file=sys.stderr)
                    continue
                import zarr

                n_nuclei = zarr.open_group(str(out / f"{path.stem}.zarr"), mode="r").attrs[
                    "napari_histo"
                ]["n_nuclei"]
                row = {
                    "job": f"{label} {kind}",
                    "shape": [h, w],
                    "tissue_fraction": round(frac, 3),
                    "seconds": round(seconds, 2),
                    "mpx_per_s_slide": round(h * w / 1e6 / seconds, 3),
                    "mpx_per_s_tissue": round(h * w * frac / 1e6 / seconds, 3),
                    "nuclei": n_nuclei,
                    "load_average_1min": round(os.getloadavg()[0], 2),
                }
                rows.append(row)
                print(
                    f"{row['job']:28s} {h}x{w} tissue {frac:5.1%} {seconds:7.1f} s "
                    f"{row['mpx_per_s_slide']:6.3f} Mpx/s slide {row['mpx_per_s_tissue']:6.3f} "
                    f"tissue, {n_nuclei} nuclei (load {row['load_average_1min']})",
                    flush=True,
                )
    if args.profile:
        import pstats

        for kind in args.slides:
            prof = args.profile / f"segment_{kind}.prof"
            if prof.exists():
                print(f"\n--- cProfile segment {kind} (tottime, top 25) ---")
                pstats.Stats(str(prof)).sort_stats("tottime").print_stats(25)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
