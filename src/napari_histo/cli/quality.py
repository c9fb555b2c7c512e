"""``napari-histo quality``: PSNR, SSIM, MS-GMSD, MDSI and HaarPSI between two images."""

from __future__ import annotations

NAME = "quality"
HELP = "image-quality metrics (PSNR, SSIM, MS-GMSD, MDSI, HaarPSI) between two images"
DESCRIPTION = (
    "Compare image A with reference B (same size) using piq: PSNR, SSIM and HaarPSI are "
    "higher-is-better, MS-GMSD and MDSI lower-is-better (0 = identical)."
)
ORDER = 70


def add_arguments(parser) -> None:
    parser.add_argument("a", metavar="A", help="the image to score (e.g. a translation)")
    parser.add_argument("b", metavar="B", help="the reference image")
    parser.add_argument("--json", metavar="FILE", help="also write the scores as JSON")


def run(args) -> int:
    import json
    import warnings
    from pathlib import Path

    from ..core.atomic import atomic_write_text
    from ..core.errors import InputWarning
    from ..core.io import read_image
    from ..core.translate.quality import METRIC_BY_KEY, format_scores, quality_scores
    from ._common import note

    a, b = Path(args.a), Path(args.b)
    img_a, img_b = read_image(a), read_image(b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        scores = quality_scores(img_a, img_b, names=(a.name, b.name))
    for w in caught:
        if issubclass(w.category, InputWarning):
            note(str(w.message))
    print(format_scores(scores))
    if args.json:
        doc = {
            "a": str(a),
            "b": str(b),
            "scores": scores,
            "better": {k: METRIC_BY_KEY[k].better for k in scores},
        }
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    return 0
