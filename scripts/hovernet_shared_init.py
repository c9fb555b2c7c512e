"""Start a one-decoder HoVer-Net from a two-decoder one: encoder, decoder and NP head carried over.

Usage::

    PYTHONPATH=src .venv/bin/python scripts/hovernet_shared_init.py \
        --parent hovernet_histo80_v4 --out runs/seg/hovernet_shared_init

The new model (``kwargs`` ``{"shared_decoder": true}``) costs what the U-Net costs. Its HV head
is new (seeded), so the folder is only a starting point for ``scripts/train_seg_default.py
--init FOLDER``; its card says so and carries the parent's lineage, licence, pixel size,
post-processing and magnification guess.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from napari_histo.core.seg.hovernet import shared_decoder_from
from napari_histo.core.seg.registry import read_model, save_model
from napari_histo.core.seg.train.loop import inherited, lineage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parent", default="hovernet_histo80_v4")
    ap.add_argument("--out", type=Path, default=Path("runs/seg/hovernet_shared_init"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    arch, kwargs, state, card, folder = read_model(args.parent)
    if arch != "hovernet" or kwargs.get("shared_decoder"):
        raise SystemExit(f"{folder.name} is not a two-decoder hovernet ({arch}, {kwargs})")
    net = shared_decoder_from(state, base=int(kwargs.get("base", 16)), seed=args.seed)
    parent = str(card.get("name") or folder.name)
    new = {
        "parent": parent,
        "license": card.get("license", ""),
        "command": "PYTHONPATH=src .venv/bin/python scripts/hovernet_shared_init.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "training": {},
        "seed": args.seed,
        "summary": f"untrained start: {parent}'s encoder, decoder and NP head, a new HV head "
        "reading the same decoder; train it with scripts/train_seg_default.py --init",
        **lineage(card),
        **inherited(card, parent),
    }
    for key in ("data", "pairs", "pair_names", "validation_pairs", "validation_split"):
        if key in card:
            new[key] = card[key]
    save_model(args.out, net, "hovernet", {**kwargs, "shared_decoder": True}, new)
    print(f"wrote {args.out} ({sum(p.numel() for p in net.parameters())} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
