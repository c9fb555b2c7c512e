"""End-to-end whole-slide benchmark: read -> normalize -> infer -> post-process -> write.

Builds a pyramidal TIFF of at least ``--size`` x ``--size`` pixels from the real MoNuSeg tiles
(mirrored mosaics, so every tile is tissue), then runs ``napari-histo``'s slide segmentation
through dask with 1 and 2 local workers and reports Mpx/s and peak memory.

    OMP_WAIT_POLICY=PASSIVE python bench/slide.py --size 20480 --workers 0 1 2 --json out.json

Peak memory is sampled (every 0.25 s) over this process and its dask worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg2018_train_subset" / "images"


def build_slide(path: Path, size: int, tile: int = 512) -> Path:
    """Write a size x size pyramidal TIFF made of real H&E tiles (streamed, bounded memory)."""
    import tifffile

    from napari_histo.core.io import read_image
    from napari_histo.core.progress import drain
    from napari_histo.core.slide.segment import write_pyramidal_tiff_iter

    tiles = [read_image(p) for p in sorted(DATA.glob("*.png"))]
    th, tw = tiles[0].shape[:2]

    import dask.array as da

    def block(block_info=None):
        loc = block_info[None]["array-location"]
        (r0, r1), (c0, c1) = loc[0], loc[1]
        out = np.empty((r1 - r0, c1 - c0, 3), np.uint8)
        rr = np.arange(r0, r1)
        cc = np.arange(c0, c1)
        ti, tj = rr // th, cc // tw
        for i in np.unique(ti):
            for j in np.unique(tj):
                k = (i * 7 + j * 3) % len(tiles)
                t = tiles[k]
                if (i + j) % 2:
                    t = t[:, ::-1]
                rsel = ti == i
                csel = tj == j
                out[np.ix_(rsel, csel)] = t[np.ix_(rr[rsel] % th, cc[csel] % tw)]
        return out

    arr = da.map_blocks(
        block, chunks=((tile,) * (size // tile), (tile,) * (size // tile), (3,)), dtype=np.uint8
    )
    drain(write_pyramidal_tiff_iter(arr, path, tile=tile))
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].shape[:2] == (size, size)
    return path


class PeakMemory:
    """Samples the resident memory of this process and all its children (dask workers)."""

    def __init__(self, interval: float = 0.25):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.main = self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                main = self.proc.memory_info().rss
                kids = sum(c.memory_info().rss for c in self.proc.children(recursive=True))
            except psutil.Error:
                continue
            self.main = max(self.main, main)
            self.total = max(self.total, main + kids)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_once(
    slide: Path, out: Path, model: str, workers: int | None, normalize: bool, tile: int, halo: int
) -> dict:
    from napari_histo.core.io import read_slide
    from napari_histo.core.progress import drain
    from napari_histo.core.slide.cluster import dask_client
    from napari_histo.core.slide.segment import SlideTiling, segment_slide_iter
    from napari_histo.core.slide.segmenter import ModelSegmenter

    levels = read_slide(slide)
    if normalize:
        from napari_histo.core.stain import get_normalizer
        from napari_histo.core.stain.workflow import normalize_levels

        levels = normalize_levels(get_normalizer("macenko").fit(np.asarray(levels[-1])), levels)
    seg = ModelSegmenter(model, "auto", False)
    t0 = time.perf_counter()
    with PeakMemory() as mem, dask_client(None, workers) as client:
        res = drain(
            segment_slide_iter(levels, seg, out, SlideTiling(tile=tile, halo=halo), client=client)
        )
    dt = time.perf_counter() - t0
    mpx = res.shape[0] * res.shape[1] / 1e6
    return {
        "workers": workers or 0,
        "seconds": round(dt, 1),
        "mpx": round(mpx, 1),
        "mpx_per_s": round(mpx / dt, 3),
        "nuclei": res.n_nuclei,
        "peak_rss_main_mb": round(mem.main / 2**20),
        "peak_rss_all_mb": round(mem.total / 2**20),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20480)
    ap.add_argument("--model", default="default")
    ap.add_argument(
        "--workers", type=int, nargs="+", default=[0, 1, 2],
        help="0: the local threaded scheduler; N: a LocalCluster of N processes",
    )  # fmt: skip
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--halo", type=int, default=64)
    ap.add_argument("--no-normalize", action="store_true")
    ap.add_argument("--slide", help="reuse (or build once, then keep) the bench slide at this path")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument(
        "--whole-size", type=int, default=6000,
        help="then time whole `napari-histo segment` processes on 6000² slides (all tissue, glass "
        "margins, the real SVS; bench/segment_whole.py); 0 skips",
    )  # fmt: skip
    ap.add_argument(
        "--baseline-src", help="src folder of a previous version, timed beside this one there"
    )
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        slide = Path(args.slide) if args.slide else tmp / "bench_slide.tif"
        if slide.exists():
            print(f"reusing {slide} ({slide.stat().st_size / 1e6:.0f} MB)", file=sys.stderr)
        else:
            build_slide(slide, args.size)
            print(
                f"built {args.size}x{args.size} slide in {time.perf_counter() - t0:.0f}s ({slide.stat().st_size / 1e6:.0f} MB)",
                file=sys.stderr,
            )
        for w in args.workers:
            row = run_once(
                slide,
                tmp / f"out_{w}.zarr",
                args.model,
                w,
                not args.no_normalize,
                args.tile,
                args.halo,
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"size": args.size, "cpu_count": os.cpu_count(), "runs": rows}
    if args.whole_size:
        import segment_whole  # bench/, beside this script

        print(f"\n--- whole processes, {args.whole_size}^2 (bench/segment_whole.py) ---")
        with tempfile.TemporaryDirectory() as tmp:
            wjson = Path(tmp) / "whole.json"
            wargs = ["--size", str(args.whole_size), "--json", str(wjson)]
            wargs += ["--baseline-src", args.baseline_src] if args.baseline_src else []
            segment_whole.main(wargs)
            result["whole_process"] = json.loads(wjson.read_text())
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
