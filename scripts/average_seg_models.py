"""Average the weights of segmentation models of one lineage (a "model soup") into a new run.

Two versions of one network, the second continued from the first (``hovernet_shared_v6`` and
``hovernet_shared_v7``, say), lie in one basin of the loss; the mean of their weights can score
better than either, without the noise of any one epoch (v6 + v7: +0.0007 40x AJI over v7; v5 +
v6: -0.005 under v6; bench/results/seg.md). Every tensor is averaged (batch norm's running
statistics too; integer counters keep the last model's value).

    PYTHONPATH=src python scripts/average_seg_models.py hovernet_shared_v6 \
        runs/seg/hovernet_shared_v7 --name hovernet_shared_v7_avg

writes ``runs/seg/NAME`` with a card naming its ingredients and their commands; then score it
with ``scripts/train_seg_default.py --eval-only --name NAME`` and ship it only when it beats its
ingredients on the validation split.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "seg"
#: Card fields the soup takes from its last ingredient: the data and how it was split. What it
#: segments with (pixel size, post-processing, magnification guess) it takes as a fine-tune
#: takes its parent's (``train.loop.inherited``).
DATA_FIELDS = (
    "data", "pairs", "pair_names", "validation_pairs", "validation_split", "license",
)  # fmt: skip


def average_states(states: list[dict]) -> dict:
    """The mean of state dicts with the same keys and shapes (integer tensors: the last's)."""
    import torch

    keys = set(states[0])
    for s in states[1:]:
        if set(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise ValueError("the models do not have the same tensors: not one architecture")
    out = {}
    for k in states[0]:
        if states[-1][k].is_floating_point():
            out[k] = torch.stack([s[k].double() for s in states]).mean(0).to(states[-1][k].dtype)
        else:
            out[k] = states[-1][k].clone()
    return out


def summary(names: list[str], last_summary: str | None) -> str:
    """The card's summary: what was averaged, then the last ingredient's own summary."""
    text = (
        f"The uniform mean of the weights of {', '.join(names[:-1])} and {names[-1]} (one "
        "lineage, each continued from the one before), made by scripts/average_seg_models.py "
        "with no training of its own."
    )
    return f"{text} The last of them: {last_summary}" if last_summary else text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="shipped names or model folders, oldest first")
    ap.add_argument("--name", required=True, help="the new run's folder name in runs/seg")
    args = ap.parse_args(argv)
    if len(args.models) < 2:
        ap.error("give at least two models")

    from napari_histo.core.seg.registry import read_model, save_model
    from napari_histo.core.seg.train.loop import inherited

    read = [read_model(m) for m in args.models]
    archs = {(arch, repr(sorted(kw.items()))) for arch, kw, *_ in read}
    if len(archs) != 1:
        sys.exit(f"the models are not one architecture: {sorted(archs)}")
    arch, kwargs, _, last_card, _ = read[-1]
    state = average_states([tensors for _, _, tensors, _, _ in read])
    names = [card.get("name") or str(folder) for _, _, _, card, folder in read]
    card = {k: last_card[k] for k in DATA_FIELDS if k in last_card}
    card.update(inherited(last_card, names[-1]))
    card.update(
        summary=summary(names, last_card.get("summary")),
        parent=" + ".join(names),
        parent_command=" | ".join(str(c.get("command", "?")) for _, _, _, c, _ in read),
        ingredients=[
            {
                "name": n,
                "command": c.get("command"),
                "seed": c.get("seed"),
                "minutes": c.get("minutes"),
                "validation_aji": (c.get("validation") or {}).get("aji"),
            }
            for n, (_, _, _, c, _) in zip(names, read, strict=True)
        ],
        command="PYTHONPATH=src python scripts/average_seg_models.py "
        + " ".join(shlex.quote(m) for m in args.models)
        + f" --name {args.name}",
        minutes=0.0,
        notes=[
            f"the uniform mean of {len(names)} models' weights ({', '.join(names)}); no "
            "training of its own (minutes: the averaging)"
        ],
    )
    if "ancestors" in last_card:
        card["ancestors"] = last_card["ancestors"]
    folder = save_model(RUNS / args.name, state, arch, kwargs, card)
    print(f"averaged {', '.join(names)} -> {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
