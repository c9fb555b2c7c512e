"""Do the in-memory path and the whole-slide path give the same nuclei on the same pixels?

Builds a mosaic of real MoNuSeg tiles (../shared/data), segments it in memory
(``seg.workflow.segment_array_iter``) and as a pyramidal TIFF through the slide path
(``slide.segment.segment_slide_iter``, local threads), and prints nuclei counts, AJI between the
two and the seconds each took. Writes bench/results/slide_agreement.json.

    nice .venv/bin/python bench/slide_agreement.py --size 3000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg2018_train_subset" / "images"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=3000)
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        sys.exit(f"benchmark data not found: {DATA} (needs ../shared/data beside the repository)")

    from napari_histo.core.io import read_image, read_slide
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.metrics import aggregated_jaccard_index
    from napari_histo.core.seg.registry import load_model
    from napari_histo.core.seg.workflow import segment_array_iter
    from napari_histo.core.slide.segment import (
        open_labels_pyramid,
        segment_slide_iter,
        write_pyramidal_tiff_iter,
    )
    from napari_histo.core.slide.segmenter import ModelSegmenter

    tiles = [read_image(p) for p in sorted(DATA.glob("*.png"))]
    n = -(-args.size // 1000)
    rows = [
        np.concatenate([tiles[(r * n + c) % len(tiles)] for c in range(n)], axis=1)
        for r in range(n)
    ]
    mosaic = np.ascontiguousarray(np.concatenate(rows, axis=0)[: args.size, : args.size])
    model = load_model("default", "cpu")
    t0 = time.perf_counter()
    mem = drain(segment_array_iter(mosaic, model, "cpu")).labels
    t_mem = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        path = drain(write_pyramidal_tiff_iter(mosaic, Path(d) / "mosaic.tif"))
        t0 = time.perf_counter()
        res = drain(
            segment_slide_iter(
                read_slide(path), ModelSegmenter(str(model.path), "cpu"), Path(d) / "m.zarr"
            )
        )
        t_slide = time.perf_counter() - t0
        slide = np.asarray(open_labels_pyramid(res.zarr_path)[0])
    out = {
        "size": args.size,
        "model": model.name,
        "nuclei_in_memory": int(len(np.unique(mem)) - 1),
        "nuclei_slide": int(len(np.unique(slide)) - 1),
        "aji_between_paths": round(float(aggregated_jaccard_index(mem, slide)), 4),
        "identical_labels": bool(np.array_equal(mem, slide)),
        "seconds_in_memory": round(t_mem, 1),
        "seconds_slide": round(t_slide, 1),
    }
    print(json.dumps(out, indent=2))
    (ROOT / "bench" / "results" / "slide_agreement.json").write_text(
        json.dumps(out, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
