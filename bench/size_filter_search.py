"""The debris filter of a HoVer-Net model: fraction of the median object x its upper clip.

``remove_small`` drops objects under ``relative_min_size`` x the image's median object, the
threshold clipped to 10-60 px (the cap is the spec's ``relative_cap``). At 40x the median
nucleus is about 300 px², so the clip (60 px), not the fraction, decides. This scores
fractions 0.3/0.4/0.5 x clips 60/80/100/130 px on ``scale_guess.py``'s training subset and on
the validation split (each with 2x-downsampled copies), the maps computed once per tile
(default tiling, no multiple inference).

``--nested`` also decides the setting by leave-one-group-out cross-validation on the validation
split (the split's own unit: a MoNuSeg slide or a TNBC patient): each fold picks a setting by
:func:`choose` on the other groups and scores the held-out group with it, so the reported means
are of tiles that chose nothing.

::

    PYTHONPATH=src python bench/size_filter_search.py [--model default] [--nested] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

FRACTIONS = (0.3, 0.4, 0.5)
CLIPS = (60, 80, 100, 130)
# choose(): a setting may lose this much mean 40x AJI (and 20x AJI as is) against the shipped one.
AJI_SLACK_40X = 0.002
AJI_SLACK_20X = 0.005


def group_of(name: str) -> str:
    """The validation unit a tile belongs to: its TNBC patient or its MoNuSeg slide."""
    base = name.split("@")[0]
    return "_".join(base.split("_")[:2]) if base.startswith("tnbc_") else base


def _means(per_tile: dict, names: list[str]) -> dict:
    from postprocess_search import magnification_means

    return magnification_means({n: per_tile[n] for n in names})


def choose(scores: dict, names: list[str], shipped: tuple) -> tuple:
    """The setting with the best mean 40x PQ over ``names`` among those whose mean 40x AJI is
    within ``AJI_SLACK_40X`` of the shipped setting's and whose 20x AJI (as is) is at most
    ``AJI_SLACK_20X`` lower. ``scores`` maps a setting to its per-tile metrics."""
    means = {s: _means(per, names) for s, per in scores.items()}
    base = means[shipped]
    ok = [
        s
        for s, m in means.items()
        if m["aji"] >= base["aji"] - AJI_SLACK_40X
        and m["aji_20x"] >= base["aji_20x"] - AJI_SLACK_20X
    ]
    return max(ok, key=lambda s: (means[s]["pq"], s == shipped))


def nested(scores: dict, names: list[str], shipped: tuple) -> dict:
    """Leave-one-group-out: each group's tiles scored with the setting :func:`choose` picks on
    the other groups; the means of those held-out scores, and each fold's pick."""
    held: dict = {}
    picks = {}
    for g in sorted({group_of(n) for n in names}):
        inside = [n for n in names if group_of(n) == g]
        pick = choose(scores, [n for n in names if group_of(n) != g], shipped)
        picks[g] = list(pick)
        held.update({n: scores[pick][n] for n in inside})
    return {
        "cross_validated": {k: round(v, 4) for k, v in _means(held, names).items()},
        "picks": picks,
        "all_groups_pick": list(choose(scores, names, shipped)),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--nested",
        action="store_true",
        help="validation split only, with per-tile scores and the leave-one-group-out choice",
    )
    p.add_argument("--json", type=Path, default=ROOT / "bench/results/size_filter_search.json")
    args = p.parse_args(argv)
    import torch
    from _split import split_with_20x, training_subset_with_20x
    from postprocess_search import maps_of

    from napari_histo.core.seg.metrics import evaluate
    from napari_histo.core.seg.postprocess import RELATIVE_RANGE, remove_small
    from napari_histo.core.seg.registry import load_model, with_inference_settings

    torch.set_num_threads(args.threads)
    train, val = split_with_20x()
    model = load_model(args.model, "cpu")
    sp = model.spec
    # The shipped post-processing without its relative filter, which is applied per setting below.
    no_relative = with_inference_settings(sp, {"relative_min_size": None})
    t0 = time.time()
    doc: dict = {
        "command": "OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src python bench/size_filter_search.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "model": model.name,
        "shipped": {"relative": sp.relative_min_size, "clip": sp.relative_cap},
    }
    sets = [("validation", val)]
    if not args.nested:
        sets.insert(0, ("training", training_subset_with_20x(train)))
    shipped_setting = (sp.relative_min_size, sp.relative_cap)
    for tag, pairs in sets:
        maps = maps_of(model, pairs)
        unfiltered = {name: no_relative.instances(m)[0] for name, m, _, _ in maps}
        rows = []
        scores = {}
        for frac, clip in itertools.product(FRACTIONS, CLIPS):
            per = {}
            for name, _, truth, shipped in maps:
                labels = remove_small(
                    unfiltered[name], sp.min_size, frac, (RELATIVE_RANGE[0], clip)
                )
                if (frac, clip) == shipped_setting:  # the shipped path
                    assert np.array_equal(labels, shipped), name
                per[name] = {k: float(v) for k, v in evaluate(truth, labels).items()}
            scores[(frac, clip)] = per
            row = {"relative": frac, "clip": clip}
            row.update({k: round(v, 4) for k, v in _means(per, list(per)).items()})
            rows.append(row)
            print(tag, row, flush=True)
        doc[tag] = rows
        if args.nested:
            names = [name for name, *_ in maps]
            doc["per_tile"] = {f"{f} {c}": per for (f, c), per in scores.items()}
            doc["nested"] = nested(scores, names, shipped_setting)
            print("nested", doc["nested"], flush=True)
    doc["seconds"] = round(time.time() - t0)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
