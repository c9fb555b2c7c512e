"""CPU inference paths of the shipped segmentation model, side by side, labels checked.

Usage::

    nice -n 5 python bench/infer_backends.py [--tiles 3] [--threads 2] [--json OUT]
        [--candidates eager fused channels_last fused_cl bf16 bf16_cl compile onnx]

Each candidate segments the same held-out MoNuSeg tiles (``monuseg2018_train_rest``, 1000 x 1000,
the default CPU tiling: 256 px tiles, 32 px overlap, batch 4) through ``segment_iter``; only the
network call differs. Reported: seconds (best of ``--repeats`` after a warm-up tile), Mpx/s, and
the agreement of its labels with eager fp32's (AJI, and the number of nuclei).

* ``eager``: the model as loaded (fp32, NCHW) -- the reference;
* ``default``: what napari-histo does now (``make_predictor``: on CPUs with native bfloat16,
  bf16 autocast for the U-Net; ``NAPARI_HISTO_PRECISION=float32`` gives ``eager``);
* ``fused``: BatchNorm folded into the preceding convolutions (``fuse_conv_bn_eval``);
* ``channels_last`` / ``fused_cl``: the same in NHWC memory format;
* ``bf16`` / ``bf16_cl``: ``torch.autocast("cpu", bfloat16)`` (native on AVX512-BF16/AMX CPUs);
* ``compile``: ``torch.compile`` (inductor; needs a C++ compiler, works offline);
* ``onnx``: exported with ``torch.onnx.export`` and run by ONNX Runtime (``pip install
  onnxruntime onnx``; not a dependency of napari-histo).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg2018_train_rest" / "images"


def fuse_bn(net):
    """A copy of ``net`` (eval) whose Conv2d -> BatchNorm2d pairs in Sequentials are folded."""
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(net).eval()
    for mod in net.modules():
        if isinstance(mod, nn.Sequential):
            items = list(mod._modules.items())
            for (n1, a), (n2, b) in itertools.pairwise(items):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    mod._modules[n1] = fuse_conv_bn_eval(a, b)
                    mod._modules[n2] = nn.Identity()
    return net.to(memory_format=torch.contiguous_format)


class _Wrap:
    """A callable standing in for the network in ``spec.predict`` (which calls eval())."""

    def __init__(self, fn):
        self.fn = fn

    def eval(self):
        return self

    def __call__(self, x):
        return self.fn(x)


def candidate(name: str, net, workdir: Path):
    import torch

    if name == "eager":
        return net
    if name == "fused":
        return fuse_bn(net)
    if name == "channels_last":
        n = copy.deepcopy(net).to(memory_format=torch.channels_last)
        return _Wrap(lambda x: n(x.contiguous(memory_format=torch.channels_last)))
    if name == "fused_cl":
        n = fuse_bn(net).to(memory_format=torch.channels_last)
        return _Wrap(lambda x: n(x.contiguous(memory_format=torch.channels_last)))
    if name in ("bf16", "bf16_cl", "bf16_fused_cl"):
        n = fuse_bn(net) if "fused" in name else copy.deepcopy(net)
        cl = name.endswith("_cl")
        if cl:
            n = n.to(memory_format=torch.channels_last)

        def run(x):
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return n(x).float()

        return _Wrap(run)
    if name == "compile":
        return torch.compile(fuse_bn(net))
    if name == "onnx":
        import onnxruntime as ort

        path = workdir / "unet.onnx"
        dummy = torch.zeros(4, 3, 256, 256)
        torch.onnx.export(
            fuse_bn(net), dummy, str(path), input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 2: "h", 3: "w"}},
            dynamo=False,
        )  # fmt: skip
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return _Wrap(lambda x: torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]))
    raise ValueError(name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--candidates",
        nargs="+",
        default=["eager", "default", "fused", "channels_last", "fused_cl", "bf16", "bf16_cl",
                 "bf16_fused_cl", "compile", "onnx"],
    )  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import torch

    from napari_histo.core.io import read_image
    from napari_histo.core.progress import drain
    from napari_histo.core.seg.inference import segment_iter
    from napari_histo.core.seg.metrics import aggregated_jaccard_index
    from napari_histo.core.seg.registry import load_model

    torch.set_num_threads(args.threads)
    model = load_model("default", "cpu")
    images = [read_image(p) for p in sorted(DATA.glob("*.png"))[: args.tiles]]
    mpx = sum(im.shape[0] * im.shape[1] for im in images) / 1e6
    workdir = Path(tempfile.mkdtemp())
    reference = None
    rows = []
    for name in args.candidates:
        # Every candidate but "default" runs its own network as given, in float32.
        if name == "default":
            os.environ.pop("NAPARI_HISTO_PRECISION", None)
        else:
            os.environ["NAPARI_HISTO_PRECISION"] = "float32"
        try:
            net = model.net if name == "default" else candidate(name, model.net, workdir)
            m = replace(model, net=net)
            with torch.inference_mode():
                drain(segment_iter(images[0][:256, :256], m, tta=False))  # warm-up / compile
            best, labels = float("inf"), None
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                labels = [drain(segment_iter(im, m, tta=False)).labels for im in images]
                best = min(best, time.perf_counter() - t0)
        except Exception as exc:
            print(f"{name:16s} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            rows.append({"candidate": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            continue
        if reference is None:
            reference = labels
        aji = [
            float(aggregated_jaccard_index(r, lab))
            for r, lab in zip(reference, labels, strict=True)
        ]
        row = {
            "candidate": name,
            "seconds": round(best, 2),
            "mpx_per_s": round(mpx / best, 3),
            "aji_vs_eager_min": round(min(aji), 4),
            "aji_vs_eager_mean": round(float(np.mean(aji)), 4),
            "nuclei": int(sum(len(np.unique(lab)) - 1 for lab in labels)),
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
        rows.append(row)
        print(
            f"{name:16s} {best:7.2f} s {row['mpx_per_s']:6.3f} Mpx/s  AJI vs eager min "
            f"{row['aji_vs_eager_min']:.4f} mean {row['aji_vs_eager_mean']:.4f}  "
            f"{row['nuclei']} nuclei (load {row['load_average_1min']})",
            flush=True,
        )
    if args.json:
        meta = {"threads": args.threads, "tiles": args.tiles, "torch": torch.__version__}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
