"""Pack a compact copy of the training data in ../shared/data for a remote (GPU) machine.

Images become JPEG quality 92 (a 1000 x 1000 H&E tile: about 1.7 MB as PNG, 0.2 MB as JPEG, PSNR 37 dB);
masks, SOURCE.md and index.json files are copied unchanged. The training scripts read the copy
when ``NAPARI_HISTO_DATA`` points at it (they accept ``.jpg`` beside ``.png``) and say in the
card that they trained on JPEG copies. Validation and benchmarks run on the originals::

    .venv/bin/python scripts/pack_training_data.py .gpu/data
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FOLDERS = (
    "monuseg2018_train_subset",
    "monuseg2018_train_rest",
    "tnbc",
    "ihc/bci_her2_histdit_256",
    "ihc/openslide_ki67_he_unpaired_256",
    "stain/tiatoolbox_target",
)
IMAGE_DIRS = {"images", "he", "ihc", "tiatoolbox_target"}


def pack(dest: Path, quality: int = 92) -> int:
    """Write the copy into ``dest``; returns its size in bytes."""
    from PIL import Image

    total = 0
    for rel in FOLDERS:
        src = SHARED / rel
        if not src.is_dir():
            sys.exit(f"training data not found: {src}")
        for f in sorted(src.rglob("*")):
            if not f.is_file():
                continue
            out = dest / rel / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix == ".png" and f.parent.name in IMAGE_DIRS:
                out = out.with_suffix(".jpg")
                with Image.open(f) as im:
                    im.convert("RGB").save(out, quality=quality)
            else:
                shutil.copy2(f, out)
            total += out.stat().st_size
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--quality", type=int, default=92)
    args = ap.parse_args(argv)
    size = pack(args.dest, args.quality)
    print(f"{args.dest}: {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
