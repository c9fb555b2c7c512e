"""Accuracy and CPU speed of every shipped segmentation model on the validation split, beside a classical baseline.

Usage::

    nice -n 5 .venv/bin/python bench/seg_accuracy.py [--tta] [--json OUT]

The validation split is that of ``scripts/train_seg_default.py`` (whole slides/patients held out:
six MoNuSeg tiles of 1000 x 1000 px from organs rare or absent in training and frozen sections,
and all tiles of TNBC patients 10 and 11), scored at 40x and downsampled 2x as a 20x scanner
shows the same tissue. One table, one run: mean and per source, with and without multiple
inference (``--tta``), plus Mpx/s on this CPU. The baseline is the classical pipeline: haematoxylin channel by colour deconvolution (scikit-image
``rgb2hed``), Otsu threshold, small-object removal, then a distance-transform watershed to split
touching nuclei. Writes ``bench/results/seg_accuracy.json`` and regenerates ``bench/results/seg.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KEYS = ("dice", "aji", "f1", "pq", "dq", "sq")


def classical_baseline(
    rgb: np.ndarray, min_size: int = 30, min_distance: int = 6, smooth: float = 2.0
) -> np.ndarray:
    """Haematoxylin (rgb2hed) Otsu threshold + distance-transform watershed instances.

    ``min_distance`` and ``smooth`` were picked on four training tiles (not the held-out ones)
    by ``--tune-baseline``.
    """
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects
    from skimage.segmentation import watershed

    h = gaussian(rgb2hed(rgb)[..., 0], sigma=1.0)
    mask = h > threshold_otsu(h)
    mask = remove_small_holes(remove_small_objects(mask, max_size=min_size - 1), max_size=63)
    dist = gaussian(ndi.distance_transform_edt(mask), sigma=smooth)
    peaks = peak_local_max(
        dist, min_distance=min_distance, labels=ndi.label(mask)[0], exclude_border=False
    )
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=mask)
    return remove_small_objects(labels, max_size=min_size - 1).astype(np.uint32)


def tune_baseline(train) -> dict:
    """Grid-search the baseline's ``min_distance`` and ``smooth`` on training tiles (mean AJI)."""
    import itertools

    from napari_histo.core.seg.metrics import aggregated_jaccard_index

    best = (-1.0, {})
    for md, sm in itertools.product((4, 6, 8, 10), (1.0, 2.0, 3.0)):
        aji = float(
            np.mean(
                [
                    aggregated_jaccard_index(
                        lab, classical_baseline(img, min_distance=md, smooth=sm)
                    )
                    for _, img, lab in train
                ]
            )
        )
        print(f"baseline min_distance={md} smooth={sm}: AJI {aji:.3f}", flush=True)
        best = max(best, (aji, {"min_distance": md, "smooth": sm}), key=lambda b: b[0])
    return best[1]


def source(name: str) -> str:
    """Which source a validation image comes from (the table's columns)."""
    if name.endswith("@0.5x"):
        return "20x (2x down)"
    return "TNBC 40x" if name.startswith("tnbc") else "MoNuSeg 40x"


def score(method, val) -> dict:
    from napari_histo.core.seg.metrics import mean_scores, score_images

    seconds, pixels = 0.0, sum(lab.size for _, _, lab in val)

    def timed(img):
        nonlocal seconds
        t0 = time.perf_counter()
        pred = method(img)
        seconds += time.perf_counter() - t0
        return pred

    per = score_images(val, timed, digits=4)
    at40 = {n: m for n, m in per.items() if source(n) != "20x (2x down)"}
    mean = mean_scores(at40, KEYS, digits=4)
    by_source = {}
    for src in sorted({source(n) for n in per}):
        by_source[src] = mean_scores({n: m for n, m in per.items() if source(n) == src}, KEYS, 4)
    return {
        **mean,
        "seconds": round(seconds, 2),
        "mpx_s": round(pixels / 1e6 / max(seconds, 1e-9), 3),
        "by_source": by_source,
        "per_image": per,
    }


def model_method(ref: str, tta: bool, guess: bool = False):
    """The model as ``segment`` runs it on a tile without a pixel size: as it is, or (``guess``)
    with the magnification guessed from the nuclei (``core.seg.scale``, the CLI's default)."""
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.inference import segment_iter
    from napari_histo.core.seg.registry import load_model
    from napari_histo.core.seg.workflow import segment_array_iter

    model = load_model(ref, "cpu")
    if guess:
        return lambda img: (
            drain(segment_array_iter(img, model, "cpu", tta=tta, guess_scale=True)).labels
        )
    return lambda img: drain(segment_iter(img, model, tta=tta)).labels


