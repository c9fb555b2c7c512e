"""The Jung et al. 2019 preset, taken apart: what DCGMM and multiple inference each add to Mask R-CNN.

Usage::

    nice -n 5 .venv/bin/python bench/jung_ablation.py [--model maskrcnn_jung80] [--crop 384]

Data: the validation split of ``scripts/train_seg_default.py`` (whole slides/patients no model
trained on: six MoNuSeg tiles, TNBC patients 10 and 11), at 40x, the central ``--crop`` square of
each tile (384 px = one Mask R-CNN window: on 2 CPU cores the detector takes seconds per window
and the preset runs it 8 times). Each crop is normalized to the TIAToolbox template with the
shipped DCGMM, as the preset does.

The merge settings of multiple inference (``min_votes`` of 8 variants, the score threshold) and
the single-pass score threshold are chosen on the TUNE half (TNBC patients and the first three
MoNuSeg slides), then every row is reported on the REPORT half (the other three MoNuSeg slides,
which chose nothing) and on the whole split. Detections of the 8 variants are computed once per
crop and condition; the settings only change how they are merged and painted.

Rows: the default model (U-Net) with and without multiple inference; Mask R-CNN on raw and on
DCGMM-normalized crops, each single-pass and with multiple inference (the last is the preset).
Writes bench/results/jung_ablation.json and bench/results/jung_ablation.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "bench" / "results"
TEMPLATE = ROOT / "resources" / "samples" / "he_tiatoolbox_target.png"
KEYS = ("dice", "aji", "f1", "pq")
TUNE_MONUSEG = ("TCGA-NH-A8F7-01A-01-TS1", "TCGA-CH-5767-01Z-00-DX1", "TCGA-50-5931-01Z-00-DX1")
VOTES = (2, 3, 4, 5, 6, 7, 8)
SCORES = (0.3, 0.4, 0.5, 0.6, 0.7)


def _train_script():
    from _split import train_script  # bench/ is on the path when run as a script

    return train_script()


def is_tune(name: str) -> bool:
    return name.startswith("tnbc") or name in TUNE_MONUSEG


def central(a: np.ndarray, side: int) -> np.ndarray:
    h, w = a.shape[:2]
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return np.ascontiguousarray(a[y : y + side, x : x + side])


def variant_detections(model, rgb: np.ndarray):
    """The detector's instances on each of the 8 flips/rotations of ``rgb``, turned back."""
    import copy

    import torch

    from napari_histo.core.seg.inference import tta_transforms
    from napari_histo.core.seg.instances import Detections, invert_detections
    from napari_histo.core.seg.spec import to_input

    spec, m = copy.copy(model.spec), int(model.spec.size_multiple)
    spec.score_threshold = min(SCORES)  # keep every detection the settings grid may use
    out = []
    for k, flip in tta_transforms(True):
        x = rgb[:, ::-1] if flip else rgb
        x = np.ascontiguousarray(np.rot90(x, k))
        h, w = x.shape[:2]
        padded = np.pad(x, ((0, -h % m), (0, -w % m), (0, 0)), mode="reflect")
        with torch.inference_mode():
            det = spec.detect(model.net, to_input(padded[None], model.device))[0]
        out.append(invert_detections(Detections(det.masks[:, :h, :w], det.scores), k, flip))
    return out


def labels_from(variants, tta: bool, votes: int, score: float, iou: float = 0.5):
    from napari_histo.core.seg.instances import merge_variants, paint_by_score

    det = merge_variants(variants, iou, votes, score_threshold=score) if tta else variants[0]
    return paint_by_score(det, score, 0.5)[0]


