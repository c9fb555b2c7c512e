"""``napari-histo translate``: IHC -> H&E (or back) with a CycleGAN generator, one PNG per input."""

from __future__ import annotations

from pathlib import Path

from ._common import add_device_argument, drain_with_bar, error, for_each_file, note

NAME = "translate"
HELP = "translate IHC tiles to H&E appearance (or back) with a CycleGAN model"
DESCRIPTION = (
    "Translate each IMAGE with a CycleGAN generator and write OUT/<stem>.png. The default model "
    "is the small shipped ihc2he_default (crude: trained on two public images; see its card.md)."
)
ORDER = 60


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="input tiles (PNG, JPEG, TIFF)")
    parser.add_argument(
        "--model",
        default="ihc2he_default",
        help="model folder, its weights.safetensors, or a shipped name (default: ihc2he_default)",
    )
    parser.add_argument("--direction", default="ihc2he", choices=("ihc2he", "he2ihc"))
    parser.add_argument("--tile", type=int, default=256, help="tile size in pixels (default 256)")
    parser.add_argument("--overlap", type=int, default=32, help="tile overlap (default 32)")
    add_device_argument(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..core.io import read_image, write_image
    from ..core.translate import load_translator, translate_iter

    model = load_translator(args.model, args.direction, args.device)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        error(f"{out}: exists and is not a folder")
        return 2
    out.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> Path:
        rgb = read_image(path)
        res = drain_with_bar(
            translate_iter(rgb, model, tile=args.tile, overlap=args.overlap),
            desc=path.name,
            quiet=args.quiet,
        )
        dest = out / f"{path.stem}.png"
        write_image(dest, res)
        return dest

    done, failures = for_each_file(args.images, one)
    for src, dest in done.items():
        if not args.quiet:
            note(f"{src.name} -> {dest}")
    return 1 if failures else 0
