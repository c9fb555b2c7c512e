"""DCGMM candidates vs the classical normalizers on held-out slides: stain constancy and class maps.

Usage::

    nice -n 5 .venv/bin/python bench/dcgmm_split.py [--candidates runs/stain/*] [--json OUT]
    # the 8 variants of scripts/fit_dcgmm_variants_gpu.sh (classes x scale x loss), in one run:
    nice -n 5 .venv/bin/python bench/dcgmm_split.py --pattern 'dcgmm_all80_k*_s*_*'

Every tile of ../shared/data (MoNuSeg 2018, 30 tiles; TNBC, 50 tiles) is normalized to the
TIAToolbox target by each method; the normalized median intensity (NMI) of each tile's nuclei
pixels (its hand-drawn mask) is computed, and the coefficient of variation of NMI over tiles
(CV, lower = more constant) is reported:

* on the **validation split** of ``scripts/train_seg_default.py`` (whole slides/patients that no
  candidate was fitted on) - the figure the shipped DCGMM is chosen by;
* per organ over all tiles (organs with at least 3 tiles; most of these tiles were fitting data).

Class maps: for each DCGMM candidate and organ, the share of the "nuclei" class that lies in
hand-drawn nuclei (precision) and the share of nuclei pixels it covers (recall), and the mean
optical density of the "background" class: each class should mean what its name says.
Each candidate's training settings (classes, scale, loss, steps done, seconds, device) are read
from its card and tabled beside its validation CV, so a grid of variants compares in one table.
Writes bench/results/dcgmm_split.json and bench/results/dcgmm_split.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TARGET = DATA / "stain" / "tiatoolbox_target" / "target_image.png"
RESULTS = ROOT / "bench" / "results"


def _seg_split():
    from _split import train_script  # bench/ is on the path when run as a script

    return train_script()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", nargs="*", default=None, help="DCGMM model folders")
    ap.add_argument(
        "--runs", type=Path, default=ROOT / "runs" / "stain", help="where --pattern looks"
    )
    ap.add_argument(
        "--pattern", default="dcgmm_*", help="model folders in --runs (without --candidates)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=RESULTS / "dcgmm_split.json")
    args = ap.parse_args(argv)
    if not TARGET.is_file():
        sys.exit(f"benchmark data not found: {DATA} (needs ../shared/data beside the repository)")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from napari_histo.core.io import read_image
    from napari_histo.core.stain import get_normalizer, load_normalizer
    from napari_histo.core.stain.consistency import coefficient_of_variation, nmi

    torch.set_num_threads(args.threads)
    seg = _seg_split()
    train, val = seg.load_split("all80")
    tiles = [(n, img, lab, seg._held_out(n)) for n, img, lab in [*train, *val]]
    template = read_image(TARGET)
    cands = args.candidates
    if cands is None:
        cands = sorted(
            str(p) for p in args.runs.glob(args.pattern) if (p / "weights.safetensors").is_file()
        )
    methods = {"original": None}
    for m in ("macenko", "reinhard", "vahadane"):
        methods[m] = get_normalizer(m, device="cpu").fit(template)
    methods["dcgmm (shipped)"] = get_normalizer("dcgmm", device="cpu").fit(template)
    trained = {}
    for c in cands:
        norm = load_normalizer(c, device="cpu").fit(template)
        methods[f"dcgmm {Path(c).name}"] = norm
        tr = norm.card.get("training", {})
        trained[f"dcgmm {Path(c).name}"] = {
            k: tr.get(k)
            for k in ("classes", "scale", "loss", "steps", "batch_size", "seconds", "device")
        }
        trained[f"dcgmm {Path(c).name}"]["loss"] = tr.get("loss") or "ours"
    try:
        import torchstain
    except ImportError:
        print("torchstain is not installed: it is left out", file=sys.stderr)
    else:
        ts = torchstain.normalizers.MacenkoNormalizer(backend="torch")
        ts.fit(torch.from_numpy(np.ascontiguousarray(template)).permute(2, 0, 1))

        class TorchstainMacenko:
            def transform(self, im):
                out = ts.normalize(torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1))[0]
                return np.clip(out.numpy(), 0, 255).astype(np.uint8)

        methods["torchstain macenko (torch)"] = TorchstainMacenko()

    rows, class_maps = {}, {}
    for name, norm in methods.items():
        t0 = time.perf_counter()
        vals = {}
        for tname, img, lab, _ in tiles:
            out = img if norm is None else norm.transform(img)
            vals[tname] = nmi(out, lab > 0)
        val_cv = coefficient_of_variation([v for t, v in vals.items() if seg._held_out(t)])
        organs = {}
        for tname, *_ in tiles:
            organs.setdefault(seg.organ(tname), []).append(vals[tname])
        rows[name] = {
            "val_cv": round(val_cv, 4),
            "all_cv": round(coefficient_of_variation(list(vals.values())), 4),
            "organ_cv": {
                o: round(coefficient_of_variation(v), 4) for o, v in organs.items() if len(v) >= 3
            },
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"{name:36s} val CV {val_cv:.4f}", flush=True)
        if name.startswith("dcgmm"):
            class_maps[name] = _class_check(norm, tiles, seg)
    ref = rows.get("torchstain macenko (torch)", {}).get("val_cv")
    dcgmms = {k: v for k, v in rows.items() if k.startswith("dcgmm")}
    best = min(dcgmms, key=lambda k: dcgmms[k]["val_cv"])
    for name, info in trained.items():
        rows[name]["training"] = info
    best_candidate = min(trained, key=lambda k: rows[k]["val_cv"]) if trained else None
    out = {
        "command": "nice -n 5 .venv/bin/python bench/dcgmm_split.py",
        "template": TARGET.name,
        "validation": [t for t, *_ in tiles if seg._held_out(t)],
        "rows": rows,
        "class_maps": class_maps,
        "best_dcgmm_on_validation": best,
        "best_candidate_on_validation": best_candidate,
        "best_vs_torchstain_macenko": round(dcgmms[best]["val_cv"] / ref, 3) if ref else None,
        "best_vs_our_macenko": round(dcgmms[best]["val_cv"] / rows["macenko"]["val_cv"], 3),
        "load_average": os.getloadavg(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / "dcgmm_split.md").write_text(_report(out))
    print(
        json.dumps(
            {
                k: out[k]
                for k in (
                    "best_dcgmm_on_validation",
                    "best_candidate_on_validation",
                    "best_vs_torchstain_macenko",
                    "best_vs_our_macenko",
                )
            }
        )
    )
    return 0


def _class_check(norm, tiles, seg) -> dict:
    """Per organ: nuclei-class precision/recall against hand-drawn nuclei, background density."""
    per: dict[str, list] = {}
    for tname, img, lab, _ in tiles:
        cls = np.asarray(norm.class_map(img))
        nuc_cls = cls == norm.classes - 1  # classes are ordered by density: nuclei last
        truth = lab > 0
        od = (-np.log((img.astype(np.float32) + 1.0) / 256.0)).mean(axis=-1)
        bg = cls == 0
        per.setdefault(seg.organ(tname), []).append(
            (
                (nuc_cls & truth).sum() / max(nuc_cls.sum(), 1),
                (nuc_cls & truth).sum() / max(truth.sum(), 1),
                float(od[bg].mean()) if bg.any() else float("nan"),
            )
        )
    return {
        o: {
            "nuclei_precision": round(float(np.mean([v[0] for v in vs])), 3),
            "nuclei_recall": round(float(np.mean([v[1] for v in vs])), 3),
            "background_mean_od": round(float(np.nanmean([v[2] for v in vs])), 3),
        }
        for o, vs in per.items()
    }


def _report(out: dict) -> str:
    rows = out["rows"]
    organs = sorted({o for r in rows.values() for o in r["organ_cv"]})
    lines = [
        "# DCGMM candidates vs classical normalizers: stain constancy on held-out slides",
        "",
        "```",
        out["command"],
        "```",
        "",
        f"Template: {out['template']}. NMI CV over tiles (lower = more constant). 'validation' = "
        f"the {len(out['validation'])} tiles of whole slides/patients held out from fitting "
        "(scripts/train_seg_default.py VALIDATION); per organ = all tiles of that organ "
        "(mostly fitting data). Load average during the run: "
        + ", ".join(f"{x:.1f}" for x in out["load_average"]),
        "",
        "| method | CV validation | CV all | " + " | ".join(f"CV {o}" for o in organs) + " |",
        "|---|---|---|" + "---|" * len(organs),
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['val_cv']:.4f} | {r['all_cv']:.4f} | "
            + " | ".join(f"{r['organ_cv'].get(o, float('nan')):.4f}" for o in organs)
            + " |"
        )
    variants = {k: r for k, r in rows.items() if "training" in r}
    if variants:
        lines += [
            "",
            "## Candidates by training settings (sorted by CV validation)",
            "",
            "| candidate | classes | scale | loss | steps | batch | seconds | device | CV validation |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in sorted(variants.items(), key=lambda kv: kv[1]["val_cv"]):
            t = r["training"]
            lines.append(
                f"| {name} | {t['classes']} | {t['scale']} | {t['loss']} | {t['steps']} | "
                f"{t['batch_size']} | {t['seconds']} | {t['device']} | {r['val_cv']:.4f} |"
            )
        lines.append(f"\nBest candidate on validation: **{out['best_candidate_on_validation']}**.")
    lines += [
        "",
        f"Best DCGMM on validation: **{out['best_dcgmm_on_validation']}**; its CV is "
        f"{out['best_vs_torchstain_macenko']} x torchstain Macenko's and "
        f"{out['best_vs_our_macenko']} x ours (aim: <= 0.85 x torchstain's and below ours).",
        "",
        "## Do the classes mean what their names say?",
        "",
        "Per organ: share of the 'nuclei' class inside hand-drawn nuclei (precision), share of the "
        "nuclei pixels it covers (recall), mean optical density of the 'background' class.",
        "",
    ]
    for name, per in out["class_maps"].items():
        lines.append(f"- {name}: " + "; ".join(
            f"{o} P {v['nuclei_precision']:.2f} R {v['nuclei_recall']:.2f} bg OD {v['background_mean_od']:.2f}"
            for o, v in sorted(per.items())
        ))  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
