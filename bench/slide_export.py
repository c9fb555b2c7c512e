"""Time the nuclei export (GeoJSON + CSV) of a segmented slide, and of a window far into a slide.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src nice -n 5 python bench/slide_export.py \\
        --json bench/results/slide_export.json

1. The test SVS (CMU-1-Small-Region, 2220 x 2967 px) is segmented at its own scale with the
   default model into a label zarr, then ``export_slide_iter`` writes its GeoJSON and CSV
   (timed after a warm-up export, which pays the imports).
2. A 1024 x 1024 window of those labels with its ids moved to block 700 (``700 * 2**16 + k``,
   as a window about 70,000 px into a slide carries them) is measured and outlined; peak
   memory by tracemalloc.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SVS = ROOT / "tests" / "data" / "wsi" / "CMU-1-Small-Region.svs"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import tifffile
    import zarr

    from napari_histo.core.io import read_slide
    from napari_histo.core.labels.export import label_polygons
    from napari_histo.core.labels.measure import measure_nuclei
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.registry import load_model
    from napari_histo.core.slide.segment import export_slide_iter, segment_slide_iter
    from napari_histo.core.slide.segmenter import ModelSegmenter

    out = Path(tempfile.mkdtemp(prefix="slide-export-"))
    model = load_model("default", "cpu")
    res = drain(segment_slide_iter(read_slide(SVS), ModelSegmenter(str(model.path), "cpu"),
                                   out / "s.zarr"))  # fmt: skip
    image = tifffile.imread(SVS)
    drain(export_slide_iter(res.zarr_path, image, out / "w.geojson", out / "w.csv"))
    t0 = time.perf_counter()
    n = drain(export_slide_iter(res.zarr_path, image, out / "n.geojson", out / "n.csv"))
    slide_s = time.perf_counter() - t0

    window = np.asarray(zarr.open_group(str(res.zarr_path), mode="r")["0"][:1024, :1024])
    _, inverse = np.unique(window, return_inverse=True)  # 1..N, then moved to block 700
    far = np.where(window > 0, inverse.reshape(window.shape) + 700 * 2**16, 0).astype(np.uint32)
    tracemalloc.start()
    t0 = time.perf_counter()
    table, polys = measure_nuclei(far), label_polygons(far)
    far_s = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result = {
        "slide": {"nuclei": int(n), "pixels": int(image.shape[0] * image.shape[1]),
                  "seconds": round(slide_s, 2), "ms_per_nucleus": round(1e3 * slide_s / n, 2)},
        "far_window": {"nuclei": len(table["label"]), "outlines": len(polys),
                       "max_id": int(far.max()), "seconds": round(far_s, 2),
                       "peak_mb": round(peak / 1e6, 1)},
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
