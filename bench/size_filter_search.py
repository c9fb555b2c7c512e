"""The debris filter of a HoVer-Net model: fraction of the median object x its upper clip.

``remove_small`` drops objects under ``relative_min_size`` x the image's median object, the
threshold clipped to 10-60 px (the cap is the spec's ``relative_cap``). At 40x the median
nucleus is about 300 px², so the clip (60 px), not the fraction, decides. This scores
fractions 0.3/0.4/0.5 x clips 60/80/100/130 px on ``scale_guess.py``'s training subset and on
the validation split (each with 2x-downsampled copies), the maps computed once per tile
(default tiling, no multiple inference).

::

    PYTHONPATH=src python bench/size_filter_search.py [--model default] [--json OUT]
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--threads", type=int, default=2)
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
    for tag, pairs in (
        ("training", training_subset_with_20x(train)),
        ("validation", val),
    ):
        maps = maps_of(model, pairs)
        unfiltered = {name: no_relative.instances(m)[0] for name, m, _, _ in maps}
        rows = []
        for frac, clip in itertools.product(FRACTIONS, CLIPS):
            per = {}
            for name, _, truth, shipped in maps:
                labels = remove_small(
                    unfiltered[name], sp.min_size, frac, (RELATIVE_RANGE[0], clip)
                )
                if (frac, clip) == (sp.relative_min_size, sp.relative_cap):  # the shipped path
                    assert np.array_equal(labels, shipped), name
                per[name] = evaluate(truth, labels)
            at40 = [v for n, v in per.items() if "@" not in n]
            at20 = [v for n, v in per.items() if "@" in n]
            row = {"relative": frac, "clip": clip}
            row.update(
                {
                    k: round(float(np.mean([v[k] for v in at40])), 4)
                    for k in ("aji", "dice", "pq", "f1")
                }
            )
            row["aji_20x"] = round(float(np.mean([v["aji"] for v in at20])), 4)
            row["pq_20x"] = round(float(np.mean([v["pq"] for v in at20])), 4)
            rows.append(row)
            print(tag, row, flush=True)
        doc[tag] = rows
    doc["seconds"] = round(time.time() - t0)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
