"""A new version of a segmentation model: its weights, other post-processing settings.

A model's name stands for what it segments, so a change of post-processing (a card's
``inference``) is a new version: labels made with the old one stay reproducible.

    PYTHONPATH=src python scripts/derive_seg_model.py hovernet_shared_v7_avg \
        --name hovernet_shared_v10 --inference '{"relative_cap": 130, "chosen_by": "..."}'

writes ``runs/seg/NAME``: the same weights, a card that keeps the model's data, ingredients and
lineage (the model becomes the parent), the settings merged into ``inference`` and the old
validation figures dropped. Then score it (``scripts/train_seg_default.py --eval-only --name
NAME``) and ship it (``bash scripts/ship_default.sh NAME``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "seg"
#: Card fields that describe the split, not figures measured on it.
SPLIT_FIELDS = ("validation_split", "validation_pairs")
#: Besides the ``validation*`` figures: fields of the old version that the new one must not carry
#: (the scoring and shipping steps write them anew; the timestamps are the save's).
MEASURED = ("cpu_speed", "created", "created_iso")


def derived_card(card: dict, name: str, settings: dict, command: str) -> dict:
    """``card`` as the card of version ``name`` with ``settings`` merged into its inference."""
    from napari_histo.core.seg.train.loop import lineage

    old = card.get("name", "?")
    changed = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "chosen_by")
    out = {
        k: v
        for k, v in card.items()
        if k not in MEASURED and (k in SPLIT_FIELDS or not k.startswith("validation"))
    }
    out.update(lineage(card))
    out.update(
        name=name,
        parent=old,
        command=command,
        minutes=0.0,
        inference={**(card.get("inference") or {}), **settings},
        summary=f"The weights of {old} with other post-processing ({changed}), made by "
        f"scripts/derive_seg_model.py with no training of its own. {old}: {card.get('summary', '')}",
        notes=[*(card.get("notes") or []), f"{name}: {old}'s weights; inference: {changed}"],
    )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a shipped name or a model folder")
    ap.add_argument("--name", required=True, help="the new version's folder name in runs/seg")
    ap.add_argument(
        "--inference", required=True, metavar="JSON",
        help="post-processing settings to merge, with a 'chosen_by' saying how they were chosen",
    )  # fmt: skip
    args = ap.parse_args(argv)
    settings = json.loads(args.inference)
    if not isinstance(settings, dict) or not settings.get("chosen_by"):
        ap.error("--inference must be a JSON object with a 'chosen_by'")

    from napari_histo.core.seg.registry import read_model, save_model

    arch, kwargs, tensors, card, _ = read_model(args.model)
    command = "PYTHONPATH=src python scripts/derive_seg_model.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    folder = save_model(
        RUNS / args.name, tensors, arch, kwargs, derived_card(card, args.name, settings, command)
    )
    print(f"{card.get('name')} -> {folder}: inference {settings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
