"""``napari-histo normalize``: stain-colour normalization of tiles and whole slides to a template."""

from __future__ import annotations

from pathlib import Path

from ..core.stain import DEFAULT_METHOD, METHODS
from ._common import add_device_argument, drain_with_bar, error, for_each_file, note

NAME = "normalize"
HELP = "normalize the stain colour of H&E tiles or slides to a template (DCGMM, Macenko, ...)"
DESCRIPTION = (
    "Normalize each IMAGE to the stain colour of the template(s) and write OUT/<stem>.png (RGB "
    "uint8, same size). Whole slides (SVS, pyramidal or very large TIFF) are normalized lazily, "
    "chunk by chunk with statistics from a coarse level, and written as pyramidal TIFF "
    "OUT/<stem>.tif. Several templates (or regions saved as images) are pooled. DCGMM uses the "
    "shipped fitted model unless --fit-on refits it (or --model loads a saved normalizer)."
)
ORDER = 12


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="tiles or slides to normalize")
    parser.add_argument(
        "--template",
        action="append",
        metavar="TEMPLATE",
        help="template image whose stain colour is the target; repeat it to pool several "
        "(optional with --model, which carries its template)",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help=f"normalization method (default: {DEFAULT_METHOD}, or the method of --model)",
    )
    parser.add_argument(
        "--fit-on",
        action="append",
        metavar="IMAGE",
        help="DCGMM only: refit the network on this image first (repeat for several; default: "
        "the shipped model)",
    )
    parser.add_argument("--steps", type=int, default=200, help="DCGMM refit steps (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a DCGMM refit (default 0)")
    parser.add_argument(
        "--model",
        metavar="FITTED",
        help="a normalizer saved from the widget or a script (.json / .safetensors)",
    )
    parser.add_argument(
        "--class-maps",
        action="store_true",
        help="DCGMM only: also write OUT/<stem>_classes.tif (uint8 class index, 0 = background)",
    )
    add_device_argument(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="which normalization helps here? normalize each IMAGE with every method, segment "
        "each result with the default model and print a table (nuclei, confidence, agreement "
        "between methods); writes OUT/<stem>_<method>.png and OUT/<stem>_compare.csv",
    )
    parser.add_argument(
        "--truth",
        metavar="MASK",
        help="with --compare: ground-truth or corrected instance labels of the (single) IMAGE; "
        "methods are then ranked by AJI against it",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no per-file notes")


def _read_any(path: Path):
    """An in-memory RGB image: a tile, or a slide's level of at most 2048 pixels a side."""
    import numpy as np

    from ..core.io import is_slide, read_image, read_slide
    from ..core.io.regions import pick_level

    if is_slide(path):
        levels = read_slide(path)
        return np.asarray(levels[pick_level(levels)])
    return read_image(path)


def _read_inputs(paths: list[str], label: str) -> tuple[list, int]:
    """Read template / fit-on images; unreadable ones are reported, the rest kept."""
    done, failures = for_each_file(paths, _read_any, label=label)
    return list(done.values()), failures


def _compare(args, templates: list, out: Path) -> int:
    """``--compare``: every method on each image, judged by the segmentation it leads to."""
    from ..core.errors import HistoError
    from ..core.io import read_image, read_labels, write_image
    from ..core.labels.export import write_csv
    from ..core.seg.compare import compare_normalizations_iter

    if not templates:
        raise HistoError("--compare needs a template: give --template IMAGE")
    if args.truth and len(args.images) != 1:
        raise HistoError("--truth goes with one IMAGE (its labels)")
    truth = read_labels(args.truth) if args.truth else None
    out.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> str:
        image = read_image(path)
        comp = drain_with_bar(
            compare_normalizations_iter(image, templates, device=args.device, truth=truth),
            desc=f"{path.name} compare",
            quiet=args.quiet,
        )
        rows = comp.rows()
        for o in comp.outcomes:
            write_image(out / f"{path.stem}_{o.method}.png", o.image)
        write_csv(out / f"{path.stem}_compare.csv", {k: [r[k] for r in rows] for k in rows[0]})
        lines = [f"{path.name}: best = {comp.best} (ranked by {comp.ranked_by})"]
        for r in rows:
            cells = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("method", "best"))
            lines.append(f"  {'*' if r['best'] else ' '} {r['method']:<9} {cells}")
        lines += [f"  note: {n}" for n in comp.notes]
        print("\n".join(lines))
        return comp.best

    _, failures = for_each_file(args.images, one)
    return 1 if failures else 0


def run(args) -> int:
    from ..core.errors import HistoError
    from ..core.stain.workflow import make_normalizer

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        error(f"{out}: exists and is not a folder")
        return 2
    if args.steps < 1:
        raise HistoError(f"--steps must be at least 1 (got {args.steps})")
    failures = 0
    templates: list = []
    if args.template:
        # A template that cannot be read stops the run: its message is the one error line.
        templates = [_read_any(Path(p)) for p in args.template]
    if args.compare:
        return _compare(args, templates, out)
    fit_on = None
    if args.fit_on:
        fit_on, bad = _read_inputs(args.fit_on, "fit-on image")
        failures += bad
        if not fit_on:
            raise HistoError("none of the --fit-on images could be read")

    normalizer = drain_with_bar(
        make_normalizer(
            args.method,
            templates,
            model=args.model,
            fit_on=fit_on,
            steps=args.steps,
            device=args.device,
            seed=args.seed,
        ),
        desc="fit",
        quiet=args.quiet,
    )
    method = normalizer.name
    if args.class_maps and method != "dcgmm":
        note("--class-maps: only DCGMM has classes; no class maps are written")
    out.mkdir(parents=True, exist_ok=True)
    class_maps = bool(args.class_maps) and method == "dcgmm"

    def one(path: Path) -> Path:
        import numpy as np

        from ..core.io import is_slide, read_image, read_slide, write_image, write_labels
        from ..core.slide.segment import write_pyramidal_tiff_iter
        from ..core.stain.workflow import normalize_images

        slide = is_slide(path)
        data = read_slide(path) if slide else read_image(path)
        results = drain_with_bar(
            normalize_images(normalizer, [(path.name, data)], class_maps=class_maps),
            desc=path.name,
            quiet=True,
        )
        res = results[0]
        for msg in res.notes:
            note(msg if path.name in msg else f"{path.name}: {msg}")
        if isinstance(res.image, list) or slide:
            level0 = res.image[0] if isinstance(res.image, list) else res.image
            dest = out / f"{path.stem}.tif"
            drain_with_bar(
                write_pyramidal_tiff_iter(level0, dest),
                desc=f"{path.name} -> {dest.name}",
                quiet=args.quiet,
            )
        else:
            dest = out / f"{path.stem}.png"
            write_image(dest, res.image)
        if res.class_map is not None:
            write_labels(out / f"{path.stem}_classes.tif", res.class_map, dtype=np.uint8)
            if res.class_level:
                note(f"{path.name}: class map written at pyramid level {res.class_level}")
        return dest

    done, bad = for_each_file(args.images, one)
    failures += bad
    if not args.quiet:
        for src, dest in done.items():
            note(f"{src.name} -> {dest}")
    return 1 if failures else 0
