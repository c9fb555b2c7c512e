"""``napari-histo segment``: nuclei instance labels for tiles (TIFF) and whole slides (zarr)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.stain import DEFAULT_METHOD, METHODS
from ._common import add_device_argument, drain_with_bar, error, for_each_file, note

NAME = "segment"
HELP = "segment nuclei in H&E tiles or whole slides with a trained model"
DESCRIPTION = (
    "Segment the nuclei of each IMAGE and write OUT/<stem>.tif (uint32 instance labels, same "
    "height and width, 0 = background). A whole slide (SVS, pyramidal or very large TIFF) is "
    "processed block by block and written to OUT/<stem>.zarr (a multiscale label pyramid); "
    "--scheduler / --workers run it on a dask cluster. --geojson and --csv also write the "
    "nuclei outlines (QuPath GeoJSON) and measurements."
)
ORDER = 20


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="tiles or whole slides")
    parser.add_argument(
        "--model",
        default="default",
        help="'default', a shipped model name, a model folder or its weights.safetensors",
    )
    add_device_argument(parser)
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="multiple inference: average the predictions of the 8 dihedral transforms "
        "(default: the architecture's own setting, on for FullNet, off for the others)",
    )
    parser.add_argument(
        "--tta-transforms",
        type=int,
        choices=(4, 8),
        default=8,
        help="with --tta: 8 (flips and rotations, default) or 4 (flips only; faster)",
    )
    parser.add_argument(
        "--normalize",
        metavar="TEMPLATE",
        help="normalize each tile's stain to this template image (or a saved normalizer .json)",
    )
    parser.add_argument(
        "--pipeline",
        choices=("jung2019",),
        help="a published method as a preset: jung2019 = DCGMM normalization to --normalize "
        "TEMPLATE, Mask R-CNN, multiple inference merged as instances (needs a trained Mask R-CNN)",
    )
    parser.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="pixel size in micrometres per pixel (default: read from the file where it is "
        "recorded, e.g. SVS/OME-TIFF); images of another size than the model's are resampled",
    )
    parser.add_argument(
        "--guess-scale",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="tiles whose pixel size is unknown: measure the nuclei in a first pass and enlarge "
        "the image when they are smaller than the model learnt (e.g. 20x tiles; default on)",
    )
    parser.add_argument(
        "--translate",
        action="store_true",
        help="IHC tiles: translate to H&E first (CycleGAN), then normalize and segment",
    )
    parser.add_argument(
        "--translator",
        default="ihc2he_default",
        metavar="MODEL",
        help="the IHC -> H&E model for --translate (default: the shipped ihc2he_default; see "
        "its card for its licence)",
    )
    parser.add_argument(
        "--normalize-method",
        default=DEFAULT_METHOD,
        choices=METHODS,
        help=f"stain normalization method for --normalize (default: {DEFAULT_METHOD}, as normalize)",
    )
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="largest network tile in pixels (default 512; tiles are balanced to share ~32 px)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--geojson", action="store_true", help="also write OUT/<stem>.geojson")
    parser.add_argument("--csv", action="store_true", help="also write OUT/<stem>.csv")
    parser.add_argument(
        "--slide-tile", type=int, default=1024, help="block size for whole slides (default 1024)"
    )
    parser.add_argument(
        "--scheduler", metavar="tcp://HOST:PORT", help="run slides on this dask scheduler"
    )
    parser.add_argument("--workers", type=int, help="run slides on N local worker processes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or notes")


def _normalizer(args):
    """The fitted normalizer of ``--normalize``: a template image, or a saved normalizer."""
    from ..core.errors import HistoError
    from ..core.io import read_image
    from ..core.progress import drain
    from ..core.stain.workflow import make_normalizer

    src = Path(args.normalize)
    saved = src.is_dir() or src.suffix.lower() in (".json", ".safetensors")
    try:
        if saved:
            return drain(make_normalizer(model=src, device=args.device))
        templates = [read_image(src)]
        return drain(make_normalizer(args.normalize_method, templates, device=args.device))
    except HistoError as exc:
        msg = str(exc)
        raise HistoError(msg if src.name in msg else f"template {src.name}: {msg}") from None


def run(args) -> int:
    import warnings

    from ..core.errors import HistoError, InputWarning
    from ..core.io import is_slide, read_image, write_labels
    from ..core.labels.export import write_csv, write_geojson
    from ..core.labels.measure import measure_nuclei
    from ..core.seg.registry import load_model
    from ..core.seg.workflow import segment_array_iter

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        error(f"{out}: exists and is not a folder")
        return 2
    if args.pipeline:
        from ..core.seg.workflow import PIPELINES, pipeline_model

        preset = PIPELINES[args.pipeline]
        if not args.normalize:
            raise HistoError(
                f"--pipeline {args.pipeline} normalizes first: give --normalize TEMPLATE"
            )
        args.model = pipeline_model(args.pipeline)
        args.normalize_method = preset.normalize
        args.tta = preset.tta
    model = load_model(args.model, args.device)
    normalizer = _normalizer(args) if args.normalize else None
    translator = None
    if args.translate:
        from ..core.translate import load_translator

        translator = load_translator(args.translator, "ihc2he", args.device)
    # None leaves multiple inference to the model's architecture (on for FullNet).
    tta = (8 if args.tta_transforms == 8 else 4) if args.tta else args.tta
    if args.tile is not None and args.tile < 16:
        raise HistoError(f"--tile must be at least 16 pixels, got {args.tile}")
    out.mkdir(parents=True, exist_ok=True)

    def slide(path: Path) -> str:
        from ..core.io import read_slide

        if translator is not None:
            raise HistoError(f"{path.name}: --translate works on tiles, not whole slides (yet)")
        from ..core.slide.cluster import dask_client
        from ..core.slide.segment import SlideTiling, export_slide_iter, segment_slide_iter
        from ..core.slide.segmenter import ModelSegmenter

        raw = levels = read_slide(path)
        if normalizer is not None:
            from ..core.stain.workflow import normalize_levels

            levels = normalize_levels(normalizer, raw)
        dest = out / f"{path.stem}.zarr"
        from ..core.io.slides import read_mpp

        mpp = known_mpp = args.mpp or read_mpp(path)  # the export's µm: never from a guess
        said = None
        if mpp is None and args.guess_scale:
            from ..core.slide.segmenter import guess_slide_mpp_iter

            mpp, said = drain_with_bar(
                guess_slide_mpp_iter(levels, str(model.path), args.device),
                desc=f"{path.name} scale",
                quiet=args.quiet,
            )
        segmenter = ModelSegmenter(str(model.path), args.device, tta, mpp)
        # Blank windows of a slide are expected: no per-window "no tissue" notes.
        with dask_client(args.scheduler, args.workers) as client, warnings.catch_warnings():
            warnings.simplefilter("ignore", InputWarning)
            res = drain_with_bar(
                segment_slide_iter(
                    levels, segmenter, dest, SlideTiling(tile=args.slide_tile), client
                ),
                desc=path.name,
                quiet=args.quiet,
            )
        if args.geojson or args.csv:
            drain_with_bar(
                export_slide_iter(
                    dest,
                    raw[0],  # measure the colours as scanned
                    geojson=out / f"{path.stem}.geojson" if args.geojson else None,
                    csv=out / f"{path.stem}.csv" if args.csv else None,
                    mpp=known_mpp,
                ),
                desc=f"{path.name} export",
                quiet=args.quiet,
            )
        from ..core.seg.workflow import scale_note

        return f"{res.n_nuclei} nuclei -> {dest} ({said or scale_note(mpp, model.card)})"

    def tile(path: Path) -> str:
        from ..core.io.slides import read_mpp

        rgb = read_image(path)
        mpp = args.mpp or read_mpp(path)
        res = drain_with_bar(
            segment_array_iter(
                rgb,
                model,
                tta=tta,
                normalizer=normalizer,
                translator=translator,
                tile=args.tile,
                mpp=mpp,
                guess_scale=args.guess_scale,
            ),
            desc=path.name,
            quiet=args.quiet,
        )
        dest = write_labels(out / f"{path.stem}.tif", res.labels)
        if args.geojson or args.csv:
            table = measure_nuclei(res.labels, rgb, mpp=mpp)
            if args.csv:
                write_csv(out / f"{path.stem}.csv", table)
            if args.geojson:
                write_geojson(out / f"{path.stem}.geojson", res.labels, table)
        if res.scale and mpp is None:
            size = f"{res.scale}; give --mpp to say it"
        elif mpp is None:
            size = "pixel size unknown, segmented as it is (give --mpp)"
        else:
            size = f"{mpp:g} um/px" + (f", {res.notes[-1]}" if res.notes else "")
        return f"{res.n_nuclei} nuclei -> {dest} ({size})"

    def one(path: Path) -> str:
        if path.is_file() and is_slide(path):
            return slide(path)
        return tile(path)

    done, failures = for_each_file(args.images, one)
    if not args.quiet:
        for src, msg in done.items():
            note(f"{src.name}: {msg}")
    return 1 if failures else 0
