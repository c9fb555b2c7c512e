"""``napari-histo train-translator``: train a CycleGAN between a folder of IHC and one of H&E tiles."""

from __future__ import annotations

NAME = "train-translator"
HELP = "train an IHC <-> H&E CycleGAN on two folders of unpaired tiles"
DESCRIPTION = (
    "Train a CycleGAN (ResNet generators, PatchGAN discriminators) on unpaired tiles: --a holds "
    "IHC, --b holds H&E. The model folder (weights.safetensors, card.json, card.md) is written "
    "atomically every --save-every steps; Ctrl-C keeps the last checkpoint. --resume continues."
)
ORDER = 80


def add_arguments(parser) -> None:
    from ._common import add_device_argument

    parser.add_argument("--a", required=True, metavar="DIR", help="folder of IHC tiles")
    parser.add_argument("--b", required=True, metavar="DIR", help="folder of H&E tiles")
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder to write")
    parser.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    parser.add_argument("--crop", type=int, default=128, help="training crop size (default 128)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--ngf", type=int, default=32, help="generator width (default 32)")
    parser.add_argument("--n-blocks", type=int, default=6, choices=(6, 9))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=200)
    parser.add_argument("--resume", metavar="MODEL_DIR", help="continue from this model folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_argument(parser)


def run(args) -> int:
    from pathlib import Path

    from ..core.translate import train_translator_iter
    from ._common import drain_with_bar, note

    out = drain_with_bar(
        train_translator_iter(
            Path(args.a),
            Path(args.b),
            steps=args.steps,
            crop=args.crop,
            batch_size=args.batch_size,
            ngf=args.ngf,
            n_blocks=args.n_blocks,
            seed=args.seed,
            device=args.device,
            out=Path(args.out),
            resume=args.resume,
            save_every=args.save_every,
            sample_every=0,
        ),
        desc="train",
        quiet=args.quiet,
    )
    note(f"model written to {out}")
    return 0
