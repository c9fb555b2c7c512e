"""Does normalizing the stain first help the shipped model on the held-out MoNuSeg tiles?

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/seg_normalize_first.py --json bench/results/seg_normalize.json

Scores ``unet_monuseg_v2`` on the validation tiles of scripts/train_seg_default.py as they are,
and after Reinhard / Macenko normalization to (a) one training tile (TCGA-A7-A13E, breast) and
(b) the pooled training tiles (each downsampled 4x), i.e. what ``segment --normalize`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg2018_train_subset"
VAL = ("TCGA-NH-A8F7-01A-01-TS1", "TCGA-CH-5767-01Z-00-DX1", "TCGA-50-5931-01Z-00-DX1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    args = ap.parse_args()
    from napari_histo.core.io import read_image, read_labels
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.inference import segment_iter
    from napari_histo.core.seg.metrics import evaluate
    from napari_histo.core.seg.registry import load_model
    from napari_histo.core.stain import get_normalizer

    model = load_model("default", "cpu")
    train = [p for p in sorted((DATA / "images").glob("*.png")) if p.stem not in VAL]
    one = read_image(DATA / "images" / "TCGA-A7-A13E-01Z-00-DX1.png")
    pool = np.concatenate([read_image(p)[::4, ::4] for p in train], axis=0)
    val = [
        (read_image(DATA / "images" / f"{v}.png"), read_labels(DATA / "masks" / f"{v}.tif"))
        for v in VAL
    ]
    setups = {
        "as scanned": None,
        "Reinhard to TCGA-A7-A13E": get_normalizer("reinhard").fit(one),
        "Macenko to TCGA-A7-A13E": get_normalizer("macenko").fit(one),
        "Reinhard to the pooled training tiles": get_normalizer("reinhard").fit(pool),
        "Macenko to the pooled training tiles": get_normalizer("macenko").fit(pool),
    }  # fmt: skip
    rows = {}
    for name, norm in setups.items():
        res = [
            evaluate(lab, drain(segment_iter(img, model, normalizer=norm)).labels)
            for img, lab in val
        ]
        rows[name] = {
            "mean": {k: round(float(np.mean([r[k] for r in res])), 3) for k in ("dice", "aji", "pq")},
            "aji_per_tile": dict(zip(VAL, (round(float(r["aji"]), 3) for r in res), strict=True)),
        }  # fmt: skip
        print(name, json.dumps(rows[name]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
