"""The ``napari-histo`` command: one entry point, one subcommand per module of this package.

Each public module here defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int`` and is found automatically. Modules import heavy libraries (torch,
models) inside ``run`` only, so ``napari-histo --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from .. import __version__


def _command_modules() -> list:
    mods = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"{__name__}.{info.name}"))
    return sorted(mods, key=lambda m: getattr(m, "ORDER", 50))


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (used by ``main`` and by the docs/tests)."""
    parser = argparse.ArgumentParser(
        prog="napari-histo",
        description="H&E stain normalization and nuclei segmentation, from the command line or in napari.",
    )
    parser.add_argument("--version", action="version", version=f"napari-histo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in _command_modules():
        p = sub.add_parser(
            mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP)
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-histo`` console script; returns the exit code."""
    import os

    # On a shared or busy machine, OpenMP threads that spin while waiting slow short torch ops
    # about tenfold (bench/results/stain.md); the user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ._common import run_guarded

    args = build_parser().parse_args(argv)
    return run_guarded(args._run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
