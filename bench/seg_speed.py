"""Segmentation speed in Mpx/s per architecture, with and without TTA, on the CPU (and a GPU if present).

Usage::

    nice -n 5 .venv/bin/python bench/seg_speed.py [--size 1000] [--repeats 2] [--threads 2]

The image is a MoNuSeg H&E tile cropped to SIZE x SIZE. The shipped default model is timed with
its weights; the other architectures with random weights and their default settings (the speed
does not depend on the weights, except for post-processing, which sees different maps). Writes
``bench/results/seg_speed.json`` and regenerates ``bench/results/seg.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
IMAGE = (
    ROOT.parent
    / "shared"
    / "data"
    / "monuseg2018_train_subset"
    / "images"
    / "TCGA-A7-A13E-01Z-00-DX1.png"
)


def models_to_time(device: str) -> list:
    import torch

    from napari_histo.core.seg.registry import LoadedModel, default_model_name, load_model
    from napari_histo.core.seg.spec import ARCH_MODULES, get_arch

    out = []
    if default_model_name():
        m = load_model("default", device)
        out.append((f"{m.arch} (shipped {m.name})", m))
    for arch in ARCH_MODULES:
        try:
            spec = get_arch(arch)
            torch.manual_seed(0)
            net = spec.build().eval().to(device)
        except Exception as exc:  # an architecture that is not there yet is skipped
            print(f"skip {arch}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        out.append(
            (
                f"{arch} (random weights)",
                LoadedModel(net=net, spec=spec, device=torch.device(device), name=arch),
            )
        )
    return out


def time_one(model, img, tta, tile, repeats) -> tuple[float, float | None]:
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.inference import (
        as_tile_spec,
        make_predictor,
        segment_iter,
        tta_transforms,
    )
    from napari_histo.core.tiling import predict_tiled_iter

    spec = as_tile_spec(tile, model.device)
    drain(segment_iter(img[:256, :256], model, tta=tta, tile=spec))  # warm-up
    pipe, maps = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        drain(segment_iter(img, model, tta=tta, tile=spec))
        pipe.append(time.perf_counter() - t0)
        if getattr(model.spec, "detector", False):
            continue  # an instance model (Mask R-CNN) makes no maps: only the pipeline counts
        pred = make_predictor(model, tta_transforms(tta))
        t0 = time.perf_counter()
        drain(predict_tiled_iter(img, pred, spec, model.spec.size_multiple))
        if model.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        maps.append(time.perf_counter() - t0)
    return min(pipe), (min(maps) if maps else None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--tile", type=int, default=None, help="default: as_tile_spec's (at most 512 px, balanced)"
    )
    p.add_argument("--no-tta", action="store_true", help="skip the TTA rows")
    p.add_argument(
        "--no-tta-for",
        nargs="*",
        default=["maskrcnn"],
        help="architectures timed without TTA only (default: maskrcnn, minutes per run on a CPU)",
    )
    args = p.parse_args(argv)
    import torch

    from napari_histo.core.io import read_image
    from napari_histo.core.seg.inference import as_tile_spec

    torch.set_num_threads(args.threads)
    img = read_image(IMAGE)[: args.size, : args.size]
    mpx = img.shape[0] * img.shape[1] / 1e6
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for label, model in models_to_time(device):
            params = sum(p.numel() for p in model.net.parameters())
            skip_tta = args.no_tta or any(label.startswith(a) for a in args.no_tta_for)
            for tta in (False,) if skip_tta else (False, True):
                pipe, maps = time_one(model, img, tta, args.tile, args.repeats)
                row = {
                    "arch": label,
                    "params": params,
                    "device": device,
                    "threads": args.threads if device == "cpu" else "-",
                    "tta": "x8" if tta else "no",
                    "tile": (
                        f"{model.spec.block_tiling.tile} windows"
                        if getattr(model.spec, "detector", False)
                        else as_tile_spec(args.tile, model.device).tile
                    ),
                    "pipeline_s": round(pipe, 3),
                    "maps_s": round(maps, 3) if maps else None,
                    "pipeline_mpx_s": round(mpx / pipe, 4),
                    "maps_mpx_s": round(mpx / maps, 4) if maps else None,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    cmd = "nice -n 5 .venv/bin/python bench/seg_speed.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    notes = []
    if "cuda" not in devices:
        notes.append("No GPU was available to this task, so there is no GPU row.")
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
        notes.append(
            f"Load average at the end of the run: {' '.join(load)} (2 cores shared with other jobs)."
        )
    except OSError:
        pass
    doc = {
        "command": cmd.strip(),
        "size": args.size,
        "repeats": args.repeats,
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}",
        "rows": rows,
        "notes": notes,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "seg_speed.json").write_text(json.dumps(doc, indent=2) + "\n")
    sys.path.insert(0, str(Path(__file__).parent))
    from seg_accuracy import write_report

    print(write_report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
