"""Shared plumbing of the subcommands: one-line errors, per-file loops, terminal progress."""

from __future__ import annotations

import sys
import traceback
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from ..core.errors import HistoError, InputWarning
from ..core.progress import Progress, drain

T = TypeVar("T")


def error(msg: str) -> None:
    """Print one error line to stderr."""
    print(f"napari-histo: error: {msg}", file=sys.stderr)


def note(msg: str) -> None:
    """Print one note line (a fixed-up input, a skipped step) to stderr."""
    print(f"napari-histo: note: {msg}", file=sys.stderr)


def run_guarded(fn: Callable[[Any], int], args: Any) -> int:
    """Run a subcommand; known errors become one line and exit code 2, never a traceback."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return int(fn(args) or 0)
    except HistoError as exc:
        error(str(exc))
        return 2
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except Exception as exc:  # last resort: still one line, details only on request
        error(
            f"unexpected {type(exc).__name__}: {exc} (set NAPARI_HISTO_DEBUG=1 for the traceback)"
        )
        import os

        if os.environ.get("NAPARI_HISTO_DEBUG"):
            traceback.print_exc()
        return 1


def for_each_file(
    paths: Iterable[str | Path], fn: Callable[[Path], T], label: str = "file"
) -> tuple[dict[Path, T], int]:
    """Call ``fn(path)`` for every path; a failure is one line and the others still run.

    Returns the results by path and the number of failures. :class:`InputWarning` raised while
    processing a file is printed as a note naming the file.
    """
    results: dict[Path, T] = {}
    failures = 0
    for raw in paths:
        path = Path(raw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InputWarning)
            try:
                results[path] = fn(path)
            except HistoError as exc:
                failures += 1
                msg = str(exc)
                error(msg if path.name in msg else f"{path.name}: {msg}")
            except Exception as exc:
                failures += 1
                error(f"{path.name}: unexpected {type(exc).__name__}: {exc}")
        for w in caught:
            if issubclass(w.category, InputWarning):
                msg = str(w.message)
                note(msg if path.name in msg else f"{path.name}: {msg}")
    return results, failures


def drain_with_bar(gen, desc: str = "", quiet: bool = False):
    """Drain a core progress generator with a tqdm bar on stderr; return its result."""
    if quiet or not sys.stderr.isatty():
        return drain(gen)
    from tqdm import tqdm

    bar = tqdm(desc=desc, file=sys.stderr, leave=False)

    def update(ev: Progress) -> None:
        if ev.total and bar.total != ev.total:
            bar.total = ev.total
        bar.n = ev.step
        if ev.metrics:
            bar.set_postfix({k: f"{v:.4g}" for k, v in ev.metrics.items()}, refresh=False)
        bar.refresh()

    try:
        return drain(gen, update)
    finally:
        bar.close()


def add_device_argument(parser) -> None:
    """The common ``--device auto|cpu|cuda`` option."""
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N (default: auto)",
    )
