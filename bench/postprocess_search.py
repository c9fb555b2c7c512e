"""Post-processing settings of a U-Net or HoVer-Net model, scored on the validation split
(or, with ``--on training``, on training tiles, where a setting may be chosen).

The network's maps are computed once per tile (default tiling, no multiple inference); every
setting is then scored on them (mean AJI and PQ over the 40x tiles; the 20x copies are the
check that a setting does not trade one magnification for the other).

- A ternary model (U-Net): every combination of ``min_size``, ``seed_threshold`` and ``grow`` of
  :func:`napari_histo.core.seg.postprocess.instances_from_ternary`, then objects under a
  fraction of the median object (``relative_min_size``).
- HoVer-Net: every combination of the foreground threshold, the marker threshold and the width
  of the derivative filters of :func:`~napari_histo.core.seg.postprocess.instances_from_hover`
  (``fg_threshold``, ``marker_threshold``, ``hv_sigma``), sizes as shipped.

::

    PYTHONPATH=src python bench/postprocess_search.py [--model default] [--quick] [--json OUT]

A setting worth shipping goes into the model card's ``inference`` section, which
:func:`~napari_histo.core.seg.registry.load_model` applies.
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

MIN_SIZES = (10, 20, 30, 45, 60)
SEED_THRESHOLDS = (None, 0.2, 0.3, 0.4, 0.5, 0.6)
GROWS = ("half", 1, 2, 3)
#: Then objects under a fraction of the median object (after a 10 px floor), seeds and growth
#: as shipped.
RELATIVE = (0.15, 0.2, 0.25, 0.3, 0.35)
#: HoVer-Net's grid.
FG_THRESHOLDS = (0.4, 0.5, 0.6)
MARKER_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
HV_SIGMAS = (1.0, 2.0, 3.0)


def maps_of(model, pairs) -> list[tuple[str, dict, np.ndarray, np.ndarray]]:
    """(name, maps, truth, shipped labels) per pair, from the model's own inference path (the
    labels check that the search reproduces it)."""
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.inference import segment_iter

    out = []
    for name, img, lab in pairs:
        res = drain(segment_iter(img, model, tta=False))
        maps = {k: np.asarray(v, np.float32) for k, v in res.maps.items()}
        out.append((name, maps, lab, res.labels))
    return out


def instances(maps: dict, settings: dict) -> np.ndarray:
    """Labels from one tile's maps with these settings (the spec attributes' names)."""
    from napari_histo.core.seg.postprocess import instances_from_hover, instances_from_ternary

    if "hv" in maps:
        return instances_from_hover(
            maps["np"],
            maps["hv"],
            threshold=settings["fg_threshold"],
            min_size=settings["min_size"],
            marker_threshold=settings["marker_threshold"],
            sigma=settings["hv_sigma"],
            relative_min_size=settings["relative_min_size"],
        )[0]
    return instances_from_ternary(maps["ternary"], **settings)[0]


def score(maps, settings: dict) -> dict:
    from napari_histo.core.seg.metrics import evaluate

    per = {}
    for name, tile_maps, truth, _ in maps:
        labels = instances(tile_maps, settings)
        per[name] = {
            **evaluate(truth, labels),
            "n_pred": int(labels.max()),  # numbered 1..N
            "n_true": len(np.unique(truth)) - 1,
        }
    at40 = [m for n, m in per.items() if "@" not in n]
    mean = magnification_means(per)
    mean["n_pred_over_true"] = float(
        sum(m["n_pred"] for m in at40) / max(1, sum(m["n_true"] for m in at40))
    )
    return mean


def magnification_means(per: dict) -> dict:
    """Means of per-tile metrics: AJI / Dice / PQ / F1 over the 40x tiles, AJI / PQ over the
    2x-downsampled copies (``name@0.5x``; NaN when there are none)."""
    at40 = [m for n, m in per.items() if "@" not in n]
    at20 = [m for n, m in per.items() if "@" in n]
    mean = {k: float(np.mean([m[k] for m in at40])) for k in ("aji", "dice", "pq", "f1")}
    mean["aji_20x"] = float(np.mean([m["aji"] for m in at20])) if at20 else float("nan")
    mean["pq_20x"] = float(np.mean([m["pq"] for m in at20])) if at20 else float("nan")
    return mean


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--quick",
        action="store_true",
        help="U-Net: only vary the sizes (10 settings); HoVer-Net: the marker threshold (4)",
    )
    p.add_argument(
        "--on", choices=("validation", "training"), default="validation",
        help="the tiles: the validation split, or scale_guess.py's training subset (19 tiles; "
        "settings chosen there are not chosen on the figures the cards report); each with its "
        "2x-downsampled copies",
    )  # fmt: skip
    p.add_argument(
        "--hv-sigmas", type=float, nargs="+", default=HV_SIGMAS, metavar="S",
        help="HoVer-Net derivative widths to try",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=ROOT / "bench/results/postprocess_search.json")
    args = p.parse_args(argv)
    import torch
    from _split import split_with_20x, train_script, training_subset_with_20x

    from napari_histo.core.seg.registry import load_model

    torch.set_num_threads(args.threads)
    if args.on == "training":  # the validation tiles are neither scored nor resampled
        val = training_subset_with_20x(train_script().load_split("all80")[0])
    else:
        _, val = split_with_20x()
    model = load_model(args.model, "cpu")
    spec = model.spec
    hover = model.arch == "hovernet"
    keys = ("fg_threshold", "marker_threshold", "hv_sigma") if hover else ("seed_threshold", "grow")
    current = {k: getattr(spec, k) for k in ("min_size", *keys)}
    current["relative_min_size"] = getattr(spec, "relative_min_size", None)
    t0 = time.time()
    maps = maps_of(model, val)
    print(f"maps of {len(maps)} tiles in {time.time() - t0:.0f} s", flush=True)
    # The search reproduces the shipped path exactly at the current settings.
    name, tile_maps, _, labels = maps[0]
    assert np.array_equal(instances(tile_maps, current), labels), name
    if hover:
        grid = [
            {**current, "fg_threshold": f, "marker_threshold": m, "hv_sigma": s}
            for f, m, s in itertools.product(FG_THRESHOLDS, MARKER_THRESHOLDS, args.hv_sigmas)
        ]
        if args.quick:  # the marker threshold alone
            grid = [g for g in grid if (g["fg_threshold"], g["hv_sigma"]) == (0.5, 2.0)]
    else:
        grid = [
            {"min_size": m, "seed_threshold": t, "grow": g, "relative_min_size": None}
            for m, t, g in itertools.product(MIN_SIZES, SEED_THRESHOLDS, GROWS)
        ] + [
            {"min_size": 10, "seed_threshold": 0.4, "grow": "half", "relative_min_size": r}
            for r in RELATIVE
        ]
        if args.quick:  # the fixed sizes at the shipped seeds and growth, and the relative ones
            grid = [g for g in grid if g["seed_threshold"] == 0.4 and g["grow"] == "half"]
    rows = []
    for settings in grid:
        rows.append({**settings, **score(maps, settings)})
        print(rows[-1], flush=True)
    best = max(rows, key=lambda r: r["aji"])
    now = next(r for r in rows if all(r[k] == v for k, v in current.items()))
    doc = {
        "command": "OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src python bench/postprocess_search.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "model": str(model.folder) if hasattr(model, "folder") else args.model,
        "tiles": [n for n, *_ in maps],
        "scored_on": args.on,
        "current": now,
        # The best 40x AJI of the tiles scored (``best_by_val_aji_40x`` in files written before
        # --on training existed, when they were always the validation split's).
        "best_by_aji_40x": best,
        "rows": rows,
        "seconds": round(time.time() - t0),
    }
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print("current", now)
    print("best", best)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
