"""``napari-histo evaluate``: Dice, AJI, F1 and PQ of predicted instance labels against truth."""

from __future__ import annotations

import json
from pathlib import Path

from ._common import error, for_each_file

NAME = "evaluate"
HELP = "score predicted nuclei labels against ground truth (Dice, AJI, F1, PQ)"
DESCRIPTION = (
    "Match the label images of --pred and --truth by file stem and print, per image and on "
    "average, the pixel Dice, the Aggregated Jaccard Index, the object F1 (IoU > 0.5) and the "
    "panoptic quality. A prediction without truth (or the reverse), an unreadable file or a "
    "size mismatch is one error line each; the other images are still scored."
)
ORDER = 40

COLUMNS = ("dice", "aji", "f1", "pq")


def add_arguments(parser) -> None:
    parser.add_argument("--pred", required=True, metavar="DIR", help="predicted label images")
    parser.add_argument("--truth", required=True, metavar="DIR", help="ground-truth label images")
    parser.add_argument("--json", metavar="FILE", help="also write the scores as JSON")


def _index(folder: Path) -> dict[str, Path]:
    from ..core.errors import HistoError
    from ..core.io import is_image_path

    if not folder.is_dir():
        raise HistoError(f"{folder}: not a folder")
    index: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and is_image_path(p):
            stem = p.name.split(".")[0]
            index.setdefault(stem, p)
    return index


def run(args) -> int:
    from ..core.atomic import atomic_write_text
    from ..core.errors import HistoError
    from ..core.io import read_labels
    from ..core.seg.metrics import evaluate

    pred, truth = _index(Path(args.pred)), _index(Path(args.truth))
    if not pred:
        raise HistoError(f"{args.pred}: no label images found")
    if not truth:
        raise HistoError(f"{args.truth}: no label images found")
    failures = 0
    for stem in sorted(set(truth) - set(pred)):
        error(f"{truth[stem].name}: no prediction with this name in {args.pred}")
        failures += 1
    for stem in sorted(set(pred) - set(truth)):
        error(f"{pred[stem].name}: no ground truth with this name in {args.truth}")
        failures += 1

    def score(path: Path) -> dict[str, float]:
        p = read_labels(path)
        t = read_labels(truth[path.name.split(".")[0]])
        if p.shape != t.shape:
            raise HistoError(
                f"{path.name}: prediction {p.shape[1]}x{p.shape[0]} and truth "
                f"{t.shape[1]}x{t.shape[0]} differ in size"
            )
        res = evaluate(t, p)
        res["n_pred"] = len(set(p[p > 0].ravel().tolist()))
        res["n_true"] = len(set(t[t > 0].ravel().tolist()))
        return {k: float(v) for k, v in res.items()}

    common = [pred[s] for s in sorted(set(pred) & set(truth))]
    results, failed = for_each_file(common, score)
    failures += failed
    width = max([len(p.name.split(".")[0]) for p in results] + [len("mean")])
    print(f"{'image':<{width}}  " + "  ".join(f"{c.upper():>6}" for c in COLUMNS))
    for path, res in results.items():
        print(
            f"{path.name.split('.')[0]:<{width}}  " + "  ".join(f"{res[c]:6.4f}" for c in COLUMNS)
        )
    mean = {}
    if results:
        keys = next(iter(results.values())).keys()
        mean = {k: sum(r[k] for r in results.values()) / len(results) for k in keys}
        print(f"{'mean':<{width}}  " + "  ".join(f"{mean[c]:6.4f}" for c in COLUMNS))
    if args.json:
        payload = {
            "per_image": {p.name.split(".")[0]: r for p, r in results.items()},
            "mean": mean,
            "n_images": len(results),
            "failures": failures,
        }
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")
    return 1 if failures else 0
