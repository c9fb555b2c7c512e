"""``napari-histo train``: fine-tune (or train from scratch) a nuclei segmentation model."""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import add_device_argument, drain_with_bar, error, note

NAME = "train"
HELP = "fine-tune the shipped model (or train one from scratch) on image/mask folders"
DESCRIPTION = (
    "Train a nuclei segmentation model on the images of --images and the instance masks of "
    "--masks (matched by file name; a correction project's images/ and masks/ folders work as "
    "they are) and write the model folder --out. Without --init the shipped default model is "
    "fine-tuned; --init none trains --arch from scratch. A part of the pairs is held out to "
    "pick the best epoch (validation AJI) and to stop early. Ctrl-C keeps the last checkpoint: "
    "run the same command with --resume to continue."
)
ORDER = 30


def add_arguments(parser) -> None:
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of RGB tiles")
    parser.add_argument(
        "--masks", required=True, metavar="DIR", help="folder of instance masks (same stems)"
    )
    parser.add_argument(
        "--init",
        default="default",
        metavar="MODEL|none",
        help="model to fine-tune (name, folder or weights file; default: the shipped default), "
        "or 'none' to train from scratch",
    )
    parser.add_argument(
        "--arch",
        default=None,
        help="architecture when training from scratch: unet (default), fullnet, hovernet, maskrcnn",
    )
    parser.add_argument("--epochs", type=int, default=10, help="maximum epochs (default 10)")
    parser.add_argument(
        "--lr", type=float, default=None, help="learning rate (default 2e-4, 1e-3 from scratch)"
    )
    parser.add_argument("--batch", type=int, default=4, help="patches per step (default 4)")
    parser.add_argument("--patch", type=int, default=256, help="patch size (default 256)")
    parser.add_argument(
        "--steps-per-epoch", type=int, default=None, help="default: cover the images once"
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of pairs held out (default 0.2)"
    )
    parser.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs")
    parser.add_argument("--seed", type=int, default=0)
    add_device_argument(parser)
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder to write")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run at --out"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        metavar="S",
        help="training time budget: the learning rate decays over it and training stops when it "
        "is spent (fine-tuning the default on 5 corrected tiles: 80 s gives +0.05 AJI on 2 CPU "
        "cores, bench/results/finetune.md)",
    )
    parser.add_argument(
        "--no-focus",
        dest="focus",
        action="store_false",
        help="when fine-tuning, draw patches uniformly instead of drawing half of them where the "
        "masks differ from the parent model's own segmentation (the corrections)",
    )
    parser.add_argument(
        "--loss-patience",
        type=int,
        default=None,
        metavar="N",
        help="stop once the training loss has not improved by 1%% for N epochs",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args) -> int:
    from ..core.errors import HistoError
    from ..core.seg.train import train_iter

    if args.max_seconds is not None and args.max_seconds <= 0:
        raise HistoError(f"--max-seconds must be positive, got {args.max_seconds}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise HistoError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    scratch = str(args.init).lower() in ("none", "scratch")
    out = Path(args.out)
    gen = train_iter(
        images=args.images,
        masks=args.masks,
        out=out,
        init="none" if scratch else args.init,
        arch=args.arch,
        epochs=args.epochs,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
        patch=args.patch,
        batch_size=args.batch,
        steps_per_epoch=args.steps_per_epoch,
        val_fraction=args.val_fraction,
        patience=args.patience,
        max_seconds=args.max_seconds,
        focus=args.focus and not scratch,
        loss_patience=args.loss_patience,
        resume=args.resume,
        overwrite=args.overwrite,
        data=f"images {Path(args.images).resolve()}, masks {Path(args.masks).resolve()}",
        card={"command": "napari-histo train " + " ".join(sys.argv[2:])},
    )

    def show(ev) -> None:
        if ev.stage == "epoch" and not args.quiet:
            note(str(ev))

    try:
        if args.quiet or not sys.stderr.isatty():
            from ..core.progress import drain

            folder = drain(gen, show)
        else:
            folder = drain_with_bar(gen, desc="train")
    except KeyboardInterrupt:
        error(f"interrupted; run the same command with --resume to continue {out}")
        return 130
    from ..core.seg.registry import read_card

    val = read_card(folder).get("validation") or {}
    summary = ", ".join(f"{k}={val[k]:.3f}" for k in ("aji", "dice", "f1", "pq") if k in val)
    if not args.quiet:
        note(f"model written to {folder}" + (f" (validation {summary})" if summary else ""))
    return 0
