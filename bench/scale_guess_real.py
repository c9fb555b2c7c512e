"""Does the magnification guess recognise real scans? Tiles of known pixel size, no ground truth.

The guess (``core.seg.scale``) was calibrated and scored on downsampled 40x tiles. Here it is
shown real scans whose pixel size is recorded, as if it were not: the 20x Aperio SVS
(CMU-1-Small-Region, 0.499 um/px: the model's 0.25 wants x2.0) cut into 1000 px tiles, and the
OS-1 H&E crop (Hamamatsu, 0.2271 um/px, ~40x: x0.91, i.e. as it is) reassembled from its 16
tiles of 256 px. It prints the factor the guess picks for each tile.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src python bench/scale_guess_real.py \
        --json bench/results/scale_guess_real.json

``--models NAME --merge`` adds or rescores one model's rows and keeps the others'.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def svs_tiles(side: int = 1000):
    """(name, rgb, true factor) for the SVS's full 1000 px tiles with tissue."""
    from napari_histo.core.io import read_mpp, read_slide

    path = SHARED / "wsi" / "CMU-1-Small-Region.svs"
    base = np.asarray(read_slide(path)[0])[..., :3]
    mpp = read_mpp(path)
    out = []
    for r in range(0, base.shape[0] - side + 1, side):
        for c in range(0, base.shape[1] - side + 1, side):
            tile = base[r : r + side, c : c + side]
            if (tile.mean(axis=-1) < 200).mean() > 0.3:  # tissue, not glass
                out.append((f"CMU-1 r{r} c{c}", np.ascontiguousarray(tile), mpp))
    return out


def os1_crop():
    """The OS-1 H&E crop, reassembled from its 4 x 4 tiles of 256 px."""
    from napari_histo.core.io import read_image

    folder = SHARED / "ihc" / "openslide_ki67_he_unpaired_256" / "he"
    rows = [
        np.concatenate([read_image(folder / f"OS-1_r{r}c{c}.png") for c in range(4)], axis=1)
        for r in range(4)
    ]
    return [("OS-1 (4x4 tiles)", np.concatenate(rows, axis=0)[..., :3], 0.2271)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", nargs="+", default=None,
        help="default: every shipped model with a magnification guess, the default first",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--merge", action="store_true",
        help="keep the other models' rows already in --json (the new ones go first)",
    )  # fmt: skip
    args = ap.parse_args(argv)

    import torch
    from _split import shipped_models  # bench/ is on the path when run as a script

    from napari_histo.core.atomic import atomic_write_text
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.registry import load_model
    from napari_histo.core.seg.workflow import guess_scale_iter, model_mpp

    torch.set_num_threads(args.threads)
    tiles = svs_tiles() + os1_crop()
    rows = {}
    print("| model | tile | true factor | guessed | what the guess saw |")
    print("|---|---|---|---|---|")
    for name in args.models or shipped_models("scale_guess"):
        model = load_model(ROOT / "resources" / "seg" / name, "cpu")
        rows[name] = {}
        for tname, rgb, mpp in tiles:
            factor, why, _ = drain(guess_scale_iter(rgb, model))  # what `segment` does
            true = mpp / model_mpp(model.card)
            rows[name][tname] = {"true": round(true, 3), "guessed": factor or 1.0, "why": why}
            print(f"| {name} | {tname} | {true:.2f} | {factor or 1.0:.2f} | {why} |", flush=True)
    if args.json:
        if args.merge and args.json.is_file():
            old = json.loads(args.json.read_text())
            rows = {**rows, **{k: v for k, v in old.items() if k not in rows}}
        atomic_write_text(args.json, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
