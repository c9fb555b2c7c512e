"""20x validation with and without the pixel size: what ``segment`` does when the file says 0.5 um/px.

The validation's 20x copies (each 40x tile downsampled 2x) have been scored as if their pixel
size were unknown: the network sees nuclei half the size it was trained on. ``segment`` reads the
pixel size from the file (or ``--mpp``) and resamples the image to the model's training pixel size
(``core.seg.workflow.segment_array_iter``). This scores both (``train_seg_default.evaluate_model``,
through that same function when the pixel size is given), for each model given.

    PYTHONPATH=src python bench/seg_20x_mpp.py --json bench/results/seg_20x_mpp.json

``--write-card`` records the given-pixel-size scores as ``validation_20x_mpp_given`` in each
model's card (card.json and card.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", nargs="+", default=None,
        help="default: every shipped model whose card records a pixel size, the default first, "
        "except FullNet and Mask R-CNN (slow and far behind on a CPU)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--write-card", action="store_true",
        help="record the scores with the pixel size given in each model's card",
    )  # fmt: skip
    args = ap.parse_args(argv)

    import torch
    from _split import shipped_models, train_script

    from napari_histo.core.seg.registry import load_model
    from napari_histo.core.seg.workflow import model_mpp

    torch.set_num_threads(args.threads)
    script = train_script()
    _, val = script.load_split("all80")
    val20 = script.rescale_pairs(val, 0.5)
    rows = {}
    print("| model | 20x AJI, pixel size unknown | 20x AJI, 0.5 um/px given | Dice | PQ |")
    print("|---|---|---|---|---|")
    for name in args.models or shipped_models("mpp", ("fullnet", "maskrcnn")):
        folder = ROOT / "resources" / "seg" / name
        trained = model_mpp(load_model(folder, "cpu").card)  # cached for evaluate_model
        if trained is None:
            print(f"| {name} | card records no pixel size | | | |")
            continue
        unknown = script.evaluate_model(folder, val20)
        given = script.evaluate_model(folder, val20, mpp=2 * trained)
        rows[name] = {"model_mpp": trained, "unknown": unknown, "given": given}
        print(
            f"| {name} | {unknown['aji']:.3f} | **{given['aji']:.3f}** | "
            f"{unknown['dice']:.3f} -> {given['dice']:.3f} | {unknown['pq']:.3f} -> {given['pq']:.3f} |",
            flush=True,
        )
        if args.write_card:
            record(folder, name, given)
    if args.json:
        from napari_histo.core.atomic import atomic_write_text

        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(rows, indent=1))
    return 0


def record(folder: Path, name: str, given: dict) -> None:
    """Put the 20x scores with the pixel size given in the model's card."""
    from napari_histo.core.weights import read_card, write_card

    card = read_card(folder)
    card["validation_20x_mpp_given"] = {
        **{k: given[k] for k in ("dice", "aji", "f1", "pq")},
        "note": "the 20x copies with their pixel size (0.5 um/px) given, so segment resamples "
        f"them to the model's {card['mpp']} um/px (bench/seg_20x_mpp.py --models {name})",
    }
    write_card(folder, card)


if __name__ == "__main__":
    sys.exit(main())