def mean(rows: list[dict]) -> dict:
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in KEYS} if rows else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="maskrcnn_jung80", help="a Mask R-CNN (name or folder)")
    ap.add_argument("--default", default="default", help="the model the preset is compared with")
    ap.add_argument("--crop", type=int, default=384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=RESULTS / "jung_ablation.json")
    args = ap.parse_args(argv)

    import torch

    from napari_histo.core.io import read_image
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.inference import segment_iter
    from napari_histo.core.seg.metrics import evaluate
    from napari_histo.core.seg.registry import load_model
    from napari_histo.core.stain.workflow import make_normalizer

    torch.set_num_threads(args.threads)
    _, val = _train_script().load_split("all80")
    crops = [(n, central(img, args.crop), central(lab, args.crop)) for n, img, lab in val]
    norm = drain(make_normalizer("dcgmm", [read_image(TEMPLATE)], device="cpu"))
    rcnn = load_model(args.model, "cpu")
    unet = load_model(args.default, "cpu")

    # Per crop: scores of every (condition, tta, votes, score) and the default model's rows.
    per: dict[str, dict] = {}
    seconds: dict[str, list[float]] = {}
    for name, img, lab in crops:
        t0 = time.perf_counter()
        normed = norm.transform(img)
        t_norm = time.perf_counter() - t0
        per[name] = {}
        for tta in (False, True):
            t = time.perf_counter()
            pred = drain(segment_iter(img, unet, tta=tta)).labels
            seconds.setdefault(f"default tta={tta}", []).append(time.perf_counter() - t)
            per[name][("default", tta)] = evaluate(lab, pred)
        for cond, x in (("raw", img), ("dcgmm", normed)):
            t = time.perf_counter()
            variants = variant_detections(rcnn, x)
            dt = time.perf_counter() - t + (t_norm if cond == "dcgmm" else 0.0)
            seconds.setdefault(f"rcnn {cond} tta=True", []).append(dt)
            seconds.setdefault(f"rcnn {cond} tta=False", []).append(dt / 8)
            for score in SCORES:
                per[name][(cond, False, 0, score)] = evaluate(
                    lab, labels_from(variants, False, 0, score)
                )
                for votes in VOTES:
                    pred = labels_from(variants, True, votes, score)
                    per[name][(cond, True, votes, score)] = evaluate(lab, pred)
            del variants
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)

    tune = [n for n in per if is_tune(n)]
    report = [n for n in per if not is_tune(n)]

    def aji_on(names, key):
        return float(np.mean([per[n][key]["aji"] for n in names]))

    chosen = {}
    for cond in ("raw", "dcgmm"):
        single = max(SCORES, key=lambda s: aji_on(tune, (cond, False, 0, s)))
        multi = max(
            itertools.product(VOTES, SCORES), key=lambda vs: aji_on(tune, (cond, True, *vs))
        )
        chosen[cond] = {"single_score": single, "tta_votes": multi[0], "tta_score": multi[1]}

    rows = []
    for label, key, sec in (
        ("default model (U-Net), single pass", lambda n: ("default", False), "default tta=False"),
        ("default model (U-Net), multiple inference (8, averaged maps)", lambda n: ("default", True), "default tta=True"),
        ("Mask R-CNN on raw tiles, single pass", lambda n: ("raw", False, 0, chosen["raw"]["single_score"]), "rcnn raw tta=False"),
        ("Mask R-CNN on raw tiles, multiple inference (no DCGMM)", lambda n: ("raw", True, chosen["raw"]["tta_votes"], chosen["raw"]["tta_score"]), "rcnn raw tta=True"),
        ("DCGMM + Mask R-CNN, single pass (no multiple inference)", lambda n: ("dcgmm", False, 0, chosen["dcgmm"]["single_score"]), "rcnn dcgmm tta=False"),
        ("**Jung et al. 2019 preset**: DCGMM + Mask R-CNN + multiple inference", lambda n: ("dcgmm", True, chosen["dcgmm"]["tta_votes"], chosen["dcgmm"]["tta_score"]), "rcnn dcgmm tta=True"),
    ):  # fmt: skip
        rows.append(
            {
                "method": label,
                "report_half": mean([per[n][key(n)] for n in report]),
                "all": mean([per[n][key(n)] for n in per]),
                "s_per_crop": round(float(np.mean(seconds[sec])), 2),
            }
        )
    out = {
        "model": str(rcnn.path),
        "default": str(unet.path),
        "crop": args.crop,
        "tune": tune,
        "report": report,
        "chosen_on_tune": chosen,
        "rows": rows,
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "load_average": round(os.getloadavg()[0], 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    md = [
        "# Jung et al. 2019 preset: ablation on the validation split",
        "",
        f"`bench/jung_ablation.py`, one run: Mask R-CNN `{rcnn.name}`, default `{unet.name}`, "
        f"central {args.crop} px crop of each held-out tile (40x), CPU ({args.threads} threads, "
        f"load average {out['load_average']}). Merge settings chosen on the tune half "
        f"({len(tune)} crops: {', '.join(tune)}): {json.dumps(chosen)}. "
        f"Report half: {', '.join(report)} (chose nothing).",
        "",
        "| method | Dice | AJI | F1 | PQ | AJI (all crops) | s per crop |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["report_half"]
        md.append(
            f"| {r['method']} | {m['dice']:.3f} | {m['aji']:.3f} | {m['f1']:.3f} | {m['pq']:.3f} "
            f"| {r['all']['aji']:.3f} | {r['s_per_crop']:.1f} |"
        )
    (RESULTS / "jung_ablation.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
