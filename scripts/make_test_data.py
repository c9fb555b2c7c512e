"""Build tests/data/ (the small real data the test suite needs) from ../shared/data.

Run once by a developer when the test data should change; the result is committed, so a fresh
clone runs the whole suite without ../shared. What each file is and where it came from:
tests/data/SOURCE.md. The larger bad inputs (float, 16-bit, 5-channel TIFFs) and the new ones
(EXIF-rotated, palette, planar TIFF, non-ASCII name) are not stored: tests/conftest.py derives
them from the committed ``rgba.png`` crop, the same way the shared corpus was made.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "tests" / "data"

# MoNuSeg training tiles the tests use (by name, and by sorted position 0..5). TCGA-A7-A13E is
# not stored again: the package ships it losslessly in resources/samples/.
MONUSEG = {
    "monuseg2018_train_subset": [
        "TCGA-21-5784-01Z-00-DX1",
        "TCGA-21-5786-01Z-00-DX1",
        "TCGA-50-5931-01Z-00-DX1",
        "TCGA-A7-A13E-01Z-00-DX1",
        "TCGA-B0-5698-01Z-00-DX1",
        "TCGA-B0-5710-01Z-00-DX1",
        "TCGA-CH-5767-01Z-00-DX1",
        "TCGA-NH-A8F7-01A-01-TS1",
    ]
}
SHIPPED = {"TCGA-A7-A13E-01Z-00-DX1"}
JPEG_QUALITY = 90
# Two TNBC patients (another hospital's staining): the top-left 256 x 256 of one tile each.
TNBC = ["tnbc_01_1", "tnbc_07_1"]
TNBC_CROP = 256
BAD_KEEP = [
    "README.md",
    "all_black.png",
    "blank_white.png",
    "cmyk.jpg",
    "empty.png",
    "grayscale.png",
    "huge_header.png",
    "not_an_image.png",
    "pen_mark_green.png",
    "rgba.png",
    "thin_3x1000.png",
    "tiny_1x1.png",
    "truncated.png",
]


def main() -> int:
    if not SHARED.is_dir():
        sys.exit(f"shared data not found at {SHARED} (needs ../shared/data beside the repository)")
    from PIL import Image

    for folder, names in MONUSEG.items():
        for name in names:
            img_dir, mask_dir = OUT / "monuseg" / "images", OUT / "monuseg" / "masks"
            img_dir.mkdir(parents=True, exist_ok=True)
            mask_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SHARED / folder / "masks" / f"{name}.tif", mask_dir / f"{name}.tif")
            if name not in SHIPPED:
                with Image.open(SHARED / folder / "images" / f"{name}.png") as im:
                    im.convert("RGB").save(img_dir / f"{name}.jpg", quality=JPEG_QUALITY)
    import numpy as np
    import tifffile

    for name in TNBC:
        for sub in ("images", "masks"):
            (OUT / "tnbc" / sub).mkdir(parents=True, exist_ok=True)
        c = TNBC_CROP
        with Image.open(SHARED / "tnbc" / "images" / f"{name}.png") as im:
            Image.fromarray(np.asarray(im.convert("RGB"))[:c, :c]).save(
                OUT / "tnbc" / "images" / f"{name}.png", optimize=True
            )
        mask = tifffile.imread(SHARED / "tnbc" / "masks" / f"{name}.tif")[:c, :c]
        tifffile.imwrite(OUT / "tnbc" / "masks" / f"{name}.tif", mask, compression="zlib")
    bad = OUT / "bad_inputs"
    bad.mkdir(parents=True, exist_ok=True)
    for name in BAD_KEEP:
        shutil.copyfile(SHARED / "bad_inputs" / name, bad / name)
    svs = OUT / "wsi"
    svs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SHARED / "wsi" / "CMU-1-Small-Region.svs", svs / "CMU-1-Small-Region.svs")
    fn = OUT / "fullnet_varce_example"
    for sub, name in (("labels_ternary", "Breast_label.png"), ("weights", "Breast_weight.png")):
        (fn / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED / "fullnet_varce_example" / sub / name, fn / sub / name)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"tests/data: {total / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
