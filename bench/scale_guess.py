"""Calibrate and score the magnification guess (``core.seg.scale``) of a shipped model.

A tile without a pixel size is segmented once as it is; when its median nucleus is smaller than
the card's ``scale_guess`` area, it is enlarged by sqrt(area / median), at most 2x, and
segmented again. The area is chosen here on training tiles, never on the validation split:

1. a training subset (every 3rd MoNuSeg training tile, every 4th TNBC training tile) and its
   2x-downsampled copies (how a 20x scanner shows the same tissue) are segmented at several
   resample factors (40x: 1, 1.25, 1.5, 2; 20x: 1, 1.5, 2, 2.5), recording AJI and the first
   pass's median nucleus area;
2. the area that gives the best mean AJI over those tiles (AJI interpolated between factors) is
   chosen;
3. the validation split, at 40x and downsampled 2x, is scored through ``segment_array_iter``
   with ``guess_scale=True`` and that area, against the same tiles segmented as they are.

``--write`` records ``{"area_px", "max_factor", "how"}`` as ``scale_guess`` in the shipped
card. The per-factor grid of step 1 is cached in ``--grid`` (a JSON file), so the scoring can
be run again without it.

``--hv-sigma S`` segments with another HoVer-Net derivative width than the card's, so the width
is chosen together with the area, on training tiles too: run steps 1-2 once per width
(``--calibrate-only``, a grid file each) and keep the width with the best mean AJI over both
magnifications. It reaches a card through ``scripts/train_seg_default.py --eval-only --inference``,
which rescores the card with it (so ``--write`` refuses ``--hv-sigma``).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src python bench/scale_guess.py --model hovernet_histo80_v4 \
        --grid bench/results/scale_guess_grid_hovernet_histo80_v4.json --json \
        bench/results/scale_guess_hovernet_histo80_v4.json --write
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
GRID = {"40x": (1.0, 1.25, 1.5, 2.0), "20x": (1.0, 1.5, 2.0, 2.5)}
AREAS = tuple(range(60, 410, 10))
MAX_FACTOR = 2.0


def grid_scores(model, pairs, factors, log=print) -> dict:
    """Per tile: AJI / Dice / PQ and median nucleus area at each resample factor."""
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.metrics import evaluate
    from napari_histo.core.seg.scale import median_area
    from napari_histo.core.seg.workflow import model_mpp, segment_array_iter

    trained = model_mpp(model.card)
    rows = {}
    for name, img, lab in pairs:
        row = {}
        for f in factors:
            mpp = None if f == 1.0 else f * trained
            res = drain(segment_array_iter(img, model, device="cpu", tta=False, mpp=mpp))
            pred = res.labels.astype(np.int32)
            m = evaluate(lab, pred)
            row[f"{f:g}"] = {
                "aji": round(float(m["aji"]), 4),
                "dice": round(float(m["dice"]), 4),
                "pq": round(float(m["pq"]), 4),
                "median_area": median_area(pred)[0],
            }
        rows[name] = row
        log(f"{name}: " + ", ".join(f"x{k} {v['aji']:.3f}" for k, v in row.items()))
    return rows


def rule_factor(area: float, target: float) -> float:
    """The factor ``core.seg.scale.guess_factor`` picks for this median area (1.0 for none)."""
    from napari_histo.core.seg.scale import factor_for_area

    return factor_for_area(area, target, MAX_FACTOR) or 1.0


def interpolated_aji(row: dict, factor: float) -> float:
    xs = sorted(float(k) for k in row)
    return float(np.interp(factor, xs, [row[f"{x:g}"]["aji"] for x in xs]))


def calibrate(grid: dict) -> tuple[int, list[dict]]:
    """The candidate area with the best mean (interpolated) AJI over every tile of ``grid``."""
    table = []
    for target in AREAS:
        per = {
            mag: [
                interpolated_aji(row, rule_factor(row["1"]["median_area"], target))
                for row in grid[mag].values()
            ]
            for mag in grid
        }
        table.append(
            {
                "area_px": target,
                **{f"aji_{mag}": round(float(np.mean(v)), 4) for mag, v in per.items()},
                "aji_all": round(float(np.mean(np.concatenate(list(per.values())))), 4),
            }
        )
    best = max(table, key=lambda r: (r["aji_all"], -r["area_px"]))
    return best["area_px"], table


def score(model, pairs, guess: bool) -> dict:
    """Mean and per-tile metrics, with or without the guess (pixel size unknown)."""
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.metrics import mean_scores, score_images
    from napari_histo.core.seg.workflow import segment_array_iter

    keys = ("aji", "dice", "pq")
    scales = []

    def predict(img):
        res = drain(segment_array_iter(img, model, device="cpu", tta=False, guess_scale=guess))
        scales.append(res.scale)
        return res.labels

    t0 = time.perf_counter()
    full = score_images(pairs, predict, digits=4)
    per = {
        name: {**{k: m[k] for k in keys}, "scale": scale}
        for (name, m), scale in zip(full.items(), scales, strict=True)
    }
    return {
        **mean_scores(per, keys, digits=4),
        "seconds": round(time.perf_counter() - t0, 1),
        "per_image": per,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hovernet_histo80_v4", help="a shipped name or a folder")
    ap.add_argument("--grid", type=Path, default=None, help="the step-1 cache (JSON)")
    ap.add_argument(
        "--area", type=int, default=None,
        help="skip steps 1-2: score this area (a continued model's, inherited from its parent)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--write", action="store_true", help="record the area in the shipped card")
    ap.add_argument(
        "--hv-sigma", type=float, default=None,
        help="HoVer-Net models: segment with this derivative width, not the card's (to choose "
        "it on the training tiles alongside the area: compare the runs' mean AJI)",
    )  # fmt: skip
    ap.add_argument(
        "--calibrate-only", action="store_true",
        help="stop after step 2 (training tiles only; no validation scores)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.write and args.hv_sigma is not None:
        ap.error(
            "--write keeps the card's width: set a new one with train_seg_default.py "
            "--eval-only --inference, which rescores the card, then calibrate without --hv-sigma"
        )

    import torch
    from _split import train_script, training_subset

    from napari_histo.core.atomic import atomic_write_text
    from napari_histo.core.seg.registry import load_model

    torch.set_num_threads(args.threads)
    script = train_script()
    train, val = script.load_split("all80")
    folder = (
        Path(args.model) if Path(args.model).is_dir() else ROOT / "resources" / "seg" / args.model
    )
    model = load_model(folder, "cpu")
    if args.hv_sigma is not None:
        import dataclasses

        from napari_histo.core.seg.registry import with_inference_settings

        spec = with_inference_settings(model.spec, {"hv_sigma": args.hv_sigma})
        model = dataclasses.replace(model, spec=spec, card=dict(model.card))
        print(f"hv_sigma {getattr(model.spec, 'hv_sigma', None)} (the card's is not used)")

    if args.area is not None:
        grid, area, table = None, args.area, []
        how = model.card.get("scale_guess", {}).get("how") or f"given as --area {area}"
        print(f"area {area} px² given, not calibrated here ({how})")
    elif args.grid is None:
        ap.error("give --grid (the calibration cache) or --area")
    elif args.grid.is_file():
        grid = json.loads(args.grid.read_text())
        print(f"grid read from {args.grid}")
    else:
        sub = training_subset(train)
        grid = {
            "40x": grid_scores(model, sub, GRID["40x"]),
            "20x": grid_scores(model, script.rescale_pairs(sub, 0.5), GRID["20x"]),
        }
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.grid, json.dumps(grid, indent=1))
    if grid is not None:
        area, table = calibrate(grid)
        chosen = next(r for r in table if r["area_px"] == area)
        print(
            f"chosen on {len(grid['40x'])} training tiles and their 20x copies: area {area} px² "
            f"(mean AJI 40x {chosen['aji_40x']:.4f}, 20x {chosen['aji_20x']:.4f}, "
            f"both {chosen['aji_all']:.4f})"
        )
        if args.calibrate_only:
            return 0
        how = (
            f"chosen by bench/scale_guess.py on {len(grid['40x'])} training tiles and their "
            "2x-downsampled copies (best mean AJI); never on the validation split"
        )
    model.card["scale_guess"] = {"area_px": area, "max_factor": MAX_FACTOR, "how": how}
    val20 = script.rescale_pairs(val, 0.5)
    out = {"model": args.model, "area_px": area, "calibration": table}
    print("| validation | as it is: AJI / Dice / PQ | guessed: AJI / Dice / PQ | enlarged |")
    print("|---|---|---|---|")
    for mag, pairs in (("40x", val), ("20x", val20)):
        plain, guessed = score(model, pairs, False), score(model, pairs, True)
        out[mag] = {"as_is": plain, "guessed": guessed}
        enlarged = sum("enlarged" in p["scale"] for p in guessed["per_image"].values())
        print(
            f"| {mag} | {plain['aji']:.3f} / {plain['dice']:.3f} / {plain['pq']:.3f} | "
            f"{guessed['aji']:.3f} / {guessed['dice']:.3f} / {guessed['pq']:.3f} | "
            f"{enlarged} of {len(pairs)} |",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(out, indent=1))
    if args.write:
        record(folder, model.card["scale_guess"], out)
    return 0


def record(folder: Path, guess: dict, out: dict) -> None:
    """Put the guess and its validation scores (``out``, as ``--json`` saves it) in the card."""
    from napari_histo.core.weights import read_card, write_card

    card = read_card(folder)
    card["scale_guess"] = guess
    for mag in ("40x", "20x"):
        scores = out[mag]["guessed"]
        card[f"validation_{mag}_size_guessed"] = {
            "aji": scores["aji"],
            "dice": scores["dice"],
            "pq": scores["pq"],
            "per_image": {k: {m: v[m] for m in ("aji", "dice", "pq")}
                          for k, v in scores["per_image"].items()},
        }  # fmt: skip
    write_card(folder, card)
    print(f"scale_guess written to {folder / 'card.json'} (and card.md)")


if __name__ == "__main__":
    sys.exit(main())