def mark_default(row: str, name: str | None) -> str:
    """``row`` with " (default)" after the model name if that model is ``name``, the registry's
    default now: the JSON keys rows by model name, so a change of default needs no renaming."""
    if name and (row == name or row.startswith((f"{name},", f"{name} +"))):
        return f"{name} (default){row[len(name) :]}"
    return row


#: Above this line seg.md is composed from the JSON results; below it are hand-written notes,
#: which a new run keeps.
NOTES_MARKER = (
    "<!-- Above: written by bench/seg_accuracy.py and bench/seg_speed.py from their JSON. "
    "Below: notes, kept when they run again. -->"
)


def write_report() -> Path:
    """Compose ``bench/results/seg.md`` from the JSON results that exist.

    The notes under :data:`NOTES_MARKER` in the current file are kept.
    """
    acc_path, speed_path = RESULTS / "seg_accuracy.json", RESULTS / "seg_speed.json"
    lines = ["# Nuclei segmentation: accuracy and speed", ""]
    if acc_path.is_file():
        from napari_histo.core.seg.registry import default_model_name

        acc, default = json.loads(acc_path.read_text()), default_model_name()
        lines += [
            "## Accuracy on the validation split",
            "",
            "```",
            acc["command"],
            "```",
            "",
            f"Validation split of `scripts/train_seg_default.py` ({len(acc['tiles'])} images; none "
            "was trained on): MoNuSeg tiles from organs rare or absent in training and frozen "
            "sections, and two whole TNBC patients, each also downsampled 2x as a 20x scan. "
            f"Machine: {acc['machine']}. Metrics: pixel Dice, AJI, object F1 (IoU > 0.5), "
            "PQ = DQ x SQ; 'mean' is over the 40x images; Mpx/s over the whole run.",
            "",
        ]
        for m in acc.get("merged", []):
            lines += [
                f"Rows {', '.join(m['rows'])} were added later by `{m['command']}` "
                f"({m['machine']}).",
                "",
            ]
        for note in acc.get("notes", []):
            lines += [f"Note: {note}.", ""]
        lines += [
            "| method | Dice | AJI | F1 | PQ | AJI MoNuSeg 40x | AJI TNBC 40x | AJI 20x | Mpx/s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in acc["methods"].items():
            src = r.get("by_source", {})
            lines.append(
                f"| {mark_default(name, default)} | "
                + " | ".join(f"{r[k]:.3f}" for k in ("dice", "aji", "f1", "pq"))
                + " | "
                + " | ".join(
                    f"{src[s]['aji']:.3f}" if s in src else "-"
                    for s in ("MoNuSeg 40x", "TNBC 40x", "20x (2x down)")
                )
                + f" | {r.get('mpx_s', 0):.3f} |"
            )
        lines += ["", "Per tile (AJI / PQ / predicted vs true nuclei):", ""]
        for name, r in acc["methods"].items():
            cells = [
                f"{t}: {m['aji']:.3f} / {m['pq']:.3f} / {m['n_pred']} vs {m['n_true']}"
                for t, m in r["per_image"].items()
            ]
            lines.append(f"- {mark_default(name, default)}: " + "; ".join(cells))
        lines += [
            "",
            acc.get("reading", ""),
            "",
        ]
    if speed_path.is_file():
        sp = json.loads(speed_path.read_text())
        lines += [
            "## Speed",
            "",
            "```",
            sp["command"],
            "```",
            "",
            f"{sp['size']} x {sp['size']} px H&E (MoNuSeg tile), best of {sp['repeats']} after a warm-up; "
            f"'pipeline' = `segment_iter` (tiling, blending, post-processing to instances), "
            f"'maps' = the network's tiled prediction only. Machine: {sp['machine']}.",
            "",
            "| architecture | params | device | threads | TTA | tile | pipeline Mpx/s | maps Mpx/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in sp["rows"]:
            maps = r.get("maps_mpx_s")
            lines.append(
                f"| {r['arch']} | {r['params'] / 1e6:.2f} M | {r['device']} | {r['threads']} | "
                f"{r['tta']} | {r['tile']} | {r['pipeline_mpx_s']:.3f} | "
                f"{'-' if maps is None else f'{maps:.3f}'} |"
            )
        for note in sp.get("notes", []):
            lines += ["", note]
        lines += [
            "",
            "Timings on this shared machine vary by a factor of 2-3 with the other jobs' load "
            "(under load the same U-Net measured 0.66 and 0.26 Mpx/s minutes apart). "
            "TTA x8 costs about 8x the network time. FullNet (full resolution, dilated dense blocks) "
            "and Mask R-CNN (ResNet-18 FPN) are far slower on a CPU than the U-Net and HoVer-Net.",
        ]
        lines.append("")
    from napari_histo.core.atomic import atomic_write_text

    out = RESULTS / "seg.md"
    notes = ""
    if out.is_file():
        old = out.read_text()
        if NOTES_MARKER in old:
            notes = old.split(NOTES_MARKER, 1)[1]
        elif old.strip():
            raise SystemExit(f"{out} has no notes marker: add it above the notes to keep them")
    lines.append(NOTES_MARKER)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(lines) + notes)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tta", action="store_true", help="also score the models with 8-fold TTA")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--tune-baseline",
        action="store_true",
        help="only grid-search the baseline on 4 training tiles",
    )
    p.add_argument(
        "--no-tta-arch", nargs="*", default=["maskrcnn"],
        help="architectures scored without TTA (Mask R-CNN's multiple inference runs the "
        "detector 8 times: see bench/jung_ablation.py)",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=RESULTS / "seg_accuracy.json")
    p.add_argument(
        "--only", nargs="*", default=None,
        help="score only the methods whose row name contains one of these strings",
    )  # fmt: skip
    p.add_argument(
        "--merge", action="store_true",
        help="keep the other rows of --json (with --only: add or rescore some rows)",
    )  # fmt: skip
    args = p.parse_args(argv)
    import torch
    from _split import split_with_20x  # bench/ is on the path when run as a script

    from napari_histo.core.seg.registry import list_models

    torch.set_num_threads(args.threads)
    train, val = split_with_20x()
    if args.tune_baseline:
        print(tune_baseline(train[::3]))
        return 0
    methods = {"classical (rgb2hed + Otsu + watershed)": classical_baseline}
    for info in list_models(shipped_only=True):
        label = info.name  # the current default is marked when the table is written
        methods[label] = model_method(info.ref, False)
        if info.card.get("scale_guess"):
            methods[f"{label}, pixel size guessed"] = model_method(info.ref, False, guess=True)
        if args.tta and info.arch not in args.no_tta_arch:
            methods[f"{label} + TTA x8"] = model_method(info.ref, True)
    order = list(methods)
    if args.only:
        methods = {k: v for k, v in methods.items() if any(o in k for o in args.only)}
    results = {}
    old = json.loads(args.json.read_text()) if args.merge and args.json.is_file() else None
    if old:  # the other methods' rows, from the last full run
        results = dict(old["methods"])
    load0 = os.getloadavg()[0]
    for name, fn in methods.items():
        results[name] = score(fn, val)
        print(name, {k: results[name][k] for k in (*KEYS, "seconds")}, flush=True)
    cmd = "OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src nice -n 5 .venv/bin/python bench/seg_accuracy.py"
    cmd += " --tta" if args.tta else ""
    if args.tta:
        cmd += " --no-tta-arch " + " ".join(args.no_tta_arch)
    if args.only:
        cmd += " --only " + " ".join(f"'{o}'" for o in args.only)
    machine = (
        f"{platform.machine()} CPU, {args.threads} threads, torch {torch.__version__}, "
        f"load average {load0:.1f} at the start and {os.getloadavg()[0]:.1f} at the end"
    )
    if old:  # a new row goes after the row it is a variant of (its name's longest prefix)
        keys = list(old["methods"])
        for k in methods:
            if k not in keys:
                base = max((b for b in keys if k.startswith(b)), key=len, default=keys[-1])
                keys.insert(keys.index(base) + 1, k)
        results = {k: results[k] for k in keys}
    else:
        results = {k: results[k] for k in order}
    if old:
        merged = [*old.get("merged", []), {"command": cmd + " --merge", "rows": list(methods),
                                          "machine": machine}]  # fmt: skip
        doc = {**old, "methods": results, "merged": merged}
    else:
        doc = {"command": cmd, "tiles": [n for n, _, _ in val], "machine": machine}
        doc["methods"] = results
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(write_report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
