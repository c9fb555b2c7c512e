"""Average the weights of models of one lineage ("model soup") and score the average on validation.

Usage::

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src nice -n 5 .venv/bin/python bench/weight_average.py \
        hovernet_histo80_v4 runs/seg/hovernet_histo80_v5s [--alpha 0.5] [--out runs/seg/soup]

Models continued from one another lie in one basin, where the average of their weights can
score better than either (Wortsman et al. 2022). Every tensor, BatchNorm statistics included,
is averaged with weights ``alpha`` and ``1 - alpha``. The average is written as a model folder
(card: both parents) and scored on the validation split, 40x and its 20x copies, with the same
scorer as the training script's cards. Nothing is shipped by this script.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _split import split_with_20x, train_script

ROOT = Path(__file__).resolve().parents[1]


def average_states(a: dict, b: dict, alpha: float) -> dict:
    """``alpha * a + (1 - alpha) * b`` per tensor; integer tensors (BN counters) from ``a``."""
    if a.keys() != b.keys():
        raise SystemExit("the two models' tensors differ: not one architecture")
    out = {}
    for k, va in a.items():
        vb = b[k]
        if va.shape != vb.shape:
            raise SystemExit(f"{k}: shapes {tuple(va.shape)} and {tuple(vb.shape)} differ")
        out[k] = (alpha * va + (1 - alpha) * vb).to(va.dtype) if va.is_floating_point() else va
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--alpha", type=float, nargs="+", default=[0.5])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "seg" / "soup")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    import torch

    from napari_histo.core.seg.registry import read_model, save_model

    torch.set_num_threads(args.threads)
    arch_a, kw_a, state_a, card_a, folder_a = read_model(args.a)
    arch_b, kw_b, state_b, _, folder_b = read_model(args.b)
    if (arch_a, kw_a) != (arch_b, kw_b):
        raise SystemExit(f"{arch_a} {kw_a} and {arch_b} {kw_b} are not one architecture")
    script = train_script()
    _, val = split_with_20x()
    rows = {}
    for alpha in args.alpha:
        t0 = time.perf_counter()
        folder = args.out.with_name(f"{args.out.name}_{alpha:g}")
        card = {
            key: card_a[key]
            for key in ("license", "mpp", "inference", "scale_guess")
            if key in card_a
        }
        card["parents"] = [folder_a.name, folder_b.name]
        card["summary"] = f"weights {alpha:g} x {folder_a.name} + {1 - alpha:g} x {folder_b.name}"
        save_model(folder, average_states(state_a, state_b, alpha), arch_a, kw_a, card)
        m40 = script.evaluate_model(folder, [v for v in val if "@" not in v[0]])
        m20 = script.evaluate_model(folder, [v for v in val if "@" in v[0]])
        rows[f"{alpha:g}"] = {
            "40x": {k: m40[k] for k in ("dice", "aji", "pq")},
            "20x": {k: m20[k] for k in ("dice", "aji", "pq")},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(alpha, json.dumps(rows[f"{alpha:g}"]), flush=True)
    if args.json:
        doc = {"a": folder_a.name, "b": folder_b.name, "alphas": rows}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
